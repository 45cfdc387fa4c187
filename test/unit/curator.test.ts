import { describe, expect, it } from 'vitest'
import { repairWork } from '../../src/cvm/curator/curator.js'
import { assessHealth } from '../../src/cvm/curator/health.js'
import type { EgroupRecord } from '../../src/cvm/vdisk/owner.js'
import type { VdiskRecord } from '../../src/lib/types.js'

/** The curator's decisions from records: which groups are healthy, under-replicated or lost, and which vDisks get a repair. */
const MiB = 1024 * 1024
const vdisk = (id: string, name: string, rf: number, state: VdiskRecord['state'] = 'ready'): VdiskRecord => ({ id, name, sizeBytes: 64 * MiB, rf, createdAt: '', state })
const eg = (id: string, vdiskId: string, nodes: string[]): EgroupRecord => ({ id, vdiskId, replicas: nodes.map((n) => ({ node: n, diskId: `${n}-d` })), createdAt: '' })

const vdisks = [vdisk('1', 'a', 2), vdisk('2', 'b', 3), vdisk('3', 'c', 1), vdisk('4', 'gone', 2, 'deleting')]
const egroups = [
  eg('10', '1', ['n1', 'n2']), // healthy
  eg('11', '1', ['n1', 'n3']), // n3 down: under-replicated
  eg('12', '1', ['n1']), // went on degraded: under-replicated
  eg('20', '2', ['n1', 'n2', 'n3']), // RF 3 with n3 down
  eg('30', '3', ['n3']), // RF 1 on n3: lost
  eg('31', '3', ['n2']),
  eg('40', '4', ['n3']), // a vDisk being deleted: not counted
]
const upNodes = new Set(['n1', 'n2'])
const up = { up: upNodes, offlineDisks: new Map() }
/** every node up, or those named, with no disk offline */
const live = (nodes: string[]) => ({ up: new Set(nodes), offlineDisks: new Map() })
const extents = new Map([['10', 2], ['11', 3], ['12', 1], ['20', 4], ['30', 5]])

describe('curator: health and repair work from the records', () => {
  it('counts healthy, under-replicated and lost groups per vDisk and in total, with the bytes of their extents', () => {
    const h = assessHealth(vdisks, egroups, up, extents)
    expect(h.vdisks.map((v) => [v.name, v.egroups, v.healthy, v.underReplicated, v.lost, v.bytesToReprotect / MiB, v.bytesLost / MiB, v.nodesDown.join(',')])).toEqual([
      ['a', 3, 1, 2, 0, 4, 0, 'n3'],
      ['b', 1, 0, 1, 0, 4, 0, 'n3'],
      ['c', 2, 1, 0, 1, 0, 5, 'n3'],
    ])
    expect(h.total).toEqual({ egroups: 6, healthy: 2, underReplicated: 3, lost: 1, bytesToReprotect: 8 * MiB, bytesLost: 5 * MiB, nodesDown: ['n3'] })
  })

  it('repairs groups on nodes past their grace and groups with fewer than RF copies; not those on a node still in its grace, nor lost ones', () => {
    const members = new Set(['n1', 'n2', 'n3'])
    // n3 is down but still in its grace: only the degraded group of a needs copies
    expect(repairWork(vdisks, egroups, up, new Set(), members).map((w) => [w.vdisk.name, w.down, w.egroups])).toEqual([['a', [], 1]])
    // past the grace: a (two groups, one on n3, one degraded) and b; c's group on n3 is lost (nothing to copy), gone is being deleted
    expect(repairWork(vdisks, egroups, up, new Set(['n3']), members).map((w) => [w.vdisk.name, w.down, w.egroups])).toEqual([['a', ['n3'], 2], ['b', ['n3'], 1]])
    // a node removed from the cluster while down is no member: its replicas are repaired at once
    expect(repairWork(vdisks, egroups, up, new Set(), new Set(['n1', 'n2'])).map((w) => [w.vdisk.name, w.down])).toEqual([['a', ['n3']], ['b', ['n3']]])
  })

  it('a cluster with every copy up needs nothing', () => {
    const all = ['n1', 'n2', 'n3']
    const h = assessHealth(vdisks, egroups.filter((e) => e.id !== '12'), live(all), extents)
    expect(h.total.underReplicated + h.total.lost).toBe(0)
    expect(repairWork(vdisks, egroups.filter((e) => e.id !== '12'), live(all), new Set(), new Set(all))).toEqual([])
  })

  it('a disk offline on a node that is up: its replicas count as missing at once and are repaired once it is past its grace, named as lost disks', () => {
    const all = ['n1', 'n2', 'n3']
    const withDiskLost = { up: new Set(all), offlineDisks: new Map([['n2-d', { id: 'n2-d', node: 'n2', path: '/srv/d', addedAt: '' }]]) }
    const rest = egroups.filter((e) => e.id !== '12')
    const h = assessHealth(vdisks, rest, withDiskLost, extents)
    // 10 (n1, n2) and 20 (n1, n2, n3) lose a copy; 31 (RF 1 on n2) is unreadable
    expect([h.total.healthy, h.total.underReplicated, h.total.lost]).toEqual([2, 2, 1])
    expect(h.total.nodesDown).toEqual([])
    // in its grace: nothing to do; past it: a and b, with the disk named, no node down
    expect(repairWork(vdisks, rest, withDiskLost, new Set(), new Set(all))).toEqual([])
    expect(repairWork(vdisks, rest, withDiskLost, new Set(), new Set(all), new Set(['n2-d'])).map((w) => [w.vdisk.name, w.down, w.lostDisks, w.egroups])).toEqual([['a', [], ['n2-d'], 1], ['b', [], ['n2-d'], 1]])
  })
})

describe('curator settings from a request body', () => {
  it('takes each setting within its bounds, null to lift the repair limit, nothing else', async () => {
    const { parseSettingsPatch, settingsOf } = await import('../../src/cvm/curator/settings.js')
    expect(parseSettingsPatch({ nodeDownGraceMs: 60_000, repairBytesPerSec: 2 ** 27 })).toEqual({ nodeDownGraceMs: 60_000, repairBytesPerSec: 2 ** 27 })
    expect(parseSettingsPatch({ repairBytesPerSec: null })).toEqual({ repairUnlimited: true })
    expect(() => parseSettingsPatch({ nodeDownGraceMs: 100 })).toThrow(/nodeDownGraceMs/)
    expect(() => parseSettingsPatch({ scrubBytesPerSec: 10 })).toThrow(/scrubBytesPerSec/)
    expect(() => parseSettingsPatch({ graceMs: 1 })).toThrow(/unknown setting "graceMs"/)
    expect(() => parseSettingsPatch([])).toThrow()
    expect(settingsOf(undefined)).toEqual({ nodeDownGraceMs: 30_000, repairBytesPerSec: null, scrubBytesPerSec: 64 * 2 ** 20 })
  })
})
