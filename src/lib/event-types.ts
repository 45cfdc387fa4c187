/** The API's answers about cluster events (the CVM's src/cvm/events.ts records them). */

/** what happened; `change` is a change made through the API (who did what) */
export const eventKinds = [
  'node-down', 'node-up', 'disk-offline', 'disk-online',
  'repair-started', 'repair-finished', 'repair-failed', 'failover', 'scrub', 'garbage',
  'container-exited', 'container-oom', 'container-restarted', 'change',
] as const
export type EventKind = typeof eventKinds[number]

export type EventSeverity = 'info' | 'warning' | 'error'

/** An event as a CVM records it (the log adds id, at and node). */
export interface NewEvent {
  kind: EventKind
  severity: EventSeverity
  /** what it is about: a node, a vDisk, `csm/container`, a user */
  subject: string
  message: string
}

export interface EventInfo extends NewEvent {
  /** sorts as the events happened (time, node, sequence); `?after=ID` continues after it */
  id: string
  at: string
  /** the node whose CVM recorded it */
  node: string
}

/** Where a part of the CVM hands its events (the event log, or nothing in tests). */
export interface EventSink {
  record(e: NewEvent): void
}
