import { Args } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { renderCsm } from '../../render-csm.js'
import { checkName } from '../../../lib/names.js'
import type { CsmInfo } from '../../../lib/csm-types.js'

export default class CsmShow extends TessCommand<CsmInfo> {
  static override summary = 'Show a CSM: node, state, CPUs, memory, runtime and reservations'
  static override description = 'STATE is running when the CSM daemon answers, starting until it does, and down when its node or daemon is down. RESERVED is what its containers ask for together, out of its CPUs and memory.'
  static override examples = ['<%= config.bin %> <%= command.id %> web', '<%= config.bin %> <%= command.id %> web --json']
  static override args = {
    name: Args.string({ description: 'CSM name.', required: true }),
  }

  protected async exec(): Promise<CsmInfo> {
    const { flags, args } = await this.parseInput(CsmShow)
    checkName('CSM', args.name)
    return this.client(this.context(flags.cluster)).get<CsmInfo>(`/v1/csms/${encodeURIComponent(args.name)}`)
  }

  protected render(c: CsmInfo): string {
    return renderCsm(c)
  }
}
