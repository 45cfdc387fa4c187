import { Range, type Etcd3 } from 'etcd3'
import { TessError, errorMessage } from '../lib/errors.js'
import { etcdCall, keys, trimOldest } from '../lib/etcd.js'
import type { EventInfo, EventKind, EventSink, NewEvent } from '../lib/event-types.js'
import type { Logger } from '../lib/log.js'
import { realClock, type Clock } from '../lib/clock.js'

/** events kept in etcd (the oldest go first) */
export const eventRecordsMax = 10_000
/** the most events one list answers */
export const eventListMax = 1000
/** events recorded by one CVM between two trims of the log to eventRecordsMax */
const eventTrimEvery = 100

export interface EventQuery {
  /** only events at or after this time (ISO 8601) */
  since?: string
  /** only events after this one (its id: how `tess events --watch` continues) */
  after?: string
  kinds?: readonly EventKind[]
  /** the newest `limit` of what matches, oldest first */
  limit: number
}

/**
 * The cluster's events (node down or up, repairs, failovers, container exits, changes made through
 * the API), in etcd under /tess/events/ so any node lists the whole cluster's. Keys sort by time,
 * then node, then a per-process sequence. Bounded to eventRecordsMax. Recording never fails the
 * work that reports it: a failed write is logged.
 */
export class EventLog implements EventSink {
  private seq = 0
  private written = 0
  private trimming: Promise<void> | undefined
  private readonly clock: Clock

  constructor(private readonly etcd: Etcd3, private readonly node: string, private readonly log: Logger, clock?: Clock) {
    this.clock = clock ?? realClock
  }

  record(e: NewEvent): void {
    const at = new Date(this.clock.now()).toISOString()
    const id = `${at}-${this.node}-${(this.seq++).toString().padStart(8, '0')}`
    const rec: EventInfo = { id, at, node: this.node, ...e }
    void etcdCall('record an event', () => this.etcd.put(`${keys.eventsPrefix}${id}`).value(JSON.stringify(rec))).then(() => {
      if (++this.written % eventTrimEvery === 0) this.trimming ??= this.trim().finally(() => { this.trimming = undefined })
    }, (err: unknown) => this.log.warn(`events: cannot record ${e.kind} of ${e.subject} (${e.message}): ${errorMessage(err)}`))
  }

  async list(q: EventQuery): Promise<EventInfo[]> {
    const start = q.after !== undefined ? `${keys.eventsPrefix}${q.after}\0` : `${keys.eventsPrefix}${q.since ?? ''}`
    const end = Range.prefix(keys.eventsPrefix).end
    // the newest first, so that `limit` keeps the newest; filtered by kind here (at most eventRecordsMax)
    const raw = await etcdCall('read the events', () => this.etcd.getAll().inRange(new Range(Buffer.from(start), end)).sort('Key', 'Descend').limit(q.kinds === undefined ? q.limit : eventRecordsMax).strings())
    const out: EventInfo[] = []
    for (const v of Object.values(raw)) {
      let e: EventInfo
      try {
        e = JSON.parse(v) as EventInfo
      } catch {
        continue // a record this version cannot read is left out, never fatal to the list
      }
      if (q.kinds !== undefined && !q.kinds.includes(e.kind)) continue
      out.push(e)
    }
    out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    return out.slice(-q.limit)
  }

  /** drop the oldest events beyond eventRecordsMax */
  private async trim(): Promise<void> {
    await trimOldest(this.etcd, keys.eventsPrefix, eventRecordsMax).catch((e: unknown) => this.log.warn(`events: cannot trim the log: ${errorMessage(e)}`))
  }
}

/** Check the query of `GET /v1/events`; bad input is a coded error naming the value. */
export function parseEventQuery(query: URLSearchParams, kindsKnown: readonly string[]): EventQuery {
  const rawLimit = query.get('limit') ?? '100'
  const limit = Number(rawLimit)
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > eventListMax) {
    throw new TessError('TESS_E_INVALID', `bad limit "${rawLimit.slice(0, 20)}"`, `a whole number from 1 to ${eventListMax}`)
  }
  const since = query.get('since') ?? undefined
  if (since !== undefined && (Number.isNaN(Date.parse(since)) || !/^\d{4}-\d{2}-\d{2}T/.test(since))) {
    throw new TessError('TESS_E_INVALID', `bad since "${since.slice(0, 40)}"`, 'a time in ISO 8601, e.g. 2026-12-06T10:00:00Z')
  }
  const after = query.get('after') ?? undefined
  if (after !== undefined && !/^[0-9T:.Z-]+-[a-zA-Z0-9._-]+-\d{8}$/.test(after)) {
    throw new TessError('TESS_E_INVALID', `bad after "${after.slice(0, 80)}"`, 'the id of an event, as `tess events --json` shows it')
  }
  const kinds = query.getAll('kind')
  for (const k of kinds) {
    if (!kindsKnown.includes(k)) throw new TessError('TESS_E_INVALID', `unknown event kind "${k.slice(0, 40)}"`, `one of: ${kindsKnown.join(', ')}`)
  }
  return { limit, ...(since !== undefined ? { since: new Date(since).toISOString() } : {}), ...(after !== undefined ? { after } : {}), ...(kinds.length > 0 ? { kinds: kinds as EventKind[] } : {}) }
}

