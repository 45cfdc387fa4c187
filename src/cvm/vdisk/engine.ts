import crypto from 'node:crypto'
import type { Etcd3, Lease } from 'etcd3'
import { realClock, type Clock } from '../../lib/clock.js'
import { TessError, errorMessage } from '../../lib/errors.js'
import { IdAllocator, etcdCall, getJson, keepLeaseAlive, keys, listJson, retryTransientEtcd } from '../../lib/etcd.js'
import { leaseRegrantIntervalMs, nbdOpenRetryMs, nodeHeartbeatTtlSec, repairBusyBytesPerSec, repairBusyCheckMs, repairBusyWindowMs } from '../../lib/limits.js'
import type { Logger } from '../../lib/log.js'
import type { DiskRecord, GcFound, NodeRecord, NodeStatusRecord, ReplicaMove, SnapshotOp, SnapshotRecord, VdiskRecord } from '../../lib/types.js'
import { DeviceError, nbdErrno, type BlockDevice, type ExportInfo, type ExportProvider } from '../nbd/device.js'
import type { PeerPool } from '../replication/client.js'
import { PeerError, ops } from '../replication/protocol.js'
import type { PlacementView } from './placement.js'
import type { VdiskIoHandler } from '../replication/server.js'
import type { VdiskDataHooks } from './service.js'
import { BlockCipher, unwrapDataKey } from './crypt.js'
import { EgroupFile } from './egroup.js'
import { realFiles, type FileLayer } from './fileio.js'
import { collectGarbage } from './gc.js'
import { parseHistValue, SnapshotHistory, type HistEntry } from './history.js'
import { MapWriter } from './mapwriter.js'
import { loadLayout, vdiskBackend, type EgroupRecord, type MapValue, type OwnerEnv, type VdiskIdentity } from './owner.js'
import { LocalReplica, RemoteReplica, type Replica } from './replica.js'
import type { ReplicaStore } from './replicastore.js'
import { IoActivity, Vdisk, type ScrubResult } from './vdisk.js'

export interface EvacuationProgress {
  egroupsMoved: number
  egroupsTotal: number
  /** the vDisk being worked on */
  vdisk: string | null
}

export type { EgroupRecord } from './owner.js'

/** How long a forwarder waits for a dead owner's lease to expire before giving up (lease TTL + margin). */
export const ownerFailoverWaitMs = (nodeHeartbeatTtlSec + 8) * 1000
/** an owner hands a vDisk over only when no forwarded I/O came for this long */
const handoverIdleMs = 3000
const openRetryIntervalMs = 250
/** a stopping CVM waits this long for each vDisk's flush */
const stopFlushTimeoutMs = 5000
/** moving every extent group of one vDisk off a node */
const evacuateTimeoutMs = 30 * 60_000
/** passes over the vDisks of a node being evacuated until no record names it */
const evacuateRoundsMax = 3

/**
 * The vDisk data engine of one CVM. It owns vDisks (a key bound to this CVM's lease in etcd),
 * serves them to the NBD server, keeps every extent group on RF nodes (local replica plus remote
 * ones over the data port), forwards I/O for vDisks another CVM owns, and takes ownership when
 * that owner's lease has expired.
 */
export class VdiskEngine implements ExportProvider, VdiskDataHooks, VdiskIoHandler {
  private readonly loaded = new Map<string, Promise<Vdisk>>()
  private readonly egroupIds: IdAllocator
  private lease: Lease | undefined
  private stopKeepalive: () => void = () => undefined
  private leaseId = ''
  /** leases lost so far (each new one makes a new owner value) */
  private leaseGeneration = 0
  private stopped = false
  /** this CVM's incarnation: the owner key's value is node/session */
  private readonly session: string
  private readonly clock: Clock
  /** client I/O of every vDisk this CVM serves: the curator's repair here yields to it */
  private readonly activity = new IoActivity()
  private readonly files: FileLayer
  connectionsOf: (name: string) => number = () => 0
  /** Ask the CVM of `owner` to hand a vDisk over if it is idle there (set by the CVM; FIG. 9B). */
  requestRelease: ((owner: string, name: string) => Promise<boolean>) | undefined
  /** Ask the CVM of `owner` to take or delete a snapshot of a vDisk it owns (set by the CVM). */
  snapshotOnOwner: ((owner: string, req: { id: string, name: string, op: SnapshotOp }) => Promise<SnapshotRecord>) | undefined
  /** when I/O for a vDisk (by id) that no NBD client of this node sent was last served here: forwarded, or a clone's read of its parent */
  private readonly lastForwardedIo = new Map<string, number>()
  /** what loading, making and repairing extent groups (owner.ts) needs: etcd, the data port, the view */
  private readonly env: OwnerEnv

  constructor(private readonly etcd: Etcd3, private readonly opts: {
    nodeName: string
    log: Logger
    localDisks: () => Promise<DiskRecord[]>
    store: ReplicaStore
    peers: PeerPool
    /** this CVM's view of nodes and disks (follows etcd), where new extent groups are placed */
    view: PlacementView
    /** the cluster key, which opens the data keys of encrypted vDisks (undefined: none here yet) */
    clusterKey?: () => Buffer | undefined
    /** time for retries, deadlines and idleness (default: the real one; tests pass a fake) */
    clock?: Clock
    /** random bytes, of which the session (default: crypto.randomBytes) */
    random?: (bytes: number) => Buffer
    /** the file system under this node's disks, where orphan extent group files are removed (default: the real one) */
    files?: FileLayer
  }) {
    this.clock = opts.clock ?? realClock
    this.files = opts.files ?? realFiles
    this.session = (opts.random ?? ((n) => crypto.randomBytes(n)))(8).toString('hex')
    this.egroupIds = new IdAllocator(etcd, 'egroup', 64)
    this.env = {
      log: opts.log,
      view: opts.view,
      replicaFor: (vdiskId, egid, node, diskId) => this.replicaFor(vdiskId, egid, node, diskId),
      pickDiskOn: (node) => this.pickDiskOn(node),
      newEgroupId: () => this.egroupIds.allocate(),
      getEgroupRecord: (vdiskId, egid) => getJson<EgroupRecord>(this.etcd, keys.egroup(vdiskId, egid)),
      putEgroupRecords: (rec, ers) => this.putEgroupRecords(rec, ers),
    }
  }

  /** node/session, and the lease's generation after a lost lease: what an earlier lease fenced is never taken for this one's */
  private get ownerValue(): string {
    return `${this.opts.nodeName}/${this.session}${this.leaseGeneration > 0 ? `.${this.leaseGeneration}` : ''}`
  }

  async start(): Promise<void> {
    await this.grantLease()
    await this.collectGarbage(0)
  }

  /**
   * The lease every owner key of this CVM is bound to. When it is lost (etcd did not hear from
   * this CVM for its TTL: a partition, a long pause), the owner keys are gone: I/O to the vDisks
   * owned here stops, and a new lease is granted as soon as etcd answers again, so that this CVM
   * can own vDisks again (it could not before: every open failed on the dead lease).
   */
  private async grantLease(): Promise<void> {
    const lease = this.etcd.lease(nodeHeartbeatTtlSec, { autoKeepAlive: false })
    const id = await lease.grant()
    this.lease = lease
    this.leaseId = id
    this.stopKeepalive = keepLeaseAlive(lease, nodeHeartbeatTtlSec, (e) => {
      if (this.lease !== lease || this.stopped) return
      this.opts.log.error(`ownership lease lost (${errorMessage(e)}): stopping I/O to owned vDisks; a new lease is asked for until etcd answers`)
      for (const p of this.loaded.values()) void p.then((v) => v.shut('no longer owned by this CVM')).catch(() => undefined) // a vDisk that failed to load has nothing to shut
      this.loaded.clear()
      this.leaseId = ''
      this.leaseGeneration++
      void this.regrantLease()
    })
  }

  private async regrantLease(): Promise<void> {
    while (!this.stopped) {
      try {
        await this.grantLease()
        this.opts.log.info('ownership lease granted again: vDisks can be owned here again')
        return
      } catch (e) {
        this.opts.log.warn(`ownership lease: cannot grant a new one yet (${errorMessage(e)}); trying again`)
        await new Promise((r) => setTimeout(r, leaseRegrantIntervalMs).unref())
      }
    }
  }

  async stop(): Promise<void> {
    this.stopped = true
    for (const p of this.loaded.values()) {
      let v: Vdisk
      try {
        v = await p
      } catch { continue /* load failed */ }
      // A clean stop keeps what clients wrote without flushing: the data and the allocations.
      // (a real timer, not this.clock: it must not keep the process alive, and a fake clock must not cut the flush short)
      await Promise.race([v.flush(), new Promise((resolve) => setTimeout(resolve, stopFlushTimeoutMs).unref())])
        .catch((e: unknown) => this.opts.log.warn(`vDisk ${v.name}: flush at stop failed: ${errorMessage(e)}`))
      v.shut('stopping')
    }
    this.loaded.clear()
    await this.opts.store.closeAll()
    this.opts.peers.closeAll()
    this.stopKeepalive()
    try {
      await this.lease?.revoke()
    } catch { /* etcd may be gone */ }
  }

  // ---- nodes ----

  private replicaFor(vdiskId: string, egid: string, node: string, diskId: string): Replica {
    if (node === this.opts.nodeName) return new LocalReplica(node, diskId, egid, vdiskId, this.opts.store)
    return new RemoteReplica(node, diskId, egid, vdiskId, this.opts.peers)
  }

  private async pickDiskOn(node: string): Promise<string> {
    if (node === this.opts.nodeName) return this.opts.store.pickDisk()
    const f = await (await this.opts.peers.get(node)).request(ops.pickDisk, {})
    return String(f.json.diskId)
  }

  // ---- ExportProvider (NBD) ----

  async list(): Promise<ExportInfo[]> {
    const [recs, snaps] = await Promise.all([listJson<VdiskRecord>(this.etcd, keys.vdisksPrefix), this.etcd.getAll().prefix(keys.allSnapshotsPrefix).keys()])
    const ready = recs.filter((r) => r.state === 'ready')
    const byId = new Map(ready.map((r) => [r.id, r]))
    const out = ready.map((r) => ({ name: r.name, description: `Tessera vDisk ${r.name} (id ${r.id}, RF ${r.rf})` }))
    for (const k of snaps) {
      const [id, snap] = k.slice(keys.allSnapshotsPrefix.length).split('/')
      const r = byId.get(id ?? '')
      if (r !== undefined && snap !== undefined) out.push({ name: `${r.name}@${snap}`, description: `Tessera snapshot ${snap} of vDisk ${r.name} (read-only)` })
    }
    return out
  }

  /**
   * Open a vDisk for an NBD client. A failure that is not the device's answer (etcd electing a
   * leader after a node loss, a peer's CVM restarting) is retried for a while: the client is in
   * its handshake and would otherwise be told the export does not exist.
   */
  async open(name: string): Promise<BlockDevice | undefined> {
    const deadline = this.clock.now() + nbdOpenRetryMs
    for (;;) {
      try {
        return await this.openOnce(name)
      } catch (e) {
        if (e instanceof DeviceError || this.clock.now() >= deadline) {
          this.opts.log.warn(`NBD open of vDisk ${name} failed: ${errorMessage(e)}`)
          throw e
        }
        this.opts.log.warn(`NBD open of vDisk ${name}: ${errorMessage(e)}; retrying`)
        await this.clock.sleep(openRetryIntervalMs)
      }
    }
  }

  private async openOnce(name: string): Promise<BlockDevice | undefined> {
    if (name.includes('@')) return this.openSnapshot(name)
    const id = await this.etcd.get(keys.vdiskName(name)).string()
    if (id === null) return undefined
    const rec = await getJson<VdiskRecord>(this.etcd, keys.vdisk(id))
    if (!rec || rec.state !== 'ready') return undefined
    let target = await this.route(rec)
    if (!target.local && this.requestRelease !== undefined) {
      // The owner moves with the I/O: a new client here asks an idle owner to hand the vDisk over.
      try {
        if (await this.requestRelease(target.owner, name)) {
          target = await this.route(rec)
          if (target.local) this.opts.log.info(`vDisk ${name}: ${(await this.etcd.get(keys.vdiskOwner(rec.id)).string()) === this.ownerValue ? 'owner moved here' : 'routed'} (handed over by an idle owner)`)
        }
      } catch (e) {
        this.opts.log.warn(`vDisk ${name}: the owner did not hand it over (${errorMessage(e)}); forwarding to it`)
      }
    }
    if (target.local) {
      const v = target.vdisk
      v.connections++
      let closed = false
      return {
        name,
        get sizeBytes() { return v.sizeBytes },
        read: (o, l) => v.read(o, l),
        readInto: (o, out) => v.readInto(o, out),
        readIfCached: (o, out) => v.readIfCached(o, out),
        writeIfQuick: (o, d) => v.writeIfQuick(o, d),
        write: (o, d, f) => v.write(o, d, f),
        flush: () => v.flush(),
        trim: (o, l) => v.trim(o, l),
        writeZeroes: (o, l, n, f) => v.writeZeroes(o, l, n, f),
        close: async () => {
          if (closed) return
          closed = true
          v.connections--
        },
      }
    }
    return new ForwardingDevice(rec, target.owner, this)
  }

  /** The export `VDISK@SNAPSHOT`: read-only, served by the vDisk's owner (here, or forwarded to it). */
  private async openSnapshot(exportName: string): Promise<BlockDevice | undefined> {
    const [vdiskName, snap] = exportName.split('@') as [string, string]
    const id = await this.etcd.get(keys.vdiskName(vdiskName)).string()
    const rec = id === null ? undefined : await getJson<VdiskRecord>(this.etcd, keys.vdisk(id))
    if (!rec || rec.state !== 'ready') return undefined
    if (await this.etcd.get(keys.vdiskSnapshot(rec.id, snap)).string() === null) return undefined
    const t = await this.route(rec)
    if (!t.local) return readOnly(new ForwardingDevice({ ...rec, name: exportName }, t.owner, this))
    const v = t.vdisk
    return readOnly({
      name: exportName,
      get sizeBytes() { return v.sizeBytes },
      read: async (o, l) => {
        const out = Buffer.allocUnsafe(l)
        await v.readSnapshotInto(snap, o, out)
        return out
      },
      readInto: (o, out) => v.readSnapshotInto(snap, o, out),
      write: refuseWrite, flush: async () => undefined, trim: refuseWrite, writeZeroes: refuseWrite,
      close: async () => undefined,
    })
  }

  private readonly idsByName = new Map<string, string>()

  private async loadedByName(name: string): Promise<Vdisk | undefined> {
    const id = this.idsByName.get(name)
    const p = id === undefined ? undefined : this.loaded.get(id)
    if (!p) return undefined
    try {
      const v = await p
      return v.name === name ? v : undefined
    } catch {
      return undefined
    }
  }

  /** Where I/O for a vDisk goes: here (loading it, taking ownership if free) or to its owner. */
  async route(rec: VdiskRecord): Promise<{ local: true, vdisk: Vdisk } | { local: false, owner: string }> {
    const loaded = this.loaded.get(rec.id)
    if (loaded) return { local: true, vdisk: await loaded }
    const cur = await this.etcd.get(keys.vdiskOwner(rec.id)).string()
    const ownerNode = cur?.split('/')[0]
    if (cur === null || ownerNode === this.opts.nodeName) {
      let v: Vdisk
      try {
        v = await this.load(rec.id)
      } catch (e) {
        // another CVM took it between the read above and this one's claim (an idle owner handed it
        // over to a node whose client asked, say): I/O goes to that one
        if (e instanceof OwnedElsewhere) return { local: false, owner: e.owner }
        throw e
      }
      if (!rec.name.includes('@')) this.idsByName.set(rec.name, rec.id)
      return { local: true, vdisk: v }
    }
    return { local: false, owner: ownerNode! }
  }

  /**
   * Forwarded I/O arriving on the data port: serve it if this CVM owns (or can own) the vDisk.
   * `vdiskId` (sent by forwarders that know it): the vDisk the client opened; one of the same
   * name made after that one was deleted is not it.
   */
  async io(exportName: string, op: string, offset: number, length: number, flags: { fua: boolean, noHole: boolean }, data: Buffer, vdiskId?: string): Promise<Buffer | undefined> {
    // a snapshot's export, VDISK@SNAPSHOT: reads (and flushes, which have nothing to do) only
    const [name, snap] = exportName.split('@') as [string, string | undefined]
    // Hot path: a vDisk loaded here is served without asking etcd.
    let v = await this.loadedByName(name)
    if (v !== undefined && vdiskId !== undefined && v.id !== vdiskId) v = undefined
    if (!v) {
      const id = await this.etcd.get(keys.vdiskName(name)).string()
      const rec = id === null ? undefined : await getJson<VdiskRecord>(this.etcd, keys.vdisk(id))
      if (!rec || rec.state !== 'ready' || (vdiskId !== undefined && rec.id !== vdiskId)) throw new PeerError('errno', `vDisk ${name} does not exist`, nbdErrno.EINVAL)
      const t = await this.route(rec)
      if (!t.local) throw new PeerError('not-owner', `vDisk ${name} is owned by ${t.owner}`)
      v = t.vdisk
    }
    this.lastForwardedIo.set(v.id, this.clock.now())
    if (offset + length > v.sizeBytes) throw new PeerError('errno', 'request past the end', nbdErrno.EINVAL)
    if (snap !== undefined) {
      if (op === 'flush') return undefined
      if (op !== 'read') throw new PeerError('errno', `snapshot ${exportName} is read-only`, nbdErrno.EPERM)
      if (!v.snapshots.has(snap)) throw new PeerError('errno', `snapshot ${exportName} does not exist`, nbdErrno.EINVAL)
      const out = Buffer.allocUnsafe(length)
      await v.readSnapshotInto(snap, offset, out)
      return out
    }
    switch (op) {
      case 'read': return v.read(offset, length)
      case 'write': await v.write(offset, data, flags.fua); return undefined
      case 'flush': await v.flush(); return undefined
      case 'trim': await v.trim(offset, length); return undefined
      case 'zero': await v.writeZeroes(offset, length, flags.noHole, flags.fua); return undefined
      default: throw new PeerError('invalid', `unknown vDisk op ${op}`)
    }
  }

  /**
   * Hand a vDisk over (FIG. 9B): when no NBD client of this node has it open and no forwarded
   * I/O came for a while, flush it, unload it and give up ownership, so that the node asking takes
   * it. Answers whether the vDisk is free of this CVM now.
   */
  async releaseIfIdle(name: string): Promise<{ released: boolean, reason?: string }> {
    const v = await this.loadedByName(name)
    if (!v) return { released: true }
    if (this.connectionsOf(name) > 0 || v.connections > 0) return { released: false, reason: `NBD clients of node ${this.opts.nodeName} have it open` }
    const last = this.lastForwardedIo.get(v.id) ?? 0
    const idleMs = this.clock.now() - last
    if (idleMs < handoverIdleMs) return { released: false, reason: `forwarded I/O for it arrived ${idleMs} ms ago` }
    await v.flush()
    // from here, nothing new reaches it: it leaves the maps before the owner key goes
    this.loaded.delete(v.id)
    this.idsByName.delete(name)
    v.shut('handed over to another node')
    const key = keys.vdiskOwner(v.id)
    await etcdCall('give up the ownership', () => this.etcd.if(key, 'Value', '==', this.ownerValue).then(this.etcd.delete().key(key)).commit())
    this.opts.log.info(`vDisk ${name}: handed over (idle here)`)
    return { released: true }
  }

  // ---- VdiskDataHooks (control plane) ----

  connections(name: string): number {
    return this.connectionsOf(name)
  }

  resized(rec: VdiskRecord): void {
    const p = this.loaded.get(rec.id)
    if (p) void p.then((v) => { v.sizeBytes = rec.sizeBytes }).catch(() => undefined) // a vDisk that failed to load has no size to change
  }

  /** A vDisk deleted through another CVM: shut it here if it is loaded (this CVM owned it). */
  async shutDeleted(id: string): Promise<boolean> {
    const p = this.loaded.get(id)
    if (!p) return false
    this.loaded.delete(id)
    try {
      (await p).shut('deleted')
    } catch { /* its load had failed: nothing to shut */ }
    return true
  }

  async destroy(rec: VdiskRecord): Promise<void> {
    const p = this.loaded.get(rec.id)
    this.loaded.delete(rec.id)
    if (p) {
      try {
        (await p).shut('deleted')
      } catch { /* load had failed */ }
    }
    const egroups = await etcdCall('list extent groups', () => listJson<EgroupRecord>(this.etcd, keys.egroupsOf(rec.id)))
    // Files first, records after: a node that is down keeps its files until it comes back and
    // finds no record for them (collectGarbage).
    await Promise.all(egroups.flatMap((eg) => [...eg.replicas, ...(eg.stale ?? [])].map(async (r) => {
      try {
        // an encrypted vDisk's groups may become spares: their ciphertext goes with its key
        await this.replicaFor(rec.id, eg.id, r.node, r.diskId).delete({ recycle: rec.wrappedKey !== undefined })
      } catch (e) {
        this.opts.log.warn(`delete of vDisk ${rec.name}: extent group ${eg.id} on ${r.node} stays until that node is back: ${errorMessage(e)}`)
      }
    })))
    await etcdCall('delete the block map', () => this.etcd.delete().prefix(keys.vdiskMapPrefix(rec.id)))
    await etcdCall('delete the snapshots', () => this.etcd.delete().prefix(keys.vdiskHistPrefix(rec.id)))
    await etcdCall('delete the snapshots', () => this.etcd.delete().prefix(keys.vdiskSnapshotsPrefix(rec.id)))
    await etcdCall('delete the snapshots', () => this.etcd.delete().key(keys.vdiskEpoch(rec.id)))
    await etcdCall('delete extent group records', () => this.etcd.delete().prefix(keys.egroupsOf(rec.id)))
    await etcdCall('delete the owner record', () => this.etcd.delete().key(keys.vdiskOwner(rec.id)))
  }

  /** Does any extent group have a replica on this disk? */
  async diskHoldsData(diskId: string): Promise<boolean> {
    const all = await etcdCall('list extent groups', () => listJson<EgroupRecord>(this.etcd, keys.egroupsPrefix))
    return all.some((eg) => eg.replicas.some((r) => r.diskId === diskId))
  }

  // ---- loading ----

  private load(id: string): Promise<Vdisk> {
    let p = this.loaded.get(id)
    if (!p) {
      p = this.doLoad(id)
      this.loaded.set(id, p)
      p.catch(() => this.loaded.delete(id))
    }
    return p
  }

  private async acquireOwnership(rec: VdiskRecord): Promise<void> {
    const key = keys.vdiskOwner(rec.id)
    const mine = this.ownerValue
    // no lease (lost, the new one not granted yet): an owner key without one would never expire
    if (this.leaseId === '') throw new Error('no ownership lease: etcd has not answered since the last one was lost')
    const created = await this.etcd.if(key, 'Create', '==', 0).then(this.etcd.put(key).value(mine).lease(this.leaseId)).commit()
    if (created.succeeded) return
    const cur = await this.etcd.get(key).string()
    if (cur === mine) return
    if (cur !== null && cur.startsWith(`${this.opts.nodeName}/`)) {
      // An earlier incarnation of this node's CVM (it died; the supervisor started us): take over.
      const res = await this.etcd.if(key, 'Value', '==', cur).then(this.etcd.put(key).value(mine).lease(this.leaseId)).commit()
      if (res.succeeded) {
        this.opts.log.info(`vDisk ${rec.name}: took ownership over from an earlier CVM of this node (${cur})`)
        return
      }
    }
    if (cur === null) throw new Error(`vDisk ${rec.name}: its owner record went away while this CVM took ownership`) // retried by open
    const owner = cur.split('/')[0]!
    throw new OwnedElsewhere(owner, `vDisk ${rec.name} is owned by ${owner}; connect to that node`)
  }

  private async doLoad(id: string): Promise<Vdisk> {
    const rec = await getJson<VdiskRecord>(this.etcd, keys.vdisk(id))
    if (!rec || rec.state !== 'ready') throw new DeviceError(nbdErrno.EINVAL, `vDisk ${id} does not exist`)
    // an encrypted vDisk opens only where the cluster key is (checked before taking ownership)
    const kek = this.opts.clusterKey?.()
    if (rec.wrappedKey !== undefined && kek === undefined) {
      throw new DeviceError(nbdErrno.EPERM, `vDisk ${rec.name} is encrypted and this CVM holds no cluster key: run tess cluster unlock`)
    }
    await this.acquireOwnership(rec)
    const [egRecs, mapAll, snapshots, history] = await Promise.all([
      listJson<EgroupRecord>(this.etcd, keys.egroupsOf(id)),
      this.etcd.getAll().prefix(keys.vdiskMapPrefix(id)).strings(),
      listJson<SnapshotRecord>(this.etcd, keys.vdiskSnapshotsPrefix(id)),
      this.loadHistory(id),
    ])
    const prefix = keys.vdiskMapPrefix(id)
    const entries = Object.entries(mapAll).map(([k, v]): [number, MapValue] => [parseInt(k.slice(prefix.length), 16), JSON.parse(v) as MapValue])
    const epoch = Math.max(history.epoch, ...entries.map(([, mv]) => (mv.e ?? 0) + 1))
    const hist = new SnapshotHistory(epoch, snapshots.map((sr) => sr.epoch), history.entries)
    const { map, egroups } = await loadLayout(this.env, rec, egRecs, entries, hist.slotsInUse())
    const mapWriter = new MapWriter(this.etcd, keys.vdiskOwner(id), () => this.ownerValue)
    const cipher = rec.wrappedKey !== undefined ? new BlockCipher(unwrapDataKey(kek!, rec.wrappedKey, id)) : undefined
    const backend = vdiskBackend(this.env, rec, mapWriter, (vb) => keys.vdiskMap(id, vb), (vb, e) => keys.vdiskHist(id, vb, e), cipher)
    const v = new Vdisk(id, rec.name, rec.sizeBytes, map, egroups, backend, this.activity, hist, new Map(snapshots.map((sr) => [sr.name, sr.epoch])))
    v.parentReader = this.parentReader(rec)
    // history entries no snapshot sees (a crash during a snapshot's delete): their extents go
    const pruned = await v.pruneHistory()
    this.opts.log.info(`vDisk ${rec.name} (${id}) loaded: ${map.size} extent(s) in ${egroups.size} extent group(s)` +
      `${snapshots.length > 0 ? `, ${snapshots.length} snapshot(s) keeping ${[...hist.entries.values()].reduce((a, l) => a + l.length, 0)} more` : ''}` +
      `${pruned.extentsFreed > 0 ? `; freed ${pruned.extentsFreed} extent(s) no snapshot sees` : ''}`)
    return v
  }

  /** a vDisk's history entries and the epoch its writes go into, as stored */
  private async loadHistory(id: string): Promise<{ epoch: number, entries: Array<[number, HistEntry]> }> {
    const [raw, epoch] = await Promise.all([
      this.etcd.getAll().prefix(keys.vdiskHistPrefix(id)).strings(),
      this.etcd.get(keys.vdiskEpoch(id)).string(),
    ])
    const prefix = keys.vdiskHistPrefix(id)
    const entries = Object.entries(raw).map(([k, v]): [number, HistEntry] => [parseInt(k.slice(prefix.length).split('/')[0]!, 16), parseHistValue(v)])
    return { epoch: epoch === null ? 0 : Number(epoch), entries }
  }

  // ---- snapshots (history.ts): made and deleted by the vDisk's owner ----

  /**
   * Take a snapshot of a vDisk on its owner: here (loading it if no CVM owns it), or on the node
   * that owns it. The record is written fenced on ownership, with the vDisk's next epoch.
   */
  async snapshotCreate(rec: VdiskRecord, name: string): Promise<SnapshotRecord> {
    const t = await this.route(rec)
    if (!t.local) return this.ownerCall(t.owner, rec, name, 'create')
    const createdAt = new Date().toISOString()
    const epoch = await t.vdisk.snapshot(name, async (e) => {
      const snapKey = keys.vdiskSnapshot(rec.id, name)
      const res = await etcdCall('record the snapshot', () => this.etcd.if(keys.vdiskOwner(rec.id), 'Value', '==', this.ownerValue).and(snapKey, 'Create', '==', 0)
        .then(this.etcd.put(snapKey).value(JSON.stringify({ name, epoch: e, createdAt } satisfies SnapshotRecord)), this.etcd.put(keys.vdiskEpoch(rec.id)).value(String(e + 1)))
        .commit())
      if (!res.succeeded) {
        if (await this.etcd.get(snapKey).string() !== null) throw new TessError('TESS_E_EXISTS', `vDisk "${rec.name}" has a snapshot "${name}"`, 'pick another name, or delete the old snapshot')
        throw new TessError('TESS_E_CONFLICT', `vDisk "${rec.name}" moved to another owner while the snapshot was taken`, 'retry the command')
      }
    })
    this.opts.log.info(`vDisk ${rec.name}: snapshot ${name} taken (epoch ${epoch})`)
    return { name, epoch, createdAt }
  }

  /** Delete a snapshot on the vDisk's owner; the extents only it saw are freed. */
  async snapshotDelete(rec: VdiskRecord, name: string): Promise<SnapshotRecord> {
    const snapKey = keys.vdiskSnapshot(rec.id, name)
    const sr = await this.snapshotRecord(rec, name)
    const t = await this.route(rec)
    if (!t.local) return this.ownerCall(t.owner, rec, name, 'delete')
    const { extentsFreed } = await t.vdisk.deleteSnapshot(name, async () => {
      const res = await etcdCall('delete the snapshot', () => this.etcd.if(keys.vdiskOwner(rec.id), 'Value', '==', this.ownerValue)
        .then(this.etcd.delete().key(snapKey)).commit())
      if (!res.succeeded) throw new TessError('TESS_E_CONFLICT', `vDisk "${rec.name}" moved to another owner while the snapshot was deleted`, 'retry the command')
    })
    this.opts.log.info(`vDisk ${rec.name}: snapshot ${name} deleted; ${extentsFreed} extent(s) freed`)
    return sr
  }

  /** A snapshot asked of this node as the vDisk's owner (node operation vdisk.snapshot): never passed on again. */
  async snapshotHere(id: string, name: string, op: SnapshotOp): Promise<SnapshotRecord> {
    const rec = await getJson<VdiskRecord>(this.etcd, keys.vdisk(id))
    if (!rec || rec.state !== 'ready') throw new TessError('TESS_E_NOT_FOUND', `vDisk ${id} does not exist`, 'see `tess vdisk list`')
    const t = await this.route(rec)
    if (!t.local) throw new TessError('TESS_E_CONFLICT', `vDisk "${rec.name}" is owned by node ${t.owner} now`, 'retry the command')
    if (op === 'flatten') return this.flatten(rec)
    return op === 'create' ? this.snapshotCreate(rec, name) : op === 'delete' ? this.snapshotDelete(rec, name) : this.snapshotRestore(rec, name)
  }

  private async snapshotRecord(rec: VdiskRecord, name: string): Promise<SnapshotRecord> {
    const sr = await getJson<SnapshotRecord>(this.etcd, keys.vdiskSnapshot(rec.id, name))
    if (sr === undefined) throw new TessError('TESS_E_NOT_FOUND', `vDisk "${rec.name}" has no snapshot "${name}"`, `see \`tess vdisk snapshot list ${rec.name}\``)
    return sr
  }

  /**
   * How a clone reads its parent snapshot: from the parent's owner, here when this CVM owns it (or
   * nobody does: then it takes it), else forwarded like a client's read of VDISK@SNAPSHOT, with
   * the same failover when that owner dies.
   */
  private parentReader(rec: VdiskRecord): ((offset: number, out: Buffer) => Promise<void>) | undefined {
    const p = rec.parent
    if (p === undefined) return undefined
    let remote: ForwardingDevice | undefined
    // read once: a parent is not deleted while a clone reads from it, and its snapshot has no
    // extent past the size it had when this clone was made
    let parent: VdiskRecord | undefined
    return async (offset, out) => {
      if (out.length === 0) return
      const prec = parent ??= await getJson<VdiskRecord>(this.etcd, keys.vdisk(p.id))
      if (!prec || prec.state !== 'ready') throw new DeviceError(nbdErrno.EIO, `the parent of vDisk ${rec.name} (vDisk ${p.id}) is gone`)
      const n = Math.max(0, Math.min(out.length, prec.sizeBytes - offset))
      out.fill(0, n)
      if (n === 0) return
      for (let attempt = 1; remote === undefined; attempt++) {
        const t = await this.route(prec)
        if (!t.local) {
          remote = new ForwardingDevice({ ...prec, name: `${prec.name}@${p.snapshot}` }, t.owner, this)
          break
        }
        // a clone's reads keep its parent here: the parent is not handed over while they go on
        this.lastForwardedIo.set(prec.id, this.clock.now())
        try {
          return await t.vdisk.readSnapshotInto(p.snapshot, offset, out.subarray(0, n))
        } catch (e) {
          // handed over (or unloaded) between the route and the read: route again, to its new owner
          if (!(e instanceof DeviceError && e.errno === nbdErrno.ESHUTDOWN) || attempt >= parentRouteTriesMax) throw e
          this.opts.log.warn(`vDisk ${rec.name}: its parent ${prec.name} left this node during a read (${e.message}); reading it again from its owner`)
          await this.clock.sleep(100 * attempt)
        }
      }
      ;(await remote.read(offset, n)).copy(out)
    }
  }

  /** Make a clone stand alone (on its owner): copy what it reads from its parents, then drop the reference. */
  async flatten(rec: VdiskRecord): Promise<SnapshotRecord> {
    const t = await this.route(rec)
    if (!t.local) return this.ownerCall(t.owner, rec, '', 'flatten')
    const { copiedExtents } = await t.vdisk.flatten()
    const key = keys.vdisk(rec.id)
    for (let attempt = 0; ; attempt++) {
      const cur = await etcdCall('read the vDisk', () => this.etcd.get(key).string())
      if (cur === null) throw new TessError('TESS_E_NOT_FOUND', `vDisk "${rec.name}" was deleted meanwhile`, 'see `tess vdisk list`')
      const { parent: _dropped, ...alone } = JSON.parse(cur) as VdiskRecord
      const res = await etcdCall('drop the parent reference', () => this.etcd.if(key, 'Value', '==', cur).then(this.etcd.put(key).value(JSON.stringify(alone))).commit())
      if (res.succeeded) break
      if (attempt >= 9) throw new TessError('TESS_E_CONFLICT', `vDisk "${rec.name}" kept changing while it was flattened`, 'run the command again')
    }
    t.vdisk.parentReader = undefined
    this.opts.log.info(`vDisk ${rec.name}: flattened (${copiedExtents} extent(s) copied from its parents); it stands alone`)
    return { name: '', epoch: 0, createdAt: rec.createdAt, changedExtents: copiedExtents }
  }

  /** Roll a vDisk back to a snapshot, on its owner. */
  async snapshotRestore(rec: VdiskRecord, name: string): Promise<SnapshotRecord> {
    const sr = await this.snapshotRecord(rec, name)
    const t = await this.route(rec)
    if (!t.local) return this.ownerCall(t.owner, rec, name, 'restore')
    const { changedExtents } = await t.vdisk.restore(name)
    this.opts.log.info(`vDisk ${rec.name}: rolled back to snapshot ${name}; ${changedExtents} extent(s) changed`)
    return { ...sr, changedExtents }
  }

  /** the same on the node that owns the vDisk (which may have handed it over meanwhile: then the caller retries) */
  private async ownerCall(owner: string, rec: VdiskRecord, name: string, op: SnapshotOp): Promise<SnapshotRecord> {
    if (this.snapshotOnOwner === undefined) throw new TessError('TESS_E_CONFLICT', `vDisk "${rec.name}" is owned by node ${owner}`, 'retry through that node')
    return this.snapshotOnOwner(owner, { id: rec.id, name, op })
  }

  private async putEgroupRecords(rec: VdiskIdentity, ers: EgroupRecord[]): Promise<void> {
    // Fenced on ownership: a CVM that lost the vDisk cannot change its extent groups. One
    // transaction for a batch: a streaming vDisk makes its groups several at a time, and each etcd
    // transaction is a WAL sync on a disk that is busy with the stream.
    // (the same transaction again while etcd has no leader for a moment: it puts the same records)
    const res = await retryTransientEtcd(() => this.etcd.if(keys.vdiskOwner(rec.id), 'Value', '==', this.ownerValue)
      .then(...ers.map((er) => this.etcd.put(keys.egroup(rec.id, er.id)).value(JSON.stringify(er)))).commit())
    if (!res.succeeded) throw new DeviceError(nbdErrno.EIO, `vDisk ${rec.name} is no longer owned by this CVM`)
  }

  /**
   * The garbage of this node's disks (gc.ts): stale replicas' files and their record entries, and
   * extent group files no record names here, changed at least minAgeMs ago. At start (minAgeMs 0,
   * before the data port listens) nothing is in flight, so every such file goes.
   */
  async collectGarbage(minAgeMs: number): Promise<GcFound> {
    const store = this.opts.store
    return collectGarbage({
      etcd: this.etcd,
      nodeName: this.opts.nodeName,
      log: this.opts.log,
      localDisks: this.opts.localDisks,
      files: this.files,
      isOpen: (egid, diskId) => store.isOpen(egid, diskId),
      remove: (egid, diskId) => store.delete(egid, diskId),
      now: () => Date.now(),
    }, minAgeMs)
  }

  // ---- host removal ----

  /** Evacuate forwarded from another CVM: this CVM must own the vDisk. */
  async evacuate(name: string, node: string): Promise<number> {
    const id = await this.etcd.get(keys.vdiskName(name)).string()
    const rec = id === null ? undefined : await getJson<VdiskRecord>(this.etcd, keys.vdisk(id))
    if (!rec || rec.state !== 'ready') return 0
    const t = await this.route(rec)
    if (!t.local) throw new PeerError('not-owner', `vDisk ${name} is owned by ${t.owner}`)
    return t.vdisk.evacuate(node)
  }

  /**
   * Move every replica off `node` (which must already be marked draining, so no new extent group
   * lands there): each vDisk's owner copies its extent groups elsewhere. Returns the groups moved.
   */
  async evacuateNode(node: string, progress: (p: EvacuationProgress) => void): Promise<number> {
    let moved = 0
    // a replica the curator's balancing was moving to the node when it was marked draining lands
    // after its vDisk was passed: a further round moves it (the balancing no longer picks the node)
    for (let round = 0; round < evacuateRoundsMax; round++) {
      const all = await listJson<EgroupRecord>(this.etcd, keys.egroupsPrefix)
      const left = all.filter((e) => e.replicas.some((r) => r.node === node))
      if (left.length === 0) break
      const recs = (await listJson<VdiskRecord>(this.etcd, keys.vdisksPrefix)).filter((r) => r.state === 'ready' && left.some((e) => e.vdiskId === r.id))
      const total = moved + left.length
      progress({ egroupsMoved: moved, egroupsTotal: total, vdisk: null })
      for (const rec of recs) {
        moved += await this.evacuateVdisk(rec, node)
        progress({ egroupsMoved: moved, egroupsTotal: total, vdisk: rec.name })
      }
    }
    return moved
  }

  /** One vDisk's replicas off `node`, at its owner (retried when the owner is the node going away). */
  private async evacuateVdisk(rec: VdiskRecord, node: string): Promise<number> {
    for (let attempt = 0; ; attempt++) {
      try {
        const t = await this.route(rec)
        if (t.local) return await t.vdisk.evacuate(node)
        const f = await (await this.opts.peers.get(t.owner)).request(ops.vdiskEvacuate, { name: rec.name, node }, undefined, evacuateTimeoutMs)
        return Number(f.json.moved ?? 0)
      } catch (e) {
        // the owner may be the node being drained and going away: retry once ownership moved
        if (attempt >= 3) throw e
        await this.clock.sleep(1000)
      }
    }
  }

  /**
   * The curator's repair of one vDisk (Vdisk.repair), at most `bytesPerSec` when given: see onOwned.
   */
  async repair(id: string, down: string[], bytesPerSec?: number, lostDisks: string[] = []): Promise<{ egroups: number, bytes: number }> {
    const pace = repairPacer(this.clock, { ...(bytesPerSec !== undefined ? { limitBytesPerSec: bytesPerSec } : {}), busy: () => this.activity.busy(this.clock.now(), repairBusyWindowMs) })
    return this.onOwned(id, 'repair', { egroups: 0, bytes: 0 }, (v) => v.repair(new Set(down), pace, new Set(lostDisks)))
  }

  /** The curator's balancing of one vDisk's replicas (Vdisk.move), yielding to client I/O like the repair: see onOwned. */
  async move(id: string, moves: ReplicaMove[], bytesPerSec?: number): Promise<{ egroups: number, bytes: number, skipped: number }> {
    const pace = repairPacer(this.clock, { ...(bytesPerSec !== undefined ? { limitBytesPerSec: bytesPerSec } : {}), busy: () => this.activity.busy(this.clock.now(), repairBusyWindowMs) })
    // a node marked draining since the plan (being removed) takes no replica
    const takes = (node: string) => this.opts.view.nodes().find((n) => n.name === node)?.draining !== true
    return this.onOwned(id, 'balancing', { egroups: 0, bytes: 0, skipped: moves.length }, (v) => v.move(moves, pace, takes))
  }

  /** The curator's scrub of one vDisk (Vdisk.scrub) at `bytesPerSec` at most: see onOwned. */
  async scrub(id: string, bytesPerSec: number): Promise<ScrubResult> {
    return this.onOwned(id, 'scrub', { extents: 0, bytesChecked: 0, badBlocks: 0, repairedBlocks: 0, unreadable: 0 }, (v) => v.scrub(pacer(this.clock, bytesPerSec)))
  }

  /**
   * The curator's work on one vDisk, here if this CVM owns it or nobody does: it takes the vDisk
   * for the work and hands it back after, when no client uses it here. A vDisk that is gone (or
   * being deleted) answers `none`; one another CVM owns is refused (not-owner).
   */
  private async onOwned<T>(id: string, what: string, none: T, work: (v: Vdisk) => Promise<T>): Promise<T> {
    const rec = await getJson<VdiskRecord>(this.etcd, keys.vdisk(id))
    if (!rec || rec.state !== 'ready') return none
    const wasLoaded = this.loaded.has(id)
    const t = await this.route(rec)
    if (!t.local) throw new PeerError('not-owner', `vDisk ${rec.name} is owned by ${t.owner}`)
    try {
      return await work(t.vdisk)
    } finally {
      if (!wasLoaded) {
        await this.releaseIfIdle(rec.name).catch((e: unknown) => this.opts.log.warn(`vDisk ${rec.name}: kept after its ${what}: ${errorMessage(e)}`))
      }
    }
  }

  /** vDisks that would lose their last healthy copy of some extent group if `node` went away. */
  async onlyCopiesOn(node: string): Promise<string[]> {
    const [recs, egs, live] = await Promise.all([
      listJson<VdiskRecord>(this.etcd, keys.vdisksPrefix),
      listJson<EgroupRecord>(this.etcd, keys.egroupsPrefix),
      listJson<NodeStatusRecord>(this.etcd, keys.nodeStatusPrefix),
    ])
    const up = new Set(live.map((s) => s.name))
    const names = new Map(recs.map((r) => [r.id, r.name]))
    const bad = new Set<string>()
    for (const eg of egs) {
      if (!eg.replicas.some((r) => r.node === node)) continue
      if (!eg.replicas.some((r) => r.node !== node && up.has(r.node))) bad.add(names.get(eg.vdiskId) ?? eg.vdiskId)
    }
    return [...bad].sort()
  }

  // ---- used by ForwardingDevice ----

  async forward(owner: string, rec: Pick<VdiskRecord, 'id' | 'name'>, op: string, offset: number, length: number, flags: { fua: boolean, noHole: boolean }, data?: Buffer): Promise<Buffer> {
    const peer = await this.opts.peers.get(owner)
    const f = await peer.request(ops.vdiskIo, { name: rec.name, id: rec.id, op, offset, length, fua: flags.fua, noHole: flags.noHole }, data)
    return f.data
  }

  async nodeRecord(name: string): Promise<NodeRecord | undefined> {
    return getJson<NodeRecord>(this.etcd, keys.node(name))
  }

  get log(): Logger {
    return this.opts.log
  }

  /** the engine's clock (ForwardingDevice waits by it) */
  get time(): Clock {
    return this.clock
  }
}

/** a clone's read of its parent routes again at most this often when the parent leaves this node under it */
const parentRouteTriesMax = 5

/**
 * The repair's pace, called after each extent group it copied: at most `limitBytesPerSec` on
 * average when set, and while `busy()` (clients do I/O on this node) at most
 * repairBusyBytesPerSec for the group just copied, its copy time included: the copy goes on in
 * bursts of one group with pauses between them that leave the disk and the cores to the clients.
 * The pause ends early when the clients stop.
 */
export function repairPacer(clock: Clock, o: { limitBytesPerSec?: number, busyBytesPerSec?: number, busy: () => boolean }): (bytes: number) => Promise<void> {
  const limit = o.limitBytesPerSec !== undefined ? pacer(clock, o.limitBytesPerSec) : undefined
  const busyRate = o.busyBytesPerSec ?? repairBusyBytesPerSec
  let since = clock.now()
  // groups copied at once (Vdisk.repair) take their busy pauses one after the other, so the busy rate holds for all of them
  let turns: Promise<void> = Promise.resolve()
  return async (bytes) => {
    if (limit !== undefined) await limit(bytes)
    const turn = turns.then(async () => {
      const due = since + (bytes / busyRate) * 1000
      while (o.busy() && clock.now() < due) await clock.sleep(Math.min(repairBusyCheckMs, due - clock.now()))
      since = clock.now()
    })
    turns = turn
    await turn
  }
}

/** A pace of at most `bytesPerSec` on average: called with the bytes just done, it waits until they are due. */
export function pacer(clock: Clock, bytesPerSec: number): (bytes: number) => Promise<void> {
  const start = clock.now()
  let total = 0
  return async (bytes) => {
    total += bytes
    const ahead = (total / bytesPerSec) * 1000 - (clock.now() - start)
    if (ahead > 0) await clock.sleep(ahead)
  }
}

/**
 * NBD device for a vDisk owned by another CVM: every request is relayed to the owner over the data
 * port (patent FIG. 7C). If the owner stops answering, the forwarder waits for its lease to expire
 * (at most `ownerFailoverWaitMs`), then routes again: to a new owner, or here (taking ownership).
 */
/** A vDisk this CVM could not take: another CVM owns it (`owner`, a node name). */
class OwnedElsewhere extends DeviceError {
  constructor(readonly owner: string, message: string) {
    super(nbdErrno.EPERM, message)
  }
}

class ForwardingDevice implements BlockDevice {
  readonly name: string
  readonly sizeBytes: number
  private target: { local: true, vdisk: Vdisk } | { local: false, owner: string }

  constructor(private readonly rec: VdiskRecord, owner: string, private readonly engine: VdiskEngine) {
    this.name = rec.name
    this.sizeBytes = rec.sizeBytes
    this.target = { local: false, owner }
    this.snapshot = rec.name.split('@')[1]
  }

  /** the snapshot this device reads (export VDISK@SNAPSHOT), if it is one */
  private readonly snapshot: string | undefined

  private async run(op: string, offset: number, length: number, flags: { fua: boolean, noHole: boolean }, data?: Buffer): Promise<Buffer> {
    const clock = this.engine.time
    const deadline = clock.now() + ownerFailoverWaitMs
    for (;;) {
      const t = this.target
      try {
        if (t.local) return (await localOp(t.vdisk, op, offset, length, flags, data, this.snapshot)) ?? Buffer.alloc(0)
        return await this.engine.forward(t.owner, this.rec, op, offset, length, flags, data)
      } catch (e) {
        if (!(e instanceof PeerError)) throw e
        if (e.kind === 'errno') throw new DeviceError(e.errno ?? nbdErrno.EIO, e.message)
        if (e.kind !== 'unreachable' && e.kind !== 'timeout' && e.kind !== 'not-owner') throw new DeviceError(nbdErrno.EIO, e.message)
        if (clock.now() > deadline) {
          this.engine.log.error(`vDisk ${this.name}: owner unreachable and its lease did not expire in ${ownerFailoverWaitMs} ms`)
          throw new DeviceError(nbdErrno.EIO, 'owner unreachable')
        }
        await clock.sleep(500)
        try {
          this.target = await this.engine.route(this.rec)
          if (this.target.local) this.engine.log.warn(`vDisk ${this.name}: owner ${t.local ? 'here' : t.owner} gone; this CVM took ownership`)
        } catch (re) {
          // still owned by the dead CVM (lease not expired yet): keep waiting
          if (!(re instanceof DeviceError && re.errno === nbdErrno.EPERM)) throw re
        }
      }
    }
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.run('read', offset, length, { fua: false, noHole: false })
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    // The server lends the buffer only for this call: the bytes are on the wire (and acknowledged) before it returns.
    await this.run('write', offset, data.length, { fua, noHole: false }, data)
  }

  async flush(): Promise<void> {
    await this.run('flush', 0, 0, { fua: false, noHole: false })
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.run('trim', offset, length, { fua: false, noHole: false })
  }

  async writeZeroes(offset: number, length: number, noHole: boolean, fua: boolean): Promise<void> {
    await this.run('zero', offset, length, { fua, noHole })
  }

  async close(): Promise<void> { /* nothing held */ }
}

async function refuseWrite(): Promise<never> {
  throw new DeviceError(nbdErrno.EPERM, 'a snapshot is read-only')
}

/** a device that only reads: the NBD server advertises it read-only and refuses writes to it */
function readOnly(d: BlockDevice): BlockDevice {
  return Object.assign(d, { readOnly: true, write: refuseWrite, trim: refuseWrite, writeZeroes: refuseWrite, writeIfQuick: undefined })
}

async function localOp(v: Vdisk, op: string, offset: number, length: number, flags: { fua: boolean, noHole: boolean }, data?: Buffer, snapshot?: string): Promise<Buffer | undefined> {
  if (snapshot !== undefined) {
    if (op !== 'read') return refuseWrite()
    const out = Buffer.allocUnsafe(length)
    await v.readSnapshotInto(snapshot, offset, out)
    return out
  }
  switch (op) {
    case 'read': return v.read(offset, length)
    case 'write': await v.write(offset, data ?? Buffer.alloc(0), flags.fua); return undefined
    case 'flush': await v.flush(); return undefined
    case 'trim': await v.trim(offset, length); return undefined
    default: await v.writeZeroes(offset, length, flags.noHole, flags.fua); return undefined
  }
}

export { EgroupFile }
