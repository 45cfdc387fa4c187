import { spawn } from 'node:child_process'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import { TessError, errorMessage } from '../../lib/errors.js'
import { usernsHostIdBase, usernsIdsCount, usernsSetupTimeoutMs } from '../../lib/limits.js'
import type { IdMapping } from '../../lib/container-spec.js'
import { mountAddon, mountAddonFile } from './mountaddon.js'

/**
 * User namespaces for containers (`tess container run --userns`). The container's uid and gid 0-65535
 * are the host's usernsHostIdBase + 0-65535: its root is an unprivileged user outside, and what
 * it reaches of the host (a file, a device, another process) it reaches as that user.
 *
 * The image layers stay as unpacked (owned by the host's root); the container sees them through
 * idmapped mounts (native/mount.c) that show the host's 0 as its own 0, so nothing is copied or
 * chowned. Its read-write layer (the overlay's upper directory, not idmapped) belongs to the mapped
 * root; a volume is idmapped too, so it keeps the ids the container sees. The kernel
 * needs idmapped mounts on the file systems involved (Linux 5.12+; ext4, and overlayfs lower layers
 * from 5.19); without them, or without the native addon, `--userns` is refused with the reason.
 */
export type { IdMapping }

/** every container with --userns: one range per node, like Docker's userns-remap */
export const containerIdMapping: IdMapping = { hostId: usernsHostIdBase, size: usernsIdsCount }

const { binding, error: loadError } = mountAddon

function unavailable(what: string, why: string): TessError {
  return new TessError('TESS_E_PRECONDITION', `cannot run ${what} with --userns: ${why}`,
    'run it without --userns, or on a node whose kernel has idmapped mounts (Linux 5.19 or later) and whose tess was built with its native addon (npm ci)')
}

/**
 * Make each `target` an idmapped bind mount of its `source` under `mapping`: a short-lived process
 * in a new user namespace carries the mapping while the mounts are made, then ends.
 */
export async function idmapBinds(pairs: Array<{ source: string, target: string }>, mapping: IdMapping, what: string): Promise<void> {
  if (binding === undefined) throw unavailable(what, `the native mount addon is missing (${loadError ?? mountAddonFile})`)
  const child = spawn('unshare', ['--user', '--', 'cat'], { stdio: ['pipe', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  let spawnError: Error | undefined
  const exited = new Promise<void>((resolve) => {
    child.on('close', () => resolve())
    child.on('error', (e) => {
      spawnError = e
      resolve()
    })
  })
  try {
    const pid = child.pid
    if (pid === undefined) throw unavailable(what, 'cannot start unshare (util-linux)')
    const own = await fsp.readlink('/proc/self/ns/user')
    const nsPath = `/proc/${pid}/ns/user`
    const deadline = Date.now() + usernsSetupTimeoutMs
    // wait until the child has its own namespace (unshare, then exec of cat)
    for (;;) {
      const ns = await fsp.readlink(nsPath).catch(() => undefined) // not there yet: asked again until the deadline
      if (ns !== undefined && ns !== own) break
      if (spawnError !== undefined || child.exitCode !== null || Date.now() > deadline) {
        throw unavailable(what, `no user namespace could be made (${spawnError?.message ?? (stderr.trim() || 'unshare --user did not start')})`)
      }
      await new Promise((r) => setTimeout(r, 2))
    }
    const line = `0 ${mapping.hostId} ${mapping.size}\n`
    await fsp.writeFile(`/proc/${pid}/uid_map`, line)
    await fsp.writeFile(`/proc/${pid}/gid_map`, line)
    for (const p of pairs) {
      await fsp.mkdir(p.target, { recursive: true, mode: 0o711 })
      await ensureTraversable(path.dirname(p.target), what)
      try {
        binding.idmapBind(p.source, p.target, nsPath)
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code
        if (code === 'EINVAL' || code === 'ENOSYS' || code === 'EPERM') throw unavailable(what, `the kernel refused an idmapped mount of ${p.source} (${errorMessage(e)})`)
        throw new TessError('TESS_E_IO', `cannot run ${what}: idmapped mount of ${p.source} at ${p.target}: ${errorMessage(e)}`, 'see the CSM log; check the path exists')
      }
    }
  } finally {
    child.stdin.end()
    child.kill('SIGKILL')
    await exited
  }
}

/**
 * The container's init (its root, an unprivileged user outside) looks up its rootfs and the
 * sources of its bind mounts itself, so every directory above them must let others through
 * (search, not read: mode o+x), as Docker sets its data root to 0711 for user namespaces.
 * Directories owned by root without it get o+x; one owned by someone else is refused.
 */
export async function ensureTraversable(dir: string, what: string): Promise<void> {
  for (let p = path.resolve(dir); ; p = path.dirname(p)) {
    const st = await fsp.stat(p)
    if ((st.mode & 0o001) === 0) {
      if (st.uid !== 0) {
        throw new TessError('TESS_E_PRECONDITION', `cannot run ${what} with --userns: directory ${p} does not let other users through (mode ${(st.mode & 0o777).toString(8)}) and is not root's`,
          `chmod o+x ${p} (search only; its files keep their own modes)`)
      }
      await fsp.chmod(p, (st.mode & 0o7777) | 0o001)
    }
    if (p === path.dirname(p)) return
  }
}

/** Give `dir` (a fresh read-write layer) to the container's root. */
export async function chownToMappedRoot(dir: string, mapping: IdMapping): Promise<void> {
  const st = await fsp.lstat(dir)
  if (st.uid === mapping.hostId && st.gid === mapping.hostId) return
  await fsp.lchown(dir, mapping.hostId, mapping.hostId)
}

/** whether this process can make idmapped mounts at all (for pre-flight and status) */
export function usernsSupport(): { ok: boolean, reason?: string } {
  if (binding === undefined) return { ok: false, reason: `the native mount addon is missing (${loadError ?? mountAddonFile})` }
  if (!fs.existsSync('/proc/self/ns/user')) return { ok: false, reason: 'the kernel has no user namespaces' }
  return { ok: true }
}
