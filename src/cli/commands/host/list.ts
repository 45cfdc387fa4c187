import { TessCommand, watchFlag } from '../../base.js'
import { table } from '../../output.js'
import { formatBytes } from '../../../lib/units.js'
import type { ClusterStatus, DaemonInfo, DiskInfo } from '../../../lib/types.js'

export interface HostInfo {
  name: string
  address: string
  state: 'up' | 'down'
  daemons: DaemonInfo[]
  disks: DiskInfo[]
  capacityBytes: number
  freeBytes: number
  usedBytes: number
  lastSeenAt: string | null
}

export default class HostList extends TessCommand<HostInfo[]> {
  static override summary = 'List the hosts (nodes) of the cluster: address, state, daemons, disks, capacity'
  static override watchable = true
  static override flags = { watch: watchFlag }
  static override aliases = ['host:ls']
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json']

  protected async exec(): Promise<HostInfo[]> {
    const { flags } = await this.parseInput(HostList)
    const st = await this.client(this.context(flags.cluster)).get<ClusterStatus>('/v1/cluster/status')
    return st.nodes.map((n) => {
      const disks = st.pool.disks.filter((d) => d.node === n.name)
      return {
        name: n.name,
        address: n.address,
        state: n.state,
        daemons: n.daemons,
        disks,
        capacityBytes: disks.reduce((a, d) => a + d.capacityBytes, 0),
        freeBytes: disks.reduce((a, d) => a + d.freeBytes, 0),
        usedBytes: disks.reduce((a, d) => a + d.usedBytes, 0),
        lastSeenAt: n.lastSeenAt,
      }
    })
  }

  protected render(r: HostInfo[]): string {
    return table(['host', 'address', 'state', 'daemons', 'disks', 'capacity', 'used', 'free'], r.map((h) => [
      h.name, h.address, h.state,
      h.daemons.map((d) => `${d.name}${d.healthy ? '' : ' DOWN'}${d.pid ? ` (${d.pid})` : ''}`).join(', '),
      h.disks.length, formatBytes(h.capacityBytes), formatBytes(h.usedBytes), formatBytes(h.freeBytes),
    ]))
  }
}
