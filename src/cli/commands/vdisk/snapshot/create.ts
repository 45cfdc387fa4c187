import { Args } from '@oclif/core'
import { TessCommand } from '../../../base.js'
import { keyValue } from '../../../output.js'
import { checkName } from '../../../../lib/names.js'
import type { SnapshotInfo } from '../../../../lib/types.js'

export default class VdiskSnapshotCreate extends TessCommand<SnapshotInfo> {
  static override summary = 'Take a snapshot of a vDisk: read-only, crash-consistent, in metadata only'
  static override description = 'The snapshot holds every write completed before the command; writes pause only while it is taken (one flush and one etcd transaction, whatever the size of the vDisk). From then on, the first write to each 1 MiB extent the snapshot sees copies that extent (copy-on-write), so the snapshot never changes. It is readable over NBD as the read-only export VDISK@SNAPSHOT (see `tess vdisk credentials` for the TLS client certificate).'
  static override examples = ['<%= config.bin %> <%= command.id %> db1 before-upgrade', '<%= config.bin %> <%= command.id %> db1 nightly-1 --json']
  static override args = {
    vdisk: Args.string({ description: 'vDisk name.', required: true }),
    snapshot: Args.string({ description: 'Snapshot name (unique per vDisk).', required: true }),
  }

  protected async exec(): Promise<SnapshotInfo> {
    const { flags, args } = await this.parseInput(VdiskSnapshotCreate)
    checkName('vDisk', args.vdisk)
    checkName('snapshot', args.snapshot)
    return this.client(this.context(flags.cluster)).post<SnapshotInfo>(`/v1/vdisks/${encodeURIComponent(args.vdisk)}/snapshots`, { name: args.snapshot })
  }

  protected render(s: SnapshotInfo): string {
    return keyValue([['snapshot', `${s.vdisk}@${s.name}`], ['created', s.createdAt], ['nbd uri (read-only)', s.nbdUri]])
  }
}
