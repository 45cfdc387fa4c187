import path from 'node:path'
import { TessError } from './errors.js'
import type { NetworkMode, RuntimeName } from './csm-types.js'
import { bodyObject, bool, int, num, objList, obj, oneOf, shown, str, strList, strMax, within } from './http-server.js'
import { referenceLengthMax } from './images/limits.js'
import {
  containerArgBytesMax, containerArgsMax, containerEnvMax, containerPathLengthMax, containerRestartRetriesMax, containerRlimitsMax, containerUserLengthMax, cpusMax, cpusMin,
  memoryLimitMaxBytes, memoryLimitMinBytes, pidsMaxLimit, volumeHostLengthMax, volumesPerContainerMax, volumeTargetLengthMax,
} from './limits.js'
import { checkName } from './names.js'

/**
 * One container spec, from the command to the runtime: the types that cross the boundaries
 * between the CLI and a CVM (the public API), between CVMs (node operations, lib/rpc/node-ops.ts)
 * and from a CVM to a CSM daemon (lib/rpc/csm.ts), and one validator per shape. Every boundary
 * that receives a spec checks it with the same function and the same bounds (lib/limits.ts); a
 * malformed body from any client is a coded TessError naming the field and the value.
 */

export const networkModes: readonly NetworkMode[] = ['none', 'host']
export const runtimeNames: readonly RuntimeName[] = ['runc', 'crun']
export const restartPolicyNames = ['no', 'on-failure', 'always'] as const

/**
 * When a CSM starts a container again after it exits (`--restart`): never (no), after a non-zero
 * exit at most `maxRetries` times (on-failure; no limit without it), or after every exit (always).
 * A container stopped by a user is not restarted. The failover of a lost node starts the
 * containers that have one (other than no) on another node.
 */
export interface RestartPolicy {
  policy: typeof restartPolicyNames[number]
  maxRetries?: number
}

/** `no`, `always`, `on-failure` or `on-failure:N`, as `container show` prints it and `--restart` takes it. */
export function formatRestartPolicy(p: RestartPolicy | undefined): string {
  if (p === undefined) return 'no'
  return p.policy === 'on-failure' && p.maxRetries !== undefined ? `on-failure:${p.maxRetries}` : p.policy
}

/** The policy of `--restart VALUE`; a coded error names the value otherwise. */
export function parseRestartPolicy(v: string): RestartPolicy {
  const m = /^(no|always|on-failure)(?::([0-9]{1,7}))?$/.exec(v)
  if (m === null || (m[2] !== undefined && m[1] !== 'on-failure') || (m[2] !== undefined && (Number(m[2]) < 1 || Number(m[2]) > containerRestartRetriesMax))) {
    throw new TessError('TESS_E_INVALID', `invalid restart policy ${shown(v, 40)}`, `give no, always, on-failure, or on-failure:N with N from 1 to ${containerRestartRetriesMax}`)
  }
  return { policy: m[1] as RestartPolicy['policy'], ...(m[2] !== undefined ? { maxRetries: Number(m[2]) } : {}) }
}

function restartField(o: Record<string, unknown>): RestartPolicy | undefined {
  if (o.restart === undefined || o.restart === null) return undefined
  const r = obj(o, 'restart')
  return within('field "restart"', () => {
    const policy = oneOf(r, 'policy', restartPolicyNames)!
    const maxRetries = int(r, 'maxRetries', 1, containerRestartRetriesMax, false)
    if (maxRetries !== undefined && policy !== 'on-failure') throw new TessError('TESS_E_INVALID', `maxRetries is for policy on-failure, not ${policy}`, 'leave it out')
    return { policy, ...(maxRetries !== undefined ? { maxRetries } : {}) }
  })
}

/** A volume as a container asks for it: `--volume NAME:/path[:ro]`. */
export interface VolumeMount {
  name: string
  /** absolute, normalised path inside the container */
  target: string
  readOnly: boolean
}

/** The NBD export of a volume's vDisk, on the node's CVM. */
export interface NbdExport {
  host: string
  port: number
  export: string
}

/** A volume as the CVM hands it to a CSM: the mount, its NBD export, and whether it holds a filesystem. */
export interface VolumeSpec extends VolumeMount {
  nbd: NbdExport
  /** the volume was formatted before: never format it again (a missing filesystem is an error) */
  formatted: boolean
}

/** A process limit (setrlimit): the runtime clamps it to the host's hard limit. */
export interface Rlimit {
  type: string
  soft: number
  hard: number
}

/** The id mapping of a container's user namespace. */
export interface IdMapping {
  /** the host id of the container's 0 */
  hostId: number
  size: number
}

/** What a CSM runs: the spec of one container (ContainerManager.run in csm/runtime/containers.ts). */
export interface ContainerSpec {
  /** unique in the CSM; default `c-<first 8 of the id>` */
  name?: string
  /** an image reference as recorded by the puller (`registry/repository:tag`) */
  image: string
  /** replaces the image's Cmd */
  command?: string[]
  /** replaces the image's Entrypoint */
  entrypoint?: string[]
  /** `KEY=VALUE` entries */
  env?: string[]
  workingDir?: string
  /** `uid[:gid]`, or names from the image */
  user?: string
  cpus?: number
  memoryBytes?: number
  pidsMax?: number
  /** default "none": a network namespace with only loopback */
  network?: NetworkMode
  rlimits?: Rlimit[]
  /** volumes to attach */
  volumes?: VolumeSpec[]
  /** a user namespace: the container's root is an unprivileged host user (csm/runtime/userns.ts) */
  userns?: boolean
  /** when the CSM starts it again after it exits (default: never) */
  restart?: RestartPolicy
}

export type ContainerStatus = 'creating' | 'running' | 'paused' | 'exited' | 'removing'

/** A container spec with its defaults filled in, as the CSM keeps it. */
export interface NormalisedSpec {
  image: string
  command?: string[]
  entrypoint?: string[]
  env: string[]
  workingDir?: string
  user?: string
  cpus?: number
  memoryBytes?: number
  pidsMax: number
  network: NetworkMode
  rlimits: Rlimit[]
  volumes?: VolumeSpec[]
  /** the id mapping of its user namespace (with --userns) */
  userns?: IdMapping
  /** absent: never restarted */
  restart?: RestartPolicy
}

/** One container as its CSM knows it: its state file, and the answer of run, inspect and list. */
export interface ContainerInfo {
  id: string
  name: string
  csm: string
  image: string
  imageDigest: string
  runtime: RuntimeName
  status: ContainerStatus
  createdAt: string
  startedAt?: string
  finishedAt?: string
  /** the container's init process on the host, while it runs */
  pid?: number
  /** exit code (128 + signal for a signal) once exited; absent when it could not be learned */
  exitCode?: number
  /** a process of the container was killed by the OOM killer */
  oomKilled?: boolean
  /** why exitCode is missing, or other facts about the exit */
  exitNote?: string
  stopSignal: string
  spec: NormalisedSpec
  /** layer diff_ids, top-most first (to mount the rootfs again on start) */
  layers: string[]
  shimPid?: number
  shimStartTime?: string
  /** times its CSM started it again after an exit (its restart policy) */
  restartCount?: number
  /** stopped by a user: not restarted whatever its policy, until started again */
  stoppedByUser?: boolean
  /** exits in a row that each ran shorter than containerRestartResetAfterMs (the backoff's exponent) */
  restartStreak?: number
  /** when the CSM starts it again (its policy asked, the backoff runs) */
  nextRestartAt?: string
}

/** `POST /v1/containers` of the public API: a container spec and where it may go. */
export interface RunRequest {
  name: string
  image: string
  /** run it in this CSM, or in one of this pool's (the scheduler picks), or anywhere */
  csm?: string
  pool?: string
  cpus?: number
  memoryBytes?: number
  env?: string[]
  network?: NetworkMode
  command?: string[]
  volumes?: VolumeMount[]
  userns?: boolean
  restart?: RestartPolicy
}

/** What a CSM is given: CPUs and memory, for all its containers together. */
export interface CsmQuota {
  cpus: number
  memoryBytes: number
}

/**
 * What one CSM daemon runs with: `<dataDir>/csms/NAME/csm.json`. The node's CVM writes it (from
 * the CSM record in etcd); the supervisor runs one daemon per file; the daemon reads it at start.
 */
export interface CsmSpec extends CsmQuota {
  version: 1
  name: string
  id: string
  runtime: RuntimeName
  /** cgroup under which every CSM of this cluster on this node has its subtree (`/tess-<cluster id>-<node>`) */
  cgroupParent: string
}

/**
 * The cgroup parent of a cluster's CSMs on a node: one per cluster and node, so test clusters
 * sharing a machine never meet, and neither do the test hosts of one cluster (they share the
 * machine's cgroup file system): a CSM moved from one to another must not lose its cgroup when
 * the first removes its copy.
 */
export function cgroupParentFor(clusterId: string, nodeName: string): string {
  return `/tess-${clusterId.replace(/[^a-zA-Z0-9]/g, '').slice(0, 12)}-${checkName('node', nodeName)}`
}

// (specs written before the node's name was part of it have none)
const cgroupParentPattern = /^\/tess-[a-zA-Z0-9]{0,12}(-[a-z0-9][a-z0-9-]{0,62})?$/
const envKeyPattern = /^[A-Za-z_][A-Za-z0-9_]*$/
const rlimitTypeLengthMax = 32

// ---------------------------------------------------------------- fields shared by the shapes

/** CPUs of a CSM or a container. */
export function cpusField(o: Record<string, unknown>, required: boolean): number | undefined {
  return num(o, 'cpus', cpusMin, cpusMax, required)
}

/** Memory of a CSM or a container, in bytes. */
export function memoryField(o: Record<string, unknown>, required: boolean): number | undefined {
  return int(o, 'memoryBytes', memoryLimitMinBytes, memoryLimitMaxBytes, required)
}

function nameField(o: Record<string, unknown>, k: string, kind: string, required: boolean): string | undefined {
  const v = strMax(o, k, 63, required)
  return v === undefined ? undefined : checkName(kind, v)
}

function imageField(o: Record<string, unknown>): string {
  const v = strMax(o, 'image', referenceLengthMax)!
  if (v === '') throw new TessError('TESS_E_INVALID', 'field "image" is empty', 'name an image, e.g. docker.io/library/busybox:1.36')
  return v
}

/** `KEY=VALUE` entries. A message names the entry and its key only: values are often credentials. */
function envField(o: Record<string, unknown>): string[] | undefined {
  const env = strList(o, 'env', containerEnvMax, containerArgBytesMax)
  env?.forEach((e, i) => {
    const eq = e.indexOf('=')
    const key = eq < 0 ? undefined : e.slice(0, eq)
    if (key === undefined || !envKeyPattern.test(key)) {
      throw new TessError('TESS_E_INVALID', `entry ${i} of field "env" is not KEY=VALUE: ${key === undefined ? 'no "="' : `bad key ${shown(key, 40)}`}`, 'write KEY=VALUE, KEY of letters, digits and _, not starting with a digit')
    }
    if (e.includes('\0')) throw new TessError('TESS_E_INVALID', `entry ${i} of field "env" (${key}) holds a NUL byte`, 'environment values cannot hold NUL bytes')
  })
  return env
}

function argsField(o: Record<string, unknown>, k: 'command' | 'entrypoint'): string[] | undefined {
  return strList(o, k, containerArgsMax, containerArgBytesMax)
}

function rlimitsField(o: Record<string, unknown>): Rlimit[] | undefined {
  return objList(o, 'rlimits', containerRlimitsMax, (r) => ({
    type: strMax(r, 'type', rlimitTypeLengthMax)!,
    soft: int(r, 'soft', 0, Number.MAX_SAFE_INTEGER)!,
    hard: int(r, 'hard', 0, Number.MAX_SAFE_INTEGER)!,
  }))
}

/** The fields of a container spec that the public run request and the CSM's spec share. */
function commonSpecFields(o: Record<string, unknown>): Omit<RunRequest, 'name' | 'csm' | 'pool' | 'volumes'> {
  const command = argsField(o, 'command')
  const env = envField(o)
  const cpus = cpusField(o, false)
  const memoryBytes = memoryField(o, false)
  const network = oneOf(o, 'network', networkModes, false)
  const restart = restartField(o)
  return {
    image: imageField(o),
    ...(command !== undefined ? { command } : {}),
    ...(env !== undefined ? { env } : {}),
    ...(cpus !== undefined ? { cpus } : {}),
    ...(memoryBytes !== undefined ? { memoryBytes } : {}),
    ...(network !== undefined ? { network } : {}),
    ...(bool(o, 'userns') ? { userns: true } : {}),
    ...(restart !== undefined ? { restart } : {}),
  }
}

// ---------------------------------------------------------------- volumes

const reservedTargets = ['/', '/proc', '/sys', '/dev', '/etc/hosts', '/etc/hostname', '/etc/resolv.conf']

/** A volume's target: an absolute, normalised path inside the container, not over what the runtime provides. */
export function checkVolumeTarget(target: unknown): string {
  if (typeof target !== 'string' || !target.startsWith('/') || target.length > volumeTargetLengthMax || target.includes('\0')) {
    throw new TessError('TESS_E_INVALID', `field "target" = ${shown(target, 100)} is not an absolute path of at most ${volumeTargetLengthMax} characters`, 'e.g. --volume data:/var/lib/data')
  }
  const t = path.posix.normalize(target).replace(/\/+$/, '') || '/'
  if (t.split('/').includes('..') || t !== target.replace(/\/+$/, '')) {
    throw new TessError('TESS_E_INVALID', `field "target" = ${shown(target, 100)} is not a normalised path`, `write ${t}`)
  }
  if (reservedTargets.some((r) => t === r || ((r === '/proc' || r === '/sys' || r === '/dev') && t.startsWith(`${r}/`)))) {
    throw new TessError('TESS_E_INVALID', `field "target" = ${shown(target, 100)}: a volume cannot be mounted at ${t}`, 'choose a directory of the container\'s own')
  }
  return t
}

/** One volume mount: its name, target and mode (extra fields are dropped). */
function mountOf(v: Record<string, unknown>): VolumeMount {
  return { name: nameField(v, 'name', 'volume', true)!, target: checkVolumeTarget(v.target), readOnly: bool(v, 'readOnly') }
}

/** No volume twice, no target inside another's. */
function checkMountSet<T extends VolumeMount>(mounts: T[]): T[] {
  const names = new Set<string>()
  const targets: string[] = []
  for (const m of mounts) {
    const t = m.target
    if (names.has(m.name)) throw new TessError('TESS_E_INVALID', `volume "${m.name}" is given twice`, 'attach a volume once per container')
    if (targets.some((x) => x === t || x.startsWith(`${t}/`) || t.startsWith(`${x}/`))) throw new TessError('TESS_E_INVALID', `volume targets overlap at ${t}`, 'give each volume its own directory')
    names.add(m.name)
    targets.push(t)
  }
  return mounts
}

function nbdOf(v: Record<string, unknown>): NbdExport {
  const nbd = obj(v, 'nbd')
  return within('field "nbd"', () => ({
    host: strMax(nbd, 'host', volumeHostLengthMax)!,
    port: int(nbd, 'port', 1, 65535)!,
    export: nameField(nbd, 'export', 'vDisk', true)!,
  }))
}

const mountsOf = (o: Record<string, unknown>): VolumeMount[] | undefined => {
  const mounts = objList(o, 'volumes', volumesPerContainerMax, mountOf)
  return mounts && checkMountSet(mounts)
}

const volumeSpecsOf = (o: Record<string, unknown>): VolumeSpec[] | undefined => {
  const specs = objList(o, 'volumes', volumesPerContainerMax, (v) => ({ ...mountOf(v), nbd: nbdOf(v), formatted: bool(v, 'formatted') }))
  return specs && checkMountSet(specs)
}

/** A container's volume mounts (from any client): names, targets, no volume twice, no overlapping targets. */
export function parseVolumeMounts(body: unknown, what: string): VolumeMount[] {
  return within(what, () => mountsOf({ volumes: body }) ?? [])
}

/** A container's volumes as the CVM sends them to a CSM: the mounts, and each volume's NBD export. */
export function parseVolumeSpecs(body: unknown, what: string): VolumeSpec[] {
  return within(what, () => volumeSpecsOf({ volumes: body }) ?? [])
}

// ---------------------------------------------------------------- the shapes

/** A container spec, as a CSM runs it: from a node operation or the CSM's own API. */
export function parseContainerSpec(body: unknown, what: string): ContainerSpec {
  return within(what, () => {
    const o = bodyObject(body)
    const name = nameField(o, 'name', 'container', false)
    const entrypoint = argsField(o, 'entrypoint')
    const workingDir = strMax(o, 'workingDir', containerPathLengthMax, false)
    if (workingDir !== undefined && !workingDir.startsWith('/')) throw new TessError('TESS_E_INVALID', `field "workingDir" = ${shown(workingDir)} is not an absolute path`, 'e.g. /srv')
    const user = strMax(o, 'user', containerUserLengthMax, false)
    const pidsMax = int(o, 'pidsMax', 1, pidsMaxLimit, false)
    const rlimits = rlimitsField(o)
    const volumes = volumeSpecsOf(o)
    return {
      ...(name !== undefined ? { name } : {}),
      ...commonSpecFields(o),
      ...(entrypoint !== undefined ? { entrypoint } : {}),
      ...(workingDir !== undefined ? { workingDir } : {}),
      ...(user !== undefined ? { user } : {}),
      ...(pidsMax !== undefined ? { pidsMax } : {}),
      ...(rlimits !== undefined ? { rlimits } : {}),
      ...(volumes !== undefined && volumes.length > 0 ? { volumes } : {}),
    }
  })
}

/** The public API's run request: a container spec with volume mounts (not yet attached), and where it may go. */
export function parseRunRequest(body: unknown, what: string): RunRequest {
  return within(what, () => {
    const o = bodyObject(body)
    const name = nameField(o, 'name', 'container', true)!
    const csm = nameField(o, 'csm', 'CSM', false)
    const pool = nameField(o, 'pool', 'CSM pool', false)
    const volumes = mountsOf(o)
    return {
      name,
      ...commonSpecFields(o),
      ...(csm !== undefined ? { csm } : {}),
      ...(pool !== undefined ? { pool } : {}),
      ...(volumes !== undefined ? { volumes } : {}),
    }
  })
}

/** A CSM's quota: both fields, within the bounds every boundary uses. */
export function parseCsmQuota(body: unknown, what: string): CsmQuota {
  return within(what, () => {
    const o = bodyObject(body)
    return { cpus: cpusField(o, true)!, memoryBytes: memoryField(o, true)! }
  })
}

/** `POST /v1/csms` of the public API: a new CSM, and optionally its node and OCI runtime. */
export interface CsmCreateRequest extends CsmQuota {
  name: string
  node?: string
  runtime?: RuntimeName
}

export function parseCsmCreateRequest(body: unknown, what: string): CsmCreateRequest {
  return within(what, () => {
    const o = bodyObject(body)
    const node = nameField(o, 'node', 'node', false)
    const runtime = oneOf(o, 'runtime', runtimeNames, false)
    return {
      name: nameField(o, 'name', 'CSM', true)!, cpus: cpusField(o, true)!, memoryBytes: memoryField(o, true)!,
      ...(node !== undefined ? { node } : {}), ...(runtime !== undefined ? { runtime } : {}),
    }
  })
}

/** `PATCH /v1/csms/NAME` of the public API: a new quota, one field or both. */
export function parseCsmUpdateRequest(body: unknown, what: string): Partial<CsmQuota> {
  return within(what, () => {
    const o = bodyObject(body)
    const cpus = cpusField(o, false)
    const memoryBytes = memoryField(o, false)
    if (cpus === undefined && memoryBytes === undefined) throw new TessError('TESS_E_BAD_REQUEST', 'nothing to update', 'give "cpus" and/or "memoryBytes"')
    return { ...(cpus !== undefined ? { cpus } : {}), ...(memoryBytes !== undefined ? { memoryBytes } : {}) }
  })
}

/** A CSM's spec file (csm.json), as the CSM daemon reads it. */
export function parseCsmSpec(body: unknown, what: string): CsmSpec {
  return within(what, () => {
    const o = bodyObject(body)
    if (o.version !== 1) throw new TessError('TESS_E_INVALID', `unknown version ${shown(o.version)}`, 'upgrade tess')
    const cgroupParent = str(o, 'cgroupParent')!
    if (!cgroupParentPattern.test(cgroupParent)) throw new TessError('TESS_E_INVALID', `field "cgroupParent" = ${shown(cgroupParent)} is not /tess-<cluster id>-<node>`, 'the node\'s CVM writes it: delete the CSM and create it again')
    return {
      version: 1,
      name: nameField(o, 'name', 'CSM', true)!,
      id: strMax(o, 'id', 64)!,
      cpus: cpusField(o, true)!,
      memoryBytes: memoryField(o, true)!,
      runtime: oneOf(o, 'runtime', runtimeNames)!,
      cgroupParent,
    }
  })
}
