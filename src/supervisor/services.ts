import path from 'node:path'
import { nodePaths, type NodeConfig } from '../lib/nodeconfig.js'
import { etcdPingMinIntervalSec } from '../lib/limits.js'
import { distDir } from '../lib/packageroot.js'

/** How each daemon of a node is started. The supervisor runs these, in this order. */
export interface ServiceSpec {
  name: string
  command: string
  args: string[]
  env?: Record<string, string>
}


export function etcdUrl(host: string, port: number): string {
  return `https://${host.includes(':') ? `[${host}]` : host}:${port}`
}

export function etcdService(cfg: NodeConfig): ServiceSpec {
  const p = nodePaths(cfg.dataDir)
  const client = etcdUrl(cfg.address, cfg.etcd.clientPort)
  const peer = etcdUrl(cfg.address, cfg.etcd.peerPort)
  const listenClients = cfg.address === '127.0.0.1' ? client : `${client},${etcdUrl('127.0.0.1', cfg.etcd.clientPort)}`
  return {
    name: 'etcd',
    command: 'etcd',
    args: [
      '--name', cfg.nodeName,
      '--data-dir', p.etcdData,
      '--listen-client-urls', listenClients,
      '--advertise-client-urls', client,
      '--listen-peer-urls', peer,
      '--initial-advertise-peer-urls', peer,
      '--initial-cluster', cfg.etcd.initialCluster,
      '--initial-cluster-state', cfg.etcd.initialClusterState,
      '--initial-cluster-token', cfg.clusterId,
      '--cert-file', p.nodeCert, '--key-file', p.nodeKey, '--trusted-ca-file', p.caCert, '--client-cert-auth',
      '--peer-cert-file', p.nodeCert, '--peer-key-file', p.nodeKey, '--peer-trusted-ca-file', p.caCert, '--peer-client-cert-auth',
      // a member back from a partition asks before it calls an election: it does not depose a leader that the others still follow
      '--pre-vote',
      // the CVMs' clients ping their streams more often than etcd's default allows (etcdStreamPingIntervalMs)
      '--grpc-keepalive-min-time', `${etcdPingMinIntervalSec}s`,
      '--log-level', 'warn', '--logger', 'zap',
      '--quota-backend-bytes', String(4 * 1024 * 1024 * 1024),
    ],
  }
}

/** libuv pool threads of the CVM */
const cvmThreadPoolSize = 16

export function cvmService(cfg: NodeConfig): ServiceSpec {
  return {
    name: 'cvm',
    command: process.execPath,
    // TESS_CVM_NODE_ARGS (in the supervisor's environment) adds node options, e.g. --cpu-prof for profiling.
    args: ['--enable-source-maps', ...(process.env.TESS_CVM_NODE_ARGS ?? '').split(' ').filter(Boolean), path.join(distDir, 'cvm', 'main.js'), '--data-dir', cfg.dataDir],
    // Reads and large writes go through libuv's pool: one thread per request a client keeps in
    // flight (QD16 random reads from the disk wait on the device, not on the CPU).
    env: { UV_THREADPOOL_SIZE: String(cvmThreadPoolSize) },
  }
}

/** A CSM daemon: one per csms/NAME/csm.json on the node (the CVM writes those; the supervisor runs them). */
export function csmService(cfg: NodeConfig, csm: string): ServiceSpec {
  return {
    name: `csm-${csm}`,
    command: process.execPath,
    args: ['--enable-source-maps', path.join(distDir, 'csm', 'main.js'), '--data-dir', cfg.dataDir, '--csm', csm],
  }
}

export function servicesFor(cfg: NodeConfig): ServiceSpec[] {
  return cfg.etcd.member === false ? [cvmService(cfg)] : [etcdService(cfg), cvmService(cfg)]
}

/** The systemd unit of a node (installed by bootstrap where systemd is PID 1). */
export const nodeUnitName = 'tess-node.service'
export const nodeUnitPath = `/etc/systemd/system/${nodeUnitName}`

/**
 * The unit's text: the supervisor in the foreground, after the network and local file systems,
 * restarted when it fails, started at boot. KillMode=process: on stop, systemd signals the
 * supervisor only; it stops its daemons itself, in order (CSMs, CVM, etcd), and containers keep
 * running across a restart of their CSM daemon, as they do without systemd.
 */
export function nodeUnit(node: string, dataDir: string): string {
  const log = nodePaths(dataDir).logFile('supervisor')
  return [
    '[Unit]',
    'Description=Tessera node: etcd member, CVM and CSM daemons, kept by the tess supervisor',
    'Wants=network-online.target',
    'After=network-online.target local-fs.target',
    `RequiresMountsFor=${dataDir}`,
    '',
    '[Service]',
    'Type=simple',
    `ExecStart=${node} ${path.join(dataDir, 'bundle', 'current', 'dist', 'supervisor', 'supervisor.js')} --data-dir ${dataDir}`,
    'WorkingDirectory=/',
    'Restart=on-failure',
    'RestartSec=2',
    'KillMode=process',
    'TimeoutStopSec=60',
    `StandardOutput=append:${log}`,
    `StandardError=append:${log}`,
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n')
}
