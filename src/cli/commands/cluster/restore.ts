import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { readPassphrase, restoreSecrets } from '../../backup.js'
import { keyValue, withSpinner } from '../../output.js'
import { readBackupFile } from '../../../lib/backup.js'
import type { ApiClient } from '../../../lib/apiclient.js'
import { TessError } from '../../../lib/errors.js'
import { daemonStartTimeoutMs } from '../../../lib/limits.js'
import type { HealthInfo, VdiskInfo } from '../../../lib/types.js'
import { restoreLocalCluster, restoreRemoteCluster } from '../../../bootstrap/restore.js'
import type { IdMaxima } from '../../../bootstrap/restore-node.js'

export interface ClusterRestoreResult {
  file: string
  clusterName: string
  clusterId: string
  takenAt: string
  revision: string
  nodes: Array<{ node: string, etcdMember: boolean, movedAside: string | null }>
  /** every id counter was raised past these (the highest ids on the disks) */
  idFloors: IdMaxima
  /** the vDisks the restored cluster lists (the backup held `backupVdisks`) */
  vdisks: number
  backupVdisks: number
  secretsRestored: string[]
}

export default class ClusterRestore extends TessCommand<ClusterRestoreResult> {
  static override summary = 'Rebuild the cluster\'s metadata from a backup, after etcd was lost'
  static override description = 'For a cluster whose etcd lost its data on every member (the CVMs then refuse to start and say so in their log), on the same nodes and disks: checks FILE (written by `tess cluster backup`) whole and for this cluster, stops every node\'s daemons (containers keep running), rebuilds every etcd member\'s data from the snapshot (the lost data dir is moved aside to etcd.lost-TIME, never deleted), raises the id counters past every id the disks still hold, and starts the nodes again. The metadata is that of the moment of the backup: vDisks, snapshots, volumes, CSMs and containers made since are forgotten (their data on the disks is removed by the garbage collection), data written since into extents that existed then is kept, and writes since into new extents are lost. A cluster that still answers with a healthy etcd is refused unless --force (a rollback). Every host must be reachable. With --passphrase-file, secrets sealed in the backup are put back where this machine keeps them, for the files that are missing. Asks first on a terminal; --yes skips the question.'
  static override examples = [
    '<%= config.bin %> <%= command.id %> /backup/tess-2026-12-01.tbk --yes',
    '<%= config.bin %> <%= command.id %> /backup/prod.tbk --passphrase-file /root/backup.pass --yes --json',
  ]

  static override args = {
    file: Args.string({ description: 'Backup file written by tess cluster backup.', required: true }),
  }

  static override flags = {
    yes: Flags.boolean({ char: 'y', description: 'Do not ask for confirmation.' }),
    force: Flags.boolean({ description: 'Restore even though the cluster answers with a healthy etcd (roll its metadata back to the backup).' }),
    'passphrase-file': Flags.string({ description: 'Open the secrets sealed in the backup with this passphrase and put back the missing ones.' }),
  }

  protected async exec(): Promise<ClusterRestoreResult> {
    const { flags, args } = await this.parseInput(ClusterRestore)
    const ctx = this.context(flags.cluster)
    const b = await withSpinner(!this.jsonMode, `Checking ${args.file}`, () => readBackupFile(args.file))
    const m = b.manifest
    if (m.caCert.trim() !== ctx.caCert.trim()) {
      throw new TessError('TESS_E_CONFLICT', `${args.file} is a backup of cluster "${m.clusterName}" (${m.clusterId}), not of cluster "${ctx.name}": their CAs differ`, 'give a backup of this cluster, or pick the cluster with --cluster')
    }
    const passphrase = flags['passphrase-file'] !== undefined ? readPassphrase(flags['passphrase-file']) : undefined
    const client = this.client(ctx)
    const health = await client.get<HealthInfo>('/v1/health', { retryMs: 0, timeoutMs: 5000 }).catch(() => undefined) // no answer: the CVMs do not run (etcd lost), which is the case a restore is for
    if (health?.etcd === true && !flags.force) {
      throw new TessError('TESS_E_CONFLICT', `cluster "${ctx.name}" answers through node ${health.node} with a healthy etcd: its metadata is not lost`, 'a restore would forget everything made since the backup; add --force to roll the metadata back all the same')
    }
    await this.confirm(`Restore the metadata of cluster "${ctx.name}" from the backup of ${m.takenAt}? Every node's daemons restart; whatever was made since the backup is forgotten.`, flags.yes, `restore cluster "${ctx.name}"`)
    const restored = await withSpinner(!this.jsonMode, `Restoring cluster "${ctx.name}"`, (s) => ctx.local
      ? restoreLocalCluster(ctx, args.file, b, (step) => s.text(`Restoring cluster "${ctx.name}": ${step}`))
      : restoreRemoteCluster(ctx, args.file, b, (host, step) => s.text(`Restoring cluster "${ctx.name}": ${host}: ${step}`)))
    const secretsRestored = passphrase !== undefined ? restoreSecrets(ctx, m, passphrase) : []
    const vdisks = await withSpinner(!this.jsonMode, 'Waiting for the cluster to answer', () => waitAnswering(client, ctx.name))
    return {
      file: args.file,
      clusterName: m.clusterName,
      clusterId: m.clusterId,
      takenAt: m.takenAt,
      revision: m.revision,
      nodes: restored.nodes.map((n) => ({ node: n.node, etcdMember: n.etcdMember, movedAside: n.movedAside })),
      idFloors: restored.floors,
      vdisks,
      backupVdisks: m.counts.vdisks,
      secretsRestored,
    }
  }

  protected render(r: ClusterRestoreResult): string {
    return keyValue([
      ['cluster', `${r.clusterName} (${r.clusterId})`],
      ['restored to', `${r.takenAt} (etcd revision ${r.revision})`],
      ...r.nodes.map((n): [string, string] => [n.node, n.etcdMember ? `etcd member rebuilt${n.movedAside !== null ? `; the lost data moved to ${n.movedAside}` : ''}` : 'restarted (no etcd member)']),
      ['vDisks', `${r.vdisks} (the backup held ${r.backupVdisks})`],
      ['id counters', `past egroup ${r.idFloors.egroup}, vDisk ${r.idFloors.vdisk}, disk ${r.idFloors.disk}, CSM ${r.idFloors.csm}`],
      ['secrets put back', r.secretsRestored.join(', ') || '-'],
    ])
  }
}

/** The number of vDisks, once the API answers with etcd healthy (the restored nodes start). */
async function waitAnswering(client: ApiClient, name: string): Promise<number> {
  const deadline = Date.now() + daemonStartTimeoutMs * 2
  for (;;) {
    try {
      const h = await client.get<HealthInfo>('/v1/health', { retryMs: 0, timeoutMs: 5000 })
      if (h.etcd) return (await client.get<VdiskInfo[]>('/v1/vdisks')).length
    } catch (e) {
      if (Date.now() > deadline) throw new TessError('TESS_E_TIMEOUT', `cluster "${name}" was restored but does not answer yet: ${e instanceof Error ? e.message : String(e)}`, 'see tess cluster status and the CVM logs')
    }
    await new Promise((r) => setTimeout(r, 500))
  }
}
