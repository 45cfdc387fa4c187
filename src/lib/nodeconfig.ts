import fs from 'node:fs'
import path from 'node:path'
import { TessError } from './errors.js'

/**
 * What one node needs to run its daemons. Written by bootstrap into `<dataDir>/node.json`;
 * read by the supervisor, etcd launcher and the CVM. Everything is on disk so a restart after
 * kill -9 comes back the same.
 */
export interface NodeConfig {
  version: 1
  clusterName: string
  clusterId: string
  nodeName: string
  /** address other nodes and clients reach this node at */
  address: string
  dataDir: string
  etcd: {
    clientPort: number
    peerPort: number
    /** client URLs of every etcd member the CVM may use */
    endpoints: string[]
    /** `name=peerURL,...` for the initial cluster */
    initialCluster: string
    initialClusterState: 'new' | 'existing'
    /** does this node run an etcd member (1 member for 1-2 nodes, 3 for 3-4, 5 for 5 or more) */
    member: boolean
  }
  api: { bind: string, port: number }
  /**
   * NBD on TCP; `tls`: 'require' (default: nothing without STARTTLS and a client certificate of
   * the cluster CA or the NBD users CA) or 'offer' (plain NBD accepted too: anyone who reaches the
   * port can read and write every vDisk). The Unix socket `<data-dir>/run/nbd.sock` (mode 0600)
   * never needs TLS.
   */
  nbd: { bind: string, port: number, tls?: 'offer' | 'require' }
  /**
   * data port: replication and forwarded I/O between CVMs (mutual TLS; in mode `crc`, the default,
   * extent data on bulk connections with CRC-32C per frame; the env TESS_DATA_PORT_MODE overrides)
   */
  data: { bind: string, port: number, mode?: 'tls' | 'crc' }
  /**
   * spare extent group files each disk keeps written ahead (vdisk/spares.ts): first writes into a
   * new vDisk then cost what overwrites cost; default: 1 % of the disk, at most 32 (1 GiB); 0: none.
   * The env TESS_SPARE_EGROUPS overrides it.
   */
  pool?: { spareEgroupsPerDisk?: number }
  createdAt: string
}

export const nodePaths = (dataDir: string) => ({
  nodeConfig: path.join(dataDir, 'node.json'),
  pki: path.join(dataDir, 'pki'),
  caCert: path.join(dataDir, 'pki', 'ca.crt'),
  caKey: path.join(dataDir, 'pki', 'ca.key'),
  nodeCert: path.join(dataDir, 'pki', 'node.crt'),
  nodeKey: path.join(dataDir, 'pki', 'node.key'),
  apiToken: path.join(dataDir, 'pki', 'api-token'),
  /** the key that seals secrets stored in etcd (lib/secretbox.ts); the same on every node */
  secretsKey: path.join(dataDir, 'pki', 'secrets.key'),
  etcdData: path.join(dataDir, 'etcd'),
  /** written once the CVM found (or made) the cluster's record in etcd: from then on, an etcd without it has lost its data */
  joined: path.join(dataDir, 'joined'),
  /** left by a metadata restore (bootstrap/restore-node.ts): ids the CVM raises etcd's counters past at its next start */
  restoreFloors: path.join(dataDir, 'restore-floors.json'),
  run: path.join(dataDir, 'run'),
  /** NBD for local clients (root): no TLS, the file's mode is the authentication */
  nbdSocket: path.join(dataDir, 'run', 'nbd.sock'),
  logs: path.join(dataDir, 'logs'),
  disks: path.join(dataDir, 'disks'),
  supervisorPid: path.join(dataDir, 'run', 'supervisor.pid'),
  supervisorState: path.join(dataDir, 'run', 'supervisor.json'),
  /** one directory per CSM of this node: csm.json (its spec, read by the supervisor), state/, sock (its API) */
  csms: path.join(dataDir, 'csms'),
  csmDir: (name: string) => path.join(dataDir, 'csms', name),
  csmSpec: (name: string) => path.join(dataDir, 'csms', name, 'csm.json'),
  csmState: (name: string) => path.join(dataDir, 'csms', name, 'state'),
  csmSocket: (name: string) => path.join(dataDir, 'csms', name, 'sock'),
  /** the node's image content store and unpacked layers, shared by its CSMs (the CVM writes, CSMs read) */
  imageContent: path.join(dataDir, 'images', 'content'),
  imageLayers: path.join(dataDir, 'images', 'layers'),
  pidFile: (daemon: string) => path.join(dataDir, 'run', `${daemon}.pid`),
  logFile: (daemon: string) => path.join(dataDir, 'logs', `${daemon}.log`),
})

export function readNodeConfig(dataDir: string): NodeConfig {
  const file = nodePaths(dataDir).nodeConfig
  let raw: string
  try {
    raw = fs.readFileSync(file, 'utf8')
  } catch {
    throw new TessError('TESS_E_NOT_FOUND', `cannot read node config "${file}"`, 'is this the data dir of a node? create one with `tess cluster create --local`')
  }
  const cfg = JSON.parse(raw) as NodeConfig
  if (cfg.version !== 1) throw new TessError('TESS_E_INVALID', `node config "${file}" has unknown version ${String(cfg.version)}`, 'upgrade tess')
  return cfg
}

/** Write a file atomically (tmp + fsync + rename + fsync dir). */
export function writeFileAtomic(file: string, data: string | Buffer, mode = 0o600): void {
  const tmp = `${file}.tmp-${process.pid}`
  const fd = fs.openSync(tmp, 'w', mode)
  try {
    if (typeof data === 'string') fs.writeSync(fd, data)
    else fs.writeSync(fd, data)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  fs.renameSync(tmp, file)
  const dfd = fs.openSync(path.dirname(file), 'r')
  try {
    fs.fsyncSync(dfd)
  } finally {
    fs.closeSync(dfd)
  }
}
