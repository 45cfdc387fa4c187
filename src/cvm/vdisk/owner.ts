import { TessError, assert, errorMessage } from '../../lib/errors.js'
import { egroupCopyInFlightMax, egroupCreatesAheadMax, extentsPerEgroup } from '../../lib/limits.js'
import type { Logger } from '../../lib/log.js'
import type { ReplicaPlace, VdiskRecord } from '../../lib/types.js'
import type { BlockCipher } from './crypt.js'
import { KeyedRwLock } from './locks.js'
import type { MapWriter } from './mapwriter.js'
import { PlacementError, isNoSpace, placementDeviceError, type Exclusion, type PlacementView } from './placement.js'
import { PeerError } from '../replication/protocol.js'
import { RemoteReplica, type Replica } from './replica.js'
import type { ExtentRef, LoadedEgroup, VdiskBackend } from './vdisk.js'

/**
 * What the owner of a vDisk does with its extent groups besides I/O: load them with the block map,
 * make new ones, replace failed replicas. VdiskEngine runs these over etcd and the data port; the
 * storage simulator (test/sim) runs the same functions over its simulated records, disks and
 * network. Everything they need from outside comes through an OwnerEnv.
 */

export interface EgroupRecord {
  id: string
  vdiskId: string
  replicas: Array<{ node: string, diskId: string }>
  /** replicas that failed and were replaced (their files are removed when their node is reachable) */
  stale?: Array<{ node: string, diskId: string }>
  createdAt: string
}

/** a block map entry as stored (etcd value of keys.vdiskMap) */
export interface MapValue { eg: string, s: number, /** the epoch it was written in (absent: 0; history.ts) */ e?: number }

export type VdiskIdentity = Pick<VdiskRecord, 'id' | 'name' | 'rf'>

export interface OwnerEnv {
  log: Logger
  /** this CVM's view of nodes and disks, where new extent groups (and replacement replicas) are placed */
  view: PlacementView
  /** the replica of an extent group on (node, disk): local when the node is this one */
  replicaFor(vdiskId: string, egid: string, node: string, diskId: string): Replica
  /** the disk a node's CVM picks for a new extent group (throws when it cannot: down, or full) */
  pickDiskOn(node: string): Promise<string>
  /** a new extent group id, never handed out before */
  newEgroupId(): Promise<string>
  getEgroupRecord(vdiskId: string, egid: string): Promise<EgroupRecord | undefined>
  /** record extent groups in one transaction, fenced on this CVM's ownership of the vDisk */
  putEgroupRecords(rec: VdiskIdentity, ers: EgroupRecord[]): Promise<void>
}

/**
 * `rf` distinct healthy nodes (up, not draining, with a disk: the view's placement, this node
 * first, then the others with the most free space), each with the disk its CVM picks. Too few
 * nodes: the view waits for more, up to placementWaitMs. A node whose CVM cannot pick a disk
 * (down since the view last heard of it, or full) is left out and others are tried, by the
 * same deadline. Throws a PlacementError that names the nodes.
 */
export async function placeOnDisks(env: OwnerEnv, rf: number, what: string, exclude: Map<string, Exclusion>, deadline = env.view.deadlineFromNow()): Promise<Array<{ node: string, diskId: string }>> {
  for (;;) {
    const nodes = await env.view.place(rf, { what, exclude, deadline })
    const picks = await Promise.allSettled(nodes.map((n) => env.pickDiskOn(n)))
    const placed: Array<{ node: string, diskId: string }> = []
    for (const [i, node] of nodes.entries()) {
      const p = picks[i]!
      if (p.status === 'fulfilled') {
        placed.push({ node, diskId: p.value })
        continue
      }
      const noSpace = isNoSpace(p.reason)
      exclude.set(node, { reason: noSpace ? 'no disk with room for an extent group' : `cannot pick a disk there: ${errorMessage(p.reason)}`, noSpace })
      env.log.warn(`${what}: node ${node} left out: ${errorMessage(p.reason)}`)
    }
    if (placed.length === nodes.length) return placed
  }
}

/**
 * The nodes and disks of a new extent group. While a member node is down, a group that cannot get
 * RF copies now is made with writeMinReplicas(RF) (degraded: the curator adds the missing copies
 * when a node can take them) instead of waiting; otherwise (a cluster starting, a node's disk
 * being registered) placement waits for RF nodes as long as placementWaitMs.
 */
async function placeNewEgroup(env: OwnerEnv, rec: VdiskIdentity): Promise<Array<{ node: string, diskId: string }>> {
  const what = `a new extent group of vDisk ${rec.name}`
  const min = writeMinReplicas(rec.rf)
  if (min < rec.rf && env.view.nodes().some((n) => !n.up && !n.draining)) {
    try {
      return await placeOnDisks(env, rec.rf, what, new Map(), 0)
    } catch (e) {
      if (!(e instanceof PlacementError)) throw e
    }
    try {
      const placed = await placeOnDisks(env, min, `${what} (degraded)`, new Map(), 0)
      env.log.warn(`vDisk ${rec.name}: a new extent group made degraded with ${placed.length} of ${rec.rf} copies (on ${placed.map((p) => p.node).join(', ')}) while a node is down; the curator adds the missing copies when a node can take them`)
      return placed
    } catch (e) {
      if (!(e instanceof PlacementError)) throw e
    }
  }
  return placeOnDisks(env, rec.rf, what, new Map())
}

/** `count` new extent groups (at most egroupCreatesAheadMax), recorded in one transaction */
export async function newEgroups(env: OwnerEnv, rec: VdiskIdentity, count: number): Promise<LoadedEgroup[]> {
  assert(Number.isInteger(count) && count >= 1 && count <= egroupCreatesAheadMax, `a batch of 1-${egroupCreatesAheadMax} extent groups (${count} asked)`)
  const ers: EgroupRecord[] = []
  for (let i = 0; i < count; i++) {
    let placed: Array<{ node: string, diskId: string }>
    try {
      placed = await placeNewEgroup(env, rec)
    } catch (e) {
      // EIO when too few nodes are healthy, ENOSPC only when disks are full; the message names the nodes
      throw placementDeviceError(e)
    }
    const egid = await env.newEgroupId()
    ers.push({ id: egid, vdiskId: rec.id, replicas: placed, createdAt: new Date().toISOString() })
  }
  // Records first, then the files: a crash in between leaves records whose missing files the
  // next load creates (extent groups with no extents).
  await env.putEgroupRecords(rec, ers)
  return await Promise.all(ers.map(async (er) => {
    const replicas = await openNewReplicas(env, rec, er)
    const eg: LoadedEgroup = { id: er.id, replicas, usedSlots: new Set(), freeSlots: [], lock: new KeyedRwLock() }
    for (const r of replicas) if (r instanceof RemoteReplica) r.setInUse(() => [...eg.usedSlots])
    for (let s = 0; s < extentsPerEgroup; s++) eg.freeSlots.push(s)
    return eg
  }))
}

/**
 * Open (create) the files of a new extent group on its nodes. A node that does not answer (cut
 * off a moment ago: the view still has it up) or fails leaves the group degraded when enough
 * copies opened for a write (writeMinReplicas): its record then names only those, and the curator
 * adds the missing copies; with fewer, the write that needed the group fails (EIO).
 */
async function openNewReplicas(env: OwnerEnv, rec: VdiskIdentity, er: EgroupRecord): Promise<Replica[]> {
  const replicas = er.replicas.map((p) => env.replicaFor(rec.id, er.id, p.node, p.diskId))
  const opened = await Promise.allSettled(replicas.map((r) => r.open([])))
  const failed = opened.flatMap((o, i) => (o.status === 'rejected' ? [{ node: er.replicas[i]!.node, reason: o.reason as unknown }] : []))
  if (failed.length === 0) return replicas
  const kept = er.replicas.filter((_, i) => opened[i]!.status === 'fulfilled')
  if (kept.length < writeMinReplicas(rec.rf)) throw placementDeviceError(failed[0]!.reason)
  await env.putEgroupRecords(rec, [{ ...er, replicas: kept }])
  env.log.warn(`vDisk ${rec.name}: new extent group ${er.id} made degraded with ${kept.length} of ${rec.rf} copies (on ${kept.map((p) => p.node).join(', ')}): ` +
    `${failed.map((f) => `node ${f.node}: ${errorMessage(f.reason)}`).join('; ')}; the curator adds the missing copies`)
  return replicas.filter((_, i) => opened[i]!.status === 'fulfilled')
}

/**
 * The replicas of an extent group that replaceFailed replaces (`still`), the ones it keeps, and the
 * ones a copy may come from; undefined when there is none to replace. Reads only: called under the
 * extent group's exclusive lock. `missed`: the operations each replica missed (eg.missed).
 */
function replicasToReplace(replicas: Replica[], failed: Replica[], missed: Map<Replica, Set<object>>, evacuate: boolean, op: object | undefined, rf: number):
  { still: Replica[], kept: Replica[], sources: Replica[], want: number } | undefined {
  // With the replicas that missed other operations meanwhile (Vdisk notes them in eg.missed):
  // a copy from one of those would lack what it missed.
  const lacks = (r: Replica) => !evacuate && (missed.get(r)?.size ?? 0) > 0
  let still = replicas.filter((r) => failed.includes(r) || lacks(r))
  // nothing to replace: another writer replaced them already, unless the group has fewer than RF
  // copies (it went on degraded) and a repair adds the missing ones
  if (still.length === 0 && (evacuate || replicas.length >= rf)) return undefined
  // the replicas kept, and the ones a copy may come from
  let kept = replicas.filter((r) => !still.includes(r))
  let sources = kept
  if (kept.length === 0 && !evacuate) {
    // every replica misses some change (each of those operations fails): replace the ones that
    // miss this operation's (it failed on them, or they were copied from one it failed on),
    // from one that has it
    const missesOp = (r: Replica) => failed.includes(r) || (op !== undefined && missed.get(r)?.has(op) === true)
    still = replicas.filter(missesOp)
    if (still.length === 0) return undefined
    kept = replicas.filter((r) => !still.includes(r))
    sources = kept
  }
  // an evacuation moves copies one for one; otherwise the group gets back to RF copies
  const want = evacuate ? still.length : Math.max(0, rf - kept.length)
  return { still, kept, sources, want }
}

/**
 * The fewest healthy replicas an extent group may go on with when a replica fails and no node can
 * take a replacement now (like Ceph's min_size): RF - 1, at least 1. Writes are then acknowledged
 * by the replicas kept; the curator adds the missing copies once a node is available.
 */
export function writeMinReplicas(rf: number): number {
  return Math.max(1, rf - 1)
}

/**
 * Copy every slot that holds data from `source` to `target`: node to node when both are on other
 * nodes than this one (RemoteReplica.pullFrom), else through this node, up to
 * egroupCopyInFlightMax slots at once (a read from one while the write of another is on its way:
 * a copy over the data port is otherwise a round trip per extent, well below what the disks and
 * the network carry). Says which way it went (for the log).
 */
async function copySlots(log: Logger, source: Replica, target: Replica): Promise<'node to node' | 'through this node'> {
  if (source instanceof RemoteReplica && target instanceof RemoteReplica && source.node !== target.node) {
    try {
      // node to node: the bytes skip this one (see pullFrom)
      await target.pullFrom(source)
      return 'node to node'
    } catch (e) {
      // No answer in time: the peer may still be copying, and a slot it writes after this copy
      // (and after client writes resume) would put back older bytes. The replacement fails
      // instead (the curator tries again). Any other failure was answered once the peer stopped.
      if (e instanceof PeerError && e.kind === 'timeout') throw e
      log.warn(`copy of a replica from ${source.node} to ${target.node} node to node failed (${errorMessage(e)}): copying it through this node`)
    }
  }
  let next = 0
  const worker = async () => {
    while (next < extentsPerEgroup) {
      const slot = next++
      const raw = await source.readRaw(slot)
      if (raw) await target.writeRaw(slot, raw)
    }
  }
  await Promise.all(Array.from({ length: egroupCopyInFlightMax }, worker))
  return 'through this node'
}

/** The extent group's record with the replicas in `still` replaced by `added`; the replaced ones are recorded as stale (their files are removed later). */
function withReplacedReplicas(er: EgroupRecord, still: Replica[], added: Array<{ node: string, diskId: string }>): EgroupRecord {
  const gone = new Set(still.map((s) => `${s.node}/${s.diskId}`))
  return {
    ...er,
    replicas: [...er.replicas.filter((r) => !gone.has(`${r.node}/${r.diskId}`)), ...added],
    stale: [...(er.stale ?? []), ...er.replicas.filter((r) => gone.has(`${r.node}/${r.diskId}`))],
  }
}

/** how replaceFailed replaces: see there */
export interface ReplaceOptions {
  /** the replicas are healthy and move one for one (host removal, balancing) */
  evacuate?: boolean
  /** the operation that failed on them (a write), so that a copy never comes from a replica that missed it */
  op?: object
  /** the curator's repair: waits for a node, never goes on degraded */
  repair?: boolean
  /** the disk the one copy goes to (the curator's balancing), instead of one placement picks */
  target?: ReplicaPlace
}

/** A move's target: never a node that holds another replica of the group (copies on distinct nodes). */
function checkedTarget(eg: LoadedEgroup, moving: Replica[], t: ReplicaPlace): ReplicaPlace {
  const other = eg.replicas.find((r) => r.node === t.node && !moving.includes(r))
  if (other !== undefined) throw new TessError('TESS_E_CONFLICT', `cannot move a replica of extent group ${eg.id} to node ${t.node}: it holds another replica of the group`, 'copies of a group are on distinct nodes: pick a disk of a node that holds none')
  return t
}

/**
 * Keep RF copies after replicas failed: under the egroup's exclusive lock, copy every slot from a
 * healthy replica to a node that holds none, sync it, and record the new replica set (the failed
 * ones are recorded as stale so their files are removed later). A group with fewer than RF copies
 * gets the missing ones too. When no node can take a copy now, a write (not an evacuation or a
 * repair) goes on with the replicas kept if they are at least writeMinReplicas(RF): the record
 * then names fewer than RF replicas, which the curator sees as under-replicated and repairs
 * (`repair`: the curator's call, which waits for a node like an evacuation and never degrades).
 */
export async function replaceFailed(env: OwnerEnv, rec: VdiskIdentity, eg: LoadedEgroup, failed: Replica[], why: unknown, o: ReplaceOptions = {}): Promise<void> {
  const { evacuate = false, op, repair = false, target } = o
  const release = await eg.lock.write(0)
  try {
    const missed = eg.missed ?? new Map<Replica, Set<object>>()
    const chosen = replicasToReplace(eg.replicas, failed, missed, evacuate, op, rec.rf)
    if (chosen === undefined) return // another writer replaced them already
    const { still, kept, sources, want } = chosen
    // An evacuated replica is healthy: it is the source when it is the only copy (RF 1), and the
    // source of a move that holds every operation (the copy stays on its node when it moves
    // between the node's disks).
    const mover = target !== undefined && still[0] !== undefined && (missed.get(still[0])?.size ?? 0) === 0 ? still[0] : undefined
    const source = mover ?? sources[0] ?? (evacuate ? still[0] : undefined)
    if (!source) throw new Error('no healthy replica left')
    const er = await env.getEgroupRecord(rec.id, eg.id)
    if (!er) throw new Error(`extent group ${eg.id} has no record`)
    const exclude = new Map<string, Exclusion>(eg.replicas.map((r) => [r.node, {
      reason: !still.includes(r) ? 'holds a replica of this extent group' : evacuate ? 'being evacuated' : `its replica failed (${errorMessage(why)})`,
    }]))
    const what = `${want} replacement replica(s) of extent group ${eg.id} of vDisk ${rec.name} (RF ${rec.rf})`
    // A write whose group keeps enough healthy copies does not wait for a node: it goes on
    // degraded (below) and the curator re-protects the group later.
    const degradable = !evacuate && !repair && kept.length >= writeMinReplicas(rec.rf)
    let targets: Array<{ node: string, diskId: string }>
    try {
      // waits for a healthy node (bounded); a PlacementError names the nodes and why each cannot be used
      targets = want === 0 ? [] : target !== undefined ? [checkedTarget(eg, still, target)] : await placeOnDisks(env, want, what, exclude, degradable ? 0 : env.view.deadlineFromNow())
    } catch (e) {
      if (!degradable || !(e instanceof PlacementError)) throw e
      env.log.warn(`vDisk ${rec.name}: extent group ${eg.id} goes on degraded with ${kept.length} of ${rec.rf} copies (on ${kept.map((r) => r.node).join(', ')}): ${errorMessage(e)}; the curator adds the missing copies when a node can take them`)
      targets = []
    }
    const next: Replica[] = [...kept]
    const added: Array<{ node: string, diskId: string }> = []
    for (const [i, { node, diskId }] of targets.entries()) {
      const r = env.replicaFor(rec.id, eg.id, node, diskId)
      if (r instanceof RemoteReplica) r.setInUse(() => [...eg.usedSlots])
      await r.open([])
      const path = await copySlots(env.log, source, r)
      await r.sync()
      // a copy misses what its source missed
      const inherited = missed.get(source)
      if (inherited !== undefined && inherited.size > 0) (eg.missed ??= missed).set(r, new Set(inherited))
      next.push(r)
      added.push({ node, diskId })
      const replaced = still[i]
      const how = target !== undefined ? `moved (${errorMessage(why)})` : evacuate ? 'evacuated' : `failed (${errorMessage(why)})`
      env.log.warn(`vDisk ${rec.name}: extent group ${eg.id}: ${replaced === undefined ? 'missing copy' : `replica on ${replaced.node} disk ${replaced.diskId} ${how}`}; copied to ${node} disk ${diskId} from ${source.node} (${path})`)
    }
    const nextRec = withReplacedReplicas(er, still, added)
    try {
      await env.putEgroupRecords(rec, [nextRec])
    } catch (e) {
      // The record may have been written all the same (etcd applied it, its answer was lost): the
      // next load may take either set. Until a record is known, every write goes to the replicas of
      // both (the ones kept and the copies just made), so whichever set loads holds all of them.
      eg.replicas = [...eg.replicas, ...next.filter((r) => !eg.replicas.includes(r))].sort((a, b) => Number(b.local) - Number(a.local))
      throw e
    }
    next.sort((a, b) => Number(b.local) - Number(a.local))
    eg.replicas = next
    for (const r of still) eg.missed?.delete(r)
  } finally {
    release()
  }
}

/**
 * The block map and extent groups of a vDisk from its records: every replica is opened (and
 * recovered, given the slots the map uses); one that cannot be reached now is replaced on the
 * first write that fails on it, and skipped by reads.
 */
export async function loadLayout(env: OwnerEnv, rec: VdiskIdentity, egRecs: EgroupRecord[], mapEntries: Iterable<[number, MapValue]>, historySlots: Map<string, Set<number>> = new Map()): Promise<{ map: Map<number, ExtentRef>, egroups: Map<string, LoadedEgroup> }> {
  const map = new Map<number, ExtentRef>()
  // the extents of history entries (snapshots) are in use as much as the map's
  const inUse = new Map<string, Set<number>>([...historySlots].map(([eg, slots]) => [eg, new Set(slots)]))
  for (const [vb, mv] of mapEntries) {
    map.set(vb, mv.e !== undefined && mv.e > 0 ? { egroupId: mv.eg, slot: mv.s, e: mv.e } : { egroupId: mv.eg, slot: mv.s })
    let s = inUse.get(mv.eg)
    if (!s) inUse.set(mv.eg, s = new Set())
    s.add(mv.s)
  }
  const egroups = new Map<string, LoadedEgroup>()
  await Promise.all(egRecs.map(async (er) => {
    const used = inUse.get(er.id) ?? new Set<number>()
    const replicas = er.replicas.map((r) => env.replicaFor(rec.id, er.id, r.node, r.diskId))
    replicas.sort((a, b) => Number(b.local) - Number(a.local))
    const eg: LoadedEgroup = { id: er.id, replicas, usedSlots: used, freeSlots: [], lock: new KeyedRwLock() }
    for (const r of replicas) if (r instanceof RemoteReplica) r.setInUse(() => [...eg.usedSlots])
    // Open (and recover) every replica; one that cannot be reached now is replaced on the
    // first write that fails on it, and skipped by reads.
    await Promise.all(replicas.map((r) => r.open([...used]).catch((e: unknown) => {
      env.log.warn(`vDisk ${rec.name}: replica of extent group ${er.id} on ${r.node} disk ${r.diskId} not available: ${errorMessage(e)}`)
    })))
    for (let s = 0; s < extentsPerEgroup; s++) if (!used.has(s)) eg.freeSlots.push(s)
    egroups.set(er.id, eg)
  }))
  for (const ref of map.values()) {
    if (!egroups.has(ref.egroupId)) env.log.error(`vDisk ${rec.name}: block map names extent group ${ref.egroupId} which has no record`)
  }
  return { map, egroups }
}

/** The backend a loaded Vdisk runs on: its map writer, and the functions above for its extent groups. */
export function vdiskBackend(env: OwnerEnv, rec: VdiskIdentity, mapWriter: MapWriter, mapKey: (vb: number) => string, histKey: (vb: number, e: number) => string, cipher?: BlockCipher): VdiskBackend {
  return {
    ...(cipher !== undefined ? { cipher } : {}),
    mapWriter,
    mapKey,
    histKey,
    newEgroups: (count) => newEgroups(env, rec, count),
    replaceFailed: (eg, failed, why, o) => replaceFailed(env, rec, eg, failed, why, o),
    rf: rec.rf,
    log: env.log,
  }
}
