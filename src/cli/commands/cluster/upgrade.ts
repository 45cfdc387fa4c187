import { Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { splitNames } from '../../csm-input.js'
import { keyValue, table, withSpinner } from '../../output.js'
import { parseDuration } from '../../../lib/units.js'
import { TessError } from '../../../lib/errors.js'
import { versionLabel, type TessVersion } from '../../../lib/version.js'
import { upgradeCluster, upgradeNodeTimeoutMsDefault, type UpgradeReport } from '../../../bootstrap/upgrade.js'

const shown = (v: TessVersion | null): string => v === null ? 'unknown' : versionLabel(v)

export default class ClusterUpgrade extends TessCommand<UpgradeReport> {
  static override summary = 'Move every node to this tess\'s bundle, one node at a time, with I/O going on'
  static override description = `Builds the bundle of the tess that runs the command and, for each node that runs another one, in turn: installs it over SSH, restarts the node's daemons on it (the CVM flushes and gives up its vDisk ownership, so I/O through the other nodes goes on; NBD clients connected to this node reconnect; containers keep running), and waits until the node reports the new bundle with every daemon healthy and nothing in the cluster is under-replicated, before the next node.

Refused unless every node is up and the cluster is healthy (tess cluster health), and for a node whose containers have volumes attached (move or stop them first). A node that is not healthy within --timeout stops the upgrade with a report; run the command again to go on: nodes that already run the new bundle are skipped. \`tess cluster status\` shows each node's version and warns while they differ. For clusters on hosts (it reaches them over SSH with the context's key and pinned host keys); an embedded cluster runs this tess's own files.`
  static override examples = ['<%= config.bin %> <%= command.id %> --dry-run', '<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --node node2 --json', '<%= config.bin %> <%= command.id %> --timeout 20m']

  static override flags = {
    'dry-run': Flags.boolean({ description: 'Print what each node runs and which nodes would be upgraded, change nothing.' }),
    node: Flags.string({ description: 'Upgrade only these nodes (repeat the flag or separate names with ","); they go one at a time in the order the cluster lists them.', multiple: true, multipleNonGreedy: true }),
    timeout: Flags.string({ description: 'How long each node may take to be healthy again after its restart, e.g. 10m.', default: `${upgradeNodeTimeoutMsDefault / 60_000}m` }),
  }

  protected async exec(): Promise<UpgradeReport> {
    const { flags } = await this.parseInput(ClusterUpgrade)
    const nodeTimeoutMs = parseDuration(flags.timeout, '--timeout')
    if (nodeTimeoutMs < 10_000) throw new TessError('TESS_E_INVALID', `--timeout ${flags.timeout} is too short for a node to restart`, 'give at least 10s; the default is 10m')
    const nodes = flags.node === undefined ? undefined : splitNames(flags.node, 'node', '--node')
    const ctx = this.context(flags.cluster)
    const client = this.client(ctx)
    return withSpinner(!this.jsonMode, flags['dry-run'] ? 'Building the bundle' : 'Upgrading', (s) =>
      upgradeCluster(ctx, client, { dryRun: flags['dry-run'], ...(nodes !== undefined ? { nodes } : {}), nodeTimeoutMs, progress: (node, step) => s.text(`Upgrading ${node}: ${step}`) }))
  }

  protected render(r: UpgradeReport): string {
    const done = new Map(r.upgraded.map((u) => [u.node, u]))
    const rows = r.plan.map((p) => {
      const u = done.get(p.node)
      const what = p.action === 'current' ? 'runs it already' : r.dryRun ? 'would be upgraded' : u !== undefined ? `upgraded: back in ${(u.restartMs / 1000).toFixed(1)} s, cluster healthy in ${(u.healthyMs / 1000).toFixed(1)} s` : 'not upgraded'
      return [p.node, shown(p.from), what]
    })
    return [keyValue([['target', shown(r.target)]]), table(['node', 'ran', r.dryRun ? 'plan' : 'result'], rows)].join('\n')
  }
}
