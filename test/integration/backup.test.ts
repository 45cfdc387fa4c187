import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { TestCluster, alive, waitFor } from '../helpers/cluster.js'
import { run } from '../helpers/run.js'

const MiB = 1024 * 1024

/** extent group ids in the files of a disk's egroups/ dir */
function egroupIds(disk: string): number[] {
  return fs.readdirSync(path.join(disk, 'egroups')).map((n) => /^(\d+)\.eg$/.exec(n)?.[1]).filter((x): x is string => x !== undefined).map(Number).sort((a, b) => a - b)
}

/**
 * Metadata backup and restore on an embedded cluster, against the real etcd and real NBD clients:
 * the backup file is checked and private, a cluster whose etcd lost its data refuses to start as
 * an empty one, the restore brings every vDisk and snapshot back byte for byte, and ids handed out
 * after it never meet the files still on the disks.
 */
describe('cluster backup and restore', () => {
  const c = new TestCluster('bkp')
  let disk: string

  beforeAll(async () => {
    await c.create()
    disk = path.join(c.dataDir, 'disks', 'd0')
  }, 120_000)

  afterAll(async () => {
    await c.destroy()
  })

  it('restores every vDisk and snapshot of the backup after etcd lost its data', async () => {
    // two vDisks and a snapshot, as they are at the backup
    const a = crypto.randomBytes(24 * MiB)
    const b = crypto.randomBytes(16 * MiB)
    for (const [name, data, size] of [['a', a, '32M'], ['b', b, '16M']] as const) {
      expect((await c.tess(['vdisk', 'create', name, '--size', size, '--json'])).code).toBe(0)
      fs.writeFileSync(path.join(c.root, `${name}.bin`), data)
      const w = await run('nbdcopy', ['--flush', path.join(c.root, `${name}.bin`), `${c.nbdUri(name)}`])
      expect(w.code, w.stderr).toBe(0)
    }
    const aFull = Buffer.concat([a, Buffer.alloc(8 * MiB)])
    expect((await c.tess(['vdisk', 'snapshot', 'create', 'a', 's1', '--json'])).code).toBe(0)
    await c.qemuIo('a', 'write -P 0x5a 2M 1M')
    const aNow = Buffer.from(aFull)
    aNow.fill(0x5a, 2 * MiB, 3 * MiB)

    const file = path.join(c.root, 'meta.tbk')
    const bk = await c.tess(['cluster', 'backup', file, '--json'])
    expect(bk.code, bk.stdout + bk.stderr).toBe(0)
    expect(bk.json).toMatchObject({ file, clusterName: 'bkp', counts: { vdisks: 2, snapshots: 1 }, secrets: [] })
    expect(bk.json.etcdMembers).toHaveLength(1)
    expect(fs.statSync(file).mode & 0o777).toBe(0o600)
    expect(fs.readFileSync(file).subarray(0, 14).toString()).toBe('TESS-BACKUP 1\n')
    // an existing file is kept unless --force
    const again = await c.tess(['cluster', 'backup', file, '--json'])
    expect([again.code, again.json.error.code]).toEqual([4, 'TESS_E_EXISTS'])
    // secrets only when asked, sealed with a passphrase of some length
    const pass = path.join(c.root, 'pass')
    fs.writeFileSync(pass, 'short\n', { mode: 0o600 })
    const weak = await c.tess(['cluster', 'backup', path.join(c.root, 'sealed.tbk'), '--include-secrets', '--passphrase-file', pass, '--json'])
    expect([weak.code, weak.json.error.code]).toEqual([2, 'TESS_E_INVALID'])
    fs.writeFileSync(pass, 'correct horse battery staple\n', { mode: 0o600 })
    const sealed = await c.tess(['cluster', 'backup', path.join(c.root, 'sealed.tbk'), '--include-secrets', '--passphrase-file', pass, '--json'])
    expect(sealed.code, sealed.stdout + sealed.stderr).toBe(0)
    expect(sealed.json.secrets).toEqual(expect.arrayContaining(['api-token', 'ca.key', 'secrets.key']))
    const sealedText = fs.readFileSync(path.join(c.root, 'sealed.tbk'))
    expect(sealedText.includes(fs.readFileSync(path.join(c.dataDir, 'pki', 'api-token'), 'utf8').trim())).toBe(false)

    // after the backup: a CVM restart (it reserves a new range of extent group ids, past the
    // counter the backup holds), a new vDisk, and a write into a new extent of a
    const first = c.pid('cvm')!
    process.kill(first, 'SIGKILL')
    await waitFor('a new CVM', () => {
      const p = c.pid('cvm')
      return p !== undefined && p !== first && alive(p) ? p : undefined
    })
    await waitFor('the API', async () => (await c.tess(['vdisk', 'list', '--json'])).code === 0 || undefined, 30_000, 200)
    expect((await c.tess(['vdisk', 'create', 'late', '--size', '8M', '--json'])).code).toBe(0)
    await c.qemuIo('late', 'write -P 0x11 0 4M')
    await c.qemuIo('a', 'write -P 0x22 28M 1M')

    // a cluster whose etcd answers is not restored by accident
    const healthy = await c.tess(['cluster', 'restore', file, '--yes', '--json'])
    expect([healthy.code, healthy.json.error.code], healthy.stdout).toEqual([4, 'TESS_E_CONFLICT'])

    // etcd loses its data: the CVM does not start as a new, empty cluster, and no data file goes
    const before = egroupIds(disk)
    const cvm = c.pid('cvm')!
    process.kill(c.pid('etcd')!, 'SIGKILL')
    process.kill(cvm, 'SIGKILL')
    fs.rmSync(path.join(c.dataDir, 'etcd'), { recursive: true, force: true })
    const cvmLog = path.join(c.dataDir, 'logs', 'cvm.log')
    await waitFor('the CVM to refuse the empty etcd', () => /etcd holds no record of cluster "bkp"/.test(fs.readFileSync(cvmLog, 'utf8')) || undefined, 60_000, 250)
    const down = await c.tess(['vdisk', 'list', '--json'])
    expect([down.code, down.json.error.code]).toEqual([6, 'TESS_E_UNREACHABLE'])
    // the CLI says why, from the CVM's log on this machine
    expect(down.json.error.hint).toMatch(/^the CVM does not start: etcd holds no record of cluster "bkp"/)
    expect(egroupIds(disk)).toEqual(before)

    // a damaged backup is refused before anything is done
    const bad = path.join(c.root, 'bad.tbk')
    const damaged = fs.readFileSync(file)
    damaged[damaged.length - 100]! ^= 0xff
    fs.writeFileSync(bad, damaged)
    const refused = await c.tess(['cluster', 'restore', bad, '--yes', '--json'])
    expect([refused.code, refused.json.error.code]).toEqual([2, 'TESS_E_INVALID'])
    expect(refused.json.error.message).toMatch(/SHA-256/)

    const r = await c.tess(['cluster', 'restore', file, '--yes', '--json'], { timeoutMs: 180_000 })
    expect(r.code, r.stdout + r.stderr).toBe(0)
    expect(r.json).toMatchObject({ clusterName: 'bkp', vdisks: 2, backupVdisks: 2 })
    expect(r.json.nodes).toHaveLength(1)
    expect(r.json.nodes[0].etcdMember).toBe(true)
    expect(fs.existsSync(r.json.nodes[0].movedAside)).toBe(true)
    const floor = Number(r.json.idFloors.egroup)
    expect(floor).toBeGreaterThanOrEqual(Math.max(...before))

    // every vDisk and snapshot of the backup, byte for byte; what came after is gone
    expect((await c.readExport('b')).equals(b)).toBe(true)
    expect((await c.readExport('a@s1')).equals(aFull)).toBe(true)
    expect((await c.readExport('a')).equals(aNow)).toBe(true)
    const list = await c.tess(['vdisk', 'list', '--json'])
    expect(list.json.map((v: { name: string }) => v.name).sort()).toEqual(['a', 'b'])

    // new extent groups get ids past every file that was on the disk; the CVM runs on
    const cvmNow = c.pid('cvm')!
    expect((await c.tess(['vdisk', 'create', 'c', '--size', '8M', '--json'])).code).toBe(0)
    const cData = crypto.randomBytes(8 * MiB)
    fs.writeFileSync(path.join(c.root, 'c.bin'), cData)
    expect((await run('nbdcopy', ['--flush', path.join(c.root, 'c.bin'), c.nbdUri('c')])).code).toBe(0)
    expect((await c.readExport('c')).equals(cData)).toBe(true)
    const fresh = egroupIds(disk).filter((id) => !before.includes(id))
    expect(fresh.length).toBeGreaterThan(0)
    expect(fresh.every((id) => id > floor)).toBe(true)
    expect(alive(cvmNow) && c.pid('cvm') === cvmNow).toBe(true)
    expect((await c.readExport('a@s1')).equals(aFull)).toBe(true)
  }, 300_000)
})
