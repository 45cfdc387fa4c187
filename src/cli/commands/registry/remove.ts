import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { keyValue } from '../../output.js'
import { checkName } from '../../../lib/names.js'
import type { RegistryInfo } from '../../../lib/csm-types.js'

export default class RegistryRemove extends TessCommand<RegistryInfo> {
  static override summary = 'Remove an image registry and its stored credentials'
  static override description = 'Images already pulled from it stay on the nodes; new pulls from its host use no credentials and the default (https) settings. Asks first on a terminal; --yes skips the question.'
  static override aliases = ['registry:rm']
  static override examples = ['<%= config.bin %> <%= command.id %> corp --yes', '<%= config.bin %> <%= command.id %> corp --yes --json']
  static override args = {
    name: Args.string({ description: 'Registry name.', required: true }),
  }

  static override flags = {
    yes: Flags.boolean({ char: 'y', description: 'Do not ask for confirmation.' }),
  }

  protected async exec(): Promise<RegistryInfo> {
    const { flags, args } = await this.parseInput(RegistryRemove)
    checkName('registry', args.name)
    await this.confirm(`Remove registry "${args.name}" and its stored credentials?`, flags.yes, `remove registry "${args.name}"`)
    return this.client(this.context(flags.cluster)).delete<RegistryInfo>(`/v1/registries/${encodeURIComponent(args.name)}`)
  }

  protected render(r: RegistryInfo): string {
    return keyValue([['removed registry', r.name], ['url', r.url]])
  }
}
