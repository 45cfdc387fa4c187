import fsp from 'node:fs/promises'
import path from 'node:path'
import { errorMessage } from '../../lib/errors.js'
import type { Logger } from '../../lib/log.js'
import { parseMountinfo } from './cgroups.js'
import { execCommand } from './exec.js'

/**
 * Copies of our mounts in other mount namespaces.
 *
 * Whatever creates a mount namespace (unshare, `ip netns exec`, a service manager's private mounts,
 * another container engine) gets a copy of every mount of the host at that moment, a volume's ext4
 * mount and its FUSE mount included. With private propagation (unshare's default) our unmount does
 * not reach that copy: the file system stays alive, its loop device stays bound and nbdfuse keeps
 * serving it until that namespace goes, which may be never. A volume is one container's; its copy in
 * a namespace that is not the container's is unmounted there, lazily, so the detach can finish and
 * ext4 writes its final state through the chain while nbdfuse still runs.
 */

export interface ForeignMount {
  /** one process of the namespace (the lowest pid) */
  pid: number
  /** its command name, to say who held the mount */
  command: string
  /** where the copy is mounted, as that process sees it */
  mountPoint: string
}

/** "major:minor" of the file system mounted at `target` in this process's namespace. */
export async function mountDevice(target: string): Promise<string | undefined> {
  const d = path.resolve(target)
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8')
  return parseMountinfo(text).filter((m) => m.mountPoint === d).pop()?.device
}

/** "major:minor" of a block device such as /dev/loop3 (from sysfs), or undefined if it is gone. */
export async function blockDevice(dev: string): Promise<string | undefined> {
  const text = await fsp.readFile(path.join('/sys/class/block', path.basename(dev), 'dev'), 'utf8').catch(() => undefined) // no such device: undefined, as documented
  return text?.trim() || undefined
}

async function namespaceOf(pid: string): Promise<string | undefined> {
  return fsp.readlink(`/proc/${pid}/ns/mnt`).catch(() => undefined) // the process is gone: not a holder
}

/** Mounts of the file system on `device` in mount namespaces other than ours, one entry per mount. */
export async function foreignMounts(device: string): Promise<ForeignMount[]> {
  const own = await namespaceOf('self')
  const seen = new Set<string>(own === undefined ? [] : [own])
  const pids = (await fsp.readdir('/proc')).filter((n) => /^[0-9]+$/.test(n)).sort((a, b) => Number(a) - Number(b))
  const out: ForeignMount[] = []
  for (const pid of pids) {
    const ns = await namespaceOf(pid)
    if (ns === undefined || seen.has(ns)) continue
    seen.add(ns)
    const text = await fsp.readFile(`/proc/${pid}/mountinfo`, 'utf8').catch(() => '') // the process is gone, and its namespace maybe with it: no mounts to see
    const mounts = parseMountinfo(text).filter((m) => m.device === device)
    if (mounts.length === 0) continue
    const command = (await fsp.readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '?')).trim()
    // the deepest first: a copy mounted over another copy comes off before the one under it
    for (const m of mounts.reverse()) out.push({ pid: Number(pid), command, mountPoint: m.mountPoint })
  }
  return out
}

export function describeForeign(m: ForeignMount): string {
  return `${m.mountPoint} in the mount namespace of pid ${m.pid} (${m.command})`
}

/**
 * Lazily unmount every copy of the file system on `device` in other mount namespaces. Answers what
 * could not be unmounted (each with the reason); logs what was.
 */
export async function releaseForeignMounts(device: string, log: Logger, what: string): Promise<string[]> {
  const failed: string[] = []
  for (const m of await foreignMounts(device)) {
    const r = await execCommand('nsenter', [`--mount=/proc/${m.pid}/ns/mnt`, '--', 'umount', '-l', m.mountPoint]).catch((e: unknown) => ({ code: -1, stdout: '', stderr: errorMessage(e) }))
    if (r.code === 0) log.warn(`${what}: unmounted its copy at ${describeForeign(m)} (made when that namespace was created while ${what} was mounted)`)
    else if (await namespaceOf(String(m.pid)) !== undefined) failed.push(`${describeForeign(m)}: ${(r.stderr || r.stdout).trim()}`)
  }
  return failed
}
