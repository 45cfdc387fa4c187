import { describe, expect, it } from 'vitest'
import { TessError } from '../../src/lib/errors.js'
import type { Logger } from '../../src/lib/log.js'
import type { DiskRecord, NodeRecord, NodeStatusRecord } from '../../src/lib/types.js'
import { DeviceError, nbdErrno } from '../../src/cvm/nbd/device.js'
import { PeerError } from '../../src/cvm/replication/protocol.js'
import { PlacementError, PlacementView, describeNodes, emptyRecords, pickNodes, placementErrno, type Exclusion, type ViewRecords } from '../../src/cvm/vdisk/placement.js'
import type { MapWriter } from '../../src/cvm/vdisk/mapwriter.js'
import { Vdisk, type VdiskBackend } from '../../src/cvm/vdisk/vdisk.js'
import { fakeClock } from '../helpers/clock.js'

const node = (name: string, extra: Partial<NodeRecord> = {}): NodeRecord => ({ name, address: '10.0.0.1', apiPort: 9440, nbdPort: 10809, dataPort: 10810, joinedAt: '2026-01-01T00:00:00Z', ...extra })
/** a status record; `freeBytes` undefined: the node's heartbeat has not reported a disk yet */
const status = (name: string, freeBytes?: number): NodeStatusRecord => ({
  name, at: '2026-01-01T00:00:00Z', daemons: [],
  disks: freeBytes === undefined ? {} : { [`d-${name}`]: { capacityBytes: 4 * freeBytes, freeBytes, usedBytes: 0, dev: 1 } },
})
const disk = (id: string, nodeName: string): DiskRecord => ({ id, node: nodeName, path: `/disks/${id}`, addedAt: '2026-01-01T00:00:00Z' })

function records(r: { nodes?: NodeRecord[], statuses?: NodeStatusRecord[], disks?: DiskRecord[] }): ViewRecords {
  const out = emptyRecords()
  for (const n of r.nodes ?? []) out.nodes.set(n.name, n)
  for (const s of r.statuses ?? []) out.statuses.set(s.name, s)
  for (const d of r.disks ?? []) out.disks.set(d.id, d)
  return out
}

function fill(view: PlacementView, r: ViewRecords, revision = 10): void {
  view.reset('nodes', r.nodes, revision)
  view.reset('statuses', r.statuses, revision)
  view.reset('disks', r.disks, revision)
}


function logger(): Logger & { lines: string[] } {
  const lines: string[] = []
  return { lines, info: (m) => lines.push(`INFO ${m}`), warn: (m) => lines.push(`WARN ${m}`), error: (m) => lines.push(`ERROR ${m}`) }
}

/** The cluster of issue 20 right after create: three nodes up, disks registered, n1's own status first. */
const threeUp = () => records({
  nodes: [node('n1'), node('n2'), node('n3')],
  statuses: [status('n1', 5e9), status('n2'), status('n3')], // n2, n3: heartbeat not yet with the disk
  disks: [disk('1', 'n1'), disk('2', 'n2'), disk('3', 'n3')],
})

describe('placement: which nodes may hold a new extent group', () => {
  it('counts a node with a registered disk even before its heartbeat reports the disk (issue 20)', () => {
    const nodes = describeNodes(threeUp(), 'n1')
    expect(nodes.map((n) => [n.name, n.placeable])).toEqual([['n1', true], ['n2', true], ['n3', true]])
    expect(pickNodes(nodes, 2, 'n1')).toEqual(['n1', 'n2'])
  })

  it('puts this node first, then the others by free space, and says why each other node is left out', () => {
    const r = records({
      nodes: [node('a'), node('b'), node('c'), node('d', { draining: true }), node('e'), node('f')],
      statuses: [status('a', 1e9), status('b', 2e9), status('c', 9e9), status('d', 9e9), status('e', 9e9), status('ghost', 9e9)],
      disks: [disk('1', 'a'), disk('2', 'b'), disk('3', 'c'), disk('4', 'd'), disk('6', 'f')],
    })
    const nodes = describeNodes(r, 'a')
    expect(pickNodes(nodes, 3, 'a')).toEqual(['a', 'c', 'b'])
    expect(pickNodes(nodes, 3, 'a', new Map([['c', { reason: 'holds a replica' }]]))).toEqual(['a', 'b'])
    const why = Object.fromEntries(nodes.map((n) => [n.name, n.reason]))
    expect(why).toEqual({
      a: null, b: null, c: null,
      d: 'draining: being removed',
      e: 'no disk registered',
      f: 'down: no status record, its CVM is not running or its lease expired',
      ghost: 'not a member of the cluster: no node record',
    })
  })

  it('a CVM is up to itself before its own status record exists', () => {
    const r = records({ nodes: [node('a')], disks: [disk('1', 'a')] })
    expect(pickNodes(describeNodes(r, 'a'), 1, 'a')).toEqual(['a'])
  })
})

describe('PlacementView: follows etcd changes', () => {
  it('applies changes in revision order and keeps newer ones over an older snapshot', () => {
    const view = new PlacementView({ self: 'n1', log: logger(), read: async () => emptyRecords() })
    fill(view, records({ nodes: [node('n1'), node('n2')], statuses: [status('n1', 1e9)], disks: [disk('1', 'n1')] }), 10)
    expect(view.info(2).ready).toBe(false)
    // watch events: n2 up (rev 12), its disk (rev 13)
    view.put('statuses', 'n2', status('n2', 1e9), 12)
    view.put('disks', '2', disk('2', 'n2'), 13)
    expect(view.info(2)).toMatchObject({ ready: true, placeable: ['n1', 'n2'] })
    // a re-read snapshot taken at rev 11 (before those events) does not undo them
    fill(view, records({ nodes: [node('n1'), node('n2')], statuses: [status('n1', 1e9)], disks: [disk('1', 'n1')] }), 11)
    expect(view.info(2).placeable).toEqual(['n1', 'n2'])
    // an event older than what was applied is ignored; a delete wins over an older snapshot too
    view.delete('statuses', 'n2', 14)
    view.put('statuses', 'n2', status('n2', 1e9), 13)
    expect(view.info(2).placeable).toEqual(['n1'])
    fill(view, records({ nodes: [node('n1'), node('n2')], statuses: [status('n1', 1e9), status('n2', 1e9)], disks: [disk('1', 'n1'), disk('2', 'n2')] }), 13)
    expect(view.info(2).placeable).toEqual(['n1'])
    // a snapshot newer than every change replaces the view
    fill(view, records({ nodes: [node('n1'), node('n2')], statuses: [status('n1', 1e9), status('n2', 1e9)], disks: [disk('1', 'n1'), disk('2', 'n2')] }), 20)
    expect(view.info(2).placeable).toEqual(['n1', 'n2'])
  })

  it('reports watching only when every prefix is followed', () => {
    const view = new PlacementView({ self: 'n1', log: logger(), read: async () => emptyRecords() })
    view.setSynced('nodes', true)
    view.setSynced('statuses', true)
    expect(view.info(1).watching).toBe(false)
    view.setSynced('disks', true)
    expect(view.info(1).watching).toBe(true)
    view.setSynced('statuses', false)
    expect(view.info(1).watching).toBe(false)
  })
})

describe('PlacementView.place: waits a bounded time for healthy nodes', () => {
  const oneUp = () => records({ nodes: [node('n1'), node('n2'), node('n3')], statuses: [status('n1', 1e9)], disks: [disk('1', 'n1'), disk('2', 'n2'), disk('3', 'n3')] })

  it('places at once when the view has enough nodes (no etcd read)', async () => {
    let reads = 0
    const clock = fakeClock()
    const view = new PlacementView({ self: 'n1', log: logger(), clock, read: async () => { reads++; return threeUp() } })
    fill(view, threeUp())
    expect(await view.place(2, { what: 'a new extent group of vDisk cv' })).toEqual(['n1', 'n2'])
    expect(reads).toBe(0)
    expect(clock.sleeps).toEqual([])
  })

  it('waits for a node that comes up while it waits (a watch event wakes it)', async () => {
    const log = logger()
    let view: PlacementView | undefined
    const clock = fakeClock((n) => {
      // on the third sleep, node n2's status arrives through the watch
      if (n === 3) view!.put('statuses', 'n2', status('n2', 1e9), 20)
    })
    view = new PlacementView({ self: 'n1', log, clock, waitMs: 10_000, recheckMs: 500, read: async () => oneUp() })
    fill(view, oneUp())
    expect(await view.place(2, { what: 'a new extent group of vDisk cv' })).toEqual(['n1', 'n2'])
    expect(clock.sleeps).toEqual([500, 500, 500])
    expect(log.lines.some((l) => l.startsWith('WARN a new extent group of vDisk cv: 1 of 2 nodes available (n1); waiting up to 10000 ms'))).toBe(true)
    expect(log.lines.some((l) => l.includes('placed on n1, n2 after waiting 1500 ms'))).toBe(true)
  })

  it('decides on a fresh read of etcd: a view behind etcd does not fail a write, and is re-read', async () => {
    const log = logger()
    const clock = fakeClock()
    const view = new PlacementView({ self: 'n1', log, clock, read: async () => threeUp() })
    let stale = 0
    view.onStale = () => { stale++ }
    fill(view, oneUp()) // the watch has not delivered n2 and n3 yet
    expect(await view.place(2, { what: 'a new extent group of vDisk cv' })).toEqual(['n1', 'n2'])
    expect(clock.sleeps).toEqual([]) // no waiting: the direct read had them
    expect(stale).toBe(1)
    expect(log.lines.some((l) => l.includes('placement view was behind etcd'))).toBe(true)
  })

  it('fails after placementWaitMs with an error naming the nodes up and why the others cannot be used (EIO, not ENOSPC)', async () => {
    const log = logger()
    const clock = fakeClock()
    let reads = 0
    const r = records({ nodes: [node('n1'), node('n2'), node('n3')], statuses: [status('n1', 1e9), status('n2', 1e9)], disks: [disk('1', 'n1'), disk('3', 'n3')] })
    const view = new PlacementView({ self: 'n1', log, clock, waitMs: 10_000, recheckMs: 500, read: async () => { reads++; return r } })
    fill(view, r)
    const start = clock.now()
    const err = await view.place(2, { what: 'a new extent group of vDisk cv' }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(PlacementError)
    const pe = err as PlacementError
    expect(pe.code).toBe('TESS_E_TOO_FEW_NODES')
    expect(pe.message).toBe('a new extent group of vDisk cv needs 2 healthy nodes, 1 available (n1) after waiting 10000 ms; nodes up: n1, n2; ' +
      'not usable: n2 (no disk registered), n3 (down: no status record, its CVM is not running or its lease expired)')
    expect(placementErrno(pe)).toBe(nbdErrno.EIO)
    expect(clock.now() - start).toBe(10_000)
    expect(clock.sleeps.every((ms) => ms === 500)).toBe(true)
    expect(reads).toBe(21) // one read at once, then one per recheck, the last at the deadline
    expect(log.lines.at(-1)).toBe(`ERROR ${pe.message}`)
  })

  it('keeps to the caller\'s deadline across retries, and names the nodes the caller left out', async () => {
    const clock = fakeClock()
    const view = new PlacementView({ self: 'n1', log: logger(), clock, waitMs: 10_000, read: async () => threeUp() })
    fill(view, threeUp())
    const exclude = new Map<string, Exclusion>([['n2', { reason: 'cannot pick a disk there: node n2: connection refused' }], ['n3', { reason: 'holds a replica of this extent group' }]])
    const deadline = clock.now() + 1_000
    const err = await view.place(2, { what: 'x', exclude, deadline }).catch((e: unknown) => e) as PlacementError
    expect(err.message).toContain('not usable: n2 (cannot pick a disk there: node n2: connection refused), n3 (holds a replica of this extent group)')
    expect(clock.sleeps.reduce((a, b) => a + b, 0)).toBe(1_000)
  })

  it('says ENOSPC only when the nodes missing are full', async () => {
    const clock = fakeClock()
    const view = new PlacementView({ self: 'n1', log: logger(), clock, waitMs: 0, read: async () => threeUp() })
    fill(view, threeUp())
    const full = new Map<string, Exclusion>([['n2', { reason: 'no disk with room for an extent group', noSpace: true }], ['n3', { reason: 'no disk with room for an extent group', noSpace: true }]])
    const err = await view.place(2, { what: 'x', exclude: full }).catch((e: unknown) => e) as PlacementError
    expect(err.code).toBe('TESS_E_CAPACITY')
    expect(placementErrno(err)).toBe(nbdErrno.ENOSPC)
  })
})

describe('placement errors as the NBD client sees them', () => {
  it('maps causes to errnos', () => {
    expect(placementErrno(new TessError('TESS_E_CAPACITY', 'full'))).toBe(nbdErrno.ENOSPC)
    expect(placementErrno(new PeerError('errno', 'node n2: full', nbdErrno.ENOSPC))).toBe(nbdErrno.ENOSPC)
    expect(placementErrno(Object.assign(new Error('write'), { code: 'ENOSPC' }))).toBe(nbdErrno.ENOSPC)
    expect(placementErrno(new TessError('TESS_E_TOO_FEW_NODES', 'few'))).toBe(nbdErrno.EIO)
    expect(placementErrno(new PeerError('unreachable', 'node n2: down'))).toBe(nbdErrno.EIO)
    expect(placementErrno(new Error('anything'))).toBe(nbdErrno.EIO)
  })

  it('a vDisk write that cannot get an extent group fails with the errno the backend gave, EIO by default', async () => {
    const log = logger()
    const make = (err: unknown) => {
      const backend: VdiskBackend = {
        mapWriter: {} as MapWriter,
        mapKey: (vb) => `k${vb}`,
        newEgroups: () => Promise.reject(err),
        replaceFailed: async () => undefined,
        log,
      }
      return new Vdisk('1', 'cv', 16 * 1024 * 1024, new Map(), new Map(), backend)
    }
    const few = new DeviceError(nbdErrno.EIO, 'a new extent group of vDisk cv needs 2 healthy nodes, 1 available (n1)')
    await expect(make(few).write(0, Buffer.alloc(4096), false)).rejects.toMatchObject({ errno: nbdErrno.EIO, message: few.message })
    await expect(make(new DeviceError(nbdErrno.ENOSPC, 'full')).write(0, Buffer.alloc(4096), false)).rejects.toMatchObject({ errno: nbdErrno.ENOSPC })
    await expect(make(new Error('etcd: deadline exceeded')).write(0, Buffer.alloc(4096), false)).rejects.toMatchObject({ errno: nbdErrno.EIO })
    expect(log.lines).toContain(`ERROR vDisk cv: cannot create an extent group: ${few.message}`)
  })
})
