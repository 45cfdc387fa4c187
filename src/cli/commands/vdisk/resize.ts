import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { renderVdisk } from '../../render.js'
import { checkName } from '../../../lib/names.js'
import { parseSize } from '../../../lib/units.js'
import type { VdiskInfo } from '../../../lib/types.js'

export default class VdiskResize extends TessCommand<VdiskInfo> {
  static override summary = 'Grow a vDisk'
  static override description = 'vDisks only grow. NBD clients connected during the resize keep seeing the old size until they reconnect (NBD has no size-change notice).'
  static override examples = ['<%= config.bin %> <%= command.id %> db1 --size 20G']
  static override args = {
    name: Args.string({ description: 'vDisk name.', required: true }),
  }

  static override flags = {
    size: Flags.string({ char: 's', description: 'New size (at least the current one), e.g. 20G.', required: true }),
  }

  protected async exec(): Promise<VdiskInfo> {
    const { flags, args } = await this.parseInput(VdiskResize)
    checkName('vDisk', args.name)
    const sizeBytes = parseSize(flags.size, 'vDisk size')
    return this.client(this.context(flags.cluster)).patch<VdiskInfo>(`/v1/vdisks/${encodeURIComponent(args.name)}`, { sizeBytes })
  }

  protected render(v: VdiskInfo): string {
    return renderVdisk(v)
  }
}
