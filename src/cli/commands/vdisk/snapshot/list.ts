import { Args } from '@oclif/core'
import { TessCommand, watchFlag } from '../../../base.js'
import { table } from '../../../output.js'
import { checkName } from '../../../../lib/names.js'
import type { SnapshotInfo } from '../../../../lib/types.js'

export default class VdiskSnapshotList extends TessCommand<SnapshotInfo[]> {
  static override summary = 'List the snapshots of a vDisk, or of every vDisk'
  static override watchable = true
  static override flags = { watch: watchFlag }
  static override aliases = ['vdisk:snapshot:ls']
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> db1 --json']
  static override args = {
    vdisk: Args.string({ description: 'vDisk name (default: every vDisk).', required: false }),
  }

  protected async exec(): Promise<SnapshotInfo[]> {
    const { flags, args } = await this.parseInput(VdiskSnapshotList)
    if (args.vdisk !== undefined) checkName('vDisk', args.vdisk)
    const path = args.vdisk !== undefined ? `/v1/vdisks/${encodeURIComponent(args.vdisk)}/snapshots` : '/v1/snapshots'
    return this.client(this.context(flags.cluster)).get<SnapshotInfo[]>(path)
  }

  protected render(r: SnapshotInfo[]): string {
    if (r.length === 0) return 'No snapshots. Take one with: tess vdisk snapshot create VDISK SNAPSHOT'
    return table(['vdisk', 'snapshot', 'created', 'nbd uri (read-only)'], r.map((s) => [s.vdisk, s.name, s.createdAt, s.nbdUri]))
  }
}
