import { TessCommand, watchFlag } from '../../base.js'
import { formatAge } from '../../csm-input.js'
import { keyValue, table } from '../../output.js'
import { formatBytes } from '../../../lib/units.js'
import type { ClusterHealth } from '../../../lib/types.js'

function duration(sec: number): string {
  if (sec < 90) return `${sec}s`
  if (sec < 5400) return `${Math.round(sec / 60)}m`
  return `${(sec / 3600).toFixed(1)}h`
}

export default class ClusterHealthCommand extends TessCommand<ClusterHealth> {
  static override summary = 'Show how well the data is protected: extent groups healthy, under-replicated and lost, per vDisk and in total, and the curator'
  static override watchable = true
  static override flags = { watch: watchFlag }
  static override description = [
    'An extent group is healthy when it has RF copies on nodes that are up, under-replicated when it has fewer (a node holding a copy is down, a disk holding one is offline: its node cannot read the directory, or a write went on degraded while no node could take a copy), and lost when no copy can be read: its data is unavailable until a node or disk comes back.',
    'The curator (one CVM, elected) copies under-replicated groups to other nodes with no client I/O needed: groups on a node that has been down, or on a disk that has been offline, for longer than the grace period (30 s), and groups with fewer than RF copies. A node or disk lost, back, added or removed starts a scan at once. "to re-protect" is the data in under-replicated groups; the repair rate and time left are those of its current run.',
    'The same master fails containers over: a CSM of a node down for longer than the grace moves to a node with room, with its containers that have a restart policy (`tess container run --restart`); the newest failovers are listed. It also runs the checksum scrub (`tess cluster scrub`, and weekly): the last pass and what it found are shown.',
    'Garbage: every 10 minutes (and when a master is elected) each node that is up removes the extent group files no record names there (a vDisk deleted while the node was down, a replica replaced while it was away) and the files of replicas recorded as stale, once they are 10 minutes old; "last gc" shows when the last pass ended and what it removed.',
    'Disk balancing: when every node and disk is up and nothing is under-replicated, replicas move between the disks of a node until each holds its share of the node\'s replicas by capacity (after `tess disk add`, the new disk gets its share); "disk balance" shows the last pass that moved any.',
    'State: healthy, degraded (some groups under-replicated) or data-unavailable (some lost). The exit code is 0 in every state: scripts read "state" from --json.',
  ].join('\n\n')

  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json']

  protected async exec(): Promise<ClusterHealth> {
    const { flags } = await this.parseInput(ClusterHealthCommand)
    return this.client(this.context(flags.cluster)).get<ClusterHealth>('/v1/cluster/health')
  }

  protected render(h: ClusterHealth): string {
    const t = h.total
    const c = h.curator
    const pairs: Array<[string, string | number]> = [
      ['state', h.state],
      ['nodes up', h.nodesUp.join(', ') || '-'],
      ['nodes down', h.nodesDown.join(', ') || '-'],
      ['disks offline', h.disksOffline.map((d) => `${d.node}:${d.path}`).join(', ') || '-'],
      ['extent groups', `${t.egroups} (${t.healthy} healthy, ${t.underReplicated} under-replicated, ${t.lost} lost)`],
      ['to re-protect', formatBytes(t.bytesToReprotect)],
    ]
    if (t.bytesLost > 0) pairs.push(['unavailable', `${formatBytes(t.bytesLost)} (no copy on a node that is up)`])
    pairs.push(
      ['curator master', c.master ?? '- (no election won yet)'],
      ['last scan', c.lastScanAt === null ? 'never' : formatAge(c.lastScanAt)],
      ['repair', c.repairing ? `running at ${formatBytes(c.repairBytesPerSec)}/s${c.etaSec !== null ? `, about ${duration(c.etaSec)} left` : ''}` : 'idle'],
      ['re-protected', `${c.repairedEgroups} extent group(s), ${formatBytes(c.repairedBytes)} (since the master was elected)`],
    )
    for (const d of c.repairsDueAt) pairs.push([d.disk !== undefined ? `repair of ${d.node}:${d.disk}` : `repair of ${d.node}`, `at ${d.at} if it is still ${d.disk !== undefined ? 'offline' : 'down'}`])
    for (const w of c.waiting) pairs.push(['waiting', w])
    for (const f of c.failovers.slice(-5)) {
      pairs.push([`failover ${formatAge(f.at)}`, f.to === null
        ? `CSM ${f.csm} of ${f.from} could not move: ${f.error ?? 'unknown'}`
        : `CSM ${f.csm} from ${f.from} to ${f.to}: running ${f.containers.join(', ') || 'none'}${f.dropped.length > 0 ? `; removed (no restart policy) ${f.dropped.join(', ')}` : ''}${f.notStarted.length > 0 ? `; not started ${f.notStarted.join(', ')}` : ''}`])
    }
    if (c.lastError !== null) pairs.push(['last error', c.lastError])
    const f = c.lastScrubFound
    pairs.push(['last scrub', c.scrubbing ? `running now at ${formatBytes(c.scrubBytesPerSec)}/s` : c.lastScrubAt === null ? 'never (`tess cluster scrub` runs one; every week otherwise)' : formatAge(c.lastScrubAt)])
    if (f !== null) pairs.push(['scrub found', `${f.badBlocks} bad block copies in ${formatBytes(f.bytesChecked)} checked, ${f.repairedBlocks} repaired${f.unreadable > 0 ? `, ${f.unreadable} unreadable` : ''}`])
    const g = c.lastGcFound
    pairs.push(['last gc', c.lastGcAt === null ? 'never' : `${formatAge(c.lastGcAt)}${g !== null ? `: ${g.files} file(s) removed (${formatBytes(g.bytes)}), ${g.staleEntries} stale replica entries dropped` : ''}`])
    const b = c.lastBalanceMoved
    pairs.push(['disk balance', c.balancing ? 'moving replicas now' : c.lastBalanceAt === null ? 'balanced (nothing moved yet)' : `last moved ${formatAge(c.lastBalanceAt)}${b !== null ? `: ${b.egroups} of ${b.planned} extent group replica(s) planned (${formatBytes(b.bytes)})` : ''}`])
    return [
      keyValue(pairs),
      table(['vdisk', 'rf', 'egroups', 'healthy', 'under-replicated', 'lost', 'to re-protect', 'nodes down'],
        h.vdisks.map((v) => [v.name, v.rf, v.egroups, v.healthy, v.underReplicated, v.lost, formatBytes(v.bytesToReprotect), v.nodesDown.join(', ') || '-'])),
    ].join('\n')
  }
}
