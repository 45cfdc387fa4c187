import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { checkPolicyPattern, policyPatternHelp } from '../../csm-input.js'
import { renderPolicy } from '../../render-csm.js'
import type { RegistryPolicyInfo } from '../../../lib/csm-types.js'

export default class RegistryDeny extends TessCommand<RegistryPolicyInfo> {
  static override summary = 'Refuse pulling images that match a pattern'
  static override description = `Adds a deny rule to the image pull policy (--remove takes it out again) and prints the whole policy. Deny rules win over allow rules: an image matching a deny rule is refused even if an allow rule matches it. The policy is checked on every pull, and on every \`tess container run\`, also when the image was pulled before the rule existed (refused with TESS_E_FORBIDDEN).

${policyPatternHelp}`
  static override examples = [
    "<%= config.bin %> <%= command.id %> 'registry.example.com/untrusted/**'",
    "<%= config.bin %> <%= command.id %> '@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef'",
    "<%= config.bin %> <%= command.id %> 'registry.example.com/untrusted/**' --remove --json",
  ]

  static override args = {
    pattern: Args.string({ description: 'host[:port]/repository[:tag] glob (* within a segment, ** across), or @sha256:<64 hex>.', required: true }),
  }

  static override flags = {
    remove: Flags.boolean({ description: 'Remove this deny rule instead of adding it.', default: false }),
  }

  protected async exec(): Promise<RegistryPolicyInfo> {
    const { flags, args } = await this.parseInput(RegistryDeny)
    const pattern = checkPolicyPattern(args.pattern)
    return this.client(this.context(flags.cluster)).post<RegistryPolicyInfo>('/v1/registry-policy', { kind: 'deny', pattern, remove: flags.remove })
  }

  protected render(p: RegistryPolicyInfo): string {
    return renderPolicy(p)
  }
}
