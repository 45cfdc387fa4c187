import { TessCommand, watchFlag } from '../../base.js'
import { renderVolumeList } from '../../render-csm.js'
import type { VolumeInfo } from '../../../lib/csm-types.js'

export default class VolumeList extends TessCommand<VolumeInfo[]> {
  static override summary = 'List volumes: size, space written, and the containers they are attached to'
  static override watchable = true
  static override flags = { watch: watchFlag }
  static override aliases = ['volume:ls']
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json']

  protected async exec(): Promise<VolumeInfo[]> {
    const { flags } = await this.parseInput(VolumeList)
    return this.client(this.context(flags.cluster)).get<VolumeInfo[]>('/v1/volumes')
  }

  protected render(list: VolumeInfo[]): string {
    return renderVolumeList(list)
  }
}
