import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { splitNames } from '../../csm-input.js'
import { renderCsmPool } from '../../render-csm.js'
import { TessError } from '../../../lib/errors.js'
import { checkName } from '../../../lib/names.js'
import type { CsmPoolInfo } from '../../../lib/csm-types.js'

export default class CsmPoolAdd extends TessCommand<CsmPoolInfo> {
  static override summary = 'Add CSMs to a CSM pool'
  static override description = 'Containers already running stay where they are; new containers run with `--pool NAME` may go to the added CSMs.'
  static override examples = ['<%= config.bin %> <%= command.id %> web --csm web3', '<%= config.bin %> <%= command.id %> web --csm web3,web4 --json']
  static override args = {
    name: Args.string({ description: 'Pool name.', required: true }),
  }

  static override flags = {
    csm: Flags.string({ description: 'CSM(s) to add: repeat the flag or separate names with ",".', multiple: true, multipleNonGreedy: true, required: true }),
  }

  protected async exec(): Promise<CsmPoolInfo> {
    const { flags, args } = await this.parseInput(CsmPoolAdd)
    checkName('CSM pool', args.name)
    const add = splitNames(flags.csm, 'CSM', '--csm')
    if (add.length === 0) throw new TessError('TESS_E_USAGE', 'no CSM to add', 'give --csm NAME (repeat it or separate names with ",")')
    return this.client(this.context(flags.cluster)).patch<CsmPoolInfo>(`/v1/csm-pools/${encodeURIComponent(args.name)}`, { add })
  }

  protected render(p: CsmPoolInfo): string {
    return renderCsmPool(p)
  }
}
