import { Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { formatMs } from '../../csm-input.js'
import { keyValue } from '../../output.js'
import { TessError } from '../../../lib/errors.js'
import { formatBytes, parseDuration, parseSize } from '../../../lib/units.js'
import type { ClusterSettings } from '../../../lib/types.js'

export default class ClusterUpdate extends TessCommand<ClusterSettings> {
  static override summary = 'Change the cluster\'s self-healing settings: the grace before a lost node is healed around, the repair and scrub rates'
  static override description = `--node-down-grace: how long a node must be down before the curator copies the data it held to other nodes and moves its CSMs with their restartable containers (default 30s, 5s to 7d). A restart or a short partition within it costs no copy.

--repair-rate: the most the curator copies per second to re-protect data (e.g. 200M; "unlimited", the default, copies as fast as disks and network go). A lower rate leaves more to client I/O while a node's data is copied, and takes longer to get back to RF copies.

--scrub-rate: the most the checksum scrub reads per second, over all replicas (default 64M).

Without flags, prints the settings. The curator master scans as soon as they change (a shorter grace can start a repair at once); nothing restarts.`
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --node-down-grace 2m --repair-rate 200M', '<%= config.bin %> <%= command.id %> --repair-rate unlimited --json']

  static override flags = {
    'node-down-grace': Flags.string({ description: 'How long a node is down before its data is copied and its CSMs move, e.g. 30s, 5m.' }),
    'repair-rate': Flags.string({ description: 'Copy at most this many bytes per second to re-protect data, e.g. 200M, or "unlimited".' }),
    'scrub-rate': Flags.string({ description: 'Read at most this many bytes per second for the scrub, e.g. 64M.' }),
  }

  protected async exec(): Promise<ClusterSettings> {
    const { flags } = await this.parseInput(ClusterUpdate)
    const patch: Record<string, number | null> = {}
    if (flags['node-down-grace'] !== undefined) patch.nodeDownGraceMs = parseDuration(flags['node-down-grace'], '--node-down-grace')
    if (flags['repair-rate'] !== undefined) patch.repairBytesPerSec = flags['repair-rate'] === 'unlimited' ? null : parseSize(flags['repair-rate'], '--repair-rate')
    if (flags['scrub-rate'] !== undefined) patch.scrubBytesPerSec = parseSize(flags['scrub-rate'], '--scrub-rate')
    const client = this.client(this.context(flags.cluster))
    if (Object.keys(patch).length === 0) return client.get<ClusterSettings>('/v1/cluster/config')
    try {
      return await client.patch<ClusterSettings>('/v1/cluster/config', patch)
    } catch (e) {
      // the API's bounds, named by the flag the operator typed
      if (e instanceof TessError && e.code === 'TESS_E_INVALID') {
        const flag = /nodeDownGraceMs/.test(e.message) ? '--node-down-grace' : /repairBytesPerSec/.test(e.message) ? '--repair-rate' : '--scrub-rate'
        throw new TessError('TESS_E_INVALID', `invalid ${flag}: ${e.message}`, flag === '--node-down-grace' ? 'give 5s to 7d' : 'give 1M or more per second')
      }
      throw e
    }
  }

  protected render(r: ClusterSettings): string {
    return keyValue([
      ['node down grace', formatMs(r.nodeDownGraceMs)],
      ['repair rate', r.repairBytesPerSec === null ? 'unlimited' : `${formatBytes(r.repairBytesPerSec)}/s`],
      ['scrub rate', `${formatBytes(r.scrubBytesPerSec)}/s`],
    ])
  }
}
