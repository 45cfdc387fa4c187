import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { splitNames } from '../../csm-input.js'
import { renderCsmPool } from '../../render-csm.js'
import { TessError } from '../../../lib/errors.js'
import { checkName } from '../../../lib/names.js'
import type { CsmPoolInfo } from '../../../lib/csm-types.js'

export default class CsmPoolRemove extends TessCommand<CsmPoolInfo> {
  static override summary = 'Remove CSMs from a CSM pool (the CSMs themselves stay)'
  static override description = 'Only the membership changes: the CSMs and their containers keep running; new containers run with `--pool NAME` no longer go to them. To delete the pool itself, use `tess csm-pool delete`.'
  static override examples = ['<%= config.bin %> <%= command.id %> web --csm web3', '<%= config.bin %> <%= command.id %> web --csm web3,web4 --json']
  static override args = {
    name: Args.string({ description: 'Pool name.', required: true }),
  }

  static override flags = {
    csm: Flags.string({ description: 'CSM(s) to take out of the pool: repeat the flag or separate names with ",".', multiple: true, multipleNonGreedy: true, required: true }),
  }

  protected async exec(): Promise<CsmPoolInfo> {
    const { flags, args } = await this.parseInput(CsmPoolRemove)
    checkName('CSM pool', args.name)
    const remove = splitNames(flags.csm, 'CSM', '--csm')
    if (remove.length === 0) throw new TessError('TESS_E_USAGE', 'no CSM to remove', 'give --csm NAME (repeat it or separate names with ",")')
    return this.client(this.context(flags.cluster)).patch<CsmPoolInfo>(`/v1/csm-pools/${encodeURIComponent(args.name)}`, { remove })
  }

  protected render(p: CsmPoolInfo): string {
    return renderCsmPool(p)
  }
}
