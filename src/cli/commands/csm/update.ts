import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { parseCpus, parseMemory } from '../../csm-input.js'
import { renderCsm } from '../../render-csm.js'
import { TessError } from '../../../lib/errors.js'
import { checkName } from '../../../lib/names.js'
import type { CsmInfo } from '../../../lib/csm-types.js'

export default class CsmUpdate extends TessCommand<CsmInfo> {
  static override summary = 'Change the CPUs or memory of a CSM'
  static override description = 'Give --cpus, --memory or both. The new size must still hold what its containers reserve together (see RESERVED in `tess csm list`).'
  static override examples = [
    '<%= config.bin %> <%= command.id %> web --cpus 4',
    '<%= config.bin %> <%= command.id %> web --memory 4G',
    '<%= config.bin %> <%= command.id %> web --cpus 1.5 --memory 3G --json',
  ]

  static override args = {
    name: Args.string({ description: 'CSM name.', required: true }),
  }

  static override flags = {
    cpus: Flags.string({ description: 'New CPU count: a number more than 0, fractions allowed.' }),
    memory: Flags.string({ char: 'm', description: 'New memory size, e.g. 4G.' }),
  }

  protected async exec(): Promise<CsmInfo> {
    const { flags, args } = await this.parseInput(CsmUpdate)
    checkName('CSM', args.name)
    if (flags.cpus === undefined && flags.memory === undefined) {
      throw new TessError('TESS_E_USAGE', `nothing to change on CSM "${args.name}"`, 'give --cpus, --memory or both')
    }
    const body = {
      ...(flags.cpus !== undefined ? { cpus: parseCpus(flags.cpus) } : {}),
      ...(flags.memory !== undefined ? { memoryBytes: parseMemory(flags.memory) } : {}),
    }
    return this.client(this.context(flags.cluster)).patch<CsmInfo>(`/v1/csms/${encodeURIComponent(args.name)}`, body)
  }

  protected render(c: CsmInfo): string {
    return renderCsm(c)
  }
}
