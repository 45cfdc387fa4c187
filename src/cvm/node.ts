import fs from 'node:fs'
import type { Etcd3, Lease } from 'etcd3'
import { TessError, errorMessage } from '../lib/errors.js'
import { etcdCall, getJson, keepLeaseAlive, keys, listJson } from '../lib/etcd.js'
import { CertificateFiles, certificateWarnings } from '../lib/certexpiry.js'
import { nodeHeartbeatTtlSec } from '../lib/limits.js'
import type { Logger } from '../lib/log.js'
import { nodePaths, writeFileAtomic, type NodeConfig } from '../lib/nodeconfig.js'
import type { CertificateInfo, ClusterRecord, ClusterStatus, ContainersState, DaemonInfo, NodeInfo, NodeRecord, NodeStatusRecord, PoolInfo } from '../lib/types.js'
import type { SupervisorState } from '../lib/supervisor-state.js'
import { runningVersion, versionLabel } from '../lib/version.js'

export const daemonNames = ['supervisor', 'etcd', 'cvm'] as const

function alive(pid: number | null | undefined): boolean {
  if (!pid) return false
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/**
 * Nodes that run different bundles (an upgrade under way, or one that stopped): said until every
 * node that is up runs the same one, so a half-upgraded cluster is never silent. `nodes` are the
 * status answer's: an up node's version is null only when its CVM is too old to report one.
 */
export function versionWarnings(nodes: NodeInfo[]): string[] {
  const byBundle = new Map<string, string[]>()
  for (const n of nodes) {
    if (n.state !== 'up') continue
    // a node that is up and reports no version runs a release from before versions were reported
    const key = n.version === null ? 'a release that does not report its version' : versionLabel(n.version)
    byBundle.set(key, [...(byBundle.get(key) ?? []), n.name])
  }
  if (byBundle.size < 2) return []
  const which = [...byBundle].map(([v, names]) => `${names.join(', ')} on ${v}`).join('; ')
  return [`nodes run different versions of tess: ${which}; finish the upgrade with \`tess cluster upgrade\` (it goes on from where it stopped)`]
}

/**
 * This node's membership and liveness: its record in etcd, and a status record bound to a lease
 * that expires when the CVM stops refreshing it (so a dead node shows as down).
 */
export class NodeService {
  private lease: Lease | undefined
  private stopKeepalive: () => void = () => undefined
  private timer: NodeJS.Timeout | undefined
  private stopped = false
  private beating: Promise<void> = Promise.resolve()

  constructor(private readonly etcd: Etcd3, private readonly cfg: NodeConfig, private readonly log: Logger,
    private readonly diskStats: () => Promise<NodeStatusRecord['disks']>) {
    const p = nodePaths(cfg.dataDir)
    this.certificates = new CertificateFiles([{ name: 'node', file: p.nodeCert }, { name: 'CA', file: p.caCert }], (m) => log.warn(m))
  }

  /** this node's certificates (node and CA), reported in its status record */
  private readonly certificates: CertificateFiles

  /** certificates in use that are not files of pki/ (the etcd client's after a rotation), reported with them */
  moreCertificates: () => CertificateInfo[] = () => []

  /** this node's container subsystem, reported in its status record (set once the agent started) */
  containersState: () => ContainersState | undefined = () => undefined

  /**
   * Find (or, on the cluster's first start, make) the cluster's record in etcd, then this node's.
   * An etcd without the record, on a node that has seen it before (its `joined` file), has lost its
   * data: the CVM refuses to start rather than run as a new, empty cluster beside disks full of
   * data; so does one whose record names another cluster.
   */
  async register(): Promise<void> {
    const cluster: ClusterRecord = { name: this.cfg.clusterName, id: this.cfg.clusterId, createdAt: this.cfg.createdAt }
    const joined = nodePaths(this.cfg.dataDir).joined
    let found = await etcdCall('read the cluster record', () => getJson<ClusterRecord>(this.etcd, keys.cluster))
    if (found === undefined) {
      if (fs.existsSync(joined)) {
        throw new TessError('TESS_E_PRECONDITION', `etcd holds no record of cluster "${this.cfg.clusterName}" (${this.cfg.clusterId}), which node ${this.cfg.nodeName} is a member of: etcd's data was lost (or the node reaches another etcd), so this CVM does not start`,
          'restore the metadata from a backup with `tess cluster restore FILE` (README: Backup and restore); every vDisk\'s data is still on the disks')
      }
      await etcdCall('create the cluster record', () => this.etcd.if(keys.cluster, 'Create', '==', 0)
        .then(this.etcd.put(keys.cluster).value(JSON.stringify(cluster))).commit())
      found = await etcdCall('read the cluster record', () => getJson<ClusterRecord>(this.etcd, keys.cluster))
    }
    if (found?.id !== this.cfg.clusterId) {
      throw new TessError('TESS_E_CONFLICT', `etcd holds cluster ${found?.id ?? '(none)'}, not ${this.cfg.clusterId} of node.json: this CVM does not start`, 'check the etcd endpoints in node.json')
    }
    if (!fs.existsSync(joined)) writeFileAtomic(joined, `${this.cfg.clusterId}\n`, 0o600)
    const existing = await getJson<NodeRecord>(this.etcd, keys.node(this.cfg.nodeName))
    const rec: NodeRecord = {
      name: this.cfg.nodeName,
      address: this.cfg.address,
      apiPort: this.cfg.api.port,
      nbdPort: this.cfg.nbd.port,
      dataPort: this.cfg.data.port,
      joinedAt: existing?.joinedAt ?? new Date().toISOString(),
      ...(existing?.draining ? { draining: true } : {}),
    }
    await etcdCall('register this node', () => this.etcd.put(keys.node(this.cfg.nodeName)).value(JSON.stringify(rec)))
  }

  /** Daemons of this node as the supervisor last wrote them, checked against the process table. */
  localDaemons(etcdHealthy: boolean): DaemonInfo[] {
    const p = nodePaths(this.cfg.dataDir)
    let state: SupervisorState | undefined
    try {
      state = JSON.parse(fs.readFileSync(p.supervisorState, 'utf8')) as SupervisorState
    } catch { /* not written yet */ }
    const sup: DaemonInfo = { name: 'supervisor', pid: state?.pid ?? null, healthy: alive(state?.pid), restarts: 0 }
    const out: DaemonInfo[] = [sup]
    const names: Array<'etcd' | 'cvm'> = this.cfg.etcd.member === false ? ['cvm'] : ['etcd', 'cvm']
    for (const name of names) {
      const d = state?.daemons.find((x) => x.name === name)
      const pid = name === 'cvm' ? process.pid : (d?.pid ?? null)
      const healthy = name === 'cvm' ? true : alive(pid) && etcdHealthy
      out.push({ name, pid, healthy, restarts: d?.restarts ?? 0 })
    }
    // CSM daemons, as the supervisor runs them
    for (const d of state?.daemons ?? []) {
      if (d.name.startsWith('csm-')) out.push({ name: d.name, pid: d.pid, healthy: alive(d.pid), restarts: d.restarts })
    }
    return out
  }

  /** etcd answers and holds the cluster's record (an etcd that lost its data answers too, empty) */
  async etcdHealthy(): Promise<boolean> {
    try {
      return (await this.etcd.get(keys.cluster).string()) !== null
    } catch {
      return false
    }
  }

  /**
   * Write this node's status record now (its disks' capacity included). Calls are serialized: the
   * timer's and one made right after a disk is added never race to grant two leases.
   */
  heartbeat(): Promise<void> {
    const next = this.beating.then(() => this.writeStatus())
    this.beating = next.catch(() => undefined) // writeStatus logs its own failures; the next beat tries again
    return next
  }

  private async writeStatus(): Promise<void> {
    if (this.stopped) return
    const rec: NodeStatusRecord = {
      name: this.cfg.nodeName,
      at: new Date().toISOString(),
      daemons: this.localDaemons(true),
      disks: await this.diskStats(),
      certificates: [...this.certificates.read(), ...this.moreCertificates()],
      version: runningVersion(),
    }
    const containers = this.containersState()
    if (containers !== undefined) rec.containers = containers
    if (!this.lease) {
      const lease = this.etcd.lease(nodeHeartbeatTtlSec, { autoKeepAlive: false })
      this.lease = lease
      this.stopKeepalive = keepLeaseAlive(lease, nodeHeartbeatTtlSec, (e) => {
        if (this.lease !== lease) return
        this.log.warn(`node status lease lost (${errorMessage(e)}); will grant a new one`)
        this.lease = undefined
      })
    }
    await this.lease.put(keys.nodeStatus(this.cfg.nodeName)).value(JSON.stringify(rec))
  }

  startHeartbeat(intervalMs = 3000): void {
    const tick = () => {
      this.heartbeat().catch((e) => this.log.warn(`heartbeat: ${errorMessage(e)}`)).finally(() => {
        if (!this.stopped) this.timer = setTimeout(tick, intervalMs)
      })
    }
    tick()
  }

  async stop(): Promise<void> {
    this.stopped = true
    if (this.timer) clearTimeout(this.timer)
    // Revoke explicitly: the status vanishes at once instead of after the TTL.
    this.stopKeepalive()
    try {
      await this.lease?.revoke()
    } catch { /* etcd may be gone already */ }
  }

  async status(pool: PoolInfo, vdiskCount: number): Promise<ClusterStatus> {
    const [cluster, nodes, statuses, etcdOk] = await Promise.all([
      etcdCall('read the cluster record', () => getJson<ClusterRecord>(this.etcd, keys.cluster)),
      etcdCall('list nodes', () => listJson<NodeRecord>(this.etcd, keys.nodesPrefix)),
      etcdCall('read node status', () => listJson<NodeStatusRecord>(this.etcd, keys.nodeStatusPrefix)),
      this.etcdHealthy(),
    ])
    const byName = new Map(statuses.map((s) => [s.name, s]))
    const infos: NodeInfo[] = nodes.map((n) => {
      const local = n.name === this.cfg.nodeName
      const st = byName.get(n.name)
      const daemons = local
        ? this.localDaemons(etcdOk)
        : st?.daemons ?? daemonNames.map((name) => ({ name, pid: null, healthy: false, restarts: 0 }))
      return {
        name: n.name,
        address: n.address,
        state: local || st ? 'up' : 'down',
        daemons,
        apiPort: n.apiPort,
        nbdPort: n.nbdPort,
        lastSeenAt: local ? new Date().toISOString() : st?.at ?? null,
        containers: (local ? this.containersState() : st?.containers) ?? null,
        certificates: (local ? [...this.certificates.read(), ...this.moreCertificates()] : st?.certificates) ?? null,
        version: (local ? runningVersion() : st?.version) ?? null,
      }
    })
    return {
      name: cluster?.name ?? this.cfg.clusterName,
      id: cluster?.id ?? this.cfg.clusterId,
      createdAt: cluster?.createdAt ?? this.cfg.createdAt,
      nodes: infos,
      pool,
      vdiskCount,
      warnings: [...certificateWarnings(infos, Date.now()), ...versionWarnings(infos)],
    }
  }
}
