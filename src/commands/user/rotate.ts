import { Args } from '@oclif/core'
import { TessCommand } from '../../cli/base.js'
import { keyValue } from '../../cli/output.js'
import { checkName } from '../../common/names.js'
import type { UserWithTokenInfo } from '../../common/user-types.js'

export default class UserRotate extends TessCommand<UserWithTokenInfo> {
  static override summary = 'Give a user a new token; the old one stops working'
  static override description = 'Every node refuses the old token within seconds, with no restart. The new token is printed once.'
  static override examples = ['<%= config.bin %> <%= command.id %> alice', '<%= config.bin %> <%= command.id %> ci --json']
  static override args = {
    name: Args.string({ description: 'User name.', required: true }),
  }

  protected async exec(): Promise<UserWithTokenInfo> {
    const { flags, args } = await this.parseInput(UserRotate)
    checkName('user', args.name)
    const u = await this.client(this.context(flags.cluster)).post<UserWithTokenInfo>(`/v1/users/${encodeURIComponent(args.name)}/rotate`, {})
    if (!this.jsonMode) process.stderr.write('Store the token now: it is not shown again.\n')
    return u
  }

  protected render(u: UserWithTokenInfo): string {
    return keyValue([['user', u.name], ['role', u.role], ['token', u.token], ['rotated', u.rotatedAt]])
  }
}
