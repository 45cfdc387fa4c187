import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { splitNames } from '../../csm-input.js'
import { renderCsmPool } from '../../render-csm.js'
import { TessError } from '../../../lib/errors.js'
import { checkName } from '../../../lib/names.js'
import type { CsmPoolInfo } from '../../../lib/csm-types.js'

export default class CsmPoolCreate extends TessCommand<CsmPoolInfo> {
  static override summary = 'Create a CSM pool: a named set of CSMs that containers are deployed into'
  static override description = 'A container run with `--pool NAME` goes to one of the pool\'s CSMs, picked by the scheduler. A CSM may belong to several pools. Give the members with --csm, repeated or comma-separated.'
  static override examples = [
    '<%= config.bin %> <%= command.id %> web --csm web1,web2',
    '<%= config.bin %> <%= command.id %> batch --csm b1 --csm b2 --csm b3 --json',
  ]

  static override args = {
    name: Args.string({ description: 'Pool name: [a-z0-9][a-z0-9-]{0,62}.', required: true }),
  }

  static override flags = {
    csm: Flags.string({ description: 'Member CSM(s): repeat the flag or separate names with ",".', multiple: true, multipleNonGreedy: true, required: true }),
  }

  protected async exec(): Promise<CsmPoolInfo> {
    const { flags, args } = await this.parseInput(CsmPoolCreate)
    checkName('CSM pool', args.name)
    const csms = splitNames(flags.csm, 'CSM', '--csm')
    if (csms.length === 0) throw new TessError('TESS_E_USAGE', `CSM pool "${args.name}" needs at least one CSM`, 'give --csm NAME (repeat it or separate names with ",")')
    return this.client(this.context(flags.cluster)).post<CsmPoolInfo>('/v1/csm-pools', { name: args.name, csms })
  }

  protected render(p: CsmPoolInfo): string {
    return renderCsmPool(p)
  }
}
