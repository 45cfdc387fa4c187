import type { Etcd3 } from 'etcd3'
import { etcdCall, getJson, keys, listJson } from '../../lib/etcd.js'
import { scrubBytesPerSecDefault, vBlockSizeBytes } from '../../lib/limits.js'
import type { CuratorStatus, ClusterHealth, DiskRecord, NodeRecord, NodeStatusRecord, VdiskHealth, VdiskRecord } from '../../lib/types.js'
import type { EgroupRecord, MapValue } from '../vdisk/owner.js'
import type { BalanceDisk } from './balance.js'

/** Which nodes are up (their status record exists) and which disks of those nodes are offline. */
export interface Liveness {
  up: ReadonlySet<string>
  /** disks registered on a node that is up whose CVM no longer reports them (the directory cannot be read) */
  offlineDisks: ReadonlyMap<string, DiskRecord>
  /** the disks that node reports, with their file system's capacity and device (what the balancing weighs) */
  onlineDisks?: BalanceDisk[]
}

/** Is this replica readable now: its node up and its disk reported by that node? */
export function replicaUp(l: Liveness, r: { node: string, diskId: string }): boolean {
  return l.up.has(r.node) && !l.offlineDisks.has(r.diskId)
}

/**
 * How well every vDisk is protected, from the records alone: an extent group is healthy when it
 * has RF replicas on nodes that are up (on disks they report), under-replicated when it has fewer
 * (some on nodes that are down or on disks that are offline, or it went on degraded), lost when
 * none of its replicas is readable. The bytes to re-protect are those of the extents (1 MiB each)
 * in the groups that are not healthy.
 */
export function assessHealth(vdisks: VdiskRecord[], egroups: EgroupRecord[], l: Liveness, extentsPerEgroup: ReadonlyMap<string, number>): { vdisks: VdiskHealth[], total: Omit<VdiskHealth, 'name' | 'id' | 'rf'> } {
  const up = l.up
  const byVdisk = new Map<string, EgroupRecord[]>()
  for (const eg of egroups) {
    let l = byVdisk.get(eg.vdiskId)
    if (l === undefined) byVdisk.set(eg.vdiskId, l = [])
    l.push(eg)
  }
  const out: VdiskHealth[] = []
  for (const v of vdisks) {
    if (v.state !== 'ready') continue
    const h: VdiskHealth = { name: v.name, id: v.id, rf: v.rf, egroups: 0, healthy: 0, underReplicated: 0, lost: 0, bytesToReprotect: 0, bytesLost: 0, nodesDown: [] }
    const down = new Set<string>()
    for (const eg of byVdisk.get(v.id) ?? []) {
      h.egroups++
      const live = eg.replicas.filter((r) => replicaUp(l, r)).length
      for (const r of eg.replicas) if (!up.has(r.node)) down.add(r.node)
      const bytes = (extentsPerEgroup.get(eg.id) ?? 0) * vBlockSizeBytes
      if (live === 0) {
        h.lost++
        h.bytesLost += bytes
      } else if (live < v.rf) {
        h.underReplicated++
        h.bytesToReprotect += bytes
      } else {
        h.healthy++
      }
    }
    h.nodesDown = [...down].sort()
    out.push(h)
  }
  out.sort((a, b) => a.name.localeCompare(b.name))
  const total = { egroups: 0, healthy: 0, underReplicated: 0, lost: 0, bytesToReprotect: 0, bytesLost: 0, nodesDown: [] as string[] }
  const down = new Set<string>()
  for (const h of out) {
    total.egroups += h.egroups
    total.healthy += h.healthy
    total.underReplicated += h.underReplicated
    total.lost += h.lost
    total.bytesToReprotect += h.bytesToReprotect
    total.bytesLost += h.bytesLost
    for (const n of h.nodesDown) down.add(n)
  }
  total.nodesDown = [...down].sort()
  return { vdisks: out, total }
}

/** the number of extents each extent group holds, from every vDisk's block map */
/**
 * Extents per extent group of some vDisks, from their block maps and snapshot histories (extents
 * only snapshots see are data to protect as much). The health needs them only for the vDisks whose
 * groups are not all healthy, so a healthy cluster reads no block map. The counts of a vDisk are
 * kept `ttlMs`: a health read every 250 ms during a repair (a script, `watch`) reads a large
 * vDisk's map, one etcd key per vBlock, once per `ttlMs` rather than per call; a repair moves
 * replicas, never extents, so what it shows of the bytes left stays right.
 */
export class ExtentCounts {
  private readonly cache = new Map<string, { at: number, counts: Map<string, number> }>()

  constructor(private readonly etcd: Etcd3, private readonly ttlMs = 0, private readonly now: () => number = Date.now) {}

  async of(vdiskIds: ReadonlySet<string>): Promise<Map<string, number>> {
    // what is not asked for now is dropped (deleted vDisks, healthy again)
    for (const id of this.cache.keys()) if (!vdiskIds.has(id)) this.cache.delete(id)
    const n = new Map<string, number>()
    await Promise.all([...vdiskIds].map(async (id) => {
      let c = this.cache.get(id)
      if (c === undefined || this.now() - c.at >= this.ttlMs) {
        const at = this.now()
        c = { at, counts: await this.read(id) }
        this.cache.set(id, c)
      }
      for (const [eg, k] of c.counts) n.set(eg, k)
    }))
    return n
  }

  private async read(id: string): Promise<Map<string, number>> {
    const [map, hist] = await Promise.all([
      etcdCall('read a block map', () => this.etcd.getAll().prefix(keys.vdiskMapPrefix(id)).strings()),
      etcdCall('read a snapshot history', () => this.etcd.getAll().prefix(keys.vdiskHistPrefix(id)).strings()),
    ])
    const n = new Map<string, number>()
    for (const v of [...Object.values(map), ...Object.values(hist)]) {
      const eg = (JSON.parse(v) as MapValue).eg
      n.set(eg, (n.get(eg) ?? 0) + 1)
    }
    return n
  }
}

/** The vDisks with an extent group that has fewer readable replicas than their RF (the bytes of those groups are counted). */
export function vdisksNotHealthy(vdisks: VdiskRecord[], egroups: EgroupRecord[], l: Liveness): Set<string> {
  const rf = new Map(vdisks.filter((v) => v.state === 'ready').map((v) => [v.id, v.rf]))
  const out = new Set<string>()
  for (const eg of egroups) {
    const want = rf.get(eg.vdiskId)
    if (want !== undefined && !out.has(eg.vdiskId) && eg.replicas.filter((r) => replicaUp(l, r)).length < want) out.add(eg.vdiskId)
  }
  return out
}

/** the nodes whose status record exists (their CVM heartbeats) */
export async function upNodes(etcd: Etcd3): Promise<Set<string>> {
  return (await liveness(etcd)).up
}

/** The nodes that are up and the online and offline disks of those nodes, from the status and disk records. */
export async function liveness(etcd: Etcd3): Promise<{ up: Set<string>, offlineDisks: Map<string, DiskRecord>, onlineDisks: BalanceDisk[] }> {
  const [statuses, disks] = await Promise.all([
    etcdCall('read node status', () => listJson<NodeStatusRecord>(etcd, keys.nodeStatusPrefix)),
    etcdCall('list disks', () => listJson<DiskRecord>(etcd, keys.disksPrefix)),
  ])
  const byNode = new Map(statuses.map((s) => [s.name, s]))
  const offlineDisks = new Map<string, DiskRecord>()
  const onlineDisks: BalanceDisk[] = []
  for (const d of disks) {
    const st = byNode.get(d.node)
    if (st === undefined) continue
    const reported = st.disks[d.id]
    if (reported === undefined) offlineDisks.set(d.id, d)
    else onlineDisks.push({ id: d.id, node: d.node, capacityBytes: reported.capacityBytes, dev: reported.dev, ...(d.draining === true ? { draining: true } : {}) })
  }
  return { up: new Set(byNode.keys()), offlineDisks, onlineDisks }
}

/**
 * The cluster's health as `tess cluster health` shows it: per vDisk and in total, with the
 * curator's master (the election's leader) and what it last reported.
 */
export async function clusterHealth(etcd: Etcd3, master: () => Promise<string | undefined>, counts: ExtentCounts = new ExtentCounts(etcd)): Promise<ClusterHealth> {
  const [vdisks, egroups, live, nodes, status, leader] = await Promise.all([
    etcdCall('list vDisks', () => listJson<VdiskRecord>(etcd, keys.vdisksPrefix)),
    etcdCall('list extent groups', () => listJson<EgroupRecord>(etcd, keys.egroupsPrefix)),
    liveness(etcd),
    etcdCall('list nodes', () => listJson<NodeRecord>(etcd, keys.nodesPrefix)),
    etcdCall('read the curator status', () => getJson<CuratorStatus>(etcd, keys.curatorStatus)),
    etcdCall('ask who the curator master is', master),
  ])
  const extents = await counts.of(vdisksNotHealthy(vdisks, egroups, live))
  const up = live.up
  const { vdisks: per, total } = assessHealth(vdisks, egroups, live, extents)
  const rate = status?.repairBytesPerSec ?? 0
  const state: ClusterHealth['state'] = total.lost > 0 ? 'data-unavailable' : total.underReplicated > 0 ? 'degraded' : 'healthy'
  return {
    state,
    nodesUp: nodes.filter((n) => up.has(n.name)).map((n) => n.name).sort(),
    nodesDown: nodes.filter((n) => !up.has(n.name)).map((n) => n.name).sort(),
    disksOffline: [...live.offlineDisks.values()].map((d) => ({ id: d.id, node: d.node, path: d.path })).sort((a, b) => a.node.localeCompare(b.node) || a.path.localeCompare(b.path)),
    total,
    vdisks: per,
    curator: {
      master: leader ?? null,
      lastScanAt: status?.lastScanAt ?? null,
      repairing: status?.repairing ?? false,
      repairStartedAt: status?.repairStartedAt ?? null,
      repairedEgroups: status?.repairedEgroups ?? 0,
      repairedBytes: status?.repairedBytes ?? 0,
      repairBytesPerSec: rate,
      etaSec: total.bytesToReprotect > 0 && rate > 0 ? Math.ceil(total.bytesToReprotect / rate) : null,
      nodeDownGraceMs: status?.nodeDownGraceMs ?? null,
      repairsDueAt: status?.repairsDueAt ?? [],
      waiting: status?.waiting ?? [],
      failovers: status?.failovers ?? [],
      lastError: status?.lastError ?? null,
      scrubbing: status?.scrubbing ?? false,
      scrubBytesPerSec: status?.scrubBytesPerSec ?? scrubBytesPerSecDefault,
      lastScrubAt: status?.lastScrubAt ?? null,
      lastScrubFound: status?.lastScrubFound ?? null,
      lastGcAt: status?.lastGcAt ?? null,
      lastGcFound: status?.lastGcFound ?? null,
      balancing: status?.balancing ?? false,
      lastBalanceAt: status?.lastBalanceAt ?? null,
      lastBalanceMoved: status?.lastBalanceMoved ?? null,
    },
  }
}
