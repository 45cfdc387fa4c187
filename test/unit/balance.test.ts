import { describe, expect, it } from 'vitest'
import { planBalance, type BalanceDisk } from '../../src/cvm/curator/balance.js'
import type { EgroupRecord } from '../../src/cvm/vdisk/owner.js'
import type { VdiskRecord } from '../../src/lib/types.js'

const GiB = 1024 ** 3
const vdisk = (id: string, rf: number, state: VdiskRecord['state'] = 'ready'): VdiskRecord => ({ id, name: `v${id}`, sizeBytes: GiB, rf, createdAt: '', state })
const disk = (id: string, node: string, capacityBytes = 100 * GiB, dev = Number(id)): BalanceDisk => ({ id, node, capacityBytes, dev })
let nextId = 1
/** a group of vDisk `v` with replicas on `places` ("node/disk") */
const eg = (v: string, ...places: string[]): EgroupRecord => ({
  id: String(nextId++), vdiskId: v, createdAt: '',
  replicas: places.map((p) => ({ node: p.split('/')[0]!, diskId: p.split('/')[1]! })),
} as EgroupRecord)

/** the replicas per disk after the plan is applied, and a check that no group has two copies on one node */
function apply(egroups: EgroupRecord[], plan: ReturnType<typeof planBalance>): Map<string, number> {
  const byId = new Map(egroups.map((g) => [g.id, { ...g, replicas: g.replicas.map((r) => ({ ...r })) }]))
  for (const w of plan) {
    for (const m of w.moves) {
      const g = byId.get(m.egroupId)!
      expect(g.vdiskId).toBe(w.vdiskId)
      const r = g.replicas.find((x) => x.node === m.from.node && x.diskId === m.from.diskId)
      expect(r, `move ${JSON.stringify(m)}`).toBeDefined()
      r!.node = m.to.node
      r!.diskId = m.to.diskId
      expect(new Set(g.replicas.map((x) => x.node)).size, `group ${g.id} keeps its copies on distinct nodes`).toBe(g.replicas.length)
    }
  }
  const load = new Map<string, number>()
  for (const g of byId.values()) for (const r of g.replicas) load.set(r.diskId, (load.get(r.diskId) ?? 0) + 1)
  return load
}

describe('disk balancing plan', () => {
  it('a disk added to a one-node cluster gets half the groups (moves within the node)', () => {
    const egroups = Array.from({ length: 20 }, () => eg('1', 'n1/11'))
    const plan = planBalance([disk('11', 'n1'), disk('12', 'n1')], egroups, [vdisk('1', 1)])
    expect(plan).toHaveLength(1)
    expect(plan[0]!.moves).toHaveLength(10)
    for (const m of plan[0]!.moves) expect(m).toMatchObject({ from: { node: 'n1', diskId: '11' }, to: { node: 'n1', diskId: '12' } })
    expect(apply(egroups, plan)).toEqual(new Map([['11', 10], ['12', 10]]))
  })

  it('RF 2 on three nodes with a disk added to one: the new disk fills from its own node\'s disk; other nodes and the owner\'s local copies stay', () => {
    const egroups: EgroupRecord[] = []
    for (let i = 0; i < 30; i++) {
      const [a, b] = [['n1/1', 'n2/2'], ['n2/2', 'n3/3'], ['n1/1', 'n3/3']][i % 3]!
      egroups.push(eg(i % 2 === 0 ? '1' : '2', a!, b!))
    }
    // n2 holds more than the others (every vDisk written through it keeps a copy there): not moved
    for (let i = 0; i < 10; i++) egroups.push(eg('1', 'n2/2', 'n3/3'))
    const disks = [disk('1', 'n1'), disk('2', 'n2'), disk('3', 'n3'), disk('4', 'n1')]
    const plan = planBalance(disks, egroups, [vdisk('1', 2), vdisk('2', 2)])
    expect(plan.map((w) => w.vdiskId)).toEqual(['1', '2'])
    const moves = plan.flatMap((w) => w.moves)
    for (const m of moves) expect(m).toMatchObject({ from: { node: 'n1', diskId: '1' }, to: { node: 'n1', diskId: '4' } })
    const load = apply(egroups, plan)
    // n1's 20 replicas: 10 on each of its disks; n2 and n3 as they were
    expect([load.get('1'), load.get('4'), load.get('2'), load.get('3')]).toEqual([10, 10, 30, 30])
    // and the plan is done: planning again on the result moves nothing
    const after = egroups.map((g) => ({ ...g, replicas: g.replicas.map((r) => ({ ...r })) }))
    for (const m of moves) {
      const r = after.find((g) => g.id === m.egroupId)!.replicas.find((x) => x.diskId === m.from.diskId)!
      Object.assign(r, { node: m.to.node, diskId: m.to.diskId })
    }
    expect(planBalance(disks, after, [vdisk('1', 2), vdisk('2', 2)])).toEqual([])
  })

  it('weighs disks by capacity; two disks on one file system of a node share it', () => {
    const egroups = Array.from({ length: 30 }, () => eg('1', 'n1/1'))
    // disk 1 and 2 on one 100 GiB file system, disk 3 alone on 100 GiB: shares 1/4, 1/4, 1/2
    const plan = planBalance([disk('1', 'n1', 100 * GiB, 7), disk('2', 'n1', 100 * GiB, 7), disk('3', 'n1', 100 * GiB, 8)], egroups, [vdisk('1', 1)])
    const load = apply(egroups, plan)
    expect(Math.abs((load.get('3') ?? 0) - 15)).toBeLessThanOrEqual(1)
    expect(Math.abs((load.get('1') ?? 0) - 7.5)).toBeLessThanOrEqual(1)
  })

  it('moves nothing when the disks are within the tolerance, and leaves groups that are not whole or whose vDisk is going', () => {
    expect(planBalance([disk('1', 'n1'), disk('2', 'n1')], [...Array.from({ length: 11 }, () => eg('1', 'n1/1')), ...Array.from({ length: 9 }, () => eg('1', 'n1/2'))], [vdisk('1', 1)])).toEqual([])
    // 3 groups against 0 on a new disk: within the minimum of groups (2)? no: 3 > 1.5 + 2 is false, so nothing
    expect(planBalance([disk('1', 'n1'), disk('2', 'n1')], Array.from({ length: 3 }, () => eg('1', 'n1/1')), [vdisk('1', 1)])).toEqual([])
    // a group with a replica on a disk that is not usable (offline, a node down or draining) stays; a vDisk being deleted too
    const stuck = [...Array.from({ length: 10 }, () => eg('1', 'n1/1', 'n2/9')), ...Array.from({ length: 10 }, () => eg('2', 'n1/1'))]
    expect(planBalance([disk('1', 'n1'), disk('2', 'n1')], stuck, [vdisk('1', 2), vdisk('2', 1, 'deleting')])).toEqual([])
    // one disk: nothing to balance
    expect(planBalance([disk('1', 'n1')], Array.from({ length: 10 }, () => eg('1', 'n1/1')), [vdisk('1', 1)])).toEqual([])
  })

  it('plans at most movesMax moves per pass; the next pass goes on', () => {
    const egroups = Array.from({ length: 100 }, () => eg('1', 'n1/1'))
    const plan = planBalance([disk('1', 'n1'), disk('2', 'n1')], egroups, [vdisk('1', 1)], { movesMax: 8 })
    expect(plan[0]!.moves).toHaveLength(8)
    expect(new Set(plan[0]!.moves.map((m) => m.egroupId)).size).toBe(8)
  })

  it('RF 3 on three nodes: a new disk is filled only from its own node (every node holds every group)', () => {
    const egroups = Array.from({ length: 12 }, () => eg('1', 'n1/1', 'n2/2', 'n3/3'))
    const plan = planBalance([disk('1', 'n1'), disk('2', 'n2'), disk('3', 'n3'), disk('4', 'n2')], egroups, [vdisk('1', 3)])
    const moves = plan.flatMap((w) => w.moves)
    expect(moves.length).toBeGreaterThan(0)
    for (const m of moves) expect(m).toMatchObject({ from: { node: 'n2', diskId: '2' }, to: { node: 'n2', diskId: '4' } })
    const load = apply(egroups, plan)
    expect(load.get('2')! - load.get('4')!).toBeLessThanOrEqual(1)
  })
})
