import { Args } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { withSpinner } from '../../output.js'
import { renderVdisk } from '../../render.js'
import { vdiskFlattenTimeoutMs } from '../../../lib/limits.js'
import { checkName } from '../../../lib/names.js'
import type { VdiskInfo } from '../../../lib/types.js'

export default class VdiskFlatten extends TessCommand<VdiskInfo> {
  static override summary = 'Copy into a clone what it still reads from its parents, and drop the reference'
  static override description = 'Every 1 MiB extent the clone has not written itself and that holds data in its parent snapshot (or further up the chain) is copied into the clone; then the clone stands alone, and its parent snapshot and vDisk may be deleted. Clients may keep using the clone meanwhile. Takes a while for a large clone: the copy runs at the disks\' speed.'
  static override examples = ['<%= config.bin %> <%= command.id %> web-1', '<%= config.bin %> <%= command.id %> db1-test --json']
  static override args = {
    name: Args.string({ description: 'The clone.', required: true }),
  }

  protected async exec(): Promise<VdiskInfo> {
    const { flags, args } = await this.parseInput(VdiskFlatten)
    checkName('vDisk', args.name)
    const client = this.client(this.context(flags.cluster))
    return withSpinner(!this.jsonMode, `Flattening vDisk ${args.name}`, () => client.post<VdiskInfo>(`/v1/vdisks/${encodeURIComponent(args.name)}/flatten`, {}, { timeoutMs: vdiskFlattenTimeoutMs }))
  }

  protected render(v: VdiskInfo): string {
    return renderVdisk(v)
  }
}
