import fs from 'node:fs'
import { noop } from 'cockatiel'
import { Etcd3, EtcdLeaseInvalidError, GRPCUnavailableError, Range, isRecoverableError, type IOptions, type Lease } from 'etcd3'
import { TessError, errorMessage } from './errors.js'
import { etcdCallTimeoutMs, etcdTransientRetryMs, etcdTransientWaitMs, etcdStreamPingIntervalMs, etcdStreamPingTimeoutMs, idCasRetriesMax, leaseGiveUpMarginMs, leaseKeepaliveRetryMs, leaseKeepaliveTimeoutMs, leaseKeepalivesPerTtl } from './limits.js'
import { nodePaths, type NodeConfig } from './nodeconfig.js'

/** The etcd key space. Everything of ours lives under /tess/. */
export const keys = {
  cluster: '/tess/cluster',
  node: (name: string) => `/tess/nodes/${name}`,
  nodesPrefix: '/tess/nodes/',
  nodeStatus: (name: string) => `/tess/node-status/${name}`,
  nodeStatusPrefix: '/tess/node-status/',
  disk: (id: string) => `/tess/disks/${id}`,
  disksPrefix: '/tess/disks/',
  vdisk: (id: string) => `/tess/vdisks/${id}`,
  vdisksPrefix: '/tess/vdisks/',
  vdiskName: (name: string) => `/tess/vdisk-names/${name}`,
  vdiskNamesPrefix: '/tess/vdisk-names/',
  vdiskOwner: (id: string) => `/tess/vdisk-owners/${id}`,
  /** block map of one vDisk: one key per allocated vBlock */
  vdiskMapPrefix: (id: string) => `/tess/vdisk-map/${id}/`,
  vdiskMap: (id: string, vblock: number) => `/tess/vdisk-map/${id}/${vblock.toString(16).padStart(12, '0')}`,
  /** history entries of one vDisk (extents only its snapshots see): `<vblock>/<epoch written>` */
  vdiskHistPrefix: (id: string) => `/tess/vdisk-hist/${id}/`,
  vdiskHist: (id: string, vblock: number, epoch: number) => `/tess/vdisk-hist/${id}/${vblock.toString(16).padStart(12, '0')}/${epoch.toString(16).padStart(8, '0')}`,
  /** snapshots of one vDisk, by name */
  vdiskSnapshotsPrefix: (id: string) => `/tess/vdisk-snapshots/${id}/`,
  vdiskSnapshot: (id: string, name: string) => `/tess/vdisk-snapshots/${id}/${name}`,
  allSnapshotsPrefix: '/tess/vdisk-snapshots/',
  /** the epoch a vDisk's writes go into (history.ts): never goes back, so a deleted snapshot's epoch is never reused */
  vdiskEpoch: (id: string) => `/tess/vdisk-epochs/${id}`,
  /** extent groups of one vDisk: `/tess/egroups/<vdiskId>/<egroupId>` */
  egroup: (vdiskId: string, id: string) => `/tess/egroups/${vdiskId}/${id}`,
  egroupsOf: (vdiskId: string) => `/tess/egroups/${vdiskId}/`,
  egroupsPrefix: '/tess/egroups/',
  idCounter: (kind: string) => `/tess/ids/${kind}`,
  csm: (name: string) => `/tess/csms/${name}`,
  csmsPrefix: '/tess/csms/',
  csmPool: (name: string) => `/tess/csm-pools/${name}`,
  csmPoolsPrefix: '/tess/csm-pools/',
  registry: (name: string) => `/tess/registries/${name}`,
  registriesPrefix: '/tess/registries/',
  /** a registry's password, apart from its record so that listing registries never reads it */
  registrySecret: (name: string) => `/tess/registry-secrets/${name}`,
  registryPolicy: '/tess/registry-policy',
  /** containers by name (names are unique in the cluster) */
  container: (name: string) => `/tess/containers/${name}`,
  containersPrefix: '/tess/containers/',
  volume: (name: string) => `/tess/volumes/${name}`,
  volumesPrefix: '/tess/volumes/',
  user: (name: string) => `/tess/users/${name}`,
  usersPrefix: '/tess/users/',
  /** `/tess/audit/<ISO time>-<node>-<seq>`: sorted by time */
  auditPrefix: '/tess/audit/',
  /** `/tess/events/<ISO time>-<node>-<seq>`: the cluster's events, sorted by time */
  eventsPrefix: '/tess/events/',
  /** HMAC of the cluster key (encrypted vDisks): proves a key given later is the cluster's */
  clusterKeyCheck: '/tess/cluster-key-check',
  /** the curator master's last report (CuratorStatus); its election lives under /tess/election/curator/ */
  curatorStatus: '/tess/curator/status',
  /** the curator's settings (CuratorConfig) */
  curatorConfig: '/tess/curator/config',
  /** the pool's settings (PoolConfig: the overcommit limit) */
  poolConfig: '/tess/pool/config',
  /** the CA certificate (PEM, public) of NBD users' client certificates; its key stays with the operator */
  nbdUserCa: '/tess/nbd-user-ca',
  /** `/tess/nbd-revocations/<user>`: NBD user certificates of that user issued until then are refused */
  nbdRevocation: (user: string) => `/tess/nbd-revocations/${user}`,
  nbdRevocationsPrefix: '/tess/nbd-revocations/',
  /** per node: the SHA-256 of the users CA its NBD server accepts (`/tess/nbd-user-ca-ack/<node>`) */
  nbdUserCaAck: '/tess/nbd-user-ca-ack/',
}

/** Streams have no deadline: pings find a member that went silent under a watch (etcdStreamPingIntervalMs). */
export const etcdGrpcOptions = { 'grpc.keepalive_time_ms': etcdStreamPingIntervalMs, 'grpc.keepalive_timeout_ms': etcdStreamPingTimeoutMs }

/**
 * etcd3 rests a member for 5 s after 3 calls in a row failed (its circuit breaker), so that calls
 * go to the others. With one member there is no other: a few slow calls (its disk syncing under
 * load) would make etcd unusable for 5 s. With one endpoint, calls are only retried (etcd3's
 * global policy) and each keeps its deadline.
 */
export function faultHandlingFor(endpoints: string[]): Pick<IOptions, 'faultHandling'> {
  return endpoints.length === 1 ? { faultHandling: { host: () => noop } } : {}
}

export function etcdOptionsFor(cfg: NodeConfig): IOptions {
  const p = nodePaths(cfg.dataDir)
  return {
    hosts: cfg.etcd.endpoints,
    credentials: {
      rootCertificate: fs.readFileSync(p.caCert),
      privateKey: fs.readFileSync(p.nodeKey),
      certChain: fs.readFileSync(p.nodeCert),
    },
    dialTimeout: etcdCallTimeoutMs,
    // Every unary call gets a deadline: a leader change must not stall a call for long.
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + etcdCallTimeoutMs }),
    grpcOptions: etcdGrpcOptions,
    ...faultHandlingFor(cfg.etcd.endpoints),
  }
}

export function connectEtcd(cfg: NodeConfig): Etcd3 {
  return new Etcd3(etcdOptionsFor(cfg))
}

/**
 * Keeps an etcd lease alive (made with `autoKeepAlive: false`) through the loss of any one member.
 * etcd3's own keepalive holds one stream to one member, chosen at random, and notices a member
 * that stopped answering (a partition) only when the lease's TTL has passed: by then etcd let the
 * lease expire, although the other members answered all along. Here every keepalive is a call of
 * its own with a deadline: one that gets no answer is sent again at once, the connection pool
 * picks a member again and its circuit breaker soon stops picking the silent one. The lease is
 * given up (`onLost`, once) when etcd says it expired, or when no keepalive was answered for the
 * TTL less a margin since the last answered one was sent: etcd cannot have let it go before then
 * (it counts the TTL from when it got that keepalive), so whatever the lease fenced stops here
 * before another process can take it. Returns a function that stops the keepalives (it does not
 * revoke the lease).
 */
export function keepLeaseAlive(lease: Lease, ttlSec: number, onLost: (e: Error) => void): () => void {
  const ttlMs = ttlSec * 1000
  let done = false
  let timer: NodeJS.Timeout | undefined
  let expiry: NodeJS.Timeout | undefined
  let lastError = 'none'
  const finish = (e: Error | undefined) => {
    if (done) return
    done = true
    clearTimeout(timer)
    clearTimeout(expiry)
    if (e === undefined) return
    lease.release() // nothing more goes out for it
    onLost(e)
  }
  /** the lease is given up the margin before etcd could let it go, counted from when the last answered keepalive was sent */
  const answered = (sentAt: number) => {
    clearTimeout(expiry)
    expiry = setTimeout(() => finish(new Error(`no keepalive of the lease was answered for ${(ttlMs - leaseGiveUpMarginMs) / 1000} s of its ${ttlSec} s (the last error: ${lastError})`)),
      Math.max(0, sentAt + ttlMs - leaseGiveUpMarginMs - Date.now())).unref()
  }
  const schedule = (ms: number) => { if (!done) timer = setTimeout(() => void beat(), ms).unref() }
  const beat = async () => {
    const sentAt = Date.now()
    try {
      await lease.keepaliveOnce({ deadline: sentAt + leaseKeepaliveTimeoutMs })
      if (done) return
      answered(sentAt)
      schedule(ttlMs / leaseKeepalivesPerTtl)
    } catch (e) {
      if (e instanceof EtcdLeaseInvalidError) return finish(e)
      lastError = errorMessage(e)
      schedule(leaseKeepaliveRetryMs)
    }
  }
  lease.on('lost', (e) => finish(e))
  answered(Date.now()) // granted now or later: the TTL runs from no earlier than this
  void lease.grant().then(() => schedule(ttlMs / leaseKeepalivesPerTtl), () => undefined) // a failed grant fires 'lost'
  return () => finish(undefined)
}

export async function getJson<T>(etcd: Etcd3, key: string): Promise<T | undefined> {
  const v = await etcd.get(key).string()
  return v === null ? undefined : (JSON.parse(v) as T)
}

export async function listJson<T>(etcd: Etcd3, prefix: string): Promise<T[]> {
  const all = await etcd.getAll().prefix(prefix).strings()
  return Object.keys(all).sort().map((k) => JSON.parse(all[k] as string) as T)
}

/**
 * An etcd failure that passes by itself: no leader for a moment (a member was lost or came back),
 * a member that did not answer in time, or etcd3's circuit breaker resting a member that did not.
 * Not: a refused comparison, a bad request, a lost lease.
 */
export function isTransientEtcdError(e: unknown): boolean {
  if (e instanceof TessError) return e.code === 'TESS_E_UNREACHABLE' && /etcd: .*(DEADLINE_EXCEEDED|Deadline exceeded|UNAVAILABLE|circuit breaker is open)/.test(e.message)
  if (!(e instanceof Error)) return false
  // etcd3's circuit breaker (cockatiel's BrokenCircuitError) says so in its message
  return e instanceof GRPCUnavailableError || isRecoverableError(e) || /circuit breaker is open/.test(e.message)
}

/**
 * Run an etcd operation of the data path again while it fails transiently (isTransientEtcdError),
 * for up to etcdTransientWaitMs: a client's write waits through an etcd leader change instead of
 * getting EIO. The operation must be safe to repeat (a transaction whose answer was lost may have
 * been applied). Other failures, and the last one past the wait, are thrown.
 */
export async function retryTransientEtcd<T>(fn: () => Promise<T>, waitMs = etcdTransientWaitMs): Promise<T> {
  const deadline = Date.now() + waitMs
  for (;;) {
    try {
      return await fn()
    } catch (e) {
      if (!isTransientEtcdError(e) || Date.now() + etcdTransientRetryMs > deadline) throw e
      await new Promise((r) => setTimeout(r, etcdTransientRetryMs))
    }
  }
}

/** Delete the oldest keys under `prefix` (in key order) beyond the newest `keep`: the bound of a log kept in etcd. */
export async function trimOldest(etcd: Etcd3, prefix: string, keep: number): Promise<void> {
  const ks = await etcd.getAll().prefix(prefix).sort('Key', 'Ascend').keys()
  const extra = ks.length - keep
  if (extra <= 0) return
  await etcd.delete().range(new Range(prefix, `${ks[extra - 1]!}\0`))
}

/** Wrap etcd failures as TESS_E_UNREACHABLE with the action named. */
export async function etcdCall<T>(action: string, fn: () => PromiseLike<T>): Promise<T> {
  try {
    return await fn()
  } catch (e) {
    if (e instanceof TessError) throw e
    throw new TessError('TESS_E_UNREACHABLE', `cannot ${action}: etcd: ${errorMessage(e)}`, 'check `tess cluster status`; etcd may be down or electing a leader')
  }
}

/**
 * Unique 64-bit ids from a counter in etcd, advanced by compare-and-swap. Ids are decimal strings
 * (a 64-bit integer does not fit a JS number). `batch` ids are reserved per round trip and handed
 * out from memory; ids skipped when a process dies are never reused.
 */
export class IdAllocator {
  private next = 0n
  private end = 0n
  private pending: Promise<void> | undefined

  constructor(private readonly etcd: Etcd3, private readonly kind: string, private readonly batch = 1) {}

  async allocate(): Promise<string> {
    while (this.next >= this.end) {
      // a range reserved by an answer that was lost is skipped, never handed out twice
      if (!this.pending) this.pending = retryTransientEtcd(() => this.reserve()).finally(() => { this.pending = undefined })
      await this.pending
    }
    const id = this.next
    this.next += 1n
    return id.toString()
  }

  private async reserve(): Promise<void> {
    const key = keys.idCounter(this.kind)
    for (let attempt = 0; attempt < idCasRetriesMax; attempt++) {
      const cur = await this.etcd.get(key).string()
      const base = cur === null ? 1n : BigInt(cur)
      const nextVal = base + BigInt(this.batch)
      if (nextVal >= 2n ** 64n) throw new TessError('TESS_E_INTERNAL', `id space "${this.kind}" exhausted`, 'a bug: 2^64 ids cannot be used up; report it with the cluster\'s etcd contents')
      const txn = this.etcd.if(key, 'Value', '==', cur ?? '')
      const cmp = cur === null ? this.etcd.if(key, 'Create', '==', 0) : txn
      const res = await cmp.then(this.etcd.put(key).value(nextVal.toString())).commit()
      if (res.succeeded) {
        this.next = base
        this.end = nextVal
        return
      }
    }
    throw new TessError('TESS_E_CONFLICT', `cannot allocate a ${this.kind} id: too much contention`, 'retry the command')
  }
}

/**
 * Raise the counter of `kind` so that every id it hands out from now on is above `atLeast` (a
 * metadata restore: ids of objects made after the backup are still on the disks). Never lowers it.
 */
export async function raiseIdCounter(etcd: Etcd3, kind: string, atLeast: bigint): Promise<boolean> {
  const key = keys.idCounter(kind)
  const want = atLeast + 1n
  for (let attempt = 0; attempt < idCasRetriesMax; attempt++) {
    const cur = await etcdCall(`read the ${kind} id counter`, () => etcd.get(key).string())
    if (cur !== null && BigInt(cur) >= want) return false
    const cmp = cur === null ? etcd.if(key, 'Create', '==', 0) : etcd.if(key, 'Value', '==', cur)
    const res = await etcdCall(`raise the ${kind} id counter`, () => cmp.then(etcd.put(key).value(want.toString())).commit())
    if (res.succeeded) return true
  }
  throw new TessError('TESS_E_CONFLICT', `cannot raise the ${kind} id counter: too much contention`, 'the CVM tries again at its next start')
}

/**
 * Follow something in etcd: `refresh` runs whenever the key (or any key under the prefix) is put
 * or deleted, through a watch, and with `pollMs` also now and every pollMs after, because a watch
 * can be lost. Failures are logged (`what` names the thing), never thrown.
 */
export function followEtcd(etcd: Etcd3, opts: { key: string } | { prefix: string }, follow: { what: string, log: { warn(m: string): void }, pollMs?: number }, refresh: () => Promise<void>): { stop(): void } {
  let watcher: { cancel(): Promise<void> } | undefined
  let timer: NodeJS.Timeout | undefined
  let stopped = false
  const run = () => refresh().catch((e: unknown) => follow.log.warn(`${follow.what}: cannot read it: ${errorMessage(e)}`))
  const builder = etcd.watch()
  const watch = 'key' in opts ? builder.key(opts.key) : builder.prefix(opts.prefix)
  watch.create().then((w) => {
    if (stopped) return void w.cancel().catch(() => undefined) // stopped already: a watch that cannot cancel ends with the client
    watcher = w
    w.on('put', () => void run())
    w.on('delete', () => void run())
    w.on('error', () => undefined)
  }, (e: unknown) => follow.log.warn(`${follow.what}: cannot watch it${follow.pollMs !== undefined ? ` (read every ${follow.pollMs / 1000} s instead)` : ''}: ${errorMessage(e)}`))
  if (follow.pollMs !== undefined) {
    const pollMs = follow.pollMs
    const tick = () => {
      void run().finally(() => {
        if (stopped) return
        timer = setTimeout(tick, pollMs)
        timer.unref()
      })
    }
    tick()
  }
  return {
    stop: () => {
      stopped = true
      clearTimeout(timer)
      void watcher?.cancel().catch(() => undefined) // stopping: a watch that cannot cancel ends with the client
    },
  }
}
