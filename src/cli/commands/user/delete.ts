import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { keyValue } from '../../output.js'
import { checkName } from '../../../lib/names.js'
import type { UserInfo } from '../../../lib/user-types.js'

export default class UserDelete extends TessCommand<UserInfo> {
  static override summary = 'Delete a user; its token stops working'
  static override description = 'Every node refuses the token within seconds, with no restart. What the user did stays in the audit log. Asks first on a terminal; --yes skips the question.'
  static override aliases = ['user:rm']
  static override examples = ['<%= config.bin %> <%= command.id %> alice --yes', '<%= config.bin %> <%= command.id %> ci --yes --json']
  static override args = {
    name: Args.string({ description: 'User name.', required: true }),
  }

  static override flags = {
    yes: Flags.boolean({ char: 'y', description: 'Do not ask for confirmation.' }),
  }

  protected async exec(): Promise<UserInfo> {
    const { flags, args } = await this.parseInput(UserDelete)
    checkName('user', args.name)
    await this.confirm(`Delete user "${args.name}"? Its token stops working.`, flags.yes, `delete user "${args.name}"`)
    return this.client(this.context(flags.cluster)).delete<UserInfo>(`/v1/users/${encodeURIComponent(args.name)}`)
  }

  protected render(u: UserInfo): string {
    return keyValue([['deleted user', u.name], ['role', u.role]])
  }
}
