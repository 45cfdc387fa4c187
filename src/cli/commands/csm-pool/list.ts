import { TessCommand, watchFlag } from '../../base.js'
import { renderCsmPoolList } from '../../render-csm.js'
import type { CsmPoolInfo } from '../../../lib/csm-types.js'

export default class CsmPoolList extends TessCommand<CsmPoolInfo[]> {
  static override summary = 'List CSM pools and their member CSMs'
  static override watchable = true
  static override flags = { watch: watchFlag }
  static override description = 'A container run with `--pool NAME` goes to one of the member CSMs of that pool, picked by the scheduler.'
  static override aliases = ['csm-pool:ls']
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json']

  protected async exec(): Promise<CsmPoolInfo[]> {
    const { flags } = await this.parseInput(CsmPoolList)
    return this.client(this.context(flags.cluster)).get<CsmPoolInfo[]>('/v1/csm-pools')
  }

  protected render(r: CsmPoolInfo[]): string {
    return renderCsmPoolList(r)
  }
}
