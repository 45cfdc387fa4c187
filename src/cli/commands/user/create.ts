import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { keyValue } from '../../output.js'
import { checkName } from '../../../lib/names.js'
import type { UserWithTokenInfo } from '../../../lib/user-types.js'

export default class UserCreate extends TessCommand<UserWithTokenInfo> {
  static override summary = 'Create a user with a role and print its token'
  static override description = `Roles: viewer reads everything; operator also runs and changes workloads and vDisks (containers, CSMs and their pools, images, volumes, vDisks); admin also manages hosts, disks, registries, NBD credentials and users. The token is printed once and kept nowhere in the cluster (only its SHA-256): hand it to the user, who sets TESS_TOKEN to it (with a copy of the cluster context, or on a machine where the cluster is known). The name root is the cluster's bootstrap token and cannot be taken.`
  static override examples = [
    '<%= config.bin %> <%= command.id %> alice --role operator',
    '<%= config.bin %> <%= command.id %> ci --role viewer --json',
    'TESS_TOKEN=tess_... <%= config.bin %> vdisk list',
  ]
  static override args = {
    name: Args.string({ description: 'User name.', required: true }),
  }

  static override flags = {
    role: Flags.option({ options: ['viewer', 'operator', 'admin'] as const, description: 'What the user may do.', required: true })(),
  }

  protected async exec(): Promise<UserWithTokenInfo> {
    const { flags, args } = await this.parseInput(UserCreate)
    checkName('user', args.name)
    const u = await this.client(this.context(flags.cluster)).post<UserWithTokenInfo>('/v1/users', { name: args.name, role: flags.role })
    if (!this.jsonMode) process.stderr.write('Store the token now: it is not shown again (tess user rotate makes a new one).\n')
    return u
  }

  protected render(u: UserWithTokenInfo): string {
    return keyValue([['user', u.name], ['role', u.role], ['token', u.token], ['created', u.createdAt]])
  }
}
