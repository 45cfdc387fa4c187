import { execFileSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import { cleanNodeContainers } from '../csm/cleanup.js'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { TessError, errorMessage } from '../lib/errors.js'
import { apiPortDefault, daemonStartTimeoutMs, etcdClientPortDefault, etcdPeerPortDefault, nbdPortDefault } from '../lib/limits.js'
import { checkName } from '../lib/names.js'
import { nodePaths, readNodeConfig, writeFileAtomic, type NodeConfig } from '../lib/nodeconfig.js'
import type { ClusterStatus, DiskInfo, HealthInfo } from '../lib/types.js'
import { etcdUrl } from '../supervisor/services.js'
import { spawnSupervisor } from '../supervisor/running.js'
import { ApiClient } from '../lib/apiclient.js'
import { findContext, type ClusterContext } from '../lib/contexts.js'
import { dataPortDefault } from '../cvm/replication/protocol.js'
import { createCa, createNodeCert, createToken } from './pki.js'
import { createSecretsKey } from '../lib/secretbox.js'
import { logTail, pidAlive, pidIsOurs, readPid, waitForExit } from '../lib/process.js'
import { waitPlacementReady } from './ready.js'

export interface LocalClusterOptions {
  name: string
  dataDir: string
  bind: string
  apiPort: number
  nbdPort: number
  etcdClientPort: number
  etcdPeerPort: number
  dataPort: number
}

export const localDefaults = {
  name: 'local',
  dataDir: '/var/lib/tess',
  bind: '127.0.0.1',
  apiPort: apiPortDefault,
  nbdPort: nbdPortDefault,
  etcdClientPort: etcdClientPortDefault,
  etcdPeerPort: etcdPeerPortDefault,
  dataPort: dataPortDefault,
}

function portFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer()
    srv.once('error', () => resolve(false))
    srv.listen(port, host, () => srv.close(() => resolve(true)))
  })
}

function haveBinary(name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/** Pre-flight checks for an embedded cluster; every failure is reported at once. */
export async function preflightLocal(o: LocalClusterOptions): Promise<void> {
  const problems: string[] = []
  const hints: string[] = []
  const cfgFile = nodePaths(o.dataDir).nodeConfig
  if (fs.existsSync(cfgFile)) {
    let name = '?'
    try {
      name = readNodeConfig(o.dataDir).clusterName
    } catch { /* unreadable */ }
    throw new TessError('TESS_E_EXISTS', `cannot create cluster "${o.name}": data dir ${o.dataDir} already holds cluster "${name}"`,
      `use another --data-dir, or destroy that cluster first (tess cluster destroy --cluster ${name} --yes)`)
  }
  if (findContext(o.name)) {
    throw new TessError('TESS_E_EXISTS', `cannot create cluster "${o.name}": a cluster context of that name is saved`, `pick another --name, or destroy it (tess cluster destroy --cluster ${o.name} --yes)`)
  }
  if (fs.existsSync(o.dataDir)) {
    if (!fs.statSync(o.dataDir).isDirectory()) problems.push(`data dir ${o.dataDir} exists and is not a directory`)
    else if (fs.readdirSync(o.dataDir).length > 0) problems.push(`data dir ${o.dataDir} exists and is not empty`)
  }
  for (const bin of ['etcd', 'openssl']) {
    if (!haveBinary(bin)) {
      problems.push(`${bin} is not installed`)
      hints.push(`apt-get install ${bin === 'etcd' ? 'etcd-server etcd-client' : 'openssl'}`)
    }
  }
  const ports: Array<[string, number]> = [['API', o.apiPort], ['NBD', o.nbdPort], ['etcd client', o.etcdClientPort], ['etcd peer', o.etcdPeerPort], ['data', o.dataPort]]
  const seen = new Set<number>()
  for (const [what, port] of ports) {
    if (seen.has(port)) problems.push(`port ${port} is given for two services`)
    seen.add(port)
    if (!(await portFree(o.bind, port))) {
      problems.push(`${what} port ${o.bind}:${port} is in use`)
      hints.push(`free the port or pick another with --${what.toLowerCase().replace(' ', '-')}-port`)
    }
  }
  if (problems.length > 0) {
    throw new TessError('TESS_E_PRECONDITION', `cannot create cluster "${o.name}": ${problems.join('; ')}`, hints.length > 0 ? hints.join('; ') : 'fix the problems above and run the command again')
  }
}

export interface LocalCreated {
  context: ClusterContext
  status: ClusterStatus
  disk: DiskInfo
}

/** The node.json of the embedded node: one etcd member, every listener on `o.bind`. */
function localNodeConfig(o: LocalClusterOptions, nodeName: string): NodeConfig {
  return {
    version: 1,
    clusterName: o.name,
    clusterId: crypto.randomUUID(),
    nodeName,
    address: o.bind,
    dataDir: o.dataDir,
    etcd: {
      clientPort: o.etcdClientPort,
      peerPort: o.etcdPeerPort,
      endpoints: [etcdUrl(o.bind, o.etcdClientPort)],
      initialCluster: `${nodeName}=${etcdUrl(o.bind, o.etcdPeerPort)}`,
      initialClusterState: 'new',
      member: true,
    },
    api: { bind: o.bind, port: o.apiPort },
    nbd: { bind: o.bind, port: o.nbdPort },
    data: { bind: o.bind, port: o.dataPort },
    createdAt: new Date().toISOString(),
  }
}

/** Wait until the new CVM answers with etcd healthy; fail early with the logs if the supervisor exits. */
export async function waitForCvm(client: ApiClient, supervisorPid: number | undefined, name: string, p: ReturnType<typeof nodePaths>, what = `cannot create cluster "${name}"`): Promise<void> {
  const deadline = Date.now() + daemonStartTimeoutMs
  for (;;) {
    try {
      const h = await client.get<HealthInfo>('/v1/health', { retryMs: 0 })
      if (h.etcd) break
    } catch (e) {
      if (!(e instanceof TessError) || e.code !== 'TESS_E_UNREACHABLE') throw e
    }
    if (supervisorPid !== undefined && !pidAlive(supervisorPid)) {
      throw new TessError('TESS_E_PRECONDITION', `${what}: the supervisor exited`, `supervisor log:\n${logTail(p.logFile('supervisor'), 15)}`)
    }
    if (Date.now() > deadline) {
      throw new TessError('TESS_E_TIMEOUT', `${what}: the CVM did not answer within ${daemonStartTimeoutMs / 1000} s`,
        `etcd log:\n${logTail(p.logFile('etcd'), 15)}\ncvm log:\n${logTail(p.logFile('cvm'), 15)}`)
    }
    await new Promise((r) => setTimeout(r, 200))
  }
}

/**
 * Create the embedded single-node cluster: certificates, node config, the supervisor (detached),
 * which starts etcd and the CVM; then register the default disk. On failure, everything started
 * is stopped and the data dir removed, so the command can simply be run again.
 */
export async function createLocalCluster(o: LocalClusterOptions, progress: (step: string) => void): Promise<LocalCreated> {
  checkName('cluster', o.name)
  o = { ...o, dataDir: path.resolve(o.dataDir) }
  progress('pre-flight checks')
  await preflightLocal(o)
  const p = nodePaths(o.dataDir)
  const createdDir = !fs.existsSync(o.dataDir)
  try {
    progress('generating the cluster CA and credentials')
    fs.mkdirSync(o.dataDir, { recursive: true, mode: 0o700 })
    for (const d of [p.pki, p.run, p.logs, p.disks, path.join(p.disks, 'd0')]) fs.mkdirSync(d, { recursive: true, mode: 0o700 })
    const ca = createCa(p.pki, o.name)
    const nodeName = checkName('node', (os.hostname().toLowerCase().replace(/[^a-z0-9-]/g, '-').replace(/^-+/, '') || 'node1').slice(0, 63))
    createNodeCert(p.pki, ca, nodeName, [o.bind])
    const token = createToken(p.apiToken)
    createSecretsKey(p.secretsKey)
    const cfg = localNodeConfig(o, nodeName)
    writeFileAtomic(p.nodeConfig, JSON.stringify(cfg, null, 2) + '\n', 0o600)

    progress('starting the supervisor, etcd and the CVM')
    const supervisorPid = spawnSupervisor(o.dataDir)

    const context: ClusterContext = {
      name: o.name,
      endpoints: [`https://${o.bind.includes(':') ? `[${o.bind}]` : o.bind}:${o.apiPort}`],
      caCert: fs.readFileSync(ca.caCert, 'utf8'),
      token,
      createdAt: cfg.createdAt,
      local: { dataDir: o.dataDir },
    }
    const client = new ApiClient(context)
    progress('waiting for the CVM to answer')
    await waitForCvm(client, supervisorPid, o.name, p)
    progress('registering the default disk')
    const disk = await client.post<DiskInfo>('/v1/disks', { path: path.join(p.disks, 'd0') }, { retryMs: 0 })
    // the first write after this command returns must find the disk in the CVM's placement view
    progress('waiting until the CVM can place data')
    await waitPlacementReady(context, [{ node: nodeName, endpoint: context.endpoints[0]! }], [nodeName], 1, { what: `cannot create cluster "${o.name}"` })
    const status = await client.get<ClusterStatus>('/v1/cluster/status')
    return { context, status, disk }
  } catch (e) {
    progress('cleaning up after a failed create')
    await stopLocalDaemons(o.dataDir).catch(() => undefined) // cleanup after the failed create, whose error is thrown below
    if (fs.existsSync(p.nodeConfig) || createdDir) {
      // Only what we made: the directory was empty or absent before.
      fs.rmSync(o.dataDir, { recursive: true, force: true })
      if (!createdDir) fs.mkdirSync(o.dataDir, { recursive: true, mode: 0o700 })
    }
    throw e instanceof TessError ? e : new TessError('TESS_E_INTERNAL', `cannot create cluster "${o.name}": ${errorMessage(e)}`, 'see the logs in the data dir')
  }
}

export interface StoppedProcess { name: string, pid: number, how: 'SIGTERM' | 'SIGKILL' }

/**
 * Stop every daemon of a local node by pid (never by name): the supervisor gets SIGTERM and stops
 * its children; anything still alive after that (pidfiles checked against /proc) gets SIGKILL.
 */
export async function stopLocalDaemons(dataDir: string): Promise<StoppedProcess[]> {
  const p = nodePaths(dataDir)
  const stopped: StoppedProcess[] = []
  const candidates: Array<[string, number | undefined]> = [['etcd', readPid(p.pidFile('etcd'))], ['cvm', readPid(p.pidFile('cvm'))]]
  try {
    const st = JSON.parse(fs.readFileSync(p.supervisorState, 'utf8')) as { daemons: Array<{ name: string, pid: number | null }> }
    for (const d of st.daemons) if (d.pid) candidates.push([d.name, d.pid])
  } catch { /* no state file */ }
  const sup = readPid(p.supervisorPid)
  // A process may exit between the check and the signal: that is what we wanted anyway.
  const signal = (pid: number, sig: NodeJS.Signals) => {
    try {
      process.kill(pid, sig)
    } catch { /* already gone */ }
  }
  if (sup !== undefined && pidIsOurs(sup, dataDir)) {
    signal(sup, 'SIGTERM')
    stopped.push({ name: 'supervisor', pid: sup, how: 'SIGTERM' })
    if (!(await waitForExit(sup, 25_000))) {
      signal(sup, 'SIGKILL')
      stopped[stopped.length - 1]!.how = 'SIGKILL'
    }
  }
  for (const [name, pid] of candidates) {
    if (pid === undefined || !pidIsOurs(pid, dataDir)) continue
    signal(pid, 'SIGKILL')
    await waitForExit(pid, 5_000)
    stopped.push({ name, pid, how: 'SIGKILL' })
  }
  return stopped
}

/**
 * Stop the daemons and remove the data dir. Disks registered outside the data dir lose their
 * marker and extent groups (only if the marker names this cluster), so they can be reused.
 */
export async function destroyLocalCluster(dataDir: string, diskPaths: string[]): Promise<StoppedProcess[]> {
  let clusterId: string | undefined
  try {
    clusterId = readNodeConfig(dataDir).clusterId
  } catch { /* half-made data dir */ }
  const stopped = await stopLocalDaemons(dataDir)
  // containers outlive their CSM daemons by design: with every daemon stopped, remove them
  const cleaned = await cleanNodeContainers(dataDir, { info: () => undefined, warn: () => undefined, error: () => undefined })
  if (cleaned.errors.length > 0) {
    throw new TessError('TESS_E_IO', `cannot remove every container of the cluster: ${cleaned.errors.join('; ')}`, `the data dir ${dataDir} is kept; fix the cause and run destroy again`)
  }
  for (const d of diskPaths) {
    if (d === dataDir || d.startsWith(dataDir + '/')) continue
    try {
      const marker = JSON.parse(fs.readFileSync(path.join(d, 'tess-disk.json'), 'utf8')) as { clusterId?: string }
      if (clusterId === undefined || marker.clusterId !== clusterId) continue
      fs.rmSync(path.join(d, 'egroups'), { recursive: true, force: true })
      fs.rmSync(path.join(d, 'tess-disk.json'), { force: true })
    } catch { /* no marker: not ours */ }
  }
  if (fs.existsSync(nodePaths(dataDir).nodeConfig) || fs.existsSync(dataDir)) {
    fs.rmSync(dataDir, { recursive: true, force: true })
  }
  return stopped
}
