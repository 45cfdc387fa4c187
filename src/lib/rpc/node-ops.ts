import { TessError } from '../errors.js'
import { parseContainerSpec, cpusField, memoryField, type ContainerInfo, type ContainerSpec, type CsmQuota } from '../container-spec.js'
import type { CsmStatsAnswer, HostCapacity, ImageInfo, PullProgressView } from '../csm-types.js'
import type { GcFound, ReloadedCertificate, ReplicaMove, SnapshotOp, SnapshotRecord } from '../types.js'
import { bool, int, obj, objList, oneOf, shown, str, strMax, within, type ApiServer } from '../http-server.js'
import { referenceLengthMax } from '../images/limits.js'
import { jsonRequest, type JsonTarget } from '../jsonhttp.js'
import { protocolOfOlderCvms, protocolVersion, protocolVersionOldest } from '../version.js'
import { balanceMovesMax, containerStopTimeoutMsMax, disksMax, gcMinAgeMsMax, logTailLinesMax, nodeCallTimeoutMs, nodesMax, repairBytesPerSecMax, repairBytesPerSecMin, scrubBytesPerSecMax, scrubBytesPerSecMin } from '../limits.js'
import { checkExportName, checkName } from '../names.js'
import { containerOps, type ContainerOpName, type CsmLogAnswer, type CsmLogQuery, type VolumeFreezeAnswer } from './csm.js'

/**
 * Node operations: what one CVM asks of another node's CVM (its CSMs, its image store, its vDisks
 * and the cluster key), or of its own node in-process. Each operation has a request and a reply
 * type (NodeOps), one check of its request (nodeOpRequests), a typed call on the asking side
 * (NodeCall) and a typed handler table on the receiving side (NodeHandlers), so the compiler
 * checks both ends. On the wire: POST /v1/node-ops/OP with the body as JSON, for nodes only.
 */

/** What the node's CSMs look like from the CVM of the node. */
export interface LocalCsm {
  name: string
  pid: number | null
  up: boolean
  containers: ContainerInfo[]
}

/** One node's answer to an image pull. */
export interface PullAnswer {
  ref: string
  digest: string
  sizeBytes: number
  layers: number
  platform: string
  downloadedBytes: number
  seconds: number
}

/** A CSM's stats, named. */
export type NamedCsmStats = CsmStatsAnswer & { name: string }

type Empty = Record<string, never>
interface CsmName { name: string }
interface ContainerRef { csm: string, id: string }

/** Every node operation: its request and its reply. */
export interface NodeOps {
  'node.capacity': { req: Empty, res: HostCapacity }
  'csm.ensure': { req: CsmName, res: { pid: number | null } }
  'csm.remove': { req: CsmName & { force: boolean }, res: { removed: string[] } }
  'csm.limits': { req: CsmName & CsmQuota, res: Empty }
  'csm.status': { req: Empty, res: LocalCsm[] }
  'image.pull': { req: { ref: string }, res: PullAnswer }
  'image.list': { req: Empty, res: ImageInfo[] }
  /** the pulls running or waiting on the node, how far each is */
  'image.pulls': { req: Empty, res: PullProgressView[] }
  'image.remove': { req: { ref: string }, res: { removed: boolean } }
  'container.run': { req: { csm: string, spec: ContainerSpec }, res: ContainerInfo }
  'container.get': { req: ContainerRef, res: ContainerInfo }
  'container.op': { req: ContainerRef & { op: ContainerOpName, timeoutMs?: number }, res: ContainerInfo }
  'container.remove': { req: ContainerRef & { force: boolean }, res: ContainerInfo }
  'container.logs': { req: ContainerRef & CsmLogQuery, res: CsmLogAnswer }
  /** freeze or thaw a volume a container has attached read-write (a volume snapshot) */
  'container.freeze': { req: ContainerRef & { volume: string, frozen: boolean }, res: VolumeFreezeAnswer }
  'stats': { req: { csm?: string }, res: NamedCsmStats[] }
  'vdisk.release': { req: { name: string }, res: { released: boolean, reason?: string } }
  /** NBD connections this node's clients have open to a vDisk (a delete asks every node) */
  'vdisk.clients': { req: { name: string }, res: { connections: number } }
  /** take, delete or restore a snapshot of a vDisk this node owns, or flatten a clone it owns (its owner does all four) */
  'vdisk.snapshot': { req: { id: string, name: string, op: SnapshotOp }, res: SnapshotRecord }
  /** a vDisk was deleted: a node that has it loaded (its owner) shuts it, so its clients get ESHUTDOWN */
  'vdisk.deleted': { req: { id: string }, res: { shut: boolean } }
  /**
   * the curator's repair of one vDisk at its owner (or at a node that takes it when nobody owns it):
   * copies of its extent groups with replicas on the `down` nodes, or with fewer than RF
   */
  'vdisk.repair': { req: { id: string, down: string[], bytesPerSec?: number, lostDisks?: string[] }, res: { egroups: number, bytes: number } }
  /** the curator's balancing: move replicas of one vDisk's extent groups to other disks, at its owner */
  'vdisk.move': { req: { id: string, moves: ReplicaMove[], bytesPerSec?: number }, res: { egroups: number, bytes: number, skipped: number } }
  /** the curator's scrub of one vDisk at its owner, at most bytesPerSec */
  'vdisk.scrub': { req: { id: string, bytesPerSec: number }, res: { extents: number, bytesChecked: number, badBlocks: number, repairedBlocks: number, unreadable: number } }
  /** the curator's garbage collection on one node: stale replicas' files and files no record names, changed at least minAgeMs ago */
  'pool.gc': { req: { minAgeMs: number }, res: GcFound }
  /** to the curator master: run a full scrub now */
  'curator.scrub': { req: Empty, res: { started: boolean, master: string } }
  'keys.unlock': { req: { key: string }, res: { unlocked: boolean } }
  'keys.get': { req: Empty, res: { key: string | null } }
  /** take up the node certificate and key in pki/ now (API, NBD and data port listeners, calls to other nodes) */
  'pki.reload': { req: Empty, res: ReloadedCertificate }
}

export type NodeOp = keyof NodeOps
export type Req<K extends NodeOp> = NodeOps[K]['req']
export type Res<K extends NodeOp> = NodeOps[K]['res']

/** Calls one node's CVM: in this process for this node, over the API for another. */
export type NodeCall = <K extends NodeOp>(node: string, op: K, req: Req<K>, timeoutMs?: number) => Promise<Res<K>>

export type NodeHandler<K extends NodeOp> = (req: Req<K>) => Promise<Res<K>>
/** What a CVM does for the others: one handler per operation (the compiler checks none is missing). */
export type NodeHandlers = { [K in NodeOp]: NodeHandler<K> }

const containerIdPattern = /^[a-f0-9]{12}$/
/** a cluster key is 32 bytes: its base64 is far shorter than this */
const clusterKeyLengthMax = 1024

const csmField = (b: Record<string, unknown>, k = 'csm'): string => checkName('CSM', strMax(b, k, 63)!)

const wholeNumberPattern = /^[1-9][0-9]{0,19}$/

function placeField(b: Record<string, unknown>, k: string): { node: string, diskId: string } {
  const p = obj(b, k)!
  const diskId = str(p, 'diskId')!
  if (!wholeNumberPattern.test(diskId)) throw new TessError('TESS_E_BAD_REQUEST', `field "${k}.diskId" must be a disk id, got ${shown(diskId, 30)}`, 'a whole number')
  return { node: checkName('node', strMax(p, 'node', 63)!), diskId }
}

/** One replica move of the curator's balancing: an extent group id and two places (node, disk id). */
function replicaMoveField(b: Record<string, unknown>): ReplicaMove {
  const egroupId = str(b, 'egroupId')!
  if (!wholeNumberPattern.test(egroupId)) throw new TessError('TESS_E_BAD_REQUEST', `field "egroupId" must be an extent group id, got ${shown(egroupId, 30)}`, 'a whole number')
  return { egroupId, from: placeField(b, 'from'), to: placeField(b, 'to') }
}

/** A container's id as its CSM gave it: 12 hex digits. */
export function containerIdField(b: Record<string, unknown>): string {
  const id = str(b, 'id')!
  if (!containerIdPattern.test(id)) throw new TessError('TESS_E_BAD_REQUEST', `bad container id ${shown(id, 40)}`, '12 hex digits')
  return id
}

/** The cluster key, base64 (keys.unlock, and the public POST /v1/keys/unlock). */
export function clusterKeyField(b: Record<string, unknown>): string {
  const key = strMax(b, 'key', clusterKeyLengthMax)!
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(key)) throw new TessError('TESS_E_INVALID', 'the cluster key must be base64', 'give the key file `tess vdisk create --encrypted` wrote')
  return key
}

const containerRef = (b: Record<string, unknown>): ContainerRef => ({ csm: csmField(b), id: containerIdField(b) })
const imageRef = (b: Record<string, unknown>) => ({ ref: strMax(b, 'ref', referenceLengthMax)! })
const empty = (): Empty => ({})

/** The check of each operation's request: a malformed one is a coded error naming the field. */
export const nodeOpRequests: { [K in NodeOp]: (b: Record<string, unknown>) => Req<K> } = {
  'node.capacity': empty,
  'csm.ensure': (b) => ({ name: csmField(b, 'name') }),
  'csm.remove': (b) => ({ name: csmField(b, 'name'), force: bool(b, 'force') }),
  'csm.limits': (b) => ({ name: csmField(b, 'name'), cpus: cpusField(b, true)!, memoryBytes: memoryField(b, true)! }),
  'csm.status': empty,
  'image.pull': imageRef,
  'image.list': empty,
  'image.pulls': empty,
  'image.remove': imageRef,
  'container.run': (b) => ({ csm: csmField(b), spec: parseContainerSpec(obj(b, 'spec'), 'field "spec"') }),
  'container.get': containerRef,
  'container.op': (b) => {
    const timeoutMs = int(b, 'timeoutMs', 0, containerStopTimeoutMsMax, false)
    return { ...containerRef(b), op: oneOf(b, 'op', containerOps)!, ...(timeoutMs !== undefined ? { timeoutMs } : {}) }
  },
  'container.remove': (b) => ({ ...containerRef(b), force: bool(b, 'force') }),
  'container.logs': (b) => {
    const offset = int(b, 'offset', 0, Number.MAX_SAFE_INTEGER, false)
    const tail = int(b, 'tail', 0, logTailLinesMax, false)
    const sinceMs = int(b, 'sinceMs', 0, Number.MAX_SAFE_INTEGER, false)
    return {
      ...containerRef(b), ...(offset !== undefined ? { offset } : {}), ...(tail !== undefined ? { tail } : {}),
      ...(sinceMs !== undefined ? { sinceMs } : {}), ...(bool(b, 'timestamps') ? { timestamps: true } : {}),
    }
  },
  'container.freeze': (b) => ({ ...containerRef(b), volume: checkName('volume', strMax(b, 'volume', 63)!), frozen: bool(b, 'frozen') }),
  'stats': (b) => (b.csm !== undefined && b.csm !== null ? { csm: csmField(b) } : {}),
  'vdisk.release': (b) => ({ name: checkName('vDisk', strMax(b, 'name', 63)!) }),
  // a vDisk's export, or a snapshot's (VDISK@SNAPSHOT)
  'vdisk.clients': (b) => ({ name: checkExportName(strMax(b, 'name', 127)!) }),
  'vdisk.snapshot': (b) => {
    const op = oneOf(b, 'op', ['create', 'delete', 'restore', 'flatten'] as const)!
    // a flatten names no snapshot
    return { id: vdiskIdField(b), name: op === 'flatten' ? '' : checkName('snapshot', strMax(b, 'name', 63)!), op }
  },
  'vdisk.deleted': (b) => ({ id: vdiskIdField(b) }),
  'vdisk.repair': (b) => {
    const down = b.down
    if (!Array.isArray(down) || down.length > nodesMax || !down.every((n) => typeof n === 'string')) {
      throw new TessError('TESS_E_BAD_REQUEST', 'field "down" must be a list of node names', `at most ${nodesMax} names`)
    }
    const bytesPerSec = int(b, 'bytesPerSec', repairBytesPerSecMin, repairBytesPerSecMax, false)
    const lost = b.lostDisks
    if (lost !== undefined && (!Array.isArray(lost) || lost.length > disksMax || !lost.every((d) => typeof d === 'string' && /^[1-9][0-9]{0,19}$/.test(d)))) {
      throw new TessError('TESS_E_BAD_REQUEST', 'field "lostDisks" must be a list of disk ids', `at most ${disksMax} ids, each a whole number`)
    }
    return { id: vdiskIdField(b), down: down.map((n: string) => checkName('node', n)), ...(bytesPerSec !== undefined ? { bytesPerSec } : {}), ...(lost !== undefined ? { lostDisks: lost as string[] } : {}) }
  },
  'vdisk.move': (b) => {
    const bytesPerSec = int(b, 'bytesPerSec', repairBytesPerSecMin, repairBytesPerSecMax, false)
    const moves = objList(b, 'moves', balanceMovesMax, replicaMoveField)
    if (moves === undefined) throw new TessError('TESS_E_BAD_REQUEST', 'field "moves" is required', 'add "moves": [{"egroupId", "from", "to"}, ...]')
    return { id: vdiskIdField(b), moves, ...(bytesPerSec !== undefined ? { bytesPerSec } : {}) }
  },
  'vdisk.scrub': (b) => ({ id: vdiskIdField(b), bytesPerSec: int(b, 'bytesPerSec', scrubBytesPerSecMin, scrubBytesPerSecMax)! }),
  'pool.gc': (b) => ({ minAgeMs: int(b, 'minAgeMs', 0, gcMinAgeMsMax)! }),
  'curator.scrub': empty,
  'keys.unlock': (b) => ({ key: clusterKeyField(b) }),
  'keys.get': empty,
  'pki.reload': empty,
}

function vdiskIdField(b: Record<string, unknown>): string {
  const id = strMax(b, 'id', 20)!
  if (!/^[1-9][0-9]*$/.test(id)) throw new TessError('TESS_E_BAD_REQUEST', `bad vDisk id ${shown(id, 40)}`, 'a vDisk id is a whole number')
  return id
}

/**
 * The caller's protocol (the `protocol` query parameter of a node operation; absent from CVMs
 * of releases before it was sent: protocol 1). One older than this release works beside is
 * refused, naming both, instead of being misread.
 */
export function checkProtocol(protocol: string | null): void {
  const theirs = protocol === null ? protocolOfOlderCvms.current : Number(protocol)
  if (!Number.isInteger(theirs) || theirs < 1) throw new TessError('TESS_E_BAD_REQUEST', `bad protocol ${shown(protocol ?? '', 20)}`, 'a protocol is a whole number from 1')
  if (theirs < protocolVersionOldest) {
    throw new TessError('TESS_E_PRECONDITION', `a node operation in protocol ${theirs}: this CVM speaks ${protocolVersion} and works beside ${protocolVersionOldest} and later`, 'the calling node runs a release too old for this one: finish the upgrade (tess cluster upgrade)')
  }
}

export function isNodeOp(op: string): op is NodeOp {
  return Object.hasOwn(nodeOpRequests, op)
}

/** The path of an operation on another node's CVM. */
export const nodeOpPath = (op: NodeOp): string => `/v1/node-ops/${op}?protocol=${protocolVersion}`

function handle<K extends NodeOp>(handlers: NodeHandlers, op: K, body: Record<string, unknown>): Promise<Res<K>> {
  const req = within(`node operation ${op}`, () => nodeOpRequests[op](body))
  return handlers[op](req)
}

/**
 * Run one operation from a body that came from anywhere: an unknown operation is TESS_E_NOT_FOUND,
 * a body that is not a JSON object or a malformed request TESS_E_BAD_REQUEST or TESS_E_INVALID.
 */
export async function dispatchNodeOp(handlers: NodeHandlers, op: string, body: unknown, protocol?: string | null): Promise<unknown> {
  checkProtocol(protocol ?? null)
  if (!isNodeOp(op)) throw new TessError('TESS_E_NOT_FOUND', `no node operation ${shown(op, 40)}`, 'are all nodes on the same tess version?')
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new TessError('TESS_E_BAD_REQUEST', 'request body must be a JSON object', 'send a JSON object as the body')
  return handle(handlers, op, body as Record<string, unknown>)
}

/** Register the node-ops route: the way other CVMs reach this node's handlers (node certificates only). */
export function registerNodeOps(api: ApiServer, handlers: NodeHandlers): void {
  api.route('POST', '/v1/node-ops/:op', async (req) => dispatchNodeOp(handlers, req.params.op!, req.body, req.query.get('protocol')), 'node')
}

export interface NodeCallerOptions {
  /** this node: its operations run in this process, checked as if they came over the wire */
  self: string
  handlers: NodeHandlers
  /** how to reach another node's CVM (its address and this node's credentials) */
  target: (node: string) => Promise<JsonTarget>
  /** the JSON request (lib/jsonhttp.ts; tests inject one) */
  request?: <T>(t: JsonTarget, method: string, path: string, body: unknown, timeoutMs: number) => Promise<T>
}

/** The typed call the container control uses to reach any node's CVM. */
export function nodeCaller(o: NodeCallerOptions): NodeCall {
  const request = o.request ?? jsonRequest
  return async <K extends NodeOp>(node: string, op: K, req: Req<K>, timeoutMs = nodeCallTimeoutMs): Promise<Res<K>> => {
    if (node === o.self) return await dispatchNodeOp(o.handlers, op, req) as Res<K>
    return request<Res<K>>(await o.target(node), 'POST', nodeOpPath(op), req, timeoutMs)
  }
}
