import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { checkPolicyPattern, policyPatternHelp } from '../../csm-input.js'
import { renderPolicy } from '../../render-csm.js'
import type { RegistryPolicyInfo } from '../../../lib/csm-types.js'

export default class RegistryAllow extends TessCommand<RegistryPolicyInfo> {
  static override summary = 'Allow pulling images that match a pattern'
  static override description = `Adds an allow rule to the image pull policy (--remove takes it out again) and prints the whole policy. Once any allow rule exists, only images matching an allow rule (and no deny rule) may be pulled. The policy is checked on every pull, and on every \`tess container run\`, also when the image was pulled before the rule existed (refused with TESS_E_FORBIDDEN).

${policyPatternHelp}`
  static override examples = [
    "<%= config.bin %> <%= command.id %> '127.0.0.1:5000/team/**'",
    "<%= config.bin %> <%= command.id %> 'registry.example.com/base/alpine:3.20'",
    "<%= config.bin %> <%= command.id %> '127.0.0.1:5000/team/**' --remove --json",
  ]

  static override args = {
    pattern: Args.string({ description: 'host[:port]/repository[:tag] glob (* within a segment, ** across), or @sha256:<64 hex>.', required: true }),
  }

  static override flags = {
    remove: Flags.boolean({ description: 'Remove this allow rule instead of adding it.', default: false }),
  }

  protected async exec(): Promise<RegistryPolicyInfo> {
    const { flags, args } = await this.parseInput(RegistryAllow)
    const pattern = checkPolicyPattern(args.pattern)
    return this.client(this.context(flags.cluster)).post<RegistryPolicyInfo>('/v1/registry-policy', { kind: 'allow', pattern, remove: flags.remove })
  }

  protected render(p: RegistryPolicyInfo): string {
    return renderPolicy(p)
  }
}
