import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import type { Etcd3 } from 'etcd3'
import { backupFormat, backupHeader, type BackupManifest } from '../../lib/backup.js'
import { TessError, errorMessage } from '../../lib/errors.js'
import { etcdCall, keys, listJson } from '../../lib/etcd.js'
import { fsyncPath } from '../../lib/fsutil.js'
import { nodePaths, type NodeConfig } from '../../lib/nodeconfig.js'
import type { DiskRecord, NodeRecord } from '../../lib/types.js'

/** a snapshot stream that sends nothing for this long is abandoned */
const backupStreamIdleMs = 60_000

export interface TakenBackup {
  /** the backup file's two header lines */
  head: Buffer
  /** the snapshot, in a file of the CVM's run/ dir that the caller removes */
  file: string
  manifest: BackupManifest
}

/**
 * Stream etcd's snapshot (Maintenance.Snapshot: a consistent copy of the whole key space, with
 * etcd's hash at its end) into a file of run/, hashing it on the way, then describe it: the
 * members, nodes and disks at that moment, the CA certificate and what the key space holds.
 */
export async function takeBackup(etcd: Etcd3, cfg: NodeConfig, version: string): Promise<TakenBackup> {
  const run = nodePaths(cfg.dataDir).run
  const file = path.join(run, `backup-${process.pid}-${crypto.randomBytes(6).toString('hex')}.db`)
  const out = fs.createWriteStream(file, { mode: 0o600 })
  const hash = crypto.createHash('sha256')
  let bytes = 0
  let revision: string | undefined
  try {
    // the revision now: the snapshot holds at least it (etcd 3.4 leaves the stream's header empty)
    const before = await etcdCall('read etcd\'s revision', () => etcd.kv.range({ key: Buffer.from(keys.cluster) }))
    await streamSnapshot(etcd, (blob, rev) => {
      if (revision === undefined && rev !== undefined && rev !== '0') revision = rev
      hash.update(blob)
      bytes += blob.length
      out.write(blob)
    })
    await new Promise<void>((resolve, reject) => out.end((e?: Error | null) => e ? reject(e) : resolve()))
    if (bytes === 0) throw new Error('etcd sent an empty snapshot')
    await fsyncPath(file)
    const manifest = await describe(etcd, cfg, version, { bytes, sha256: hash.digest('hex'), revision: revision ?? before.header.revision })
    return { head: backupHeader(manifest), file, manifest }
  } catch (e) {
    out.destroy()
    fs.rmSync(file, { force: true })
    if (e instanceof TessError) throw e
    throw new TessError('TESS_E_UNREACHABLE', `cannot take an etcd snapshot: ${errorMessage(e)}`, 'is etcd healthy? see tess cluster status and the etcd log on this node')
  }
}

/** tries of a snapshot stream that fails before its first byte (a dead member's channel: the pool picks another) */
const snapshotStartTriesMax = 5

/**
 * etcd's snapshot stream, chunk by chunk. The client's pool retries unary calls on another
 * endpoint, not streams: a stream that fails before its first chunk (the channel of a member that
 * is gone) is started again, up to snapshotStartTriesMax times; one that fails later is an error.
 */
async function streamSnapshot(etcd: Etcd3, onChunk: (blob: Buffer, revision: string | undefined) => void): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    let got = false
    try {
      const stream = await etcd.maintenance.snapshot()
      await new Promise<void>((resolve, reject) => {
        const stall = () => setTimeout(() => reject(new Error(`the snapshot stream sent nothing for ${backupStreamIdleMs / 1000} s`)), backupStreamIdleMs)
        let idle = stall()
        stream.on('data', (chunk) => {
          got = true
          onChunk(chunk.blob, chunk.header?.revision)
          clearTimeout(idle)
          idle = stall()
        })
        stream.on('error', (e) => {
          clearTimeout(idle)
          reject(e)
        })
        stream.on('end', () => {
          clearTimeout(idle)
          resolve()
        })
      })
      return
    } catch (e) {
      if (got || attempt >= snapshotStartTriesMax) throw e
      await new Promise((r) => setTimeout(r, 200 * attempt))
    }
  }
}

async function describe(etcd: Etcd3, cfg: NodeConfig, version: string, snap: { bytes: number, sha256: string, revision: string }): Promise<BackupManifest> {
  const [members, nodes, disks, vdisks, volumes, containers, snapshots] = await Promise.all([
    etcdCall('list etcd members', () => etcd.cluster.memberList({})),
    etcdCall('list nodes', () => listJson<NodeRecord>(etcd, keys.nodesPrefix)),
    etcdCall('list disks', () => listJson<DiskRecord>(etcd, keys.disksPrefix)),
    etcdCall('count vDisks', () => etcd.getAll().prefix(keys.vdisksPrefix).count()),
    etcdCall('count volumes', () => etcd.getAll().prefix(keys.volumesPrefix).count()),
    etcdCall('count containers', () => etcd.getAll().prefix(keys.containersPrefix).count()),
    etcdCall('count snapshots', () => etcd.getAll().prefix(keys.allSnapshotsPrefix).count()),
  ])
  return {
    format: backupFormat,
    clusterId: cfg.clusterId,
    clusterName: cfg.clusterName,
    takenAt: new Date().toISOString(),
    takenFrom: cfg.nodeName,
    revision: snap.revision,
    tessVersion: version,
    snapshotBytes: snap.bytes,
    snapshotSha256: snap.sha256,
    // a learner that never got a name is left out: a restore makes voting members only
    members: members.members.filter((m) => m.name !== '' && !m.isLearner).map((m) => ({ name: m.name, peerUrls: m.peerURLs })),
    nodes: nodes.map((n) => ({ name: n.name, address: n.address })),
    disks: disks.map((d) => ({ id: d.id, node: d.node, path: d.path })),
    caCert: fs.readFileSync(nodePaths(cfg.dataDir).caCert, 'utf8'),
    counts: { vdisks, volumes, containers, snapshots },
  }
}
