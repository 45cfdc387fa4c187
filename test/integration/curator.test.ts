import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Etcd3, Lease } from 'etcd3'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Curator } from '../../src/cvm/curator/curator.js'
import { EventLog, parseEventQuery } from '../../src/cvm/events.js'
import { eventKinds } from '../../src/lib/event-types.js'
import { ExtentCounts, clusterHealth, vdisksNotHealthy, type Liveness } from '../../src/cvm/curator/health.js'
import { parseSettingsPatch, readSettings, updateSettings } from '../../src/cvm/curator/settings.js'
import type { EgroupRecord } from '../../src/cvm/vdisk/owner.js'
import { getJson, keys } from '../../src/lib/etcd.js'
import type { Logger } from '../../src/lib/log.js'
import type { CuratorStatus, NodeRecord, NodeStatusRecord, VdiskRecord } from '../../src/lib/types.js'
import { waitFor } from '../helpers/cluster.js'
import { startTestEtcd, type TestEtcd } from '../helpers/etcd.js'

const MiB = 1024 * 1024
const names = ['n1', 'n2', 'n3']
const node = (name: string): NodeRecord => ({ name, address: '127.0.0.1', apiPort: 1, nbdPort: 2, dataPort: 3, joinedAt: '2026-01-01T00:00:00Z' })
const status = (name: string): NodeStatusRecord => ({ name, at: '2026-01-01T00:00:00Z', daemons: [], disks: {} })
const eg = (id: string, nodes: string[]): EgroupRecord => ({ id, vdiskId: '1', replicas: nodes.map((n) => ({ node: n, diskId: `${n}-d` })), createdAt: '' })

/**
 * The curator's election and scans against a real etcd (one member on loopback), three CVMs' curators
 * each with its own client: one master; a node whose status goes is repaired after the grace, at the
 * vDisk's owner; the master's death (its client gone, its election lease expiring) elects another,
 * which repairs a group left with fewer than RF copies. The repair itself is the test's: it moves
 * the group's record as a CVM's repair would (the copies are Vdisk.repair's, tested with replicas).
 */
describe('curator election and scans on a real etcd', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-curator-'))
  let testEtcd: TestEtcd
  const clients: Etcd3[] = []
  const curators = new Map<string, Curator>()
  const lines: string[] = []
  const log = (n: string): Logger => ({ info: (m) => lines.push(`${n} ${m}`), warn: (m) => lines.push(`${n} ${m}`), error: (m) => lines.push(`${n} ${m}`) })
  const connect = () => {
    const c = testEtcd.connect()
    clients.push(c)
    return c
  }
  let etcd: Etcd3

  beforeAll(async () => {
    testEtcd = await startTestEtcd(root)
    etcd = connect()
  }, 30_000)

  afterAll(async () => {
    for (const c of curators.values()) await c.stop()
    await testEtcd?.stop()
    fs.rmSync(root, { recursive: true, force: true })
  })

  it('elects one master, repairs after the grace at the owner, fails over when the master dies, repairs degraded groups', async () => {
    const put = (k: string, v: unknown) => etcd.put(k).value(JSON.stringify(v)).exec()
    const leases = new Map<string, Lease>()
    for (const n of names) {
      await put(keys.node(n), node(n))
      const l = etcd.lease(30)
      leases.set(n, l)
      await l.put(keys.nodeStatus(n)).value(JSON.stringify(status(n)))
    }
    const v: VdiskRecord = { id: '1', name: 'a', sizeBytes: 64 * MiB, rf: 2, createdAt: '', state: 'ready' }
    await put(keys.vdisk('1'), v)
    await put(keys.egroup('1', '10'), eg('10', ['n1', 'n3']))
    await put(keys.egroup('1', '11'), eg('11', ['n1', 'n2']))
    await put(keys.vdiskMap('1', 0), { eg: '10', s: 0 })
    await put(keys.vdiskMap('1', 1), { eg: '10', s: 1 })
    await etcd.put(keys.vdiskOwner('1')).value('n2/s1').exec()

    // what each curator is told about nodes (its placement view, in a CVM)
    let upNow = [...names]
    let wake: Array<() => void> = []
    const bump = () => { const w = wake; wake = []; for (const f of w) f() }
    const calls: Array<{ by: string, at: string, id: string, down: string[], ms: number, rate: number | undefined, lostDisks?: string[] }> = []
    let downAt = 0
    /** the repairs that fail before one succeeds */
    let failRepairs = 0
    // the garbage collection each master runs on the nodes that are up right after its election
    const gcCalls: Array<{ by: string, node: string, minAgeMs: number }> = []
    for (const n of names) {
      const client = connect()
      const c = new Curator(client, {
        events: new EventLog(client, n, log(n)),
        nodeName: n, log: log(n), nodeDownGraceMs: 1500, scanIntervalMs: 60_000, electionTtlSec: 2, gcIntervalMs: 3_600_000, gcMinAgeMs: 1234,
        collectGarbage: async (node, minAgeMs) => {
          gcCalls.push({ by: n, node, minAgeMs })
          return { files: node === 'n2' ? 3 : 1, bytes: 64 * MiB, staleEntries: 1 }
        },
        nodesUp: () => names.map((x) => ({ name: x, up: upNow.includes(x) })),
        nodesChanged: () => new Promise<void>((r) => wake.push(r)),
        repair: async (at, id, down, rate, lostDisks) => {
          calls.push({ by: n, at, id, down, ms: Date.now() - downAt, rate, ...(lostDisks !== undefined && lostDisks.length > 0 ? { lostDisks } : {}) })
          if (failRepairs > 0) {
            failRepairs--
            throw new Error('no node can take a copy now')
          }
          // as the owner's repair would: the groups on the down nodes (or short of RF) get a copy on n2
          const egs = [await getJson<EgroupRecord>(etcd, keys.egroup(id, '10')), await getJson<EgroupRecord>(etcd, keys.egroup(id, '11'))]
          let moved = 0
          for (const e of egs) {
            if (e === undefined) continue
            const keep = e.replicas.filter((r) => !down.includes(r.node))
            if (keep.length === e.replicas.length && keep.length >= 2) continue
            const next = [...keep, ...(keep.some((r) => r.node === 'n2') ? [{ node: 'n1', diskId: 'n1-d' }] : [{ node: 'n2', diskId: 'n2-d' }])]
            await put(keys.egroup(id, e.id), { ...e, replicas: next })
            moved++
          }
          return { egroups: moved, bytes: moved * 2 * MiB }
        },
      })
      curators.set(n, c)
      c.start()
    }

    // one master, which has scanned and found nothing to do
    const first = await waitFor('a master', async () => (await curators.get('n1')!.master()) ?? undefined, 20_000, 100)
    expect(names).toContain(first)
    await waitFor('the master scanned', async () => ((await getJson<CuratorStatus>(etcd, keys.curatorStatus))?.lastScanAt ? true : undefined), 10_000, 100)
    expect([...curators.values()].filter((c) => c.isMaster).length).toBe(1)
    expect(curators.get(first)!.isMaster).toBe(true)
    const st0 = (await getJson<CuratorStatus>(etcd, keys.curatorStatus))!
    expect(st0).toMatchObject({ master: first, lastScanFound: { underReplicated: 0, lost: 0 }, repairing: false })
    expect(calls).toEqual([])
    // its first scan ran the garbage collection on every node, one at a time, and summed what they removed
    const gc0 = await waitFor('the first garbage collection', async () => {
      const st = await getJson<CuratorStatus>(etcd, keys.curatorStatus)
      return st?.lastGcAt ? st : undefined
    }, 10_000, 100)
    expect(gcCalls).toEqual(names.map((node) => ({ by: first, node, minAgeMs: 1234 })))
    expect(gc0.lastGcFound).toEqual({ files: 5, bytes: 3 * 64 * MiB, staleEntries: 3 })
    expect((await clusterHealth(etcd, () => curators.get('n1')!.master())).curator).toMatchObject({ lastGcAt: gc0.lastGcAt, lastGcFound: gc0.lastGcFound })
    gcCalls.length = 0

    // n3 goes down: its status record goes (lease revoked); after the grace, the owner (n2) repairs
    downAt = Date.now()
    await leases.get('n3')!.revoke()
    upNow = ['n1', 'n2']
    bump()
    const h1 = await clusterHealth(etcd, () => curators.get('n1')!.master())
    expect(h1).toMatchObject({ state: 'degraded', nodesDown: ['n3'], total: { underReplicated: 1, lost: 0, bytesToReprotect: 2 * MiB } })
    await waitFor('the repair at the owner', () => calls.length > 0 || undefined, 20_000, 50)
    expect(calls[0]).toMatchObject({ by: first, at: 'n2', id: '1', down: ['n3'] })
    // not before the grace (1.5 s) ran from the moment the master saw n3 down
    expect(calls[0]!.ms).toBeGreaterThanOrEqual(1400)
    const h2 = await waitFor('healthy after the repair', async () => {
      const h = await clusterHealth(etcd, () => curators.get('n1')!.master())
      return h.state === 'healthy' && h.curator.repairedEgroups === 1 && !h.curator.repairing ? h : undefined
    }, 10_000, 100)
    expect(h2.curator).toMatchObject({ master: first, repairedBytes: 2 * MiB, lastError: null })
    // the master's events (tess events): n3 lost, then the repair started and finished, oldest first
    const events = new EventLog(etcd, 'reader', log('reader'))
    const seen = await waitFor('the repair\'s events', async () => {
      const es = await events.list({ limit: 100, kinds: ['node-down', 'repair-started', 'repair-finished'] })
      return es.length >= 3 ? es : undefined
    }, 10_000, 100)
    expect(seen.map((e) => [e.kind, e.subject, e.node])).toEqual([['node-down', 'n3', first], ['repair-started', 'a', first], ['repair-finished', 'a', first]])
    expect(seen[2]!.message).toContain('1 extent group(s) re-protected')
    // after one, since a time, the newest of a limit; a bad query is refused with the value named
    expect((await events.list({ limit: 100, after: seen[0]!.id, kinds: ['node-down', 'repair-started', 'repair-finished'] })).map((e) => e.id)).toEqual([seen[1]!.id, seen[2]!.id])
    expect((await events.list({ limit: 100, since: seen[1]!.at, kinds: ['repair-finished'] })).map((e) => e.id)).toEqual([seen[2]!.id])
    expect((await events.list({ limit: 1, kinds: ['node-down', 'repair-started', 'repair-finished'] })).map((e) => e.id)).toEqual([seen[2]!.id])
    expect(() => parseEventQuery(new URLSearchParams('kind=nope'), eventKinds)).toThrow(/unknown event kind "nope"/)
    expect(() => parseEventQuery(new URLSearchParams('limit=0'), eventKinds)).toThrow(/bad limit/)
    expect(() => parseEventQuery(new URLSearchParams('since=yesterday'), eventKinds)).toThrow(/bad since/)
    expect(() => parseEventQuery(new URLSearchParams('after=../x'), eventKinds)).toThrow(/bad after/)
    expect(parseEventQuery(new URLSearchParams('since=2026-12-06T10:00:00%2B01:00&kind=failover'), eventKinds)).toEqual({ limit: 100, since: '2026-12-06T09:00:00.000Z', kinds: ['failover'] })
    expect(h2.curator.repairBytesPerSec).toBeGreaterThan(0)

    // the master dies: its client goes without resigning; its election lease expires (2 s) and another wins
    const dead = curators.get(first)!
    const deadClient = clients[names.indexOf(first) + 1]!
    deadClient.close()
    await dead.stop()
    curators.delete(first)
    const second = await waitFor('another master', async () => {
      const m = await curators.values().next().value!.master().catch(() => undefined)
      return m !== undefined && m !== first ? m : undefined
    }, 30_000, 200)
    await waitFor('the new master reports', async () => ((await getJson<CuratorStatus>(etcd, keys.curatorStatus))?.master === second ? true : undefined), 10_000, 100)
    expect(curators.get(second)!.isMaster).toBe(true)
    // the new master collects garbage at once, on the nodes that are up (n3 is not); not again at its later scans (the interval is an hour)
    await waitFor('the new master\'s garbage collection', () => gcCalls.length >= 2 || undefined, 10_000, 100)
    expect(gcCalls.every((c) => c.by === second && c.node !== 'n3')).toBe(true)
    expect(gcCalls.map((c) => c.node)).toEqual(['n1', 'n2'])
    // it took over since when n3 is down: the loss is not reported a second time, and the status keeps the time
    const st2 = (await getJson<CuratorStatus>(etcd, keys.curatorStatus))!
    expect(Date.parse(st2.nodesDownSince?.n3 ?? '')).toBeLessThanOrEqual(Date.parse(seen[0]!.at) + 1000)
    expect((await events.list({ limit: 100, kinds: ['node-down'] })).map((e) => [e.subject, e.node])).toEqual([['n3', first]])

    // a group that went on degraded (one copy of RF 2) is repaired with no node down, at the
    // repair rate set meanwhile (tess cluster update --repair-rate)
    expect(await updateSettings(etcd, { repairBytesPerSec: 2 * MiB })).toEqual({ nodeDownGraceMs: 30_000, repairBytesPerSec: 2 * MiB, scrubBytesPerSec: 64 * MiB })
    expect(await updateSettings(etcd, parseSettingsPatch({ scrubBytesPerSec: 8 * MiB }))).toMatchObject({ repairBytesPerSec: 2 * MiB, scrubBytesPerSec: 8 * MiB })
    calls.length = 0
    await put(keys.egroup('1', '11'), eg('11', ['n1']))
    curators.get(second)!.requestScan()
    await waitFor('the degraded group repaired', () => calls.length > 0 || undefined, 10_000, 50)
    expect(calls[0]).toMatchObject({ by: second, id: '1', down: [], rate: 2 * MiB })
    const h3 = await waitFor('healthy again', async () => {
      const h = await clusterHealth(etcd, () => curators.get(second)!.master())
      return h.state === 'healthy' ? h : undefined
    }, 10_000, 100)
    expect(h3.curator.master).toBe(second)
    expect(gcCalls).toHaveLength(2)

    // a disk of n2 goes offline (n2 is up, but its status no longer reports the disk): its replicas
    // count as missing at once; after the grace the owner repairs them, told which disk is lost
    calls.length = 0
    downAt = Date.now()
    await put(keys.disk('n2-d'), { id: 'n2-d', node: 'n2', path: '/srv/n2', addedAt: '' })
    curators.get(second)!.requestScan()
    const h4 = await clusterHealth(etcd, () => curators.get(second)!.master())
    expect(h4).toMatchObject({ state: 'degraded', nodesDown: ['n3'], disksOffline: [{ id: 'n2-d', node: 'n2', path: '/srv/n2' }] })
    expect(h4.total.underReplicated).toBe(2)
    await waitFor('the lost disk\'s repair due', async () => {
      const st = await getJson<CuratorStatus>(etcd, keys.curatorStatus)
      return st?.repairsDueAt.some((d) => d.node === 'n2' && d.disk === '/srv/n2') ? true : undefined
    }, 10_000, 50)
    await waitFor('the lost disk repaired at the owner', () => calls.length > 0 || undefined, 10_000, 50)
    expect((await events.list({ limit: 10, kinds: ['disk-offline'] })).map((e) => [e.subject, e.node])).toEqual([['n2:/srv/n2', second]])
    expect(calls[0]).toMatchObject({ by: second, at: 'n2', id: '1', down: [], lostDisks: ['n2-d'] })
    expect(calls[0]!.ms).toBeGreaterThanOrEqual(1400)
    // the disk is reported again (here: its record goes, as after `tess disk remove`): healthy, nothing due
    await etcd.delete().key(keys.disk('n2-d')).exec()
    curators.get(second)!.requestScan()
    await waitFor('healthy with the disk gone', async () => {
      const h = await clusterHealth(etcd, () => curators.get(second)!.master())
      const st = await getJson<CuratorStatus>(etcd, keys.curatorStatus)
      return h.state === 'healthy' && h.disksOffline.length === 0 && st?.repairsDueAt.length === 0 ? true : undefined
    }, 10_000, 100)
    // its events name it as the offline one did
    await waitFor('the disk\'s online event', async () => ((await events.list({ limit: 10, kinds: ['disk-online'] })).some((e) => e.subject === 'n2:/srv/n2') ? true : undefined), 5_000, 100)
    // null lifts the repair's limit; the others stay
    expect(await updateSettings(etcd, parseSettingsPatch({ repairBytesPerSec: null }))).toEqual({ nodeDownGraceMs: 30_000, repairBytesPerSec: null, scrubBytesPerSec: 8 * MiB })
    expect(await readSettings(etcd)).toEqual({ nodeDownGraceMs: 30_000, repairBytesPerSec: null, scrubBytesPerSec: 8 * MiB })
    // a change of the settings takes effect at once: the master scans and reports the new grace
    // (its next scheduled scan is a minute away; no other scan is due)
    expect(await updateSettings(etcd, { nodeDownGraceMs: 20_000 })).toMatchObject({ nodeDownGraceMs: 20_000 })
    const after = await waitFor('a scan with the new grace', async () => {
      const st = await getJson<CuratorStatus>(etcd, keys.curatorStatus)
      return st?.nodeDownGraceMs === 20_000 ? st : undefined
    }, 10_000, 100)
    expect(after.master).toBe(second)

    // a repair that keeps failing (tried again every 5 s) is one event until it succeeds
    const mark = (await events.list({ limit: 1 }))[0]!.id
    failRepairs = 2
    calls.length = 0
    await put(keys.egroup('1', '11'), eg('11', ['n1']))
    curators.get(second)!.requestScan()
    await waitFor('the repair that failed twice done', async () => {
      const h = await clusterHealth(etcd, () => curators.get(second)!.master())
      return calls.length >= 3 && h.state === 'healthy' ? true : undefined
    }, 30_000, 200)
    const kinds = ['repair-started', 'repair-failed', 'repair-finished'] as const
    const tried = await waitFor('the three events', async () => {
      const es = await events.list({ limit: 100, after: mark, kinds: [...kinds] })
      return es.some((e) => e.kind === 'repair-finished') ? es : undefined
    }, 5_000, 100)
    expect(tried.map((e) => e.kind)).toEqual([...kinds])
    expect(tried[1]!.message).toContain('no node can take a copy now')
  }, 90_000)

  it('the health counts extents only for vDisks not healthy, and keeps a vDisk\'s counts for the TTL', async () => {
    const id = 'counted'
    const at = (k: string, v: unknown) => etcd.put(k).value(JSON.stringify(v)).exec()
    let now = 1000
    const counts = new ExtentCounts(etcd, 5000, () => now)
    try {
      await at(keys.vdiskMap(id, 0), { eg: 'g1', s: 0 })
      await at(keys.vdiskMap(id, 1), { eg: 'g1', s: 1 })
      await at(keys.vdiskHist(id, 2, 1), { eg: 'g2', s: 0 })
      expect(await counts.of(new Set([id]))).toEqual(new Map([['g1', 2], ['g2', 1]]))
      await at(keys.vdiskMap(id, 3), { eg: 'g2', s: 1 })
      now += 4999
      expect((await counts.of(new Set([id]))).get('g2')).toBe(1)
      now += 1
      expect((await counts.of(new Set([id]))).get('g2')).toBe(2)
      // a vDisk no longer asked for is forgotten: asked again, it is read again at once
      expect(await counts.of(new Set())).toEqual(new Map())
      await at(keys.vdiskMap(id, 4), { eg: 'g2', s: 2 })
      expect((await counts.of(new Set([id]))).get('g2')).toBe(3)
    } finally {
      await etcd.delete().prefix(keys.vdiskMapPrefix(id)).exec()
      await etcd.delete().prefix(keys.vdiskHistPrefix(id)).exec()
    }
    // which vDisks the health reads the maps of: those with a group short of its RF, ready ones only
    const v = (vid: string, rf: number, state = 'ready') => ({ id: vid, name: vid, rf, state }) as VdiskRecord
    const live = { up: new Set(['n1', 'n2']), offlineDisks: new Map([['n2-bad', { id: 'n2-bad' }]]) } as unknown as Liveness
    const g = (gid: string, vid: string, replicas: Array<[string, string]>): EgroupRecord => ({ id: gid, vdiskId: vid, replicas: replicas.map(([n, d]) => ({ node: n, diskId: d })), createdAt: '' })
    expect(vdisksNotHealthy([v('a', 2), v('b', 2), v('c', 1), v('d', 2), v('e', 2, 'creating')], [
      g('1', 'a', [['n1', 'n1-d'], ['n2', 'n2-d']]),
      g('2', 'b', [['n1', 'n1-d'], ['n3', 'n3-d']]),
      g('3', 'c', [['n1', 'n1-d']]),
      g('4', 'd', [['n1', 'n1-d'], ['n2', 'n2-bad']]),
      g('5', 'e', [['n3', 'n3-d']]),
    ], live)).toEqual(new Set(['b', 'd']))
  })
})
