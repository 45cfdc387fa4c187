import { describe, expect, it } from 'vitest'
import { TessError } from '../../src/lib/errors.js'
import type { PlacementInfo } from '../../src/lib/types.js'
import { readinessGap, waitPlacementReady, type ReadyTarget } from '../../src/bootstrap/ready.js'
import { fakeClock } from '../helpers/clock.js'


describe('cluster create / host add: wait until every CVM can place data', () => {
  const info = (node: string, placeable: string[], extra: Partial<PlacementInfo> = {}): PlacementInfo => ({
    node, rf: 2, ready: placeable.length >= 2, placeable, watching: true,
    nodes: ['n1', 'n2', 'n3'].map((n) => ({ name: n, up: placeable.includes(n), draining: false, disks: 1, disksOnline: placeable.includes(n) ? 1 : 0, freeBytes: 0, placeable: placeable.includes(n), reason: placeable.includes(n) ? null : 'down: no status record, its CVM is not running or its lease expired' })),
    ...extra,
  })
  const targets: ReadyTarget[] = ['n1', 'n2', 'n3'].map((n) => ({ node: n, endpoint: `https://${n}:9440` }))
  const ctx = { name: 'c', caCert: '', token: '' }

  it('names what a CVM still misses', () => {
    expect(readinessGap(info('n1', ['n1', 'n2', 'n3']), ['n1', 'n2', 'n3'], 2)).toBeUndefined()
    expect(readinessGap(info('n1', ['n1']), ['n1', 'n2', 'n3'], 2)).toBe('n2 (down: no status record, its CVM is not running or its lease expired), ' +
      'n3 (down: no status record, its CVM is not running or its lease expired), it can place on 1 node(s) [n1] but RF 2 needs 2')
    expect(readinessGap(info('n1', ['n1', 'n2', 'n3'], { watching: false }), ['n1', 'n2', 'n3'], 2)).toBe('its view does not follow etcd yet: watches not connected')
  })

  it('returns once every CVM sees every node, asking only those not ready yet', async () => {
    const clock = fakeClock()
    const asked: string[] = []
    const fetch = async (t: ReadyTarget) => {
      asked.push(t.node)
      // n3's CVM needs two more polls before it sees n2
      return t.node === 'n3' && asked.filter((x) => x === 'n3').length < 3 ? info('n3', ['n1', 'n3']) : info(t.node, ['n1', 'n2', 'n3'])
    }
    const r = await waitPlacementReady(ctx, targets, ['n1', 'n2', 'n3'], 2, { what: 'cannot create cluster "c"', clock, fetch, pollMs: 200 })
    expect(r.waitedMs).toBe(400)
    expect(asked).toEqual(['n1', 'n2', 'n3', 'n3', 'n3'])
  })

  it('fails after its timeout naming each CVM and what it misses; keeps asking an API that does not answer', async () => {
    const clock = fakeClock()
    const fetch = async (t: ReadyTarget) => {
      if (t.node === 'n2') throw new TessError('TESS_E_UNREACHABLE', 'cannot reach the API at https://n2:9440: connect ECONNREFUSED')
      return t.node === 'n3' ? info('n3', ['n1', 'n3']) : info(t.node, ['n1', 'n2', 'n3'])
    }
    const err = await waitPlacementReady(ctx, targets, ['n1', 'n2', 'n3'], 2, { what: 'cannot create cluster "c"', clock, fetch, timeoutMs: 60_000, pollMs: 200 }).catch((e: unknown) => e) as TessError
    expect(err.code).toBe('TESS_E_TIMEOUT')
    expect(err.message).toBe('cannot create cluster "c": not every CVM can place data at RF 2 on nodes n1, n2, n3 after 60 s: ' +
      'the CVM of n2: its API does not answer: cannot reach the API at https://n2:9440: connect ECONNREFUSED; ' +
      'the CVM of n3: n2 (down: no status record, its CVM is not running or its lease expired)')
    expect(clock.sleeps.length).toBe(300)
  })

  it('refuses at once a CVM without the placement route (an older version)', async () => {
    const fetch = async () => { throw new TessError('TESS_E_NOT_FOUND', 'no API route GET /v1/placement') }
    const err = await waitPlacementReady(ctx, targets.slice(0, 1), ['n1'], 1, { what: 'cannot add host h', clock: fakeClock(), fetch }).catch((e: unknown) => e) as TessError
    expect(err.code).toBe('TESS_E_PRECONDITION')
    expect(err.message).toContain('the CVM of node n1 does not report its placement view')
  })
})
