import fsp from 'node:fs/promises'
import fs from 'node:fs'
import { fsyncDir } from '../../lib/fsutil.js'
import { RawFile } from './rawfile.js'

/**
 * What the extent store (egroup.ts, replicastore.ts) needs of the machine: positional I/O on open
 * files, a few directory operations and one kind of timer. Production uses `realFiles` (RawFile
 * over node:fs, the same calls the store always made); the storage simulator (test/sim) passes a
 * simulated disk whose unsynced writes a crash can drop or tear, and whose time is the simulation's.
 */
export interface FileIo {
  read(buf: Buffer, offset: number, length: number, position: number): Promise<number>
  writeAll(buf: Buffer, position: number): Promise<void>
  /** writeAll on the calling thread (synchronous pwrite calls): for small writes into the page cache */
  writeAllSync(buf: Buffer, position: number): void
  /** bytes read into buf[offset, ...): fewer than `length` only at the end of the file */
  readFull(buf: Buffer, offset: number, length: number, position: number): Promise<number>
  /** readFull that copies what the page cache holds on the calling thread first (rawfile.ts) */
  readFullCached(buf: Buffer, offset: number, length: number, position: number): Promise<number>
  /**
   * Bytes copied into buf[offset, ...) on the calling thread from what the page cache holds at
   * `position`, never waiting for the disk: fewer than `length` (0 where this cannot be done) when
   * part is not cached, or at the end of the file.
   */
  readCached(buf: Buffer, offset: number, length: number, position: number): number
  /** pages of [offset, offset + length) the page cache holds, or undefined where that cannot be told */
  pagesCached(offset: number, length: number): number | undefined
  truncate(len: number): Promise<void>
  sync(): Promise<void>
  datasync(): Promise<void>
  close(): Promise<void>
}

/** A one-shot timer that does not keep the process alive. */
export interface LaterHandle {
  cancel(): void
}

export interface FileLayer {
  /** open with fs.open's flags ('r+', 'wx+', ...) */
  open(file: string, flags: string, mode?: number): Promise<FileIo>
  /** the existing file opened again for writing with O_DIRECT, or undefined where there is none */
  openDirect(file: string): Promise<FileIo | undefined>
  exists(file: string): boolean
  /** create (or truncate) an empty file: the dirty marker */
  touch(file: string): Promise<void>
  /** remove a file; no error when it does not exist */
  remove(file: string): Promise<void>
  /** the names in a directory (throws when it cannot be read, e.g. it does not exist) */
  list(dir: string): Promise<string[]>
  /** the bytes a file takes on disk and when its data or inode last changed (mtime or ctime, the later), or undefined when it does not exist */
  stat(file: string): Promise<{ allocatedBytes: number, changedAtMs: number } | undefined>
  link(existing: string, newName: string): Promise<void>
  unlink(file: string): Promise<void>
  /** fsync a directory: entries created, linked or removed in it are durable after this */
  syncDir(dir: string): Promise<void>
  /** run `fn` after `ms` (the delayed removal of a dirty marker) */
  later(ms: number, fn: () => void): LaterHandle
  /** free bytes of the file system holding `dir` for an unprivileged writer (statfs); throws when it cannot be read */
  freeBytes(dir: string): number
}

export const realFiles: FileLayer = {
  open: (file, flags, mode) => RawFile.open(file, flags, mode),
  openDirect: (file) => RawFile.openDirect(file),
  exists: (file) => fs.existsSync(file),
  touch: async (file) => {
    const fh = await fsp.open(file, 'w', 0o600)
    await fh.close()
  },
  remove: (file) => fsp.rm(file, { force: true }),
  list: (dir) => fsp.readdir(dir),
  stat: async (file) => {
    try {
      const st = await fsp.stat(file)
      return { allocatedBytes: st.blocks * 512, changedAtMs: Math.max(st.mtimeMs, st.ctimeMs) }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw e
    }
  },
  link: (existing, newName) => fsp.link(existing, newName),
  unlink: (file) => fsp.unlink(file),
  syncDir: (dir) => fsyncDir(dir),
  later: (ms, fn) => {
    const t = setTimeout(fn, ms)
    t.unref()
    return { cancel: () => clearTimeout(t) }
  },
  freeBytes: (dir) => {
    const s = fs.statfsSync(dir)
    return s.bavail * s.bsize
  },
}
