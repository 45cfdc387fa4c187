import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import { TessError, errorMessage } from '../../lib/errors.js'
import { fsyncDir } from '../../lib/fsutil.js'
import { type Clock, realClock } from '../../lib/clock.js'
import { spareEgroupFillFreeGroupsMin, spareEgroupFillIdleMs, spareEgroupFillWriteBytes, spareEgroupReleaseFreeGroups, spareEgroupsConfigMax, spareEgroupsPerDiskMax, spareEgroupsShareOfDisk } from '../../lib/limits.js'
import { alignedBuffer, directIoReady } from '../../lib/nativeio.js'
import type { Logger } from '../../lib/log.js'
import { spareDirName } from '../pool/disks.js'
import { egroupFileBytes, egroupZeroPrefixBytes } from './egroup.js'


/**
 * Spare extent group files: whole files whose every block was written (with zeros) before any
 * vDisk needed them. A new extent group takes one (EgroupFile.create renames it into place), so a
 * vDisk's first writes land on blocks the file system already allocated and wrote: on the disks we
 * measured, a write into a hole costs the file system's allocation and runs at about half the speed
 * of an overwrite, and `fallocate` alone does not help (it leaves unwritten extents to convert).
 *
 * Where spares come from: a deleted extent group of an encrypted vDisk whose blocks are all
 * allocated is recycled (its header and checksum entries are zeroed, so nothing of the old data can
 * be read through it: a block without a written entry reads as zeros; the data region keeps
 * ciphertext whose key is gone; a plain vDisk's groups are never recycled, so its plaintext does
 * not outlive it in a file), and a background fill writes new ones while the
 * node's data path is idle (no extent group I/O for spareEgroupFillIdleMs), one at a time, with
 * O_DIRECT where it can so the zeros do not crowd the page cache. A burst of first writes larger
 * than the reserve continues at the file system's own speed on sparse files; the fill never runs
 * during it.
 *
 * Spares are free space: the disk's free bytes include them (statDisk). Sparse extent groups grow
 * as they are written, so when the file system's own free space falls below
 * spareEgroupReleaseFreeGroups groups, spares are deleted (one per check, at any load) to give it
 * back; the fill starts again only with room for the whole reserve and 4 groups more. A spare is complete only under its final name;
 * a fill cut short leaves `*.tmp`, removed at the next start.
 *
 * Two names: `zero-N.eg` for a spare the fill wrote (its data region is zeros, durably), and
 * `spare-N.eg` for a recycled one (its data region holds a deleted group's ciphertext). A group
 * made from a zero spare knows its data region is zeros (EgroupFile: the first write into one of
 * its blocks needs no data sync ahead of the checksum entries); a recycled one does not. Files of
 * either name from before are taken as they are named; nothing else is assumed about them.
 */
export interface Spare {
  file: string
  /** the data region is zeros (written by the fill), not a recycled group's bytes */
  zeroData: boolean
}

const spareNamePattern = /^(spare|zero)-(\d+)\.eg$/

/** Whether a spare file's name says its data region is zeros. */
function isZeroSpare(file: string): boolean {
  return path.basename(file).startsWith('zero-')
}

export class SpareEgroups {
  private readonly ready = new Map<string, string[]>()
  private timer: NodeJS.Timeout | undefined
  private filling = false
  private lastIo = -1
  private lastIoAtMs = 0
  private stopped = false
  private seq = 0
  private readonly clock: Clock

  constructor(private readonly opts: {
    /** egroups directories of this node's disks, by disk id */
    disks: () => Promise<Array<{ id: string, path: string }>>
    log: Logger
    /** spare files wanted per disk; undefined: the default (see target) */
    perDisk?: number
    clock?: Clock
    /** free and total bytes of the file system holding a path (default: statfs) */
    statfs?: (p: string) => Promise<{ freeBytes: number, totalBytes: number }>
  }) {
    this.clock = opts.clock ?? realClock
    this.statfs = opts.statfs ?? (async (p) => {
      const st = await fsp.statfs(p)
      return { freeBytes: st.bavail * st.bsize, totalBytes: st.blocks * st.bsize }
    })
  }

  private readonly statfs: (p: string) => Promise<{ freeBytes: number, totalBytes: number }>

  /**
   * Give space back: on each disk whose file system has less than spareEgroupReleaseFreeGroups
   * groups free, delete one spare. Returns how many were deleted.
   */
  async releaseIfLow(): Promise<number> {
    let released = 0
    for (const d of await this.opts.disks()) {
      const list = this.ready.get(d.id)
      if (list === undefined || list.length === 0) continue
      let st: { freeBytes: number }
      try {
        st = await this.statfs(d.path)
      } catch {
        continue
      }
      if (st.freeBytes >= spareEgroupReleaseFreeGroups * egroupFileBytes) continue
      const file = list.pop()!
      await fsp.rm(file, { force: true })
      this.opts.log.warn(`disk ${d.id} (${d.path}) is nearly full (${Math.floor(st.freeBytes / 2 ** 20)} MiB free): deleted spare extent group ${path.basename(file)}, ${list.length} left`)
      released++
    }
    return released
  }

  /** Spares wanted on a disk of `capacityBytes`: the configured count, else a share of the disk up to a bound. */
  target(capacityBytes: number): number {
    if (this.opts.perDisk !== undefined) return this.opts.perDisk
    return Math.min(spareEgroupsPerDiskMax, Math.floor(capacityBytes * spareEgroupsShareOfDisk / egroupFileBytes))
  }

  static dir(diskPath: string): string {
    return path.join(diskPath, spareDirName)
  }

  /** Find the spares of every disk (after a restart), dropping fills that were cut short. */
  async load(): Promise<void> {
    for (const d of await this.opts.disks()) await this.loadDisk(d.id, d.path)
  }

  private async loadDisk(diskId: string, diskPath: string): Promise<string[]> {
    const known = this.ready.get(diskId)
    if (known) return known
    const list: string[] = []
    this.ready.set(diskId, list)
    const dir = SpareEgroups.dir(diskPath)
    let names: string[] = []
    try {
      names = await fsp.readdir(dir)
    } catch { /* no spares yet */ }
    for (const n of names) {
      const file = path.join(dir, n)
      const m = spareNamePattern.exec(n)
      if (m === null) {
        await fsp.rm(file, { force: true })
        continue
      }
      this.seq = Math.max(this.seq, Number(m[2]) + 1)
      try {
        const st = await fsp.stat(file)
        if (st.size !== egroupFileBytes || !(await zeroPrefix(file))) {
          this.opts.log.warn(`spare extent group ${file} is not a complete spare: removing it`)
          await fsp.rm(file, { force: true })
          continue
        }
        list.push(file)
      } catch (e) {
        this.opts.log.warn(`spare extent group ${file}: ${errorMessage(e)}`)
      }
    }
    return list
  }

  /** Spare files ready on a disk. */
  count(diskId: string): number {
    return this.ready.get(diskId)?.length ?? 0
  }

  /** A spare file of the disk for a new extent group to take (it leaves the reserve), or undefined. */
  async take(diskId: string, diskPath: string): Promise<Spare | undefined> {
    const file = (await this.loadDisk(diskId, diskPath)).pop()
    return file === undefined ? undefined : { file, zeroData: isZeroSpare(file) }
  }

  /**
   * A deleted extent group file of an encrypted vDisk (the caller decides): kept as a spare (its
   * header and entries zeroed, durably) when the disk's reserve is short and every block of the
   * file is allocated; otherwise removed.
   */
  async recycle(diskId: string, diskPath: string, file: string): Promise<void> {
    const list = await this.loadDisk(diskId, diskPath)
    try {
      const st = await fsp.stat(file)
      const fsStat = await this.statfs(diskPath)
      if (list.length < this.target(fsStat.totalBytes) && st.size === egroupFileBytes && st.blocks * 512 >= egroupFileBytes) {
        const fh = await fsp.open(file, 'r+')
        try {
          await fh.write(Buffer.alloc(egroupZeroPrefixBytes), 0, egroupZeroPrefixBytes, 0)
          await fh.datasync()
        } finally {
          await fh.close()
        }
        const dir = SpareEgroups.dir(diskPath)
        await fsp.mkdir(dir, { recursive: true, mode: 0o700 })
        const spare = path.join(dir, `spare-${this.seq++}.eg`)
        await fsp.rename(file, spare)
        await fsyncDir(dir)
        await fsyncDir(path.dirname(file))
        list.push(spare)
        return
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return
      this.opts.log.warn(`cannot keep ${file} as a spare extent group: ${errorMessage(e)}`)
    }
    await fsp.rm(file, { force: true })
  }

  /** Bytes held by a disk's spares (free space: the disk's free bytes include them). */
  bytes(diskId: string): number {
    return this.count(diskId) * egroupFileBytes
  }

  /**
   * Fill in the background: every check, when extent group I/O (`ioCount`) has not moved for
   * spareEgroupFillIdleMs, write one spare on the disk that lacks the most.
   */
  start(ioCount: () => number, checkMs = 500): void {
    const tick = (): void => {
      if (this.stopped) return
      void this.releaseIfLow().then(() => this.fillOnce(ioCount)).catch((e: unknown) => {
        this.opts.log.warn(`spare extent groups: ${errorMessage(e)}`)
        return false
      }).then((filled) => {
        // while idle, one spare after another; otherwise look again later
        if (!this.stopped) this.timer = setTimeout(tick, filled ? 0 : checkMs).unref()
      })
    }
    this.timer = setTimeout(tick, checkMs).unref()
  }

  stop(): void {
    this.stopped = true
    if (this.timer) clearTimeout(this.timer)
  }

  /** One step of the fill: returns whether a spare was written. */
  async fillOnce(ioCount: () => number): Promise<boolean> {
    if (this.filling) return false
    const now = this.clock.now()
    const io = ioCount()
    if (io !== this.lastIo) {
      this.lastIo = io
      this.lastIoAtMs = now
      return false
    }
    if (now - this.lastIoAtMs < spareEgroupFillIdleMs) return false
    let best: { id: string, path: string, lack: number } | undefined
    for (const d of await this.opts.disks()) {
      let st: { freeBytes: number, totalBytes: number }
      try {
        st = await this.statfs(d.path)
      } catch {
        continue
      }
      const list = await this.loadDisk(d.id, d.path)
      // never take the last of a disk's free space for spares
      if (st.freeBytes < (spareEgroupFillFreeGroupsMin + this.target(st.totalBytes)) * egroupFileBytes) continue
      const lack = this.target(st.totalBytes) - list.length
      if (lack > 0 && (!best || lack > best.lack)) best = { ...d, lack }
    }
    if (!best) return false
    this.filling = true
    try {
      const list = await this.loadDisk(best.id, best.path)
      const dir = SpareEgroups.dir(best.path)
      await fsp.mkdir(dir, { recursive: true, mode: 0o700 })
      const name = `zero-${this.seq++}.eg`
      const tmp = path.join(dir, `${name}.tmp`)
      await writeZeros(tmp, () => ioCount() !== io || this.stopped)
      const file = path.join(dir, name)
      await fsp.rename(tmp, file)
      await fsyncDir(dir)
      list.push(file)
      return true
    } catch (e) {
      if (e instanceof FillInterrupted) return false
      throw e
    } finally {
      this.filling = false
    }
  }
}

class FillInterrupted extends Error {}

/** The spare count per disk from node.json and the env TESS_SPARE_EGROUPS (which wins); undefined: the default. */
export function spareEgroupsPerDisk(configured: number | undefined, env: string | undefined): number | undefined {
  const bad = (v: string, from: string): never => {
    throw new TessError('TESS_E_INVALID', `${from} is "${v}", not a whole number from 0 to ${spareEgroupsConfigMax}`,
      'set the spare extent groups per disk (0 turns spares off), or leave it out for the default (1 % of the disk, at most 32)')
  }
  if (env !== undefined && env !== '') {
    if (!/^\d+$/.test(env) || Number(env) > spareEgroupsConfigMax) bad(env, 'TESS_SPARE_EGROUPS')
    return Number(env)
  }
  if (configured === undefined) return undefined
  if (!Number.isInteger(configured) || configured < 0 || configured > spareEgroupsConfigMax) bad(String(configured), 'node.json pool.spareEgroupsPerDisk')
  return configured
}

/** whether the file's header and checksum region are zeros (a spare must show no extent group) */
async function zeroPrefix(file: string): Promise<boolean> {
  const fh = await fsp.open(file, 'r')
  try {
    const buf = Buffer.alloc(egroupZeroPrefixBytes)
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0)
    return bytesRead === buf.length && buf.every((b) => b === 0)
  } finally {
    await fh.close()
  }
}

/**
 * Write a whole spare of zeros, durably, with O_DIRECT where the file system takes it. Stops (and
 * removes the file) as soon as `interrupted` says client I/O started: the fill only uses idle time.
 */
async function writeZeros(file: string, interrupted: () => boolean): Promise<void> {
  const aligned = alignedBuffer(spareEgroupFillWriteBytes)
  const buf = aligned && directIoReady(aligned) ? aligned.fill(0) : Buffer.alloc(spareEgroupFillWriteBytes)
  let fh: fsp.FileHandle
  try {
    fh = await fsp.open(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC | (buf === aligned ? fs.constants.O_DIRECT ?? 0 : 0), 0o600)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e
    fh = await fsp.open(file, 'w', 0o600)
  }
  try {
    for (let at = 0; at < egroupFileBytes; at += buf.length) {
      if (interrupted()) throw new FillInterrupted()
      const n = Math.min(buf.length, egroupFileBytes - at)
      let done = 0
      while (done < n) {
        const { bytesWritten } = await fh.write(buf, done, n - done, at + done)
        if (bytesWritten <= 0) throw new TessError('TESS_E_IO', `short write filling spare extent group ${file}`, 'check the disk (dmesg) and its free space')
        done += bytesWritten
      }
    }
    await fh.datasync()
  } catch (e) {
    await fh.close()
    await fsp.rm(file, { force: true })
    throw e
  }
  await fh.close()
}
