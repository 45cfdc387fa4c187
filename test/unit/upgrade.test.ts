import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { chosenNodes, notReady, protocolGap, stopped, waitHealthy } from '../../src/bootstrap/upgrade.js'
import { checkProtocol } from '../../src/lib/rpc/node-ops.js'
import { versionWarnings } from '../../src/cvm/node.js'
import { protocolVersion, protocolVersionOldest, protocolsCompatible, runningVersion } from '../../src/lib/version.js'
import type { ClusterHealth, ClusterStatus, NodeInfo } from '../../src/lib/types.js'
import { TessError } from '../../src/lib/errors.js'
import { repoRoot } from '../helpers/cluster.js'

const sha = (c: string) => c.repeat(64)
const node = (name: string, o: Partial<NodeInfo> = {}): NodeInfo => ({
  name, address: '10.0.0.1', state: 'up', apiPort: 1, nbdPort: 2, lastSeenAt: null, containers: null, certificates: null,
  daemons: [{ name: 'cvm', pid: 1, healthy: true, restarts: 0 }], version: { tess: '1.0.0', bundle: sha('a') }, ...o,
})
const status = (nodes: NodeInfo[]): ClusterStatus => ({ name: 'c', id: 'x', createdAt: '', nodes, pool: { capacityBytes: 0, usedBytes: 0, freeBytes: 0 } as ClusterStatus['pool'], vdiskCount: 0, warnings: [] })
const health = (state: ClusterHealth['state'], under = 0): ClusterHealth => ({
  state, nodesUp: [], nodesDown: [], disksOffline: [], vdisks: [],
  total: { egroups: 4, healthy: 4 - under, underReplicated: under, lost: 0, bytesToReprotect: under * 1048576, bytesLost: 0, nodesDown: [] },
} as unknown as ClusterHealth)

describe('versions of the nodes', () => {
  it('runningVersion: package.json\'s version; no bundle when tess runs from its own files', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8'))
    expect(runningVersion()).toEqual({ tess: pkg.version, bundle: null, protocol: { current: protocolVersion, oldest: protocolVersionOldest } })
  })

  it('warns while nodes that are up run different bundles, naming them; down nodes do not count, an up node without a version does', () => {
    expect(versionWarnings([node('n1'), node('n2')])).toEqual([])
    const w = versionWarnings([node('n1'), node('n2', { version: { tess: '1.1.0', bundle: sha('b') } }), node('n3')])
    expect(w).toHaveLength(1)
    expect(w[0]).toContain('n1, n3 on 1.0.0 (bundle aaaaaaaaaaaa)')
    expect(w[0]).toContain('n2 on 1.1.0 (bundle bbbbbbbbbbbb)')
    expect(w[0]).toContain('tess cluster upgrade')
    expect(versionWarnings([node('n1'), node('n2', { state: 'down', version: { tess: '0.9', bundle: sha('c') } }), node('n3', { state: 'down', version: null })])).toEqual([])
    // an up node that reports no version runs an older release: it differs from the others
    expect(versionWarnings([node('n1'), node('n2', { version: null })])[0]).toContain('n2 on a release that does not report its version')
    // the same release from another bundle is another version
    expect(versionWarnings([node('n1'), node('n2', { version: { tess: '1.0.0', bundle: sha('d') } })])).toHaveLength(1)
  })
})

describe('tess cluster upgrade: what it checks before it starts', () => {
  it('chosenNodes: every node by default, the named ones in the cluster\'s order, an unknown name refused', () => {
    const st = status([node('n1'), node('n2'), node('n3')])
    expect(chosenNodes(st, undefined).map((n) => n.name)).toEqual(['n1', 'n2', 'n3'])
    expect(chosenNodes(st, ['n3', 'n1']).map((n) => n.name)).toEqual(['n1', 'n3'])
    try {
      chosenNodes(st, ['n4'])
      expect.unreachable()
    } catch (e) {
      expect(e).toBeInstanceOf(TessError)
      expect((e as TessError).code).toBe('TESS_E_NOT_FOUND')
      expect((e as TessError).message).toContain('n4')
    }
  })

  it('notReady: a node down, a daemon not healthy, or an extent group short of its RF blocks the upgrade', () => {
    expect(notReady(status([node('n1'), node('n2')]), health('healthy'))).toBeUndefined()
    expect(notReady(status([node('n1'), node('n2', { state: 'down' })]), health('healthy'))).toBe('node(s) n2 down')
    expect(notReady(status([node('n1', { daemons: [{ name: 'etcd', pid: null, healthy: false, restarts: 3 }] })]), health('healthy'))).toBe('daemon(s) not healthy: etcd of n1')
    expect(notReady(status([node('n1')]), health('degraded', 2))).toMatch(/degraded: 2 extent group\(s\) under-replicated/)
  })
})

describe('protocol versions', () => {
  it('two releases run together when each speaks a protocol the other takes', () => {
    expect(protocolsCompatible({ current: 1, oldest: 1 }, { current: 1, oldest: 1 })).toBe(true)
    expect(protocolsCompatible({ current: 2, oldest: 1 }, { current: 1, oldest: 1 })).toBe(true)
    expect(protocolsCompatible({ current: 3, oldest: 2 }, { current: 1, oldest: 1 })).toBe(false)
    expect(protocolsCompatible({ current: 1, oldest: 1 }, { current: 3, oldest: 2 })).toBe(false)
  })

  it('protocolGap: an upgrade whose target cannot run beside a node is refused, naming it; a node that reports no protocol speaks 1', () => {
    const target = { tess: '2.0.0', bundle: sha('f'), protocol: { current: 3, oldest: 2 } }
    expect(protocolGap([node('n1', { version: { tess: '1.9', bundle: sha('a'), protocol: { current: 2, oldest: 1 } } })], target)).toBeUndefined()
    const gap = protocolGap([node('n1', { version: { tess: '1.9', bundle: sha('a'), protocol: { current: 2, oldest: 1 } } }), node('n2', { version: null })], target)
    expect(gap).toContain('node(s) n2 (protocol 1)')
    expect(protocolGap([node('n1'), node('n2', { version: null })], { tess: '1.0.1', bundle: sha('b'), protocol: { current: 1, oldest: 1 } })).toBeUndefined()
  })

  it('checkProtocol: a node operation without a protocol is protocol 1; a bad one is refused', () => {
    expect(() => checkProtocol(null)).not.toThrow()
    expect(() => checkProtocol(String(protocolVersion))).not.toThrow()
    for (const bad of ['0', '-1', '1.5', 'x', '']) {
      try {
        checkProtocol(bad)
        expect.unreachable(bad)
      } catch (e) {
        expect((e as TessError).code, bad).toBe('TESS_E_BAD_REQUEST')
      }
    }
  })
})

describe('tess cluster upgrade: waiting for a restarted node, and the report when it stops', () => {
  const target = sha('b')
  /** an API client whose answers come from `answer` (a status or a health), counting the looks */
  const client = (answer: (path: string, look: number) => unknown) => {
    let looks = 0
    return { get: async (p: string) => answer(p, looks++) } as unknown as import('../../src/lib/apiclient.js').ApiClient
  }

  it('waits until the node reports the new bundle with its daemons healthy, then until the cluster is healthy', async () => {
    const steps: string[] = []
    const c = client((p, look) => {
      if (p === '/v1/cluster/health') return health(look < 4 ? 'degraded' : 'healthy', look < 4 ? 1 : 0)
      if (look === 0) throw new TessError('TESS_E_UNREACHABLE', 'restarting', 'wait')
      return status([node('n1', { version: { tess: '2', bundle: look < 2 ? sha('a') : target } }), node('n2')])
    })
    const w = await waitHealthy(c, 'n1', target, 60_000, (s) => steps.push(s), 1)
    expect(w.restartMs).toBeLessThanOrEqual(w.healthyMs)
    expect(steps).toEqual(['waiting for it to report the new bundle', 'waiting until nothing is under-replicated'])
  })

  it('a node that never reports the new bundle ends the wait with TESS_E_TIMEOUT saying what it reports', async () => {
    const c = client(() => status([node('n1'), node('n2')]))
    const e = await waitHealthy(c, 'n1', target, 30, () => undefined, 1).catch((x: unknown) => x as TessError)
    expect(e).toBeInstanceOf(TessError)
    expect((e as TessError).code).toBe('TESS_E_TIMEOUT')
    expect((e as TessError).message).toContain('it reports bundle aaaaaaaaaaaa')
  })

  it('the report names the node it stopped at, the nodes done and those not yet, and how to go on', () => {
    const r = { dryRun: false, target: { tess: '2', bundle: target }, upgraded: [{ node: 'n1', from: null, restartMs: 1, healthyMs: 2 }],
      plan: [{ node: 'n1', from: null, action: 'upgrade' as const }, { node: 'n2', from: null, action: 'upgrade' as const }, { node: 'n3', from: null, action: 'current' as const }, { node: 'n4', from: null, action: 'upgrade' as const }] }
    const e = stopped(r, 'n2', new TessError('TESS_E_TIMEOUT', 'node n2 was not healthy', 'see its logs'))
    expect(e.code).toBe('TESS_E_TIMEOUT')
    expect(e.message).toBe('the upgrade stopped at node n2: node n2 was not healthy. Upgraded: n1; not yet: n2, n4')
    expect(e.hint).toMatch(/^see its logs; .*run tess cluster upgrade again to go on/)
  })
})
