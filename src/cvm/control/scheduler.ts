import { TessError, errorMessage } from '../../lib/errors.js'
import type { HostCapacity } from '../../lib/csm-types.js'
import type { NodeCall } from '../../lib/rpc/node-ops.js'
import { gib, mib, round2 } from '../../lib/units.js'
import type { ContainerRecord, CsmRecord } from './records.js'

/**
 * The schedulers of the container control: which node a new CSM goes to (by the nodes' capacity
 * and what their CSMs were given), and which CSM a new container goes to (by the CSMs' quotas and
 * what their containers asked for). They read nothing from etcd: callers give the records.
 */

/** What a node has, and what its CSMs were given. */
export interface NodeRoom {
  cap: HostCapacity
  usedCpus: number
  usedMemoryBytes: number
  /** the CSMs counted in "used" */
  names: string[]
}

/** What a node has (asked of its CVM), and what its CSMs (other than `except`) were given. */
export async function nodeRoom(call: NodeCall, node: string, csms: CsmRecord[], except?: string): Promise<NodeRoom> {
  const cap = await call(node, 'node.capacity', {})
  const mine = csms.filter((c) => c.node === node && c.name !== except && c.deleting !== true)
  return { cap, usedCpus: mine.reduce((a, c) => a + c.cpus, 0), usedMemoryBytes: mine.reduce((a, c) => a + c.memoryBytes, 0), names: mine.map((c) => c.name) }
}

/** Why CSM `name` with this quota does not fit on `node`, or undefined when it does. */
export function roomError(name: string, node: string, cpus: number, memoryBytes: number, room: NodeRoom): TessError | undefined {
  const freeCpus = room.cap.cpus - room.usedCpus
  const freeMem = room.cap.memoryBytes - room.usedMemoryBytes
  const given = room.names.length > 0 ? ` given to CSM(s) ${room.names.join(', ')}` : ''
  if (cpus > freeCpus + 1e-9) {
    return new TessError('TESS_E_CAPACITY', `cannot place CSM "${name}" on node ${node}: it asks ${cpus} cpus, the node has ${round2(room.cap.cpus)} of which ${round2(room.usedCpus)} are${given || ' given to other CSMs'} (${round2(Math.max(0, freeCpus))} free)`,
      `ask for at most ${round2(Math.max(0, freeCpus))} cpus, or use another node`)
  }
  if (memoryBytes > freeMem) {
    return new TessError('TESS_E_CAPACITY', `cannot place CSM "${name}" on node ${node}: it asks ${gib(memoryBytes)} of memory, the node has ${gib(room.cap.memoryBytes)} of which ${gib(room.usedMemoryBytes)} are${given || ' given to other CSMs'} (${gib(Math.max(0, freeMem))} free)`,
      `ask for at most ${gib(Math.max(0, freeMem))}, or use another node`)
  }
  return undefined
}

/**
 * The node for a new CSM among `candidates` (up, not draining): of those with room for it, the one
 * with the most free capacity (CPU and memory shares together), then by name. A node that cannot
 * tell its capacity (its containers are unavailable) is left out; when no node can, that is the error.
 */
export async function pickCsmNode(call: NodeCall, req: { name: string, cpus: number, memoryBytes: number }, candidates: string[], csms: CsmRecord[]): Promise<string> {
  const { name } = req
  const rooms = await Promise.all(candidates.map(async (node) => {
    try {
      return { node, room: await nodeRoom(call, node, csms) }
    } catch (e) {
      return { node, room: undefined, why: errorMessage(e) }
    }
  }))
  const fits = rooms.flatMap((r) => r.room !== undefined && roomError(name, r.node, req.cpus, req.memoryBytes, r.room) === undefined ? [{ node: r.node, room: r.room }] : [])
  if (fits.length === 0) {
    const best = rooms.flatMap((r) => r.room !== undefined ? [`${r.node}: ${round2(r.room.cap.cpus - r.room.usedCpus)} cpus and ${gib(r.room.cap.memoryBytes - r.room.usedMemoryBytes)} free`] : [])
    const cannot = rooms.filter((r) => r.room === undefined).map((r) => r.why ?? `${r.node} did not answer`)
    if (best.length === 0 && cannot.length > 0) {
      // no node can run containers at all: that, not capacity, is the problem
      throw new TessError('TESS_E_PRECONDITION', `cannot create CSM "${name}": no node can run containers (${cannot.join('; ')})`,
        'fix the cause on a node and restart its daemons, or add a host that can run containers (`tess cluster status` shows each node)')
    }
    throw new TessError('TESS_E_CAPACITY', `cannot create CSM "${name}" (${req.cpus} cpus, ${gib(req.memoryBytes)}): no node has room (${[...best, ...cannot].join('; ') || 'no node is up'})`, 'ask for less, delete a CSM, or add a host')
  }
  const score = (r: NodeRoom) => (r.cap.cpus - r.usedCpus) / r.cap.cpus + (r.cap.memoryBytes - r.usedMemoryBytes) / r.cap.memoryBytes
  fits.sort((a, b) => score(b.room) - score(a.room) || a.node.localeCompare(b.node))
  return fits[0]!.node
}

/** What a container asks for (none: no limit of its own). */
export interface ContainerAsk {
  name: string
  cpus?: number
  memoryBytes?: number
}

/** Does the container fit in the CSM's quota at all (ignoring the other containers)? */
export const fitsCsm = (req: ContainerAsk, c: CsmRecord): boolean => (req.cpus === undefined || req.cpus <= c.cpus + 1e-9) && (req.memoryBytes === undefined || req.memoryBytes <= c.memoryBytes)

const asks = (req: ContainerAsk) => `${req.cpus ?? '-'} cpus and ${req.memoryBytes !== undefined ? mib(req.memoryBytes) : '-'}`

/** A container that does not fit in the quota of the CSM it names. */
export function csmTooSmall(req: ContainerAsk, c: CsmRecord): TessError {
  return new TessError('TESS_E_CAPACITY', `cannot run container "${req.name}" in CSM "${c.name}": it asks ${asks(req)}, the CSM has ${c.cpus} cpus and ${mib(c.memoryBytes)}`,
    `ask for less, or grow the CSM: tess csm update ${c.name} --cpus N --memory SIZE`)
}

/**
 * The CSM for a container among `live` (CSMs whose node is up). Free room per CSM is its quota
 * minus what its containers asked for. CSMs the container fits in without overcommit come first;
 * among them the one with the most room, then the fewest containers, then by name.
 */
export function pickCsm(req: ContainerAsk, live: CsmRecord[], containers: ContainerRecord[]): CsmRecord {
  const fit = live.filter((c) => fitsCsm(req, c))
  if (fit.length === 0) {
    throw new TessError('TESS_E_CAPACITY', `cannot run container "${req.name}": no CSM is big enough (it asks ${asks(req)}; largest: ${live.map((c) => `${c.name} ${c.cpus} cpus ${mib(c.memoryBytes)}`).join(', ')})`,
      'ask for less, or create a bigger CSM')
  }
  const room = (c: CsmRecord) => {
    const mine = containers.filter((x) => x.csm === c.name)
    const freeCpus = c.cpus - mine.reduce((a, x) => a + (x.cpus ?? 0), 0)
    const freeMem = c.memoryBytes - mine.reduce((a, x) => a + (x.memoryBytes ?? 0), 0)
    const fitsFree = (req.cpus ?? 0) <= freeCpus + 1e-9 && (req.memoryBytes ?? 0) <= freeMem
    return { fitsFree, score: freeCpus / c.cpus + freeMem / c.memoryBytes, count: mine.length }
  }
  const ranked = fit.map((c) => ({ c, r: room(c) })).sort((a, b) =>
    Number(b.r.fitsFree) - Number(a.r.fitsFree) || b.r.score - a.r.score || a.r.count - b.r.count || a.c.name.localeCompare(b.c.name))
  return ranked[0]!.c
}
