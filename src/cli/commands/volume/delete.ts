import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { keyValue } from '../../output.js'
import { checkName } from '../../../lib/names.js'
import { formatBytes } from '../../../lib/units.js'
import type { VolumeInfo } from '../../../lib/csm-types.js'

export default class VolumeDelete extends TessCommand<VolumeInfo> {
  static override summary = 'Delete a volume and all its data'
  static override description = 'Refused while the volume is attached to a container (remove the container first). Asks first on a terminal; --yes skips the question.'
  static override aliases = ['volume:rm']
  static override examples = ['<%= config.bin %> <%= command.id %> data --yes', '<%= config.bin %> <%= command.id %> data --yes --json']
  static override args = {
    name: Args.string({ description: 'Volume name.', required: true }),
  }

  static override flags = {
    yes: Flags.boolean({ char: 'y', description: 'Do not ask for confirmation.' }),
  }

  protected async exec(): Promise<VolumeInfo> {
    const { flags, args } = await this.parseInput(VolumeDelete)
    checkName('volume', args.name)
    const client = this.client(this.context(flags.cluster))
    const v = await client.get<VolumeInfo>(`/v1/volumes/${encodeURIComponent(args.name)}`)
    await this.confirm(`Delete volume "${v.name}" (${formatBytes(v.sizeBytes)}, ${formatBytes(v.allocatedBytes)} written) and all its data?`, flags.yes, `delete volume "${v.name}"`)
    return client.delete<VolumeInfo>(`/v1/volumes/${encodeURIComponent(args.name)}`)
  }

  protected render(v: VolumeInfo): string {
    return keyValue([['deleted volume', v.name], ['vdisk', v.vdisk], ['freed', formatBytes(v.allocatedBytes)]])
  }
}
