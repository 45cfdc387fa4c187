import path from 'node:path'
import type { Etcd3 } from 'etcd3'
import { describe, expect, it } from 'vitest'
import { DeviceError, nbdErrno, type BlockDevice } from '../../src/cvm/nbd/device.js'
import { egroupDirName } from '../../src/cvm/pool/disks.js'
import type { PeerPool } from '../../src/cvm/replication/client.js'
import { PeerError, ops, type Op } from '../../src/cvm/replication/protocol.js'
import { errorBody, serveReplicaOp } from '../../src/cvm/replication/server.js'
import { VdiskEngine, ownerFailoverWaitMs, type EgroupRecord } from '../../src/cvm/vdisk/engine.js'
import { PlacementView, readViewRecords, viewKinds } from '../../src/cvm/vdisk/placement.js'
import { ReplicaStore } from '../../src/cvm/vdisk/replicastore.js'
import { VdiskService } from '../../src/cvm/vdisk/service.js'
import type { NodeCall } from '../../src/lib/rpc/node-ops.js'
import { TessError } from '../../src/lib/errors.js'
import { keys } from '../../src/lib/etcd.js'
import { nbdOpenRetryMs, nodeHeartbeatTtlSec } from '../../src/lib/limits.js'
import type { Logger } from '../../src/lib/log.js'
import type { DiskRecord, NodeRecord, NodeStatusRecord, VdiskRecord } from '../../src/lib/types.js'
import { fakeClock } from '../helpers/clock.js'
import { waitFor } from '../helpers/cluster.js'
import { MemEtcd } from '../helpers/memetcd.js'
import { MemFiles } from '../helpers/memfiles.js'

const MiB = 1024 * 1024
const GiB = 1024 * MiB
const leaseTtlMs = nodeHeartbeatTtlSec * 1000

/** One node: its disks (files outlive its CVM), and the CVM running now (store, view, engine). */
interface TestNode {
  name: string
  files: MemFiles
  disks: DiskRecord[]
  /** free bytes of each disk (by path), what the store's disk pick sees */
  free: Map<string, number>
  etcd: Etcd3
  store: ReplicaStore
  view: PlacementView
  engine: VdiskEngine
  up: boolean
  incarnation: number
  lines: string[]
}

/**
 * The real VdiskEngine (with its real ReplicaStore, PlacementView and, where used, VdiskService) of
 * every node of a cluster, over an in-memory etcd (test/helpers/memetcd.ts), in-memory disks
 * (test/helpers/memfiles.ts), a data port that calls the other node's store and engine directly,
 * and one fake clock whose sleeps advance it at once.
 */
class Cluster {
  readonly clock = fakeClock()
  readonly etcd = new MemEtcd(this.clock)
  readonly nodes = new Map<string, TestNode>()
  /** pairs of nodes that cannot reach each other over the data port */
  readonly cut = new Set<string>()
  poolFreeBytes = 100 * GiB
  /** the cluster key (encrypted vDisks), held by the CVMs of the nodes in `keyOn` */
  readonly clusterKey = Buffer.alloc(32, 0x5a)
  readonly keyOn = new Set<string>()

  constructor(spec: Record<string, { free?: number, disks?: number }>) {
    let i = 0
    for (const [name, s] of Object.entries(spec)) {
      i++
      const nr: NodeRecord = { name, address: `10.0.0.${i}`, apiPort: 9440, nbdPort: 10809, dataPort: 10810, joinedAt: '2026-01-01T00:00:00Z' }
      this.etcd.seed(keys.node(name), JSON.stringify(nr))
      const disks: DiskRecord[] = []
      for (let d = 0; d < (s.disks ?? 1); d++) disks.push({ id: `${name}-d${d}`, node: name, path: `/data/${name}/disk${d}`, addedAt: '2026-01-01T00:00:00Z' })
      for (const d of disks) this.etcd.seed(keys.disk(d.id), JSON.stringify(d))
      this.setStatus(name, s.free ?? 10 * GiB, disks)
      const files = new MemFiles()
      const free = new Map(disks.map((d) => [d.path, 1024 ** 4]))
      files.freeBytes = (dir: string) => free.get(dir) ?? 0
      this.nodes.set(name, { name, files, disks, free, up: false, incarnation: 0, lines: [] } as unknown as TestNode)
    }
  }

  setStatus(name: string, freeBytes: number, disks = this.node(name).disks): void {
    const st: NodeStatusRecord = {
      name, at: '2026-01-01T00:00:00Z', daemons: [],
      disks: Object.fromEntries(disks.map((d) => [d.id, { capacityBytes: 4 * freeBytes, freeBytes: freeBytes / disks.length, usedBytes: 0, dev: 1 }])),
    }
    this.etcd.seed(keys.nodeStatus(name), JSON.stringify(st))
  }

  node(name: string): TestNode {
    const n = this.nodes.get(name)
    if (!n) throw new Error(`no node ${name}`)
    return n
  }

  /** what the view watches would bring: every running view re-reads the records */
  async syncViews(): Promise<void> {
    for (const n of this.nodes.values()) if (n.up) await syncView(n.view, n.etcd, this.etcd.revision)
  }

  /** start (or restart) a node's CVM: a new store over the same disks, a new view, a new engine */
  async start(name: string): Promise<TestNode> {
    const n = this.node(name)
    n.up = true
    n.incarnation++
    n.lines = []
    const log: Logger = { info: (m) => n.lines.push(`INFO ${m}`), warn: (m) => n.lines.push(`WARN ${m}`), error: (m) => n.lines.push(`ERROR ${m}`) }
    n.etcd = this.etcd.client(name)
    n.store = new ReplicaStore({ localDisks: async () => n.disks, log, files: n.files })
    n.view = new PlacementView({ self: name, log, read: () => readViewRecords(n.etcd), clock: this.clock })
    await syncView(n.view, n.etcd, this.etcd.revision)
    const incarnation = n.incarnation
    n.engine = new VdiskEngine(n.etcd, {
      nodeName: name, log, localDisks: async () => n.disks, store: n.store, peers: this.peers(name), view: n.view,
      clock: this.clock, files: n.files, random: (bytes) => Buffer.alloc(bytes, incarnation),
      clusterKey: () => (this.keyOn.has(name) ? this.clusterKey : undefined),
    })
    await n.engine.start()
    return n
  }

  /** a node's CVM dies: unreachable, its leases expire their TTL from now (its status record goes at once) */
  async kill(name: string): Promise<void> {
    this.node(name).up = false
    this.etcd.died(name)
    this.etcd.remove(keys.nodeStatus(name))
    await this.syncViews()
  }

  /** the data port of `from`: requests served by the other node's store (replica ops) or engine (vDisk I/O) */
  peers(from: string): PeerPool {
    const request = async (to: string, op: Op, json: Record<string, unknown>, data?: Buffer): Promise<{ json: Record<string, unknown>, data: Buffer }> => {
      const target = this.nodes.get(to)
      if (!target?.up) throw new PeerError('unreachable', `node ${to}: connection refused: its CVM is not running`)
      if (this.cut.has(`${from}>${to}`)) throw new PeerError('timeout', `node ${to}: no answer`)
      const j = JSON.parse(JSON.stringify(json)) as Record<string, unknown>
      const payload = data === undefined ? Buffer.alloc(0) : Buffer.from(data)
      try {
        if (op === ops.vdiskIo) {
          // as DataServer.handle passes it
          const out = await target.engine.io(String(j.name), String(j.op), Number(j.offset), Number(j.length), { fua: j.fua === true, noHole: j.noHole === true }, payload, typeof j.id === 'string' ? j.id : undefined)
          return { json: {}, data: out === undefined ? Buffer.alloc(0) : Buffer.from(out) }
        }
        if (op === ops.vdiskEvacuate) return { json: { moved: await target.engine.evacuate(String(j.name), String(j.node)) }, data: Buffer.alloc(0) }
        const res = await serveReplicaOp(target.store, op, j, payload)
        return { json: res.json, data: res.data === undefined ? Buffer.alloc(0) : Buffer.from(res.data) }
      } catch (e) {
        const body = errorBody(e, { info: () => undefined, warn: () => undefined, error: () => undefined })
        throw new PeerError(body.kind ?? 'internal', `node ${to}: ${body.message ?? 'error'}`, body.errno)
      }
    }
    const pool = {
      peek: () => undefined,
      get: async (to: string) => ({ request: (op: Op, json: Record<string, unknown>, data?: Buffer) => request(to, op, json, data) }),
      suspect: (to: string) => !(this.nodes.get(to)?.up ?? false),
      closeAll: () => undefined,
    }
    return pool as unknown as PeerPool
  }

  service(name: string): VdiskService {
    const n = this.node(name)
    const svc = new VdiskService(n.etcd, {
      nbdAddress: '10.0.0.1', nbdPort: 10809, keys: { current: this.keyOn.has(name) ? this.clusterKey : undefined },
      pool: async () => ({ capacityBytes: 4 * this.poolFreeBytes, usedBytes: 0, freeBytes: this.poolFreeBytes, reservedBytes: 0, otherBytes: 3 * this.poolFreeBytes, disks: [] }),
      data: n.engine,
    })
    // the node operations a delete calls, served by the other nodes' engines as main.ts wires them
    const call = (async (to: string, op: string, req: { name?: string, id?: string }) => {
      const target = this.nodes.get(to)
      if (!target?.up || this.cut.has(`${name}>${to}`)) throw new TessError('TESS_E_UNREACHABLE', `the CVM of node ${to} does not answer`, 'check the node')
      if (op === 'vdisk.clients') return { connections: target.engine.connections(req.name!) }
      if (op === 'vdisk.deleted') return { shut: await target.engine.shutDeleted(req.id!) }
      throw new Error(`node operation ${op} is not served in this test`)
    }) as unknown as NodeCall
    svc.others = { upNodes: () => [...this.nodes.keys()].filter((x) => x !== name && this.nodes.get(x)!.up), call }
    return svc
  }

  /** the records of a vDisk's extent groups */
  egroups(id: string): EgroupRecord[] {
    return this.etcd.keys(keys.egroupsOf(id)).map((k) => this.etcd.json<EgroupRecord>(k)!)
  }

  /** extent group files (name ending .eg) on a node's disks */
  egroupFiles(name: string): string[] {
    return [...this.node(name).files.files.keys()].filter((f) => f.endsWith('.eg')).sort()
  }

  fileOf(node: string, diskId: string, egid: string): string {
    const d = this.node(node).disks.find((x) => x.id === diskId)!
    return path.join(d.path, egroupDirName, `${egid}.eg`)
  }
}

async function syncView(view: PlacementView, etcd: Etcd3, revision: number): Promise<void> {
  const r = await readViewRecords(etcd)
  for (const kind of viewKinds) view.reset(kind, r[kind] as never, revision)
}

/** a 3-node cluster (n2 with more free space than n3), every CVM started, and a vDisk made through n1's control plane */
async function cluster3(rf = 2, spec: Record<string, { free?: number, disks?: number }> = { n1: { free: 5 * GiB }, n2: { free: 9 * GiB }, n3: { free: 7 * GiB } }) {
  const c = new Cluster(spec)
  for (const n of Object.keys(spec)) await c.start(n)
  const info = await c.service('n1').create('vd', 64 * MiB, rf)
  return { c, id: info.id }
}

function pattern(seed: number, len = MiB): Buffer {
  const b = Buffer.alloc(len)
  for (let i = 0; i < len; i += 4) b.writeUInt32LE((seed * 2654435761 + i) >>> 0, i)
  return b
}

async function openDev(n: TestNode, name = 'vd'): Promise<BlockDevice> {
  const d = await n.engine.open(name)
  if (d === undefined) throw new Error(`vDisk ${name} does not exist`)
  return d
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p
  } catch (e) {
    if (e instanceof TessError) return e.code
    throw e
  }
  throw new Error('no error')
}

async function errnoOf(p: Promise<unknown>): Promise<{ errno: number, message: string }> {
  try {
    await p
  } catch (e) {
    if (e instanceof DeviceError) return { errno: e.errno, message: e.message }
    throw e
  }
  throw new Error('no error')
}

describe('VdiskEngine with VdiskService: create, list, resize, delete', () => {
  it('create writes the name and the record; the engine lists it as an NBD export', async () => {
    const { c, id } = await cluster3(2)
    expect(c.etcd.value(keys.vdiskName('vd'))).toBe(id)
    const rec = c.etcd.json<VdiskRecord>(keys.vdisk(id))!
    expect(rec).toMatchObject({ id, name: 'vd', sizeBytes: 64 * MiB, rf: 2, state: 'ready' })
    expect(rec.wrappedKey).toBeUndefined()
    // no owner and no extent group before the first open and write
    expect(c.etcd.value(keys.vdiskOwner(id))).toBeUndefined()
    expect(c.egroups(id)).toEqual([])
    await c.service('n1').create('other', 8 * MiB, 1)
    // only ready vDisks are exports
    const dying = { ...rec, id: '999', name: 'dying', state: 'deleting' }
    c.etcd.seed(keys.vdisk('999'), JSON.stringify(dying))
    expect(await c.node('n2').engine.list()).toEqual([
      { name: 'vd', description: `Tessera vDisk vd (id ${id}, RF 2)` },
      { name: 'other', description: expect.stringContaining('RF 1') as unknown as string },
    ])
    expect(await c.node('n2').engine.open('dying')).toBeUndefined()
    expect(await c.node('n2').engine.open('nope')).toBeUndefined()
  })

  it('refuses a bad size, a bad RF, more replicas than nodes, too little space and a taken name, with codes, writing nothing', async () => {
    const c = new Cluster({ n1: {}, n2: {} })
    await c.start('n1')
    const svc = c.service('n1')
    await svc.create('taken', 8 * MiB, 1)
    const before = c.etcd.dump()
    expect(await codeOf(svc.create('a', 1024, 1))).toBe('TESS_E_INVALID') // below the minimum
    expect(await codeOf(svc.create('a', 8 * MiB + 100, 1))).toBe('TESS_E_INVALID') // not whole sectors
    expect(await codeOf(svc.create('a', 2 ** 51, 1))).toBe('TESS_E_INVALID') // above the maximum
    expect(await codeOf(svc.create('a', 8 * MiB, 0))).toBe('TESS_E_INVALID')
    expect(await codeOf(svc.create('a', 8 * MiB, 4))).toBe('TESS_E_INVALID')
    expect(await codeOf(svc.create('a', 8 * MiB, 1.5))).toBe('TESS_E_INVALID')
    expect(await codeOf(svc.create('a', 8 * MiB, 3))).toBe('TESS_E_TOO_FEW_NODES') // two nodes
    c.poolFreeBytes = 15 * MiB
    expect(await codeOf(svc.create('a', 8 * MiB, 2))).toBe('TESS_E_CAPACITY') // 16 MiB asked
    c.poolFreeBytes = 100 * GiB
    expect(await codeOf(svc.create('taken', 8 * MiB, 1))).toBe('TESS_E_EXISTS')
    expect(c.etcd.dump()).toEqual(before)
    // the same checks pass for a good request
    await svc.create('a', 8 * MiB, 2)
    expect(c.etcd.value(keys.vdiskName('a'))).toBeDefined()
  })

  it('an etcd failure while creating is TESS_E_UNREACHABLE and leaves neither name nor record', async () => {
    const c = new Cluster({ n1: {} })
    await c.start('n1')
    const svc = c.service('n1')
    c.etcd.failWhen((x) => x.kind === 'txn' && x.key === keys.vdiskName('a'))
    const err = await svc.create('a', 8 * MiB, 1).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(TessError)
    expect((err as TessError).code).toBe('TESS_E_UNREACHABLE')
    expect((err as TessError).message).toContain('cannot create the vDisk')
    expect(c.etcd.keys(keys.vdiskNamesPrefix)).toEqual([])
    expect(c.etcd.keys(keys.vdisksPrefix)).toEqual([])
    c.etcd.failWhen((x) => x.kind === 'range' && x.key === keys.nodesPrefix)
    expect(await codeOf(svc.create('a', 8 * MiB, 1))).toBe('TESS_E_UNREACHABLE')
    expect(c.etcd.keys(keys.vdisksPrefix)).toEqual([])
    // etcd back: the create goes through
    await svc.create('a', 8 * MiB, 1)
    expect(c.etcd.keys(keys.vdisksPrefix)).toHaveLength(1)
  })

  it('resize grows the record and the loaded vDisk; a shrink or an etcd failure changes nothing', async () => {
    const { c, id } = await cluster3(1)
    const dev = await openDev(c.node('n1'))
    expect(dev.sizeBytes).toBe(64 * MiB)
    const svc = c.service('n1')
    await svc.resize('vd', 128 * MiB)
    expect(c.etcd.json<VdiskRecord>(keys.vdisk(id))!.sizeBytes).toBe(128 * MiB)
    await new Promise((r) => setImmediate(r)) // resized() updates the loaded vDisk when its load promise settles
    expect(dev.sizeBytes).toBe(128 * MiB)
    // the new space is usable
    await dev.write(100 * MiB, pattern(1), true)
    expect((await dev.read(100 * MiB, MiB)).equals(pattern(1))).toBe(true)
    expect(await codeOf(svc.resize('vd', 64 * MiB))).toBe('TESS_E_INVALID')
    c.etcd.failWhen((x) => x.kind === 'txn' && x.key === keys.vdisk(id))
    expect(await codeOf(svc.resize('vd', 256 * MiB))).toBe('TESS_E_UNREACHABLE')
    await new Promise((r) => setImmediate(r))
    expect(c.etcd.json<VdiskRecord>(keys.vdisk(id))!.sizeBytes).toBe(128 * MiB)
    expect(dev.sizeBytes).toBe(128 * MiB)
  })

  it('delete removes every replica file, the block map, the extent group records, the owner and the record', async () => {
    const { c, id } = await cluster3(2)
    const dev = await openDev(c.node('n1'))
    await dev.write(0, pattern(1), true)
    await dev.write(40 * MiB, pattern(2), true)
    const egs = c.egroups(id)
    expect(egs.length).toBeGreaterThan(0)
    expect(c.etcd.keys(keys.vdiskMapPrefix(id))).toHaveLength(2)
    for (const eg of egs) for (const r of eg.replicas) expect(c.node(r.node).files.exists(c.fileOf(r.node, r.diskId, eg.id))).toBe(true)
    // through the owner's control plane
    await c.service('n1').delete('vd', false)
    for (const n of ['n1', 'n2', 'n3']) expect(c.egroupFiles(n)).toEqual([])
    for (const prefix of [keys.egroupsOf(id), keys.vdiskMapPrefix(id), keys.vdiskOwner(id), keys.vdisk(id), keys.vdiskName('vd')]) expect(c.etcd.keys(prefix)).toEqual([])
    // the owner (n1) stops serving it
    expect((await errnoOf(dev.read(0, 4096))).errno).toBe(nbdErrno.ESHUTDOWN)
  })

  it('delete with a replica node down leaves that node\'s files, which its CVM removes as orphans when it starts', async () => {
    const { c, id } = await cluster3(2)
    const dev = await openDev(c.node('n1'))
    await dev.write(0, pattern(1), true)
    expect(c.egroups(id).every((eg) => eg.replicas.some((r) => r.node === 'n2'))).toBe(true) // n2: the most free space
    const onN2 = c.egroupFiles('n2')
    expect(onN2.length).toBeGreaterThan(0)
    await c.kill('n2')
    await c.service('n1').delete('vd', false)
    expect(c.etcd.keys(keys.egroupsOf(id))).toEqual([])
    expect(c.egroupFiles('n1')).toEqual([])
    expect(c.egroupFiles('n2')).toEqual(onN2)
    expect(c.node('n1').lines.some((l) => l.includes('stays until that node is back'))).toBe(true)
    await c.start('n2')
    expect(c.egroupFiles('n2')).toEqual([])
    const removed = c.node('n2').lines.filter((l) => l.includes('gc: removed extent group file'))
    for (const f of onN2) expect(removed.some((l) => l.includes(`${f}: no record names it`))).toBe(true)
  })

  it('an etcd failure in the middle of a delete is TESS_E_UNREACHABLE; the record stays \'deleting\' and finishDeletes completes it', async () => {
    const { c, id } = await cluster3(2)
    const dev = await openDev(c.node('n1'))
    await dev.write(0, pattern(1), true)
    c.etcd.failWhen((x) => x.kind === 'delete' && x.key === keys.egroupsOf(id))
    const err = await c.service('n1').delete('vd', false).catch((e: unknown) => e)
    expect((err as TessError).code).toBe('TESS_E_UNREACHABLE')
    expect((err as TessError).message).toContain('cannot delete extent group records')
    expect(c.etcd.json<VdiskRecord>(keys.vdisk(id))!.state).toBe('deleting')
    expect(c.etcd.value(keys.vdiskName('vd'))).toBeUndefined() // the name is free at once
    expect(c.etcd.keys(keys.egroupsOf(id)).length).toBeGreaterThan(0)
    expect(await c.node('n2').engine.open('vd')).toBeUndefined()
    expect(await c.service('n1').finishDeletes()).toBe(1)
    for (const prefix of [keys.egroupsOf(id), keys.vdiskMapPrefix(id), keys.vdiskOwner(id), keys.vdisk(id)]) expect(c.etcd.keys(prefix)).toEqual([])
  })

  it('delete through another node counts the NBD clients of every node and shuts the owner\'s copy', async () => {
    const { c, id } = await cluster3(2)
    const dev = await openDev(c.node('n2')) // n2 owns it: a client connected through n2
    await dev.write(0, pattern(3), true)
    c.node('n2').engine.connectionsOf = (name) => (name === 'vd' ? 1 : 0)
    const refused: unknown = await c.service('n1').delete('vd', false).catch((e: unknown) => e)
    expect(refused).toBeInstanceOf(TessError)
    expect([(refused as TessError).code, (refused as TessError).message]).toEqual(['TESS_E_CONFLICT', 'cannot delete vDisk "vd": 1 NBD connection is open (1 through node n2)'])
    expect(c.etcd.json<VdiskRecord>(keys.vdisk(id))!.state).toBe('ready')
    // a node that is up but does not answer: its clients are not known
    c.node('n2').engine.connectionsOf = () => 0
    c.cut.add('n1>n3')
    expect(await codeOf(c.service('n1').delete('vd', false))).toBe('TESS_E_UNREACHABLE')
    expect(c.etcd.json<VdiskRecord>(keys.vdisk(id))!.state).toBe('ready')
    c.cut.delete('n1>n3')
    await c.service('n1').delete('vd', false)
    expect(c.etcd.keys(keys.vdisk(id))).toEqual([])
    for (const n of ['n1', 'n2', 'n3']) expect(c.egroupFiles(n)).toEqual([])
    // the owner on n2 was told: its client gets ESHUTDOWN, not errors from files gone under it
    expect((await errnoOf(dev.read(0, 4096))).errno).toBe(nbdErrno.ESHUTDOWN)
  })

  it('delete refuses while NBD clients have the vDisk open, unless forced', async () => {
    const { c, id } = await cluster3(1)
    c.node('n1').engine.connectionsOf = (name) => (name === 'vd' ? 2 : 0)
    expect(await codeOf(c.service('n1').delete('vd', false))).toBe('TESS_E_CONFLICT')
    expect(c.etcd.json<VdiskRecord>(keys.vdisk(id))!.state).toBe('ready')
    await c.service('n1').delete('vd', true)
    expect(c.etcd.keys(keys.vdisk(id))).toEqual([])
  })
})

describe('VdiskEngine: ownership', () => {
  it('the first open takes ownership under this CVM\'s lease; another node forwards to the owner', async () => {
    const { c, id } = await cluster3(2)
    const d1 = await openDev(c.node('n1'))
    const owner = c.etcd.value(keys.vdiskOwner(id))!
    expect(owner).toBe(`n1/${Buffer.alloc(8, 1).toString('hex')}`)
    expect(c.etcd.leaseOf(keys.vdiskOwner(id))?.holder).toBe('n1')
    await d1.write(0, pattern(1), true)
    const d2 = await openDev(c.node('n2'))
    expect(c.etcd.value(keys.vdiskOwner(id))).toBe(owner)
    expect((await d2.read(0, MiB)).equals(pattern(1))).toBe(true)
    await d2.write(MiB, pattern(2), true)
    expect((await d1.read(MiB, MiB)).equals(pattern(2))).toBe(true)
    expect(d2.sizeBytes).toBe(64 * MiB)
    // n2 never loaded it: forwarded I/O is served by n1's engine
    expect(c.node('n2').lines.some((l) => l.includes('loaded'))).toBe(false)
    expect(c.node('n1').lines.filter((l) => l.includes('loaded'))).toHaveLength(1)
  })

  it('a client forwarded to a vDisk that was deleted does not reach a new vDisk of the same name', async () => {
    const { c, id } = await cluster3(2)
    const d1 = await openDev(c.node('n1'))
    await d1.write(0, pattern(1), true)
    await d1.close()
    const d3 = await openDev(c.node('n3')) // forwards to n1
    expect((await d3.read(0, MiB)).equals(pattern(1))).toBe(true)
    // deleted through n1, whose CVM has no NBD client of it, and made again
    await c.service('n1').delete('vd', false)
    const again = await c.service('n2').create('vd', 64 * MiB, 2)
    expect(again.id).not.toBe(id)
    // the old client, before and after the new vDisk is loaded at n1
    expect((await errnoOf(d3.write(0, pattern(3), true))).errno).toBe(nbdErrno.EINVAL)
    expect(c.etcd.value(keys.vdiskOwner(again.id))).toBeUndefined()
    const nd = await openDev(c.node('n1'))
    await nd.write(0, pattern(2), true)
    expect((await errnoOf(d3.write(0, pattern(3), true))).errno).toBe(nbdErrno.EINVAL)
    expect((await errnoOf(d3.read(0, MiB))).errno).toBe(nbdErrno.EINVAL)
    expect((await nd.read(0, MiB)).equals(pattern(2))).toBe(true)
    // forwarders of the new one are served
    const d2 = await openDev(c.node('n2'))
    expect((await d2.read(0, MiB)).equals(pattern(2))).toBe(true)
  })

  it('forwarded I/O: refused by a CVM that does not own the vDisk, EINVAL for a missing vDisk or past the end', async () => {
    const { c } = await cluster3(2)
    await openDev(c.node('n1'))
    const flags = { fua: false, noHole: false }
    const notOwner = await c.node('n2').engine.io('vd', 'read', 0, 4096, flags, Buffer.alloc(0)).catch((e: unknown) => e)
    expect(notOwner).toBeInstanceOf(PeerError)
    expect((notOwner as PeerError).kind).toBe('not-owner')
    expect((notOwner as PeerError).message).toContain('owned by n1')
    const missing = await c.node('n1').engine.io('nope', 'read', 0, 4096, flags, Buffer.alloc(0)).catch((e: unknown) => e) as PeerError
    expect([missing.kind, missing.errno]).toEqual(['errno', nbdErrno.EINVAL])
    const past = await c.node('n1').engine.io('vd', 'read', 64 * MiB - 4096, 8192, flags, Buffer.alloc(0)).catch((e: unknown) => e) as PeerError
    expect([past.kind, past.errno]).toEqual(['errno', nbdErrno.EINVAL])
    const unknownOp = await c.node('n1').engine.io('vd', 'frob', 0, 4096, flags, Buffer.alloc(0)).catch((e: unknown) => e) as PeerError
    expect(unknownOp.kind).toBe('invalid')
  })

  it('when the owner dies, a forwarder waits for its lease to expire (by the clock), then takes ownership and serves the data', async () => {
    const { c, id } = await cluster3(2)
    const d1 = await openDev(c.node('n1'))
    await d1.write(0, pattern(7), true)
    const d2 = await openDev(c.node('n2'))
    await c.kill('n1')
    const diedAt = c.clock.now()
    // while n1's lease lives, its owner key stays: every wait of the forwarder finds it there
    const ownerSeen: Array<[number, string | undefined]> = []
    c.etcd.onCall = (x) => { if (x.kind === 'get' && x.key === keys.vdiskOwner(id) && x.holder === 'n2') ownerSeen.push([c.clock.now() - diedAt, c.etcd.value(keys.vdiskOwner(id))]) }
    const got = await d2.read(0, MiB)
    expect(got.equals(pattern(7))).toBe(true)
    const waited = c.clock.now() - diedAt
    expect(waited).toBeGreaterThanOrEqual(leaseTtlMs)
    expect(waited).toBeLessThan(ownerFailoverWaitMs)
    expect(ownerSeen.filter(([t]) => t < leaseTtlMs).every(([, v]) => v?.startsWith('n1/') === true)).toBe(true)
    expect(c.etcd.value(keys.vdiskOwner(id))).toBe(`n2/${Buffer.alloc(8, 1).toString('hex')}`)
    expect(c.etcd.leaseOf(keys.vdiskOwner(id))?.holder).toBe('n2')
    expect(c.node('n2').lines.some((l) => l.includes('owner n1 gone; this CVM took ownership'))).toBe(true)
    // writes go on at n2, which now owns it
    await d2.write(2 * MiB, pattern(8), true)
    expect((await (await openDev(c.node('n3'))).read(2 * MiB, MiB)).equals(pattern(8))).toBe(true)
  })

  it('a forwarder whose owner is alive but unreachable gives up with EIO after ownerFailoverWaitMs, leaving the ownership alone', async () => {
    const { c, id } = await cluster3(2)
    await openDev(c.node('n1'))
    const d2 = await openDev(c.node('n2'))
    const owner = c.etcd.value(keys.vdiskOwner(id))
    c.cut.add('n2>n1')
    const start = c.clock.now()
    const err = await errnoOf(d2.read(0, 4096))
    expect(err.errno).toBe(nbdErrno.EIO)
    expect(err.message).toBe('owner unreachable')
    expect(c.clock.now() - start).toBeGreaterThan(ownerFailoverWaitMs)
    expect(c.clock.now() - start).toBeLessThan(ownerFailoverWaitMs + 1000)
    expect(c.etcd.value(keys.vdiskOwner(id))).toBe(owner)
  })

  it('a restarted CVM of the owner\'s node takes the ownership over from its earlier incarnation at once', async () => {
    const { c, id } = await cluster3(2)
    const d1 = await openDev(c.node('n1'))
    await d1.write(0, pattern(3), true)
    await c.kill('n1')
    const n1 = await c.start('n1')
    const t0 = c.clock.now()
    const d = await openDev(n1)
    expect(c.clock.now()).toBe(t0) // no wait for the old lease
    expect(c.etcd.value(keys.vdiskOwner(id))).toBe(`n1/${Buffer.alloc(8, 2).toString('hex')}`)
    expect(n1.lines.some((l) => l.includes('took ownership over from an earlier CVM of this node'))).toBe(true)
    expect((await d.read(0, MiB)).equals(pattern(3))).toBe(true)
    // the key is bound to the new lease: the old one expiring does not take it away
    await c.clock.sleep(leaseTtlMs + 1)
    expect(c.etcd.value(keys.vdiskOwner(id))).toBe(`n1/${Buffer.alloc(8, 2).toString('hex')}`)
  })

  it('a CVM that loses the race for the owner key forwards to the node that won it, at once: the open succeeds and the data reaches the owner', async () => {
    const { c, id } = await cluster3(2)
    // between n2 reading no owner and its create of the key, n3 takes it (an earlier CVM of n3:
    // n3's engine takes the key over from it at its first forwarded request)
    c.etcd.onCall = (x) => {
      if (x.holder === 'n2' && x.kind === 'txn' && x.key === keys.vdiskOwner(id) && c.etcd.value(keys.vdiskOwner(id)) === undefined) c.etcd.seed(keys.vdiskOwner(id), 'n3/abcd')
    }
    const t0 = c.clock.now()
    const d2 = await openDev(c.node('n2'))
    expect(c.clock.now()).toBe(t0)
    c.etcd.onCall = undefined
    await d2.write(0, pattern(7), true)
    expect((await d2.read(0, MiB)).equals(pattern(7))).toBe(true)
    // n2 never loaded it; n3 serves it and owns it now
    expect(c.node('n2').lines.some((l) => l.includes('loaded'))).toBe(false)
    expect(c.node('n3').lines.filter((l) => l.includes('loaded'))).toHaveLength(1)
    expect(c.etcd.value(keys.vdiskOwner(id))).toMatch(/^n3\//)
    const d3 = await openDev(c.node('n3'))
    expect((await d3.read(0, MiB)).equals(pattern(7))).toBe(true)
  })

  it('an encrypted vDisk does not open where there is no cluster key, and its ownership is not taken', async () => {
    const { c, id } = await cluster3(1)
    const rec = c.etcd.json<VdiskRecord>(keys.vdisk(id))!
    c.etcd.seed(keys.vdisk(id), JSON.stringify({ ...rec, wrappedKey: 'AAAA' }))
    const err = await errnoOf(c.node('n1').engine.open('vd'))
    expect(err.errno).toBe(nbdErrno.EPERM)
    expect(err.message).toContain('holds no cluster key')
    expect(c.etcd.value(keys.vdiskOwner(id))).toBeUndefined()
  })

  it('an encrypted vDisk opens where the cluster key is: its replicas hold ciphertext, and a CVM without the key forwards', async () => {
    const { c } = await cluster3(2)
    c.keyOn.add('n1')
    const { id } = await c.service('n1').create('secret', 64 * MiB, 2, true)
    expect(c.etcd.json<VdiskRecord>(keys.vdisk(id))!.wrappedKey).toBeDefined()
    const d1 = await openDev(c.node('n1'), 'secret')
    await d1.write(0, pattern(9), true)
    expect((await d1.read(0, MiB)).equals(pattern(9))).toBe(true)
    const eg = c.egroups(id)[0]!
    for (const r of eg.replicas) {
      const bytes = c.node(r.node).files.files.get(c.fileOf(r.node, r.diskId, eg.id))!.data
      expect(bytes.includes(pattern(9).subarray(0, 64))).toBe(false)
    }
    // n2 holds no key, but forwarding needs none
    const d2 = await openDev(c.node('n2'), 'secret')
    expect((await d2.read(0, MiB)).equals(pattern(9))).toBe(true)
  })

  it('a load that fails on etcd after taking the ownership is not cached: the open retries and loads it', async () => {
    const { c, id } = await cluster3(2)
    c.etcd.failWhen((x) => x.kind === 'range' && x.key === keys.egroupsOf(id))
    const before = c.clock.sleeps.length
    const dev = await openDev(c.node('n1'))
    expect(c.clock.sleeps.slice(before)).toEqual([250])
    expect(c.etcd.value(keys.vdiskOwner(id))?.startsWith('n1/')).toBe(true)
    await dev.write(0, pattern(1), true)
    expect((await dev.read(0, MiB)).equals(pattern(1))).toBe(true)
  })

  it('a lost lease stops I/O to every vDisk the CVM owns', async () => {
    const { c, id } = await cluster3(1)
    const dev = await openDev(c.node('n1'))
    await dev.write(0, pattern(1), true)
    c.etcd.loseLeases('n1')
    expect(c.etcd.value(keys.vdiskOwner(id))).toBeUndefined()
    await new Promise((r) => setImmediate(r)) // the loaded vDisks are shut as their load promises settle
    const err = await errnoOf(dev.read(0, 4096))
    expect(err.errno).toBe(nbdErrno.ESHUTDOWN)
    expect(c.node('n1').lines.some((l) => l.includes('ownership lease lost'))).toBe(true)
    // a new lease is granted (etcd answers again): the CVM owns and serves the vDisk again, under a new owner value
    await waitFor('the lease granted again', () => c.node('n1').lines.some((l) => l.includes('ownership lease granted again')) || undefined, 5000, 10)
    const again = await openDev(c.node('n1'))
    expect((await again.read(0, MiB)).equals(pattern(1))).toBe(true)
    expect(c.etcd.value(keys.vdiskOwner(id))).toMatch(/^n1\/.+\.1$/)
  })

  it('stop revokes the lease: the owner keys go at once, and another node takes the vDisk without waiting', async () => {
    const { c, id } = await cluster3(2)
    const d1 = await openDev(c.node('n1'))
    await d1.write(0, pattern(4), true)
    await c.node('n1').engine.stop()
    c.node('n1').up = false
    expect(c.etcd.value(keys.vdiskOwner(id))).toBeUndefined()
    const t0 = c.clock.now()
    const d2 = await openDev(c.node('n2'))
    expect(c.clock.now()).toBe(t0)
    expect(c.etcd.value(keys.vdiskOwner(id))?.startsWith('n2/')).toBe(true)
    expect((await d2.read(0, MiB)).equals(pattern(4))).toBe(true)
  })

  it('an idle owner hands the vDisk over to a node that opens it; a busy one (clients, recent forwarded I/O) keeps it', async () => {
    const { c, id } = await cluster3(2)
    const n1 = c.node('n1')
    const n2 = c.node('n2')
    n2.engine.requestRelease = async (owner, name) => (await c.node(owner).engine.releaseIfIdle(name)).released
    const d1 = await openDev(n1)
    await d1.write(0, pattern(5), true)
    // n1 has a client: n2 forwards
    const f = await openDev(n2)
    expect(c.etcd.value(keys.vdiskOwner(id))?.startsWith('n1/')).toBe(true)
    expect((await f.read(0, MiB)).equals(pattern(5))).toBe(true)
    await d1.close()
    // no client at n1 now, but forwarded I/O came just now
    const busy = await n1.engine.releaseIfIdle('vd')
    expect(busy.released).toBe(false)
    expect(busy.reason).toContain('forwarded I/O for it arrived')
    await openDev(n2)
    expect(c.etcd.value(keys.vdiskOwner(id))?.startsWith('n1/')).toBe(true)
    // idle long enough (by the clock): handed over
    await c.clock.sleep(3000)
    const d2 = await openDev(n2)
    expect(c.etcd.value(keys.vdiskOwner(id))?.startsWith('n2/')).toBe(true)
    expect((await d2.read(0, MiB)).equals(pattern(5))).toBe(true)
    expect((await errnoOf(d1.read(0, 4096))).errno).toBe(nbdErrno.ESHUTDOWN)
    // with an NBD client at n2 now, n2 keeps it
    const kept = await n2.engine.releaseIfIdle('vd')
    expect(kept).toEqual({ released: false, reason: 'NBD clients of node n2 have it open' })
  })

  it('an open retries etcd failures (by the clock) for nbdOpenRetryMs, then gives up', async () => {
    const { c } = await cluster3(1)
    const n1 = c.node('n1')
    c.etcd.failWhen((x) => x.kind === 'get' && x.key === keys.vdiskName('vd'), { times: 2 })
    const before = c.clock.sleeps.length
    expect(await n1.engine.open('vd')).toBeDefined()
    expect(c.clock.sleeps.slice(before)).toEqual([250, 250])
    c.etcd.failWhen((x) => x.kind === 'get' && x.key === keys.vdiskName('vd'), { times: 100_000 })
    const t0 = c.clock.now()
    await expect(n1.engine.open('vd')).rejects.toThrow(/injected failure/)
    expect(c.clock.now() - t0).toBeGreaterThanOrEqual(nbdOpenRetryMs)
    expect(c.clock.now() - t0).toBeLessThan(nbdOpenRetryMs + 1000)
  })
})

/** run `during` while `write` waits in the node's store (its files hold writes), then let it finish */
async function whileWriteHeld(n: TestNode, write: () => Promise<void>, during: () => void): Promise<void> {
  n.files.hold = true
  const writing = write()
  await waitFor('the write reaches the store', () => n.files.held.length > 0)
  during()
  n.files.hold = false
  for (const h of n.files.held.splice(0)) h.release()
  await writing
}

describe('VdiskEngine: reads and writes answered without waiting (readIfCached, writeIfQuick)', () => {
  it('gives what read gives, zeros where nothing is written; declines unaligned or two-vBlock reads, a write in progress, a bad checksum and a forwarded device', async () => {
    const { c, id } = await cluster3(2)
    const n1 = c.node('n1')
    const d1 = await openDev(n1)
    expect(d1.readIfCached).toBeDefined()
    await d1.write(0, pattern(1), true)
    const out = Buffer.alloc(64 * 1024)
    expect(d1.readIfCached!(4096, out)).toBe(true)
    expect(out.equals(pattern(1).subarray(4096, 4096 + out.length))).toBe(true)
    out.fill(1)
    expect(d1.readIfCached!(8 * MiB, out)).toBe(true)
    expect(out.equals(Buffer.alloc(out.length))).toBe(true)
    expect(d1.readIfCached!(100, Buffer.alloc(4096))).toBe(false)
    expect(d1.readIfCached!(MiB - 4096, Buffer.alloc(8192))).toBe(false)

    // a write of the vBlock waiting in the store: the fast path declines until it finished
    await whileWriteHeld(n1, () => d1.write(0, pattern(2), false), () => expect(d1.readIfCached!(0, out)).toBe(false))
    expect(d1.readIfCached!(0, out)).toBe(true)
    expect(out.equals(pattern(2).subarray(0, out.length))).toBe(true)

    // a flipped byte in the local copy: declined; read() serves the other copy and repairs this one
    const eg = c.egroups(id)[0]!
    const local = eg.replicas.find((r) => r.node === 'n1')!
    const file = n1.files.files.get(c.fileOf('n1', local.diskId, eg.id))!
    const at = file.data.indexOf(pattern(2).subarray(0, 64))
    expect(at).toBeGreaterThan(0)
    file.data[at + 10] = file.data[at + 10]! ^ 0x20
    expect(d1.readIfCached!(0, out)).toBe(false)
    expect((await d1.read(0, out.length)).equals(pattern(2).subarray(0, out.length))).toBe(true)
    expect(d1.readIfCached!(0, out)).toBe(true)
    expect(out.equals(pattern(2).subarray(0, out.length))).toBe(true)

    // another node forwards to the owner: no fast path there
    const d2 = await openDev(c.node('n2'))
    expect(d2.readIfCached).toBeUndefined()
  })

  it('writeIfQuick writes an allocated, aligned range of an RF 1 vDisk at once; it declines a first write, RF 2, unaligned ranges and a vBlock with a write waiting, and a flush makes it durable', async () => {
    const { c } = await cluster3(1)
    const n1 = c.node('n1')
    const d1 = await openDev(n1)
    const block = pattern(7, 8192)
    expect(d1.writeIfQuick!(0, block)).toBe(false) // no extent yet: the allocation is write()'s
    await d1.write(0, pattern(1), false)
    expect(d1.writeIfQuick!(4096, block)).toBe(true)
    expect(d1.writeIfQuick!(4096 + 1, block)).toBe(false)
    expect(d1.writeIfQuick!(MiB - 4096, block)).toBe(false)
    const want = Buffer.from(pattern(1))
    block.copy(want, 4096)
    expect((await d1.read(0, MiB)).equals(want)).toBe(true)

    await whileWriteHeld(n1, () => d1.write(0, pattern(2), false), () => expect(d1.writeIfQuick!(4096, block)).toBe(false))

    // the flush syncs the group the quick write went to: it survives a crash of the node's files
    expect(d1.writeIfQuick!(8192, block)).toBe(true)
    await d1.flush()
    const after = Buffer.from(pattern(2))
    block.copy(after, 8192)
    n1.files.crash()
    await c.start('n1')
    const again = await openDev(c.node('n1'))
    expect((await again.read(0, MiB)).equals(after)).toBe(true)

    const { c: c2 } = await cluster3(2)
    const r2 = await openDev(c2.node('n1'))
    await r2.write(0, pattern(1), false)
    expect(r2.writeIfQuick!(4096, block)).toBe(false)
  })
})

describe('VdiskEngine: placement of new extent groups', () => {
  it('RF 2: this node and the other with the most free space; RF 3: three distinct nodes; each replica on a disk of its node', async () => {
    const spec = { n1: { free: 5 * GiB, disks: 2 }, n2: { free: 9 * GiB, disks: 2 }, n3: { free: 7 * GiB }, n4: { free: 1 * GiB } }
    for (const [rf, from, nodes] of [[2, 'n1', ['n1', 'n2']], [3, 'n1', ['n1', 'n2', 'n3']], [2, 'n4', ['n4', 'n2']]] as const) {
      const { c, id } = await cluster3(rf, spec)
      // the store picks its disk with the most room: on n2, disk 1
      c.node('n2').free.set(c.node('n2').disks[1]!.path, 2 * 1024 ** 4)
      const dev = await openDev(c.node(from))
      await dev.write(0, pattern(1), true)
      const egs = c.egroups(id)
      expect(egs.length).toBeGreaterThan(0)
      for (const eg of egs) {
        expect(eg.vdiskId).toBe(id)
        expect(eg.replicas.map((r) => r.node)).toEqual(nodes)
        for (const r of eg.replicas) {
          expect(c.node(r.node).disks.map((d) => d.id)).toContain(r.diskId)
          expect(c.node(r.node).files.exists(c.fileOf(r.node, r.diskId, eg.id))).toBe(true)
        }
        expect(eg.replicas.find((r) => r.node === 'n2')?.diskId).toBe('n2-d1')
      }
      // every extent group has its own id
      expect(new Set(egs.map((e) => e.id)).size).toBe(egs.length)
    }
  })

  it('too few healthy nodes even for a degraded group: the write fails with EIO naming the nodes that are down, and no extent group is recorded', async () => {
    const { c, id } = await cluster3(3)
    await c.kill('n3')
    await c.kill('n2')
    const dev = await openDev(c.node('n1'))
    const t0 = c.clock.now()
    const err = await errnoOf(dev.write(0, pattern(1), true))
    expect(err.errno).toBe(nbdErrno.EIO)
    expect(err.message).toContain('needs 3 healthy nodes, 1 available')
    expect(err.message).toMatch(/n3 \(down/)
    expect(c.clock.now() - t0).toBeGreaterThanOrEqual(10_000) // it waited placementWaitMs for a node to come back
    expect(c.egroups(id)).toEqual([])
    expect(c.etcd.keys(keys.vdiskMapPrefix(id))).toEqual([])
  })

  it('RF 3 with a node down: a new extent group is made degraded with 2 copies at once (no wait), recorded so, and the data reads back', async () => {
    const { c, id } = await cluster3(3)
    await c.kill('n3')
    const dev = await openDev(c.node('n1'))
    const t0 = c.clock.now()
    await dev.write(0, pattern(1), true)
    expect(c.clock.now() - t0).toBeLessThan(10_000)
    expect(c.egroups(id).map((e) => e.replicas.map((r) => r.node).sort())).toEqual([['n1', 'n2']])
    expect((await dev.read(0, 4096)).equals(pattern(1).subarray(0, 4096))).toBe(true)
  })

  it('a node that comes back while a placement waits is used', async () => {
    const { c, id } = await cluster3(3)
    await c.kill('n3')
    const dev = await openDev(c.node('n1'))
    let back = false
    c.etcd.onCall = (x) => {
      if (!back && c.clock.now() > 0 && x.kind === 'range' && x.holder === 'n1' && x.key === keys.nodeStatusPrefix) {
        back = true
        c.setStatus('n3', 7 * GiB)
        c.node('n3').up = true
      }
    }
    await dev.write(0, pattern(1), true)
    expect(back).toBe(true)
    expect(c.egroups(id)[0]!.replicas.map((r) => r.node).sort()).toEqual(['n1', 'n2', 'n3'])
  })

  it('an etcd failure recording new extent groups fails the write with EIO, leaves no record and no file, and a later write succeeds', async () => {
    const { c, id } = await cluster3(2)
    const dev = await openDev(c.node('n1'))
    c.etcd.failWhen((x) => x.kind === 'txn' && x.writes.some((k) => k.startsWith(keys.egroupsOf(id))))
    const err = await errnoOf(dev.write(0, pattern(1), true))
    expect(err.errno).toBe(nbdErrno.EIO)
    expect(err.message).toContain('injected failure')
    expect(c.egroups(id)).toEqual([])
    for (const n of ['n1', 'n2', 'n3']) expect(c.egroupFiles(n)).toEqual([])
    expect(c.etcd.keys(keys.vdiskMapPrefix(id))).toEqual([])
    await dev.write(0, pattern(2), true)
    expect((await dev.read(0, MiB)).equals(pattern(2))).toBe(true)
    expect(c.egroups(id).length).toBeGreaterThan(0)
  })

  it('extent groups are recorded only while this CVM owns the vDisk: after another took the key, no record is written', async () => {
    const { c, id } = await cluster3(2)
    const dev = await openDev(c.node('n1'))
    c.etcd.seed(keys.vdiskOwner(id), 'n3/abcd')
    const err = await errnoOf(dev.write(0, pattern(1), true))
    expect(err.errno).toBe(nbdErrno.EIO)
    expect(err.message).toContain('no longer owned by this CVM')
    expect(c.egroups(id)).toEqual([])
  })

  it('every disk full: the write fails with ENOSPC', async () => {
    const { c, id } = await cluster3(2)
    for (const n of c.nodes.values()) for (const d of n.disks) n.free.set(d.path, 0)
    const dev = await openDev(c.node('n1'))
    const err = await errnoOf(dev.write(0, pattern(1), true))
    expect(err.errno).toBe(nbdErrno.ENOSPC)
    expect(c.egroups(id)).toEqual([])
  })
})

describe('VdiskEngine: what the cluster asks of it', () => {
  it('onlyCopiesOn names the vDisks whose only healthy copy a node holds; diskHoldsData says whether a disk holds replicas', async () => {
    const { c } = await cluster3(1)
    await c.service('n1').create('pair', 64 * MiB, 2)
    await (await openDev(c.node('n1'), 'vd')).write(0, pattern(1), true)
    await (await openDev(c.node('n1'), 'pair')).write(0, pattern(2), true)
    const e = c.node('n3').engine
    expect(await e.onlyCopiesOn('n1')).toEqual(['vd'])
    expect(await e.onlyCopiesOn('n2')).toEqual([])
    expect(await e.onlyCopiesOn('n3')).toEqual([])
    // n2 (the pair's other copy) down: n1 holds the only live copy of both
    await c.kill('n2')
    expect(await e.onlyCopiesOn('n1')).toEqual(['pair', 'vd'])
    expect(await e.diskHoldsData('n1-d0')).toBe(true)
    expect(await e.diskHoldsData('n2-d0')).toBe(true)
    expect(await e.diskHoldsData('n3-d0')).toBe(false)
  })

  it('at start, removes extent group files of this node that no record names, and only those', async () => {
    const c = new Cluster({ n1: {}, n2: {} })
    const n1 = c.node('n1')
    const dir = path.join(n1.disks[0]!.path, egroupDirName)
    const eg = (id: string, node: string): EgroupRecord => ({ id, vdiskId: '1', replicas: [{ node, diskId: `${node}-d0` }], createdAt: '2026-01-01T00:00:00Z' })
    c.etcd.seed(keys.egroup('1', '5'), JSON.stringify(eg('5', 'n1')))
    c.etcd.seed(keys.egroup('1', '6'), JSON.stringify(eg('6', 'n2'))) // names n2 only
    for (const f of ['5.eg', '5.eg.dirty', '6.eg', '77.eg', '77.eg.dirty', 'notes.txt']) await n1.files.touch(path.join(dir, f))
    await c.start('n1')
    expect([...n1.files.files.keys()].map((f) => path.basename(f)).sort()).toEqual(['5.eg', '5.eg.dirty', 'notes.txt'])
  })

  it('evacuateNode moves every replica off a draining node through each vDisk\'s owner, reporting progress', async () => {
    const { c, id } = await cluster3(2, { n1: { free: 5 * GiB }, n2: { free: 1 * GiB }, n3: { free: 9 * GiB } })
    const d1 = await openDev(c.node('n1'))
    await d1.write(0, pattern(1), true)
    await d1.write(40 * MiB, pattern(2), true)
    const before = c.egroups(id)
    expect(before.every((eg) => eg.replicas.some((r) => r.node === 'n3'))).toBe(true)
    const nr = c.etcd.json<NodeRecord>(keys.node('n3'))!
    c.etcd.seed(keys.node('n3'), JSON.stringify({ ...nr, draining: true }))
    await c.syncViews()
    const progress: Array<{ egroupsMoved: number, egroupsTotal: number, vdisk: string | null }> = []
    // asked of n2, which forwards to the owner n1
    const moved = await c.node('n2').engine.evacuateNode('n3', (p) => progress.push(p))
    expect(moved).toBe(before.length)
    expect(progress[0]).toEqual({ egroupsMoved: 0, egroupsTotal: before.length, vdisk: null })
    expect(progress.at(-1)).toEqual({ egroupsMoved: before.length, egroupsTotal: before.length, vdisk: 'vd' })
    const after = c.egroups(id)
    for (const eg of after) expect(eg.replicas.map((r) => r.node).sort()).toEqual(['n1', 'n2'])
    expect(c.egroupFiles('n3')).toEqual([])
    expect(await c.node('n2').engine.onlyCopiesOn('n3')).toEqual([])
    expect((await d1.read(40 * MiB, MiB)).equals(pattern(2))).toBe(true)
  })
})
