import { Args } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { useContext, type ClusterContext } from '../../../lib/contexts.js'
import { keyValue } from '../../output.js'

export interface ClusterCurrentInfo {
  name: string
  endpoints: string[]
  local: boolean
}

/** What `cluster use` and `cluster current` show of a context (never its credentials). */
export function currentInfo(ctx: ClusterContext): ClusterCurrentInfo {
  return { name: ctx.name, endpoints: ctx.endpoints, local: ctx.local !== undefined }
}

export default class ClusterUse extends TessCommand<ClusterCurrentInfo> {
  static override summary = 'Make a saved cluster context the current one'
  static override description = 'Commands use the current context unless --cluster or TESS_CLUSTER names another. `tess cluster list` marks the current one; `tess cluster current` shows it.'
  static override examples = ['<%= config.bin %> <%= command.id %> prod', '<%= config.bin %> <%= command.id %> lab --json']
  static override args = {
    name: Args.string({ description: 'Name of a saved cluster context (see `tess cluster list`).', required: true }),
  }

  protected async exec(): Promise<ClusterCurrentInfo> {
    const { args } = await this.parseInput(ClusterUse)
    return currentInfo(await useContext(args.name))
  }

  protected render(r: ClusterCurrentInfo): string {
    return keyValue([['current cluster', r.name], ['endpoints', r.endpoints.join(', ')], ['local', r.local]])
  }
}
