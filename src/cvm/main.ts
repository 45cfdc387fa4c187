/**
 * The CVM: one per node. Serves the management API (HTTPS) and the NBD data path, owns vDisks,
 * and keeps this node's status in etcd. Started and restarted by the node's supervisor.
 */
import fs from 'node:fs'
import type { Etcd3 } from 'etcd3'
import { readSecretsKey } from '../lib/secretbox.js'
import { TessError, errorMessage } from '../lib/errors.js'
import { connectEtcd, etcdCall, getJson, keys, raiseIdCounter } from '../lib/etcd.js'
import type { NodeRecord, ScrubStart } from '../lib/types.js'
import { PeerPool, type TlsCreds } from './replication/client.js'
import { PeerError, dataPortMode, type DataPortMode } from './replication/protocol.js'
import { DataServer } from './replication/server.js'
import { ReplicaStore } from './vdisk/replicastore.js'
import { SpareEgroups, spareEgroupsPerDisk } from './vdisk/spares.js'
import { EgroupFile } from './vdisk/egroup.js'
import { etcdStartTimeoutMs } from '../lib/limits.js'
import { makeLogger } from '../lib/log.js'
import { nodePaths, readNodeConfig, type NodeConfig } from '../lib/nodeconfig.js'
import { ApiServer, type AuditEntry } from '../lib/http-server.js'
import { registerRoutes, type RouteServices } from './api/routes.js'
import { registerCsmRoutes } from './api/csm-routes.js'
import { AuditLog, UserDirectory, registerUserRoutes } from './api/users.js'
import { registerEventRoutes } from './api/events-routes.js'
import { EventLog } from './events.js'
import { keyNodeOps, registerKeyRoutes } from './api/keys-routes.js'
import { KeyKeeper } from './vdisk/keykeeper.js'
import { NodeAgent } from './control/agent.js'
import { containerControl, type ContainerControl } from './control/cluster.js'
import { containerNodeOps } from './control/ops.js'
import { nodeCaller, registerNodeOps, type NodeCall, type NodeHandlers } from '../lib/rpc/node-ops.js'
import { NbdServer } from './nbd/server.js'
import { NodeService } from './node.js'
import { NodeCredentials } from './credentials.js'
import { checkName } from '../lib/names.js'
import { DiskService } from './pool/disks.js'
import { VdiskEngine } from './vdisk/engine.js'
import { NbdTrust } from './nbd/trust.js'
import { EtcdViewFollower, PlacementView, readViewRecords } from './vdisk/placement.js'
import { VdiskService } from './vdisk/service.js'
import { Curator, ownerOrSelf } from './curator/curator.js'
import { curatorRepairCallTimeoutMs, gcCallTimeoutMs, scrubCallTimeoutMs, vdiskSnapshotCallMs } from '../lib/limits.js'
import { readSettings, updateSettings } from './curator/settings.js'
import { argValue } from '../lib/process.js'

const log = makeLogger('cvm')

/** What the CVM starts from: its node.json, the data port mode, the paths of its data dir and an etcd client. */
interface Startup {
  cfg: NodeConfig
  mode: DataPortMode
  paths: ReturnType<typeof nodePaths>
  etcd: Etcd3
  /** the cluster's events (`tess events`): what this CVM saw and did */
  events: EventLog
}

/** The parts the vDisk engine stands on: this node (its disks, record and credentials), the replica store, the peers and the placement view. */
interface PoolParts {
  disks: DiskService
  node: NodeService
  creds: TlsCreds
  /** the node certificate and key, taken up again by tess cluster rotate-certs */
  nodeCreds: NodeCredentials
  spares: SpareEgroups
  store: ReplicaStore
  peers: PeerPool
  view: PlacementView
  follower: EtcdViewFollower
}

/** The data dir (--data-dir or TESS_DATA_DIR; without one the process exits with status 2), its node.json and an etcd client. */
function readStartup(): Startup {
  const dataDir = argValue('--data-dir') ?? process.env.TESS_DATA_DIR
  if (!dataDir) {
    log.error('usage: cvm --data-dir DIR')
    process.exit(2)
  }
  const cfg = readNodeConfig(dataDir)
  const mode = dataPortMode(cfg.data.mode, process.env.TESS_DATA_PORT_MODE)
  const paths = nodePaths(dataDir)
  const etcd = connectEtcd(cfg)
  return { cfg, mode, paths, etcd, events: new EventLog(etcd, cfg.nodeName, log) }
}

/** etcd starts beside us: wait for it (bounded), else exit and let the supervisor retry. */
async function waitForEtcd({ cfg, etcd }: Startup): Promise<void> {
  const deadline = Date.now() + etcdStartTimeoutMs
  for (;;) {
    try {
      await etcd.get(keys.cluster).string()
      break
    } catch (e) {
      if (Date.now() > deadline) {
        log.error(`etcd unreachable at ${cfg.etcd.endpoints.join(',')}: ${errorMessage(e)}`)
        process.exit(1)
      }
      await new Promise((r) => setTimeout(r, 250))
    }
  }
}

/**
 * Register this node, read its certificates, load its spare extent groups and start following the
 * placement view. holdsData: whether a disk holds data, asked of the vDisk engine (made after this).
 */
async function startPool({ cfg, mode, paths, etcd }: Startup, holdsData: (diskId: string) => Promise<boolean>): Promise<PoolParts> {
  const disks = new DiskService(etcd, cfg.nodeName, cfg.clusterId, holdsData)
  const node = new NodeService(etcd, cfg, log, () => disks.localStats())
  await node.register()
  await applyRestoreFloors(etcd, paths.restoreFloors)
  const nodeCreds = new NodeCredentials(cfg.dataDir, cfg.nodeName, log)
  const creds = nodeCreds.creds
  node.moreCertificates = () => { const c = nodeCreds.heldByEtcdClient(); return c === undefined ? [] : [c] }
  const spares = new SpareEgroups({ disks: () => disks.localRecords(), log, perDisk: spareEgroupsPerDisk(cfg.pool?.spareEgroupsPerDisk, process.env.TESS_SPARE_EGROUPS) })
  await spares.load()
  const store = new ReplicaStore({ localDisks: () => disks.localRecords(), log, spares })
  const peers = new PeerPool(creds, async (name) => {
    const rec = await getJson<NodeRecord>(etcd, keys.node(name))
    if (!rec) throw new PeerError('unreachable', `node ${name} is not a member of the cluster`)
    return { address: rec.address, dataPort: rec.dataPort }
  }, { mode, log })
  // where new extent groups may go: nodes, their status and disks, following etcd by watches
  const view = new PlacementView({ self: cfg.nodeName, log, read: () => readViewRecords(etcd) })
  const follower = new EtcdViewFollower(etcd, view, log)
  await follower.start()
  return { disks, node, creds, nodeCreds, spares, store, peers, view, follower }
}

/**
 * After a metadata restore (bootstrap/restore-node.ts left the file): raise etcd's id counters past
 * every id the cluster's disks still hold, before anything here allocates one; then drop the file.
 */
async function applyRestoreFloors(etcd: Etcd3, file: string): Promise<void> {
  let floors: Record<string, string>
  try {
    floors = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, string>
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return
    throw new Error(`${file}: ${errorMessage(e)} (written by tess cluster restore; run the restore again)`)
  }
  for (const [kind, max] of Object.entries(floors)) {
    if (!/^\d+$/.test(max)) throw new Error(`${file}: the ${kind} floor "${max}" is not a number (run the restore again)`)
    if (max === '0') continue // no id of that kind on any disk
    if (await raiseIdCounter(etcd, kind, BigInt(max))) log.info(`restore: the ${kind} id counter now starts after ${max}, the highest id on this node's disks or in the restored cluster`)
  }
  fs.rmSync(file, { force: true })
}

/** The cluster key from the first of these nodes that gives it (undefined when none does). */
async function askPeersForKey(nodes: string[], call: NodeCall): Promise<Buffer | undefined> {
  for (const n of nodes) {
    const got = await call(n, 'keys.get', {}, 5_000).catch(() => undefined) // that node cannot give the key: the next one is asked
    if (got?.key !== undefined && got.key !== null) return Buffer.from(got.key, 'base64')
  }
  return undefined
}

/** The NBD server (not yet listening) and the trust it checks client certificates against. */
async function startNbd({ cfg, etcd }: Startup, creds: TlsCreds, engine: VdiskEngine): Promise<{ nbdTrust: NbdTrust, nbd: NbdServer }> {
  // TLS is required on TCP unless node.json says offer; the Unix socket (root only) needs none
  const nbdTls = cfg.nbd.tls ?? 'require'
  if (nbdTls !== 'offer' && nbdTls !== 'require') throw new Error(`node.json: nbd.tls is "${String(nbdTls)}", not offer or require`)
  const nbdTrust = new NbdTrust(etcd, creds, log, cfg.nodeName)
  await nbdTrust.refresh().catch((e: unknown) => log.warn(`NBD: cannot read the users CA yet: ${errorMessage(e)}`))
  nbdTrust.start()
  const nbd = new NbdServer({ provider: engine, log, tls: { context: () => nbdTrust.context, require: nbdTls === 'require', revoked: (cert) => nbdTrust.revokedReason(cert) } })
  // a revocation also ends the connections its certificates hold open
  nbdTrust.onRevocations = () => {
    const n = nbd.closeRevoked()
    if (n > 0) log.info(`NBD: closed ${n} connection(s) whose credentials were revoked`)
  }
  engine.connectionsOf = (name) => nbd.connectionsFor(name)
  return { nbdTrust, nbd }
}

/** The vDisk service, after finishing the deletes a crash cut short. */
async function openVdisks({ cfg, etcd }: Startup, keeper: KeyKeeper, disks: DiskService, engine: VdiskEngine): Promise<VdiskService> {
  const vdisks = new VdiskService(etcd, {
    nbdAddress: cfg.address,
    nbdPort: cfg.nbd.port,
    keys: keeper,
    pool: () => disks.pool(),
    data: engine,
  })
  const finished = await vdisks.finishDeletes()
  if (finished > 0) log.info(`completed ${finished} vDisk delete(s) cut short by a crash`)
  return vdisks
}

/** The management API (not yet listening) with its users, audit log and the cluster, node, disk and vDisk routes. */
async function startApi(s: Startup, p: PoolParts, parts: { vdisks: VdiskService, engine: VdiskEngine, nbdTrust: NbdTrust, curator: Curator, scrubNow: (bytesPerSec?: number) => Promise<ScrubStart>, moveAt: RouteServices['moveAt'] }): Promise<{ api: ApiServer, users: UserDirectory }> {
  const { cfg, paths, etcd } = s
  const { creds } = p
  const token = fs.readFileSync(paths.apiToken, 'utf8').trim()
  // operators: the bootstrap token (user root) and the users in etcd; other CVMs: their node certificates
  const users = new UserDirectory(etcd, log)
  await users.refresh().catch((e: unknown) => log.warn(`users: cannot read them yet: ${errorMessage(e)}`))
  users.start()
  const audit = new AuditLog(etcd, cfg.nodeName, log)
  const audited = (e: AuditEntry): void => {
    audit.record(e)
    // an operator's change is an event too (who did what); the nodes' calls to each other are not
    if (e.kind === 'user') s.events.record({ kind: 'change', severity: e.status >= 400 ? 'warning' : 'info', subject: e.who, message: `${e.method} ${e.path}: ${e.status}${e.code !== undefined ? ` ${e.code}` : ''}` })
  }
  const api = new ApiServer({ cert: creds.cert, key: creds.key, ca: creds.ca, token, log, users: (h) => users.lookup(h), rootRotated: () => users.rootRotated, audit: audited })
  registerRoutes(api, { cfg, node: p.node, disks: p.disks, vdisks: parts.vdisks, engine: parts.engine, view: p.view, etcd, log, nbdTrust: parts.nbdTrust, curator: parts.curator, scrubNow: parts.scrubNow, moveAt: parts.moveAt })
  registerUserRoutes(api, users, audit)
  registerEventRoutes(api, s.events)
  return { api, users }
}

/**
 * Containers: this node's agent (its CSMs and image store), and the cluster-wide control that
 * reaches other nodes' agents through their CVMs' API. Also the node operations this CVM serves
 * (containers, the cluster key, vDisk hand-over) and the caller of the other CVMs' ones.
 */
async function startContainers(s: Startup, p: PoolParts, parts: { api: ApiServer, keeper: KeyKeeper, engine: VdiskEngine, vdisks: VdiskService, curator: Curator, otherUpNodes: () => string[] }): Promise<{ agent: NodeAgent, containers: ContainerControl, call: NodeCall }> {
  const { cfg, paths, etcd } = s
  const { creds } = p
  const { api, keeper, engine, vdisks } = parts
  const agent = new NodeAgent(cfg, etcd, log, s.events)
  await agent.start()
  p.node.containersState = () => agent.containersState()
  // what this CVM does for the others (and for itself): one handler per node operation
  const handlers: NodeHandlers = {
    ...containerNodeOps(agent),
    ...keyNodeOps(keeper),
    'vdisk.release': async ({ name }) => engine.releaseIfIdle(name),
    'vdisk.clients': async ({ name }) => ({ connections: engine.connections(name) }),
    'vdisk.deleted': async ({ id }) => ({ shut: await engine.shutDeleted(id) }),
    'vdisk.snapshot': async ({ id, name, op }) => engine.snapshotHere(id, name, op),
    'vdisk.repair': async ({ id, down, bytesPerSec, lostDisks }) => engine.repair(id, down, bytesPerSec, lostDisks),
    'vdisk.move': async ({ id, moves, bytesPerSec }) => engine.move(id, moves, bytesPerSec),
    'vdisk.scrub': async ({ id, bytesPerSec }) => engine.scrub(id, bytesPerSec),
    'pool.gc': async ({ minAgeMs }) => engine.collectGarbage(minAgeMs),
    'curator.scrub': async () => ({ started: parts.curator.scrubNow(), master: cfg.nodeName }),
    'pki.reload': async () => p.nodeCreds.reload(),
  }
  const call = nodeCaller({
    self: cfg.nodeName,
    handlers,
    target: async (nodeName) => {
      const rec = await getJson<NodeRecord>(etcd, keys.node(nodeName))
      if (!rec) throw new TessError('TESS_E_NOT_FOUND', `node ${nodeName} is not a member of the cluster`, 'see `tess host list`')
      const host = rec.address.includes(':') ? `[${rec.address}]` : rec.address
      return { endpoint: `https://${host}:${rec.apiPort}`, ca: creds.ca, cert: creds.cert, key: creds.key, what: `the CVM of node ${nodeName}` }
    },
  })
  // a delete asks the other nodes for their NBD clients of the vDisk and tells them it is gone
  vdisks.others = { upNodes: parts.otherUpNodes, call }
  // the owner moves with the I/O: an idle owner elsewhere is asked to hand a vDisk over
  engine.requestRelease = async (owner, name) => (await call(owner, 'vdisk.release', { name }, 10_000)).released
  engine.snapshotOnOwner = async (owner, req) => call(owner, 'vdisk.snapshot', req, vdiskSnapshotCallMs)
  const containers = containerControl({
    etcd, self: cfg.nodeName, call, log, secretsKey: readSecretsKey(paths.secretsKey),
    vdisks: {
      create: (name, sizeBytes, rf, encrypted) => vdisks.create(name, sizeBytes, rf, encrypted),
      list: () => vdisks.list(),
      delete: (name, dryRun, force) => vdisks.delete(name, force === true, dryRun === true),
      snapshots: (name) => vdisks.snapshots(name),
      createSnapshot: (name, snapshot) => vdisks.createSnapshot(name, snapshot),
      deleteSnapshot: (name, snapshot) => vdisks.deleteSnapshot(name, snapshot, false),
      restoreSnapshot: (name, snapshot) => vdisks.restoreSnapshot(name, snapshot, false),
      clone: (source, snapshot, name, rf) => vdisks.clone(source, snapshot, name, rf),
    },
  })
  registerCsmRoutes(api, containers)
  registerKeyRoutes(api, keeper, cfg.nodeName, parts.otherUpNodes, async (n, key) => { await call(n, 'keys.unlock', { key }, 10_000) })
  // tess cluster rotate-certs: the node takes up the certificate just written to its pki/
  api.route('POST', '/v1/nodes/:name/certificates/reload', async (req) => call(checkName('node', req.params.name!), 'pki.reload', {}), 'admin')
  registerNodeOps(api, handlers)
  return { agent, containers, call }
}

/** Open the data port, NBD (TCP, and the Unix socket when its path allows) and the API; start the heartbeat, the spares and container recovery. */
async function listen(s: Startup, p: PoolParts, parts: { keeper: KeyKeeper, dataServer: DataServer, nbd: NbdServer, api: ApiServer, containers: ContainerControl }): Promise<void> {
  const { cfg, mode, paths } = s
  const { keeper, dataServer, nbd, api, containers } = parts
  keeper.start()
  await dataServer.listen(cfg.data.port, cfg.data.bind)
  await nbd.listen(cfg.nbd.port, cfg.nbd.bind)
  try {
    await nbd.listenUnix(paths.nbdSocket)
  } catch (e) {
    // a data dir whose path is too long for a socket name: local clients use TCP instead
    log.warn(`no NBD Unix socket: ${errorMessage(e)}`)
  }
  await api.listen(cfg.api.port, cfg.api.bind)
  p.node.startHeartbeat()
  p.spares.start(() => EgroupFile.ioCount)
  void containers.containers.recover().catch((e: unknown) => log.warn(`container recovery: ${errorMessage(e)}`))
  log.info(`node ${cfg.nodeName} of cluster ${cfg.clusterName}: API https://${cfg.api.bind}:${cfg.api.port}, NBD ${cfg.nbd.bind}:${cfg.nbd.port}, data ${cfg.data.bind}:${cfg.data.port} (mode ${mode})`)
}

/** On SIGTERM or SIGINT: stop everything in order (at most 8 s, else exit 1), then exit 0. */
function stopOnSignals(s: Startup, p: PoolParts, parts: { curator: Curator, agent: NodeAgent, users: UserDirectory, keeper: KeyKeeper, api: ApiServer, nbdTrust: NbdTrust, nbd: NbdServer, dataServer: DataServer, engine: VdiskEngine }): void {
  let stopping = false
  const stop = async (sig: string) => {
    if (stopping) return
    stopping = true
    log.info(`stopping on ${sig}`)
    const force = setTimeout(() => process.exit(1), 8000)
    try {
      p.spares.stop()
      // another CVM's campaign wins at once, instead of after the election lease's TTL
      await parts.curator.stop()
      await parts.agent.stop()
      parts.users.stop()
      parts.keeper.stop()
      await parts.api.close()
      parts.nbdTrust.stop()
      await parts.nbd.close()
      await parts.dataServer.close()
      await parts.engine.stop()
      await p.follower.stop()
      await p.node.stop()
      s.etcd.close()
    } catch (e) {
      log.warn(`stop: ${errorMessage(e)}`)
    }
    clearTimeout(force)
    process.exit(0)
  }
  process.on('SIGTERM', () => void stop('SIGTERM'))
  process.on('SIGINT', () => void stop('SIGINT'))
}

async function main(): Promise<void> {
  const s = readStartup()
  await waitForEtcd(s)
  const { cfg, mode, etcd } = s

  let engine: VdiskEngine | undefined
  const p = await startPool(s, (id) => engine!.diskHoldsData(id))
  const { disks, creds, store, peers, view } = p
  // the cluster key (encrypted vDisks): in memory only; from the operator, or asked of the other CVMs
  const otherUpNodes = () => view.nodes().filter((n) => n.up && n.name !== cfg.nodeName).map((n) => n.name)
  const keeper = new KeyKeeper(etcd, log, async () => askPeersForKey(otherUpNodes(), call))
  engine = new VdiskEngine(etcd, { nodeName: cfg.nodeName, log, localDisks: () => disks.localRecords(), store, peers, view, clusterKey: () => keeper.current })
  await engine.start()
  const dataServer = new DataServer({ creds, store, vdisks: engine, log, mode, peers })
  const { nbdTrust, nbd } = await startNbd(s, creds, engine)
  const vdisks = await openVdisks(s, keeper, disks, engine)
  // the curator: elected master re-protects extent groups, each vDisk's repair at its owner
  const curator = new Curator(etcd, {
    nodeName: cfg.nodeName,
    log,
    events: s.events,
    repair: (node, id, down, bytesPerSec, lostDisks) => call(node, 'vdisk.repair', { id, down, ...(bytesPerSec !== undefined ? { bytesPerSec } : {}), ...(lostDisks !== undefined && lostDisks.length > 0 ? { lostDisks } : {}) }, curatorRepairCallTimeoutMs),
    nodesChanged: () => view.changed(),
    nodesUp: () => view.nodes().map((n) => ({ name: n.name, up: n.up, disks: n.disks, disksOnline: n.disksOnline })),
    // CSMs of lost nodes, with the containers that have a restart policy, move to live nodes
    failover: (down) => containers.csms.failover(down, containers.containers),
    scrub: (node, id, bytesPerSec) => call(node, 'vdisk.scrub', { id, bytesPerSec }, scrubCallTimeoutMs),
    move: (node, id, moves, bytesPerSec) => call(node, 'vdisk.move', { id, moves, ...(bytesPerSec !== undefined ? { bytesPerSec } : {}) }, curatorRepairCallTimeoutMs),
    collectGarbage: (node, minAgeMs) => call(node, 'pool.gc', { minAgeMs }, gcCallTimeoutMs),
  })
  // `tess cluster scrub`: the rate is stored for every later pass; the master runs the pass
  const scrubNow = async (bytesPerSec?: number): Promise<ScrubStart> => {
    const settings = bytesPerSec !== undefined ? await updateSettings(etcd, { scrubBytesPerSec: bytesPerSec }) : await readSettings(etcd)
    const master = await etcdCall('ask who the curator master is', () => curator.master())
    if (master === undefined) throw new TessError('TESS_E_UNREACHABLE', 'no curator master is elected yet', 'wait a few seconds and try again')
    const r = await call(master, 'curator.scrub', {}, 10_000)
    return { ...r, bytesPerSec: settings.scrubBytesPerSec }
  }
  // `disk remove --evacuate`: one vDisk's replica moves at its owner (here when nobody up owns it)
  const moveAt: RouteServices['moveAt'] = async (id, moves) => call(await ownerOrSelf(etcd, id, (n) => view.nodes().some((x) => x.name === n && x.up), cfg.nodeName), 'vdisk.move', { id, moves }, curatorRepairCallTimeoutMs)
  const { api, users } = await startApi(s, p, { vdisks, engine, nbdTrust, curator, scrubNow, moveAt })
  const { agent, containers, call } = await startContainers(s, p, { api, keeper, engine, vdisks, curator, otherUpNodes })
  await listen(s, p, { keeper, dataServer, nbd, api, containers })
  p.nodeCreds.onReload((c) => {
    api.setCredentials(c.cert, c.key)
    dataServer.setCredentials()
    nbdTrust.rebuild()
  })
  curator.start()
  stopOnSignals(s, p, { curator, agent, users, keeper, api, nbdTrust, nbd, dataServer, engine })
}

main().catch((e) => {
  log.error(`fatal: ${e instanceof TessError ? `${e.message} [${e.code}]; ${e.hint}` : e instanceof Error ? e.stack : errorMessage(e)}`)
  process.exit(1)
})
