import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { keyValue } from '../../output.js'
import { checkName } from '../../../lib/names.js'
import type { VolumeSnapshotInfo } from '../../../lib/csm-types.js'

export default class VolumeRestore extends TessCommand<VolumeSnapshotInfo> {
  static override summary = 'Roll a volume back to one of its snapshots'
  static override description = 'The volume gets the snapshot\'s filesystem back; what was written since is lost, unless another snapshot holds it. Every snapshot stays. Refused while a running container has the volume mounted: stop it first (its volume is unmounted while it is stopped), restore, and start it again. Asks first on a terminal; --yes skips the question.'
  static override examples = ['<%= config.bin %> <%= command.id %> data before-upgrade --yes', '<%= config.bin %> <%= command.id %> data nightly-1 --yes --json']
  static override args = {
    volume: Args.string({ description: 'Volume name.', required: true }),
    snapshot: Args.string({ description: 'Snapshot to roll back to.', required: true }),
  }

  static override flags = {
    yes: Flags.boolean({ char: 'y', description: 'Do not ask for confirmation.' }),
  }

  protected async exec(): Promise<VolumeSnapshotInfo> {
    const { flags, args } = await this.parseInput(VolumeRestore)
    checkName('volume', args.volume)
    checkName('snapshot', args.snapshot)
    await this.confirm(`Roll volume "${args.volume}" back to snapshot "${args.snapshot}"? What was written since is lost.`, flags.yes, `restore volume "${args.volume}"`)
    return this.client(this.context(flags.cluster)).post<VolumeSnapshotInfo>(`/v1/volumes/${encodeURIComponent(args.volume)}/restore`, { snapshot: args.snapshot })
  }

  protected render(s: VolumeSnapshotInfo): string {
    return keyValue([['restored volume', s.volume], ['to snapshot', `${s.name} (taken ${s.createdAt})`], ['extents changed', String(s.changedExtents ?? 0)]])
  }
}
