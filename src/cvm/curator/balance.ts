import { balanceMovesMax, balanceToleranceEgroups, balanceToleranceShare } from '../../lib/limits.js'
import type { ReplicaMove, VdiskRecord } from '../../lib/types.js'
import type { EgroupRecord } from '../vdisk/owner.js'

/** A disk the balancing may use: online, on a node that is up and not draining. */
export interface BalanceDisk {
  id: string
  node: string
  capacityBytes: number
  /** the device of its file system on its node: disks of one node on one device share its capacity */
  dev: number
  /** being evacuated (`disk remove --evacuate`): takes nothing, and its groups are the evacuation's */
  draining?: boolean
}

/** the moves of one vDisk (they run at its owner, in one request) */
export interface BalanceWork { vdiskId: string, moves: ReplicaMove[] }

export interface BalanceOptions {
  movesMax?: number
  toleranceShare?: number
  toleranceEgroups?: number
}

/** Each disk's fair share of the capacity: a file system's capacity split among the disks on it (of one node). */
function weights(disks: BalanceDisk[]): Map<string, number> {
  const perDev = new Map<string, number>()
  for (const d of disks) perDev.set(`${d.node}/${d.dev}`, (perDev.get(`${d.node}/${d.dev}`) ?? 0) + 1)
  const w = new Map<string, number>()
  for (const d of disks) w.set(d.id, Math.max(0, d.capacityBytes) / perDev.get(`${d.node}/${d.dev}`)!)
  return w
}

/**
 * The curator's disk balancing, from the records alone: within each node, every disk should hold a
 * share of the node's replicas in proportion to its capacity (after `disk add` the new disk holds
 * none). When some disk of a node holds more than its share by the tolerance (a share of it, and
 * at least a few groups) or less by as much, replicas move, each from the fullest disk that has one
 * to the emptiest, until no move lowers the imbalance. Moves stay within their node: copies stay on
 * distinct nodes, and the owner's copy stays where placement put it (on the owner's node, so its
 * reads are local); moving replicas between nodes by how full their disks are is not done yet.
 * Only groups whose every replica is on a usable disk move (an under-replicated group is the
 * repair's). At most `movesMax` moves in all; the next scan plans again from the records the moves
 * wrote.
 */
export function planBalance(all: BalanceDisk[], egroups: EgroupRecord[], vdisks: VdiskRecord[], o: BalanceOptions = {}): BalanceWork[] {
  const disks = all.filter((d) => d.draining !== true)
  const usable = new Map(disks.map((d) => [d.id, d]))
  const ready = new Set(vdisks.filter((v) => v.state === 'ready').map((v) => v.id))
  // the groups that may move (every replica on a usable disk), as copies the plan changes
  const groups = egroups.filter((eg) => ready.has(eg.vdiskId) && eg.replicas.length > 0 && eg.replicas.every((r) => usable.get(r.diskId)?.node === r.node))
    .map((eg) => ({ ...eg, replicas: eg.replicas.map((r) => ({ ...r })) }))
    .sort((a, b) => Number(a.id) - Number(b.id) || a.id.localeCompare(b.id))
  const work = new Map<string, ReplicaMove[]>()
  let left = o.movesMax ?? balanceMovesMax
  for (const node of [...new Set(disks.map((d) => d.node))].sort()) {
    const mine = disks.filter((d) => d.node === node)
    if (mine.length >= 2 && left > 0) left -= planWithin(mine, groups, egroups, o, left, work)
  }
  return [...work].map(([vdiskId, moves]) => ({ vdiskId, moves })).sort((a, b) => a.vdiskId.localeCompare(b.vdiskId))
}

/** The moves among one node's disks (at most `movesMax`), added to `work`; returns how many. */
function planWithin(disks: BalanceDisk[], groups: EgroupRecord[], egroups: EgroupRecord[], o: BalanceOptions, movesMax: number, work: Map<string, ReplicaMove[]>): number {
  const share = o.toleranceShare ?? balanceToleranceShare
  const minGroups = o.toleranceEgroups ?? balanceToleranceEgroups
  const here = new Map(disks.map((d) => [d.id, d]))
  const w = weights(disks)
  const totalWeight = [...w.values()].reduce((a, b) => a + b, 0)
  if (totalWeight <= 0) return 0
  const onDisk = new Map<string, EgroupRecord[]>(disks.map((d) => [d.id, []]))
  for (const eg of groups) for (const r of eg.replicas) onDisk.get(r.diskId)?.push(eg)
  // every replica on these disks counts, the ones that may not move too
  let total = 0
  const load = new Map<string, number>()
  for (const eg of egroups) {
    for (const r of eg.replicas) {
      if (here.get(r.diskId)?.node !== r.node) continue
      total++
      load.set(r.diskId, (load.get(r.diskId) ?? 0) + 1)
    }
  }
  const fair = (id: string) => total * w.get(id)! / totalWeight
  const over = (id: string) => (load.get(id) ?? 0) - fair(id)
  const tolerance = (id: string) => Math.max(minGroups, share * fair(id))
  // nothing to do while every disk is within the tolerance of its share; once some disk is not, the
  // pass goes on to the best balance it can reach (hysteresis: a few groups do not start a pass)
  if (disks.every((d) => Math.abs(over(d.id)) <= tolerance(d.id))) return 0
  const moved = new Set<string>()
  let count = 0
  while (count < movesMax) {
    const byOver = disks.map((d) => d.id).sort((a, b) => over(b) - over(a) || a.localeCompare(b))
    const m = pickMove(byOver, onDisk, moved, here, over)
    if (m === undefined) break
    const { eg, from, to } = m
    const r = eg.replicas.find((x) => x.diskId === from.id)!
    r.node = to.node
    r.diskId = to.id
    onDisk.set(from.id, onDisk.get(from.id)!.filter((x) => x !== eg))
    onDisk.get(to.id)!.push(eg)
    load.set(from.id, (load.get(from.id) ?? 0) - 1)
    load.set(to.id, (load.get(to.id) ?? 0) + 1)
    moved.add(eg.id)
    let list = work.get(eg.vdiskId)
    if (list === undefined) work.set(eg.vdiskId, list = [])
    list.push({ egroupId: eg.id, from: { node: from.node, diskId: from.id }, to: { node: to.node, diskId: to.id } })
    count++
  }
  return count
}

/**
 * One move that lowers the imbalance: from the fullest disk that has a group that can go, to the
 * emptiest disk that can take it.
 */
function pickMove(byOver: string[], onDisk: Map<string, EgroupRecord[]>, moved: Set<string>, usable: Map<string, BalanceDisk>, over: (id: string) => number):
  { eg: EgroupRecord, from: BalanceDisk, to: BalanceDisk } | undefined {
  for (const fromId of byOver) {
    const from = usable.get(fromId)!
    for (const toId of [...byOver].reverse()) {
      // a move must lower the imbalance (the sum of the squares of every disk's excess), which
      // it does when the source holds more than one group beyond the target
      if (toId === fromId || over(fromId) - over(toId) <= 1 + 1e-9) break
      const to = usable.get(toId)!
      const eg = onDisk.get(fromId)!.find((g) => !moved.has(g.id) && !g.replicas.some((r) => r.node === to.node && r.diskId !== fromId))
      if (eg !== undefined) return { eg, from, to }
    }
  }
  return undefined
}
