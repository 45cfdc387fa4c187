import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { chosenNodes, notReady } from '../../src/bootstrap/upgrade.js'
import { versionWarnings } from '../../src/cvm/node.js'
import { runningVersion } from '../../src/lib/version.js'
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
    expect(runningVersion()).toEqual({ tess: pkg.version, bundle: null })
  })

  it('warns while nodes that are up run different bundles, naming them; down nodes and unknown versions do not count', () => {
    expect(versionWarnings([node('n1'), node('n2')])).toEqual([])
    const w = versionWarnings([node('n1'), node('n2', { version: { tess: '1.1.0', bundle: sha('b') } }), node('n3')])
    expect(w).toHaveLength(1)
    expect(w[0]).toContain('n1, n3 on 1.0.0 (bundle aaaaaaaaaaaa)')
    expect(w[0]).toContain('n2 on 1.1.0 (bundle bbbbbbbbbbbb)')
    expect(w[0]).toContain('tess cluster upgrade')
    expect(versionWarnings([node('n1'), node('n2', { state: 'down', version: { tess: '0.9', bundle: sha('c') } }), node('n3', { version: null })])).toEqual([])
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
