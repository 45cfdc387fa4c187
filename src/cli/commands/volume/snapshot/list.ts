import { Args } from '@oclif/core'
import { TessCommand, watchFlag } from '../../../base.js'
import { table } from '../../../output.js'
import { checkName } from '../../../../lib/names.js'
import type { VolumeSnapshotInfo } from '../../../../lib/csm-types.js'

export default class VolumeSnapshotList extends TessCommand<VolumeSnapshotInfo[]> {
  static override summary = 'List the snapshots of a volume, or of every volume'
  static override watchable = true
  static override flags = { watch: watchFlag }
  static override aliases = ['volume:snapshot:ls']
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> data --json']
  static override args = {
    volume: Args.string({ description: 'Volume name (default: every volume).', required: false }),
  }

  protected async exec(): Promise<VolumeSnapshotInfo[]> {
    const { flags, args } = await this.parseInput(VolumeSnapshotList)
    if (args.volume !== undefined) checkName('volume', args.volume)
    const path = args.volume !== undefined ? `/v1/volumes/${encodeURIComponent(args.volume)}/snapshots` : '/v1/volume-snapshots'
    return this.client(this.context(flags.cluster)).get<VolumeSnapshotInfo[]>(path)
  }

  protected render(r: VolumeSnapshotInfo[]): string {
    if (r.length === 0) return 'No volume snapshots. Take one with: tess volume snapshot create VOLUME SNAPSHOT'
    return table(['volume', 'snapshot', 'created', 'vdisk snapshot'], r.map((s) => [s.volume, s.name, s.createdAt, `${s.vdisk}@${s.name}`]))
  }
}
