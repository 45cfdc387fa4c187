import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../../base.js'
import { keyValue } from '../../../output.js'
import { checkName } from '../../../../lib/names.js'
import type { VolumeSnapshotInfo } from '../../../../lib/csm-types.js'

export default class VolumeSnapshotDelete extends TessCommand<VolumeSnapshotInfo> {
  static override summary = 'Delete a snapshot of a volume and free the space only it kept'
  static override description = 'The volume and its other snapshots do not change. Refused while a cloned volume reads from the snapshot (delete or flatten the clone first: `tess vdisk flatten vol-CLONE`). Asks first on a terminal; --yes skips the question.'
  static override aliases = ['volume:snapshot:rm']
  static override examples = ['<%= config.bin %> <%= command.id %> data before-upgrade --yes', '<%= config.bin %> <%= command.id %> data nightly-1 --yes --json']
  static override args = {
    volume: Args.string({ description: 'Volume name.', required: true }),
    snapshot: Args.string({ description: 'Snapshot name.', required: true }),
  }

  static override flags = {
    yes: Flags.boolean({ char: 'y', description: 'Do not ask for confirmation.' }),
  }

  protected async exec(): Promise<VolumeSnapshotInfo> {
    const { flags, args } = await this.parseInput(VolumeSnapshotDelete)
    checkName('volume', args.volume)
    checkName('snapshot', args.snapshot)
    await this.confirm(`Delete snapshot "${args.volume}@${args.snapshot}"?`, flags.yes, `delete snapshot "${args.volume}@${args.snapshot}"`)
    return this.client(this.context(flags.cluster)).delete<VolumeSnapshotInfo>(`/v1/volumes/${encodeURIComponent(args.volume)}/snapshots/${encodeURIComponent(args.snapshot)}`)
  }

  protected render(s: VolumeSnapshotInfo): string {
    return keyValue([['deleted snapshot', `${s.volume}@${s.name}`], ['taken', s.createdAt]])
  }
}
