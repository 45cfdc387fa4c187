import type { PeerPool } from '../replication/client.js'
import { PeerError, ops } from '../replication/protocol.js'
import { egroupPullTimeoutMs } from '../../lib/limits.js'
import { assert } from '../../lib/errors.js'
import { ChecksumError, type RawSlot } from './egroup.js'
import { NotOpenError, type ReplicaStore } from './replicastore.js'

/**
 * One replica of one extent group, local or on another node. The owner's vDisk writes to every
 * replica of an extent group in parallel and reads from one (local first).
 */
export interface Replica {
  readonly node: string
  readonly diskId: string
  readonly local: boolean
  /** believed unreachable right now: readers try the others first */
  suspect(): boolean
  /** open (and recover) the replica, given the slots the block map uses */
  open(inUse: number[]): Promise<void>
  read(slot: number, offset: number, length: number, out: Buffer, outOffset: number): Promise<void>
  /**
   * Optional: read() done on the calling thread when it needs no waiting (a local file open, the
   * range in the page cache, every checksum good): true when `out` holds the range; false when
   * read() must be used (and then reports whatever went wrong).
   */
  readIfCached?(slot: number, offset: number, length: number, out: Buffer, outOffset: number): boolean
  write(slot: number, offset: number, data: Buffer): Promise<void>
  /** Optional: write() done on the calling thread when it needs no waiting; false (nothing written) when write() must do it */
  writeIfQuick?(slot: number, offset: number, data: Buffer): boolean
  clear(slot: number, offset: number, length: number): Promise<void>
  freeSlot(slot: number): Promise<void>
  sync(): Promise<void>
  readRaw(slot: number): Promise<RawSlot | undefined>
  /** store a slot copied from another replica (`version`: the source's format, i.e. its checksum) */
  writeRaw(slot: number, raw: RawSlot): Promise<void>
  /**
   * Remove the replica. `recycle`: its file may become a spare extent group (spares.ts) with its
   * data region as it is: only for an encrypted vDisk's groups, whose ciphertext is useless once
   * the vDisk's key is gone; a plain vDisk's data never outlives it in a file.
   */
  delete(opts?: { recycle?: boolean }): Promise<void>
}

export function isChecksumFailure(e: unknown): boolean {
  return e instanceof ChecksumError || (e instanceof PeerError && e.kind === 'checksum')
}

export class LocalReplica implements Replica {
  readonly local = true

  suspect(): boolean {
    return false
  }

  constructor(readonly node: string, readonly diskId: string, private readonly egid: string, private readonly vdiskId: string, private readonly store: ReplicaStore) {}

  open(inUse: number[]): Promise<void> {
    return this.store.openEgroup(this.egid, this.diskId, inUse, this.vdiskId, inUse.length === 0)
  }

  async read(slot: number, offset: number, length: number, out: Buffer, outOffset: number): Promise<void> {
    await (await this.store.get(this.egid, this.diskId)).read(slot, offset, length, out, outOffset)
  }

  readIfCached(slot: number, offset: number, length: number, out: Buffer, outOffset: number): boolean {
    const f = this.store.peek(this.egid, this.diskId)
    return f !== undefined && f.readIfCached(slot, offset, length, out, outOffset)
  }

  async write(slot: number, offset: number, data: Buffer): Promise<void> {
    await (await this.store.get(this.egid, this.diskId)).write(slot, offset, data)
  }

  writeIfQuick(slot: number, offset: number, data: Buffer): boolean {
    const f = this.store.peek(this.egid, this.diskId)
    return f !== undefined && f.writeIfQuick(slot, offset, data)
  }

  async clear(slot: number, offset: number, length: number): Promise<void> {
    await (await this.store.get(this.egid, this.diskId)).clear(slot, offset, length)
  }

  async freeSlot(slot: number): Promise<void> {
    await (await this.store.get(this.egid, this.diskId)).freeSlot(slot)
  }

  async sync(): Promise<void> {
    if (!this.store.isOpen(this.egid, this.diskId)) return
    await (await this.store.get(this.egid, this.diskId)).sync()
  }

  async readRaw(slot: number): Promise<RawSlot | undefined> {
    return (await this.store.get(this.egid, this.diskId)).readRaw(slot)
  }

  async writeRaw(slot: number, raw: RawSlot): Promise<void> {
    await (await this.store.get(this.egid, this.diskId)).writeRaw(slot, raw.entries, raw.data, raw.version)
  }

  delete(opts: { recycle?: boolean } = {}): Promise<void> {
    return this.store.delete(this.egid, this.diskId, opts.recycle === true)
  }
}

/**
 * A replica on another node, reached over the data port. If the peer restarted and lost its open
 * file table it answers 'not-open': the replica re-opens (recovery with the owner's slots) and
 * retries once. Unless changes this replica sent had not been synced when the peer restarted: the
 * peer kept their checksum entries in memory (and a power loss drops their data too), so its copy
 * may lack them. Such a replica fails this and every later operation, and the vDisk replaces it
 * from a healthy copy, instead of trusting (and flushing, and reading) a copy that lost writes.
 */
export class RemoteReplica implements Replica {
  readonly local = false
  private inUse: () => number[] = () => []
  /** changes (writes, clears, raw copies) that have completed, and how many of them a sync covered */
  private changes = 0
  private syncedChanges = 0
  /** why this replica is no longer used, once its peer restarted with changes not synced */
  private lost: string | undefined
  /**
   * The slots in use when the owner opened this replica and could not reach it: the open (with
   * its recovery, which frees the slots an earlier owner left) is done before the first operation
   * that reaches it, with those slots. Until then the peer may hold the group open from an
   * earlier owner, slots and all, and would serve it as it is.
   */
  private openPending: number[] | undefined
  private opening: Promise<void> | undefined

  constructor(readonly node: string, readonly diskId: string, private readonly egid: string, private readonly vdiskId: string, private readonly peers: PeerPool) {}

  private async call(op: (typeof ops)[keyof typeof ops], json: Record<string, unknown>, data?: Buffer, timeoutMs?: number) {
    if (this.lost !== undefined) throw new PeerError('io', this.lost)
    if (this.openPending !== undefined) await this.openLate()
    const peer = this.peers.peek(this.node) ?? await this.peers.get(this.node)
    const params = { egid: this.egid, diskId: this.diskId, vdiskId: this.vdiskId, ...json }
    try {
      return await peer.request(op, params, data, timeoutMs)
    } catch (e) {
      if (e instanceof PeerError && e.kind === 'not-open') {
        // Decided before the re-open, not after it: a re-open whose answer is lost (or that times
        // out after the peer did it) leaves the group open there, and the next call would go
        // through to a copy that lacks the changes.
        if (this.changes !== this.syncedChanges) {
          this.lost = `node ${this.node} restarted before ${this.changes - this.syncedChanges} change(s) to its replica of extent group ${this.egid} were synced: that copy may lack them`
          throw new PeerError('io', this.lost)
        }
        await peer.request(ops.egOpen, { egid: this.egid, diskId: this.diskId, vdiskId: this.vdiskId, inUse: this.inUse(), create: false })
        return peer.request(op, params, data)
      }
      throw e
    }
  }

  /** a change sent to the peer: counted once it ended (a failed one may have applied in part) */
  private async change(op: (typeof ops)[keyof typeof ops], json: Record<string, unknown>, data?: Buffer, timeoutMs?: number): Promise<void> {
    try {
      await this.call(op, json, data, timeoutMs)
    } finally {
      this.changes++
    }
  }

  suspect(): boolean {
    return this.peers.suspect(this.node)
  }

  /** Where to find the slots in use when the peer needs to re-open. */
  setInUse(fn: () => number[]): void {
    this.inUse = fn
  }

  async open(inUse: number[]): Promise<void> {
    try {
      const peer = await this.peers.get(this.node)
      await peer.request(ops.egOpen, { egid: this.egid, diskId: this.diskId, vdiskId: this.vdiskId, inUse, create: inUse.length === 0 })
      this.openPending = undefined
    } catch (e) {
      this.openPending = inUse
      throw e
    }
  }

  /** the open that failed, once (concurrent operations wait for the same one) */
  private openLate(): Promise<void> {
    const inUse = this.openPending
    if (inUse === undefined) return Promise.resolve()
    this.opening ??= (async () => {
      const peer = await this.peers.get(this.node)
      await peer.request(ops.egOpen, { egid: this.egid, diskId: this.diskId, vdiskId: this.vdiskId, inUse, create: inUse.length === 0 })
      this.openPending = undefined
    })().finally(() => { this.opening = undefined })
    return this.opening
  }

  async read(slot: number, offset: number, length: number, out: Buffer, outOffset: number): Promise<void> {
    const f = await this.call(ops.egRead, { slot, offset, length })
    if (f.data.length !== length) throw new PeerError('io', `node ${this.node}: short read (${f.data.length} of ${length} bytes)`)
    f.data.copy(out, outOffset)
  }

  async write(slot: number, offset: number, data: Buffer): Promise<void> {
    await this.change(ops.egWrite, { slot, offset }, data)
  }

  async clear(slot: number, offset: number, length: number): Promise<void> {
    await this.change(ops.egClear, { slot, offset, length })
  }

  async freeSlot(slot: number): Promise<void> {
    await this.change(ops.egFreeSlot, { slot })
  }

  async sync(): Promise<void> {
    // covers the changes that ended before it was sent
    const covered = this.changes
    await this.call(ops.egSync, {})
    if (covered > this.syncedChanges) this.syncedChanges = covered
  }

  async readRaw(slot: number): Promise<RawSlot | undefined> {
    const f = await this.call(ops.egReadRaw, { slot })
    if (f.data.length === 0) return undefined
    const entriesBytes = f.json.entriesBytes as number
    // a peer that does not say is of the first format (CRC-32)
    const version = typeof f.json.version === 'number' ? f.json.version : 1
    return { entries: f.data.subarray(0, entriesBytes), data: f.data.subarray(entriesBytes), version }
  }

  async writeRaw(slot: number, raw: RawSlot): Promise<void> {
    await this.change(ops.egWriteRaw, { slot, entriesBytes: raw.entries.length, version: raw.version }, Buffer.concat([raw.entries, raw.data]))
  }

  /**
   * Copy every slot of `source` (the same group's replica on a third node) that holds data into
   * this replica, node to node: this replica's node reads them from the source's over its own data
   * port connection, so the bytes cross the network once instead of twice through the owner. Only
   * when the owner holds the group's exclusive lock (a replacement): nothing changes it meanwhile.
   * Throws when the peer could not (an older release does not know the op, the source's node
   * does not serve the group now): the peer answers only once its copy stopped, so the caller may
   * then copy through itself, slot by slot, writing the same bytes over whatever this one got to.
   * Without an answer in time (PeerError 'timeout') the peer may still be writing: the caller
   * must not (copySlots in owner.ts fails the replacement instead).
   */
  async pullFrom(source: RemoteReplica): Promise<void> {
    assert(source.node !== this.node, 'a replica pulls from another node')
    await this.change(ops.egPull, { from: { node: source.node, diskId: source.diskId } }, undefined, egroupPullTimeoutMs)
  }

  async delete(opts: { recycle?: boolean } = {}): Promise<void> {
    const peer = await this.peers.get(this.node)
    await peer.request(ops.egDelete, { egid: this.egid, diskId: this.diskId, vdiskId: this.vdiskId, ...(opts.recycle === true ? { recycle: true } : {}) })
  }
}

export { NotOpenError }
