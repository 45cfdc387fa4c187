/** Every limit in one place: named constants, units last. */

// storage layout
export const vBlockSizeBytes = 1024 * 1024
export const checksumBlockSizeBytes = 4096
export const checksumBlocksPerExtent = vBlockSizeBytes / checksumBlockSizeBytes
export const extentsPerEgroup = 32
export const vdiskSizeMaxBytes = 2 ** 50 // 1 PiB
export const vdiskSizeMinBytes = 4096
export const rfMax = 3
/** extent group writes up to this size are written with synchronous pwrite (page cache); larger ones go through the thread pool */
export const egroupSyncWriteMaxBytes = 256 * 1024
/**
 * ...and larger writes up to this size too, when the page cache holds every page they write and
 * no write of the file is in the pool: copying into pages that exist takes a fraction of a
 * millisecond, less than the pool's two thread hand-offs (a whole extent: 1 MiB).
 */
export const egroupCachedWriteMaxBytes = 1024 * 1024
/**
 * extent group reads up to this size copy what the page cache holds on the event loop first (never
 * waiting for a disk: lib/nativeio.ts); larger ones, and what was not cached, go through the pool.
 * A whole extent (1 MiB): a volume's chain (nbdfuse under a loop device) sends 512 KiB and 1 MiB
 * requests, and a cached one copied here saves the pool's thread hand-offs.
 */
export const egroupCachedReadMaxBytes = 1024 * 1024
/** an extent group's dirty marker is removed this long after a sync that left it clean */
export const egroupCleanMarkerDelayMs = 2_000
/** a CVM reads its own disks' records from etcd at most this often (the data path asks at every extent group it makes) */
export const localDiskRecordsCacheMs = 1_000
/** a vDisk makes its next extent group in the background when fewer slots than this are free */
export const egroupPrecreateFreeSlotsMin = 16
/** extent groups a streaming vDisk makes ahead at once, at most (see Vdisk: the depth grows when allocations wait) */
export const egroupCreatesAheadMax = 4
/** a replica copied to another node (repair, replacement, evacuation): slots read and written at once (1 MiB each) */
export const egroupCopyInFlightMax = 4
/**
 * a replica's node copying a whole extent group straight from another node (a repair's copy that
 * skips the owner, replica.ts pullFrom): how long the owner waits for its answer
 */
export const egroupPullTimeoutMs = 120_000
/** the curator's repair of one vDisk: extent groups copied at once (one's copy goes on while another's target syncs) */
export const repairEgroupsInFlightMax = 2
/** spare extent group files (spares.ts) a disk keeps at most: 32 of 32 MiB, a 1 GiB burst of first writes */
export const spareEgroupsPerDiskMax = 32
/** ...and at most this share of the disk's size */
export const spareEgroupsShareOfDisk = 0.01
/** the most spares per disk node.json or TESS_SPARE_EGROUPS may ask for (32 GiB) */
export const spareEgroupsConfigMax = 1024
/** spares are written only after extent group I/O has been still this long */
export const spareEgroupFillIdleMs = 2_000
/** below this many extent groups of free space on its file system, a disk deletes a spare (one per check) */
export const spareEgroupReleaseFreeGroups = 2
/** the fill needs room for the whole reserve and this many groups more */
export const spareEgroupFillFreeGroupsMin = 4
/** the size of each write that fills a spare with zeros */
export const spareEgroupFillWriteBytes = 4 * 1024 * 1024
/** allocations (1 MiB each) a vDisk keeps in memory only; at this many, it flushes in the background */
export const pendingAllocationsMax = 4096

// NBD
export const nbdPortDefault = 10809
export const nbdPayloadMaxBytes = 32 * 1024 * 1024
export const nbdInFlightPerConnMax = 64
/**
 * Each plain NBD connection reads into one buffer of this size that it reuses (recvbuffer.ts);
 * large enough that a 1 MiB write arrives in few reads, small enough for many connections.
 */
export const nbdReceiveBufferBytes = 256 * 1024
export const nbdOptionLengthMaxBytes = 64 * 1024
export const nbdConnectionsMax = 256
export const nbdHandshakeTimeoutMs = 10_000
/**
 * An NBD open that fails for a reason other than the device's answer (etcd electing a leader or its
 * client moving off a lost member, after a node loss) is retried this long; the client waits in its
 * handshake meanwhile (the handshake timeout does not run while we are the ones working).
 */
export const nbdOpenRetryMs = 30_000
/** a CVM whose ownership lease was lost asks for a new one this often until etcd answers */
export const leaseRegrantIntervalMs = 1_000

// management API
export const apiPortDefault = 9440
export const apiBodyMaxBytes = 1024 * 1024
export const apiRequestTimeoutMs = 30_000
export const apiClientTimeoutMs = 30_000
/**
 * the API client gives an endpoint this long to complete its TLS handshake; past it nothing was
 * sent, so the next endpoint (another CVM) is tried: a node whose link is down answers nothing,
 * not even a refusal
 */
export const apiConnectTimeoutMs = 10_000
/** how long an etcd membership change (host add or remove) waits for etcd to accept one (its leader in touch with every member for a few seconds) */
export const etcdReconfigWaitMs = 30_000
/** the API client's timeout for a call that may wait that long */
export const etcdReconfigCallTimeoutMs = etcdReconfigWaitMs + apiClientTimeoutMs
/** API connections open at once (TLS handshakes included); more are closed at once */
export const apiConnectionsMax = 512
/** a connection must finish its TLS handshake within this (a TCP connection that never starts TLS is closed) */
export const apiHandshakeTimeoutMs = 10_000
/** a request's headers must arrive within this */
export const apiHeadersTimeoutMs = 10_000
/** an idle keep-alive connection is closed after this */
export const apiKeepAliveTimeoutMs = 5_000
/** how often the HTTP server checks the timeouts above (Node's default is 30 s) */
export const apiTimeoutCheckIntervalMs = 1_000
/**
 * the body of a refused request (bad token, too large) that is read and dropped before the
 * connection closes, and how long that may take: a client still sending gets the answer, not a
 * reset (more than this, or slower: a reset)
 */
export const apiRefusedBodyDrainMaxBytes = 8 * 1024 * 1024
export const apiRefusedBodyDrainMs = 2_000

// etcd
export const etcdClientPortDefault = 2379
export const etcdPeerPortDefault = 2380
export const etcdCallTimeoutMs = 2_000
export const etcdTxnOpsMax = 100
export const etcdStartTimeoutMs = 30_000
export const idCasRetriesMax = 50
/** keepalives of a lease per TTL (keepLeaseAlive): several, so that one unanswered is tried again in time */
export const leaseKeepalivesPerTtl = 5
/** a keepalive not answered in this is given up and sent again (to a member the pool picks again) */
export const leaseKeepaliveTimeoutMs = 1_500
/** the pause before a failed keepalive is sent again */
export const leaseKeepaliveRetryMs = 100
/** a lease whose keepalives go unanswered is given up this long before etcd could let it go */
export const leaseGiveUpMarginMs = 1_000
/**
 * HTTP/2 pings on an etcd connection that carries a stream (a watch, etcd3's lease keepalive of an
 * election): a member that goes silent (its node cut off) is noticed after about interval +
 * timeout and the stream starts again on a member that answers. Without them a watch on a silent
 * member waits forever, and whatever follows it (the view of which nodes are up) stays as it was.
 */
export const etcdStreamPingIntervalMs = 3_000
export const etcdStreamPingTimeoutMs = 2_000
/** how long the data path waits through transient etcd failures (a leader change) before it fails a client's I/O */
export const etcdTransientWaitMs = 15_000
/** the pause between two tries of such an operation */
export const etcdTransientRetryMs = 250
/** etcd accepts pings this often (its default of 5 s is longer than etcdStreamPingIntervalMs) */
export const etcdPingMinIntervalSec = 1

// daemons
export const supervisorRestartBackoffMinMs = 200
export const supervisorRestartBackoffMaxMs = 10_000
export const supervisorStopTimeoutMs = 10_000
export const daemonStartTimeoutMs = 45_000
export const nodeHeartbeatTtlSec = 10

// placement of new extent groups (and of replacement replicas)
/**
 * How long a write that needs a new extent group (or a replacement replica) waits for enough
 * healthy nodes before it fails with EIO: covers a node whose CVM or disk is being registered,
 * or restarting, without holding an NBD client for long.
 */
export const placementWaitMs = 10_000
/** while a placement waits, how often it re-reads etcd directly (besides waking on every change it watches) */
export const placementRecheckMs = 500
/** `cluster create` and `host add`: how long to wait until every CVM can place data at the RF */
export const clusterReadyTimeoutMs = 60_000
/** ... and how often each CVM is asked meanwhile */
export const clusterReadyPollMs = 200

// the curator (cvm/curator): one elected master re-protects extent groups
/** names in one request that lists nodes (a cluster has far fewer) */
export const nodesMax = 256
/** disk ids in one request that lists disks */
export const disksMax = 4096
/** replica moves the curator's balancing plans per pass (and sends in one request): a pass moves at most this many extent groups, the next scan plans again */
export const balanceMovesMax = 64
/** the balancing starts when a disk holds this share more (or less) than its fair share of the replicas (by capacity) ... */
export const balanceToleranceShare = 0.1
/** ... and at least this many replicas more: a few groups more or less is no reason to copy */
export const balanceToleranceEgroups = 2
/** how long a node must have been down before the curator copies its replicas elsewhere (a restart or a short partition is not worth a full copy) */
export const curatorNodeDownGraceMs = 30_000
/** a full scan of every extent group this often, besides the scans a node loss triggers */
export const curatorScanIntervalMs = 60_000
/** the lease TTL of the curator's election: a dead master is replaced after at most this */
export const curatorElectionTtlSec = 10
/** a campaign for the curator's election that failed (its lease lost) is started again after this */
export const curatorCampaignRetryMs = 1000
/** one vDisk's repair at its owner: a call bounded by this (a large vDisk copies many groups) */
export const curatorRepairCallTimeoutMs = 30 * 60_000
/** `tess cluster update --repair-rate`: the bounds of the curator's copy rate (none by default: as fast as disks and network go) */
export const repairBytesPerSecMin = 1024 * 1024
export const repairBytesPerSecMax = 64 * 1024 * 1024 * 1024
/**
 * While clients do I/O on the node that runs a repair (the vDisks' owner), the repair copies at
 * most this fast, whatever its own limit: it yields to foreground I/O by itself (measured on this
 * machine: a repair at about 30 MiB/s left a foreground job on the same node all of its speed,
 * an unthrottled one 0.37-0.45). Idle, it copies as fast as its limit (none by default) allows.
 */
export const repairBusyBytesPerSec = 32 * 1024 * 1024
/** client I/O this recent makes the node busy for the repair; and how often a waiting repair looks again */
export const repairBusyWindowMs = 500
export const repairBusyCheckMs = 100
/** `GET /v1/cluster/health`: the extents counted per extent group of a vDisk being repaired are read again after this long (curator/health.ts ExtentCounts) */
export const healthExtentCountsTtlMs = 5_000
/** `--node-down-grace`: the bounds of the wait before a lost node's replicas are copied and its CSMs moved */
export const curatorNodeDownGraceMsMin = 5_000
export const curatorNodeDownGraceMsMax = 7 * 24 * 3600_000
/** the background scrub reads every replica of every extent at most this fast (all vDisks together: one at a time) */
export const scrubBytesPerSecDefault = 64 * 1024 * 1024
export const scrubBytesPerSecMin = 1024 * 1024
export const scrubBytesPerSecMax = 64 * 1024 * 1024 * 1024
/** a full scrub starts this long after the last one ended (or on `tess cluster scrub`) */
export const scrubIntervalMs = 7 * 24 * 3600_000
/** the curator's garbage collection of extent group files runs on every node this often (and right after a master is elected) */
export const gcIntervalMs = 10 * 60_000
/** a file changed less than this long ago is never garbage yet (a copy in progress, a group whose record is about to be written) */
export const gcMinAgeMs = 10 * 60_000
export const gcMinAgeMsMax = 7 * 24 * 3600_000
/** one node's garbage collection: a call bounded by this */
export const gcCallTimeoutMs = 10 * 60_000
/** one vDisk's scrub at its owner: a call bounded by this (1 TiB at the slowest rate would take longer: it goes on at the next pass) */
export const scrubCallTimeoutMs = 24 * 3600_000

// containers: the bounds of a container spec and of a CSM's quota, the same at every boundary that
// receives one (the public API, the node operations between CVMs, the CSM daemon: lib/container-spec.ts)
/** the least CPU a CSM or a container may be given (the kernel refuses a CFS quota under 1 ms of 100) */
export const cpusMin = 0.01
export const cpusMax = 4096
/** a memory limit under this cannot even start a shell */
export const memoryLimitMinBytes = 4 * 1024 * 1024
export const memoryLimitMaxBytes = Number.MAX_SAFE_INTEGER
/** the kernel's PID_MAX_LIMIT */
export const pidsMaxLimit = 4_194_304
/** command (or entrypoint) arguments of one container */
export const containerArgsMax = 4096
export const containerEnvMax = 4096
/** the arguments of a container together, and so each argument or environment entry, take at most this */
export const containerArgBytesMax = 128 * 1024
export const containerRlimitsMax = 32
/** a registry allow or deny pattern */
export const policyPatternLengthMax = 512
/** a registry user name and password (the password is read from stdin by the CLI) */
export const registryUsernameLengthMax = 256
export const registryPasswordLengthMax = 4096
/** a user (`uid[:gid]` or names) or a working directory of a container */
export const containerUserLengthMax = 256
export const containerPathLengthMax = 4096
export const containerStopTimeoutMsMax = 10 * 60_000
/** `--restart on-failure:N`: at most this many restarts */
export const containerRestartRetriesMax = 1_000_000
export const logTailLinesMax = 100_000
/** most volumes one container may have */
export const volumesPerContainerMax = 16
/** a volume's mount point inside its container */
export const volumeTargetLengthMax = 1024
/** an NBD host name or address in a volume spec */
export const volumeHostLengthMax = 255
/** a CSM request that runs, stops or removes containers may take this long (an image may be unpacked) */
export const csmCallTimeoutMs = 11 * 60_000
/** any other CSM request */
export const csmQuickCallTimeoutMs = 15_000
/**
 * How long a volume's freeze may take (fsfreeze writes out everything the filesystem holds dirty
 * first), and how long a CSM keeps it frozen before it thaws it by itself (a snapshot whose thaw
 * never came: the CVM that asked died); a snapshot takes well under a second of it.
 */
export const volumeFreezeCallTimeoutMs = 60_000
export const volumeFrozenMaxMs = 30_000
/** a node operation on another node's CVM, unless the operation asks for longer */
export const nodeCallTimeoutMs = 20_000

// user namespaces (containers run with --userns)
/** the host uid and gid of a --userns container's root; its ids 0-65535 are this + 0-65535 */
export const usernsHostIdBase = 100_000
export const usernsIdsCount = 65_536
/** how long making the short-lived namespace that carries the id mapping may take */
export const usernsSetupTimeoutMs = 5_000

/** how long a node waits for the owner of a vDisk to take or delete a snapshot (a flush; a delete frees the extents only that snapshot kept) */
export const vdiskSnapshotCallMs = 120_000
/** history entries a snapshot's delete drops at once (their etcd deletes go out in batches) */
export const historyPruneBatch = 64

/** thin provisioning: the default overcommit limit (provisioned <= usable space x this) and its bounds */
export const overcommitMaxDefault = 1
export const overcommitMaxMin = 0.1
export const overcommitMaxMax = 100
/**
 * free space a disk keeps when extent groups are placed (replicastore.ts pickDisk): a node makes
 * no new group on a disk with less than a group plus this free, so the groups already made can
 * fill their sparse extents and etcd and the logs on the same filesystem keep room
 */
export const diskFreeReserveBytes = 256 * 1024 * 1024
/** how long `tess vdisk flatten` waits for the copy (and a node for its owner's) */
export const vdiskFlattenTimeoutMs = 3_600_000
