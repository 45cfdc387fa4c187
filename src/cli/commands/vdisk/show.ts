import { Args } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { renderVdisk } from '../../render.js'
import { checkName } from '../../../lib/names.js'
import type { VdiskInfo } from '../../../lib/types.js'

export default class VdiskShow extends TessCommand<VdiskInfo> {
  static override summary = 'Show a vDisk: size, allocated bytes, RF, owner and NBD URIs (plain, and over TLS with credentials)'
  static override examples = ['<%= config.bin %> <%= command.id %> db1', '<%= config.bin %> <%= command.id %> db1 --json']
  static override args = {
    name: Args.string({ description: 'vDisk name.', required: true }),
  }

  protected async exec(): Promise<VdiskInfo> {
    const { flags, args } = await this.parseInput(VdiskShow)
    checkName('vDisk', args.name)
    return this.client(this.context(flags.cluster)).get<VdiskInfo>(`/v1/vdisks/${encodeURIComponent(args.name)}`)
  }

  protected render(v: VdiskInfo): string {
    return renderVdisk(v)
  }
}
