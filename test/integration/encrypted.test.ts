import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { TestCluster, alive, waitFor } from '../helpers/cluster.js'
import { run } from '../helpers/run.js'
import { filesHolding } from '../helpers/files.js'

const MiB = 1024 * 1024

/** every file under dir holding `needle` */
/**
 * Encrypted vDisks on an embedded cluster with real NBD clients: the disks hold no plaintext,
 * reads return what was written (aligned and not), the cluster key lives only in the CVM's memory:
 * after the CVM restarts the vDisk does not open until `tess cluster unlock`.
 */
describe('encrypted vDisks', () => {
  const c = new TestCluster('enc')

  beforeAll(async () => {
    await c.create()
  }, 120_000)

  afterAll(async () => {
    await c.destroy()
  })

  it('stores ciphertext only, reads back plaintext, and stays locked after a restart until the cluster key is given', async () => {
    // a known pattern, repeated: a plain vDisk shows it on the disks, an encrypted one must not
    const pattern = Buffer.from(`tessera-plaintext-marker-${crypto.randomBytes(8).toString('hex')}`)
    const src = path.join(c.root, 'pattern.bin')
    const data = Buffer.alloc(8 * MiB)
    for (let i = 0; i + pattern.length <= data.length; i += 4096) pattern.copy(data, i)
    crypto.randomBytes(MiB).copy(data, 4 * MiB) // and some random data
    fs.writeFileSync(src, data)

    const mk = await c.tess(['vdisk', 'create', 'sec', '--size', '64M', '--encrypted', '--json'])
    expect(mk.code, mk.stdout + mk.stderr).toBe(0)
    expect(mk.json).toMatchObject({ encrypted: true, locked: false })
    expect((await c.tess(['vdisk', 'create', 'plain', '--size', '64M', '--json'])).json.encrypted).toBe(false)
    const keyFile = path.join(c.configDir, 'clusters', c.name, 'cluster.key')
    expect(fs.statSync(keyFile).mode & 0o777).toBe(0o600)
    // the key is nowhere in the node's data dir or etcd
    const key = Buffer.from(fs.readFileSync(keyFile, 'utf8').trim(), 'base64')
    expect(filesHolding(c.dataDir, key)).toEqual([])
    expect(filesHolding(c.dataDir, Buffer.from(key.toString('base64')))).toEqual([])

    for (const v of ['sec', 'plain']) {
      const w = await run('nbdcopy', ['--flush', src, c.nbdUri(v)])
      expect(w.code, w.stderr).toBe(0)
    }
    // an unaligned write over block edges (read-modify-write of encrypted blocks)
    const patch = crypto.randomBytes(10_000)
    const patchFile = path.join(c.root, 'patch.bin')
    fs.writeFileSync(patchFile, patch)
    const q = await run('qemu-io', ['-f', 'raw', '-c', `write -s ${patchFile} 1000 ${patch.length}`, '-c', 'flush', c.nbdUri('sec')])
    expect(q.code, q.stderr + q.stdout).toBe(0)
    patch.copy(data, 1000)

    const back = path.join(c.root, 'back.bin')
    const r = await run('nbdcopy', [c.nbdUri('sec'), back])
    expect(r.code, r.stderr).toBe(0)
    const got = fs.readFileSync(back)
    expect(got.subarray(0, data.length).equals(data)).toBe(true)
    // never-written ranges read as zeros
    expect(got.subarray(data.length, data.length + MiB).equals(Buffer.alloc(MiB))).toBe(true)

    const disks = path.join(c.dataDir, 'disks')
    expect(filesHolding(disks, pattern).length).toBeGreaterThan(0) // the plain vDisk's
    // drop the plain vDisk: what is left on the disks is the encrypted one's
    expect((await c.tess(['vdisk', 'delete', 'plain', '--yes', '--json'])).code).toBe(0)
    expect(filesHolding(disks, pattern)).toEqual([])
    expect(filesHolding(disks, patch.subarray(0, 64))).toEqual([])

    // the CVM restarts: it holds no key (in memory only, no other CVM to ask): the vDisk does not open
    const pid = c.pid('cvm')!
    process.kill(pid, 'SIGKILL')
    await waitFor('a new CVM', () => {
      const p = c.pid('cvm')
      return p !== undefined && p !== pid && alive(p) ? p : undefined
    })
    await waitFor('the API', async () => (await c.tess(['vdisk', 'list', '--json'])).code === 0 || undefined, 30_000, 200)
    const locked = await c.tess(['vdisk', 'show', 'sec', '--json'])
    expect(locked.json).toMatchObject({ encrypted: true, locked: true })
    const refused = await run('nbdinfo', [c.nbdUri('sec')])
    expect(refused.code).not.toBe(0)
    // the client is refused at NBD_OPT_GO; the CVM's log says why and what to run
    expect(fs.readFileSync(path.join(c.dataDir, 'logs', 'cvm.log'), 'utf8')).toContain('vDisk sec is encrypted and this CVM holds no cluster key: run tess cluster unlock')
    // another cluster's key is refused; the right one opens it
    const wrong = path.join(c.root, 'wrong.key')
    fs.writeFileSync(wrong, `${crypto.randomBytes(32).toString('base64')}\n`, { mode: 0o600 })
    const bad = await c.tess(['cluster', 'unlock', '--key-file', wrong, '--json'])
    expect(bad.code).toBe(7)
    expect(bad.json.error.code).toBe('TESS_E_FORBIDDEN')
    const un = await c.tess(['cluster', 'unlock', '--json'])
    expect(un.code, un.stdout + un.stderr).toBe(0)
    expect(un.json.unlockedNodes).toHaveLength(1)
    const again = path.join(c.root, 'again.bin')
    const r2 = await run('nbdcopy', [c.nbdUri('sec'), again])
    expect(r2.code, r2.stderr).toBe(0)
    expect(fs.readFileSync(again).subarray(0, data.length).equals(data)).toBe(true)
  })

  it('a clone of an encrypted vDisk is encrypted with a key of its own: what it reads from its parent and what it writes stay ciphertext on the disks, also after a flatten', async () => {
    const pattern = Buffer.from(`tessera-clone-marker-${crypto.randomBytes(8).toString('hex')}`)
    const mine = Buffer.from(`tessera-clone-own-${crypto.randomBytes(8).toString('hex')}`)
    const data = Buffer.alloc(8 * MiB)
    for (let i = 0; i + pattern.length <= data.length; i += 4096) pattern.copy(data, i)
    const src = path.join(c.root, 'esrc.bin')
    fs.writeFileSync(src, data)
    expect((await c.tess(['vdisk', 'create', 'esrc', '--size', '16M', '--encrypted', '--json'])).code).toBe(0)
    expect((await run('nbdcopy', ['--flush', src, c.nbdUri('esrc')])).code).toBe(0)
    const cl = await c.tess(['vdisk', 'clone', 'esrc', 'eclone', '--json'])
    expect(cl.code, cl.stdout + cl.stderr).toBe(0)
    expect(cl.json).toMatchObject({ encrypted: true, parent: 'esrc@eclone', sharedBytes: 8 * MiB })
    expect((await c.readExport('eclone')).subarray(0, data.length).equals(data)).toBe(true)
    // a small write into an extent it reads from its parent: the extent is copied (decrypted from
    // the parent, encrypted under the clone's key) with the write laid over it
    const patch = Buffer.alloc(64 * 1024)
    for (let i = 0; i + mine.length <= patch.length; i += 4096) mine.copy(patch, i)
    const patchFile = path.join(c.root, 'eclone-patch.bin')
    fs.writeFileSync(patchFile, patch)
    const q = await run('qemu-io', ['-f', 'raw', '-c', `write -s ${patchFile} ${MiB + 512} ${patch.length}`, '-c', 'flush', c.nbdUri('eclone')])
    expect(q.code, q.stderr + q.stdout).toBe(0)
    const want = Buffer.from(data)
    patch.copy(want, MiB + 512)
    expect((await c.readExport('eclone')).subarray(0, data.length).equals(want)).toBe(true)
    expect((await c.readExport('esrc')).subarray(0, data.length).equals(data)).toBe(true)
    const disks = path.join(c.dataDir, 'disks')
    expect(filesHolding(disks, pattern)).toEqual([])
    expect(filesHolding(disks, mine)).toEqual([])
    // flattened, it stands alone (its copies encrypted too); its parent may go
    const flat = await c.tess(['vdisk', 'flatten', 'eclone', '--json'])
    expect(flat.code, flat.stdout + flat.stderr).toBe(0)
    expect((await c.tess(['vdisk', 'delete', 'esrc', '--yes', '--force', '--json'])).code).toBe(0)
    expect((await c.readExport('eclone')).subarray(0, data.length).equals(want)).toBe(true)
    expect(filesHolding(disks, pattern)).toEqual([])
    expect(filesHolding(disks, mine)).toEqual([])
    expect((await c.tess(['vdisk', 'delete', 'eclone', '--yes', '--json'])).code).toBe(0)
  })

  it('cluster destroy also removes the cluster key the CLI kept', async () => {
    const keyFile = path.join(c.configDir, 'clusters', c.name, 'cluster.key')
    expect(fs.existsSync(keyFile)).toBe(true)
    const d = await c.tess(['cluster', 'destroy', '--yes', '--json'])
    expect(d.code, d.stdout + d.stderr).toBe(0)
    expect(fs.existsSync(keyFile)).toBe(false)
  })
})
