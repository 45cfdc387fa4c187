import type { Etcd3 } from 'etcd3'
import { TessError } from '../../lib/errors.js'
import { etcdCall, keys, listJson } from '../../lib/etcd.js'
import { balanceMovesMax } from '../../lib/limits.js'
import type { DiskRecord, EvacuationProgress, ReplicaMove, VdiskRecord } from '../../lib/types.js'
import type { EgroupRecord } from '../vdisk/owner.js'
import type { BalanceDisk } from './balance.js'

/** passes over the groups still on the disk (a group a write or a repair changed meanwhile is taken at the next) */
const diskEvacuationRoundsMax = 5

/** `tess disk remove --evacuate`: how far the move of a disk's replicas is (GET /v1/disks/evacuate) */
export interface DiskEvacuationJob extends EvacuationProgress {
  disk: string
  node: string
  path: string
}

export interface DiskEvacuationEnv {
  etcd: Etcd3
  /** the disks the nodes that are up report (with capacity): where the replicas may go */
  onlineDisks: () => Promise<BalanceDisk[]>
  /** run one vDisk's moves at its owner (node operation vdisk.move) */
  move: (vdiskId: string, moves: ReplicaMove[]) => Promise<{ egroups: number }>
}

/** The other disks of the node that can take the replicas of `disk`: online and not draining. */
export async function evacuationTargets(env: DiskEvacuationEnv, disk: DiskRecord): Promise<BalanceDisk[]> {
  const targets = (await env.onlineDisks()).filter((d) => d.node === disk.node && d.id !== disk.id && d.draining !== true)
  if (targets.length === 0) {
    throw new TessError('TESS_E_PRECONDITION', `cannot evacuate disk "${disk.path}" on ${disk.node}: the node has no other disk online to take its data`,
      `add a disk to ${disk.node} first (\`tess disk add PATH --node ${disk.node}\`), or move the whole node's data with \`tess host remove ${disk.node} --evacuate\``)
  }
  return targets
}

/**
 * Move every replica on `disk` (already marked draining: no new extent group lands there) to the
 * node's other disks, the one holding the fewest replicas first, through each vDisk's owner, in
 * batches of at most balanceMovesMax. Passes again over what is left (a group changed by a write
 * or a repair while it was planned) a few times; answers the groups moved.
 */
export async function evacuateDisk(env: DiskEvacuationEnv, disk: DiskRecord, progress: (p: Partial<DiskEvacuationJob>) => void): Promise<number> {
  let moved = 0
  for (let round = 0; round < diskEvacuationRoundsMax; round++) {
    const [egroups, vdisks] = await Promise.all([
      etcdCall('list extent groups', () => listJson<EgroupRecord>(env.etcd, keys.egroupsPrefix)),
      etcdCall('list vDisks', () => listJson<VdiskRecord>(env.etcd, keys.vdisksPrefix)),
    ])
    const left = egroups.filter((eg) => eg.replicas.some((r) => r.diskId === disk.id && r.node === disk.node))
    if (left.length === 0) return moved
    const targets = await evacuationTargets(env, disk)
    const load = new Map(targets.map((t) => [t.id, 0]))
    for (const eg of egroups) for (const r of eg.replicas) if (load.has(r.diskId)) load.set(r.diskId, load.get(r.diskId)! + 1)
    const byVdisk = new Map<string, ReplicaMove[]>()
    for (const eg of left) {
      const to = [...load].sort((a, b) => a[1] - b[1] || a[0].localeCompare(b[0]))[0]![0]
      load.set(to, load.get(to)! + 1)
      let l = byVdisk.get(eg.vdiskId)
      if (l === undefined) byVdisk.set(eg.vdiskId, l = [])
      l.push({ egroupId: eg.id, from: { node: disk.node, diskId: disk.id }, to: { node: disk.node, diskId: to } })
    }
    const names = new Map(vdisks.map((v) => [v.id, v.name]))
    progress({ egroupsMoved: moved, egroupsTotal: moved + left.length })
    for (const [vdiskId, moves] of byVdisk) {
      // a vDisk being deleted: its groups go with it
      if (!names.has(vdiskId)) continue
      progress({ vdisk: names.get(vdiskId)! })
      for (let i = 0; i < moves.length; i += balanceMovesMax) {
        moved += (await env.move(vdiskId, moves.slice(i, i + balanceMovesMax))).egroups
        progress({ egroupsMoved: moved })
      }
    }
  }
  return moved
}
