import { spawn } from 'node:child_process'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import { TessError, errorMessage } from '../../lib/errors.js'
import type { Logger } from '../../lib/log.js'
import type { VolumeSpec } from '../../lib/container-spec.js'
import { execCommand } from '../runtime/exec.js'
import { isMountPoint, mountsUnder, unmount } from '../runtime/bundle.js'
import { isProcessAlive, processStartTime } from '../runtime/runc.js'
import { blockDevice, describeForeign, foreignMounts, mountDevice, releaseForeignMounts } from '../runtime/foreign-mounts.js'

/**
 * Volume attach, on the node of the CSM (these kernels may have no nbd module; docs/architecture.md):
 *   CVM NBD export → nbdfuse exposes it as a file → loop device (autoclear, direct I/O) → ext4 → bind mount.
 * Each container has its own chain for each of its volumes, under `<container dir>/volumes/NAME/`:
 *   fuse/      the nbdfuse mount; fuse/disk is the export as a file
 *   mnt/       the ext4 mount, bind-mounted into the container
 *   nbdfuse.pid, nbdfuse.log, attach.json (what was made, for detach after a daemon restart)
 * nbdfuse runs in its own session so the chain outlives a CSM daemon restart, like the container.
 */

export type { VolumeSpec }

export interface AttachState {
  name: string
  fusePid?: number
  fuseStartTime?: string
  loop?: string
  mounted?: boolean
  /** set when this attach made the filesystem */
  formattedNow?: boolean
}

/** What the container manager needs to attach volumes (NbdVolumeAttacher fits; tests may fake it). */
export interface VolumeAttacher {
  /** Make the chain for one volume of a container; answers the host path to bind-mount. */
  attach(containerDir: string, v: VolumeSpec): Promise<{ source: string, formattedNow: boolean }>
  /** Undo it, in order (unmount, loop device, FUSE, process), even after errors; throws if anything stays. */
  detach(containerDir: string, name: string): Promise<void>
  /** Is the chain of a volume whole (for adopt after a restart)? */
  healthy(containerDir: string, name: string): Promise<boolean>
  /**
   * Freeze (`frozen`) or thaw the volume's mounted filesystem (fsfreeze: writes wait, everything
   * written before is on the vDisk). Answers false when it is not mounted (nothing to freeze).
   */
  freeze(containerDir: string, name: string, frozen: boolean): Promise<boolean>
}

/** how long nbdfuse may take to connect and mount */
export const nbdfuseStartTimeoutMs = 15_000
const volumeToolTimeoutMs = 120_000
/**
 * How long a detach waits, after the unmount, for the loop device to be released. The unmount of
 * the CSM's mount returns at once even while the container's mount namespace (being torn down
 * after its last process exited) still holds the file system; ext4 writes its final state (the
 * journal checkpoint, the clean superblock) only when that last mount goes, and the loop device
 * (autoclear) is released after that. nbdfuse must carry those writes to the CVM: it is not
 * stopped before the loop device is gone.
 */
const loopReleaseWaitMs = 30_000
/** how often that wait looks for copies of the file system in other mount namespaces (runtime/foreign-mounts.ts) */
const foreignScanIntervalMs = 2_000

export function volumePaths(containerDir: string, name: string) {
  const dir = path.join(containerDir, 'volumes', name)
  return {
    dir,
    fuse: path.join(dir, 'fuse'),
    file: path.join(dir, 'fuse', 'disk'),
    mnt: path.join(dir, 'mnt'),
    pid: path.join(dir, 'nbdfuse.pid'),
    log: path.join(dir, 'nbdfuse.log'),
    state: path.join(dir, 'attach.json'),
  }
}

/** Loop devices whose backing file is `file` (losetup -j). */
async function loopsOf(file: string): Promise<string[]> {
  const r = await execCommand('losetup', ['-n', '-O', 'NAME', '-j', file], { timeoutMs: volumeToolTimeoutMs })
  if (r.code !== 0) return []
  return r.stdout.split('\n').map((l) => l.trim()).filter((l) => l.startsWith('/dev/loop'))
}

async function fsType(dev: string): Promise<string | undefined> {
  // blkid -p: probe the device itself (no cache); exit 2 = nothing found
  const r = await execCommand('blkid', ['-p', '-o', 'value', '-s', 'TYPE', dev], { timeoutMs: volumeToolTimeoutMs })
  if (r.code === 2) return undefined
  if (r.code !== 0) throw new TessError('TESS_E_IO', `cannot probe ${dev}: ${(r.stderr || r.stdout).trim()}`, 'see the CSM log')
  return r.stdout.trim() || undefined
}

async function must(cmd: string, args: string[], what: string, hint: string): Promise<string> {
  const r = await execCommand(cmd, args, { timeoutMs: volumeToolTimeoutMs })
  if (r.code !== 0) throw new TessError('TESS_E_IO', `${what}: ${cmd} ${args.join(' ')}: ${(r.stderr || r.stdout).trim()}`, hint)
  return r.stdout
}

/**
 * The NBD URI nbdfuse connects to: the node's CVM on its Unix socket when there is one (local root
 * only, no TLS needed, not reachable from containers), else its TCP listener.
 */
export function volumeNbdUri(v: VolumeSpec, nbdSocket: string | undefined): string {
  const exportPath = encodeURIComponent(v.nbd.export)
  if (nbdSocket !== undefined && fs.existsSync(nbdSocket)) return `nbd+unix:///${exportPath}?socket=${encodeURIComponent(nbdSocket).replace(/%2F/g, '/')}`
  return `nbd://${v.nbd.host.includes(':') ? `[${v.nbd.host}]` : v.nbd.host}:${v.nbd.port}/${exportPath}`
}

export class NbdVolumeAttacher implements VolumeAttacher {
  /** `nbdSocket`: the node CVM's NBD Unix socket (`<data-dir>/run/nbd.sock`), used when it exists */
  constructor(private readonly log: Logger, private readonly nbdSocket?: string, private readonly bins = { nbdfuse: 'nbdfuse' }) {}

  private async readState(p: ReturnType<typeof volumePaths>, name: string): Promise<AttachState> {
    try {
      return JSON.parse(await fsp.readFile(p.state, 'utf8')) as AttachState
    } catch {
      return { name }
    }
  }

  private async saveState(p: ReturnType<typeof volumePaths>, st: AttachState): Promise<void> {
    await fsp.writeFile(`${p.state}.tmp`, JSON.stringify(st))
    await fsp.rename(`${p.state}.tmp`, p.state)
  }

  async attach(containerDir: string, v: VolumeSpec): Promise<{ source: string, formattedNow: boolean }> {
    const p = volumePaths(containerDir, v.name)
    const what = `cannot attach volume "${v.name}"`
    for (const d of [p.dir, p.fuse, p.mnt]) await fsp.mkdir(d, { recursive: true, mode: 0o700 })
    const st = await this.readState(p, v.name)
    // 1. the export as a file
    if (!(await isMountPoint(p.fuse))) {
      await fsp.rm(p.pid, { force: true })
      const uri = volumeNbdUri(v, this.nbdSocket)
      const out = fs.openSync(p.log, 'a', 0o600)
      const child = spawn(this.bins.nbdfuse, [...(v.readOnly ? ['-r'] : []), '-P', p.pid, p.file, uri], { detached: true, stdio: ['ignore', out, out] })
      fs.closeSync(out)
      child.on('error', () => undefined)
      child.unref()
      const deadline = Date.now() + nbdfuseStartTimeoutMs
      while (!(await isMountPoint(p.fuse)) || !fs.existsSync(p.pid)) {
        if (child.exitCode !== null || Date.now() > deadline) {
          if (child.pid !== undefined && child.exitCode === null) process.kill(child.pid, 'SIGKILL')
          const log = (await fsp.readFile(p.log, 'utf8').catch(() => '')).trim().split('\n').slice(-3).join(' | ') // no log: the error names the rest
          await unmount(p.fuse).catch(() => undefined) // cleanup after the failed attach, whose error is thrown below
          throw new TessError('TESS_E_UNREACHABLE', `${what}: nbdfuse could not serve ${uri}${log ? `: ${log}` : ''}`, 'is the node\'s CVM up? see `tess cluster status`')
        }
        await new Promise((r) => setTimeout(r, 50))
      }
      st.fusePid = child.pid!
      const t = await processStartTime(child.pid!)
      if (t !== undefined) st.fuseStartTime = t
      await this.saveState(p, st)
    }
    // 2. ext4: made on the first read-write attach, never over an existing filesystem
    const type = await fsType(p.file)
    let formattedNow = false
    if (type === undefined) {
      if (v.formatted) {
        throw new TessError('TESS_E_IO', `${what}: it was formatted before but no filesystem is found on it now`, 'the volume is damaged; it was not formatted again so that its data can be recovered')
      }
      if (v.readOnly) throw new TessError('TESS_E_PRECONDITION', `${what} read-only: it has no filesystem yet`, 'attach it read-write once first')
      await must('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', '-L', v.name.slice(0, 16), p.file], what, 'see the CSM log')
      formattedNow = true
      st.formattedNow = true
      this.log.info(`volume ${v.name}: formatted ext4`)
    } else if (type !== 'ext4') {
      throw new TessError('TESS_E_PRECONDITION', `${what}: it holds a ${type} filesystem, not ext4`, 'volumes are ext4')
    }
    // 3. mounted through a loop device that clears itself when the filesystem is unmounted (or its
    //    mount namespace goes), switched to direct I/O (no second page cache); the journal is
    //    replayed here after a crash
    if (!(await isMountPoint(p.mnt))) {
      await must('mount', ['-t', 'ext4', '-o', `loop,${v.readOnly ? 'ro,noload' : 'rw,errors=remount-ro'}`, p.file, p.mnt], what, 'run e2fsck on the volume (see the CSM log)')
    }
    const loop = (await loopsOf(p.file))[0]
    if (loop !== undefined) {
      st.loop = loop
      const r = await execCommand('losetup', ['--direct-io=on', loop], { timeoutMs: volumeToolTimeoutMs })
      if (r.code !== 0) this.log.warn(`volume ${v.name}: direct I/O not enabled on ${loop}: ${(r.stderr || r.stdout).trim()}`)
    }
    st.mounted = true
    await this.saveState(p, st)
    return { source: p.mnt, formattedNow }
  }

  async detach(containerDir: string, name: string): Promise<void> {
    const p = volumePaths(containerDir, name)
    if (!fs.existsSync(p.dir)) return
    const st = await this.readState(p, name)
    const errors: string[] = []
    const step = async (what: string, fn: () => Promise<void>) => {
      try {
        await fn()
      } catch (e) {
        errors.push(`${what}: ${errorMessage(e)}`)
      }
    }
    // a frozen filesystem (a snapshot cut short) is thawed first: its unmount would wait for it
    await this.freeze(containerDir, name, false).catch((e: unknown) => this.log.warn(`volume ${name}: ${errorMessage(e)}`))
    // in order: the filesystem, the loop device (autoclear: gone once the file system is), the FUSE
    // mount, the nbdfuse process; the last two only once the loop device is gone (they carry its
    // last writes)
    await step('unmount the filesystem', () => unmount(p.mnt))
    const loopErrors = errors.length
    await step('detach the loop device', async () => {
      const loops = new Set(await loopsOf(p.file))
      // with the FUSE file gone, losetup -j cannot find it: the recorded device, if it still names the file
      if (st.loop !== undefined && !loops.has(st.loop)) {
        const r = await execCommand('losetup', ['-n', '-O', 'BACK-FILE', st.loop], { timeoutMs: volumeToolTimeoutMs })
        if (r.code === 0 && r.stdout.includes(p.file)) loops.add(st.loop)
      }
      for (const l of loops) await this.releaseLoop(l, p.file, name)
    })
    if (errors.length > loopErrors) {
      // the file system may still have writes to make through nbdfuse: leave it running
      throw new TessError('TESS_E_IO', `cannot detach volume "${name}" yet: ${errors.join('; ')}; nbdfuse is left running so that nothing written is lost`, 'the next stop or remove tries again; see the CSM log')
    }
    const fuseDevice = await mountDevice(p.fuse)
    await step('unmount the NBD file', () => unmount(p.fuse))
    // a copy elsewhere keeps the FUSE file system, and so nbdfuse, alive
    if (fuseDevice !== undefined) await releaseForeignMounts(fuseDevice, this.log, `volume "${name}" (its NBD file)`)
    await step('stop nbdfuse', async () => {
      const pid = st.fusePid
      if (pid === undefined) return
      const deadline = Date.now() + 5000
      while (await isProcessAlive(pid, st.fuseStartTime)) {
        if (Date.now() > deadline) {
          process.kill(pid, 'SIGKILL')
          break
        }
        await new Promise((r) => setTimeout(r, 50))
      }
    })
    const left = await mountsUnder(p.dir)
    if (left.length > 0) errors.push(`still mounted: ${left.join(', ')}`)
    if (errors.length > 0) {
      throw new TessError('TESS_E_IO', `cannot detach volume "${name}" completely: ${errors.join('; ')}`, 'the next stop or remove tries again; see the CSM log')
    }
    await fsp.rm(p.dir, { recursive: true, force: true })
    this.log.info(`volume ${name}: detached from ${containerDir}`)
  }

  /**
   * Wait for the loop device `l` of `file` to be released by autoclear once the file system on it
   * is gone (see loopReleaseWaitMs), unmounting copies of that file system in other mount namespaces
   * meanwhile (runtime/foreign-mounts.ts); then detach what is left, or say what holds it.
   */
  private async releaseLoop(l: string, file: string, name: string): Promise<void> {
    const bound = async () => (await execCommand('losetup', ['-n', '-O', 'BACK-FILE', l], { timeoutMs: volumeToolTimeoutMs })).stdout.includes(file)
    const device = await blockDevice(l)
    const deadline = Date.now() + loopReleaseWaitMs
    let nextScan = 0
    let failed: string[] = []
    while (await bound() && Date.now() < deadline) {
      if (device !== undefined && Date.now() >= nextScan) {
        failed = await releaseForeignMounts(device, this.log, `volume "${name}"`)
        nextScan = Date.now() + foreignScanIntervalMs
      }
      await new Promise((r) => setTimeout(r, 50))
    }
    if (!(await bound())) return
    const r = await execCommand('losetup', ['-d', l], { timeoutMs: volumeToolTimeoutMs })
    if (!(await bound())) return
    const holders = failed.length > 0 ? failed : device === undefined ? [] : (await foreignMounts(device)).map(describeForeign)
    const why = (r.stderr || r.stdout).trim() || 'still in use'
    throw new TessError('TESS_E_IO', `cannot detach ${l}: ${why}${holders.length > 0 ? `; its file system is still mounted at ${holders.join(', ')}` : ''}`, 'losetup -l and grep in /proc/*/mountinfo show what holds it')
  }

  async freeze(containerDir: string, name: string, frozen: boolean): Promise<boolean> {
    const p = volumePaths(containerDir, name)
    if (!(await isMountPoint(p.mnt))) return false
    const r = await execCommand('fsfreeze', [frozen ? '--freeze' : '--unfreeze', p.mnt], { timeoutMs: volumeToolTimeoutMs })
    // thawing a filesystem that is not frozen is EINVAL: it is thawed, as asked
    if (r.code !== 0 && !(!frozen && /invalid argument/i.test(r.stderr))) {
      throw new TessError('TESS_E_IO', `cannot ${frozen ? 'freeze' : 'thaw'} volume "${name}": fsfreeze: ${(r.stderr || r.stdout).trim()}`, 'see the CSM log')
    }
    if (r.code === 0) this.log.info(`volume ${name}: ${frozen ? 'frozen' : 'thawed'} (${containerDir})`)
    return true
  }

  async healthy(containerDir: string, name: string): Promise<boolean> {
    const p = volumePaths(containerDir, name)
    const st = await this.readState(p, name)
    return st.fusePid !== undefined && await isProcessAlive(st.fusePid, st.fuseStartTime) && await isMountPoint(p.fuse) && await isMountPoint(p.mnt)
  }
}
