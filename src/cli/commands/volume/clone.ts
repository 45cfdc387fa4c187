import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { renderVolume } from '../../render-csm.js'
import { TessError } from '../../../lib/errors.js'
import { checkName } from '../../../lib/names.js'
import { rfMax } from '../../../lib/limits.js'
import type { VolumeInfo } from '../../../lib/csm-types.js'

export default class VolumeClone extends TessCommand<VolumeInfo> {
  static override summary = 'Make a new volume from a snapshot of another (copy-on-write)'
  static override description = 'SOURCE is VOLUME@SNAPSHOT, or VOLUME alone: a consistent snapshot of it named after the clone is taken first (its filesystem frozen for that instant if a container has it mounted, as `tess volume snapshot create` does). The new volume holds the snapshot\'s filesystem at once, whatever its size, and stores only what is written to it afterwards; it mounts in any container on any node (`tess container run --volume NEW:/path`). While the clone reads from the snapshot, the snapshot and the source volume cannot be deleted: `tess vdisk flatten vol-NEW` copies what the clone still reads from them and drops the reference. The clone of an encrypted volume is encrypted too, with a key of its own.'
  static override examples = ['<%= config.bin %> <%= command.id %> data@before-upgrade data-test', '<%= config.bin %> <%= command.id %> data data-copy --json']
  static override args = {
    source: Args.string({ description: 'VOLUME@SNAPSHOT, or VOLUME (a snapshot is taken first).', required: true }),
    name: Args.string({ description: 'Name of the new volume.', required: true }),
  }

  static override flags = {
    rf: Flags.integer({ description: `Replication factor of what the clone writes (1..${rfMax}; default: the source's).` }),
  }

  protected async exec(): Promise<VolumeInfo> {
    const { flags, args } = await this.parseInput(VolumeClone)
    const [volume, snapshot, ...rest] = args.source.split('@')
    if (rest.length > 0 || volume === undefined) throw new TessError('TESS_E_INVALID', `invalid source "${args.source}"`, 'give VOLUME@SNAPSHOT or VOLUME')
    checkName('volume', volume)
    if (snapshot !== undefined) checkName('snapshot', snapshot)
    checkName('volume', args.name)
    return this.client(this.context(flags.cluster)).post<VolumeInfo>(`/v1/volumes/${encodeURIComponent(volume)}/clones`, {
      name: args.name, ...(snapshot !== undefined ? { snapshot } : {}), ...(flags.rf !== undefined ? { rf: flags.rf } : {}),
    })
  }

  protected render(v: VolumeInfo): string {
    return renderVolume(v)
  }
}
