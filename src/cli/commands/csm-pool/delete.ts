import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { keyValue } from '../../output.js'
import { checkName } from '../../../lib/names.js'
import type { CsmPoolInfo } from '../../../lib/csm-types.js'

export default class CsmPoolDelete extends TessCommand<CsmPoolInfo> {
  static override summary = 'Delete a CSM pool (its CSMs and containers stay)'
  static override description = 'Only the pool goes: its member CSMs and their containers keep running. Asks first on a terminal; --yes skips the question.'
  static override aliases = ['csm-pool:rm']
  static override examples = ['<%= config.bin %> <%= command.id %> web --yes', '<%= config.bin %> <%= command.id %> web --yes --json']
  static override args = {
    name: Args.string({ description: 'Pool name.', required: true }),
  }

  static override flags = {
    yes: Flags.boolean({ char: 'y', description: 'Do not ask for confirmation.' }),
  }

  protected async exec(): Promise<CsmPoolInfo> {
    const { flags, args } = await this.parseInput(CsmPoolDelete)
    checkName('CSM pool', args.name)
    const client = this.client(this.context(flags.cluster))
    const path = `/v1/csm-pools/${encodeURIComponent(args.name)}`
    if (!flags.yes) {
      const p = await client.get<CsmPoolInfo>(path)
      await this.confirm(`Delete CSM pool "${p.name}" (members: ${p.csms.join(', ') || 'none'}; they stay)?`, flags.yes, `delete CSM pool "${p.name}"`)
    }
    return client.delete<CsmPoolInfo>(path)
  }

  protected render(p: CsmPoolInfo): string {
    return keyValue([['deleted CSM pool', p.name], ['members (kept)', p.csms.join(', ') || '-']])
  }
}
