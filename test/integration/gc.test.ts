import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Etcd3 } from 'etcd3'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { egroupDirName, spareDirName } from '../../src/cvm/pool/disks.js'
import { EgroupFile } from '../../src/cvm/vdisk/egroup.js'
import { realFiles } from '../../src/cvm/vdisk/fileio.js'
import { collectGarbage, type GcEnv } from '../../src/cvm/vdisk/gc.js'
import type { EgroupRecord } from '../../src/cvm/vdisk/owner.js'
import { ReplicaStore } from '../../src/cvm/vdisk/replicastore.js'
import { getJson, keys } from '../../src/lib/etcd.js'
import type { Logger } from '../../src/lib/log.js'
import type { DiskRecord } from '../../src/lib/types.js'
import { startTestEtcd, type TestEtcd } from '../helpers/etcd.js'

const minAgeMs = 10 * 60_000
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/**
 * The garbage collection of one node's disks (src/cvm/vdisk/gc.ts) against a real etcd and real
 * extent group files in a directory, through a real replica store: what goes (stale replicas' files,
 * files no record names, a lone dirty marker) and what must stay (live replicas, a stale entry that
 * is also the live file, files changed less than the minimum age ago, a group the store has open,
 * spares, files that are not extent groups). The records' stale entries go with their files.
 */
describe('garbage collection of extent group files', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-gc-'))
  const diskPath = path.join(root, 'd1')
  const dir = path.join(diskPath, egroupDirName)
  const disks: DiskRecord[] = [{ id: 'd1', node: 'n1', path: diskPath, addedAt: '' }]
  const lines: string[] = []
  const log: Logger = { info: (m) => lines.push(m), warn: (m) => lines.push(m), error: (m) => lines.push(m) }
  let testEtcd: TestEtcd
  let etcd: Etcd3
  let store: ReplicaStore

  beforeAll(async () => {
    testEtcd = await startTestEtcd(path.join(root, 'etcd'))
    etcd = testEtcd.connect()
    fs.mkdirSync(dir, { recursive: true })
    fs.mkdirSync(path.join(diskPath, spareDirName), { recursive: true })
    store = new ReplicaStore({ localDisks: async () => disks, log })
  }, 30_000)

  afterAll(async () => {
    await store?.closeAll()
    await testEtcd?.stop()
    fs.rmSync(root, { recursive: true, force: true })
  })

  it('removes stale replicas and unrecorded files once old enough, never a live, young or open one', async () => {
    const rec = (id: string, replicas: string[], stale?: string[]): EgroupRecord => ({
      id, vdiskId: '7', createdAt: '',
      replicas: replicas.map((r) => ({ node: r.split('/')[0]!, diskId: r.split('/')[1]! })),
      ...(stale !== undefined ? { stale: stale.map((r) => ({ node: r.split('/')[0]!, diskId: r.split('/')[1]! })) } : {}),
    })
    const putRec = (r: EgroupRecord) => etcd.put(keys.egroup('7', r.id)).value(JSON.stringify(r)).exec()
    const file = (id: string) => EgroupFile.fileName(dir, id)
    const makeFile = async (id: string) => {
      const eg = await EgroupFile.create(dir, id, '7')
      await eg.close() // a clean close removes its dirty marker
      // data in it, as a replica would have
      fs.appendFileSync(file(id), crypto.randomBytes(256 * 1024))
    }
    const hash = (id: string) => crypto.createHash('sha256').update(fs.readFileSync(file(id))).digest('hex')

    // old files (changed before t1)
    for (const id of ['10', '11', '12', '13', '15']) await makeFile(id)
    fs.writeFileSync(`${file('17')}.dirty`, '') // a marker whose group file is gone
    fs.writeFileSync(`${file('13')}.dirty`, '') // an unrecorded group that was not closed cleanly: its marker goes with it
    fs.writeFileSync(path.join(diskPath, spareDirName, 'spare-0.eg'), Buffer.alloc(4096))
    fs.writeFileSync(path.join(dir, 'notes.txt'), 'not an extent group')
    const live10 = hash('10')
    const live12 = hash('12')
    await sleep(50)
    const t1 = Date.now()
    await sleep(50)
    // young files (changed after t1)
    await makeFile('14')
    await makeFile('16')
    // the store has 15 open (an owner reads it), as it would after a restart while its record is being written
    await store.openEgroup('15', 'd1', [], '7', false)

    await putRec(rec('10', ['n1/d1', 'n2/d2']))
    await putRec(rec('11', ['n2/d2', 'n3/d3'], ['n1/d1']))
    await putRec(rec('12', ['n1/d1', 'n2/d2'], ['n1/d1', 'n3/d3'])) // the stale copy here became the live one again (same file)
    await putRec(rec('16', ['n2/d2', 'n3/d3'], ['n1/d1']))
    await putRec(rec('18', ['n2/d2', 'n3/d3'], ['n1/d9'])) // on a disk this node no longer has
    const sizeOf = (id: string) => fs.statSync(file(id)).blocks * 512
    const freed = sizeOf('11') + sizeOf('13')

    const env = (now: number): GcEnv => ({
      etcd, nodeName: 'n1', log, localDisks: async () => disks, files: realFiles,
      isOpen: (egid, diskId) => store.isOpen(egid, diskId), remove: (egid, diskId) => store.delete(egid, diskId), now: () => now,
    })

    // a pass as of minAgeMs after t1: what changed before t1 is old enough
    const first = await collectGarbage(env(t1 + minAgeMs), minAgeMs)
    expect(first).toEqual({ files: 3, bytes: freed, staleEntries: 3 })
    const present = () => fs.readdirSync(dir).sort()
    expect(present()).toEqual(['10.eg', '12.eg', '14.eg', '15.eg', '16.eg', 'notes.txt'])
    expect(fs.readdirSync(path.join(diskPath, spareDirName))).toEqual(['spare-0.eg'])
    expect([hash('10'), hash('12')]).toEqual([live10, live12])
    const stale = async (id: string) => (await getJson<EgroupRecord>(etcd, keys.egroup('7', id)))?.stale
    // entries of this node dropped, another node's kept; the young stale file keeps its entry until it goes
    expect(await stale('11')).toBeUndefined()
    expect(await stale('12')).toEqual([{ node: 'n3', diskId: 'd3' }])
    expect(await stale('16')).toEqual([{ node: 'n1', diskId: 'd1' }])
    expect(await stale('18')).toBeUndefined()
    expect((await getJson<EgroupRecord>(etcd, keys.egroup('7', '11')))?.replicas).toEqual([{ node: 'n2', diskId: 'd2' }, { node: 'n3', diskId: 'd3' }])

    // much later: the young ones are old now; the open group stays
    const second = await collectGarbage(env(t1 + 100 * minAgeMs), minAgeMs)
    expect(second).toMatchObject({ files: 2, staleEntries: 1 })
    expect(present()).toEqual(['10.eg', '12.eg', '15.eg', 'notes.txt'])
    expect(await stale('16')).toBeUndefined()
    expect(store.isOpen('15', 'd1')).toBe(true)

    // nothing left to do
    expect(await collectGarbage(env(t1 + 100 * minAgeMs), minAgeMs)).toEqual({ files: 0, bytes: 0, staleEntries: 0 })
    expect(lines.filter((l) => l.startsWith('gc: removed'))).toHaveLength(5)
  }, 60_000)

  it('a node with two disks: a group moved between them keeps the file its record names and loses the other; what is open counts per disk', async () => {
    // node n5 with disks d5 and d6 (its own directories and store: the groups above are not its)
    const d5 = path.join(root, 'd5')
    const d6 = path.join(root, 'd6')
    const two: DiskRecord[] = [{ id: 'd5', node: 'n5', path: d5, addedAt: '' }, { id: 'd6', node: 'n5', path: d6, addedAt: '' }]
    for (const d of [d5, d6]) fs.mkdirSync(path.join(d, egroupDirName), { recursive: true })
    const store5 = new ReplicaStore({ localDisks: async () => two, log })
    const fileOn = (d: string, id: string) => EgroupFile.fileName(path.join(d, egroupDirName), id)
    const make = async (d: string, id: string) => {
      const eg = await EgroupFile.create(path.join(d, egroupDirName), id, '8')
      await eg.close()
      fs.appendFileSync(fileOn(d, id), crypto.randomBytes(64 * 1024))
    }
    // 30: moved from d5 to d6 (the record names d6, d5 as stale); 31: recorded on d5, a leftover
    // copy on d6 that no record names; 32: no record, open on d6 (a copy being made), not on d5
    for (const [d, id] of [[d5, '30'], [d6, '30'], [d5, '31'], [d6, '31'], [d5, '32'], [d6, '32']] as const) await make(d, id)
    const put = (id: string, replicas: string[], stale?: string[]) => etcd.put(keys.egroup('8', id)).value(JSON.stringify({
      id, vdiskId: '8', createdAt: '',
      replicas: replicas.map((r) => ({ node: r.split('/')[0]!, diskId: r.split('/')[1]! })),
      ...(stale !== undefined ? { stale: stale.map((r) => ({ node: r.split('/')[0]!, diskId: r.split('/')[1]! })) } : {}),
    })).exec()
    await put('30', ['n5/d6', 'n2/d2'], ['n5/d5'])
    await put('31', ['n5/d5', 'n2/d2'])
    await store5.openEgroup('32', 'd6', [], '8', false)
    const found = await collectGarbage({
      etcd, nodeName: 'n5', log, localDisks: async () => two, files: realFiles,
      isOpen: (egid, diskId) => store5.isOpen(egid, diskId), remove: (egid, diskId) => store5.delete(egid, diskId), now: () => Date.now() + 100 * minAgeMs,
    }, minAgeMs)
    expect(found).toMatchObject({ files: 3, staleEntries: 1 })
    const names = (d: string) => fs.readdirSync(path.join(d, egroupDirName)).sort()
    expect(names(d5)).toEqual(['31.eg'])
    expect(names(d6)).toEqual(['30.eg', '32.eg'])
    expect((await getJson<EgroupRecord>(etcd, keys.egroup('8', '30')))?.stale).toBeUndefined()
    await store5.closeAll()
  }, 60_000)
})
