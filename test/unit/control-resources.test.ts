import { describe, expect, it } from 'vitest'
import { Containers } from '../../src/cvm/control/containers.js'
import type { ControlContext } from '../../src/cvm/control/context.js'
import { Images } from '../../src/cvm/control/images.js'
import type { ContainerRecord, CsmRecord } from '../../src/cvm/control/records.js'
import { pickCsm, pickCsmNode, roomError } from '../../src/cvm/control/scheduler.js'
import type { Volumes } from '../../src/cvm/control/volumes.js'
import type { HostCapacity } from '../../src/lib/csm-types.js'
import { TessError } from '../../src/lib/errors.js'
import type { Logger } from '../../src/lib/log.js'
import type { NamedCsmStats, NodeCall, NodeOp, PullAnswer, Req } from '../../src/lib/rpc/node-ops.js'

/**
 * The logic of the container control's resources with a fake node call (and, where a resource
 * reads records, a fake context): where a CSM and a container are placed, how a pull on several
 * nodes answers, which stats are shown. No etcd and no other node is needed.
 */
const GiB = 2 ** 30
const quiet: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined }

const csm = (name: string, node: string, cpus: number, memoryBytes: number): CsmRecord => ({ name, id: name, node, cpus, memoryBytes, runtime: 'runc', createdAt: 't' })
const container = (name: string, c: string, cpus: number | null, memoryBytes: number | null): ContainerRecord => ({
  name, id: '0123456789ab', csm: c, node: 'n1', image: 'img', cpus, memoryBytes, network: 'none', state: 'created', apiNode: 'n1', createdAt: 't',
})

/** A node call that answers each node from a table, and records every call. */
function fakeCall(answers: Partial<Record<NodeOp, (node: string, req: unknown) => unknown>>): { call: NodeCall, calls: Array<[string, NodeOp, unknown]> } {
  const calls: Array<[string, NodeOp, unknown]> = []
  const call = (async <K extends NodeOp>(node: string, op: K, req: Req<K>) => {
    calls.push([node, op, req])
    const a = answers[op]
    if (a === undefined) throw new Error(`unexpected node operation ${op}`)
    return a(node, req)
  }) as NodeCall
  return { call, calls }
}

async function refused(p: Promise<unknown>): Promise<TessError> {
  const e = await p.then(() => undefined, (x: unknown) => x)
  expect(e).toBeInstanceOf(TessError)
  return e as TessError
}

describe('CSM placement: the node with room and the most free capacity', () => {
  const caps: Record<string, HostCapacity | Error> = {
    n1: { cpus: 8, memoryBytes: 16 * GiB },
    n2: { cpus: 4, memoryBytes: 8 * GiB },
    n3: new TessError('TESS_E_PRECONDITION', 'containers are unavailable on node n3: no cgroups', 'fix it'),
  }
  const { call, calls } = fakeCall({
    'node.capacity': (node) => {
      const c = caps[node]!
      if (c instanceof Error) throw c
      return c
    },
  })
  const csms = [csm('c1', 'n1', 6, 8 * GiB), csm('gone', 'n2', 4, 8 * GiB)]
  csms[1]!.deleting = true // a CSM being deleted holds nothing

  it('asks each candidate node its capacity and picks by free share, leaving out a node that cannot run containers', async () => {
    expect(await pickCsmNode(call, { name: 'new', cpus: 1, memoryBytes: GiB }, ['n1', 'n2', 'n3'], csms)).toBe('n2')
    expect(calls.map(([n, op]) => `${n} ${op}`).sort()).toEqual(['n1 node.capacity', 'n2 node.capacity', 'n3 node.capacity'])
    // n2 does not hold 5 cpus; n1 has 2 free: neither fits
    const e = await refused(pickCsmNode(call, { name: 'big', cpus: 3, memoryBytes: GiB }, ['n1', 'n2'], [...csms, csm('c2', 'n2', 2, GiB)]))
    expect(e.code).toBe('TESS_E_CAPACITY')
    expect(e.message).toBe('cannot create CSM "big" (3 cpus, 1 GiB): no node has room (n1: 2 cpus and 8 GiB free; n2: 2 cpus and 7 GiB free)')
  })

  it('when no node can run containers, that is the error, not capacity', async () => {
    const e = await refused(pickCsmNode(call, { name: 'x', cpus: 1, memoryBytes: GiB }, ['n3'], csms))
    expect(e.code).toBe('TESS_E_PRECONDITION')
    expect(e.message).toContain('no node can run containers (containers are unavailable on node n3: no cgroups)')
    expect((await refused(pickCsmNode(call, { name: 'x', cpus: 1, memoryBytes: GiB }, [], csms))).message).toContain('no node is up')
  })

  it('roomError names what the other CSMs were given', () => {
    const room = { cap: { cpus: 8, memoryBytes: 16 * GiB }, usedCpus: 6, usedMemoryBytes: 8 * GiB, names: ['c1'] }
    expect(roomError('x', 'n1', 2, 8 * GiB, room)).toBeUndefined()
    expect(roomError('x', 'n1', 2.5, GiB, room)?.message).toBe('cannot place CSM "x" on node n1: it asks 2.5 cpus, the node has 8 of which 6 are given to CSM(s) c1 (2 free)')
    expect(roomError('x', 'n1', 1, 9 * GiB, room)?.message).toBe('cannot place CSM "x" on node n1: it asks 9 GiB of memory, the node has 16 GiB of which 8 GiB are given to CSM(s) c1 (8 GiB free)')
  })
})

describe('container placement: the CSM it fits in without overcommit, with the most room', () => {
  const a = csm('a', 'n1', 2, 2 * GiB)
  const b = csm('b', 'n2', 2, 2 * GiB)
  const small = csm('small', 'n1', 0.5, GiB)

  it('prefers room, then fewer containers, then the name', () => {
    expect(pickCsm({ name: 'x' }, [b, a], []).name).toBe('a')
    expect(pickCsm({ name: 'x', cpus: 1 }, [a, b], [container('c1', 'a', 1, null)]).name).toBe('b')
    expect(pickCsm({ name: 'x' }, [a, b], [container('c1', 'a', null, null)]).name).toBe('b')
    // b is full (overcommit), a has room though less of its share is free than small's
    expect(pickCsm({ name: 'x', cpus: 0.5 }, [a, b, small], [container('c1', 'a', 1.6, null), container('c2', 'b', 2, 2 * GiB)]).name).toBe('small')
    // more free memory does not beat room for what it asks: big has 0.2 cpus left, tight 0.5
    const big = csm('big', 'n1', 4, 8 * GiB)
    const tight = csm('tight', 'n2', 1, GiB)
    const used = [container('c1', 'big', 3.8, null), container('c2', 'tight', 0.5, 0.9 * GiB)]
    expect(pickCsm({ name: 'x', cpus: 0.5 }, [big, tight], used).name).toBe('tight')
    expect(pickCsm({ name: 'x', cpus: 0.1 }, [big, tight], used).name).toBe('big')
  })

  it('a container bigger than every CSM is a capacity error naming them', async () => {
    const e = await refused(Promise.resolve().then(() => pickCsm({ name: 'x', cpus: 3 }, [a, small], [])))
    expect(e.code).toBe('TESS_E_CAPACITY')
    expect(e.message).toBe('cannot run container "x": no CSM is big enough (it asks 3 cpus and -; largest: a 2 cpus 2048 MiB, small 0.5 cpus 1024 MiB)')
  })
})

/** The parts of the context the resources below read. */
function fakeContext(call: NodeCall, o: { up: string[], containers?: ContainerRecord[] }): ControlContext {
  return {
    self: 'n1', log: quiet, call, secretsKey: undefined,
    upNodes: async () => o.up,
    nodeRecord: async (name: string) => {
      if (!['n1', 'n2', 'n3'].includes(name)) throw new TessError('TESS_E_NOT_FOUND', `host "${name}" is not a node of this cluster`, 'see `tess host list`')
      return { name }
    },
    csmRecord: async (name: string) => csm(name, 'n2', 1, GiB),
    containerRecords: async () => o.containers ?? [],
    containerRecord: async (name: string) => {
      const r = (o.containers ?? []).find((c) => c.name === name)
      if (r === undefined) throw new TessError('TESS_E_NOT_FOUND', `no container named "${name}"`, 'see `tess container list`')
      return r
    },
  } as unknown as ControlContext
}

describe('Images: a pull on several nodes', () => {
  const answer = (node: string): PullAnswer => ({ ref: 'docker.io/library/busybox:1.36', digest: 'sha256:1', sizeBytes: 10, layers: 1, platform: 'linux/amd64', downloadedBytes: node === 'n1' ? 10 : 0, seconds: 1 })

  it('pulls on every up node and answers per node', async () => {
    const { call, calls } = fakeCall({ 'image.pull': (node) => answer(node) })
    const r = await new Images(fakeContext(call, { up: ['n1', 'n2'] })).pull({ ref: 'busybox:1.36' })
    expect(r.nodes).toEqual([{ node: 'n1', downloadedBytes: 10, seconds: 1 }, { node: 'n2', downloadedBytes: 0, seconds: 1 }])
    expect(calls).toEqual([['n1', 'image.pull', { ref: 'busybox:1.36' }], ['n2', 'image.pull', { ref: 'busybox:1.36' }]])
  })

  it('names the node that failed, keeping its code; a pull on one node fails as that node failed', async () => {
    const denied = new TessError('TESS_E_FORBIDDEN', 'refused by registry policy rule "deny docker.io/**"', 'ask an operator')
    const { call } = fakeCall({
      'image.pull': (node) => {
        if (node === 'n2') throw denied
        return answer(node)
      },
    })
    const images = new Images(fakeContext(call, { up: ['n1', 'n2'] }))
    const e = await refused(images.pull({ ref: 'busybox:1.36' }))
    expect([e.code, e.message, e.hint]).toEqual(['TESS_E_FORBIDDEN', 'on node n2: refused by registry policy rule "deny docker.io/**"', 'ask an operator'])
    expect(await refused(images.pull({ ref: 'busybox:1.36', node: 'n2' }))).toBe(denied)
    // the CSM's node (n2 in this context)
    expect(await refused(images.pull({ ref: 'busybox:1.36', csm: 'web' }))).toBe(denied)
    expect((await refused(images.pull({ ref: 'busybox:1.36', csm: 'web', node: 'n1' }))).code).toBe('TESS_E_INVALID')
    expect((await refused(images.pull({ ref: 'busybox:1.36', node: 'n3' }))).code).toBe('TESS_E_UNREACHABLE')
    expect((await refused(images.pull({ ref: 'Not A Ref' }))).code).toBe('TESS_E_INVALID')
  })

  it('pulls in progress: every up node asked, the image matched in any spelling, a node that cannot tell left out', async () => {
    const view = (ref: string, layersDone: number) => ({ ref, state: 'pulling' as const, startedAt: '2026-01-01T00:00:00.000Z', layersTotal: 3, layersDone, bytesTotal: 300, bytesDone: layersDone * 100 })
    const { call, calls } = fakeCall({
      'image.pulls': (node) => {
        if (node === 'n3') throw new TessError('TESS_E_NOT_FOUND', 'unknown node operation image.pulls', 'an older release')
        return node === 'n1' ? [view('busybox:1.36', 1), view('docker.io/alpine', 0)] : [view('docker.io/busybox:1.36', 2)]
      },
    })
    const images = new Images(fakeContext(call, { up: ['n1', 'n2', 'n3'] }))
    expect(await images.pulls('busybox:1.36')).toEqual([{ ...view('busybox:1.36', 1), node: 'n1' }, { ...view('docker.io/busybox:1.36', 2), node: 'n2' }])
    expect((await images.pulls()).map((p) => [p.node, p.ref])).toEqual([['n1', 'busybox:1.36'], ['n1', 'docker.io/alpine'], ['n2', 'docker.io/busybox:1.36']])
    expect(await images.pulls('alpine:3')).toEqual([])
    expect(calls.filter((c) => c[1] === 'image.pulls').map((c) => c[0])).toEqual(['n1', 'n2', 'n3', 'n1', 'n2', 'n3', 'n1', 'n2', 'n3'])
    expect((await refused(images.pulls('Not A Ref'))).code).toBe('TESS_E_INVALID')
  })

  it('remove answers the nodes that had the image, and NOT_FOUND when none did', async () => {
    const { call } = fakeCall({ 'image.remove': (node) => ({ removed: node === 'n2' }) })
    const images = new Images(fakeContext(call, { up: ['n1', 'n2'] }))
    expect(await images.remove({ ref: 'busybox:1.36' })).toEqual({ ref: 'docker.io/busybox:1.36', nodes: ['n2'] })
    expect((await refused(images.remove({ ref: 'busybox:1.36', node: 'n1' }))).code).toBe('TESS_E_NOT_FOUND')
  })
})

describe('Containers: stats', () => {
  const u = { cpuUsageNs: 1, cpuCpus: 0.5, cpuThrottledPeriods: 0, cpuLimitCpus: 1, memoryUsageBytes: 1, memoryLimitBytes: 2, oomKills: 0, pidsCurrent: 1, pidsLimit: 10 }
  const stats = (name: string, containers: string[]): NamedCsmStats => ({
    name, readAt: 'now', csm: { ...u, containers: containers.length }, containers: containers.map((c) => ({ ...u, id: '0123456789ab', name: c })),
  })
  const records = [container('web-1', 'web', 1, null), container('db', 'db', null, null)]

  it('shows every CSM of the up nodes, and only containers that have a record', async () => {
    const { call, calls } = fakeCall({ 'stats': (node) => (node === 'n1' ? [stats('web', ['web-1', 'stray'])] : [stats('db', ['db'])]) })
    const s = await new Containers(fakeContext(call, { up: ['n1', 'n2'], containers: records }), {} as Volumes).stats()
    expect(s.csms.map((c) => [c.csm, c.node])).toEqual([['db', 'n2'], ['web', 'n1']])
    expect(s.containers.map((c) => [c.name, c.csm, c.node])).toEqual([['db', 'db', 'n2'], ['web-1', 'web', 'n1']])
    expect(calls.map(([n, , req]) => [n, req])).toEqual([['n1', {}], ['n2', {}]])
  })

  it('one container: asks its node for its CSM only; a container without stats is not running', async () => {
    const { call, calls } = fakeCall({ 'stats': () => [stats('web', ['web-1'])] })
    const s = await new Containers(fakeContext(call, { up: ['n1', 'n2'], containers: records }), {} as Volumes).stats('web-1')
    expect(s.containers.map((c) => c.name)).toEqual(['web-1'])
    expect(calls).toEqual([['n1', 'stats', { csm: 'web' }]])
    const { call: none } = fakeCall({ 'stats': () => [stats('web', [])] })
    const e = await refused(new Containers(fakeContext(none, { up: ['n1'], containers: records }), {} as Volumes).stats('web-1'))
    expect([e.code, e.message]).toEqual(['TESS_E_CONFLICT', 'container "web-1" is not running: it has no stats'])
  })
})
