/** Result types shared by the management API and the CLI. Keys are stable: add, never rename. */
import type { TessVersion } from './version.js'

export type { TessVersion }

export interface DaemonInfo {
  name: string
  pid: number | null
  healthy: boolean
  restarts: number
}

export interface NodeInfo {
  name: string
  address: string
  state: 'up' | 'down'
  daemons: DaemonInfo[]
  apiPort: number
  nbdPort: number
  lastSeenAt: string | null
  /** whether the node can run containers (its storage works either way); null when unknown (down) */
  containers: ContainersState | null
  /** the certificates the node uses and when they expire; null when unknown (down, or a CVM too old to say) */
  certificates: CertificateInfo[] | null
  /** the tess release and bundle its CVM runs; null when unknown (down, or a CVM too old to say) */
  version: TessVersion | null
}

/** A node's container subsystem: it may fail to start (no cgroups, say) while storage runs on. */
export interface ContainersState {
  available: boolean
  /** why not, when not */
  reason?: string
}

export interface DiskInfo {
  id: string
  node: string
  path: string
  state: 'online' | 'offline'
  capacityBytes: number
  usedBytes: number
  freeBytes: number
  /** the filesystem's blocks only root may use (not free for the pool) */
  reservedBytes: number
  /** everything else on the disk's filesystem: other files, other disks on the same filesystem, metadata */
  otherBytes: number
  addedAt: string
  /** being evacuated: no new extent group lands on it (absent: not) */
  draining?: boolean
}

/** capacityBytes = usedBytes + freeBytes + reservedBytes + otherBytes, each counted once per filesystem */
export interface PoolInfo {
  capacityBytes: number
  usedBytes: number
  freeBytes: number
  reservedBytes: number
  otherBytes: number
  disks: DiskInfo[]
  /** what the vDisks promise: every vDisk's size times its RF (thin provisioning; absent in answers of older CVMs) */
  provisionedBytes?: number
  /** the most that may be provisioned: (used + free) x overcommitMax */
  provisionLimitBytes?: number
  overcommitMax?: number
}

/** the pool's settings as stored (keys.poolConfig) */
export interface PoolConfig {
  /** provisioned bytes may reach (used + free) times this */
  overcommitMax?: number
}

export interface VdiskInfo {
  id: string
  name: string
  sizeBytes: number
  rf: number
  allocatedBytes: number
  owner: string | null
  nbdUri: string
  createdAt: string
  /** its blocks are encrypted on the disks (AES-256-XTS, a key of its own) */
  encrypted: boolean
  /** encrypted, and the CVM that answered holds no cluster key: it cannot be opened there (tess cluster unlock) */
  locked: boolean
  /** a clone: VDISK@SNAPSHOT it reads through to (absent: it stands alone) */
  parent?: string
  /** what its snapshots alone keep: extents the vDisk replaced or trimmed since (absent in answers of older CVMs) */
  snapshotBytes?: number
  /**
   * a clone: the bytes it reads from its parents (extents it shares with them, stored once);
   * `allocatedBytes` are its own (exclusive)
   */
  sharedBytes?: number
}

/** a snapshot as stored (etcd value of keys.vdiskSnapshot) */
export interface SnapshotRecord {
  name: string
  /** the epoch it froze (history.ts) */
  epoch: number
  createdAt: string
  /** in the answer to a restore: the vBlocks whose extent changed */
  changedExtents?: number
}

/** what a vDisk's owner does with a snapshot (node operation vdisk.snapshot) */
export type SnapshotOp = 'create' | 'delete' | 'restore' | 'flatten'

/** a snapshot of a vDisk (read-only, readable over NBD as the export VDISK@SNAPSHOT) */
export interface SnapshotInfo {
  vdisk: string
  name: string
  createdAt: string
  /** the epoch it froze: a later snapshot of the same vDisk has a larger one */
  epoch: number
  nbdUri: string
  /** after a restore: the 1 MiB extents that changed */
  changedExtents?: number
}

export interface ClusterStatus {
  name: string
  id: string
  createdAt: string
  nodes: NodeInfo[]
  pool: PoolInfo
  vdiskCount: number
  /** what an operator should act on: certificates of nodes that expire within 30 days (or did) */
  warnings: string[]
}

/** A certificate a node uses (its TLS identity for the API, etcd and the data port, or the cluster CA). */
export interface CertificateInfo {
  /** "node" or "CA" */
  name: string
  subject: string
  /** ISO 8601 */
  notAfter: string
}

/** A node certificate a CVM took up without a restart (`POST /v1/nodes/NAME/certificates/reload`, tess cluster rotate-certs). */
export interface ReloadedCertificate {
  node: string
  subject: string
  /** ISO 8601 */
  notAfter: string
  serial: string
  /** SHA-256 of the certificate, colon-separated hex (as node:crypto prints it) */
  fingerprint256: string
}

/** One node as a CVM's placement view sees it (part of `GET /v1/placement`). */
export interface PlacementNodeInfo {
  name: string
  /** its CVM is alive: its status record (bound to its lease) exists; a CVM is always up to itself */
  up: boolean
  draining: boolean
  /** disks registered for the node */
  disks: number
  /** of those, the disks its last status record reports (readable); 0 while it is down */
  disksOnline: number
  /** free bytes of its disks, from its last status record */
  freeBytes: number
  /** a new extent group may get a replica there */
  placeable: boolean
  /** why it is not placeable (null when it is) */
  reason: string | null
}

/** `GET /v1/placement?rf=N`: where this CVM would put a new extent group now, from its view of etcd. */
export interface PlacementInfo {
  /** the node whose CVM answered */
  node: string
  rf: number
  /** this CVM can place an extent group at RF `rf` now */
  ready: boolean
  /** the nodes a new extent group may use, in the order placement picks them (this node first) */
  placeable: string[]
  nodes: PlacementNodeInfo[]
  /** the view follows etcd: every watch is connected and synchronised */
  watching: boolean
}

export interface HealthInfo {
  node: string
  clusterName: string
  pid: number
  etcd: boolean
  version: string
}

/** One vDisk's protection (GET /v1/cluster/health): its extent groups by how many healthy copies they have. */
export interface VdiskHealth {
  name: string
  id: string
  rf: number
  egroups: number
  /** RF replicas on nodes that are up */
  healthy: number
  /** fewer than RF replicas on nodes that are up, at least one */
  underReplicated: number
  /** no replica on a node that is up: unreadable until one comes back */
  lost: number
  /** the extents (1 MiB each) in under-replicated groups */
  bytesToReprotect: number
  /** the extents in groups with no replica up */
  bytesLost: number
  /** nodes that are down and hold replicas of this vDisk */
  nodesDown: string[]
}

/** One CSM moved off a lost node by the failover (the curator master's), or why it could not be. */
export interface CsmFailover {
  csm: string
  from: string
  /** null: it could not move (see error); tried again at the next scan */
  to: string | null
  at: string
  /** containers with a restart policy, running on the new node */
  containers: string[]
  /** containers with no restart policy, removed with the lost node */
  dropped: string[]
  /** containers that did not start on the new node */
  notStarted: string[]
  error: string | null
}

/** What a scrub pass found, over every vDisk. */
export interface ScrubFound {
  vdisks: number
  extents: number
  /** bytes read from every replica */
  bytesChecked: number
  /** 4 KiB blocks whose copy on a replica did not match its checksum */
  badBlocks: number
  /** of those, rewritten from a good copy */
  repairedBlocks: number
  /** replica reads that failed otherwise (a node down), and vDisks whose scrub failed */
  unreadable: number
  failedVdisks: string[]
}

/** What a garbage collection pass removed (one node's, or the sum over the nodes). */
export interface GcFound {
  /** extent group files (and lone dirty markers) removed */
  files: number
  /** the disk space they took */
  bytes: number
  /** stale replica entries dropped from extent group records */
  staleEntries: number
}

/** `tess cluster scrub`: whether a pass started now (false: one runs already), at which master, at what rate. */
export interface ScrubStart {
  started: boolean
  master: string
  bytesPerSec: number
}

/** The curator's settings (etcd key /tess/curator/config; `tess cluster update`, and `tess cluster scrub --rate`). Absent: the default. */
export interface CuratorConfig {
  /** how long a node is down before its replicas are copied elsewhere and its CSMs moved (default 30 s) */
  nodeDownGraceMs?: number
  /** the repair copies at most this fast (default: no limit) */
  repairBytesPerSec?: number
  /** the scrub reads at most this fast (default 64 MiB/s) */
  scrubBytesPerSec?: number
}

/** `tess cluster update` and GET /v1/cluster/config: the curator's settings with their defaults filled in. */
export interface ClusterSettings {
  nodeDownGraceMs: number
  /** null: no limit */
  repairBytesPerSec: number | null
  scrubBytesPerSec: number
}

/** What the curator's master writes after each scan and repair (etcd key /tess/curator/status). */
export interface CuratorStatus {
  master: string
  masterSince: string
  lastScanAt: string | null
  /** extent groups found under-replicated and lost by the last scan */
  lastScanFound: { underReplicated: number, lost: number }
  repairing: boolean
  /** when the running (or the last) repair run began */
  repairStartedAt: string | null
  /** extent groups re-protected and their bytes, since this master was elected */
  repairedEgroups: number
  repairedBytes: number
  /** bytes re-protected per second in the last repair run (0 before any) */
  repairBytesPerSec: number
  nodeDownGraceMs: number
  /** nodes down for less than the grace: their replicas are copied elsewhere at `at` if still down */
  repairsDueAt: Array<{ node: string, disk?: string, at: string }>
  /** under-replicated vDisks no repair can help now, and why (too few nodes for their RF) */
  waiting: string[]
  /** the newest CSM failovers (at most curatorFailoversKept), newest last */
  failovers: CsmFailover[]
  scrubbing: boolean
  scrubBytesPerSec: number
  lastScrubAt: string | null
  lastScrubFound: ScrubFound | null
  /** the garbage collection of extent group files: when the last pass over the nodes ended and what it removed (absent in older records) */
  lastGcAt?: string | null
  lastGcFound?: GcFound | null
  /** the disk balancing: running now, when the last pass that moved replicas ended, and what it moved (absent in older records) */
  balancing?: boolean
  lastBalanceAt?: string | null
  lastBalanceMoved?: BalanceMoved | null
  /**
   * since when each node (and each disk, by id) has been seen down: a new master takes these over,
   * so a change of master neither restarts a grace nor reports a loss again (absent in older records)
   */
  nodesDownSince?: Record<string, string>
  disksDownSince?: Record<string, string>
  lastError: string | null
}

/** what one pass of the curator's disk balancing moved */
export interface BalanceMoved {
  /** replica moves planned, and those done (the others found their group changed, or failed) */
  planned: number
  egroups: number
  bytes: number
}

/** `tess cluster health` */
export interface ClusterHealth {
  /** data-unavailable: some extent group has no copy on a node that is up; degraded: some have fewer than RF */
  state: 'healthy' | 'degraded' | 'data-unavailable'
  nodesUp: string[]
  nodesDown: string[]
  /** disks of nodes that are up which their CVM cannot read: their replicas count as missing and are re-protected after the grace */
  disksOffline: Array<{ id: string, node: string, path: string }>
  total: Omit<VdiskHealth, 'name' | 'id' | 'rf'>
  vdisks: VdiskHealth[]
  curator: {
    /** the node whose CVM is the elected curator master (null: no election won yet) */
    master: string | null
    lastScanAt: string | null
    repairing: boolean
    /** when the running (or the last) repair run began */
    repairStartedAt: string | null
    repairedEgroups: number
    repairedBytes: number
    repairBytesPerSec: number
    /** seconds left at the last repair rate (null: nothing to re-protect, or no rate yet) */
    etaSec: number | null
    nodeDownGraceMs: number | null
    repairsDueAt: Array<{ node: string, disk?: string, at: string }>
    /** under-replicated vDisks no repair can help now, and why (too few nodes for their RF) */
    waiting: string[]
    /** the newest CSM failovers off lost nodes, newest last */
    failovers: CsmFailover[]
    lastError: string | null
    /** the checksum scrub: running now, the rate, when the last full pass ended and what it found (null: none yet) */
    scrubbing: boolean
    scrubBytesPerSec: number
    lastScrubAt: string | null
    lastScrubFound: ScrubFound | null
    /** the garbage collection of extent group files (stale replicas, files no record names): when the last pass ended and what it removed (null: none yet) */
    lastGcAt: string | null
    lastGcFound: GcFound | null
    /** the disk balancing (replicas moved to disks holding less than their share): running now, when the last pass that moved any ended and what it moved (null: none yet) */
    balancing: boolean
    lastBalanceAt: string | null
    lastBalanceMoved: BalanceMoved | null
  }
}

/** Records as stored in etcd. */
export interface ClusterRecord { name: string, id: string, createdAt: string }
export interface NodeRecord { name: string, address: string, apiPort: number, nbdPort: number, dataPort: number, joinedAt: string, draining?: boolean }
export interface NodeStatusRecord {
  name: string
  at: string
  daemons: DaemonInfo[]
  /** reservedBytes is absent in records of older CVMs */
  disks: Record<string, { capacityBytes: number, freeBytes: number, usedBytes: number, dev: number, reservedBytes?: number }>
  /** absent in records of older CVMs */
  containers?: ContainersState
  /** absent in records of older CVMs */
  certificates?: CertificateInfo[]
  /** absent in records of older CVMs */
  version?: TessVersion
}
export interface DiskRecord {
  id: string
  node: string
  path: string
  addedAt: string
  /** being evacuated (`tess disk remove --evacuate`): no new extent group lands on it */
  draining?: boolean
}
/** one replica's place: a disk of a node */
export interface ReplicaPlace { node: string, diskId: string }
/** a move of one replica of one extent group to another disk (of the same node or another one): the curator's balancing */
export interface ReplicaMove { egroupId: string, from: ReplicaPlace, to: ReplicaPlace }
export interface VdiskRecord {
  id: string
  name: string
  sizeBytes: number
  rf: number
  createdAt: string
  state: 'ready' | 'deleting'
  /** encrypted vDisks: the data key wrapped by the cluster key (vdisk/crypt.ts) */
  wrappedKey?: string
  /** a clone: the vDisk and snapshot it reads through to where it has not written itself */
  parent?: { id: string, snapshot: string }
}

/** An evacuation's progress as the API answers it (a node's or a disk's), polled by the CLI. */
export interface EvacuationProgress {
  state: 'running' | 'done' | 'failed'
  egroupsMoved: number
  egroupsTotal: number
  /** the vDisk being moved now */
  vdisk: string | null
  error: { code: string, message: string, hint: string } | null
}
