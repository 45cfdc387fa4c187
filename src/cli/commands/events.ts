import { Flags } from '@oclif/core'
import { TessCommand, untilInterrupted } from '../base.js'
import { table } from '../output.js'
import { TessError } from '../../lib/errors.js'
import { eventKinds, type EventInfo } from '../../lib/event-types.js'
import { sinceToIso } from '../since.js'

/** how often --watch asks for new events */
export const eventsPollIntervalMs = 1000
/**
 * --watch asks again from this long before the newest event it printed: an event another node
 * stamped a moment earlier may reach etcd a moment later (each is printed once all the same)
 */
export const eventsLateMs = 10_000
/** the most events one request answers (the API's bound) */
const eventsPageMax = 1000

export default class Events extends TessCommand<EventInfo[]> {
  static override summary = 'Show what happened in the cluster: nodes and disks lost and back, repairs, failovers, container exits, changes'
  static override description = `Events are recorded by every node and kept in etcd (the newest 10000), so any node shows the whole cluster's, oldest first. Kinds: node-down, node-up, disk-offline, disk-online (seen by the curator master), repair-started, repair-finished, repair-failed, failover, scrub (bad copies found), container-exited, container-oom, container-restarted (seen by the container's node within a few seconds), and change: a change made through the API, who did what (shown to admins only, as in tess audit list).

--watch keeps printing new events as they are recorded until Ctrl-C, each once (it asks again from 10 s before the newest it printed, so an event another node stamped a moment earlier but stored a moment later is not missed). With --json the result is an array; with --json and --watch, one JSON object per line, as each event comes.`
  static override examples = [
    '<%= config.bin %> <%= command.id %>',
    '<%= config.bin %> <%= command.id %> --since 1h --kind node-down --kind failover',
    '<%= config.bin %> <%= command.id %> --watch',
    '<%= config.bin %> <%= command.id %> --since 10m --json',
  ]

  static override flags = {
    since: Flags.string({ description: 'Only events since then: a duration back from now (30s, 10m, 2h) or a time (ISO 8601).' }),
    kind: Flags.string({ description: 'Only events of this kind (repeat for several).', options: [...eventKinds], multiple: true }),
    limit: Flags.integer({ description: 'How many events at most, the newest (1 to 1000).', default: 100, min: 1, max: eventsPageMax }),
    watch: Flags.boolean({ char: 'w', description: 'Keep printing new events as they come (Ctrl-C stops).' }),
  }

  protected async exec(): Promise<EventInfo[]> {
    const { flags } = await this.parseInput(Events)
    const api = this.client(this.context(flags.cluster))
    const query = (extra: Record<string, string>, limit: number): string => {
      const q = new URLSearchParams({ limit: String(limit), ...extra })
      for (const k of flags.kind ?? []) q.append('kind', k)
      return `/v1/events?${q.toString()}`
    }
    const startedAt = new Date().toISOString()
    const first = await api.get<EventInfo[]>(query(flags.since !== undefined ? { since: sinceToIso(flags.since) } : {}, flags.limit))
    if (!flags.watch) return first
    this.streamed = true
    const loop = untilInterrupted()
    try {
      // the ids printed in the last eventsLateMs before the newest one (what a later ask returns again)
      let printed = new Map(first.map((e) => [e.id, e.at]))
      let newest = first.at(-1)?.at ?? startedAt
      this.print(first)
      while (!loop.stopped) {
        await loop.pause(eventsPollIntervalMs)
        if (loop.stopped) break
        const since = new Date(Date.parse(newest) - eventsLateMs).toISOString()
        const fresh = (await api.get<EventInfo[]>(query({ since }, eventsPageMax))).filter((e) => !printed.has(e.id))
        if (fresh.length === 0) continue
        this.print(fresh)
        for (const e of fresh) printed.set(e.id, e.at)
        newest = [newest, ...fresh.map((e) => e.at)].sort().at(-1)!
        const keep = new Date(Date.parse(newest) - eventsLateMs).toISOString()
        printed = new Map([...printed].filter(([, at]) => at >= keep))
      }
    } finally {
      loop.end()
    }
    return first
  }

  /** --watch: one line per event, text or JSON. */
  private print(es: EventInfo[]): void {
    if (es.length === 0) return
    process.stdout.write(es.map((e) => (this.jsonMode ? JSON.stringify(e) : `${e.at}  ${e.severity.padEnd(7)}  ${e.node}  ${e.kind}  ${e.subject}: ${e.message}`)).join('\n') + '\n')
  }

  protected render(es: EventInfo[]): string {
    if (es.length === 0) return 'No events.'
    return table(['TIME', 'SEVERITY', 'NODE', 'KIND', 'SUBJECT', 'MESSAGE'], es.map((e) => [e.at, e.severity, e.node, e.kind, e.subject, e.message]))
  }
}
