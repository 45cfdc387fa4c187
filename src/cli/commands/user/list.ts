import { TessCommand, watchFlag } from '../../base.js'
import { table } from '../../output.js'
import { formatAge } from '../../csm-input.js'
import type { UserInfo } from '../../../lib/user-types.js'

export default class UserList extends TessCommand<UserInfo[]> {
  static override summary = 'List the users and their roles'
  static override watchable = true
  static override flags = { watch: watchFlag }
  static override description = 'Tokens are never shown (the cluster keeps only their SHA-256). The bootstrap token saved by `tess cluster create` is user root (admin); it is listed once it was rotated (`tess user rotate root`).'
  static override aliases = ['user:ls']
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json']

  protected async exec(): Promise<UserInfo[]> {
    const { flags } = await this.parseInput(UserList)
    return this.client(this.context(flags.cluster)).get<UserInfo[]>('/v1/users')
  }

  protected render(us: UserInfo[]): string {
    if (us.length === 0) return 'No users (the bootstrap token is user root). Create one with: tess user create NAME --role viewer|operator|admin'
    return table(['NAME', 'ROLE', 'CREATED', 'TOKEN ROTATED'], us.map((u) => [u.name, u.role, formatAge(u.createdAt), formatAge(u.rotatedAt)]))
  }
}
