import path from 'node:path'
import type { FileIo, FileLayer, LaterHandle } from '../../src/cvm/vdisk/fileio.js'
import type { Prng } from './prng.js'
import type { Proc, Scheduler } from './sched.js'

const pageBytes = 4096
const zeroPage = Buffer.alloc(pageBytes)

function errno(code: string, message: string): NodeJS.ErrnoException {
  const e = new Error(`${code}: ${message}`) as NodeJS.ErrnoException
  e.code = code
  return e
}

/**
 * One file's bytes: pages on the medium (`durable`) and pages written since the last sync
 * (`cache`, the page cache's dirty pages, over the durable ones). A sync moves the cache to the
 * medium; a power loss keeps, drops or tears (at 512-byte or 4 KiB granularity) what is cached.
 */
export class Inode {
  readonly durable = new Map<number, Buffer>()
  readonly cache = new Map<number, Buffer>()
  size = 0
  durableSize = 0

  constructor(readonly id: number) {}

  private page(p: number): Buffer | undefined {
    return this.cache.get(p) ?? this.durable.get(p)
  }

  read(buf: Buffer, offset: number, length: number, position: number): number {
    const end = Math.min(position + length, this.size)
    let at = position
    while (at < end) {
      const p = Math.floor(at / pageBytes)
      const inPage = at - p * pageBytes
      const n = Math.min(pageBytes - inPage, end - at)
      const src = this.page(p) ?? zeroPage
      src.copy(buf, offset + (at - position), inPage, inPage + n)
      at += n
    }
    return Math.max(0, end - position)
  }

  /** write `length` bytes of `buf` from `offset` at `position`, into the page cache */
  write(buf: Buffer, offset: number, length: number, position: number): void {
    let at = position
    const end = position + length
    while (at < end) {
      const p = Math.floor(at / pageBytes)
      const inPage = at - p * pageBytes
      const n = Math.min(pageBytes - inPage, end - at)
      let dst = this.cache.get(p)
      if (dst === undefined) {
        dst = Buffer.from(this.durable.get(p) ?? zeroPage)
        this.cache.set(p, dst)
      }
      buf.copy(dst, inPage, offset + (at - position), offset + (at - position) + n)
      at += n
    }
    if (end > this.size) this.size = end
  }

  truncate(len: number): void {
    // a simplification: the new size is durable at once (the store only extends new files, and
    // truncates empty markers)
    for (const m of [this.cache, this.durable]) for (const p of [...m.keys()]) if (p * pageBytes >= len) m.delete(p)
    this.size = len
    this.durableSize = len
  }

  /** make the cached pages durable (fsync / fdatasync); `keep` decides per page when the device fails */
  sync(keep?: (page: number) => boolean): void {
    for (const [p, b] of this.cache) if (keep === undefined || keep(p)) this.durable.set(p, b)
    this.cache.clear()
    this.durableSize = this.size
  }

  /**
   * Rot: flip one bit of the medium at `position`. Only a page the cache does not hold (one the
   * kernel would read from the medium); false otherwise.
   */
  flip(position: number, bit: number): boolean {
    const p = Math.floor(position / pageBytes)
    const page = this.durable.get(p)
    if (page === undefined || this.cache.has(p)) return false
    const copy = Buffer.from(page)
    const i = position - p * pageBytes
    copy[i] = copy[i]! ^ (1 << bit)
    this.durable.set(p, copy)
    return true
  }

  /** a power loss: what reached the medium of what was cached */
  powerLoss(prng: Prng): { kept: number, lost: number, torn: number } {
    const stats = { kept: 0, lost: 0, torn: 0 }
    if (this.cache.size === 0) return stats
    const mode = prng.weighted([['lose', 3], ['keep', 2], ['tear', 5]] as const)
    const sector = prng.chance(0.5) ? 512 : pageBytes
    for (const [p, b] of [...this.cache.entries()].sort((x, y) => x[0] - y[0])) {
      if (mode === 'keep' || (mode === 'tear' && sector === pageBytes && prng.chance(0.5))) {
        this.durable.set(p, b)
        stats.kept++
      } else if (mode === 'tear' && sector === 512) {
        const old = this.durable.get(p) ?? zeroPage
        const mixed = Buffer.from(old)
        let any = false
        for (let s = 0; s < pageBytes; s += sector) {
          if (prng.chance(0.5)) {
            b.copy(mixed, s, s, s + sector)
            any = true
          }
        }
        if (any) this.durable.set(p, mixed)
        stats.torn++
      } else {
        stats.lost++
      }
    }
    this.cache.clear()
    // what the file's size is after the loss: the durable size, or as far as a kept page goes
    let end = this.durableSize
    for (const p of this.durable.keys()) end = Math.max(end, Math.min(this.size, (p + 1) * pageBytes))
    this.size = this.durableSize = end
    return stats
  }
}

export interface DiskFaults {
  /** chance that a read fails with EIO */
  readEio: number
  /** chance that a write fails with EIO (after writing a random part of its pages) */
  writeEio: number
  /** chance that an fsync fails with EIO (the kernel then forgets which of the dirty pages it did not write: they are lost) */
  syncEio: number
}

export const noDiskFaults: DiskFaults = { readEio: 0, writeEio: 0, syncEio: 0 }

interface NsChange { dir: string, name: string, inode: Inode | undefined }

/**
 * A node's disk: its files by path as the running system sees them, and the names and bytes that
 * survive a power loss. A directory entry created, linked or removed is durable after a sync of
 * its directory (POSIX, stricter than ext4's journal usually is); a power loss applies a prefix of
 * the directory changes not synced (the journal's order). A process kill changes nothing here:
 * the page cache outlives the process.
 */
export class SimDisk {
  readonly ns = new Map<string, Inode>()
  private durableNs = new Map<string, Inode>()
  private pendingNs: NsChange[] = []
  private nextInode = 1
  faults: DiskFaults = noDiskFaults

  constructor(readonly node: string, readonly root: string) {}

  create(file: string): Inode {
    const inode = new Inode(this.nextInode++)
    this.setName(file, inode)
    return inode
  }

  setName(file: string, inode: Inode | undefined): void {
    if (inode === undefined) this.ns.delete(file)
    else this.ns.set(file, inode)
    this.pendingNs.push({ dir: path.dirname(file), name: file, inode })
  }

  syncDir(dir: string): void {
    const rest: NsChange[] = []
    for (const c of this.pendingNs) {
      if (c.dir === dir) this.applyDurable(c)
      else rest.push(c)
    }
    this.pendingNs = rest
  }

  private applyDurable(c: NsChange): void {
    if (c.inode === undefined) this.durableNs.delete(c.name)
    else this.durableNs.set(c.name, c.inode)
  }

  /** the machine loses power: unsynced bytes and directory changes are kept, lost or torn */
  powerLoss(prng: Prng): string {
    const n = prng.int(this.pendingNs.length + 1)
    for (const c of this.pendingNs.slice(0, n)) this.applyDurable(c)
    const dropped = this.pendingNs.length - n
    this.pendingNs = []
    const inodes = new Set([...this.ns.values(), ...this.durableNs.values()])
    const total = { kept: 0, lost: 0, torn: 0 }
    for (const inode of [...inodes].sort((a, b) => a.id - b.id)) {
      const s = inode.powerLoss(prng)
      total.kept += s.kept
      total.lost += s.lost
      total.torn += s.torn
    }
    this.ns.clear()
    for (const [k, v] of this.durableNs) this.ns.set(k, v)
    return `unsynced pages kept ${total.kept}, lost ${total.lost}, torn ${total.torn}; directory changes lost ${dropped} of ${dropped + n}`
  }

  /** extent group files, by path, sorted */
  egroupFiles(): Array<[string, Inode]> {
    return [...this.ns.entries()].filter(([p]) => p.endsWith('.eg')).sort((a, b) => a[0].localeCompare(b[0]))
  }
}

/** the pending writes of one process through the pool: a kill lets each one land or not */
interface PendingWrite { apply: () => void }

/**
 * The FileLayer one process of a node sees over the node's SimDisk: every call completes through
 * the scheduler after a latency drawn from the seed, faults come from the disk's fault rates, and
 * nothing completes for a process that died.
 */
export class SimFiles implements FileLayer {
  readonly pendingWrites = new Set<PendingWrite>()
  /** the invariant checks read through the store without latency, faults or scheduler events */
  peek = false

  constructor(readonly disk: SimDisk, readonly proc: Proc, readonly sched: Scheduler, readonly prng: Prng) {}

  latency(): number {
    return this.prng.chance(0.03) ? this.prng.range(1000, 8000) / 1000 : this.prng.range(20, 300) / 1000
  }

  /** complete `fn` after the disk's latency (at once while peeking) */
  op<T>(fn: () => T): Promise<T> {
    if (this.peek) {
      try {
        return Promise.resolve(fn())
      } catch (e) {
        return Promise.reject(e)
      }
    }
    return this.sched.after(this.latency(), this.proc, fn)
  }

  fault(kind: keyof DiskFaults): boolean {
    return !this.peek && this.prng.chance(this.disk.faults[kind])
  }

  /** the process was killed: each write it had in the pool landed in the page cache, or not */
  killed(): void {
    for (const w of this.pendingWrites) if (this.prng.chance(0.5)) w.apply()
    this.pendingWrites.clear()
  }

  open(file: string, flags: string): Promise<FileIo> {
    return this.op(() => {
      let inode = this.disk.ns.get(file)
      if (flags === 'wx+') {
        if (inode !== undefined) throw errno('EEXIST', file)
        inode = this.disk.create(file)
      } else if (flags === 'w') {
        if (inode === undefined) inode = this.disk.create(file)
        else inode.truncate(0)
      } else if (inode === undefined) {
        throw errno('ENOENT', file)
      }
      return new SimFileIo(this, inode)
    })
  }

  openDirect(): Promise<FileIo | undefined> {
    // no O_DIRECT here: large writes stay buffered (SimFileIo.pagesCached answers undefined, so the store never asks)
    return Promise.resolve(undefined)
  }

  exists(file: string): boolean {
    return this.disk.ns.has(file)
  }

  async touch(file: string): Promise<void> {
    const fh = await this.open(file, 'w')
    await fh.close()
  }

  remove(file: string): Promise<void> {
    return this.op(() => {
      if (this.disk.ns.has(file)) this.disk.setName(file, undefined)
    })
  }

  list(dir: string): Promise<string[]> {
    return this.op(() => {
      const names = [...this.disk.ns.keys()].filter((k) => path.dirname(k) === dir).map((k) => path.basename(k)).sort()
      if (names.length === 0) throw errno('ENOENT', dir)
      return names
    })
  }

  /** no change times are simulated (the simulation runs no garbage collection): every file is as old as can be */
  stat(file: string): Promise<{ allocatedBytes: number, changedAtMs: number } | undefined> {
    return this.op(() => {
      const inode = this.disk.ns.get(file)
      return inode === undefined ? undefined : { allocatedBytes: inode.size, changedAtMs: 0 }
    })
  }

  link(existing: string, newName: string): Promise<void> {
    return this.op(() => {
      const inode = this.disk.ns.get(existing)
      if (inode === undefined) throw errno('ENOENT', existing)
      if (this.disk.ns.has(newName)) throw errno('EEXIST', newName)
      this.disk.setName(newName, inode)
    })
  }

  unlink(file: string): Promise<void> {
    return this.op(() => {
      if (!this.disk.ns.has(file)) throw errno('ENOENT', file)
      this.disk.setName(file, undefined)
    })
  }

  syncDir(dir: string): Promise<void> {
    return this.op(() => {
      if (this.fault('syncEio')) throw errno('EIO', `fsync of directory ${dir}`)
      this.disk.syncDir(dir)
    })
  }

  later(ms: number, fn: () => void): LaterHandle {
    return this.sched.at(ms, fn, this.proc)
  }

  freeBytes(): number {
    return 1024 * 1024 * 1024 * 1024
  }
}

/** an open file of a SimFiles: positional I/O on its inode */
class SimFileIo implements FileIo {
  private closed = false

  constructor(private readonly files: SimFiles, private readonly inode: Inode) {}

  private check(): void {
    if (this.closed) throw errno('EBADF', 'file closed')
  }

  read(buf: Buffer, offset: number, length: number, position: number): Promise<number> {
    return this.files.op(() => {
      this.check()
      if (this.files.fault('readEio')) throw errno('EIO', 'read')
      return this.inode.read(buf, offset, length, position)
    })
  }

  readFull(buf: Buffer, offset: number, length: number, position: number): Promise<number> {
    return this.read(buf, offset, length, position)
  }

  readFullCached(buf: Buffer, offset: number, length: number, position: number): Promise<number> {
    return this.read(buf, offset, length, position)
  }

  /** the simulated page cache holds everything; a read fault sends the caller to read() */
  readCached(buf: Buffer, offset: number, length: number, position: number): number {
    if (this.closed || this.files.fault('readEio')) return 0
    return this.inode.read(buf, offset, length, position)
  }

  /** a write that fails writes a random prefix of its pages first */
  private writeNow(buf: Buffer, position: number): void {
    this.check()
    if (this.files.fault('writeEio')) {
      const part = Math.floor(this.files.prng.next() * buf.length / pageBytes) * pageBytes
      if (part > 0) this.inode.write(buf, 0, part, position)
      throw errno('EIO', 'write')
    }
    this.inode.write(buf, 0, buf.length, position)
  }

  writeAll(buf: Buffer, position: number): Promise<void> {
    if (this.files.peek) return this.files.op(() => this.writeNow(buf, position))
    // the bytes are taken now (the caller may reuse its buffer once the write completes)
    const copy = Buffer.from(buf)
    const w: PendingWrite = { apply: () => this.inode.write(copy, 0, copy.length, position) }
    this.files.pendingWrites.add(w)
    return this.files.op(() => {
      this.files.pendingWrites.delete(w)
      this.writeNow(copy, position)
    })
  }

  writeAllSync(buf: Buffer, position: number): void {
    this.writeNow(buf, position)
  }

  pagesCached(): number | undefined {
    return undefined
  }

  truncate(len: number): Promise<void> {
    return this.files.op(() => {
      this.check()
      this.inode.truncate(len)
    })
  }

  private syncNow(): void {
    this.check()
    if (this.files.fault('syncEio')) {
      // Linux: the pages whose writeback failed are marked clean and forgotten
      this.inode.sync(() => this.files.prng.chance(0.5))
      throw errno('EIO', 'fsync')
    }
    this.inode.sync()
  }

  sync(): Promise<void> {
    return this.files.op(() => this.syncNow())
  }

  datasync(): Promise<void> {
    return this.files.op(() => this.syncNow())
  }

  close(): Promise<void> {
    return this.files.op(() => {
      this.closed = true
    })
  }
}
