import { Args } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { renderVolume } from '../../render-csm.js'
import { checkName } from '../../../lib/names.js'
import type { VolumeInfo } from '../../../lib/csm-types.js'

export default class VolumeShow extends TessCommand<VolumeInfo> {
  static override summary = 'Show a volume: its vDisk, size, space written and attachments'
  static override examples = ['<%= config.bin %> <%= command.id %> data', '<%= config.bin %> <%= command.id %> data --json']
  static override args = {
    name: Args.string({ description: 'Volume name.', required: true }),
  }

  protected async exec(): Promise<VolumeInfo> {
    const { flags, args } = await this.parseInput(VolumeShow)
    checkName('volume', args.name)
    return this.client(this.context(flags.cluster)).get<VolumeInfo>(`/v1/volumes/${encodeURIComponent(args.name)}`)
  }

  protected render(v: VolumeInfo): string {
    return renderVolume(v)
  }
}
