import { describe, expect, it } from 'vitest'
import { KeyedRwLock } from '../../src/cvm/vdisk/locks.js'
import type { MapWriter } from '../../src/cvm/vdisk/mapwriter.js'
import { newEgroups, replaceFailed, vdiskBackend, type EgroupRecord, type OwnerEnv } from '../../src/cvm/vdisk/owner.js'
import { PlacementError, type PlacementView } from '../../src/cvm/vdisk/placement.js'
import type { Replica } from '../../src/cvm/vdisk/replica.js'
import { Vdisk, type LoadedEgroup } from '../../src/cvm/vdisk/vdisk.js'
import { memReplica as sharedMemReplica, type MemReplica } from '../helpers/memreplica.js'

/**
 * Replacing failed replicas (owner.ts) with replicas in memory and records in a map: the cases
 * the simulator (test/sim) found it got wrong.
 */
const MiB = 1024 * 1024
const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined }
const rec = { id: '7', name: 'v', rf: 3 }

/** a remote replica in memory whose writes fail while `fail(slot)` says so, with raw copies */
const memReplica = (node: string, fail?: (slot: number) => boolean): MemReplica =>
  sharedMemReplica({ node, diskId: `${node}-d`, local: false, raw: true, ...(fail ? { fail } : {}) })

/** an OwnerEnv over `nodes`: the first not excluded are placed, records in a map */
function env(nodes: string[], replicas: Map<string, MemReplica>, opts: { loseRecordAnswers?: number } = {}) {
  const records = new Map<string, EgroupRecord>()
  let lose = opts.loseRecordAnswers ?? 0
  const view = {
    deadlineFromNow: () => 0,
    nodes: () => nodes.map((name) => ({ name, up: true, draining: false })),
    place: async (rf: number, o: { exclude?: ReadonlyMap<string, unknown> }) => {
      const ok = nodes.filter((n) => !o.exclude?.has(n))
      if (ok.length < rf) throw new PlacementError(`needs ${rf} healthy nodes, ${ok.length} available`, 'bring nodes back', false)
      return ok.slice(0, rf)
    },
  } as unknown as PlacementView
  const e: OwnerEnv = {
    log: quiet,
    view,
    replicaFor: (_v, _eg, node) => {
      let r = replicas.get(node)
      if (!r) replicas.set(node, r = memReplica(node))
      return r
    },
    pickDiskOn: async (node) => `${node}-d`,
    newEgroupId: async () => '1',
    getEgroupRecord: async (_v, egid) => records.get(egid),
    putEgroupRecords: async (_rec, ers) => {
      for (const er of ers) records.set(er.id, er)
      if (lose > 0) {
        lose--
        throw new Error('etcd: request timed out (the record was written)')
      }
    },
  }
  return { env: e, records }
}

function egroup(replicas: Replica[], used: number[]): LoadedEgroup {
  return { id: '1', replicas, usedSlots: new Set(used), freeSlots: [], lock: new KeyedRwLock() }
}

describe('new extent groups when a node does not answer', () => {
  /** replicas in memory; the one on `dead` never opens (a node cut off a moment ago) */
  const withDead = (dead: string[]) => {
    const replicas = new Map<string, MemReplica>()
    for (const n of ['n1', 'n2', 'n3']) {
      const r = memReplica(n)
      if (dead.includes(n)) r.open = async () => { throw new Error(`node ${n}: no answer in 10000 ms`) }
      replicas.set(n, r)
    }
    return replicas
  }

  it('RF 2 with one node silent: the group is made degraded on the other, its record names only that one', async () => {
    const { env: e, records } = env(['n1', 'n2', 'n3'], withDead(['n2']))
    const [eg] = await newEgroups(e, { ...rec, rf: 2 }, 1)
    expect(eg!.replicas.map((r) => r.node)).toEqual(['n1'])
    expect(eg!.freeSlots).toHaveLength(32)
    expect(records.get('1')!.replicas.map((r) => r.node)).toEqual(['n1'])
  })

  it('RF 3 with two nodes silent: fewer copies than a write needs (2): EIO, as before', async () => {
    const { env: e } = env(['n1', 'n2', 'n3'], withDead(['n2', 'n3']))
    await expect(newEgroups(e, { ...rec, rf: 3 }, 1)).rejects.toMatchObject({ errno: 5 })
  })

  it('every node answers: RF copies, the record as placed', async () => {
    const { env: e, records } = env(['n1', 'n2', 'n3'], withDead([]))
    const [eg] = await newEgroups(e, { ...rec, rf: 3 }, 1)
    expect(eg!.replicas.map((r) => r.node)).toEqual(['n1', 'n2', 'n3'])
    expect(records.get('1')!.replicas.map((r) => r.node)).toEqual(['n1', 'n2', 'n3'])
  })
})

describe('replacing failed replicas', () => {
  it('a new replica set whose record was written but whose answer was lost: writes go to the replicas of both sets', async () => {
    const replicas = new Map<string, MemReplica>()
    for (const n of ['n1', 'n2']) replicas.set(n, memReplica(n))
    const { env: e, records } = env(['n1', 'n2', 'n3'], replicas, { loseRecordAnswers: 1 })
    records.set('1', { id: '1', vdiskId: '7', replicas: [{ node: 'n1', diskId: 'n1-d' }, { node: 'n2', diskId: 'n2-d' }], createdAt: '' })
    const eg = egroup([replicas.get('n1')!, replicas.get('n2')!], [0])
    await expect(replaceFailed(e, { ...rec, rf: 2 }, eg, [replicas.get('n2')!], new Error('EIO'))).rejects.toThrow(/timed out/)
    // the store names n1 and n3 now; memory must write to both (a load takes the store's set)
    expect(records.get('1')!.replicas.map((r) => r.node)).toEqual(['n1', 'n3'])
    for (const r of records.get('1')!.replicas) expect(eg.replicas.map((x) => x.node)).toContain(r.node)
  })

  it('two writes that failed on different replicas: a replacement never copies from a replica that missed the other write', async () => {
    const replicas = new Map<string, MemReplica>()
    // r1 misses the write to slot 1, r3 the write to slot 0 (once each)
    let r1Fails = 1
    let r3Fails = 1
    replicas.set('r1', memReplica('r1', (s) => s === 1 && r1Fails-- > 0))
    replicas.set('r2', memReplica('r2'))
    replicas.set('r3', memReplica('r3', (s) => s === 0 && r3Fails-- > 0))
    const { env: e, records } = env(['r1', 'r2', 'r3', 'n4', 'n5', 'n6'], replicas)
    records.set('1', { id: '1', vdiskId: '7', replicas: ['r1', 'r2', 'r3'].map((n) => ({ node: n, diskId: `${n}-d` })), createdAt: '' })
    const eg = egroup(['r1', 'r2', 'r3'].map((n) => replicas.get(n)!), [0, 1])
    const mapWriter = { put: async () => undefined, delete: async () => undefined } as unknown as MapWriter
    const v = new Vdisk('7', 'v', 4 * MiB, new Map([[0, { egroupId: '1', slot: 0 }], [1, { egroupId: '1', slot: 1 }]]), new Map([['1', eg]]),
      vdiskBackend(e, rec, mapWriter, (vb) => `map/${vb}`, (vb, e) => `hist/${vb}/${e}`))
    await Promise.all([v.write(0, Buffer.alloc(4096, 0xaa), false), v.write(MiB, Buffer.alloc(4096, 0xbb), false)])
    // both writes were acknowledged: every replica of the group holds both
    expect(eg.replicas.length).toBe(3)
    for (const r of eg.replicas as MemReplica[]) {
      expect(r.slots.get(0)?.subarray(0, 4096).equals(Buffer.alloc(4096, 0xaa)), `${r.node} slot 0`).toBe(true)
      expect(r.slots.get(1)?.subarray(0, 4096).equals(Buffer.alloc(4096, 0xbb)), `${r.node} slot 1`).toBe(true)
    }
  })

  it('degraded write: RF 2 on two nodes, one fails and no node can take a copy: the group goes on with one replica, recorded, and the write succeeds', async () => {
    const replicas = new Map<string, MemReplica>()
    for (const n of ['n1', 'n2']) replicas.set(n, memReplica(n, n === 'n2' ? () => true : undefined))
    const { env: e, records } = env(['n1', 'n2'], replicas)
    records.set('1', { id: '1', vdiskId: '7', replicas: [{ node: 'n1', diskId: 'n1-d' }, { node: 'n2', diskId: 'n2-d' }], createdAt: '' })
    const eg = egroup([replicas.get('n1')!, replicas.get('n2')!], [0])
    const mapWriter = { put: async () => undefined, delete: async () => undefined } as unknown as MapWriter
    const v = new Vdisk('7', 'v', 4 * MiB, new Map([[0, { egroupId: '1', slot: 0 }]]), new Map([['1', eg]]),
      vdiskBackend(e, { ...rec, rf: 2 }, mapWriter, (vb) => `map/${vb}`, (vb, e) => `hist/${vb}/${e}`))
    await v.write(0, Buffer.alloc(4096, 0xcc), false)
    expect(eg.replicas.map((r) => r.node)).toEqual(['n1'])
    expect(records.get('1')!.replicas.map((r) => r.node)).toEqual(['n1'])
    expect(records.get('1')!.stale?.map((r) => r.node)).toEqual(['n2'])
    expect(replicas.get('n1')!.slots.get(0)?.subarray(0, 4096).equals(Buffer.alloc(4096, 0xcc))).toBe(true)

    // the curator's repair, once a node (n3) can take a copy: back to 2 replicas, with the data
    const { env: e2, records: r2 } = env(['n1', 'n3'], replicas)
    r2.set('1', records.get('1')!)
    const v2 = new Vdisk('7', 'v', 4 * MiB, new Map([[0, { egroupId: '1', slot: 0 }]]), new Map([['1', eg]]),
      vdiskBackend(e2, { ...rec, rf: 2 }, mapWriter, (vb) => `map/${vb}`, (vb, e) => `hist/${vb}/${e}`))
    expect(await v2.repair(new Set())).toEqual({ egroups: 1, bytes: MiB })
    expect(eg.replicas.map((r) => r.node).sort()).toEqual(['n1', 'n3'])
    expect(r2.get('1')!.replicas.map((r) => r.node).sort()).toEqual(['n1', 'n3'])
    expect(replicas.get('n3')!.slots.get(0)?.subarray(0, 4096).equals(Buffer.alloc(4096, 0xcc))).toBe(true)
    // nothing left to do
    expect(await v2.repair(new Set())).toEqual({ egroups: 0, bytes: 0 })
  })

  it('RF 3 with one node left: a failed write is refused (fewer than RF - 1 copies kept), never acknowledged by one replica', async () => {
    const replicas = new Map<string, MemReplica>()
    for (const n of ['n1', 'n2', 'n3']) replicas.set(n, memReplica(n, n === 'n1' ? undefined : () => true))
    const { env: e, records } = env(['n1', 'n2', 'n3'], replicas)
    records.set('1', { id: '1', vdiskId: '7', replicas: ['n1', 'n2', 'n3'].map((n) => ({ node: n, diskId: `${n}-d` })), createdAt: '' })
    const eg = egroup(['n1', 'n2', 'n3'].map((n) => replicas.get(n)!), [0])
    const mapWriter = { put: async () => undefined, delete: async () => undefined } as unknown as MapWriter
    const v = new Vdisk('7', 'v', 4 * MiB, new Map([[0, { egroupId: '1', slot: 0 }]]), new Map([['1', eg]]),
      vdiskBackend(e, rec, mapWriter, (vb) => `map/${vb}`, (vb, e) => `hist/${vb}/${e}`))
    await expect(v.write(0, Buffer.alloc(4096, 1), false)).rejects.toThrow()
    expect(records.get('1')!.replicas.length).toBe(3)
  })

  it('the curator repair replaces replicas on a node that is down, from a healthy one, and an evacuation or a repair never goes on degraded', async () => {
    const replicas = new Map<string, MemReplica>()
    for (const n of ['n1', 'n2']) replicas.set(n, memReplica(n))
    replicas.get('n1')!.slots.set(3, Buffer.alloc(MiB, 7))
    const { env: e, records } = env(['n1', 'n2'], replicas)
    records.set('1', { id: '1', vdiskId: '7', replicas: [{ node: 'n1', diskId: 'n1-d' }, { node: 'n2', diskId: 'n2-d' }], createdAt: '' })
    const eg = egroup([replicas.get('n1')!, replicas.get('n2')!], [3])
    const mapWriter = { put: async () => undefined, delete: async () => undefined } as unknown as MapWriter
    const v = new Vdisk('7', 'v', 4 * MiB, new Map([[0, { egroupId: '1', slot: 3 }]]), new Map([['1', eg]]),
      vdiskBackend(e, { ...rec, rf: 2 }, mapWriter, (vb) => `map/${vb}`, (vb, e) => `hist/${vb}/${e}`))
    // n2 down and no third node: the repair fails (and changes nothing) rather than dropping a copy
    await expect(v.repair(new Set(['n2']))).rejects.toThrow(/healthy node/)
    expect(records.get('1')!.replicas.map((r) => r.node)).toEqual(['n1', 'n2'])
    // a third node: the copy is made from n1
    const { env: e2, records: r2 } = env(['n1', 'n2', 'n3'], replicas)
    r2.set('1', records.get('1')!)
    const v2 = new Vdisk('7', 'v', 4 * MiB, new Map([[0, { egroupId: '1', slot: 3 }]]), new Map([['1', eg]]),
      vdiskBackend(e2, { ...rec, rf: 2 }, mapWriter, (vb) => `map/${vb}`, (vb, e) => `hist/${vb}/${e}`))
    expect(await v2.repair(new Set(['n2']))).toEqual({ egroups: 1, bytes: MiB })
    expect(r2.get('1')!.replicas.map((r) => r.node)).toEqual(['n1', 'n3'])
    expect(r2.get('1')!.stale?.map((r) => r.node)).toEqual(['n2'])
    expect(replicas.get('n3')!.slots.get(3)?.equals(Buffer.alloc(MiB, 7))).toBe(true)
  })

  it('the curator repair replaces a replica on a lost disk of a node that is up; groups on its other disks stay', async () => {
    const replicas = new Map<string, MemReplica>()
    for (const n of ['n1', 'n2']) replicas.set(n, memReplica(n))
    replicas.get('n2')!.slots.set(1, Buffer.alloc(MiB, 9))
    const { env: e, records } = env(['n1', 'n2', 'n3'], replicas)
    records.set('1', { id: '1', vdiskId: '7', replicas: [{ node: 'n1', diskId: 'n1-d' }, { node: 'n2', diskId: 'n2-d' }], createdAt: '' })
    const eg = egroup([replicas.get('n1')!, replicas.get('n2')!], [1])
    const mapWriter = { put: async () => undefined, delete: async () => undefined } as unknown as MapWriter
    const v = new Vdisk('7', 'v', 4 * MiB, new Map([[0, { egroupId: '1', slot: 1 }]]), new Map([['1', eg]]),
      vdiskBackend(e, { ...rec, rf: 2 }, mapWriter, (vb) => `map/${vb}`, (vb, e) => `hist/${vb}/${e}`))
    // another disk of n1 is lost: nothing here is on it
    expect(await v.repair(new Set(), undefined, new Set(['n1-other']))).toEqual({ egroups: 0, bytes: 0 })
    // n1's disk is lost (n1 is up): the copy comes from n2 and goes to n3, the lost one is recorded stale
    expect(await v.repair(new Set(), undefined, new Set(['n1-d']))).toEqual({ egroups: 1, bytes: MiB })
    expect(records.get('1')!.replicas).toEqual([{ node: 'n2', diskId: 'n2-d' }, { node: 'n3', diskId: 'n3-d' }])
    expect(records.get('1')!.stale).toEqual([{ node: 'n1', diskId: 'n1-d' }])
    expect(replicas.get('n3')!.slots.get(1)?.equals(Buffer.alloc(MiB, 9))).toBe(true)
  })

  it('a move to another disk of the same node copies the group there and records the new place; a move next to another copy is refused', async () => {
    // replicas by node and disk: a node holds two files of the group while it moves between its disks
    const replicas = new Map<string, MemReplica>()
    const at = (node: string, diskId: string) => {
      let r = replicas.get(`${node}/${diskId}`)
      if (!r) replicas.set(`${node}/${diskId}`, r = sharedMemReplica({ node, diskId, local: false, raw: true }))
      return r
    }
    const { env: base, records } = env(['n1', 'n2', 'n3'], new Map())
    const e: OwnerEnv = { ...base, replicaFor: (_v, _eg, node, diskId) => at(node, diskId) }
    const a = at('n1', 'd1')
    const b = at('n2', 'd2')
    // the copy comes from the replica that moves (its bytes differ from the other copy's here, to tell them apart)
    await a.write(0, 0, Buffer.alloc(MiB, 7))
    await b.write(0, 0, Buffer.alloc(MiB, 8))
    records.set('1', { id: '1', vdiskId: '7', replicas: [{ node: 'n1', diskId: 'd1' }, { node: 'n2', diskId: 'd2' }], createdAt: '' })
    const eg = egroup([a, b], [0])
    await replaceFailed(e, { ...rec, rf: 2 }, eg, [a], new Error('balancing'), { evacuate: true, target: { node: 'n1', diskId: 'd9' } })
    expect(records.get('1')!.replicas).toEqual([{ node: 'n2', diskId: 'd2' }, { node: 'n1', diskId: 'd9' }])
    expect(records.get('1')!.stale).toEqual([{ node: 'n1', diskId: 'd1' }])
    expect(eg.replicas.map((r) => `${r.node}/${r.diskId}`).sort()).toEqual(['n1/d9', 'n2/d2'])
    expect(at('n1', 'd9').slots.get(0)!.equals(Buffer.alloc(MiB, 7))).toBe(true)
    // to n2, which holds the other copy: refused, nothing changes
    const moved = at('n1', 'd9')
    await expect(replaceFailed(e, { ...rec, rf: 2 }, eg, [moved], new Error('balancing'), { evacuate: true, target: { node: 'n2', diskId: 'd3' } }))
      .rejects.toMatchObject({ code: 'TESS_E_CONFLICT' })
    expect(records.get('1')!.replicas).toEqual([{ node: 'n2', diskId: 'd2' }, { node: 'n1', diskId: 'd9' }])
    expect(replicas.has('n2/d3')).toBe(false)
  })
})
