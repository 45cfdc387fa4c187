import { TessCommand, watchFlag } from '../../base.js'
import { keyValue, table } from '../../output.js'
import { formatBytes } from '../../../lib/units.js'
import type { ClusterStatus } from '../../../lib/types.js'
import { bundleLabel } from '../../../lib/version.js'

export default class ClusterStatusCommand extends TessCommand<ClusterStatus> {
  static override summary = 'Show the cluster: nodes, the tess version each runs, the health and pid of each daemon, pool capacity, nodes that cannot run containers and why, certificates about to expire'
  static override watchable = true
  static override flags = { watch: watchFlag }
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json', '<%= config.bin %> <%= command.id %> --cluster dev']

  protected async exec(): Promise<ClusterStatus> {
    const { flags } = await this.parseInput(ClusterStatusCommand)
    return this.client(this.context(flags.cluster)).get<ClusterStatus>('/v1/cluster/status')
  }

  protected render(r: ClusterStatus): string {
    // the version once per node: the tess release, and the bundle when the node runs one (absent in answers of older CVMs)
    const version = (n: ClusterStatus['nodes'][number]) => n.version == null ? '-' : `${n.version.tess}${n.version.bundle === null ? '' : ` ${bundleLabel(n.version.bundle)}`}`
    const rows = r.nodes.flatMap((n) => n.daemons.map((d, i) => [i === 0 ? n.name : '', i === 0 ? n.address : '', i === 0 ? n.state : '', i === 0 ? version(n) : '', d.name, d.pid ?? '-', d.healthy ? 'healthy' : 'DOWN', d.restarts]))
    return [
      keyValue([['cluster', r.name], ['id', r.id], ['nodes', r.nodes.length], ['vDisks', r.vdiskCount],
        ['pool capacity', formatBytes(r.pool.capacityBytes)], ['pool used', formatBytes(r.pool.usedBytes)], ['pool free', formatBytes(r.pool.freeBytes)]]),
      table(['node', 'address', 'state', 'version', 'daemon', 'pid', 'health', 'restarts'], rows),
      // a node whose container side did not start still serves storage: say why it runs no containers
      ...r.nodes.filter((n) => n.containers?.available === false).map((n) => `containers unavailable on ${n.name}: ${n.containers!.reason ?? 'unknown reason'}`),
      // certificates that expire within 30 days (or did), nodes on different versions; absent in answers of older CVMs
      ...(r.warnings ?? []).map((w) => `warning: ${w}`),
    ].join('\n')
  }
}
