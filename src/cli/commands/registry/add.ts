import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { checkUsername, parseRegistryUrl, readPassword } from '../../csm-input.js'
import { renderRegistry } from '../../render-csm.js'
import { TessError } from '../../../lib/errors.js'
import { checkName } from '../../../lib/names.js'
import type { RegistryInfo } from '../../../lib/csm-types.js'

export default class RegistryAdd extends TessCommand<RegistryInfo> {
  static override summary = 'Add an image registry the cluster may pull from'
  static override description = `URL is the scheme and host with an optional port, nothing else: https://registry.example.com or http://127.0.0.1:5000. A plain http:// registry needs --insecure (images and credentials then travel unencrypted); --insecure with https:// skips verifying its certificate.

Images whose reference names the registry's host[:port] are pulled with these settings. For a registry that asks for credentials, give --username and pipe the password in with --password-stdin (one trailing newline is removed). The password is stored in the cluster and never shown: \`tess registry list\` only says whether one is stored.`
  static override examples = [
    '<%= config.bin %> <%= command.id %> hub https://registry.example.com',
    '<%= config.bin %> <%= command.id %> local http://127.0.0.1:5000 --insecure',
    { description: 'With credentials, the password read from stdin', command: 'printf %s "$REGISTRY_PASSWORD" | <%= config.bin %> <%= command.id %> corp https://registry.corp.example --username ci --password-stdin' },
  ]

  static override args = {
    // ignoreStdin: oclif would otherwise read a missing argument from stdin, where the password is.
    name: Args.string({ description: 'Registry name: [a-z0-9][a-z0-9-]{0,62}.', required: true, ignoreStdin: true }),
    url: Args.string({ description: 'http(s)://host[:port] of the registry.', required: true, ignoreStdin: true }),
  }

  static override flags = {
    insecure: Flags.boolean({ description: 'Allow plain http://, or https:// without verifying the certificate.', default: false }),
    username: Flags.string({ description: 'User name for the registry (needs --password-stdin).' }),
    'password-stdin': Flags.boolean({ description: 'Read the password from stdin (needs --username).' }),
  }

  protected async exec(): Promise<RegistryInfo> {
    const { flags, args } = await this.parseInput(RegistryAdd)
    checkName('registry', args.name)
    if (flags.username !== undefined && !flags['password-stdin']) {
      throw new TessError('TESS_E_USAGE', '--username needs --password-stdin', 'pipe the password in: `printf %s "$PW" | tess registry add NAME URL --username U --password-stdin`')
    }
    if (flags['password-stdin'] && flags.username === undefined) {
      throw new TessError('TESS_E_USAGE', '--password-stdin needs --username', 'give the user name with --username')
    }
    if (flags.username !== undefined) checkUsername(flags.username)
    const { url } = parseRegistryUrl(args.url, flags.insecure)
    let password: string | undefined
    if (flags['password-stdin']) {
      if (process.stdin.isTTY) process.stderr.write('Reading the password from stdin (end it with Ctrl-D)...\n')
      password = await readPassword(process.stdin)
    }
    const ctx = this.context(flags.cluster)
    return this.client(ctx).post<RegistryInfo>('/v1/registries', {
      name: args.name,
      url,
      insecure: flags.insecure,
      ...(flags.username !== undefined ? { username: flags.username, password } : {}),
    })
  }

  protected render(r: RegistryInfo): string {
    return renderRegistry(r)
  }
}
