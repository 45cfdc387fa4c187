import { assert, errorMessage } from '../../common/errors.js'
import { checksumBlockSizeBytes, extentsPerEgroup, vBlockSizeBytes } from '../../common/limits.js'
import type { Logger } from '../../common/log.js'
import { DeviceError, nbdErrno } from '../nbd/device.js'
import { ChecksumError, type EgroupFile } from './egroup.js'
import { KeyedRwLock } from './locks.js'
import type { MapWriter } from './mapwriter.js'

/** Where one vBlock's extent lives. */
export interface ExtentRef {
  egroupId: string
  slot: number
}

export interface LoadedEgroup {
  id: string
  diskId: string
  diskPath: string
  file: EgroupFile | undefined
  usedSlots: Set<number>
  freeSlots: number[]
}

export interface VdiskBackend {
  mapWriter: MapWriter
  mapKey(vblock: number): string
  /** a new egroup with every slot free, durably recorded and created */
  newEgroup(): Promise<LoadedEgroup>
  log: Logger
}

const zeroExtent = Buffer.alloc(vBlockSizeBytes)

function alignDown(n: number): number {
  return n - (n % checksumBlockSizeBytes)
}

function alignUp(n: number): number {
  const r = n % checksumBlockSizeBytes
  return r === 0 ? n : n + checksumBlockSizeBytes - r
}

/**
 * A vDisk as its owner CVM serves it: the block map in memory, extents in extent groups. Writes
 * to a vBlock are serialized by a per-vBlock lock (reads share it), so a read never sees data
 * without its checksum and two writes never allocate the same vBlock twice.
 *
 * Write of a new vBlock: take a free slot → write data and checksums into it → commit the map
 * entry to etcd (fenced on ownership) → acknowledge. A crash before the commit leaves a slot that
 * no map entry names; the next load frees it. A crash after leaves a complete extent.
 */
export class Vdisk {
  private readonly locks = new KeyedRwLock()
  private creating: Promise<LoadedEgroup> | undefined
  private closedReason: string | undefined
  connections = 0

  constructor(
    readonly id: string,
    readonly name: string,
    public sizeBytes: number,
    private readonly map: Map<number, ExtentRef>,
    private readonly egroups: Map<string, LoadedEgroup>,
    private readonly backend: VdiskBackend,
  ) {}

  get allocatedExtents(): number {
    return this.map.size
  }

  egroupList(): LoadedEgroup[] {
    return [...this.egroups.values()]
  }

  /** Stop serving: later I/O fails with ESHUTDOWN. */
  shut(reason: string): void {
    this.closedReason = reason
  }

  private check(): void {
    if (this.closedReason) throw new DeviceError(nbdErrno.ESHUTDOWN, `vDisk ${this.name} is ${this.closedReason}`)
  }

  private egroupOf(ref: ExtentRef): LoadedEgroup & { file: EgroupFile } {
    const eg = this.egroups.get(ref.egroupId)
    if (!eg || !eg.file) {
      throw new DeviceError(nbdErrno.EIO, `vDisk ${this.name}: extent group ${ref.egroupId} is not available on this node`)
    }
    return eg as LoadedEgroup & { file: EgroupFile }
  }

  /** Split [offset, offset+length) into per-vBlock pieces. */
  private *pieces(offset: number, length: number): Generator<{ vb: number, off: number, len: number, pos: number }> {
    let pos = 0
    while (pos < length) {
      const abs = offset + pos
      const vb = Math.floor(abs / vBlockSizeBytes)
      const off = abs - vb * vBlockSizeBytes
      const len = Math.min(vBlockSizeBytes - off, length - pos)
      yield { vb, off, len, pos }
      pos += len
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.check()
    const out = Buffer.allocUnsafe(length)
    await Promise.all([...this.pieces(offset, length)].map((p) => this.readPiece(p.vb, p.off, p.len, out, p.pos)))
    return out
  }

  private async readPiece(vb: number, off: number, len: number, out: Buffer, pos: number): Promise<void> {
    const release = await this.locks.read(vb)
    try {
      const ref = this.map.get(vb)
      if (!ref) {
        out.fill(0, pos, pos + len)
        return
      }
      const eg = this.egroupOf(ref)
      const a = alignDown(off)
      const b = alignUp(off + len)
      try {
        if (a === off && b === off + len) {
          await eg.file.read(ref.slot, a, b - a, out, pos)
        } else {
          const tmp = Buffer.allocUnsafe(b - a)
          await eg.file.read(ref.slot, a, b - a, tmp, 0)
          tmp.copy(out, pos, off - a, off - a + len)
        }
      } catch (e) {
        throw this.ioError('read', vb, ref, eg, e)
      }
    } finally {
      release()
    }
  }

  private ioError(op: string, vb: number, ref: ExtentRef, eg: LoadedEgroup, e: unknown): DeviceError {
    if (e instanceof DeviceError) return e
    if (e instanceof ChecksumError) {
      this.backend.log.error(`vDisk ${this.name} (${this.id}) vBlock ${vb}: ${e.message} on disk ${eg.diskId} (${eg.diskPath}); returning EIO`)
    } else {
      this.backend.log.error(`vDisk ${this.name} (${this.id}) vBlock ${vb}: ${op} of extent group ${ref.egroupId} slot ${ref.slot} on disk ${eg.diskId} (${eg.diskPath}) failed: ${errorMessage(e)}`)
    }
    return new DeviceError(nbdErrno.EIO, `${op} failed`)
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.check()
    const touched = new Set<LoadedEgroup>()
    await Promise.all([...this.pieces(offset, data.length)].map((p) => this.writePiece(p.vb, p.off, data.subarray(p.pos, p.pos + p.len), touched)))
    if (fua) await this.syncEgroups(touched)
  }

  private async writePiece(vb: number, off: number, data: Buffer, touched: Set<LoadedEgroup>): Promise<void> {
    const release = await this.locks.write(vb)
    try {
      const ref = this.map.get(vb)
      const a = alignDown(off)
      const b = alignUp(off + data.length)
      let buf = data
      if (a !== off || b !== off + data.length) {
        // Unaligned: read the edge blocks (verified), merge, write whole blocks.
        buf = Buffer.alloc(b - a)
        if (ref) {
          const eg = this.egroupOf(ref)
          try {
            await eg.file.read(ref.slot, a, checksumBlockSizeBytes, buf, 0)
            if (b - a > checksumBlockSizeBytes) await eg.file.read(ref.slot, b - checksumBlockSizeBytes, checksumBlockSizeBytes, buf, b - a - checksumBlockSizeBytes)
          } catch (e) {
            throw this.ioError('read-modify-write', vb, ref, eg, e)
          }
        }
        data.copy(buf, off - a)
      }
      if (ref) {
        const eg = this.egroupOf(ref)
        try {
          await eg.file.write(ref.slot, a, buf)
        } catch (e) {
          throw this.ioError('write', vb, ref, eg, e)
        }
        touched.add(eg)
      } else {
        touched.add(await this.allocate(vb, a, buf))
      }
    } finally {
      release()
    }
  }

  /** Called with the vBlock's write lock held. */
  private async allocate(vb: number, off: number, buf: Buffer): Promise<LoadedEgroup> {
    const { eg, slot } = await this.takeSlot()
    const ref: ExtentRef = { egroupId: eg.id, slot }
    try {
      await eg.file!.write(slot, off, buf)
    } catch (e) {
      eg.freeSlots.push(slot)
      throw this.ioError('write', vb, ref, eg, e)
    }
    try {
      await this.backend.mapWriter.put(this.backend.mapKey(vb), JSON.stringify({ eg: eg.id, s: slot }))
    } catch (e) {
      this.backend.log.error(`vDisk ${this.name}: cannot record extent of vBlock ${vb} in etcd: ${errorMessage(e)}`)
      // Free the slot before reuse; if that fails too, the next load frees it (no map entry).
      try {
        await eg.file!.freeSlot(slot)
        eg.freeSlots.push(slot)
      } catch { /* leave the slot out of the free list */ }
      throw new DeviceError(nbdErrno.EIO, 'cannot record the new extent')
    }
    eg.usedSlots.add(slot)
    this.map.set(vb, ref)
    return eg
  }

  private async takeSlot(): Promise<{ eg: LoadedEgroup, slot: number }> {
    for (;;) {
      for (const eg of this.egroups.values()) {
        if (eg.file && eg.freeSlots.length > 0) {
          const slot = eg.freeSlots.shift()!
          return { eg, slot }
        }
      }
      if (!this.creating) {
        this.creating = this.backend.newEgroup().then((eg) => {
          assert(eg.freeSlots.length === extentsPerEgroup, 'new egroup is empty')
          this.egroups.set(eg.id, eg)
          return eg
        }).finally(() => { this.creating = undefined })
      }
      try {
        await this.creating
      } catch (e) {
        this.backend.log.error(`vDisk ${this.name}: cannot create an extent group: ${errorMessage(e)}`)
        throw new DeviceError(nbdErrno.ENOSPC, 'cannot create an extent group')
      }
    }
  }

  private async freeExtent(vb: number): Promise<void> {
    const ref = this.map.get(vb)
    if (!ref) return
    const eg = this.egroupOf(ref)
    try {
      await this.backend.mapWriter.delete(this.backend.mapKey(vb))
    } catch (e) {
      this.backend.log.error(`vDisk ${this.name}: cannot remove extent of vBlock ${vb} from etcd: ${errorMessage(e)}`)
      throw new DeviceError(nbdErrno.EIO, 'cannot free the extent')
    }
    this.map.delete(vb)
    eg.usedSlots.delete(ref.slot)
    try {
      await eg.file.freeSlot(ref.slot)
      eg.freeSlots.push(ref.slot)
    } catch (e) {
      // The slot stays out of the free list; the next load resets it (no map entry names it).
      this.backend.log.error(`vDisk ${this.name}: cannot reset slot ${ref.slot} of extent group ${eg.id}: ${errorMessage(e)}`)
    }
  }

  async trim(offset: number, length: number): Promise<void> {
    this.check()
    await Promise.all([...this.pieces(offset, length)].map(async (p) => {
      if (!this.map.has(p.vb)) return
      if (p.off === 0 && p.len === vBlockSizeBytes) {
        const release = await this.locks.write(p.vb)
        try {
          await this.freeExtent(p.vb)
        } finally {
          release()
        }
        return
      }
      await this.zeroPiece(p.vb, p.off, p.len)
    }))
  }

  /** Make part of one vBlock read as zeros: clear whole blocks, write zeros into partial edges. */
  private async zeroPiece(vb: number, off: number, len: number): Promise<void> {
    const innerA = alignUp(off)
    const innerB = alignDown(off + len)
    if (innerA < innerB) {
      const release = await this.locks.write(vb)
      try {
        const ref = this.map.get(vb)
        if (ref) {
          const eg = this.egroupOf(ref)
          try {
            await eg.file.clear(ref.slot, innerA, innerB - innerA)
          } catch (e) {
            throw this.ioError('clear', vb, ref, eg, e)
          }
        }
      } finally {
        release()
      }
    }
    const touched = new Set<LoadedEgroup>()
    if (innerA > innerB) {
      // the whole range is inside one block
      await this.writePiece(vb, off, zeroExtent.subarray(0, len), touched)
      return
    }
    if (off < innerA) await this.writePiece(vb, off, zeroExtent.subarray(0, innerA - off), touched)
    if (innerB < off + len) await this.writePiece(vb, innerB, zeroExtent.subarray(0, off + len - innerB), touched)
  }

  async writeZeroes(offset: number, length: number, noHole: boolean, fua: boolean): Promise<void> {
    this.check()
    if (!noHole) {
      await this.trim(offset, length)
      if (fua) await this.flush()
      return
    }
    const touched = new Set<LoadedEgroup>()
    for (const p of this.pieces(offset, length)) {
      await this.writePiece(p.vb, p.off, zeroExtent.subarray(0, p.len), touched)
    }
    if (fua) await this.syncEgroups(touched)
  }

  async flush(): Promise<void> {
    this.check()
    await this.syncEgroups(new Set(this.egroups.values()))
  }

  private async syncEgroups(egs: Set<LoadedEgroup>): Promise<void> {
    try {
      await Promise.all([...egs].map((eg) => eg.file?.sync()))
    } catch (e) {
      this.backend.log.error(`vDisk ${this.name}: fsync failed: ${errorMessage(e)}`)
      throw new DeviceError(nbdErrno.EIO, 'flush failed')
    }
  }

  async closeFiles(sync: boolean): Promise<void> {
    for (const eg of this.egroups.values()) {
      try {
        if (sync) await eg.file?.close()
        else await eg.file?.discard()
      } catch { /* closing anyway */ }
      eg.file = undefined
    }
  }
}
