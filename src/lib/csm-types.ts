/**
 * Result types of the container half of the management API (CSMs, CSM pools, registries,
 * images, containers), shared by the CVM and the CLI. Keys are stable: add, never rename.
 */

import type { VolumeMount } from './container-spec.js'

export type RuntimeName = 'runc' | 'crun'
export type NetworkMode = 'none' | 'host'

/** A CSM as `tess csm list/show` shows it. */
export interface CsmInfo {
  name: string
  id: string
  node: string
  cpus: number
  memoryBytes: number
  runtime: RuntimeName
  /** running: its daemon answers; starting: created, daemon not answering yet; down: the node or daemon is down */
  state: 'running' | 'starting' | 'down'
  /** the CSM daemon's pid on its node, when known */
  pid: number | null
  containers: number
  /** what its containers ask for together (their --cpus and --memory) */
  reservedCpus: number
  reservedMemoryBytes: number
  createdAt: string
}

export interface CsmDeleteResult {
  name: string
  node: string
  containersRemoved: string[]
}

/** `tess csm move`: where the CSM went, and its containers (run again there, or not: why) */
export interface CsmMoveResult {
  name: string
  from: string
  node: string
  /** containers that run in the CSM on its new node */
  containers: string[]
  /** containers that were removed from the old node but could not run on the new one */
  notStarted: Array<{ name: string, error: { code: string, message: string, hint: string } }>
  /** a failover's: containers with no restart policy, removed with their lost node and not run again */
  dropped: string[]
}

export interface CsmPoolInfo {
  name: string
  csms: string[]
  createdAt: string
}

export interface RegistryInfo {
  name: string
  /** as given: http://host:port or https://host */
  url: string
  /** `host[:port]`: the registry part of image references it serves */
  host: string
  insecure: boolean
  username: string | null
  /** a password is stored (it is never shown) */
  hasPassword: boolean
  createdAt: string
}

/** Pull rules: a deny rule that matches refuses; with any allow rule, an image must match one. */
export interface RegistryPolicyInfo {
  allow: string[]
  deny: string[]
}

/** One image stored on one node. */
export interface ImageInfo {
  node: string
  ref: string
  digest: string
  sizeBytes: number
  layers: number
  platform: string
  pulledAt: string
  /** containers on this node using it */
  usedBy: string[]
}

export interface ImagePullResult {
  ref: string
  digest: string
  sizeBytes: number
  layers: number
  platform: string
  /** per node: bytes received in this pull (0 when the node had every blob) and seconds taken */
  nodes: Array<{ node: string, downloadedBytes: number, seconds: number }>
}

/** How far a pull is on one node (GET /v1/images/pulls): the layers and compressed bytes it holds so far. */
export interface PullProgressView {
  /** the reference as the pull was asked for */
  ref: string
  /** waiting: behind other pulls on the node; pulling: resolving, downloading or unpacking */
  state: 'waiting' | 'pulling'
  startedAt: string
  /** known once the manifest is read (null before) */
  layersTotal: number | null
  /** layers downloaded (or found stored), verified and unpacked */
  layersDone: number
  /** compressed bytes of all layers, known once the manifest is read (null before) */
  bytesTotal: number | null
  /** compressed layer bytes held so far (downloaded now, resumed or stored before) */
  bytesDone: number
}

/** A pull in progress on a node of the cluster. */
export type ImagePullProgress = PullProgressView & { node: string }

export interface ImageRemoveResult {
  ref: string
  nodes: string[]
}

export type ContainerState = 'creating' | 'running' | 'paused' | 'exited' | 'removing' | 'unknown'

export interface ContainerView {
  id: string
  name: string
  csm: string
  node: string
  image: string
  imageDigest: string
  runtime: RuntimeName
  status: ContainerState
  createdAt: string
  startedAt: string | null
  finishedAt: string | null
  pid: number | null
  exitCode: number | null
  oomKilled: boolean
  exitNote: string | null
  command: string[]
  env: string[]
  cpus: number | null
  memoryBytes: number | null
  network: NetworkMode
  /** runs in a user namespace: its root is an unprivileged host user */
  userns: boolean
  /** the volumes mounted into it (name, path inside, read-only) */
  volumes: VolumeMount[]
  /** no, always, on-failure or on-failure:N (`--restart`) */
  restartPolicy: string
  /** times its CSM started it again after an exit (on this node: a failover starts from 0) */
  restartCount: number
  /** when it is started again (its policy waits the backoff), else null */
  nextRestartAt: string | null
  /**
   * (`container show` only) where it can be reached: network "host" has its node's address,
   * network "none" loopback only (absent in answers of older CVMs)
   */
  addresses?: string[]
}

export interface ContainerRemoveResult {
  name: string
  id: string
  csm: string
  node: string
}

/** What of a container's log to read (URL parameters offset, tail, since, timestamps: logQueryParams). */
export interface LogQuery {
  offset?: number
  tail?: number
  /** not before the first line written at or after this time (ms since the epoch) */
  sinceMs?: number
  /** each line with its time in front */
  timestamps?: boolean
}

/** The URL parameters of a log query (rpc/csm.ts logQueryFrom reads them). */
export function logQueryParams(q: LogQuery): URLSearchParams {
  const s = new URLSearchParams()
  if (q.offset !== undefined) s.set('offset', String(q.offset))
  if (q.tail !== undefined) s.set('tail', String(q.tail))
  if (q.sinceMs !== undefined) s.set('since', String(q.sinceMs))
  if (q.timestamps === true) s.set('timestamps', 'true')
  return s
}

export interface LogChunk {
  name: string
  /** the bytes, base64 */
  data: string
  /** where the next read starts */
  offset: number
  /** the container still runs: more may come */
  running: boolean
  /** the log's size when it was read: a reader that is not following stops there (absent from older CSMs) */
  sizeBytes?: number
}

export interface UsageStats {
  cpuUsageNs: number
  /** CPU used over the sampling window, in CPUs (1.0 = one core busy) */
  cpuCpus: number | null
  cpuThrottledPeriods: number
  cpuLimitCpus: number | null
  memoryUsageBytes: number
  memoryLimitBytes: number | null
  oomKills: number
  pidsCurrent: number
  pidsLimit: number | null
}

export interface ContainerStatsView extends UsageStats {
  name: string
  id: string
  csm: string
  node: string
  readAt: string
}

export interface CsmStatsView extends UsageStats {
  csm: string
  node: string
  containers: number
  readAt: string
}

export interface StatsResult {
  containers: ContainerStatsView[]
  csms: CsmStatsView[]
}

export interface VolumeAttachment {
  container: string
  csm: string
  node: string
  readOnly: boolean
  /** where it is mounted inside the container */
  target: string
  at: string
}

/** A volume: a vDisk with an ext4 filesystem, attached to containers. */
export interface VolumeInfo {
  name: string
  /** the vDisk that holds it */
  vdisk: string
  sizeBytes: number
  rf: number
  /** bytes of the vDisk written so far (thin: what the pool holds for it, per copy) */
  allocatedBytes: number
  /** its vDisk is encrypted on the disks (tess volume create --encrypted) */
  encrypted: boolean
  /** an ext4 filesystem was made on it (on its first read-write attach) */
  formatted: boolean
  attachments: VolumeAttachment[]
  createdAt: string
  /** a clone: the volume snapshot it was made from (VOLUME@SNAPSHOT), until it is deleted */
  parent?: string
}

/** A snapshot of a volume (of its vDisk): the filesystem as it was when it was frozen for it. */
export interface VolumeSnapshotInfo {
  volume: string
  name: string
  /** the volume's vDisk; the snapshot is readable over NBD as VDISK@NAME */
  vdisk: string
  createdAt: string
  epoch: number
  /**
   * (create only) the container whose mounted filesystem was frozen for the instant of the
   * snapshot; null when no container had it mounted read-write (nothing to freeze)
   */
  frozen?: { container: string, node: string } | null
  /** (restore only) the 1 MiB extents that changed */
  changedExtents?: number
}

export interface ContainerMoveResult extends ContainerView {
  /** where it ran before */
  from: { csm: string, node: string }
}

// ---- between the daemons: a CVM and the CSM daemons of its node, and CVMs among themselves

/** What a node has for CSMs: its CPUs and memory (node.capacity). */
export interface HostCapacity {
  cpus: number
  memoryBytes: number
}

/** A CSM daemon's `GET /v1/stats`: the CSM's use and each running container's, over a short sample. */
export interface CsmStatsAnswer {
  csm: UsageStats & { containers: number }
  containers: Array<UsageStats & { id: string, name: string }>
  readAt: string
}
