import { eventKinds } from '../../lib/event-types.js'
import type { ApiServer } from '../../lib/http-server.js'
import { parseEventQuery, type EventLog } from '../events.js'

/**
 * `GET /v1/events` (viewer): the cluster's events, oldest first. Changes made through the API
 * (kind `change`: who did what) are shown to admins only, as the audit log is.
 */
export function registerEventRoutes(api: ApiServer, events: EventLog): void {
  api.route('GET', '/v1/events', async (req) => {
    const q = parseEventQuery(req.query, eventKinds)
    const all = await events.list(q)
    return req.principal.role === 'admin' || req.principal.role === 'node' ? all : all.filter((e) => e.kind !== 'change')
  })
}
