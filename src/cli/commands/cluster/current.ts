import { TessCommand } from '../../base.js'
import { keyValue } from '../../output.js'
import { currentInfo, type ClusterCurrentInfo } from './use.js'

export default class ClusterCurrent extends TessCommand<ClusterCurrentInfo> {
  static override summary = 'Show the cluster context that commands use'
  static override description = 'The context named by --cluster or TESS_CLUSTER, else the current one (set by `tess cluster use` or the last `tess cluster create`). Fails with TESS_E_NO_CLUSTER (exit 3) when there is none.'
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json']

  protected async exec(): Promise<ClusterCurrentInfo> {
    const { flags } = await this.parseInput(ClusterCurrent)
    return currentInfo(this.context(flags.cluster))
  }

  protected render(r: ClusterCurrentInfo): string {
    return keyValue([['cluster', r.name], ['endpoints', r.endpoints.join(', ')], ['local', r.local]])
  }
}
