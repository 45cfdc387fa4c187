import { Args } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { saveContext } from '../../../lib/contexts.js'
import { keyValue } from '../../output.js'
import { checkName } from '../../../lib/names.js'
import type { UserWithTokenInfo } from '../../../lib/user-types.js'

export default class UserRotate extends TessCommand<UserWithTokenInfo> {
  static override summary = 'Give a user a new token; the old one stops working'
  static override description = 'Every node refuses the old token within seconds, with no restart. The new token is printed once. root is the bootstrap token that `tess cluster create` saved: rotating it stores root like any user in the cluster (the token in the nodes\' pki/api-token is refused from then on) and, unless TESS_TOKEN is set, saves the new token in the cluster context this command used.'
  static override examples = ['<%= config.bin %> <%= command.id %> alice', '<%= config.bin %> <%= command.id %> ci --json']
  static override args = {
    name: Args.string({ description: 'User name.', required: true }),
  }

  protected async exec(): Promise<UserWithTokenInfo> {
    const { flags, args } = await this.parseInput(UserRotate)
    checkName('user', args.name)
    const ctx = this.context(flags.cluster)
    const u = await this.client(ctx).post<UserWithTokenInfo>(`/v1/users/${encodeURIComponent(args.name)}/rotate`, {})
    const viaEnv = (process.env.TESS_TOKEN ?? '').trim() !== ''
    if (args.name === 'root' && !viaEnv) {
      // the context held root's old token: it would be refused from now on
      await saveContext({ ...ctx, token: u.token }, false)
      if (!this.jsonMode) process.stderr.write(`The cluster context "${ctx.name}" now holds root's new token.\n`)
    } else if (!this.jsonMode) {
      process.stderr.write('Store the token now: it is not shown again.\n')
    }
    return u
  }

  protected render(u: UserWithTokenInfo): string {
    return keyValue([['user', u.name], ['role', u.role], ['token', u.token], ['rotated', u.rotatedAt]])
  }
}
