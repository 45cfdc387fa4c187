import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import zlib from 'node:zlib'
import { assert } from '../../common/errors.js'
import { fsyncDir } from '../../common/fsutil.js'
import { RawFile } from './rawfile.js'
import { checksumBlockSizeBytes, checksumBlocksPerExtent, extentsPerEgroup, vBlockSizeBytes } from '../../common/limits.js'

/**
 * One extent group file on one disk: up to `extentsPerEgroup` extents of 1 MiB plus a checksum
 * entry for every 4 KiB block of every extent.
 *
 *   [0, 4 KiB)            header: magic, version, geometry, egroup id, vDisk id
 *   [4 KiB, 4 KiB+64 KiB)  checksum entries: slot-major, 8 bytes per 4 KiB block:
 *                          u32 CRC-32 (zlib) of the block, u32 flags (bit 0: written)
 *   [128 KiB, ...)        data: slot s at 128 KiB + s * 1 MiB (sparse where never written)
 *
 * A block whose entry is not "written" reads as zeros without touching the data region, so a freed
 * slot only needs its entries reset, and stale bytes of an earlier extent are never returned.
 * Data and its checksum entries are written together. A `.dirty` marker beside the file exists (durably)
 * from the first write after a sync until the next sync completes; on open, a marked file is
 * scrubbed: a block whose checksum does not match was being written when the process died, and its
 * bytes (old or new data, or after a power loss torn at sector granularity, as any disk leaves an
 * unflushed write) are accepted.
 */

export const egroupMagic = Buffer.from('TESSEG01')
export const egroupVersion = 1
const headerBytes = 4096
const entryBytes = 8
const entriesPerSlot = checksumBlocksPerExtent
const checksumRegionOffset = headerBytes
const checksumRegionBytes = extentsPerEgroup * entriesPerSlot * entryBytes
export const dataRegionOffset = 128 * 1024
const flagWritten = 1
assert(checksumRegionOffset + checksumRegionBytes <= dataRegionOffset, 'egroup checksum region fits before data')

export class ChecksumError extends Error {
  constructor(readonly egroupId: string, readonly file: string, readonly slot: number, readonly block: number, readonly expected: number, readonly actual: number) {
    super(`checksum mismatch in extent group ${egroupId} (${file}) slot ${slot} block ${block}: expected ${expected.toString(16)}, got ${actual.toString(16)}`)
    this.name = 'ChecksumError'
  }
}

export function crc(buf: Buffer): number {
  return zlib.crc32(buf, 0) >>> 0
}

const zeroBlock = Buffer.alloc(checksumBlockSizeBytes)

export class EgroupFile {
  private dirty = false
  private writeGen = 0
  /** writes and clears in progress: the marker must stay while any is */
  private active = 0

  private constructor(
    readonly id: string,
    readonly file: string,
    private readonly fh: RawFile,
    /** checksum region, cached whole (64 KiB) */
    private readonly entries: Buffer,
  ) {}

  static fileName(dir: string, id: string): string {
    return path.join(dir, `${id}.eg`)
  }

  static markerName(file: string): string {
    return `${file}.dirty`
  }

  /** Create a new, empty extent group file durably (file and directory entry). */
  static async create(dir: string, id: string, vdiskId: string): Promise<EgroupFile> {
    const file = EgroupFile.fileName(dir, id)
    const fh = await RawFile.open(file, 'wx+', 0o600)
    try {
      const header = Buffer.alloc(headerBytes)
      egroupMagic.copy(header, 0)
      header.writeUInt32LE(egroupVersion, 8)
      header.writeUInt32LE(extentsPerEgroup, 12)
      header.writeUInt32LE(vBlockSizeBytes, 16)
      header.writeUInt32LE(checksumBlockSizeBytes, 20)
      header.writeBigUInt64LE(BigInt(id), 24)
      header.writeBigUInt64LE(BigInt(vdiskId), 32)
      header.writeUInt32LE(crc(header.subarray(0, 40)), 40)
      await fh.writeAll(header, 0)
      await fh.truncate(dataRegionOffset)
      await fh.sync()
      await fsyncDir(dir)
    } catch (e) {
      await fh.close()
      throw e
    }
    return new EgroupFile(id, file, fh, Buffer.alloc(checksumRegionBytes))
  }

  /**
   * Open an existing file. `inUse` are the slots the block map references: entries of every other
   * slot are reset (an extent allocated on disk whose map entry never reached etcd is freed here).
   * Returns the blocks repaired by the scrub of a dirty file.
   */
  static async open(dir: string, id: string, inUse: Set<number>, log: (m: string) => void): Promise<EgroupFile> {
    const file = EgroupFile.fileName(dir, id)
    const fh = await RawFile.open(file, 'r+')
    try {
      const header = Buffer.alloc(headerBytes)
      await fh.readFull(header, 0, headerBytes, 0)
      if (!header.subarray(0, 8).equals(egroupMagic)) throw new Error(`extent group file ${file} has a bad magic`)
      if (header.readUInt32LE(40) !== crc(header.subarray(0, 40))) throw new Error(`extent group file ${file} has a corrupt header`)
      if (header.readUInt32LE(8) !== egroupVersion || header.readUInt32LE(12) !== extentsPerEgroup || header.readUInt32LE(16) !== vBlockSizeBytes) {
        throw new Error(`extent group file ${file} has an unknown version or geometry`)
      }
      if (header.readBigUInt64LE(24) !== BigInt(id)) throw new Error(`extent group file ${file} belongs to egroup ${header.readBigUInt64LE(24)}, not ${id}`)
      const entries = Buffer.alloc(checksumRegionBytes)
      await fh.readFull(entries, 0, checksumRegionBytes, checksumRegionOffset)
      const eg = new EgroupFile(id, file, fh, entries)
      await eg.recover(inUse, log)
      return eg
    } catch (e) {
      await fh.close()
      throw e
    }
  }

  private async recover(inUse: Set<number>, log: (m: string) => void): Promise<void> {
    let changed = false
    for (let slot = 0; slot < extentsPerEgroup; slot++) {
      if (inUse.has(slot)) continue
      for (let b = 0; b < entriesPerSlot; b++) {
        if (this.entries.readUInt32LE(this.entryOffset(slot, b) + 4) !== 0) {
          log(`egroup ${this.id}: slot ${slot} is written on disk but not in the block map (allocation cut short by a crash): freeing it`)
          this.entries.fill(0, this.entryOffset(slot, 0), this.entryOffset(slot + 1, 0))
          changed = true
          break
        }
      }
    }
    const marker = EgroupFile.markerName(this.file)
    if (fs.existsSync(marker)) {
      let repaired = 0
      const buf = Buffer.alloc(vBlockSizeBytes)
      for (const slot of inUse) {
        const got = await this.fh.readFull(buf, 0, vBlockSizeBytes, dataRegionOffset + slot * vBlockSizeBytes)
        buf.fill(0, got)
        for (let b = 0; b < entriesPerSlot; b++) {
          const off = this.entryOffset(slot, b)
          if ((this.entries.readUInt32LE(off + 4) & flagWritten) === 0) continue
          const actual = crc(buf.subarray(b * checksumBlockSizeBytes, (b + 1) * checksumBlockSizeBytes))
          if (actual !== this.entries.readUInt32LE(off)) {
            this.entries.writeUInt32LE(actual, off)
            repaired++
            changed = true
          }
        }
      }
      if (repaired > 0) log(`egroup ${this.id}: scrub after an unclean stop re-checksummed ${repaired} block(s) whose write was cut short`)
    }
    if (changed) {
      await this.fh.writeAll(this.entries, checksumRegionOffset)
    }
    await this.fh.sync()
    await fsp.rm(marker, { force: true })
  }

  private entryOffset(slot: number, block: number): number {
    return (slot * entriesPerSlot + block) * entryBytes
  }

  /** Slots with at least one written block (for tests and diagnostics). */
  writtenBlocks(slot: number): number {
    let n = 0
    for (let b = 0; b < entriesPerSlot; b++) if (this.entries.readUInt32LE(this.entryOffset(slot, b) + 4) & flagWritten) n++
    return n
  }

  /**
   * The slot exactly as stored, for copying a replica: its checksum entries and its data (the data
   * of unwritten blocks is zeroed). Undefined when no block of the slot is written. Verified.
   */
  async readRaw(slot: number): Promise<{ entries: Buffer, data: Buffer } | undefined> {
    if (this.writtenBlocks(slot) === 0) return undefined
    const data = Buffer.alloc(vBlockSizeBytes)
    await this.read(slot, 0, vBlockSizeBytes, data, 0)
    const entries = Buffer.from(this.entries.subarray(this.entryOffset(slot, 0), this.entryOffset(slot + 1, 0)))
    return { entries, data }
  }

  /** Store a slot copied from another replica verbatim (entries checked against the data first). */
  async writeRaw(slot: number, entries: Buffer, data: Buffer): Promise<void> {
    assert(entries.length === entriesPerSlot * entryBytes && data.length === vBlockSizeBytes, 'raw slot sizes')
    for (let b = 0; b < entriesPerSlot; b++) {
      if ((entries.readUInt32LE(b * entryBytes + 4) & flagWritten) === 0) continue
      const actual = crc(data.subarray(b * checksumBlockSizeBytes, (b + 1) * checksumBlockSizeBytes))
      if (actual !== entries.readUInt32LE(b * entryBytes)) throw new ChecksumError(this.id, this.file, slot, b, entries.readUInt32LE(b * entryBytes), actual)
    }
    this.active++
    try {
      await this.markDirty()
      const eo = this.entryOffset(slot, 0)
      await Promise.all([
        this.fh.writeAll(data, dataRegionOffset + slot * vBlockSizeBytes),
        this.fh.writeAll(entries, checksumRegionOffset + eo),
      ])
      entries.copy(this.entries, eo)
    } finally {
      this.active--
      this.writeGen++
    }
  }

  /**
   * Read `length` bytes at `offset` within the extent in `slot`; offset and length are multiples
   * of the checksum block size. Verifies every written block; unwritten blocks read as zeros.
   */
  async read(slot: number, offset: number, length: number, out: Buffer, outOffset: number): Promise<void> {
    assert(offset % checksumBlockSizeBytes === 0 && length % checksumBlockSizeBytes === 0, 'egroup read is block aligned')
    assert(offset + length <= vBlockSizeBytes && slot >= 0 && slot < extentsPerEgroup, 'egroup read within the extent')
    const first = offset / checksumBlockSizeBytes
    const count = length / checksumBlockSizeBytes
    // Read the span from the first to the last written block in one call.
    let lo = -1
    let hi = -1
    for (let i = 0; i < count; i++) {
      if (this.entries.readUInt32LE(this.entryOffset(slot, first + i) + 4) & flagWritten) {
        if (lo < 0) lo = i
        hi = i
      }
    }
    const dst = out.subarray(outOffset, outOffset + length)
    if (lo < 0) {
      dst.fill(0)
      return
    }
    if (lo > 0) dst.fill(0, 0, lo * checksumBlockSizeBytes)
    if (hi < count - 1) dst.fill(0, (hi + 1) * checksumBlockSizeBytes)
    const spanBytes = (hi - lo + 1) * checksumBlockSizeBytes
    const bytesRead = await this.fh.readFull(dst, lo * checksumBlockSizeBytes, spanBytes, dataRegionOffset + slot * vBlockSizeBytes + offset + lo * checksumBlockSizeBytes)
    if (bytesRead < spanBytes) dst.fill(0, lo * checksumBlockSizeBytes + bytesRead, (hi + 1) * checksumBlockSizeBytes)
    for (let i = lo; i <= hi; i++) {
      const eo = this.entryOffset(slot, first + i)
      const block = dst.subarray(i * checksumBlockSizeBytes, (i + 1) * checksumBlockSizeBytes)
      if (this.entries.readUInt32LE(eo + 4) & flagWritten) {
        const actual = crc(block)
        const expected = this.entries.readUInt32LE(eo)
        if (actual !== expected) throw new ChecksumError(this.id, this.file, slot, first + i, expected, actual)
      } else {
        block.fill(0)
      }
    }
  }

  /** Write block-aligned `data` at `offset` within the extent in `slot`: data first, then checksums. */
  async write(slot: number, offset: number, data: Buffer): Promise<void> {
    assert(offset % checksumBlockSizeBytes === 0 && data.length % checksumBlockSizeBytes === 0 && data.length > 0, 'egroup write is block aligned')
    assert(offset + data.length <= vBlockSizeBytes && slot >= 0 && slot < extentsPerEgroup, 'egroup write within the extent')
    this.active++
    try {
      await this.markDirty()
      await this.writeBlocks(slot, offset, data)
    } finally {
      this.active--
      this.writeGen++
    }
  }

  private async writeBlocks(slot: number, offset: number, data: Buffer): Promise<void> {
    const first = offset / checksumBlockSizeBytes
    const count = data.length / checksumBlockSizeBytes
    const newEntries = Buffer.alloc(count * entryBytes)
    for (let i = 0; i < count; i++) {
      newEntries.writeUInt32LE(crc(data.subarray(i * checksumBlockSizeBytes, (i + 1) * checksumBlockSizeBytes)), i * entryBytes)
      newEntries.writeUInt32LE(flagWritten, i * entryBytes + 4)
    }
    // Data and checksums go out together: the dirty marker is already durable, so if the process
    // dies between the two, the scrub on open re-checksums whatever bytes the block holds (old or
    // new), and the in-memory entries change only once both writes are done.
    const eo = this.entryOffset(slot, first)
    await Promise.all([
      this.fh.writeAll(data, dataRegionOffset + slot * vBlockSizeBytes + offset),
      this.fh.writeAll(newEntries, checksumRegionOffset + eo),
    ])
    newEntries.copy(this.entries, eo)
  }

  /** Make blocks read as zeros (trim, write-zeroes): reset their entries. */
  async clear(slot: number, offset: number, length: number): Promise<void> {
    assert(offset % checksumBlockSizeBytes === 0 && length % checksumBlockSizeBytes === 0, 'egroup clear is block aligned')
    this.active++
    try {
      await this.markDirty()
      const from = this.entryOffset(slot, offset / checksumBlockSizeBytes)
      const to = this.entryOffset(slot, (offset + length) / checksumBlockSizeBytes)
      this.entries.fill(0, from, to)
      await this.fh.writeAll(this.entries.subarray(from, to), checksumRegionOffset + from)
    } finally {
      this.active--
      this.writeGen++
    }
  }

  /** Free a slot durably: after this, the slot may be reused and nothing of the old extent shows. */
  async freeSlot(slot: number): Promise<void> {
    await this.clear(slot, 0, vBlockSizeBytes)
    await this.sync()
  }

  /** Marker creation and removal run one at a time, so a removal never races a creation. */
  private markerLock: Promise<void> = Promise.resolve()

  private withMarkerLock(fn: () => Promise<void>): Promise<void> {
    const run = this.markerLock.then(fn)
    this.markerLock = run.catch(() => undefined)
    return run
  }

  private async markDirty(): Promise<void> {
    if (this.dirty) return
    await this.withMarkerLock(async () => {
      if (this.dirty) return
      const fh = await fsp.open(EgroupFile.markerName(this.file), 'w', 0o600)
      await fh.close()
      await fsyncDir(path.dirname(this.file))
      this.dirty = true
    })
  }

  get isDirty(): boolean {
    return this.dirty
  }

  /** Make every write completed before the call durable. */
  async sync(): Promise<void> {
    if (!this.dirty) return
    const gen = this.writeGen
    await this.fh.datasync()
    // Only a file with no write in progress and none since the datasync began is clean.
    await this.withMarkerLock(async () => {
      if (gen === this.writeGen && this.active === 0 && this.dirty) {
        await fsp.rm(EgroupFile.markerName(this.file), { force: true })
        this.dirty = false
      }
    })
  }

  async close(): Promise<void> {
    await this.sync()
    await this.fh.close()
  }

  /** Close without syncing (the file is about to be deleted). */
  async discard(): Promise<void> {
    await this.fh.close()
  }

  /** Test hook: zeros of one block, for writing zero ranges without allocating a buffer each time. */
  static get zeroBlock(): Buffer {
    return zeroBlock
  }
}
