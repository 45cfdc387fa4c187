import { TessCommand, watchFlag } from '../../base.js'
import { table } from '../../output.js'
import { formatBytes } from '../../../lib/units.js'
import type { DiskInfo } from '../../../lib/types.js'

export default class DiskList extends TessCommand<DiskInfo[]> {
  static override summary = 'List the disks of the storage pool'
  static override watchable = true
  static override flags = { watch: watchFlag }
  static override aliases = ['disk:ls']
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json']

  protected async exec(): Promise<DiskInfo[]> {
    const { flags } = await this.parseInput(DiskList)
    return this.client(this.context(flags.cluster)).get<DiskInfo[]>('/v1/disks')
  }

  protected render(r: DiskInfo[]): string {
    if (r.length === 0) return 'No disks. Add one with: tess disk add PATH'
    return table(['id', 'node', 'path', 'state', 'capacity', 'used', 'free'],
      r.map((d) => [d.id, d.node, d.path, d.state, formatBytes(d.capacityBytes), formatBytes(d.usedBytes), formatBytes(d.freeBytes)]))
  }
}
