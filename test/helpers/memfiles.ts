import path from 'node:path'
import type { FileIo, FileLayer, LaterHandle } from '../../src/cvm/vdisk/fileio.js'

/** One file: what the running system sees, and what survives a crash (synced). */
interface MemFile {
  data: Buffer
  durable: Buffer
}

function errno(code: string, message: string): NodeJS.ErrnoException {
  const e = new Error(`${code}: ${message}`) as NodeJS.ErrnoException
  e.code = code
  return e
}

/**
 * An in-memory FileLayer for unit tests of the extent store: files whose writes are volatile
 * until a sync (crash() drops them), an fsync that can be made to fail (dropping what it did not
 * write, as Linux does), and asynchronous writes that can be held and released in any order (two
 * writes through the thread pool land in either order). Timers never fire.
 */
export class MemFiles implements FileLayer {
  readonly files = new Map<string, MemFile>()
  /** names a crash keeps (created or removed durably: synced directory) */
  private durableNames = new Map<string, MemFile>()
  /** datasyncs still to fail with EIO */
  failDatasyncs = 0
  /**
   * Which of the pages it had to write (4 KiB, by file offset) a failing datasync wrote before it
   * failed, as a power loss during an fsync may leave them too; unset, it wrote none.
   */
  tornDatasync: ((position: number) => boolean) | undefined
  /** datasyncs (and syncs) so far, failed ones too */
  datasyncs = 0
  /** while set, writeAll calls wait in `held` until released */
  hold = false
  readonly held: Array<{ release: () => void }> = []

  private file(name: string): MemFile {
    const f = this.files.get(name)
    if (f === undefined) throw errno('ENOENT', name)
    return f
  }

  async open(file: string, flags: string): Promise<FileIo> {
    let f = this.files.get(file)
    if (flags === 'wx+' && f !== undefined) throw errno('EEXIST', file)
    if (f === undefined) {
      if (flags === 'r+') throw errno('ENOENT', file)
      f = { data: Buffer.alloc(0), durable: Buffer.alloc(0) }
      this.files.set(file, f)
    }
    return new MemFileIo(f, this)
  }

  async openDirect(): Promise<FileIo | undefined> {
    return undefined
  }

  exists(file: string): boolean {
    return this.files.has(file)
  }

  async touch(file: string): Promise<void> {
    await this.open(file, 'w')
  }

  async remove(file: string): Promise<void> {
    this.files.delete(file)
  }

  async list(dir: string): Promise<string[]> {
    const names = [...this.files.keys()].filter((k) => path.dirname(k) === dir).map((k) => path.basename(k)).sort()
    if (names.length === 0) throw errno('ENOENT', dir)
    return names
  }

  /** no change times are kept here: every file is as old as can be */
  async stat(file: string): Promise<{ allocatedBytes: number, changedAtMs: number } | undefined> {
    const f = this.files.get(file)
    return f === undefined ? undefined : { allocatedBytes: f.data.length, changedAtMs: 0 }
  }

  async link(existing: string, newName: string): Promise<void> {
    this.files.set(newName, this.file(existing))
  }

  async unlink(file: string): Promise<void> {
    this.file(file)
    this.files.delete(file)
  }

  async syncDir(dir: string): Promise<void> {
    for (const k of [...this.durableNames.keys()]) if (path.dirname(k) === dir && !this.files.has(k)) this.durableNames.delete(k)
    for (const [k, v] of this.files) if (path.dirname(k) === dir) this.durableNames.set(k, v)
  }

  later(): LaterHandle {
    return { cancel: () => undefined }
  }

  freeBytes(_dir?: string): number {
    return 1024 ** 4
  }

  /** power loss: every file is what its last sync left, names what their directory's last sync left */
  crash(): void {
    this.files.clear()
    for (const [k, f] of this.durableNames) {
      f.data = Buffer.from(f.durable)
      this.files.set(k, f)
    }
  }

  /** the durable bytes of a file (tests change them: rot) */
  durable(file: string): Buffer {
    return this.file(file).durable
  }
}

class MemFileIo implements FileIo {
  constructor(private readonly f: MemFile, private readonly layer: MemFiles) {}

  private put(buf: Buffer, position: number): void {
    const end = position + buf.length
    if (end > this.f.data.length) {
      const grown = Buffer.alloc(end)
      this.f.data.copy(grown)
      this.f.data = grown
    }
    buf.copy(this.f.data, position)
  }

  async read(buf: Buffer, offset: number, length: number, position: number): Promise<number> {
    return this.readCached(buf, offset, length, position)
  }

  readFull(buf: Buffer, offset: number, length: number, position: number): Promise<number> {
    return this.read(buf, offset, length, position)
  }

  readFullCached(buf: Buffer, offset: number, length: number, position: number): Promise<number> {
    return this.read(buf, offset, length, position)
  }

  readCached(buf: Buffer, offset: number, length: number, position: number): number {
    const n = Math.max(0, Math.min(length, this.f.data.length - position))
    this.f.data.copy(buf, offset, position, position + n)
    return n
  }

  async writeAll(buf: Buffer, position: number): Promise<void> {
    const copy = Buffer.from(buf)
    if (this.layer.hold) await new Promise<void>((resolve) => this.layer.held.push({ release: resolve }))
    this.put(copy, position)
  }

  writeAllSync(buf: Buffer, position: number): void {
    this.put(buf, position)
  }

  pagesCached(): number | undefined {
    return undefined
  }

  async truncate(len: number): Promise<void> {
    const b = Buffer.alloc(len)
    this.f.data.copy(b, 0, 0, Math.min(len, this.f.data.length))
    this.f.data = b
  }

  async datasync(): Promise<void> {
    this.layer.datasyncs++
    if (this.layer.failDatasyncs > 0) {
      this.layer.failDatasyncs--
      const torn = this.layer.tornDatasync
      if (torn !== undefined) {
        // the pages it wrote before it failed
        const durable = Buffer.alloc(Math.max(this.f.data.length, this.f.durable.length))
        this.f.durable.copy(durable)
        for (let at = 0; at < this.f.data.length; at += 4096) {
          const page = this.f.data.subarray(at, at + 4096)
          if (!page.equals(durable.subarray(at, at + page.length)) && torn(at)) page.copy(durable, at)
        }
        this.f.durable = durable
      }
      // Linux: the dirty pages it could not write are marked clean and forgotten
      this.f.data = Buffer.from(this.f.durable)
      throw errno('EIO', 'fsync')
    }
    this.f.durable = Buffer.from(this.f.data)
  }

  sync(): Promise<void> {
    return this.datasync()
  }

  async close(): Promise<void> { /* nothing held */ }
}
