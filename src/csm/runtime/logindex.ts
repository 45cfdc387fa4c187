import fs from 'node:fs'
import fsp from 'node:fs/promises'
import { TessError } from '../../lib/errors.js'
import { nativeBuildFile } from '../../lib/packageroot.js'

/**
 * The times of a container's output. Each run of a container writes its stdout and stderr through
 * tess-logger (native/logger.c, built by node-gyp during `npm ci`), which appends every chunk it
 * reads to the log as it came and one 16-byte record to the log's index: the chunk's offset in the
 * log and the time it was read, in nanoseconds since the epoch (two little-endian u64). A line's
 * time is the time of the chunk its first byte came in. Without tess-logger (not built on this
 * node) a container writes its log directly, as before, and its log has no times.
 */

export const logIndexRecordBytes = 16
/** how many index records are read at once */
const indexReadRecords = 4096

/** tess-logger as node-gyp builds it, next to the native addons; undefined when it was not built. */
export function builtLogger(): string | undefined {
  const file = nativeBuildFile('tess-logger')
  try {
    fs.accessSync(file, fs.constants.X_OK)
    return file
  } catch {
    return undefined // not built (no compiler when npm ci ran): logs without times
  }
}

export interface LogStamp {
  /** where the chunk starts in the log */
  offset: number
  /** when it was read, in nanoseconds since the epoch */
  ns: bigint
}

/** The whole records of `buf` (a record cut short by a crash at its end is left out). */
export function parseStamps(buf: Buffer): LogStamp[] {
  const out: LogStamp[] = []
  for (let i = 0; i + logIndexRecordBytes <= buf.length; i += logIndexRecordBytes) {
    out.push({ offset: Number(buf.readBigUInt64LE(i)), ns: buf.readBigUInt64LE(i + 8) })
  }
  return out
}

/** RFC 3339 UTC with nanoseconds, as `docker logs --timestamps` prints them. */
export function formatStamp(ns: bigint): string {
  const ms = Number(ns / 1_000_000n)
  const frac = (ns % 1_000_000_000n).toString().padStart(9, '0')
  return `${new Date(ms).toISOString().slice(0, 19)}.${frac}Z`
}

/** An open index: its records read in blocks by position (the index of a long-lived container is large). */
class IndexFile {
  private constructor(private readonly fh: fsp.FileHandle, readonly records: number) {}

  static async open(file: string, what: string): Promise<IndexFile> {
    let fh: fsp.FileHandle
    try {
      fh = await fsp.open(file, 'r')
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e
      throw new TessError('TESS_E_PRECONDITION', `the log of ${what} has no times: its current run writes no log index`,
        'tess-logger records them; it is built by npm ci (with g++ and make) and used from the next start of the container. Without --since and --timestamps the log reads as it is')
    }
    return new IndexFile(fh, Math.floor((await fh.stat()).size / logIndexRecordBytes))
  }

  async read(from: number, count: number): Promise<LogStamp[]> {
    const n = Math.max(0, Math.min(count, this.records - from))
    if (n === 0) return []
    const buf = Buffer.alloc(n * logIndexRecordBytes)
    const { bytesRead } = await this.fh.read(buf, 0, buf.length, from * logIndexRecordBytes)
    return parseStamps(buf.subarray(0, bytesRead))
  }

  async at(i: number): Promise<LogStamp> {
    return (await this.read(i, 1))[0]!
  }

  /** the first record for which `pred` holds (records are in log order; pred false then true), or `records` */
  async first(pred: (s: LogStamp) => boolean): Promise<number> {
    let lo = 0
    let hi = this.records
    while (lo < hi) {
      const mid = Math.floor((lo + hi) / 2)
      if (pred(await this.at(mid))) hi = mid
      else lo = mid + 1
    }
    return lo
  }

  close(): Promise<void> {
    return this.fh.close()
  }
}

/**
 * Where the output since `sinceMs` starts in the log: the offset of the first chunk read at or after
 * it (times are taken to grow with offsets, as they do unless the clock is set back), or undefined
 * when everything in the log is older.
 */
export async function offsetSince(indexFile: string, sinceMs: number, what: string): Promise<number | undefined> {
  const idx = await IndexFile.open(indexFile, what)
  try {
    const since = BigInt(Math.floor(sinceMs)) * 1_000_000n
    const i = await idx.first((s) => s.ns >= since)
    return i < idx.records ? (await idx.at(i)).offset : undefined
  } finally {
    await idx.close()
  }
}

/** The records of the chunks that hold bytes [from, to) of the log. */
export async function stampsBetween(indexFile: string, from: number, to: number, what: string): Promise<LogStamp[]> {
  const idx = await IndexFile.open(indexFile, what)
  try {
    // the last chunk that starts at or before `from`, and every one after it that starts before `to`
    let i = Math.max(0, (await idx.first((s) => s.offset > from)) - 1)
    const out: LogStamp[] = []
    for (;;) {
      const block = await idx.read(i, indexReadRecords)
      for (const s of block) {
        if (s.offset >= to) return out
        // a record given back with the log's head (tess-logger's cap) reads as zeros
        if (s.ns !== 0n) out.push(s)
      }
      if (block.length < indexReadRecords) return out
      i += block.length
    }
  } finally {
    await idx.close()
  }
}

/**
 * `data` is the log from byte `pos`; `lineStart` says whether a line starts at `pos`. Every line
 * that starts in `data` gets the time of the chunk its first byte came in, then a space, in front
 * (a line begun before `pos` gets none: its time was given with its start). `stamps` are the
 * records of the chunks that hold `data` (stampsBetween); bytes before the first record have none.
 * Stops before a line that would take the answer past `maxBytes`; `consumed` says how much of
 * `data` the answer holds.
 */
export function stampLines(data: Buffer, pos: number, lineStart: boolean, stamps: LogStamp[], maxBytes = Infinity): { data: Buffer, consumed: number } {
  const parts: Buffer[] = []
  let outBytes = 0
  let k = 0
  const stampAt = (offset: number): Buffer => {
    while (k + 1 < stamps.length && stamps[k + 1]!.offset <= offset) k++
    const s = stamps[k]
    return Buffer.from(s !== undefined && s.offset <= offset ? `${formatStamp(s.ns)} ` : '')
  }
  let start = 0
  let atStart = lineStart
  while (start < data.length) {
    const nl = data.indexOf(0x0a, start)
    const end = nl < 0 ? data.length : nl + 1
    const stamp = atStart ? stampAt(pos + start) : Buffer.alloc(0)
    // at most maxBytes out (short lines grow the most), but never nothing: the reader comes back for the rest
    if (outBytes > 0 && outBytes + stamp.length + end - start > maxBytes) break
    parts.push(stamp, data.subarray(start, end))
    outBytes += stamp.length + end - start
    atStart = nl >= 0
    start = end
  }
  return { data: Buffer.concat(parts), consumed: start }
}
