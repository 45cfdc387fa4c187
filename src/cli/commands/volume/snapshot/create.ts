import { Args } from '@oclif/core'
import { TessCommand } from '../../../base.js'
import { keyValue } from '../../../output.js'
import { checkName } from '../../../../lib/names.js'
import type { VolumeSnapshotInfo } from '../../../../lib/csm-types.js'

export default class VolumeSnapshotCreate extends TessCommand<VolumeSnapshotInfo> {
  static override summary = 'Take a consistent snapshot of a volume, even while a container writes to it'
  static override description = 'When a running container has the volume mounted read-write, its CSM freezes the filesystem (fsfreeze: everything the container wrote before, even what was only in the page cache, is written to the volume, and new writes wait), the snapshot of the volume\'s vDisk is taken (in metadata only, well under a second), and the filesystem is thawed. The snapshot is a clean ext4 filesystem: `tess volume clone` mounts it in another container. Refused, with nothing taken, when the container\'s node cannot freeze it. A volume that no container has mounted is snapshotted as it is.'
  static override examples = ['<%= config.bin %> <%= command.id %> data before-upgrade', '<%= config.bin %> <%= command.id %> data nightly-1 --json']
  static override args = {
    volume: Args.string({ description: 'Volume name.', required: true }),
    snapshot: Args.string({ description: 'Snapshot name (unique per volume).', required: true }),
  }

  protected async exec(): Promise<VolumeSnapshotInfo> {
    const { flags, args } = await this.parseInput(VolumeSnapshotCreate)
    checkName('volume', args.volume)
    checkName('snapshot', args.snapshot)
    return this.client(this.context(flags.cluster)).post<VolumeSnapshotInfo>(`/v1/volumes/${encodeURIComponent(args.volume)}/snapshots`, { name: args.snapshot })
  }

  protected render(s: VolumeSnapshotInfo): string {
    const frozen = s.frozen === undefined || s.frozen === null ? 'no (not mounted read-write by a running container)' : `yes, in container ${s.frozen.container} on ${s.frozen.node}`
    return keyValue([['snapshot', `${s.volume}@${s.name}`], ['vdisk', `${s.vdisk}@${s.name}`], ['filesystem frozen', frozen], ['created', s.createdAt]])
  }
}
