import path from 'node:path'
import { DeviceError, nbdErrno } from '../../src/cvm/nbd/device.js'
import { egroupDirName } from '../../src/cvm/pool/disks.js'
import type { PeerPool } from '../../src/cvm/replication/client.js'
import { ops } from '../../src/cvm/replication/protocol.js'
import { MapWriter } from '../../src/cvm/vdisk/mapwriter.js'
import { loadLayout, vdiskBackend, type EgroupRecord, type MapValue, type OwnerEnv } from '../../src/cvm/vdisk/owner.js'
import { PlacementView, emptyRecords, viewPrefixes, type ViewKind, type ViewRecords } from '../../src/cvm/vdisk/placement.js'
import { LocalReplica, RemoteReplica, type Replica } from '../../src/cvm/vdisk/replica.js'
import { ReplicaStore } from '../../src/cvm/vdisk/replicastore.js'
import { Vdisk, type ExtentRef, type LoadedEgroup } from '../../src/cvm/vdisk/vdisk.js'
import { keys } from '../../src/lib/etcd.js'
import type { Logger } from '../../src/lib/log.js'
import type { DiskRecord, NodeRecord, NodeStatusRecord, VdiskRecord } from '../../src/lib/types.js'
import { SimEtcd } from './etcd.js'
import { SimNet } from './net.js'
import type { Prng } from './prng.js'
import { Proc, Scheduler } from './sched.js'
import { SimDisk, SimFiles } from './simdisk.js'

/** how long a dead process's lease (its node status, the vDisks it owns) lives on: nodeHeartbeatTtlSec */
export const leaseTtlMs = 10_000
const logKeep = 400

/** One node: its disk (outlives its processes) and the CVM process running now, if any. */
export class SimNode {
  readonly disk: SimDisk
  /** two disks (directories on the one simulated device): the curator's balancing moves replicas between them */
  readonly diskRecs: DiskRecord[]
  proc: Proc | undefined
  files: SimFiles | undefined
  store: ReplicaStore | undefined
  gen = 0
  readonly freeBytes: number

  constructor(readonly name: string, prng: Prng) {
    this.disk = new SimDisk(name, `/sim/${name}`)
    this.diskRecs = [0, 1].map((i) => ({ id: `${name}-d${i}`, node: name, path: `/sim/${name}/disk${i}`, addedAt: '2024-01-01T00:00:00.000Z' }))
    this.freeBytes = prng.range(100, 900) * 1024 * 1024 * 1024
  }

  /** the first disk, where new extent groups go (both report the same free space: placement takes the first) */
  get diskRec(): DiskRecord {
    return this.diskRecs[0]!
  }

  get up(): boolean {
    return this.proc?.alive === true
  }
}

/** The owner of the vDisk: a loaded Vdisk in one node's process, as VdiskEngine holds it. */
export interface Owner {
  node: string
  proc: Proc
  value: string
  view: PlacementView
  vdisk: Vdisk
}

/**
 * The simulated cluster: nodes with disks and processes, the network between them, the metadata
 * store, and the owner of one vDisk. The owner is made the way VdiskEngine.doLoad makes it: take
 * the owner key (mirrored: etcd transactions), read the extent group records and the block map,
 * then the real loadLayout, MapWriter, Vdisk and vdiskBackend of src/cvm/vdisk.
 */
export class SimCluster {
  readonly sched = new Scheduler()
  readonly net: SimNet
  readonly etcd: SimEtcd
  readonly nodes = new Map<string, SimNode>()
  owner: Owner | undefined
  readonly logs: string[] = []
  /** placement views that follow etcd (an owner's, from the start of its load) */
  private views: Array<{ proc: Proc, view: PlacementView }> = []
  private readonly diskPrng: Prng
  private readonly crashPrng: Prng

  constructor(prng: Prng, nodeNames: string[], readonly rec: VdiskRecord) {
    this.diskPrng = prng.fork('disk')
    this.crashPrng = prng.fork('crash')
    this.etcd = new SimEtcd(this.sched, prng.fork('etcd'), leaseTtlMs)
    this.net = new SimNet(this.sched, prng.fork('net'), (n) => {
      const node = this.nodes.get(n)
      return { proc: node?.proc, store: node?.store, log: this.logger(node?.proc) }
    })
    const nodePrng = prng.fork('nodes')
    for (const n of nodeNames) {
      const node = new SimNode(n, nodePrng)
      this.nodes.set(n, node)
      const nr: NodeRecord = { name: n, address: `10.0.0.${this.nodes.size}`, apiPort: 9440, nbdPort: 10809, dataPort: 10810, joinedAt: '2024-01-01T00:00:00.000Z' }
      this.etcd.seed(keys.node(n), JSON.stringify(nr))
      for (const d of node.diskRecs) this.etcd.seed(keys.disk(d.id), JSON.stringify(d))
    }
    this.etcd.seed(keys.vdisk(rec.id), JSON.stringify(rec))
    this.etcd.onChange = (key, value, revision) => this.watch(key, value, revision)
    for (const n of nodeNames) this.startNode(n)
  }

  /** every log line as it is written (verbose runs) */
  echo: ((line: string) => void) | undefined

  log(proc: Proc | undefined, level: string, msg: string): void {
    const line = `${(this.sched.now).toFixed(3).padStart(11)} ms ${proc?.name ?? 'sim'} ${level} ${msg}`
    this.echo?.(`    | ${line}`)
    this.logs.push(line)
    if (this.logs.length > logKeep * 2) this.logs.splice(0, this.logs.length - logKeep)
  }

  logger(proc: Proc | undefined): Logger {
    return {
      info: (m) => this.log(proc, 'INFO', m),
      warn: (m) => this.log(proc, 'WARN', m),
      error: (m) => this.log(proc, 'ERROR', m),
    }
  }

  /** a node's CVM starts: a new process, an empty open file table, its status record (leased) */
  startNode(name: string): Proc {
    const node = this.nodes.get(name)!
    if (node.up) throw new Error(`node ${name} is already running`)
    const proc = new Proc(name, ++node.gen)
    node.proc = proc
    node.files = new SimFiles(node.disk, proc, this.sched, this.diskPrng)
    node.store = new ReplicaStore({ localDisks: async () => [...node.diskRecs], log: this.logger(proc), files: node.files })
    const st: NodeStatusRecord = {
      name, at: '2024-01-01T00:00:00.000Z', daemons: [],
      disks: Object.fromEntries(node.diskRecs.map((d) => [d.id, { capacityBytes: 1024 ** 4, freeBytes: node.freeBytes, usedBytes: 0, dev: 1 }])),
    }
    this.etcd.seed(keys.nodeStatus(name), JSON.stringify(st), proc)
    this.log(proc, 'SIM', 'process started')
    return proc
  }

  /**
   * A node's CVM dies. `kill`: the process only (the page cache outlives it; writes it had in the
   * pool land or not); `power`: the machine too (unsynced data is kept, lost or torn).
   */
  crashNode(name: string, kind: 'kill' | 'power'): string {
    const node = this.nodes.get(name)!
    const proc = node.proc
    if (proc === undefined || !proc.alive) return `node ${name} is already down`
    proc.alive = false
    node.files?.killed()
    let what = `node ${name}: CVM process ${proc.name} killed`
    if (kind === 'power') what = `node ${name} lost power (${node.disk.powerLoss(this.crashPrng)})`
    node.files = undefined
    node.store = undefined
    this.net.died(proc)
    this.etcd.died(proc)
    if (this.owner?.proc === proc) this.owner = undefined
    this.log(proc, 'SIM', what)
    return what
  }

  // ---- the owner's placement view follows etcd ----

  private viewKey(key: string): { kind: ViewKind, name: string } | undefined {
    for (const kind of ['nodes', 'statuses', 'disks'] as const) {
      if (key.startsWith(viewPrefixes[kind])) return { kind, name: key.slice(viewPrefixes[kind].length) }
    }
    return undefined
  }

  private watch(key: string, value: string | undefined, revision: number): void {
    const k = this.viewKey(key)
    if (k === undefined) return
    this.views = this.views.filter((w) => w.proc.alive)
    for (const { proc, view } of this.views) {
      // a watch event reaches the owner a little later
      this.sched.at(1, () => {
        if (value === undefined) view.delete(k.kind, k.name, revision)
        else view.put(k.kind, k.name, JSON.parse(value) as never, revision)
      }, proc)
    }
  }

  /** every record placement decides from, read from the store (with its latency), and the revision read */
  private async viewRecords(proc: Proc): Promise<ViewRecords & { revision: number }> {
    const out = emptyRecords()
    // one snapshot: the three prefixes of one read
    const { kv: all, revision } = await this.etcd.snapshot(proc, '/tess/')
    for (const kind of ['nodes', 'statuses', 'disks'] as const) {
      for (const [k, v] of all) if (k.startsWith(viewPrefixes[kind])) (out[kind] as Map<string, unknown>).set(k.slice(viewPrefixes[kind].length), JSON.parse(v))
    }
    return { ...out, revision }
  }

  // ---- the owner ----

  /** what owner.ts needs, for an owner in `proc` on `node` (VdiskEngine gives the same over etcd and the data port) */
  private ownerEnv(node: SimNode, proc: Proc, value: string, view: PlacementView): OwnerEnv {
    const log = this.logger(proc)
    const peers = this.net.pool(proc)
    const store = node.store!
    return {
      log,
      view,
      replicaFor: (vdiskId, egid, n, diskId): Replica => (n === node.name
        ? new LocalReplica(n, diskId, egid, vdiskId, store)
        : new RemoteReplica(n, diskId, egid, vdiskId, peers as unknown as PeerPool)),
      pickDiskOn: async (n) => {
        if (n === node.name) return store.pickDisk()
        const f = await (await peers.get(n)).request(ops.pickDisk, {})
        return String(f.json.diskId)
      },
      newEgroupId: async () => {
        // the id counter (IdAllocator hands out blocks of ids by compare-and-swap; one at a time here)
        for (;;) {
          const cur = await this.etcd.get(proc, keys.idCounter('egroup'))
          const next = String(Number(cur ?? '0') + 1)
          const r = await this.etcd.txn(proc, { key: keys.idCounter('egroup'), value: cur }, [{ kind: 'put', key: keys.idCounter('egroup'), value: next }])
          if (r.succeeded) return next
        }
      },
      getEgroupRecord: async (vdiskId, egid) => {
        const v = await this.etcd.get(proc, keys.egroup(vdiskId, egid))
        return v === undefined ? undefined : JSON.parse(v) as EgroupRecord
      },
      putEgroupRecords: async (rec, ers) => {
        // fenced on ownership, one transaction (VdiskEngine.putEgroupRecords)
        const res = await this.etcd.txn(proc, { key: keys.vdiskOwner(rec.id), value }, ers.map((er) => ({ kind: 'put', key: keys.egroup(rec.id, er.id), value: JSON.stringify(er) })))
        if (!res.succeeded) throw new DeviceError(nbdErrno.EIO, `vDisk ${rec.name} is no longer owned by this CVM`)
      },
    }
  }

  /** VdiskEngine.acquireOwnership, over the simulated store; waits while another node's lease lives */
  private async acquireOwnership(proc: Proc, value: string): Promise<void> {
    const key = keys.vdiskOwner(this.rec.id)
    const clock = this.sched.clock(proc)
    for (;;) {
      const created = await this.etcd.txn(proc, { key, value: undefined }, [{ kind: 'put', key, value, lease: proc }])
      if (created.succeeded) return
      const cur = await this.etcd.get(proc, key)
      if (cur === value) return
      if (cur !== undefined && cur.startsWith(`${proc.node}/`)) {
        const res = await this.etcd.txn(proc, { key, value: cur }, [{ kind: 'put', key, value, lease: proc }])
        if (res.succeeded) return
      }
      // owned by a CVM of another node: its lease expires leaseTtlMs after it died
      await clock.sleep(500)
    }
  }

  /** load the vDisk in the running process of `nodeName` (VdiskEngine.doLoad); retried while etcd fails */
  async loadOwner(nodeName: string): Promise<Owner> {
    const node = this.nodes.get(nodeName)!
    const proc = node.proc!
    const value = `${nodeName}/${proc.gen}`
    const clock = this.sched.clock(proc)
    const log = this.logger(proc)
    const view = new PlacementView({ self: nodeName, log, read: () => this.viewRecords(proc), clock })
    this.views.push({ proc, view })
    for (let attempt = 0; ; attempt++) {
      try {
        const snap = await this.viewRecords(proc)
        for (const kind of ['nodes', 'statuses', 'disks'] as const) view.reset(kind, snap[kind] as never, snap.revision)
        await this.acquireOwnership(proc, value)
        const [egs, mapAll] = await Promise.all([this.etcd.list(proc, keys.egroupsOf(this.rec.id)), this.etcd.list(proc, keys.vdiskMapPrefix(this.rec.id))])
        const egRecs = [...egs.values()].map((v) => JSON.parse(v) as EgroupRecord)
        const prefix = keys.vdiskMapPrefix(this.rec.id)
        const entries = [...mapAll].map(([k, v]): [number, MapValue] => [parseInt(k.slice(prefix.length), 16), JSON.parse(v) as MapValue])
        const env = this.ownerEnv(node, proc, value, view)
        const { map, egroups } = await loadLayout(env, this.rec, egRecs, entries)
        const mapWriter = new MapWriter(this.etcd.client(proc), keys.vdiskOwner(this.rec.id), () => value)
        const vdisk = new Vdisk(this.rec.id, this.rec.name, this.rec.sizeBytes, map, egroups, vdiskBackend(env, this.rec, mapWriter, (vb) => keys.vdiskMap(this.rec.id, vb), (vb, e) => keys.vdiskHist(this.rec.id, vb, e)))
        log.info(`vDisk ${this.rec.name} loaded: ${map.size} extent(s) in ${egroups.size} extent group(s)`)
        this.owner = { node: nodeName, proc, value, view, vdisk }
        return this.owner
      } catch (e) {
        if (attempt >= 40) throw e
        log.warn(`load of vDisk ${this.rec.name} failed (${String(e)}); retrying`)
        await clock.sleep(250)
      }
    }
  }

  // ---- introspection for the invariant checks ----

  static mapOf(v: Vdisk): Map<number, ExtentRef> {
    return (v as unknown as { map: Map<number, ExtentRef> }).map
  }

  static egroupsOf(v: Vdisk): Map<string, LoadedEgroup> {
    return (v as unknown as { egroups: Map<string, LoadedEgroup> }).egroups
  }

  /** the committed block map (from the store itself, no latency) */
  committedMap(): Map<number, MapValue> {
    const prefix = keys.vdiskMapPrefix(this.rec.id)
    const out = new Map<number, MapValue>()
    for (const [k, v] of this.etcd.kv) if (k.startsWith(prefix)) out.set(parseInt(k.slice(prefix.length), 16), JSON.parse(v) as MapValue)
    return out
  }

  egroupRecords(): Map<string, EgroupRecord> {
    const prefix = keys.egroupsOf(this.rec.id)
    const out = new Map<string, EgroupRecord>()
    for (const [k, v] of this.etcd.kv) if (k.startsWith(prefix)) out.set(k.slice(prefix.length), JSON.parse(v) as EgroupRecord)
    return out
  }

  egroupFile(node: string, egid: string, diskId: string): string {
    const n = this.nodes.get(node)!
    const d = n.diskRecs.find((x) => x.id === diskId) ?? n.diskRec
    return path.join(d.path, egroupDirName, `${egid}.eg`)
  }
}
