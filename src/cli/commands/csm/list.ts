import { TessCommand, watchFlag } from '../../base.js'
import { renderCsmList } from '../../render-csm.js'
import type { CsmInfo } from '../../../lib/csm-types.js'

export default class CsmList extends TessCommand<CsmInfo[]> {
  static override summary = 'List CSMs with their node, state, size and what their containers reserve'
  static override watchable = true
  static override flags = { watch: watchFlag }
  static override description = 'RESERVED is what the containers of a CSM ask for together (their --cpus and --memory), out of the CSM\'s CPUS and MEMORY.'
  static override aliases = ['csm:ls']
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json']

  protected async exec(): Promise<CsmInfo[]> {
    const { flags } = await this.parseInput(CsmList)
    return this.client(this.context(flags.cluster)).get<CsmInfo[]>('/v1/csms')
  }

  protected render(r: CsmInfo[]): string {
    return renderCsmList(r)
  }
}
