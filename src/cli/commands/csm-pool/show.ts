import { Args } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { renderCsmPool } from '../../render-csm.js'
import { checkName } from '../../../lib/names.js'
import type { CsmPoolInfo } from '../../../lib/csm-types.js'

export default class CsmPoolShow extends TessCommand<CsmPoolInfo> {
  static override summary = 'Show a CSM pool and its member CSMs'
  static override description = 'Use `tess csm-pool add` and `tess csm-pool remove` to change the members, `tess csm list` to see their state and free capacity.'
  static override examples = ['<%= config.bin %> <%= command.id %> web', '<%= config.bin %> <%= command.id %> web --json']
  static override args = {
    name: Args.string({ description: 'Pool name.', required: true }),
  }

  protected async exec(): Promise<CsmPoolInfo> {
    const { flags, args } = await this.parseInput(CsmPoolShow)
    checkName('CSM pool', args.name)
    return this.client(this.context(flags.cluster)).get<CsmPoolInfo>(`/v1/csm-pools/${encodeURIComponent(args.name)}`)
  }

  protected render(p: CsmPoolInfo): string {
    return renderCsmPool(p)
  }
}
