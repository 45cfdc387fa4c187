import path from 'node:path'
import zlib from 'node:zlib'
import { crc32c, crc32cBlocks, crc32cVerifyBlocks } from '../../lib/crc32c.js'
import { TessError, assert, errorMessage } from '../../lib/errors.js'
import { directIoReady } from '../../lib/nativeio.js'
import { type FileIo, type FileLayer, type LaterHandle, realFiles } from './fileio.js'
import { checksumBlockSizeBytes, checksumBlocksPerExtent, egroupCachedReadMaxBytes, egroupCachedWriteMaxBytes, egroupCleanMarkerDelayMs, egroupSyncWriteMaxBytes, extentsPerEgroup, vBlockSizeBytes } from '../../lib/limits.js'

/**
 * One extent group file on one disk: up to `extentsPerEgroup` extents of 1 MiB plus a checksum
 * entry for every 4 KiB block of every extent.
 *
 *   [0, 4 KiB)            header: magic, version, geometry, egroup id, vDisk id, header CRC-32
 *   [4 KiB, 4 KiB+64 KiB)  checksum entries: slot-major, 8 bytes per 4 KiB block:
 *                          u32 checksum of the block, u32 flags (bit 0: written)
 *   [128 KiB, ...)        data: slot s at 128 KiB + s * 1 MiB (sparse where never written)
 *
 * Versions differ only in the block checksum: version 1 uses CRC-32 (zlib's polynomial), version 2
 * CRC-32C (Castagnoli, computed in hardware by the native addon, four blocks at a time). New files
 * are version 2; version 1 files are read and written with their own checksum for as long as they
 * live, and a slot copied between replicas of different versions is verified with the source's
 * checksum and re-checksummed with the target's. The header's own checksum is CRC-32 in both.
 *
 * A block whose entry is not "written" reads as zeros without touching the data region, so a freed
 * slot only needs its entries reset, and stale bytes of an earlier extent are never returned.
 * A write puts its data in the file at once and its checksum entries at the next sync. A `.dirty`
 * marker beside the file exists (durably) from the first write after a sync until the next sync
 * completes; on open, a marked file is scrubbed: a block whose checksum does not match was being
 * written when the process died, and its bytes (old or new data, or after a power loss torn at
 * sector granularity, as any disk leaves an unflushed write) are accepted.
 *
 * That acceptance is safe only where the data region holds bytes the block may read as: its own
 * earlier data, or zeros where it was unwritten. A block whose entry in the file says unwritten may
 * hold anything under it (an extent of a freed slot, the block before a trim, data of a write whose
 * entry never reached the file, a recycled spare's old ciphertext), so a sync whose entries turn such
 * a block into a written one makes the data durable first (fdatasync), then writes the entries,
 * then fdatasyncs again (see takeEntries): an entry can then never reach the disk ahead of the data
 * it vouches for. Overwrites of blocks written in the file, and first writes into a file made here
 * sparse (its data region is zeros), keep one fdatasync per sync.
 */

export const egroupMagic = Buffer.from('TESSEG01')
/** the version new files get */
export const egroupVersion = 2
export const egroupVersionsKnown: readonly number[] = [1, 2]
/**
 * Large writes (over egroupSyncWriteMaxBytes, from memory the addon aligned) bypass the page cache
 * (see writeDirect). TESS_DIRECT_WRITES=off keeps every write buffered (benchmarks compare both).
 */
const directWritesEnabled = ((): boolean => {
  const v = process.env.TESS_DIRECT_WRITES ?? ''
  if (v !== '' && v !== 'on' && v !== 'off') {
    throw new TessError('TESS_E_INVALID', `TESS_DIRECT_WRITES="${v}" is not one of on, off`, 'unset it (large writes bypass the page cache where they can), or set it to on or off')
  }
  return v !== 'off'
})()

const headerBytes = 4096
const entryBytes = 8
const entriesPerSlot = checksumBlocksPerExtent
const checksumRegionOffset = headerBytes
const checksumRegionBytes = extentsPerEgroup * entriesPerSlot * entryBytes
export const dataRegionOffset = 128 * 1024
/** a whole extent group file, every slot written */
export const egroupFileBytes = dataRegionOffset + extentsPerEgroup * vBlockSizeBytes
/** header and checksum entries: zeros in a spare file (spares.ts), so it shows no extent */
export const egroupZeroPrefixBytes = dataRegionOffset
const flagWritten = 1
/** whether the checksum entry at byte `eo` of `entries` marks its block as written */
function entryWritten(entries: Buffer, eo: number): boolean {
  return (entries.readUInt32LE(eo + 4) & flagWritten) !== 0
}
/** blocks of a file (slot-major, the order of the checksum entries) */
const blocksPerFile = extentsPerEgroup * entriesPerSlot
assert(checksumRegionOffset + checksumRegionBytes <= dataRegionOffset, 'egroup checksum region fits before data')

/** one bit per block of a file */
class BlockBits {
  private readonly words = new Uint32Array(blocksPerFile / 32)

  has(i: number): boolean {
    return (this.words[i >>> 5]! & (1 << (i & 31))) !== 0
  }

  put(i: number, on: boolean): void {
    if (on) this.words[i >>> 5]! |= 1 << (i & 31)
    else this.words[i >>> 5]! &= ~(1 << (i & 31))
  }

  putRange(from: number, count: number, on: boolean): void {
    for (let i = from; i < from + count; i++) this.put(i, on)
  }

  fill(on: boolean): this {
    this.words.fill(on ? 0xffffffff : 0)
    return this
  }

  /** clear here every bit set in `other`, and clear `other` */
  takeFrom(other: BlockBits): void {
    for (let w = 0; w < this.words.length; w++) {
      this.words[w]! &= ~other.words[w]!
      other.words[w] = 0
    }
  }

  any(): boolean {
    for (let w = 0; w < this.words.length; w++) if (this.words[w] !== 0) return true
    return false
  }
}

export class ChecksumError extends Error {
  constructor(readonly egroupId: string, readonly file: string, readonly slot: number, readonly block: number, readonly expected: number, readonly actual: number) {
    super(`checksum mismatch in extent group ${egroupId} (${file}) slot ${slot} block ${block}: expected ${expected.toString(16)}, got ${actual.toString(16)}`)
    this.name = 'ChecksumError'
  }
}

/** CRC-32 (zlib): the header checksum, and the block checksum of version 1 files */
export function crc(buf: Buffer): number {
  return zlib.crc32(buf, 0) >>> 0
}

/** The block checksum of one file format version: one call per request, not per block. */
export interface BlockChecksum {
  readonly version: number
  /** the checksum of one block */
  one(block: Uint8Array): number
  /** checksums of every block of `data` as u32 LE at out[outOffset + i * stride] */
  blocks(data: Uint8Array, out: Buffer, outOffset: number, stride: number): void
  /** first block whose checksum differs from its entry (only entries with the written flag), or -1 */
  verify(data: Uint8Array, entries: Buffer, entriesOffset: number, stride: number): number
}

const crc32Checksum: BlockChecksum = {
  version: 1,
  one: (block) => zlib.crc32(block, 0) >>> 0,
  blocks(data, out, outOffset, stride) {
    for (let i = 0, at = 0; at < data.length; i++, at += checksumBlockSizeBytes) {
      out.writeUInt32LE(zlib.crc32(data.subarray(at, at + checksumBlockSizeBytes), 0) >>> 0, outOffset + i * stride)
    }
  },
  verify(data, entries, entriesOffset, stride) {
    for (let i = 0, at = 0; at < data.length; i++, at += checksumBlockSizeBytes) {
      const eo = entriesOffset + i * stride
      if (!entryWritten(entries, eo)) continue
      if ((zlib.crc32(data.subarray(at, at + checksumBlockSizeBytes), 0) >>> 0) !== entries.readUInt32LE(eo)) return i
    }
    return -1
  },
}

const crc32cChecksum: BlockChecksum = {
  version: 2,
  one: (block) => crc32c(block),
  blocks: (data, out, outOffset, stride) => crc32cBlocks(data, checksumBlockSizeBytes, out, outOffset, stride),
  verify: (data, entries, entriesOffset, stride) => crc32cVerifyBlocks(data, checksumBlockSizeBytes, entries, entriesOffset, stride),
}

export function checksumFor(version: number): BlockChecksum {
  if (version === 1) return crc32Checksum
  if (version === 2) return crc32cChecksum
  throw new Error(`unknown extent group format version ${version}`)
}

/** A slot as stored, for copying it to another replica. */
export interface RawSlot {
  entries: Buffer
  data: Buffer
  /** format version of the replica it came from: which checksum `entries` hold */
  version: number
}

const zeroBlock = Buffer.alloc(checksumBlockSizeBytes)

/** checksum entries of one whole extent, computed before they are stored (the largest write) */
const entriesScratchBytes = entriesPerSlot * entryBytes

export class EgroupFile {
  /** reads and writes of every extent group of this process so far (spares.ts fills only while it stays still) */
  static ioCount = 0
  /** the dirty marker exists on disk (durably) */
  private dirty = false
  private writeGen = 0
  /** writes and clears in progress: the marker must stay while any is */
  private active = 0
  /** large writes of this file in the thread pool now (see writesNow) */
  private poolWrites = 0
  /** writeGen covered by the last completed datasync */
  private syncedGen = 0
  /**
   * Set when a datasync failed: the kernel may have dropped the dirty pages it could not write
   * (Linux marks them clean), so a later datasync that succeeds would vouch for writes that are no
   * longer anywhere. Every sync fails from then on: the vDisk replaces this replica from a healthy
   * one (or, with none, keeps failing flushes instead of acknowledging lost data); a fresh open
   * (after a restart) starts from what the disk holds.
   */
  private syncFailed: string | undefined
  /** resolved when `active` drops to 0 (close waits: writes through the pool use the descriptor until they end) */
  private idleWaiters: Array<() => void> = []
  private cleanTimer: LaterHandle | undefined
  private closed = false
  readonly checksum: BlockChecksum
  /** the span of `entries` changed since it was last written to the file (see entriesChanged) */
  private entriesDirty: { from: number, to: number } | undefined
  private entriesWriting: Promise<void> | undefined
  /**
   * Blocks whose entry, as the sync that took it last writes it to the file, says written (set when
   * a sync takes the entries, in the order the syncs write them; cleared where a write of them
   * failed). A block turning written that is not here needs its data durable before its entry.
   */
  private readonly fileWritten = new BlockBits()
  /**
   * Blocks whose data region is known to hold zeros or the data of writes made since the entries
   * were last taken by a sync: only in a file made here sparse, until every block was written. A
   * first write into such a block needs no ordering (cut short, it reads as zeros, as before it).
   */
  private zeroData: BlockBits | undefined
  /** blocks data was written into since the entries were last taken (they leave zeroData then) */
  private readonly touched = new BlockBits()
  /** the file opened with O_DIRECT (see writeDirect): undefined until needed, null where it cannot be */
  private direct: FileIo | null | undefined
  private directOpening: Promise<void> | undefined
  /** slots an uncached overwrite went past the page cache for since the file was opened (see bypassCache) */
  private readonly rewritten = new Uint8Array(extentsPerEgroup)
  /** scratch for the entries of one write, reused by synchronous writes */
  private readonly scratch = Buffer.allocUnsafe(entriesScratchBytes)

  private constructor(
    readonly id: string,
    readonly file: string,
    private readonly fh: FileIo,
    /** checksum region, cached whole (64 KiB) */
    private readonly entries: Buffer,
    readonly version: number,
    /** where the file lives: the real file system, or a simulated disk (test/sim) */
    private readonly files: FileLayer,
  ) {
    this.checksum = checksumFor(version)
  }

  static fileName(dir: string, id: string): string {
    return path.join(dir, `${id}.eg`)
  }

  static markerName(file: string): string {
    return `${file}.dirty`
  }

  /**
   * Create a new, empty extent group file durably (file and directory entry). With `spare` (a file
   * of spares.ts: every block written, header and entries zero), the spare gets the header and is
   * linked into place, so the file appears under its name only once it is whole. `spare.zeroData`:
   * its data region is zeros (the fill wrote it), not a recycled group's bytes.
   */
  static async create(dir: string, id: string, vdiskId: string, version = egroupVersion, spare?: { file: string, zeroData: boolean }, files: FileLayer = realFiles): Promise<EgroupFile> {
    assert(egroupVersionsKnown.includes(version), `known extent group version ${version}`)
    const file = EgroupFile.fileName(dir, id)
    if (spare !== undefined) {
      const fh = await files.open(spare.file, 'r+')
      try {
        await fh.writeAll(EgroupFile.header(id, vdiskId, version), 0)
        await fh.datasync()
        await files.touch(EgroupFile.markerName(file))
        // a link, not a rename: it fails where a file of that name exists. A crash before the
        // unlink leaves the spare's name on this file too: spares.ts drops it at the next start
        // (its header is no longer zero).
        await files.link(spare.file, file)
        await files.unlink(spare.file)
        await files.syncDir(dir)
      } catch (e) {
        await fh.close()
        throw e
      }
      // a recycled spare's data region holds a deleted group's old bytes (spares.ts): not known zeros
      return EgroupFile.born(id, file, fh, version, files, spare.zeroData)
    }
    const fh = await files.open(file, 'wx+', 0o600)
    try {
      await fh.writeAll(EgroupFile.header(id, vdiskId, version), 0)
      await fh.truncate(dataRegionOffset)
      await fh.sync()
      await files.touch(EgroupFile.markerName(file))
      await files.syncDir(dir)
    } catch (e) {
      await fh.close()
      throw e
    }
    return EgroupFile.born(id, file, fh, version, files, true)
  }

  /**
   * A file just made, with its dirty marker: made with the file (one directory sync for both, off
   * the write path: a vDisk makes its groups ahead of need), so the first write into a new group
   * does not wait for a directory sync of its own. It goes like any marker, a while after the
   * first sync (the scrub of a group with no extent in use costs nothing). `zeroData`: its data
   * region is zeros (a sparse file made here, or a spare the fill wrote with zeros).
   */
  private static born(id: string, file: string, fh: FileIo, version: number, files: FileLayer, zeroData: boolean): EgroupFile {
    const eg = new EgroupFile(id, file, fh, Buffer.alloc(checksumRegionBytes), version, files)
    eg.dirty = true
    if (zeroData) eg.zeroData = new BlockBits().fill(true)
    return eg
  }

  private static header(id: string, vdiskId: string, version: number): Buffer {
    const header = Buffer.alloc(headerBytes)
    egroupMagic.copy(header, 0)
    header.writeUInt32LE(version, 8)
    header.writeUInt32LE(extentsPerEgroup, 12)
    header.writeUInt32LE(vBlockSizeBytes, 16)
    header.writeUInt32LE(checksumBlockSizeBytes, 20)
    header.writeBigUInt64LE(BigInt(id), 24)
    header.writeBigUInt64LE(BigInt(vdiskId), 32)
    header.writeUInt32LE(crc(header.subarray(0, 40)), 40)
    return header
  }

  /**
   * Open an existing file. `inUse` are the slots the block map references: entries of every other
   * slot are reset (an extent allocated on disk whose map entry never reached etcd is freed here).
   * Returns the blocks repaired by the scrub of a dirty file.
   */
  static async open(dir: string, id: string, inUse: Set<number>, log: (m: string) => void, files: FileLayer = realFiles): Promise<EgroupFile> {
    const file = EgroupFile.fileName(dir, id)
    const fh = await files.open(file, 'r+')
    try {
      const header = Buffer.alloc(headerBytes)
      await fh.readFull(header, 0, headerBytes, 0)
      if (!header.subarray(0, 8).equals(egroupMagic)) throw new Error(`extent group file ${file} has a bad magic`)
      if (header.readUInt32LE(40) !== crc(header.subarray(0, 40))) throw new Error(`extent group file ${file} has a corrupt header`)
      const version = header.readUInt32LE(8)
      if (!egroupVersionsKnown.includes(version) || header.readUInt32LE(12) !== extentsPerEgroup || header.readUInt32LE(16) !== vBlockSizeBytes) {
        throw new Error(`extent group file ${file} has an unknown version (${version}) or geometry`)
      }
      if (header.readBigUInt64LE(24) !== BigInt(id)) throw new Error(`extent group file ${file} belongs to egroup ${header.readBigUInt64LE(24)}, not ${id}`)
      const entries = Buffer.alloc(checksumRegionBytes)
      await fh.readFull(entries, 0, checksumRegionBytes, checksumRegionOffset)
      const eg = new EgroupFile(id, file, fh, entries, version, files)
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
    if (this.files.exists(marker)) {
      let repaired = 0
      const buf = Buffer.alloc(vBlockSizeBytes)
      for (const slot of inUse) {
        const got = await this.fh.readFull(buf, 0, vBlockSizeBytes, dataRegionOffset + slot * vBlockSizeBytes)
        buf.fill(0, got)
        for (let b = 0; b < entriesPerSlot; b++) {
          const off = this.entryOffset(slot, b)
          if (!entryWritten(this.entries, off)) continue
          const actual = this.checksum.one(buf.subarray(b * checksumBlockSizeBytes, (b + 1) * checksumBlockSizeBytes))
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
    await this.files.remove(marker)
    // what the file holds now, durably (the data region under unwritten blocks is not known)
    for (let i = 0; i < blocksPerFile; i++) this.fileWritten.put(i, entryWritten(this.entries, i * entryBytes))
  }

  /**
   * The file is open already and a vDisk owner opens it again (it loaded the vDisk after the
   * owner before it died, or it copies a replica here): the block map it loaded says which slots
   * hold extents. A slot it does not use but that holds written blocks (an allocation the earlier
   * owner made and never committed) is freed, durably, as a fresh open's recovery does: else the
   * next allocation of that slot would show the old extent's blocks around what it writes.
   */
  async forgetSlots(inUse: Set<number>, log: (m: string) => void): Promise<void> {
    let changed = false
    for (let slot = 0; slot < extentsPerEgroup; slot++) {
      if (inUse.has(slot) || this.writtenBlocks(slot) === 0) continue
      log(`egroup ${this.id}: slot ${slot} is written but not in the block map of the vDisk's new owner (an allocation cut short by the crash of the owner before it): freeing it`)
      await this.clear(slot, 0, vBlockSizeBytes)
      changed = true
    }
    if (changed) await this.sync()
  }

  private entryOffset(slot: number, block: number): number {
    return (slot * entriesPerSlot + block) * entryBytes
  }

  /** Slots with at least one written block (for tests and diagnostics). */
  writtenBlocks(slot: number): number {
    let n = 0
    for (let b = 0; b < entriesPerSlot; b++) if (entryWritten(this.entries, this.entryOffset(slot, b))) n++
    return n
  }

  /**
   * The slot exactly as stored, for copying a replica: its checksum entries and its data (the data
   * of unwritten blocks is zeroed). Undefined when no block of the slot is written. Verified.
   */
  async readRaw(slot: number): Promise<RawSlot | undefined> {
    if (this.writtenBlocks(slot) === 0) return undefined
    const data = Buffer.alloc(vBlockSizeBytes)
    await this.read(slot, 0, vBlockSizeBytes, data, 0)
    const entries = Buffer.from(this.entries.subarray(this.entryOffset(slot, 0), this.entryOffset(slot + 1, 0)))
    return { entries, data, version: this.version }
  }

  /**
   * Store a slot copied from another replica: its entries are checked against the data with the
   * source's checksum first, and recomputed with this file's when the versions differ.
   */
  async writeRaw(slot: number, entriesIn: Buffer, data: Buffer, sourceVersion: number = this.version): Promise<void> {
    assert(entriesIn.length === entriesPerSlot * entryBytes && data.length === vBlockSizeBytes, 'raw slot sizes')
    const bad = checksumFor(sourceVersion).verify(data, entriesIn, 0, entryBytes)
    if (bad >= 0) {
      throw new ChecksumError(this.id, this.file, slot, bad, entriesIn.readUInt32LE(bad * entryBytes), checksumFor(sourceVersion).one(data.subarray(bad * checksumBlockSizeBytes, (bad + 1) * checksumBlockSizeBytes)))
    }
    let entries = entriesIn
    if (sourceVersion !== this.version) {
      entries = Buffer.from(entriesIn)
      this.checksum.blocks(data, entries, 0, entryBytes)
      // unwritten blocks keep an all-zero entry
      for (let b = 0; b < entriesPerSlot; b++) if (!entryWritten(entries, b * entryBytes)) entries.writeUInt32LE(0, b * entryBytes)
    }
    this.active++
    try {
      if (!this.dirty) await this.markDirty()
      const eo = this.entryOffset(slot, 0)
      this.touch(slot, 0, vBlockSizeBytes)
      await this.fh.writeAll(data, dataRegionOffset + slot * vBlockSizeBytes)
      // the entries reach the file with the next sync, as a write's do (see clear)
      entries.copy(this.entries, eo)
      this.entriesChanged(eo, eo + entries.length)
    } finally {
      this.writeEnded()
    }
  }

  /**
   * Read `length` bytes at `offset` within the extent in `slot`; offset and length are multiples
   * of the checksum block size. Verifies every written block; unwritten blocks read as zeros.
   */
  async read(slot: number, offset: number, length: number, out: Buffer, outOffset: number): Promise<void> {
    const dst = out.subarray(outOffset, outOffset + length)
    const plan = this.readPlan(slot, offset, length, dst, true)
    if (!plan) return
    const { lo, hi, spanBytes, at } = plan
    const bytesRead = spanBytes <= egroupCachedReadMaxBytes
      ? await this.fh.readFullCached(dst, lo * checksumBlockSizeBytes, spanBytes, at)
      : await this.fh.readFull(dst, lo * checksumBlockSizeBytes, spanBytes, at)
    if (bytesRead < spanBytes) dst.fill(0, lo * checksumBlockSizeBytes + bytesRead, (hi + 1) * checksumBlockSizeBytes)
    const bad = this.verifySpan(dst, slot, offset, lo, hi)
    if (bad >= 0) {
      const eo = this.entryOffset(slot, offset / checksumBlockSizeBytes + bad)
      const actual = this.checksum.one(dst.subarray(bad * checksumBlockSizeBytes, (bad + 1) * checksumBlockSizeBytes))
      throw new ChecksumError(this.id, this.file, slot, offset / checksumBlockSizeBytes + bad, this.entries.readUInt32LE(eo), actual)
    }
  }

  /**
   * read() without waiting: true when every written block of the range was in the page cache and
   * matched its checksum, so `out` holds the range. False (with `out` partly written) when read()
   * must do it: a block not cached, a checksum that does not match, a corrupt entry, a short file.
   * read() then reports what it finds; this never throws for what the data holds.
   */
  readIfCached(slot: number, offset: number, length: number, out: Buffer, outOffset: number): boolean {
    if (this.closed) return false
    const dst = out.subarray(outOffset, outOffset + length)
    const plan = this.readPlan(slot, offset, length, dst, false)
    if (plan === false) return false
    if (plan === undefined) return true
    const { lo, spanBytes, at } = plan
    if (spanBytes > egroupCachedReadMaxBytes) return false
    if (this.fh.readCached(dst, lo * checksumBlockSizeBytes, spanBytes, at) < spanBytes) return false
    return this.verifySpan(dst, slot, offset, lo, plan.hi) < 0
  }

  /**
   * The span from the first to the last written block of a read (read in one call), with the
   * unwritten blocks around it zero-filled in `dst`; undefined when no block is written (`dst` is
   * all zeros). A corrupt entry throws, or gives false when `strict` is off.
   */
  private readPlan(slot: number, offset: number, length: number, dst: Buffer, strict: boolean): { lo: number, hi: number, spanBytes: number, at: number } | undefined | false {
    assert(offset % checksumBlockSizeBytes === 0 && length % checksumBlockSizeBytes === 0, 'egroup read is block aligned')
    assert(offset + length <= vBlockSizeBytes && slot >= 0 && slot < extentsPerEgroup, 'egroup read within the extent')
    EgroupFile.ioCount++
    const first = offset / checksumBlockSizeBytes
    const count = length / checksumBlockSizeBytes
    let lo = -1
    let hi = -1
    for (let i = 0; i < count; i++) {
      const eo = this.entryOffset(slot, first + i)
      const flags = this.entries.readUInt32LE(eo + 4)
      if (flags === flagWritten) {
        if (lo < 0) lo = i
        hi = i
      } else if (flags !== 0 || this.entries.readUInt32LE(eo) !== 0) {
        // An entry is (checksum, written) or all zeros: anything else is a corrupt entry (a bit
        // of the flag word rotted), never a block to read as zeros without a word.
        if (!strict) return false
        throw this.corruptEntry(slot, first + i, eo)
      }
    }
    if (lo < 0) {
      dst.fill(0)
      return undefined
    }
    if (lo > 0) dst.fill(0, 0, lo * checksumBlockSizeBytes)
    if (hi < count - 1) dst.fill(0, (hi + 1) * checksumBlockSizeBytes)
    const spanBytes = (hi - lo + 1) * checksumBlockSizeBytes
    return { lo, hi, spanBytes, at: dataRegionOffset + slot * vBlockSizeBytes + offset + lo * checksumBlockSizeBytes }
  }

  /**
   * Check the span [lo, hi] of a read against its checksums: the index (from the read's first
   * block) of the first bad block, or -1; then zero the unwritten blocks inside the span,
   * whatever the file holds there.
   */
  private verifySpan(dst: Buffer, slot: number, offset: number, lo: number, hi: number): number {
    const first = offset / checksumBlockSizeBytes
    const span = dst.subarray(lo * checksumBlockSizeBytes, (hi + 1) * checksumBlockSizeBytes)
    const bad = this.checksum.verify(span, this.entries, this.entryOffset(slot, first + lo), entryBytes)
    if (bad >= 0) return lo + bad
    for (let i = lo + 1; i < hi; i++) {
      if (!entryWritten(this.entries, this.entryOffset(slot, first + i))) {
        dst.fill(0, i * checksumBlockSizeBytes, (i + 1) * checksumBlockSizeBytes)
      }
    }
    return -1
  }

  private corruptEntry(slot: number, block: number, eo: number): ChecksumError {
    const e = new ChecksumError(this.id, this.file, slot, block, this.entries.readUInt32LE(eo), this.entries.readUInt32LE(eo + 4))
    e.message = `corrupt checksum entry in extent group ${this.id} (${this.file}) slot ${slot} block ${block}: checksum ${this.entries.readUInt32LE(eo).toString(16)}, flags ${this.entries.readUInt32LE(eo + 4).toString(16)} (an unwritten block has neither)`
    return e
  }

  /** Write block-aligned `data` at `offset` within the extent in `slot`: data first, then checksums. */
  async write(slot: number, offset: number, data: Buffer): Promise<void> {
    assert(offset % checksumBlockSizeBytes === 0 && data.length % checksumBlockSizeBytes === 0 && data.length > 0, 'egroup write is block aligned')
    assert(offset + data.length <= vBlockSizeBytes && slot >= 0 && slot < extentsPerEgroup, 'egroup write within the extent')
    EgroupFile.ioCount++
    this.active++
    try {
      if (!this.dirty) await this.markDirty()
      this.touch(slot, offset, data.length)
      if (this.writesNow(slot, offset, data.length)) this.writeBlocksSync(slot, offset, data)
      else await this.writeBlocks(slot, offset, data)
    } finally {
      this.writeEnded()
    }
  }

  /**
   * write() on the calling thread when that needs no waiting: a small write (into the page cache,
   * as write() does it) to a file whose dirty marker is already made. True when written; false
   * when write() must do it (nothing was written). A pwrite that fails throws, as in write().
   */
  writeIfQuick(slot: number, offset: number, data: Buffer): boolean {
    if (this.closed || !this.dirty || !this.writesNow(slot, offset, data.length)) return false
    assert(offset % checksumBlockSizeBytes === 0 && data.length % checksumBlockSizeBytes === 0 && data.length > 0, 'egroup write is block aligned')
    assert(offset + data.length <= vBlockSizeBytes && slot >= 0 && slot < extentsPerEgroup, 'egroup write within the extent')
    EgroupFile.ioCount++
    this.active++
    try {
      this.touch(slot, offset, data.length)
      this.writeBlocksSync(slot, offset, data)
    } finally {
      this.writeEnded()
    }
    return true
  }

  /**
   * Whether a write is made with a synchronous pwrite on the calling thread: a small one always; a
   * larger one (up to egroupCachedWriteMaxBytes) when the page cache holds every page it writes
   * (it only copies) and no write of this file is in the pool (a pwrite here would wait on the
   * file's inode lock, which that write holds).
   */
  private writesNow(slot: number, offset: number, length: number): boolean {
    if (length <= egroupSyncWriteMaxBytes) return true
    if (length > egroupCachedWriteMaxBytes || this.poolWrites > 0) return false
    const n = this.fh.pagesCached(dataRegionOffset + slot * vBlockSizeBytes + offset, length)
    return n !== undefined && n * checksumBlockSizeBytes >= length
  }

  /** data is about to be written into these blocks: noted before the write (one that fails may leave part of it) */
  private touch(slot: number, offset: number, length: number): void {
    if (this.zeroData !== undefined) this.touched.putRange(slot * entriesPerSlot + offset / checksumBlockSizeBytes, length / checksumBlockSizeBytes, true)
  }

  private entriesFor(data: Buffer, into: Buffer): Buffer {
    const count = data.length / checksumBlockSizeBytes
    const out = into.subarray(0, count * entryBytes)
    this.checksum.blocks(data, out, 0, entryBytes)
    for (let i = 0; i < count; i++) out.writeUInt32LE(flagWritten, i * entryBytes + 4)
    return out
  }

  private writeEnded(): void {
    this.active--
    this.writeGen++
    if (this.active === 0 && this.idleWaiters.length > 0) {
      const waiters = this.idleWaiters
      this.idleWaiters = []
      for (const w of waiters) w()
    }
  }

  /** once no write or clear is in progress */
  private idle(): Promise<void> {
    return this.active === 0 ? Promise.resolve() : new Promise((resolve) => this.idleWaiters.push(resolve))
  }

  /**
   * Small writes go into the page cache with synchronous pwrite calls on the calling thread: a
   * round trip through the thread pool costs more than the copy (measured: about twice the CPU per
   * 4 KiB write), and so did a writer thread of our own fed by the event loop (measured: a few
   * percent fewer 4 KiB writes per second: the hand-off costs about what the pwrite does). Nothing
   * here waits for the disk: durability is sync()'s job.
   */
  private writeBlocksSync(slot: number, offset: number, data: Buffer): void {
    const newEntries = this.entriesFor(data, this.scratch)
    const eo = this.entryOffset(slot, offset / checksumBlockSizeBytes)
    this.fh.writeAllSync(data, dataRegionOffset + slot * vBlockSizeBytes + offset)
    newEntries.copy(this.entries, eo)
    this.entriesChanged(eo, eo + newEntries.length)
  }

  /**
   * Checksum entries of written blocks reach the file at the next sync(), not with every write:
   * one write of the changed span per sync instead of a second pwrite per request (on the event
   * loop for small writes; for large ones a buffered write that holds the file's inode lock
   * against the direct writes in flight). Safe because nothing unsynced is promised: the dirty
   * marker is durable before the first write, and after a crash the scrub on open re-checksums
   * every block the file's entries mark written, from whatever bytes it holds; a block first
   * written after the last sync reads as unwritten (zeros), as an unflushed write may.
   */
  private entriesChanged(from: number, to: number): void {
    const d = this.entriesDirty
    this.entriesDirty = d === undefined ? { from, to } : { from: Math.min(d.from, from), to: Math.max(d.to, to) }
  }

  /**
   * Write the changed span of the entries (a copy: writes may change them meanwhile), after the
   * data it vouches for where that must come first (see takeEntries). Spans reach the file in the
   * order they were taken: an older copy landing after a newer one would undo a trim.
   */
  private async writeEntries(): Promise<void> {
    // a span taken by an earlier sync must be in the file before this sync's datasync
    while (this.entriesWriting !== undefined) await this.entriesWriting.catch(() => undefined)
    // nothing more reaches the file once an fsync failed: the data its entries vouch for may be gone
    if (this.syncFailed !== undefined) throw this.failedSyncError()
    const taken = this.takeEntries()
    if (taken === undefined) return
    const { from, to, copy, ordered } = taken
    const writing = (async () => {
      if (ordered) await this.datasync()
      await this.fh.writeAll(copy, checksumRegionOffset + from)
    })()
    this.entriesWriting = writing
    try {
      await writing
    } catch (e) {
      // still to be written: by the next sync; what the file holds there is not known now
      this.entriesChanged(from, to)
      this.fileWritten.putRange(from / entryBytes, (to - from) / entryBytes, false)
      throw e
    } finally {
      this.entriesWriting = undefined
    }
  }

  /**
   * Take the changed span of the entries for a sync to write, and tell whether its data must be
   * durable before it is written: whether it turns a block written that the file has as unwritten
   * (and whose data region is not known to be zeros). Such a block's data region may hold another
   * extent's bytes, or its own from before a trim; were its entry to reach the disk without its
   * data (a power loss during the fsync, or an fsync that fails half way), the scrub after the
   * crash would accept those bytes. Blocks written in the file need no ordering: under them is
   * their own earlier data, which an unflushed overwrite may leave.
   */
  private takeEntries(): { from: number, to: number, copy: Buffer, ordered: boolean } | undefined {
    const d = this.entriesDirty
    let taken: { from: number, to: number, copy: Buffer, ordered: boolean } | undefined
    if (d !== undefined) {
      this.entriesDirty = undefined
      const copy = Buffer.from(this.entries.subarray(d.from, d.to))
      let ordered = false
      for (let at = 0, i = d.from / entryBytes; at < copy.length; at += entryBytes, i++) {
        const written = entryWritten(copy, at)
        if (written && !this.fileWritten.has(i) && this.zeroData?.has(i) !== true) ordered = true
        this.fileWritten.put(i, written)
      }
      taken = { from: d.from, to: d.to, copy, ordered }
    }
    // data written so far is no longer "since the entries were last taken"
    if (this.zeroData !== undefined) {
      this.zeroData.takeFrom(this.touched)
      if (!this.zeroData.any()) this.zeroData = undefined
    }
    return taken
  }

  /** fdatasync; a failure is remembered (see syncFailed), and one beside this one fails it too */
  private async datasync(): Promise<void> {
    try {
      await this.fh.datasync()
    } catch (e) {
      this.syncFailed ??= errorMessage(e)
      throw e
    }
    // another sync's fsync failed meanwhile: the pages it dropped may be ones this one covers
    if (this.syncFailed !== undefined) throw this.failedSyncError()
  }

  private failedSyncError(): Error {
    return new Error(`extent group ${this.id} (${this.file}): an earlier fsync failed (${this.syncFailed}); writes since the sync before it may be lost`)
  }

  private async writeBlocks(slot: number, offset: number, data: Buffer): Promise<void> {
    const newEntries = this.entriesFor(data, Buffer.allocUnsafe(entriesScratchBytes))
    // The data through the pool (a synchronous pwrite here would wait on the file's inode lock
    // while the pool's threads write other large requests into the same file); the in-memory
    // entries change once it is done, and reach the file at the next sync (entriesChanged).
    const eo = this.entryOffset(slot, offset / checksumBlockSizeBytes)
    const at = dataRegionOffset + slot * vBlockSizeBytes + offset
    this.poolWrites++
    try {
      const direct = this.bypassCache(slot, offset, at, data) ? await this.directFile() : undefined
      if (direct) await this.writeDirect(direct, data, at)
      else await this.fh.writeAll(data, at)
    } finally {
      this.poolWrites--
    }
    newEntries.copy(this.entries, eo)
    this.entriesChanged(eo, eo + newEntries.length)
  }

  /**
   * Whether a large write goes to the disk with O_DIRECT (see writeDirect). Into pages the page
   * cache holds: never (copying into them is the fastest write there is). A first write (no block
   * of the range written before): always, at the disk's speed, where a buffered one would first
   * have the cache allocate its pages. An overwrite of data that is not cached: the first of its
   * extent since the file was opened goes to the disk like a first write (a copy or a restore
   * passes once); a second means the extent is being rewritten (a file system's journal, a
   * database, a benchmark), so from then on it is buffered and the page cache keeps it: it pays the
   * allocation once and later overwrites only copy, as `nbdkit file` does (BENCHMARKS.md: direct
   * overwrites held steady 1 MiB overwrites to the disk's speed, 0.4-0.5x of `nbdkit file`).
   */
  private bypassCache(slot: number, offset: number, at: number, data: Buffer): boolean {
    if (!directWritesEnabled || !directIoReady(data)) return false
    const first = !this.anyWritten(slot, offset, data.length)
    // an extent being rewritten is buffered whether or not it is cached: no cachestat call for it
    if (!first && this.rewritten[slot] === 1) return false
    if (this.cached(at, data.length)) return false
    if (first) return true
    this.rewritten[slot] = 1
    return true
  }

  /** whether the entries say any block of the range is written */
  private anyWritten(slot: number, offset: number, length: number): boolean {
    const from = this.entryOffset(slot, offset / checksumBlockSizeBytes)
    const to = this.entryOffset(slot, (offset + length) / checksumBlockSizeBytes)
    for (let eo = from; eo < to; eo += entryBytes) if (entryWritten(this.entries, eo)) return true
    return false
  }

  /**
   * Whether the page cache holds every page of the range (cachestat, no read-ahead): then a
   * buffered write only copies into pages that exist. Where the kernel cannot tell, true: the
   * write stays buffered, as it always was.
   */
  private cached(at: number, length: number): boolean {
    const n = this.fh.pagesCached(at, length)
    return n === undefined || n * checksumBlockSizeBytes >= length
  }

  /** the file opened with O_DIRECT for large writes; undefined where it cannot be (then never tried again) */
  private async directFile(): Promise<FileIo | undefined> {
    if (this.direct === undefined) {
      this.directOpening ??= this.files.openDirect(this.file).then(async (fh) => {
        // closed meanwhile: nothing may write through it any more
        if (fh !== undefined && this.closed) await fh.close()
        this.direct = fh !== undefined && !this.closed ? fh : null
      })
      await this.directOpening
    }
    return this.direct ?? undefined
  }

  /**
   * A large write whose pages the page cache does not hold (every first write of an extent, and
   * the first overwrite of an extent that is not cached: see bypassCache) bypasses the page cache.
   * A buffered write into pages the cache must first allocate costs several times the copy on
   * these machines (a VM whose fresh memory is slow to touch: plain buffered writes into a new file
   * run at about a third of overwrites), while the disk takes the same bytes directly at its own
   * speed. Writes into cached
   * pages stay buffered: copying into pages that exist is the fastest write there is. Durability
   * is unchanged: sync() (fdatasync of the same file) covers these writes and their block
   * allocation too. Any dirty cached pages of the range are written first and dropped by the
   * kernel, so reads stay coherent. A file system that refuses the write (EINVAL) gets it
   * buffered, and no more direct writes.
   */
  private async writeDirect(direct: FileIo, data: Buffer, at: number): Promise<void> {
    try {
      await direct.writeAll(data, at)
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e
      this.direct = null
      void direct.close().catch(() => undefined) // the O_DIRECT descriptor is dropped; writes go through the other
      await this.fh.writeAll(data, at)
    }
  }

  /**
   * Make blocks read as zeros (trim, write-zeroes): reset their entries. They reach the file with
   * the next sync, like the entries of writes: written here at once, they could land before a
   * sync's write of an older copy of the same span (both go through the thread pool), which would
   * put the blocks back on disk while memory says they are gone, and a FLUSH would make that
   * durable.
   */
  async clear(slot: number, offset: number, length: number): Promise<void> {
    assert(offset % checksumBlockSizeBytes === 0 && length % checksumBlockSizeBytes === 0, 'egroup clear is block aligned')
    this.active++
    try {
      if (!this.dirty) await this.markDirty()
      const from = this.entryOffset(slot, offset / checksumBlockSizeBytes)
      const to = this.entryOffset(slot, (offset + length) / checksumBlockSizeBytes)
      this.entries.fill(0, from, to)
      this.entriesChanged(from, to)
      // a whole extent cleared (its slot freed, or trimmed): the next extent there starts over
      if (offset === 0 && length === vBlockSizeBytes) this.rewritten[slot] = 0
    } finally {
      this.writeEnded()
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
    this.markerLock = run.catch(() => undefined) // the chain only orders marker changes; each caller gets its own result
    return run
  }

  private async markDirty(): Promise<void> {
    if (this.dirty) return
    await this.withMarkerLock(async () => {
      if (this.dirty) return
      await this.files.touch(EgroupFile.markerName(this.file))
      await this.files.syncDir(path.dirname(this.file))
      this.dirty = true
    })
  }

  get isDirty(): boolean {
    return this.dirty
  }

  /**
   * Make every write completed before the call durable: the changed checksum entries are written
   * and the file fdatasynced; where they make blocks written that the file has as unwritten, the
   * data is fdatasynced before they are written (see takeEntries).
   */
  async sync(): Promise<void> {
    if (this.syncFailed !== undefined) throw this.failedSyncError()
    if (!this.dirty) return
    const gen = this.writeGen
    // Every write counted in syncedGen was complete before a datasync that has finished.
    if (gen !== this.syncedGen) {
      await this.writeEntries()
      await this.datasync()
      if (gen > this.syncedGen) this.syncedGen = gen
    }
    this.scheduleClean()
  }

  /**
   * The marker goes a while after a sync, not at once: removing it at every sync and creating it
   * again at the next write cost two directory syncs per FLUSH of a busy file. Its only cost while
   * it stays is a scrub of this file if the process dies.
   */
  private scheduleClean(): void {
    if (this.cleanTimer !== undefined || this.closed) return
    this.cleanTimer = this.files.later(egroupCleanMarkerDelayMs, () => {
      this.cleanTimer = undefined
      this.clean().catch((e: unknown) => this.warn(`cannot remove the dirty marker of ${this.file}: ${errorMessage(e)}`))
    })
  }

  /** Remove the marker if every completed write is durable and none is in progress. */
  private async clean(): Promise<void> {
    await this.withMarkerLock(async () => {
      if (!this.dirty || this.writeGen !== this.syncedGen || this.active > 0) return
      // Cleared before the removal: a write arriving meanwhile sees a clean file and waits for
      // this lock to create the marker again.
      this.dirty = false
      await this.files.remove(EgroupFile.markerName(this.file))
    })
  }

  /** where background failures are reported (the replica store sets it) */
  warn: (message: string) => void = () => undefined

  async close(): Promise<void> {
    await this.idle()
    // after a failed fsync nothing more can be made durable: the marker stays (the next open scrubs)
    if (this.syncFailed === undefined) await this.sync()
    this.cleanTimer?.cancel()
    this.cleanTimer = undefined
    await this.clean()
    this.closed = true
    await this.closeDirect()
    await this.fh.close()
  }

  private async closeDirect(): Promise<void> {
    await this.directOpening
    const direct = this.direct
    this.direct = null
    if (direct) await direct.close()
  }

  /** Close without syncing (the file is about to be deleted). */
  async discard(): Promise<void> {
    this.closed = true
    await this.idle()
    this.cleanTimer?.cancel()
    this.cleanTimer = undefined
    await this.closeDirect()
    await this.fh.close()
  }

  /** Tests: remove the marker now if the file is clean (what the delayed removal does). */
  async cleanNow(): Promise<void> {
    this.cleanTimer?.cancel()
    this.cleanTimer = undefined
    await this.clean()
  }

  /** Test hook: zeros of one block, for writing zero ranges without allocating a buffer each time. */
  static get zeroBlock(): Buffer {
    return zeroBlock
  }
}
