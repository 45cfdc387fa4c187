import { TessCommand, watchFlag } from '../../base.js'
import { renderRegistryList } from '../../render-csm.js'
import type { RegistryInfo } from '../../../lib/csm-types.js'

export default class RegistryList extends TessCommand<RegistryInfo[]> {
  static override summary = 'List the image registries the cluster knows'
  static override watchable = true
  static override flags = { watch: watchFlag }
  static override description = 'CREDENTIALS shows the user name and whether a password is stored; passwords are never shown.'
  static override aliases = ['registry:ls']
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json']

  protected async exec(): Promise<RegistryInfo[]> {
    const { flags } = await this.parseInput(RegistryList)
    return this.client(this.context(flags.cluster)).get<RegistryInfo[]>('/v1/registries')
  }

  protected render(r: RegistryInfo[]): string {
    return renderRegistryList(r)
  }
}
