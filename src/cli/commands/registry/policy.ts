import { TessCommand } from '../../base.js'
import { policyPatternHelp } from '../../csm-input.js'
import { renderPolicy } from '../../render-csm.js'
import type { RegistryPolicyInfo } from '../../../lib/csm-types.js'

export default class RegistryPolicy extends TessCommand<RegistryPolicyInfo> {
  static override summary = 'Show the image pull policy: the allow and deny rules'
  static override description = `Rules are added and removed with \`tess registry allow\` and \`tess registry deny\`. With no rule at all, any image may be pulled.

${policyPatternHelp}`
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json']

  protected async exec(): Promise<RegistryPolicyInfo> {
    const { flags } = await this.parseInput(RegistryPolicy)
    return this.client(this.context(flags.cluster)).get<RegistryPolicyInfo>('/v1/registry-policy')
  }

  protected render(p: RegistryPolicyInfo): string {
    return renderPolicy(p)
  }
}
