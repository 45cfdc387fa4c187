import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { readPassphrase, writeBackup, type BackupResult } from '../../backup.js'
import { keyValue, withSpinner } from '../../output.js'
import { formatBytes } from '../../../lib/units.js'

export default class ClusterBackup extends TessCommand<BackupResult> {
  static override summary = 'Write a backup of the cluster\'s metadata to a file'
  static override description = 'The cluster\'s metadata lives in etcd: every vDisk\'s block map, the extent groups and their replicas, snapshots, volumes, CSMs, containers, users and settings. Losing etcd on every member loses every vDisk, although the data stays on the disks. This command has a CVM take a consistent etcd snapshot and writes it, with what a restore needs (the cluster id, the etcd members, nodes and disks, the CA certificate), to FILE with mode 0600: `tess cluster restore FILE` rebuilds the metadata from it. The data of vDisks is not in the file; it stays on the disks. The file holds no secret in the clear (registry passwords are sealed in etcd). --include-secrets adds the operator\'s secrets this machine holds for the cluster (CA key, credentials, the cluster key of encrypted vDisks), sealed with a passphrase read from --passphrase-file. Needs role admin.'
  static override examples = [
    '<%= config.bin %> <%= command.id %> /backup/tess-$(date +%F).tbk',
    '<%= config.bin %> <%= command.id %> /backup/prod.tbk --include-secrets --passphrase-file /root/backup.pass --force --json',
  ]

  static override args = {
    file: Args.string({ description: 'File to write (refused if it exists, unless --force).', required: true }),
  }

  static override flags = {
    force: Flags.boolean({ description: 'Replace FILE if it exists.' }),
    'include-secrets': Flags.boolean({ description: 'Add the operator\'s secrets of the cluster, sealed with the passphrase of --passphrase-file.' }),
    'passphrase-file': Flags.string({ description: 'File holding the passphrase (at least 12 characters) that seals the secrets.', dependsOn: ['include-secrets'] }),
  }

  protected async exec(): Promise<BackupResult> {
    const { flags, args } = await this.parseInput(ClusterBackup)
    const ctx = this.context(flags.cluster)
    const passphrase = flags['include-secrets'] ? readPassphrase(flags['passphrase-file']) : undefined
    return withSpinner(!this.jsonMode, `Backing up the metadata of cluster "${ctx.name}"`, () =>
      writeBackup(this.client(ctx), ctx, args.file, { overwrite: flags.force, ...(passphrase !== undefined ? { passphrase } : {}) }))
  }

  protected render(r: BackupResult): string {
    return keyValue([
      ['file', `${r.file} (${formatBytes(r.sizeBytes)})`],
      ['cluster', `${r.clusterName} (${r.clusterId})`],
      ['taken', `${r.takenAt} through ${r.takenFrom}, etcd revision ${r.revision}`],
      ['etcd members', r.etcdMembers.join(', ')],
      ['holds', `${r.counts.vdisks} vDisk(s), ${r.counts.snapshots} snapshot(s), ${r.counts.volumes} volume(s), ${r.counts.containers} container(s)`],
      ['secrets', r.secrets.length > 0 ? `sealed: ${r.secrets.join(', ')}` : 'none'],
    ])
  }
}
