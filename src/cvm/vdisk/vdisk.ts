import { assert, errorMessage } from '../../lib/errors.js'
import { checksumBlockSizeBytes, egroupCreatesAheadMax, historyPruneBatch, egroupPrecreateFreeSlotsMin, extentsPerEgroup, pendingAllocationsMax, repairEgroupsInFlightMax, vBlockSizeBytes } from '../../lib/limits.js'
import type { Logger } from '../../lib/log.js'
import type { ReplicaMove, ReplicaPlace } from '../../lib/types.js'
import { DeviceError, nbdErrno } from '../nbd/device.js'
import { ChecksumError } from './egroup.js'
import type { BlockCipher } from './crypt.js'
import { histValue, SnapshotHistory, type HistEntry } from './history.js'
import { KeyedRwLock } from './locks.js'
import { placementErrno } from './placement.js'
import type { MapWriter } from './mapwriter.js'
import { isChecksumFailure, type Replica } from './replica.js'

/** Where one vBlock's extent lives. */
export interface ExtentRef {
  egroupId: string
  slot: number
  /** the epoch it was written in (history.ts; absent: 0) */
  e?: number
}

export interface LoadedEgroup {
  id: string
  /** RF replicas on RF distinct nodes; the local one (if any) first */
  replicas: Replica[]
  usedSlots: Set<number>
  freeSlots: number[]
  /** shared by I/O, exclusive while a replica is replaced */
  lock: KeyedRwLock
  /**
   * Replicas that may miss a change the others made (an operation failed on them and not on all),
   * with the operations they missed, until they are replaced. A replacement replaces them too and
   * never copies from one that misses the operation it is made for; a copy misses what its source
   * missed.
   */
  missed?: Map<Replica, Set<object>>
}

/** What a scrub of a vDisk found (Vdisk.scrub). */
export interface ScrubResult {
  extents: number
  /** bytes read from every replica */
  bytesChecked: number
  /** 4 KiB blocks whose copy on some replica did not match its checksum */
  badBlocks: number
  /** of those, rewritten from a good copy */
  repairedBlocks: number
  /** replica reads that failed for another reason (a node down) */
  unreadable: number
}

export interface VdiskBackend {
  mapWriter: MapWriter
  mapKey(vblock: number): string
  /** the etcd key of a history entry (history.ts) of `vblock` written in epoch `e` */
  histKey?(vblock: number, e: number): string
  /**
   * `count` (1..egroupCreatesAheadMax) new egroups with every slot free, durably recorded (in one
   * etcd transaction) and created on RF nodes each
   */
  newEgroups(count: number): Promise<LoadedEgroup[]>
  /**
   * Replace replicas that failed an operation: mark them stale, copy the extent group from a
   * healthy replica to a node that has none, record the new set. Throws when it cannot keep RF
   * copies. Takes the egroup's lock exclusively. `target`: the one disk the copy goes to (a move
   * by the curator's balancing, with `evacuate`), instead of one placement picks.
   */
  replaceFailed(eg: LoadedEgroup, failed: Replica[], why: unknown, opts?: { evacuate?: boolean, op?: object, repair?: boolean, target?: ReplicaPlace }): Promise<void>
  /** the vDisk's replication factor (default: as many copies as each group has) */
  rf?: number
  log: Logger
  /** an encrypted vDisk's cipher: blocks are encrypted before they reach a replica and decrypted after a read */
  cipher?: BlockCipher
}

const blocksPerVblock = vBlockSizeBytes / checksumBlockSizeBytes

/**
 * May replica `r` of `eg` move to `to`: a place other than its own, on a node that holds no other
 * copy of the group, and `r` holds every operation (one that missed a write is the write path's
 * to replace, and a move copies from it)?
 */
function movable(eg: LoadedEgroup, r: Replica, to: ReplicaPlace): boolean {
  if (to.node === r.node && to.diskId === r.diskId) return false
  if (eg.replicas.some((x) => x.node === to.node && x !== r)) return false
  return (eg.missed?.get(r)?.size ?? 0) === 0
}

/** the number in the vDisk of the 4 KiB block at `off` in vBlock `vb` (the encryption tweak) */
function blockNumber(vb: number, off: number): number {
  return vb * blocksPerVblock + off / checksumBlockSizeBytes
}

const zeroExtent = Buffer.alloc(vBlockSizeBytes)

function alignDown(n: number): number {
  return n - (n % checksumBlockSizeBytes)
}

function alignUp(n: number): number {
  const r = n % checksumBlockSizeBytes
  return r === 0 ? n : n + checksumBlockSizeBytes - r
}

/** a block map entry as stored (etcd value of the map key; the epoch only once snapshots exist) */
function mapValue(ref: ExtentRef): string {
  return JSON.stringify(ref.e !== undefined && ref.e > 0 ? { eg: ref.egroupId, s: ref.slot, e: ref.e } : { eg: ref.egroupId, s: ref.slot })
}

/** a block map entry as read back (the inverse of mapValue) */
export function parseMapValue(raw: string): ExtentRef {
  const v = JSON.parse(raw) as { eg: string, s: number, e?: number }
  return v.e !== undefined ? { egroupId: v.eg, slot: v.s, e: v.e } : { egroupId: v.eg, slot: v.s }
}

/**
 * Client I/O on a node, counted (one increment per request, nothing else on the hot path): the
 * curator's repair looks at the count between extent groups and slows down while it moves.
 */
export class IoActivity {
  ops = 0
  private seen = 0
  private busyAt = -Infinity

  /** has a client request arrived within `windowMs` before `now` (as far as the calls to this tell)? */
  busy(now: number, windowMs: number): boolean {
    if (this.ops !== this.seen) {
      this.seen = this.ops
      this.busyAt = now
    }
    return now - this.busyAt < windowMs
  }
}

/**
 * A vDisk as its owner CVM serves it: the block map in memory, extents in extent groups. Writes
 * to a vBlock are serialized by a per-vBlock lock (reads share it), so a read never sees data
 * without its checksum and two writes never allocate the same vBlock twice.
 *
 * Write of a new vBlock: take a free slot → write data and checksums into it → record the map
 * entry in memory (pending) → acknowledge. The pending entries reach etcd (fenced on ownership,
 * batched) at the next FLUSH, or at once for a FUA write, after the extent groups they point into
 * are synced: like a file system's journal, a FLUSH makes both the data and the allocation
 * durable, and a write that was never flushed costs no etcd round trip. A crash before the
 * commit leaves slots that no map entry names; the next load frees them (nothing leaks). A crash
 * after leaves complete extents.
 *
 * New extent groups are made ahead of need: when fewer than `egroupPrecreateFreeSlotsMin` slots
 * are free, the next group is created in the background, so a stream of first writes does not
 * stop at every 32nd extent for etcd and file creation. Making a group takes an etcd transaction
 * and file and directory syncs (about 10 ms measured), longer than a fast stream takes to fill
 * 32 MiB: when an allocation finds the group it needs still being made, the vDisk makes more at
 * once from then on (up to `egroupCreatesAheadMax`, in one batch with one etcd transaction for
 * their records), so only a vDisk that streams keeps groups ahead, and a small one holds one.
 */
export class Vdisk {
  private readonly locks = new KeyedRwLock()
  /** batches of extent groups being made (at most aheadDepth groups in all) */
  private readonly creating = new Set<Promise<LoadedEgroup[]>>()
  /** how many groups the batches in `creating` make */
  private creatingGroups = 0
  /** how many groups this vDisk makes ahead at once: doubled when an allocation had to wait for one */
  private aheadDepth = 1
  /** allocations that waited for a new extent group since the last flush (logged there: the groups made ahead were late) */
  private allocationWaits = 0
  /** allocations whose map entry is in memory only; committed by the next flush (or FUA) */
  private readonly pendingMap = new Map<number, ExtentRef>()
  /** allocations whose map entry is on its way to etcd, and the commit carrying it */
  private readonly committing = new Map<number, { ref: ExtentRef, done: Promise<unknown> }>()
  /**
   * vBlocks whose entry in etcd is unknown: a put or delete of it failed, and a failed etcd call
   * may still have applied (its answer lost). The next flush puts such an entry again (pending),
   * and freeing it always deletes it in etcd, even while it is pending.
   */
  private readonly mapUnsure = new Set<number>()
  private backgroundFlush: Promise<void> | undefined
  /**
   * Extent groups changed since the flush that last took them: a FLUSH syncs only these (an RF 2
   * vDisk of 1 TiB would otherwise send an RPC per extent group to every peer at every FLUSH).
   */
  private readonly unsynced = new Set<LoadedEgroup>()
  /** syncs of earlier flushes still running: a flush is answered only after they are done too */
  private readonly syncing = new Set<Promise<void>>()
  private closedReason: string | undefined
  connections = 0

  constructor(
    readonly id: string,
    readonly name: string,
    public sizeBytes: number,
    private readonly map: Map<number, ExtentRef>,
    private readonly egroups: Map<string, LoadedEgroup>,
    private readonly backend: VdiskBackend,
    /** client I/O of the node (every vDisk it serves counts here), which the curator's repair yields to */
    private readonly activity: IoActivity = new IoActivity(),
    /** its snapshots and the extents only they still see */
    readonly history: SnapshotHistory = new SnapshotHistory(),
    /** snapshot name -> epoch */
    private readonly snapshotEpochs: Map<string, number> = new Map(),
  ) {}

  /**
   * A clone's parent: reads `out.length` bytes at `offset` of the snapshot it was made from (and,
   * through it, its parents). Set by the engine; undefined for a vDisk that stands alone.
   */
  parentReader: ((offset: number, out: Buffer) => Promise<void>) | undefined

  /** writes, trims and zeroings in progress (a snapshot waits until none is) */
  private writers = 0
  private drained: (() => void) | undefined
  /** set while a snapshot is taken: writes wait for it */
  private gate: Promise<void> | undefined
  /** what each snapshot sees (by epoch), made at its first read */
  private readonly views = new Map<number, Map<number, ExtentRef>>()

  private leave(): void {
    if (--this.writers === 0) this.drained?.()
  }

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

  private egroupOf(ref: ExtentRef): LoadedEgroup {
    const eg = this.egroups.get(ref.egroupId)
    if (!eg || eg.replicas.length === 0) {
      throw new DeviceError(nbdErrno.EIO, `vDisk ${this.name}: extent group ${ref.egroupId} has no replica`)
    }
    return eg
  }

  /**
   * Read from one replica, local first. A replica that fails is skipped; one whose checksum does
   * not match is rewritten with the good bytes from the replica that served them.
   */
  private async readReplicas(eg: LoadedEgroup, vb: number, slot: number, offset: number, length: number, out: Buffer, outOffset: number): Promise<void> {
    const release = await eg.lock.read(0)
    try {
      const bad: Replica[] = []
      let lastErr: unknown
      // local first (the list's order), replicas on nodes believed down last
      const order = eg.replicas.length === 1 ? eg.replicas : [...eg.replicas.filter((r) => !r.suspect()), ...eg.replicas.filter((r) => r.suspect())]
      for (const r of order) {
        try {
          await r.read(slot, offset, length, out, outOffset)
          for (const b of bad) {
            this.backend.log.warn(`vDisk ${this.name} vBlock ${vb}: repairing replica of extent group ${eg.id} on ${b.node} disk ${b.diskId} from ${r.node}`)
            await b.write(slot, offset, Buffer.from(out.subarray(outOffset, outOffset + length))).catch((e: unknown) => {
              this.backend.log.error(`vDisk ${this.name}: repair of extent group ${eg.id} on ${b.node} failed: ${errorMessage(e)}`)
            })
          }
          return
        } catch (e) {
          lastErr = e
          this.logFailure('read', vb, eg, r, e)
          if (isChecksumFailure(e)) bad.push(r)
        }
      }
      throw lastErr
    } finally {
      release()
    }
  }

  /** Run an operation on every replica in parallel; replace the ones that fail (keeping RF). */
  private async onAllReplicas(eg: LoadedEgroup, what: string, vb: number, fn: (r: Replica) => Promise<void>): Promise<void> {
    // Marked before the change starts (a flush that begins meanwhile syncs it too: harmless) and
    // again once it ended: such a flush takes the group out of the set and may sync it before
    // the change is in the file, and the next flush must still sync it.
    if (what !== 'flush') this.unsynced.add(eg)
    const op = {}
    const release = await eg.lock.read(0)
    const replicas = [...eg.replicas]
    let results: PromiseSettledResult<void>[]
    let failed: Replica[]
    try {
      if (replicas.length === 1) {
        // RF 1: no settling of a promise array
        try {
          await fn(replicas[0]!)
          return
        } catch (e) {
          results = [{ status: 'rejected', reason: e }]
        }
      } else {
        results = await Promise.allSettled(replicas.map(fn))
      }
      failed = replicas.filter((_r, i) => results[i]!.status === 'rejected')
      // Noted before the lock goes: a replacement for another operation (it waits for the lock
      // exclusively, and may run before this one's) must not copy from a replica that missed
      // this one. (When every replica failed, none has what the others lack: nothing to note.)
      if (failed.length > 0 && failed.length < replicas.length) {
        eg.missed ??= new Map()
        for (const r of failed) {
          let s = eg.missed.get(r)
          if (s === undefined) eg.missed.set(r, s = new Set())
          s.add(op)
        }
      }
    } finally {
      release()
      if (what !== 'flush') this.unsynced.add(eg)
    }
    if (failed.length === 0) return
    const firstErr = (results.find((x) => x.status === 'rejected') as PromiseRejectedResult).reason
    for (const r of failed) this.logFailure(what, vb, eg, r, (results[replicas.indexOf(r)] as PromiseRejectedResult).reason)
    if (failed.length === replicas.length) throw firstErr
    try {
      await this.backend.replaceFailed(eg, failed, firstErr, { op })
    } catch (e) {
      this.backend.log.error(`vDisk ${this.name}: cannot keep RF copies of extent group ${eg.id}: ${errorMessage(e)}`)
      const full = placementErrno(e) === nbdErrno.ENOSPC || placementErrno(firstErr) === nbdErrno.ENOSPC
      throw new DeviceError(full ? nbdErrno.ENOSPC : nbdErrno.EIO, `${what} failed: ${full ? 'no space left on the disks' : 'not enough healthy replicas'}`)
    }
  }

  private logFailure(what: string, vb: number, eg: LoadedEgroup, r: Replica, e: unknown): void {
    const detail = e instanceof ChecksumError ? e.message : errorMessage(e)
    this.backend.log.error(`vDisk ${this.name} (${this.id}) vBlock ${vb}: ${what} of extent group ${eg.id} on node ${r.node} disk ${r.diskId} failed: ${detail}`)
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
    const out = Buffer.allocUnsafe(length)
    await this.readInto(offset, out)
    return out
  }

  async readInto(offset: number, out: Buffer): Promise<void> {
    this.activity.ops++
    this.check()
    const vb = Math.floor(offset / vBlockSizeBytes)
    if (offset + out.length <= (vb + 1) * vBlockSizeBytes) {
      await this.readPiece(vb, offset - vb * vBlockSizeBytes, out.length, out, 0)
      return
    }
    await Promise.all([...this.pieces(offset, out.length)].map((p) => this.readPiece(p.vb, p.off, p.len, out, p.pos)))
  }

  /**
   * readInto() on the calling thread, for the NBD server's fast path: true when `out` holds the
   * range (one vBlock, block aligned, unwritten or on a local replica whose pages are cached and
   * whose checksums match, with no write of the vBlock or change of the group's replicas in
   * progress or waiting); false when readInto() must do it. Nothing here yields, so the locks are
   * only found free, not taken.
   */
  readIfCached(offset: number, out: Buffer): boolean {
    if (this.closedReason) return false
    const vb = Math.floor(offset / vBlockSizeBytes)
    const off = offset - vb * vBlockSizeBytes
    if (off + out.length > vBlockSizeBytes || !this.locks.readable(vb)) return false
    const ref = this.map.get(vb)
    if (ref === undefined) {
      if (this.parentReader !== undefined) return false
      out.fill(0)
    } else {
      if (alignDown(off) !== off || alignUp(off + out.length) !== off + out.length) return false
      const eg = this.egroups.get(ref.egroupId)
      const r = eg?.replicas[0]
      if (eg === undefined || r?.readIfCached === undefined || r.suspect() || !eg.lock.readable(0)) return false
      if (!r.readIfCached(ref.slot, off, out.length, out, 0)) return false
      this.backend.cipher?.decryptInPlace(out, blockNumber(vb, off))
    }
    this.activity.ops++
    return true
  }

  /**
   * write() without FUA on the calling thread, for the NBD server's fast path: true when written
   * (one vBlock that has its extent, block aligned, RF 1 on a local replica that takes it without
   * waiting, no other I/O of the vBlock or change of the group's replicas in progress or waiting);
   * false, with nothing written, when write() must do it. A failing write also gives false:
   * write() then meets the failure and handles it as always.
   */
  writeIfQuick(offset: number, data: Buffer): boolean {
    if (this.closedReason) return false
    const vb = Math.floor(offset / vBlockSizeBytes)
    const off = offset - vb * vBlockSizeBytes
    if (off + data.length > vBlockSizeBytes || alignDown(off) !== off || alignUp(off + data.length) !== off + data.length) return false
    const ref = this.map.get(vb)
    if (ref === undefined || this.gate !== undefined || this.history.frozen(ref) || !this.locks.idle(vb)) return false
    const eg = this.egroups.get(ref.egroupId)
    const r = eg?.replicas.length === 1 ? eg.replicas[0] : undefined
    if (eg === undefined || r?.writeIfQuick === undefined || !eg.lock.readable(0)) return false
    const sealed = this.backend.cipher?.encryptPooled(data, blockNumber(vb, off))
    try {
      if (!r.writeIfQuick(ref.slot, off, sealed?.data ?? data)) return false
    } catch {
      return false
    } finally {
      sealed?.done()
    }
    this.unsynced.add(eg)
    this.activity.ops++
    return true
  }

  private async readPiece(vb: number, off: number, len: number, out: Buffer, pos: number): Promise<void> {
    const release = await this.locks.read(vb)
    try {
      await this.readRef(this.map.get(vb), vb, off, len, out, pos)
    } finally {
      release()
    }
  }

  /** Read part of vBlock `vb` from extent `ref` (none: zeros); the caller holds the vBlock's lock. */
  private async readRef(ref: ExtentRef | undefined, vb: number, off: number, len: number, out: Buffer, pos: number): Promise<void> {
    if (!ref) {
      // a clone reads what it has not written from its parent
      if (this.parentReader !== undefined) await this.readParent(vb * vBlockSizeBytes + off, out.subarray(pos, pos + len))
      else out.fill(0, pos, pos + len)
      return
    }
    const eg = this.egroupOf(ref)
    const a = alignDown(off)
    const b = alignUp(off + len)
    const cipher = this.backend.cipher
    try {
      if (a === off && b === off + len) {
        await this.readReplicas(eg, vb, ref.slot, a, b - a, out, pos)
        cipher?.decryptInPlace(out.subarray(pos, pos + len), blockNumber(vb, a))
      } else {
        const tmp = Buffer.allocUnsafe(b - a)
        await this.readReplicas(eg, vb, ref.slot, a, b - a, tmp, 0)
        cipher?.decryptInPlace(tmp, blockNumber(vb, a))
        tmp.copy(out, pos, off - a, off - a + len)
      }
    } catch (e) {
      throw this.ioError(e)
    }
  }

  /** Failures were logged where they happened (with vDisk, vBlock, egroup, node, disk): EIO for the client. */
  private ioError(e: unknown): DeviceError {
    if (e instanceof DeviceError) return e
    // a disk that is full (here, or a replica's node said so) is ENOSPC for the client, not EIO
    if (placementErrno(e) === nbdErrno.ENOSPC) return new DeviceError(nbdErrno.ENOSPC, 'no space left on the disks')
    return new DeviceError(nbdErrno.EIO, 'I/O error')
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.activity.ops++
    this.check()
    // (no await at all unless a snapshot is being taken: the hot path stays as it was)
    while (this.gate !== undefined) await this.gate
    this.writers++
    try {
      await this.writeIn(offset, data, fua)
    } finally {
      this.leave()
    }
  }

  private async writeIn(offset: number, data: Buffer, fua: boolean): Promise<void> {
    const touched = new Set<LoadedEgroup>()
    const vb = Math.floor(offset / vBlockSizeBytes)
    if (offset + data.length <= (vb + 1) * vBlockSizeBytes) {
      // the common case: one vBlock
      await this.writePiece(vb, offset - vb * vBlockSizeBytes, data, touched)
    } else {
      await Promise.all([...this.pieces(offset, data.length)].map((p) => this.writePiece(p.vb, p.off, data.subarray(p.pos, p.pos + p.len), touched)))
    }
    if (fua) await this.makeDurable(touched)
  }

  /** FUA: sync these extent groups, then commit the allocations that point into them. */
  private async makeDurable(egs: Set<LoadedEgroup>): Promise<void> {
    const ids = new Set([...egs].map((eg) => eg.id))
    const pending = [...this.pendingMap].filter(([, ref]) => ids.has(ref.egroupId))
    await this.syncEgroups(egs)
    await this.commitMap(pending)
  }

  /**
   * Record allocations in etcd (their extent groups are already synced). Entries freed meanwhile
   * are skipped; a failed commit leaves them pending for the next flush.
   */
  private async commitMap(pending: Array<[number, ExtentRef]>): Promise<void> {
    const now: Array<[number, ExtentRef]> = []
    // Entries another flush is committing right now: this flush is answered only once they are in
    // etcd too (two connections flushing at once must both wait for the same commit).
    const others = new Set<Promise<unknown>>()
    for (const [vb, ref] of pending) {
      if (this.pendingMap.get(vb) === ref) {
        now.push([vb, ref])
      } else {
        const c = this.committing.get(vb)
        if (c !== undefined && c.ref === ref) others.add(c.done)
      }
    }
    let failed: unknown
    if (now.length > 0) {
      // Out of the pending set before the puts are queued: a trim from here on deletes the key in
      // etcd, queued after the put, instead of dropping an entry that is already on its way.
      for (const [vb] of now) this.pendingMap.delete(vb)
      const done = Promise.all(now.map(([vb, ref]) => this.backend.mapWriter.put(this.backend.mapKey(vb), mapValue(ref))))
      for (const [vb, ref] of now) this.committing.set(vb, { ref, done })
      try {
        await done
        for (const [vb, ref] of now) if (this.map.get(vb) === ref) this.mapUnsure.delete(vb)
      } catch (e) {
        failed = e
        for (const [vb, ref] of now) {
          if (this.map.get(vb) !== ref) continue
          // the put may have applied: a trim must delete the entry in etcd, not only drop it here
          this.mapUnsure.add(vb)
          if (!this.pendingMap.has(vb)) this.pendingMap.set(vb, ref)
        }
        this.backend.log.error(`vDisk ${this.name}: cannot record ${now.length} new extent(s) in etcd: ${errorMessage(e)}`)
      } finally {
        for (const [vb, ref] of now) if (this.committing.get(vb)?.ref === ref) this.committing.delete(vb)
      }
    }
    // the other flushes' commits: their failures are logged (and kept pending) by their own flush
    for (const r of await Promise.allSettled(others)) if (r.status === 'rejected' && failed === undefined) failed = r.reason
    if (failed !== undefined) throw new DeviceError(nbdErrno.EIO, 'cannot record the new extents')
  }

  /** allocations not yet in etcd (tests and diagnostics) */
  get pendingAllocations(): number {
    return this.pendingMap.size
  }

  private async writePiece(vb: number, off: number, data: Buffer, touched: Set<LoadedEgroup>): Promise<void> {
    const release = await this.locks.write(vb)
    try {
      const ref = this.map.get(vb)
      if (ref === undefined && this.parentReader !== undefined && data.length < vBlockSizeBytes) {
        // a clone's first write to a vBlock: its new extent starts as a copy of the parent's
        const full = Buffer.allocUnsafe(vBlockSizeBytes)
        await this.readParent(vb * vBlockSizeBytes, full)
        data.copy(full, off)
        // the parent's bytes come as plaintext: an encrypted clone stores them under its own key
        touched.add(await this.asStored(full, vb, 0, (stored) => this.allocate(vb, 0, stored)))
        return
      }
      const a = alignDown(off)
      const b = alignUp(off + data.length)
      let buf = data
      if (a !== off || b !== off + data.length) {
        // Unaligned: read the edge blocks (verified), merge, write whole blocks.
        buf = Buffer.alloc(b - a)
        if (ref) {
          const eg = this.egroupOf(ref)
          try {
            await this.readReplicas(eg, vb, ref.slot, a, checksumBlockSizeBytes, buf, 0)
            if (b - a > checksumBlockSizeBytes) await this.readReplicas(eg, vb, ref.slot, b - checksumBlockSizeBytes, checksumBlockSizeBytes, buf, b - a - checksumBlockSizeBytes)
          } catch (e) {
            throw this.ioError(e)
          }
          // the edges are merged as plaintext: the middle blocks are overwritten whole below
          this.backend.cipher?.decryptInPlace(buf.subarray(0, checksumBlockSizeBytes), blockNumber(vb, a))
          if (b - a > checksumBlockSizeBytes) this.backend.cipher?.decryptInPlace(buf.subarray(b - a - checksumBlockSizeBytes), blockNumber(vb, b - checksumBlockSizeBytes))
        }
        data.copy(buf, off - a)
      }
      await this.asStored(buf, vb, a, async (stored) => {
        if (ref && !this.history.frozen(ref)) {
          const eg = this.egroupOf(ref)
          await this.onAllReplicas(eg, 'write', vb, (r) => r.write(ref.slot, a, stored))
          touched.add(eg)
        } else {
          // a new extent; for one a snapshot sees, a copy of it with the write laid over it
          touched.add(await this.allocate(vb, a, stored, ref))
        }
      })
    } finally {
      release()
    }
  }

  /**
   * `fn` with `plain` as the replicas store it at byte `off` of vBlock `vb`: an encrypted vDisk's
   * ciphertext (a pooled block, given back once `fn` is done), else `plain` itself.
   */
  private async asStored<T>(plain: Buffer, vb: number, off: number, fn: (stored: Buffer) => Promise<T>): Promise<T> {
    const sealed = this.backend.cipher?.encryptPooled(plain, blockNumber(vb, off))
    try {
      return await fn(sealed?.data ?? plain)
    } finally {
      sealed?.done()
    }
  }

  /**
   * Called with the vBlock's write lock held. `replacing`: the vBlock's extent, which a snapshot
   * sees (copy-on-write): the new extent gets its bytes as stored (an encrypted vDisk's
   * ciphertext: the tweak is the block's place in the vDisk, the same in both) with `buf` laid
   * over them, and the old one becomes a history entry, in etcd before the new one can be.
   */
  private async allocate(vb: number, off: number, buf: Buffer, replacing?: ExtentRef, epoch = this.history.epoch): Promise<LoadedEgroup> {
    let data = buf
    let at = off
    // (a write of the whole extent needs nothing of the old one)
    if (replacing !== undefined && buf.length < vBlockSizeBytes) {
      data = Buffer.allocUnsafe(vBlockSizeBytes)
      try {
        await this.readReplicas(this.egroupOf(replacing), vb, replacing.slot, 0, vBlockSizeBytes, data, 0)
      } catch (e) {
        throw this.ioError(e)
      }
      buf.copy(data, off)
      at = 0
    }
    if (replacing !== undefined) await this.retire(vb, replacing)
    const { eg, ref } = await this.newExtent(vb, at, data, epoch)
    // the vBlock's write lock is held: nothing else can have given it an extent meanwhile
    assert(this.map.get(vb) === replacing, `vBlock ${vb} of vDisk ${this.name} is allocated once`)
    this.map.set(vb, ref)
    this.pendingMap.set(vb, ref)
    if (this.pendingMap.size >= pendingAllocationsMax && !this.backgroundFlush) {
      // a client that never flushes: bound the backlog (memory, and the work of the next flush)
      this.backgroundFlush = this.flush()
        .catch((e: unknown) => this.backend.log.warn(`vDisk ${this.name}: background flush of ${pendingAllocationsMax} pending allocations failed (the next flush retries): ${errorMessage(e)}`))
        .finally(() => { this.backgroundFlush = undefined })
    }
    return eg
  }

  /** A free slot with `data` written at `at` (of epoch `epoch`), in use from now on; no entry names it yet. */
  private async newExtent(vb: number, at: number, data: Buffer, epoch: number): Promise<{ eg: LoadedEgroup, ref: ExtentRef }> {
    const { eg, slot } = await this.takeSlot()
    try {
      await this.onAllReplicas(eg, 'write', vb, (r) => r.write(slot, at, data))
    } catch (e) {
      // The slot may hold part of the data on some replica: reset it before reuse (or, if that
      // fails, the next load resets it, as no map entry names it).
      void this.resetSlot(eg, slot).then(() => eg.freeSlots.push(slot), () => undefined)
      throw this.ioError(e)
    }
    // a free slot is never one an entry names (two vBlocks in one slot would mix their data)
    assert(!eg.usedSlots.has(slot), `slot ${slot} of extent group ${eg.id} is not in use when taken`)
    eg.usedSlots.add(slot)
    return { eg, ref: epoch > 0 ? { egroupId: eg.id, slot, e: epoch } : { egroupId: eg.id, slot } }
  }

  private async resetSlot(eg: LoadedEgroup, slot: number): Promise<void> {
    const release = await eg.lock.read(0)
    try {
      await Promise.all(eg.replicas.map((r) => r.freeSlot(slot)))
    } finally {
      release()
    }
  }

  /** Start making `count` new extent groups (one batch). */
  private startCreating(count: number): Promise<LoadedEgroup[]> {
    this.creatingGroups += count
    const p: Promise<LoadedEgroup[]> = this.backend.newEgroups(count).then((egs) => {
      assert(egs.length === count, `a batch of ${count} new extent groups has ${count}`)
      for (const eg of egs) {
        assert(eg.freeSlots.length === extentsPerEgroup, 'new egroup is empty')
        this.egroups.set(eg.id, eg)
      }
      return egs
    }).finally(() => {
      this.creating.delete(p)
      this.creatingGroups -= count
    })
    this.creating.add(p)
    return p
  }

  /**
   * Make the next extent groups in the background when few free slots are left: when the free
   * slots (with those being made) fall below what this vDisk keeps ahead, one batch of up to
   * aheadDepth groups.
   */
  private precreate(): void {
    if (this.closedReason) return
    let free = 0
    let taken = 0
    for (const eg of this.egroups.values()) {
      if (eg.replicas.length > 0) free += eg.freeSlots.length
      taken += extentsPerEgroup - eg.freeSlots.length
    }
    const wanted = egroupPrecreateFreeSlotsMin + (this.aheadDepth - 1) * extentsPerEgroup
    // never more slots than the vDisk has vBlocks not yet given a slot (allocations in flight
    // count): a small vDisk holds no groups it could never fill
    const unallocated = Math.ceil(this.sizeBytes / vBlockSizeBytes) - taken
    const ahead = free + this.creatingGroups * extentsPerEgroup
    if (this.creatingGroups >= this.aheadDepth || ahead >= Math.min(wanted, unallocated)) return
    // enough to reach a full aheadDepth of groups past the threshold, within what is unallocated
    const upTo = Math.min(wanted + (this.aheadDepth - 1) * extentsPerEgroup, unallocated)
    const count = Math.max(1, Math.min(this.aheadDepth - this.creatingGroups, Math.ceil((upTo - ahead) / extentsPerEgroup)))
    this.startCreating(count).catch((e: unknown) => {
      this.backend.log.warn(`vDisk ${this.name}: cannot make ${count} extent group(s) ahead of need (retried when one is needed): ${errorMessage(e)}`)
    })
  }

  private async takeSlot(): Promise<{ eg: LoadedEgroup, slot: number }> {
    for (;;) {
      for (const eg of this.egroups.values()) {
        if (eg.replicas.length > 0 && eg.freeSlots.length > 0) {
          const slot = eg.freeSlots.shift()!
          assert(slot >= 0 && slot < extentsPerEgroup, `a free slot of extent group ${eg.id} is within it`)
          this.precreate()
          return { eg, slot }
        }
      }
      try {
        this.allocationWaits++
        if (this.creating.size > 0) {
          // the groups made ahead were not ready in time: make more at once from now on
          this.aheadDepth = Math.min(egroupCreatesAheadMax, this.aheadDepth * 2)
          await Promise.race(this.creating)
        } else {
          await this.startCreating(1)
        }
      } catch (e) {
        this.backend.log.error(`vDisk ${this.name}: cannot create an extent group: ${errorMessage(e)}`)
        // the backend's errno says why (EIO: too few healthy nodes; ENOSPC: disks full)
        throw e instanceof DeviceError ? e : new DeviceError(nbdErrno.EIO, `cannot create an extent group: ${errorMessage(e)}`)
      }
    }
  }

  private async freeExtent(vb: number): Promise<void> {
    const ref = this.map.get(vb)
    if (!ref) return
    const eg = this.egroupOf(ref)
    // an extent a snapshot sees stays: it becomes (or is already) a history entry
    const kept = this.history.frozen(ref)
    await this.retire(vb, ref)
    try {
      // an allocation never handed to etcd has nothing there to delete
      if (this.pendingMap.get(vb) === ref && !this.mapUnsure.has(vb)) {
        this.pendingMap.delete(vb)
      } else {
        // out of the pending set before the delete is queued: a flush from now on must not put
        // the entry back after it
        if (this.pendingMap.get(vb) === ref) this.pendingMap.delete(vb)
        await this.backend.mapWriter.delete(this.backend.mapKey(vb))
        this.mapUnsure.delete(vb)
      }
    } catch (e) {
      // The delete may have applied (an answer lost): the extent stays mapped here, so the next
      // flush puts its entry again, whatever etcd holds now.
      this.mapUnsure.add(vb)
      if (!this.pendingMap.has(vb)) this.pendingMap.set(vb, ref)
      this.backend.log.error(`vDisk ${this.name}: cannot remove extent of vBlock ${vb} from etcd: ${errorMessage(e)}`)
      throw new DeviceError(nbdErrno.EIO, 'cannot free the extent')
    }
    this.map.delete(vb)
    if (kept) return
    await this.freeSlot(eg, vb, ref.slot)
  }

  /** Give a slot no entry names back to its extent group. */
  private async freeSlot(eg: LoadedEgroup, vb: number, slot: number): Promise<void> {
    const ref = { slot }
    eg.usedSlots.delete(ref.slot)
    try {
      await this.onAllReplicas(eg, 'free', vb, (r) => r.freeSlot(ref.slot))
      assert(!eg.freeSlots.includes(ref.slot), `slot ${ref.slot} of extent group ${eg.id} is freed once`)
      eg.freeSlots.push(ref.slot)
    } catch (e) {
      // The slot stays out of the free list; the next load resets it (no map entry names it).
      this.backend.log.error(`vDisk ${this.name}: cannot reset slot ${ref.slot} of extent group ${eg.id}: ${errorMessage(e)}`)
    }
  }

  async trim(offset: number, length: number): Promise<void> {
    this.activity.ops++
    this.check()
    while (this.gate !== undefined) await this.gate
    this.writers++
    try {
      await this.trimIn(offset, length)
    } finally {
      this.leave()
    }
  }

  private async trimIn(offset: number, length: number): Promise<void> {
    await Promise.all([...this.pieces(offset, length)].map(async (p) => {
      // a clone's vBlock without an extent reads its parent's bytes: it gets zeros of its own
      if (this.parentReader !== undefined) return this.zeroPiece(p.vb, p.off, p.len)
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
    const touched = new Set<LoadedEgroup>()
    if (innerA < innerB) {
      let copy = false
      const release = await this.locks.write(vb)
      try {
        const ref = this.map.get(vb)
        // an extent a snapshot sees is not cleared in place: zeros are written into its copy
        if ((ref && this.history.frozen(ref)) || (!ref && this.parentReader !== undefined)) copy = true
        else if (ref) {
          const eg = this.egroupOf(ref)
          await this.onAllReplicas(eg, 'clear', vb, (r) => r.clear(ref.slot, innerA, innerB - innerA))
        }
      } finally {
        release()
      }
      if (copy) await this.writePiece(vb, innerA, zeroExtent.subarray(0, innerB - innerA), touched)
    }
    if (innerA > innerB) {
      // the whole range is inside one block
      await this.writePiece(vb, off, zeroExtent.subarray(0, len), touched)
      return
    }
    if (off < innerA) await this.writePiece(vb, off, zeroExtent.subarray(0, innerA - off), touched)
    if (innerB < off + len) await this.writePiece(vb, innerB, zeroExtent.subarray(0, off + len - innerB), touched)
  }

  async writeZeroes(offset: number, length: number, noHole: boolean, fua: boolean): Promise<void> {
    this.activity.ops++
    this.check()
    while (this.gate !== undefined) await this.gate
    this.writers++
    try {
      await this.writeZeroesIn(offset, length, noHole, fua)
    } finally {
      this.leave()
    }
  }

  private async writeZeroesIn(offset: number, length: number, noHole: boolean, fua: boolean): Promise<void> {
    if (!noHole) {
      await this.trimIn(offset, length)
      if (fua) await this.flush()
      return
    }
    const touched = new Set<LoadedEgroup>()
    for (const p of this.pieces(offset, length)) {
      await this.writePiece(p.vb, p.off, zeroExtent.subarray(0, p.len), touched)
    }
    if (fua) await this.syncEgroups(touched)
  }

  /**
   * Move every replica held by `node` to another node (host removal): each extent group is copied
   * from a healthy replica, recorded, and the old copy deleted. Returns the extent groups moved.
   */
  async evacuate(node: string, progress: (done: number, total: number) => void = () => undefined): Promise<number> {
    this.check()
    const todo = [...this.egroups.values()].filter((eg) => eg.replicas.some((r) => r.node === node))
    let done = 0
    for (const eg of todo) {
      const old = eg.replicas.filter((r) => r.node === node)
      await this.backend.replaceFailed(eg, old, new Error(`evacuating node ${node}`), { evacuate: true })
      for (const r of old) {
        await r.delete().catch((e: unknown) => this.backend.log.warn(`vDisk ${this.name}: evacuated replica of extent group ${eg.id} on ${node} stays (removed when the node is cleaned): ${errorMessage(e)}`))
      }
      progress(++done, todo.length)
    }
    return done
  }

  /**
   * The curator's balancing: each replica in `moves` is copied to its new disk under its group's
   * lock, the group's record names the new place, and the old file is deleted. A move whose group
   * or replica is no longer there (a change since the plan), whose target node holds another
   * replica of the group, or that `takes` refuses now (a node draining) is skipped, and so is one
   * that fails (logged). `pace(bytes)` between groups, as for the repair.
   */
  async move(moves: ReplicaMove[], pace?: (bytes: number) => Promise<void>, takes: (node: string) => boolean = () => true): Promise<{ egroups: number, bytes: number, skipped: number }> {
    this.check()
    const out = { egroups: 0, bytes: 0, skipped: 0 }
    for (const m of moves) {
      const eg = this.egroups.get(m.egroupId)
      const r = eg?.replicas.find((x) => x.node === m.from.node && x.diskId === m.from.diskId)
      if (eg === undefined || r === undefined || !movable(eg, r, m.to) || !takes(m.to.node)) {
        out.skipped++
        continue
      }
      try {
        await this.backend.replaceFailed(eg, [r], new Error(`moved to ${m.to.node} disk ${m.to.diskId} to balance the disks`), { evacuate: true, target: m.to })
      } catch (e) {
        // the group keeps its replicas (a copy left half-made is garbage the collection removes)
        this.backend.log.warn(`vDisk ${this.name}: move of extent group ${eg.id} from ${m.from.node} disk ${m.from.diskId} to ${m.to.node} disk ${m.to.diskId} failed: ${errorMessage(e)}`)
      }
      if (eg.replicas.includes(r)) {
        out.skipped++
        continue
      }
      await r.delete().catch((e: unknown) => this.backend.log.warn(`vDisk ${this.name}: moved replica of extent group ${eg.id} on ${r.node} disk ${r.diskId} stays until the garbage collection removes it: ${errorMessage(e)}`))
      out.egroups++
      const copied = eg.usedSlots.size * vBlockSizeBytes
      out.bytes += copied
      await pace?.(copied)
    }
    return out
  }

  /**
   * The curator's repair: every extent group with a replica on one of the `down` nodes, or with
   * fewer than RF replicas (it went on degraded), gets copies from its healthy replicas on nodes
   * that hold none, until it has RF again. Client I/O goes on meanwhile (each group is locked only
   * while it is copied); `pace(bytes)` after each group holds the repair to its rate.
   * Returns the groups repaired and the bytes of the extents they hold.
   */
  async repair(down: ReadonlySet<string>, pace?: (bytes: number) => Promise<void>, lostDisks: ReadonlySet<string> = new Set()): Promise<{ egroups: number, bytes: number }> {
    this.check()
    let egroups = 0
    let bytes = 0
    const all = [...this.egroups.values()]
    let next = 0
    let failure: { e: unknown } | undefined
    // Several groups at once: one group's copy goes on while another's target syncs and its
    // record is written (one group at a time left the disks idle for both).
    const worker = async () => {
      while (failure === undefined && next < all.length) {
        const eg = all[next++]!
        const failed = eg.replicas.filter((r) => down.has(r.node) || lostDisks.has(r.diskId))
        if (failed.length === 0 && eg.replicas.length >= (this.backend.rf ?? 0)) continue
        const onNodes = [...new Set(failed.filter((r) => down.has(r.node)).map((r) => r.node))]
        const onDisks = [...new Set(failed.filter((r) => !down.has(r.node)).map((r) => `${r.node}:${r.diskId}`))]
        const why = [...(onNodes.length > 0 ? [`node ${onNodes.join(', ')} down`] : []), ...(onDisks.length > 0 ? [`disk ${onDisks.join(', ')} offline`] : [])].join('; ') || 'fewer than RF copies'
        try {
          await this.backend.replaceFailed(eg, failed, new Error(why), { repair: true })
        } catch (e) {
          failure ??= { e } // the other workers stop at their next group; the first failure is the repair's
          return
        }
        egroups++
        const copied = eg.usedSlots.size * vBlockSizeBytes
        bytes += copied
        // between groups, outside the group's lock: its writes never wait for the pace
        await pace?.(copied)
      }
    }
    await Promise.all(Array.from({ length: repairEgroupsInFlightMax }, worker))
    if (failure !== undefined) throw failure.e
    return { egroups, bytes }
  }

  /**
   * The curator's scrub: every extent in use is read from every replica, each 4 KiB block checked
   * against its checksum by the replica that holds it; a block whose checksum does not match is
   * rewritten (and synced) with the bytes of a replica whose copy is good. `pace(bytes)` waits as
   * long as the scrub's rate asks. Client I/O goes on: each extent is locked as a read is, only
   * while it is checked. A replica that cannot be read (its node down) is counted, not repaired:
   * that is the repair's job.
   */
  async scrub(pace: (bytes: number) => Promise<void> = async () => undefined): Promise<ScrubResult> {
    this.check()
    const out: ScrubResult = { extents: 0, bytesChecked: 0, badBlocks: 0, repairedBlocks: 0, unreadable: 0 }
    // the live extents, and those only snapshots see (history entries)
    const all: Array<[number, ExtentRef]> = [...this.map]
    for (const [vb, list] of this.history.entries) for (const h of list) all.push([vb, h.ref])
    for (const [vb, ref] of all) {
      this.check()
      const eg = this.egroups.get(ref.egroupId)
      if (eg === undefined) continue
      let bytes = 0
      const release = await this.locks.read(vb)
      try {
        if (!this.names(vb, ref)) continue // freed or moved meanwhile
        const egRelease = await eg.lock.read(0)
        try {
          let good: Buffer | undefined
          const bad: Replica[] = []
          for (const r of eg.replicas) {
            const b = Buffer.allocUnsafe(vBlockSizeBytes)
            try {
              await r.read(ref.slot, 0, vBlockSizeBytes, b, 0)
              good ??= b
            } catch (e) {
              if (isChecksumFailure(e)) bad.push(r)
              else out.unreadable++
            }
            bytes += vBlockSizeBytes
          }
          for (const r of bad) {
            // block by block: only the blocks whose checksum fails are rewritten
            const block = Buffer.allocUnsafe(checksumBlockSizeBytes)
            for (let off = 0; off < vBlockSizeBytes; off += checksumBlockSizeBytes) {
              try {
                await r.read(ref.slot, off, checksumBlockSizeBytes, block, 0)
                continue
              } catch (e) {
                if (!isChecksumFailure(e)) break
              }
              out.badBlocks++
              this.backend.log.error(`vDisk ${this.name} vBlock ${vb}: scrub found a bad copy of block ${off / checksumBlockSizeBytes} in extent group ${eg.id} on ${r.node} disk ${r.diskId}${good !== undefined ? '; rewriting it from a good copy' : ' and no good copy'}`)
              if (good === undefined) continue
              try {
                await r.write(ref.slot, off, good.subarray(off, off + checksumBlockSizeBytes))
                out.repairedBlocks++
              } catch (e) {
                this.backend.log.error(`vDisk ${this.name}: repair of extent group ${eg.id} on ${r.node} failed: ${errorMessage(e)}`)
              }
            }
            await r.sync().catch((e: unknown) => this.backend.log.error(`vDisk ${this.name}: sync of the repaired extent group ${eg.id} on ${r.node} failed: ${errorMessage(e)}`))
          }
        } finally {
          egRelease()
        }
      } finally {
        release()
      }
      out.extents++
      out.bytesChecked += bytes
      await pace(bytes)
    }
    return out
  }

  // ---- snapshots (history.ts) ----

  /** is `ref` still an extent of vBlock `vb`: its live one, or one a history entry names? */
  private names(vb: number, ref: ExtentRef): boolean {
    const same = (r: ExtentRef | undefined) => r !== undefined && r.egroupId === ref.egroupId && r.slot === ref.slot
    return same(this.map.get(vb)) || (this.history.entries.get(vb)?.some((h) => same(h.ref)) ?? false)
  }

  /**
   * The extent `old` of vBlock `vb` stops being its live extent: if a snapshot sees it, it becomes
   * a history entry, durably in etcd before this returns (a crash later finds it named there).
   */
  private async retire(vb: number, old: ExtentRef): Promise<void> {
    if (!this.history.seen(old)) return
    const h = { ref: old, e: old.e ?? 0, u: this.history.epoch }
    const key = this.backend.histKey
    assert(key !== undefined, 'a vDisk with snapshots has history keys')
    try {
      await this.backend.mapWriter.put(key(vb, h.e), histValue(h))
    } catch (e) {
      this.backend.log.error(`vDisk ${this.name}: cannot record the extent of vBlock ${vb} that a snapshot keeps: ${errorMessage(e)}`)
      throw new DeviceError(nbdErrno.EIO, 'cannot record the extent a snapshot keeps')
    }
    this.history.add(vb, h)
  }

  /** the snapshots' names and epochs */
  get snapshots(): ReadonlyMap<string, number> {
    return this.snapshotEpochs
  }

  /**
   * Take a snapshot: writes wait, the ones in progress end, everything written is made durable
   * (flush), then the current epoch is frozen and `persist(epoch)` records the snapshot; writes go
   * on in the next epoch. Crash-consistent: it holds every write completed before the call.
   */
  async snapshot(name: string, persist: (epoch: number) => Promise<void>): Promise<number> {
    return this.quiesced(async () => {
      const epoch = this.history.epoch
      this.history.addSnapshot(epoch)
      try {
        await persist(epoch)
      } catch (e) {
        this.history.removeSnapshot(epoch)
        throw e
      }
      this.snapshotEpochs.set(name, epoch)
      return epoch
    })
  }

  /** Run `fn` with writes held back: the ones in progress ended and everything written flushed. */
  private async quiesced<T>(fn: () => Promise<T>): Promise<T> {
    this.check()
    while (this.gate !== undefined) await this.gate
    let open = (): void => undefined
    this.gate = new Promise<void>((resolve) => { open = resolve })
    try {
      if (this.writers > 0) await new Promise<void>((resolve) => { this.drained = resolve })
      this.drained = undefined
      await this.flush()
      return await fn()
    } finally {
      this.gate = undefined
      open()
    }
  }

  /**
   * Roll the vDisk back to snapshot `name`: every vBlock whose extent is not the one the snapshot
   * sees gets it back (as a write in the current epoch would: the extent it had becomes a history
   * entry if a snapshot sees it, or is freed). Writes wait meanwhile; the new entries are in etcd
   * when this returns. Snapshots stay as they were (those taken after `name` too). Returns the
   * vBlocks changed.
   */
  async restore(name: string): Promise<{ changedExtents: number }> {
    return this.quiesced(async () => {
      const epoch = this.snapshotEpochs.get(name)
      if (epoch === undefined) throw new DeviceError(nbdErrno.EINVAL, `vDisk ${this.name} has no snapshot ${name}`)
      const view = this.viewOf(epoch)
      const vbs = [...new Set([...this.map.keys(), ...view.keys()])]
      let changedExtents = 0
      for (let i = 0; i < vbs.length; i += historyPruneBatch) {
        const changed = await Promise.all(vbs.slice(i, i + historyPruneBatch).map((vb) => this.restoreVblock(vb, view.get(vb))))
        changedExtents += changed.filter(Boolean).length
      }
      return { changedExtents }
    })
  }

  /** vBlock `vb` gets extent `to` (none: unmapped) back; true when it changed. */
  private async restoreVblock(vb: number, to: ExtentRef | undefined): Promise<boolean> {
    const release = await this.locks.write(vb)
    try {
      const now = this.map.get(vb)
      if (now === to || (now !== undefined && to !== undefined && now.egroupId === to.egroupId && now.slot === to.slot)) return false
      // the extent it has now: a history entry if a snapshot sees it, else freed (as a trim)
      if (now !== undefined) await this.freeExtent(vb)
      if (to === undefined) return true
      // named again by the live map, from this epoch on; a history entry names it too (the
      // snapshot's), so it is copied on the next write, never changed in place
      const ref: ExtentRef = { egroupId: to.egroupId, slot: to.slot, e: this.history.epoch }
      try {
        await this.backend.mapWriter.put(this.backend.mapKey(vb), mapValue(ref))
      } catch (e) {
        this.backend.log.error(`vDisk ${this.name}: cannot record the restored extent of vBlock ${vb}: ${errorMessage(e)}`)
        throw new DeviceError(nbdErrno.EIO, 'cannot record the restored extent')
      }
      this.map.set(vb, ref)
      return true
    } finally {
      release()
    }
  }

  /** Delete a snapshot: `persist()` removes its record, then the extents only it saw are freed. */
  async deleteSnapshot(name: string, persist: () => Promise<void>): Promise<{ extentsFreed: number }> {
    this.check()
    const epoch = this.snapshotEpochs.get(name)
    if (epoch === undefined) return { extentsFreed: 0 }
    await persist()
    this.snapshotEpochs.delete(name)
    this.history.removeSnapshot(epoch)
    this.views.delete(epoch)
    return this.pruneHistory()
  }

  /**
   * Drop the history entries no snapshot sees (after a snapshot's delete, or left by a crash) and
   * free their extents unless another entry names them.
   */
  async pruneHistory(): Promise<{ extentsFreed: number }> {
    let extentsFreed = 0
    const unneeded = this.history.unneeded()
    // a batch at once: their etcd deletes go out together (MapWriter)
    for (let i = 0; i < unneeded.length; i += historyPruneBatch) {
      const freed = await Promise.all(unneeded.slice(i, i + historyPruneBatch).map(([vb, h]) => this.dropHistoryEntry(vb, h)))
      extentsFreed += freed.filter(Boolean).length
    }
    return { extentsFreed }
  }

  /** One history entry no snapshot sees: gone from etcd, then its extent freed unless named elsewhere. True when freed. */
  private async dropHistoryEntry(vb: number, h: HistEntry): Promise<boolean> {
    const key = this.backend.histKey
    assert(key !== undefined, 'a vDisk with history has history keys')
    const release = await this.locks.write(vb)
    try {
      if (this.history.needed(h) || this.history.entries.get(vb)?.includes(h) !== true) return false
      await this.backend.mapWriter.delete(key(vb, h.e))
      this.history.remove(vb, h)
      const live = this.map.get(vb)
      if (this.history.shares(h.ref) || (live !== undefined && live.egroupId === h.ref.egroupId && live.slot === h.ref.slot)) return false
      const eg = this.egroups.get(h.ref.egroupId)
      if (eg === undefined) return false
      await this.freeSlot(eg, vb, h.ref.slot)
      return true
    } finally {
      release()
    }
  }

  private viewOf(epoch: number): Map<number, ExtentRef> {
    let v = this.views.get(epoch)
    if (v === undefined) this.views.set(epoch, v = this.history.view(epoch, this.map))
    return v
  }

  /** Read from the parent (a clone's): an error is the client's EIO (the parent's owner logged why). */
  private async readParent(offset: number, out: Buffer): Promise<void> {
    const n = Math.max(0, Math.min(out.length, this.sizeBytes - offset))
    try {
      await this.parentReader!(offset, out.subarray(0, n))
    } catch (e) {
      this.backend.log.error(`vDisk ${this.name}: read of its parent at ${offset} failed: ${errorMessage(e)}`)
      throw e instanceof DeviceError ? e : new DeviceError(nbdErrno.EIO, 'the parent could not be read')
    }
    out.fill(0, n)
  }

  /**
   * Make a clone stand alone: every vBlock it has not written gets a copy of its parent's extent
   * (none where the parent reads zeros), then a flush makes them durable. The caller drops the
   * parent reference after. Writes go on meanwhile. Returns the extents copied. The copies are of
   * epoch 0: a snapshot of the clone taken before sees them where it read through to the parent
   * (the same bytes), and a history entry still wins where it had an extent of its own.
   */
  async flatten(): Promise<{ copiedExtents: number }> {
    this.check()
    let copiedExtents = 0
    const vblocks = Math.ceil(this.sizeBytes / vBlockSizeBytes)
    const older: Array<{ vb: number, ref: ExtentRef, gaps: Array<[number, number]> }> = []
    for (let vb = 0; vb < vblocks && this.parentReader !== undefined; vb++) {
      if (this.map.has(vb) && !this.history.entries.has(vb) && this.history.snapEpoch < 0) continue
      const release = await this.locks.write(vb)
      try {
        const gaps = this.parentGaps(vb)
        if (gaps.length === 0) continue
        const full = Buffer.allocUnsafe(vBlockSizeBytes)
        await this.readParent(vb * vBlockSizeBytes, full)
        if (full.equals(zeroExtent)) continue // no extent reads as zeros too
        const live = gaps.find(([, until]) => until === Infinity)
        // plaintext from the parent: an encrypted clone stores it under its own key
        const ref = await this.asStored(full, vb, 0, async (stored): Promise<ExtentRef> => {
          if (live === undefined) return (await this.newExtent(vb, 0, stored, 0)).ref
          // the live map's entry, of the epoch it starts reading the copy in
          await this.allocate(vb, 0, stored, undefined, live[0])
          return this.map.get(vb)!
        })
        copiedExtents++
        const past = gaps.filter(([, until]) => until !== Infinity)
        if (past.length > 0) older.push({ vb, ref, gaps: past })
      } finally {
        release()
      }
    }
    await this.flush()
    // the snapshots that read through to the parent where the vDisk has an extent now: history
    // entries name the copies for their epochs (the copies are synced by the flush above)
    const key = this.backend.histKey
    for (const { vb, ref, gaps } of older) {
      assert(key !== undefined, 'a vDisk with snapshots has history keys')
      for (const [from, until] of gaps) {
        const h = { ref: { egroupId: ref.egroupId, slot: ref.slot, ...(from > 0 ? { e: from } : {}) }, e: from, u: until }
        await this.backend.mapWriter.put(key(vb, from), histValue(h))
        this.history.add(vb, h)
      }
    }
    // what the snapshots see is made again from the entries: where a view had no extent (its
    // parent's bytes), it has the copy now
    this.views.clear()
    return { copiedExtents }
  }

  /**
   * The epochs in which vBlock `vb` has no extent (it reads its parent) that the live map (the
   * last span, up to Infinity) or a snapshot reads: [from, until) each.
   */
  private parentGaps(vb: number): Array<[number, number]> {
    const spans = (this.history.entries.get(vb) ?? []).map((h): [number, number] => [h.e, h.u])
    const live = this.map.get(vb)
    if (live !== undefined) spans.push([live.e ?? 0, Infinity])
    spans.sort((a, b) => a[0] - b[0])
    const gaps: Array<[number, number]> = []
    let t = 0
    for (const [from, until] of spans) {
      if (from > t) gaps.push([t, from])
      t = Math.max(t, until)
    }
    if (t !== Infinity) gaps.push([t, Infinity])
    return gaps.filter(([from, until]) => until === Infinity || this.history.snapshotEpochs.some((s) => from <= s && s < until))
  }

  /** Read from the snapshot `name` (as it was when taken). */
  async readSnapshotInto(name: string, offset: number, out: Buffer): Promise<void> {
    this.activity.ops++
    this.check()
    const epoch = this.snapshotEpochs.get(name)
    if (epoch === undefined) throw new DeviceError(nbdErrno.ESHUTDOWN, `snapshot ${this.name}@${name} was deleted`)
    await Promise.all([...this.pieces(offset, out.length)].map(async (p) => {
      const release = await this.locks.read(p.vb)
      try {
        // its extents are freed only under the vBlock's write lock, after it is gone
        if (this.snapshotEpochs.get(name) !== epoch) throw new DeviceError(nbdErrno.ESHUTDOWN, `snapshot ${this.name}@${name} was deleted`)
        await this.readRef(this.viewOf(epoch).get(p.vb), p.vb, p.off, p.len, out, p.pos)
      } finally {
        release()
      }
    }))
  }

  /**
   * Make every completed write durable: sync the extent groups changed since the last flush took
   * them, wait for the syncs earlier flushes started (another connection's flush may have taken
   * the groups this one's writes went to), then commit the allocations.
   */
  async flush(): Promise<void> {
    this.check()
    const pending = [...this.pendingMap]
    const egs = new Set(this.unsynced)
    this.unsynced.clear()
    const earlier = [...this.syncing]
    const mine = this.syncEgroups(egs).catch((e: unknown) => {
      // not synced: the next flush takes them again
      for (const eg of egs) this.unsynced.add(eg)
      throw e
    })
    this.syncing.add(mine)
    try {
      await Promise.all([mine, ...earlier])
    } finally {
      this.syncing.delete(mine)
    }
    await this.commitMap(pending)
    if (this.allocationWaits > 0) {
      this.backend.log.info(`vDisk ${this.name}: ${this.allocationWaits} allocation(s) waited for a new extent group since the last flush (groups made ahead at once: ${this.aheadDepth})`)
      this.allocationWaits = 0
    }
  }

  /** fsync every replica of these egroups (a replica that cannot is replaced, and the new one synced). */
  private async syncEgroups(egs: Set<LoadedEgroup>): Promise<void> {
    try {
      await Promise.all([...egs].map((eg) => this.onAllReplicas(eg, 'flush', -1, (r) => r.sync())))
    } catch (e) {
      this.backend.log.error(`vDisk ${this.name}: flush failed: ${errorMessage(e)}`)
      throw new DeviceError(nbdErrno.EIO, 'flush failed')
    }
  }
}
