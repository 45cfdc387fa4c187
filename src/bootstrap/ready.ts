import { realClock, type Clock } from '../lib/clock.js'
import { TessError, errorMessage } from '../lib/errors.js'
import { clusterReadyPollMs, clusterReadyTimeoutMs } from '../lib/limits.js'
import type { PlacementInfo } from '../lib/types.js'
import { ApiClient } from '../lib/apiclient.js'
import type { ClusterContext } from '../lib/contexts.js'

/** One node's CVM to ask. */
export interface ReadyTarget {
  node: string
  /** its API endpoint, https://ADDRESS:PORT */
  endpoint: string
}

export interface ReadyOptions {
  /** the action, for messages: `cannot create cluster "prod"` */
  what: string
  progress?: (node: string, step: string) => void
  clock?: Clock
  timeoutMs?: number
  pollMs?: number
  /** how a CVM is asked (default: GET /v1/placement?rf=N on its endpoint) */
  fetch?: (t: ReadyTarget, rf: number) => Promise<PlacementInfo>
}

/** What a CVM's answer still misses for `expected` at RF `rf` (undefined: nothing, it is ready). */
export function readinessGap(info: PlacementInfo, expected: string[], rf: number): string | undefined {
  const gaps: string[] = []
  for (const name of expected) {
    if (info.placeable.includes(name)) continue
    const n = info.nodes.find((x) => x.name === name)
    gaps.push(`${name} (${n ? (n.reason ?? 'not placeable') : 'unknown to it'})`)
  }
  if (info.placeable.length < rf) gaps.push(`it can place on ${info.placeable.length} node(s) [${info.placeable.join(', ') || 'none'}] but RF ${rf} needs ${rf}`)
  if (!info.watching) gaps.push('its view does not follow etcd yet: watches not connected')
  return gaps.length > 0 ? gaps.join(', ') : undefined
}

/**
 * Wait until the CVM of every target sees every `expected` node up with a disk and can place an
 * extent group at RF `rf` (each asked with GET /v1/placement, every `clusterReadyPollMs`), so that
 * the first write after the command returns finds its nodes. Bounded by clusterReadyTimeoutMs;
 * the error names, per CVM, what it still misses. Returns how long it waited.
 */
export async function waitPlacementReady(ctx: Pick<ClusterContext, 'name' | 'caCert' | 'token'>, targets: ReadyTarget[], expected: string[], rf: number, o: ReadyOptions): Promise<{ waitedMs: number }> {
  const clock = o.clock ?? realClock
  const timeoutMs = o.timeoutMs ?? clusterReadyTimeoutMs
  const fetch = o.fetch ?? ((t: ReadyTarget, r: number) => new ApiClient({ ...ctx, endpoints: [t.endpoint] }).get<PlacementInfo>(`/v1/placement?rf=${r}`, { retryMs: 0, timeoutMs: 5_000 }))
  const start = clock.now()
  const pending = new Map(targets.map((t) => [t.node, 'not asked yet']))
  for (const t of targets) o.progress?.(t.node, `waiting until its CVM can place data at RF ${rf}`)
  for (;;) {
    await Promise.all(targets.filter((t) => pending.has(t.node)).map(async (t) => {
      let gap: string | undefined
      try {
        gap = readinessGap(await fetch(t, rf), expected, rf)
      } catch (e) {
        if (e instanceof TessError && e.code === 'TESS_E_NOT_FOUND') {
          throw new TessError('TESS_E_PRECONDITION', `${o.what}: the CVM of node ${t.node} does not report its placement view (${errorMessage(e)}): it runs an older version`,
            'run the same version of tess on every node (the bundle is installed by `cluster create` and `host add`)')
        }
        gap = `its API does not answer: ${errorMessage(e)}`
      }
      if (gap === undefined) {
        pending.delete(t.node)
        o.progress?.(t.node, `ready: its CVM can place data at RF ${rf}`)
      } else {
        pending.set(t.node, gap)
      }
    }))
    if (pending.size === 0) return { waitedMs: clock.now() - start }
    if (clock.now() - start >= timeoutMs) {
      const detail = [...pending].map(([node, gap]) => `the CVM of ${node}: ${gap}`).join('; ')
      throw new TessError('TESS_E_TIMEOUT', `${o.what}: not every CVM can place data at RF ${rf} on nodes ${expected.join(', ')} after ${Math.round(timeoutMs / 1000)} s: ${detail}`,
        'see `tess cluster status` and the CVM log of those nodes (/var/lib/tess/logs/cvm.log, or <data-dir>/logs/cvm.log); running the command again resumes')
    }
    await clock.sleep(o.pollMs ?? clusterReadyPollMs)
  }
}
