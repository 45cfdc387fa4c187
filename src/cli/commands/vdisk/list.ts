import { TessCommand, watchFlag } from '../../base.js'
import { table } from '../../output.js'
import { formatBytes } from '../../../lib/units.js'
import type { VdiskInfo } from '../../../lib/types.js'

export default class VdiskList extends TessCommand<VdiskInfo[]> {
  static override summary = 'List vDisks with their provisioned and allocated size'
  static override watchable = true
  static override flags = { watch: watchFlag }
  static override aliases = ['vdisk:ls']
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json']

  protected async exec(): Promise<VdiskInfo[]> {
    const { flags } = await this.parseInput(VdiskList)
    return this.client(this.context(flags.cluster)).get<VdiskInfo[]>('/v1/vdisks')
  }

  protected render(r: VdiskInfo[]): string {
    if (r.length === 0) return 'No vDisks. Create one with: tess vdisk create NAME --size 10G'
    return table(['name', 'id', 'size', 'allocated', 'rf', 'owner', 'nbd uri'],
      r.map((v) => [v.name, v.id, formatBytes(v.sizeBytes), formatBytes(v.allocatedBytes), v.rf, v.owner ?? '-', v.nbdUri]))
  }
}
