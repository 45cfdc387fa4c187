import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { giveClusterKey } from '../../clusterkey.js'
import { renderVolume } from '../../render-csm.js'
import { checkName } from '../../../lib/names.js'
import { parseSize } from '../../../lib/units.js'
import { rfMax } from '../../../lib/limits.js'
import type { VolumeInfo } from '../../../lib/csm-types.js'

export default class VolumeCreate extends TessCommand<VolumeInfo> {
  static override summary = 'Create a volume: a vDisk for a container\'s persistent data'
  static override description = `A volume is a thin-provisioned vDisk (named vol-NAME) that gets an ext4 filesystem on its first read-write attach. Attach it with \`tess container run ... --volume NAME:/path[:ro]\`: read-write to one container at a time, read-only to any number. Its data lives in the storage pool (RF copies on RF nodes), so a container moved to another node finds it there.

SIZE accepts bytes or binary units (512M, 10G; at least 16M).

--encrypted encrypts its vDisk on the disks, as \`tess vdisk create --encrypted\` does (the same cluster key).`
  static override examples = [
    '<%= config.bin %> <%= command.id %> data --size 10G',
    { description: 'Two copies on two nodes', command: '<%= config.bin %> <%= command.id %> db --size 50G --rf 2 --json' },
    { description: 'Encrypted on the disks', command: '<%= config.bin %> <%= command.id %> secrets --size 1G --encrypted' },
  ]

  static override args = {
    name: Args.string({ description: 'Volume name: [a-z0-9][a-z0-9-]{0,58}.', required: true }),
  }

  static override flags = {
    size: Flags.string({ char: 's', description: 'Size, e.g. 512M, 10G (at least 16M).', required: true }),
    rf: Flags.integer({ description: `Replication factor: copies on distinct nodes (1..${rfMax}).`, default: 1 }),
    encrypted: Flags.boolean({ description: 'Encrypt its vDisk on the disks (AES-256-XTS, see tess vdisk create --encrypted).', default: false }),
  }

  protected async exec(): Promise<VolumeInfo> {
    const { flags, args } = await this.parseInput(VolumeCreate)
    checkName('volume', args.name)
    const sizeBytes = parseSize(flags.size, 'volume size')
    const ctx = this.context(flags.cluster)
    const client = this.client(ctx)
    if (flags.encrypted) await giveClusterKey(client, ctx)
    return client.post<VolumeInfo>('/v1/volumes', { name: args.name, sizeBytes, rf: flags.rf, ...(flags.encrypted ? { encrypted: true } : {}) })
  }

  protected render(v: VolumeInfo): string {
    return renderVolume(v)
  }
}
