import crypto from 'node:crypto'
import { secretsKeyBytes } from '../lib/secretbox.js'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { TessError, errorMessage } from '../lib/errors.js'
import { apiPortDefault, daemonStartTimeoutMs, etcdClientPortDefault, etcdPeerPortDefault, etcdReconfigCallTimeoutMs, nbdPortDefault, rfMax } from '../lib/limits.js'
import { checkName } from '../lib/names.js'
import type { NodeConfig } from '../lib/nodeconfig.js'
import type { ClusterStatus, DiskInfo, HealthInfo } from '../lib/types.js'
import { ApiClient } from '../lib/apiclient.js'
import { configDir, type ClusterContext } from '../lib/contexts.js'
import { dataPortDefault } from '../cvm/replication/protocol.js'
import { etcdUrl, nodeUnit, nodeUnitName, nodeUnitPath } from '../supervisor/services.js'
import { buildBundle, installBundle } from './bundle.js'
import { createCa, createNodeCert } from './pki.js'
import { waitPlacementReady } from './ready.js'
import { formatPreflight, preflightError, preflightPorts, runPreflight, type PreflightResult } from './preflight.js'
import { SshTransport, shellQuote, type HostKeyPolicy } from './ssh.js'
import { packageRoot } from '../lib/packageroot.js'

export const remoteDataDir = '/var/lib/tess'
/** etcd's leader health interval (5 s) plus a margin */
const etcdHealthIntervalMs = 6_000
/** this package's root: what bootstrap copies to a node */
export const repoRoot = packageRoot

export interface RemoteClusterOptions {
  name: string
  hosts: string[]
  sshUser: string
  sshKey: string
  sshPort: number
  knownHostsFile?: string
  hostKeyPolicy: HostKeyPolicy
  ask?: (host: string, fingerprint: string, keyType: string) => Promise<boolean>
  rf: number
  disks: string[]
  installDeps: boolean
  dryRun: boolean
  ports: { api: number, nbd: number, etcdClient: number, etcdPeer: number, data: number }
}

export const remotePortDefaults = { api: apiPortDefault, nbd: nbdPortDefault, etcdClient: etcdClientPortDefault, etcdPeer: etcdPeerPortDefault, data: dataPortDefault }

export interface PlannedNode {
  host: string
  name: string
  etcdMember: boolean
  disks: string[]
  state: 'new' | 'configured' | 'running'
}

export interface RemotePlan {
  cluster: string
  clusterId: string
  rf: number
  nodes: PlannedNode[]
  etcdMembers: string[]
  ports: RemoteClusterOptions['ports']
}

/** How many etcd members for a cluster of n nodes: 1 for 1-2, 3 for 3-4, 5 for 5 or more. */
export function etcdMemberCount(n: number): number {
  return n >= 5 ? 5 : n >= 3 ? 3 : 1
}

/** The operator-side state of a cluster: its CA (key included: needed to add hosts), id, token. */
export function clusterStateDir(name: string): string {
  return path.join(configDir(), 'clusters', name)
}

/** secretsKey: base64, seals secrets in etcd (lib/secretbox.ts); made here for clusters that had none */
interface ClusterSecrets { clusterId: string, createdAt: string, token: string, secretsKey: string, caCert: string, caKey: string }

function loadOrCreateSecrets(name: string): ClusterSecrets {
  const dir = clusterStateDir(name)
  const meta = path.join(dir, 'cluster.json')
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  if (!fs.existsSync(meta)) {
    createCa(dir, name)
    const secrets = { clusterId: crypto.randomUUID(), createdAt: new Date().toISOString(), token: crypto.randomBytes(32).toString('base64url'), secretsKey: crypto.randomBytes(secretsKeyBytes).toString('base64') }
    fs.writeFileSync(meta, JSON.stringify(secrets, null, 2) + '\n', { mode: 0o600 })
  }
  const m = JSON.parse(fs.readFileSync(meta, 'utf8')) as { clusterId: string, createdAt: string, token: string, secretsKey?: string }
  if (m.secretsKey === undefined) {
    // a cluster made by an older tess: its nodes added from now on get a key (older nodes have none)
    m.secretsKey = crypto.randomBytes(secretsKeyBytes).toString('base64')
    fs.writeFileSync(meta, JSON.stringify(m, null, 2) + '\n', { mode: 0o600 })
  }
  return { ...m, secretsKey: m.secretsKey, caCert: path.join(dir, 'ca.crt'), caKey: path.join(dir, 'ca.key') }
}

function nodeNameFrom(hostname: string, host: string): string {
  const n = hostname.trim().toLowerCase().split('.')[0]!.replace(/[^a-z0-9-]/g, '-').replace(/^-+/, '').slice(0, 63)
  return n || `node-${host.replace(/[^a-z0-9]/gi, '-').toLowerCase()}`
}

interface ProvisionContext {
  cluster: string
  secrets: ClusterSecrets
  ports: RemoteClusterOptions['ports']
  endpoints: string[]
  initialCluster: string
  /** 'existing' when the node joins a running etcd cluster as a new member */
  initialClusterState?: 'new' | 'existing'
  bundle: { file: string, sha256: string, sizeBytes: number }
}

/** Install the bundle, write certificates and node.json (if new), start the supervisor (if not running). */
async function provisionNode(t: SshTransport, n: PlannedNode, c: ProvisionContext, progress: (host: string, step: string) => void): Promise<void> {
  if (n.state === 'running') return progress(n.host, 'already running')
  progress(n.host, `installing the bundle (${(c.bundle.sizeBytes / 1048576).toFixed(0)} MiB)`)
  await installBundle(t, c.bundle, { remoteDir: `${remoteDataDir}/bundle` })
  if (n.state === 'new') {
    progress(n.host, 'writing certificates and node config')
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-pki-'))
    try {
      const cert = createNodeCert(tmp, { caCert: c.secrets.caCert, caKey: c.secrets.caKey }, n.name, [n.host])
      await t.mkdirp(`${remoteDataDir}/pki`, 0o700)
      await t.writeFile(`${remoteDataDir}/pki/ca.crt`, fs.readFileSync(c.secrets.caCert), 0o644)
      await t.writeFile(`${remoteDataDir}/pki/node.crt`, fs.readFileSync(cert.cert), 0o644)
      await t.writeFile(`${remoteDataDir}/pki/node.key`, fs.readFileSync(cert.key), 0o600)
      await t.writeFile(`${remoteDataDir}/pki/api-token`, c.secrets.token + '\n', 0o600)
      await t.writeFile(`${remoteDataDir}/pki/secrets.key`, c.secrets.secretsKey + '\n', 0o600)
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true })
    }
    for (const d of ['run', 'logs', 'disks', ...n.disks]) await t.mkdirp(d.startsWith('/') ? d : `${remoteDataDir}/${d}`, 0o700)
    const cfg: NodeConfig = {
      version: 1, clusterName: c.cluster, clusterId: c.secrets.clusterId, nodeName: n.name, address: n.host, dataDir: remoteDataDir,
      etcd: { clientPort: c.ports.etcdClient, peerPort: c.ports.etcdPeer, endpoints: c.endpoints, initialCluster: c.initialCluster, initialClusterState: c.initialClusterState ?? 'new', member: n.etcdMember },
      api: { bind: n.host, port: c.ports.api }, nbd: { bind: n.host, port: c.ports.nbd }, data: { bind: n.host, port: c.ports.data },
      createdAt: c.secrets.createdAt,
    }
    // node.json last: its presence means "configured" to a resumed run
    await t.writeFile(`${remoteDataDir}/node.json`, JSON.stringify(cfg, null, 2) + '\n', 0o600)
  }
  progress(n.host, 'starting the supervisor')
  await startSupervisor(t)
}

/** An SSH connection to a host of the cluster, its host key checked against the pinned ones. */
export function connectHost(r: NonNullable<ClusterContext['remote']>, address: string): Promise<SshTransport> {
  return SshTransport.connect({ host: address, port: r.sshPort, username: r.sshUser, privateKey: r.sshKey, hostKeyPolicy: 'strict', ...(r.knownHostsFile ? { knownHostsFile: r.knownHostsFile } : {}) })
}

/** Shell test: systemd is PID 1 on the host (its runtime directory exists) and systemctl is there. */
const systemdShell = '[ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1'

/**
 * Start the node: where systemd is PID 1, install and enable `tess-node.service` (it starts at
 * every boot and is restarted if it fails); elsewhere run the bundle's boot entry point, the same
 * command the README gives for starting a node at boot. Both do nothing if it is running.
 */
export async function startSupervisor(t: SshTransport): Promise<void> {
  const node = (await t.execOk('command -v node')).stdout.trim()
  if ((await t.exec(systemdShell)).code === 0) {
    await t.writeFile(nodeUnitPath, nodeUnit(node, remoteDataDir), 0o644)
    await t.execOk(`systemctl daemon-reload && systemctl enable --now ${nodeUnitName}`, { what: `enable and start ${nodeUnitName}` })
    return
  }
  await t.execOk(`cd / && ${shellQuote(node)} ${remoteDataDir}/bundle/current/dist/supervisor/boot.js --data-dir ${remoteDataDir}`, { what: 'start the supervisor (boot entry point)' })
}

/** Shell test: the pid in `pidFile` (left in $p) is alive and its command line names the data dir. */
function pidIsOursShell(pidFile: string): string {
  return `p=$(cat ${pidFile} 2>/dev/null) && [ -n "$p" ] && tr '\\0' ' ' </proc/$p/cmdline 2>/dev/null | grep -q -- ${shellQuote(remoteDataDir)}`
}

/** Shell: stop the node's supervisor (and with it its daemons), SIGTERM then SIGKILL after 30 s. */
const stopSupervisorShell = `if ${systemdShell} && [ -f ${nodeUnitPath} ]; then systemctl stop ${nodeUnitName} || true; fi; if ${pidIsOursShell(`${remoteDataDir}/run/supervisor.pid`)}; then kill -TERM $p; for i in $(seq 150); do kill -0 $p 2>/dev/null || break; sleep 0.2; done; kill -KILL $p 2>/dev/null; fi; true`

/** Stop a node's supervisor (and with it its daemons) by the pid in its pidfile, checked against /proc. */
export async function stopSupervisor(t: SshTransport): Promise<void> {
  await t.execOk(stopSupervisorShell, { what: 'stop the supervisor', timeoutMs: 60_000 })
}

/** Promote the learner at `peerUrl` once it caught up, then wait until `node` reports a healthy etcd. */
async function waitEtcdMember(client: ApiClient, node: string, peerUrl: string): Promise<void> {
  const deadline = Date.now() + daemonStartTimeoutMs * 2
  let promoted = false
  for (;;) {
    try {
      if (!promoted) {
        await client.post('/v1/etcd/members/promote', { peerUrl }, { retryMs: 0 })
        promoted = true
      }
      const st = await client.get<ClusterStatus>('/v1/cluster/status', { retryMs: 0 })
      if (st.nodes.find((n) => n.name === node)?.daemons.some((d) => d.name === 'etcd' && d.healthy)) {
        // etcd accepts the next reconfiguration only once its leader has been in touch with every
        // voting member for its health interval (5 s)
        await new Promise((r) => setTimeout(r, etcdHealthIntervalMs))
        return
      }
    } catch { /* still catching up, or electing */ }
    if (Date.now() > deadline) throw new TessError('TESS_E_TIMEOUT', `the etcd member on ${node} did not come up in time`, `see ${remoteDataDir}/logs/etcd.log on that host`)
    await new Promise((r) => setTimeout(r, 500))
  }
}

/** Wait until the node's CVM answers with etcd reachable, then register its disks (idempotent). */
async function waitAndRegisterDisks(context: ClusterContext, endpoint: string, n: PlannedNode, t: SshTransport, progress: (host: string, step: string) => void): Promise<void> {
  progress(n.host, 'waiting for the CVM')
  const client = new ApiClient({ ...context, endpoints: [endpoint] })
  const deadline = Date.now() + daemonStartTimeoutMs * 2
  for (;;) {
    try {
      const h = await client.get<HealthInfo>('/v1/health', { retryMs: 0 })
      if (h.etcd) break
    } catch (e) {
      if (!(e instanceof TessError) || (e.code !== 'TESS_E_UNREACHABLE' && e.code !== 'TESS_E_TIMEOUT')) throw e
    }
    if (Date.now() > deadline) {
      const logs = (await t.exec(`tail -n 12 ${remoteDataDir}/logs/cvm.log ${remoteDataDir}/logs/etcd.log ${remoteDataDir}/logs/supervisor.log 2>&1`)).stdout
      throw new TessError('TESS_E_TIMEOUT', `host ${n.host}: the CVM did not answer within ${(daemonStartTimeoutMs * 2) / 1000} s`, `logs on ${n.host}:\n${logs}`)
    }
    await new Promise((r) => setTimeout(r, 300))
  }
  const have = new Set((await client.get<DiskInfo[]>('/v1/disks')).filter((d) => d.node === n.name).map((d) => d.path))
  for (const d of n.disks) {
    if (have.has(d)) continue
    progress(n.host, `registering disk ${d}`)
    await client.post<DiskInfo>('/v1/disks', { path: d, node: n.name })
  }
  progress(n.host, 'ready')
}

export interface RemoteCreated {
  context: ClusterContext
  status: ClusterStatus
  plan: RemotePlan
}

export class PreflightFailed extends TessError {
  constructor(readonly result: PreflightResult) {
    const e = preflightError(result)
    super(e.code, e.message, `${formatPreflight(result, { onlyProblems: true })}\n${e.hint}`)
  }
}

/**
 * Bootstrap a cluster on hosts over SSH: connect (host keys pinned), pre-flight every host in
 * parallel and report every problem before changing anything, install the bundle, write each
 * node's certificates and config, start the supervisors (which start etcd members and CVMs),
 * register disks and save the context. Run again after a partial failure, it resumes: hosts
 * already configured or running are left as they are.
 */
export async function createRemoteCluster(o: RemoteClusterOptions, progress: (host: string, step: string) => void): Promise<RemoteCreated | { dryRun: true, plan: RemotePlan }> {
  checkCreateOptions(o)
  const stateExisted = fs.existsSync(path.join(clusterStateDir(o.name), 'cluster.json'))
  const secrets = loadOrCreateSecrets(o.name)
  // A dry run leaves nothing behind: not even the CA it made for the plan.
  const forgetIfDry = () => {
    if (o.dryRun && !stateExisted) fs.rmSync(clusterStateDir(o.name), { recursive: true, force: true })
  }

  // 1. connect to every host in parallel
  const transports = await connectAll(o, progress)
  const conns = () => [...transports.values()].filter((t): t is SshTransport => t instanceof SshTransport)
  try {
    // Host keys and credentials first: a refused key is an authentication failure (exit 7), for
    // every host at once; an unreachable host is reported by the pre-flight checks below.
    const refused = [...transports].filter(([, t]) => t instanceof TessError && t.code === 'TESS_E_AUTH') as Array<[string, TessError]>
    if (refused.length > 0) {
      throw new TessError('TESS_E_AUTH', `cannot create cluster "${o.name}": SSH refused on ${refused.length} host(s): ${refused.map(([h, e]) => `${h}: ${e.message}`).join('; ')}`,
        refused[0]![1].hint || 'pass --known-hosts FILE with the hosts\' keys, or --accept-new-host-keys')
    }
    // 2. what is on each host already (resume)
    const nodes = await planNodes(o, transports, secrets.clusterId)
    const plan: RemotePlan = { cluster: o.name, clusterId: secrets.clusterId, rf: o.rf, nodes, etcdMembers: nodes.filter((n) => n.etcdMember).map((n) => n.name), ports: o.ports }

    // 3. pre-flight, every host, every problem at once, before any change
    const checked = await preflightAll(o, transports, nodes, secrets.clusterId, progress)
    if (!checked.ok) {
      forgetIfDry()
      throw new PreflightFailed(checked)
    }
    if (o.dryRun) {
      forgetIfDry()
      return { dryRun: true, plan }
    }

    // 4. bundle, certificates, config, supervisor: every host in parallel
    const bundle = await buildBundle(repoRoot, path.join(configDir(), 'bundles'))
    const initialCluster = nodes.filter((n) => n.etcdMember).map((n) => `${n.name}=${etcdUrl(n.host, o.ports.etcdPeer)}`).join(',')
    const endpoints = nodes.filter((n) => n.etcdMember).map((n) => etcdUrl(n.host, o.ports.etcdClient))
    await Promise.all(nodes.map((n) => provisionNode(transports.get(n.host) as SshTransport, n, { cluster: o.name, secrets, ports: o.ports, endpoints, initialCluster, bundle }, progress)))

    // 5. wait for every CVM, register disks, save the context
    const context: ClusterContext = {
      name: o.name,
      endpoints: nodes.map((n) => `https://${n.host.includes(':') ? `[${n.host}]` : n.host}:${o.ports.api}`),
      caCert: fs.readFileSync(secrets.caCert, 'utf8'),
      token: secrets.token,
      createdAt: secrets.createdAt,
      remote: { sshUser: o.sshUser, sshKey: path.resolve(o.sshKey), sshPort: o.sshPort, ...(o.knownHostsFile ? { knownHostsFile: path.resolve(o.knownHostsFile) } : {}), hosts: nodes.map((n) => ({ name: n.name, address: n.host })), ports: o.ports },
    }
    await Promise.all(nodes.map((n, i) => waitAndRegisterDisks(context, context.endpoints[i]!, n, transports.get(n.host) as SshTransport, progress)))
    // 6. the first write after this command returns must find RF nodes: wait until every CVM
    // sees every node up with its disks
    const hostOf = new Map(nodes.map((n) => [n.name, n.host]))
    await waitPlacementReady(context, nodes.map((n, i) => ({ node: n.name, endpoint: context.endpoints[i]! })), nodes.map((n) => n.name), o.rf,
      { what: `cannot create cluster "${o.name}"`, progress: (node, step) => progress(hostOf.get(node) ?? node, step) })
    const status = await new ApiClient(context).get<ClusterStatus>('/v1/cluster/status')
    return { context, status, plan }
  } finally {
    await Promise.all(conns().map((t) => t.close().catch(() => undefined))) // closing SSH connections when done: nothing is lost if one is gone
  }
}

/** the options of a cluster create that need no host: name, host list, RF, key file */
function checkCreateOptions(o: RemoteClusterOptions): void {
  checkName('cluster', o.name)
  if (o.hosts.length === 0) throw new TessError('TESS_E_USAGE', 'no hosts given', 'pass --hosts H1,H2,H3')
  if (new Set(o.hosts).size !== o.hosts.length) throw new TessError('TESS_E_USAGE', `a host is listed twice in --hosts ${o.hosts.join(',')}`, 'list each host once')
  if (o.rf < 1 || o.rf > Math.min(3, o.hosts.length)) {
    throw new TessError('TESS_E_TOO_FEW_NODES', `cannot create cluster "${o.name}" with RF ${o.rf} on ${o.hosts.length} host(s)`, `use --rf ${Math.min(3, o.hosts.length)} or fewer, or add hosts`)
  }
  if (!fs.existsSync(o.sshKey)) throw new TessError('TESS_E_NOT_FOUND', `SSH key "${o.sshKey}" does not exist`, 'pass --ssh-key PATH of a private key authorized on the hosts')
}

/** an SSH connection to every host in parallel, or the error that host gave */
async function connectAll(o: RemoteClusterOptions, progress: (host: string, step: string) => void): Promise<Map<string, SshTransport | Error>> {
  const transports = new Map<string, SshTransport | Error>()
  await Promise.all(o.hosts.map(async (host) => {
    progress(host, 'connecting over SSH')
    try {
      transports.set(host, await SshTransport.connect({
        host, port: o.sshPort, username: o.sshUser, privateKey: o.sshKey, hostKeyPolicy: o.hostKeyPolicy, ask: o.ask,
        ...(o.knownHostsFile ? { knownHostsFile: o.knownHostsFile } : {}),
      }))
    } catch (e) {
      transports.set(host, e instanceof Error ? e : new Error(String(e)))
    }
  }))
  return transports
}

/**
 * The node each host becomes, and what it already is (a run after a partial failure resumes):
 * its name (hostname, or the name in a node.json of this cluster), whether it is an etcd member,
 * and new, configured (node.json of this cluster) or running (its supervisor is alive).
 */
async function planNodes(o: RemoteClusterOptions, transports: Map<string, SshTransport | Error>, clusterId: string): Promise<PlannedNode[]> {
  const nodes: PlannedNode[] = []
  const members = etcdMemberCount(o.hosts.length)
  for (const [i, host] of o.hosts.entries()) {
    const t = transports.get(host)
    let name = `node${i + 1}`
    let state: PlannedNode['state'] = 'new'
    if (t instanceof SshTransport) {
      name = nodeNameFrom((await t.exec('hostname')).stdout, host)
      const cfg = await t.exec(`cat ${remoteDataDir}/node.json 2>/dev/null`)
      if (cfg.code === 0) {
        try {
          const nc = JSON.parse(cfg.stdout) as NodeConfig
          if (nc.clusterId === clusterId) {
            state = 'configured'
            name = nc.nodeName
            const alive = await t.exec(`kill -0 "$(cat ${remoteDataDir}/run/supervisor.pid 2>/dev/null)" 2>/dev/null`)
            if (alive.code === 0) state = 'running'
          }
        } catch { /* not ours: pre-flight reports the data dir */ }
      }
    }
    nodes.push({ host, name, etcdMember: i < members, disks: o.disks.length > 0 ? o.disks : [`${remoteDataDir}/disks/d0`], state })
  }
  const names = nodes.map((n) => n.name)
  if (new Set(names).size !== names.length) {
    for (const [i, n] of nodes.entries()) n.name = `${n.name}-${i + 1}`
  }
  return nodes
}

/**
 * The pre-flight checks of every host at once, before any change: ports only on hosts whose
 * supervisor is not running yet. A dry run changes nothing: missing packages are not installed,
 * and with --install-deps they do not count as failures (the real run installs them).
 */
async function preflightAll(o: RemoteClusterOptions, transports: Map<string, SshTransport | Error>, nodes: PlannedNode[], clusterId: string,
  progress: (host: string, step: string) => void): Promise<PreflightResult> {
  const fresh = new Map([...transports].filter(([h]) => nodes.find((n) => n.host === h)!.state !== 'running'))
  const running = new Map([...transports].filter(([h]) => nodes.find((n) => n.host === h)!.state === 'running'))
  for (const h of o.hosts) progress(h, 'pre-flight checks')
  const basePlan = {
    clusterName: o.name, clusterId, disks: nodes[0]!.disks, dataDir: remoteDataDir,
    dataDirAllowedEntries: ['bundle', 'pki', 'node.json', 'run', 'logs', 'etcd', 'disks'], installDeps: o.installDeps && !o.dryRun,
  }
  const results: PreflightResult[] = []
  if (fresh.size > 0) results.push(await runPreflight(fresh, { ...basePlan, ports: preflightPorts({ apiPort: o.ports.api, nbdPort: o.ports.nbd, etcdClientPort: o.ports.etcdClient, etcdPeerPort: o.ports.etcdPeer, dataPort: o.ports.data }) }))
  if (running.size > 0) results.push(await runPreflight(running, { ...basePlan, ports: [] }))
  const merged: PreflightResult = { ok: results.every((r) => r.ok), hosts: results.flatMap((r) => r.hosts) }
  if (o.dryRun && o.installDeps) {
    for (const h of merged.hosts) h.ok = h.checks.every((c) => c.ok || c.check === 'binary')
    merged.ok = merged.hosts.every((h) => h.ok)
  }
  return merged
}

export { errorMessage }

export interface RemoteDestroyed { host: string, node: string, ok: boolean, message: string }

/**
 * Stop a remote cluster's daemons on every host (the supervisor by the pid in its pidfile, after
 * checking /proc that the pid is ours; then any daemon pid left) and delete the node's data:
 * the data dir, and the extent groups and marker of disks outside it that carry this cluster's id.
 * Unreachable hosts are reported, not skipped silently.
 */
export async function destroyRemoteCluster(ctx: ClusterContext, diskPaths: Map<string, string[]>, clusterId: string | undefined, progress: (host: string, step: string) => void): Promise<RemoteDestroyed[]> {
  const r = ctx.remote
  if (!r) throw new TessError('TESS_E_INTERNAL', `cluster "${ctx.name}" has no SSH details`, 'the context was not made by tess cluster create --hosts; create the cluster with --hosts, or add its SSH details to the context')
  const d = remoteDataDir
  const q = shellQuote
  return Promise.all(r.hosts.map(async (h): Promise<RemoteDestroyed> => {
    progress(h.address, 'connecting')
    let t: SshTransport
    try {
      t = await SshTransport.connect({ host: h.address, port: r.sshPort, username: r.sshUser, privateKey: r.sshKey, hostKeyPolicy: 'strict', ...(r.knownHostsFile ? { knownHostsFile: [r.knownHostsFile] } : {}) })
    } catch (e) {
      return { host: h.address, node: h.name, ok: false, message: errorMessage(e) }
    }
    try {
      progress(h.address, 'stopping daemons')
      const script = [
        stopSupervisorShell,
        `for f in ${d}/run/*.pid; do [ -e "$f" ] || continue; if ${pidIsOursShell('$f')}; then kill -KILL $p; fi; done`,
        // containers outlive their CSM daemons by design: with every daemon stopped, remove them
        `if [ -d ${d}/csms ]; then "$(command -v node || echo /usr/bin/node)" ${d}/bundle/current/dist/csm/cleanup-main.js --data-dir ${d} >/dev/null || exit 1; fi`,
        // disks outside the data dir: only when the marker names this cluster (id known)
        ...(clusterId === undefined ? [] : (diskPaths.get(h.name) ?? []).filter((p) => !p.startsWith(d + '/')).map((p) =>
          `if grep -qF ${q(clusterId)} ${q(`${p}/tess-disk.json`)} 2>/dev/null; then rm -rf ${q(`${p}/egroups`)} ${q(`${p}/tess-disk.json`)}; fi`)),
        `find ${q(d)} -mindepth 1 -maxdepth 1 -exec rm -rf {} +`,
        `if [ -f ${nodeUnitPath} ]; then systemctl disable ${nodeUnitName} >/dev/null 2>&1; rm -f ${nodeUnitPath}; systemctl daemon-reload >/dev/null 2>&1; fi; true`,
      ].join('\n')
      await t.execOk(script, { what: 'stop the daemons and remove the data', timeoutMs: 120_000 })
      progress(h.address, 'done')
      return { host: h.address, node: h.name, ok: true, message: 'stopped and removed' }
    } catch (e) {
      return { host: h.address, node: h.name, ok: false, message: errorMessage(e) }
    } finally {
      await t.close().catch(() => undefined) // closing SSH connections when done: nothing is lost if one is gone
    }
  }))
}

/**
 * Make an existing node an etcd member (host add growing etcd): register it as a learner, point
 * its node.json at the cluster as it is now, restart its supervisor (its etcd starts and joins),
 * and wait until it is a voting member. Returns etcd's --initial-cluster after the addition.
 */
async function promoteToEtcdMember(api: ApiClient, r: NonNullable<ClusterContext['remote']>, p: { name: string, address: string }, ports: typeof remotePortDefaults, endpoints: string[]): Promise<string> {
  const added = await api.post<{ initialCluster: string }>('/v1/etcd/members', { name: p.name, peerUrl: etcdUrl(p.address, ports.etcdPeer) }, { timeoutMs: etcdReconfigCallTimeoutMs })
  const initialCluster = added.initialCluster
  const pt = await SshTransport.connect({ host: p.address, port: r.sshPort, username: r.sshUser, privateKey: r.sshKey, hostKeyPolicy: 'strict', ...(r.knownHostsFile ? { knownHostsFile: r.knownHostsFile } : {}) })
  try {
    const cfg = JSON.parse((await pt.execOk(`cat ${remoteDataDir}/node.json`)).stdout) as NodeConfig
    const next: NodeConfig = { ...cfg, etcd: { ...cfg.etcd, member: true, initialCluster, initialClusterState: 'existing', endpoints } }
    await pt.writeFile(`${remoteDataDir}/node.json`, JSON.stringify(next, null, 2) + '\n', 0o600)
    await stopSupervisor(pt)
    await startSupervisor(pt)
  } finally {
    await pt.close().catch(() => undefined) // closing SSH connections when done: nothing is lost if one is gone
  }
  await waitEtcdMember(api, p.name, etcdUrl(p.address, ports.etcdPeer))
  return initialCluster
}

/**
 * The etcd members a new node's node.json names, and etcd's --initial-cluster for it. When etcd
 * grows (`grow`), the existing nodes in `promote` become members one at a time, then the new
 * node is registered as one.
 */
async function growEtcd(api: ApiClient, r: NonNullable<ClusterContext['remote']>, ports: typeof remotePortDefaults,
  plan: { members: Array<ClusterStatus['nodes'][number]>, promote: Array<ClusterStatus['nodes'][number]>, want: number, grow: boolean }, node: { name: string, host: string },
  progress: (host: string, step: string) => void): Promise<{ initialCluster: string, endpoints: string[] }> {
  const { members, promote, want, grow } = plan
  const { name, host } = node
  let initialCluster = members.map((m) => `${m.name}=${etcdUrl(m.address, ports.etcdPeer)}`).join(',')
  const endpoints = [...members, ...promote].map((m) => etcdUrl(m.address, ports.etcdClient))
  if (grow) endpoints.push(etcdUrl(host, ports.etcdClient))
  for (const p of promote) {
    progress(p.address, `becoming an etcd member (${members.length + promote.indexOf(p) + 1} of ${want})`)
    initialCluster = await promoteToEtcdMember(api, r, p, ports, endpoints)
  }
  if (grow) {
    progress(host, `becoming an etcd member (${want} of ${want})`)
    initialCluster = (await api.post<{ initialCluster: string }>('/v1/etcd/members', { name, peerUrl: etcdUrl(host, ports.etcdPeer) }, { timeoutMs: etcdReconfigCallTimeoutMs })).initialCluster
  }
  return { initialCluster, endpoints }
}

/**
 * After a new node's disks are registered: wait for it to be a voting etcd member (when it is to
 * be one: `etcdPeerUrl`) and for placement to see it, then return the cluster's status.
 */
async function waitJoined(context: ClusterContext, joined: { name: string, host: string }, etcdPeerUrl: string | undefined,
  progress: (host: string, step: string) => void): Promise<ClusterStatus> {
  const { name, host } = joined
  let after = await new ApiClient(context).get<ClusterStatus>('/v1/cluster/status')
  if (etcdPeerUrl !== undefined) await waitEtcdMember(new ApiClient(context), name, etcdPeerUrl)
  // The first write after this command returns, through any node, must be placeable with the
  // new node too: wait until the CVM of every node that is up (and of the new one) sees all of
  // them up with their disks.
  const up = after.nodes.filter((x) => x.state === 'up' || x.name === name)
  const hostOf = new Map(up.map((x) => [x.name, x.address]))
  await waitPlacementReady(context, up.map((x) => ({ node: x.name, endpoint: `https://${x.address.includes(':') ? `[${x.address}]` : x.address}:${x.apiPort}` })),
    up.map((x) => x.name), Math.min(rfMax, up.length), { what: `cannot add host ${host}`, progress: (node, step) => progress(hostOf.get(node) ?? node, step) })
  after = await new ApiClient(context).get<ClusterStatus>('/v1/cluster/status')
  return after
}

export interface HostAdded { host: string, node: string, etcdMember: boolean, status: ClusterStatus }

/**
 * Join one more host to a cluster bootstrapped from this machine (it holds the cluster CA): the
 * same pre-flight, bundle, certificate and supervisor steps as create. The new node runs an etcd
 * member only when the member count should grow; growing etcd (2 -> 3 or 4 -> 5 nodes) is refused
 * by this version with a clear message rather than done half-way.
 */
export async function addRemoteHost(ctx: ClusterContext, host: string, o: {
  disks: string[], installDeps: boolean, hostKeyPolicy: HostKeyPolicy, ask?: RemoteClusterOptions['ask'],
  /** called with the context that includes the new host once its daemons are started (save it: a later step may fail) */
  onJoined?: (context: ClusterContext) => void | Promise<void>
}, progress: (host: string, step: string) => void): Promise<{ added: HostAdded, context: ClusterContext }> {
  const r = ctx.remote
  if (!r) throw new TessError('TESS_E_USAGE', `cluster "${ctx.name}" was not bootstrapped over SSH`, 'hosts can be added to clusters made with `tess cluster create --hosts`')
  if (!fs.existsSync(path.join(clusterStateDir(ctx.name), 'cluster.json'))) {
    throw new TessError('TESS_E_PRECONDITION', `this machine does not hold the CA of cluster "${ctx.name}"`, `run the command on the machine that created the cluster (it keeps ${clusterStateDir(ctx.name)})`)
  }
  const secrets = loadOrCreateSecrets(ctx.name)
  const ports = r.ports ?? remotePortDefaults
  const status = await new ApiClient(ctx).get<ClusterStatus>('/v1/cluster/status')
  if (status.nodes.some((n) => n.address === host)) {
    throw new TessError('TESS_E_EXISTS', `host ${host} is already node "${status.nodes.find((n) => n.address === host)!.name}" of cluster "${ctx.name}"`, 'see `tess host list`')
  }
  const members = status.nodes.filter((n) => n.daemons.some((d) => d.name === 'etcd'))
  const want = etcdMemberCount(status.nodes.length + 1)
  // Growing etcd (2 -> 3 nodes: 1 -> 3 members; 4 -> 5: 3 -> 5): the new node and
  // (want - members - 1) existing nodes become members, one at a time.
  const promote = want > members.length ? status.nodes.filter((n) => !members.includes(n)).slice(0, want - members.length - 1) : []
  if (want > members.length && (promote.length !== want - members.length - 1 || status.nodes.some((n) => n.state !== 'up'))) {
    throw new TessError('TESS_E_PRECONDITION', `adding a host needs etcd to grow from ${members.length} to ${want} members, and every node must be up for that`, 'bring every node up (see `tess cluster status`) and run the command again')
  }
  progress(host, 'connecting over SSH')
  const t = await SshTransport.connect({ host, port: r.sshPort, username: r.sshUser, privateKey: r.sshKey, hostKeyPolicy: o.hostKeyPolicy, ask: o.ask, ...(r.knownHostsFile ? { knownHostsFile: r.knownHostsFile } : {}) })
  try {
    const name = nodeNameFrom((await t.exec('hostname')).stdout, host)
    if (status.nodes.some((n) => n.name === name)) throw new TessError('TESS_E_EXISTS', `a node named "${name}" is already in cluster "${ctx.name}"`, 'give the host another hostname')
    const disks = o.disks.length > 0 ? o.disks : [`${remoteDataDir}/disks/d0`]
    progress(host, 'pre-flight checks')
    const pre = await runPreflight(new Map([[host, t]]), {
      clusterName: ctx.name, clusterId: secrets.clusterId, disks, dataDir: remoteDataDir, installDeps: o.installDeps,
      dataDirAllowedEntries: ['bundle', 'pki', 'node.json', 'run', 'logs', 'etcd', 'disks'],
      ports: preflightPorts({ apiPort: ports.api, nbdPort: ports.nbd, etcdClientPort: ports.etcdClient, etcdPeerPort: ports.etcdPeer, dataPort: ports.data }),
    })
    if (!pre.ok) throw new PreflightFailed(pre)
    const grow = want > members.length
    const n: PlannedNode = { host, name, etcdMember: grow, disks, state: 'new' }
    const bundle = await buildBundle(repoRoot, path.join(configDir(), 'bundles'))
    const api = new ApiClient(ctx)
    const { initialCluster, endpoints } = await growEtcd(api, r, ports, { members, promote, want, grow }, { name, host }, progress)
    await provisionNode(t, n, { cluster: ctx.name, secrets, ports, endpoints, initialCluster, initialClusterState: grow ? 'existing' : 'new', bundle }, progress)
    const endpoint = `https://${host.includes(':') ? `[${host}]` : host}:${ports.api}`
    const context: ClusterContext = { ...ctx, endpoints: [...ctx.endpoints, endpoint], remote: { ...r, hosts: [...r.hosts, { name, address: host }] } }
    await o.onJoined?.(context)
    await waitAndRegisterDisks(context, endpoint, n, t, progress)
    const after = await waitJoined(context, { name, host }, grow ? etcdUrl(host, ports.etcdPeer) : undefined, progress)
    return { added: { host, node: name, etcdMember: grow, status: after }, context }
  } finally {
    await t.close().catch(() => undefined) // closing SSH connections when done: nothing is lost if one is gone
  }
}

/**
 * Stop one host's daemons and remove its data over SSH (used by `host remove`, after the data has
 * been moved off it). An unreachable host is reported, not an error: it is being removed anyway.
 */
export async function cleanRemoteHost(ctx: ClusterContext, node: string, progress: (host: string, step: string) => void): Promise<RemoteDestroyed | undefined> {
  const r = ctx.remote
  const h = r?.hosts.find((x) => x.name === node)
  if (!r || !h) return undefined
  const [res] = await destroyRemoteCluster({ ...ctx, remote: { ...r, hosts: [h] } }, new Map(), undefined, progress)
  return res
}
