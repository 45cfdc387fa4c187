import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { TestCluster, alive } from '../helpers/cluster.js'
import { run } from '../helpers/run.js'

const MiB = 1024 * 1024

/**
 * Thin provisioning on an embedded cluster whose data dir is a small filesystem of its own (1 GiB
 * of ext4 on a loop device): a vDisk larger than the pool is refused until the operator allows
 * overcommit; written until the pool is really full, the NBD client gets ENOSPC (not EIO), what
 * was flushed before reads back, the CVM and etcd keep running, and deleting data makes room again.
 */
describe('thin provisioning and a full pool', () => {
  const c = new TestCluster('thin')
  const image = path.join(c.root, 'pool.img')
  let mounted = false

  beforeAll(async () => {
    fs.writeFileSync(image, '')
    fs.truncateSync(image, 1024 * MiB)
    expect((await run('mkfs.ext4', ['-q', '-F', image])).code).toBe(0)
    fs.mkdirSync(c.dataDir)
    const m = await run('mount', ['-o', 'loop', image, c.dataDir])
    expect(m.code, m.stderr).toBe(0)
    mounted = true
    fs.rmdirSync(path.join(c.dataDir, 'lost+found')) // the data dir must be empty
    await c.create()
  }, 120_000)

  afterAll(async () => {
    const pids = c.pids()
    await c.tess(['cluster', 'destroy', '--yes', '--cluster', c.name])
    for (const p of pids) {
      try {
        if (alive(p)) process.kill(p, 'SIGKILL')
      } catch { /* gone */ }
    }
    if (mounted) await run('umount', [c.dataDir])
    await c.destroy()
  })

  it('refuses a vDisk past the provisioning limit until overcommit is allowed', async () => {
    const pool = (await c.tess(['storage-pool', 'show', '--json'])).json
    expect(pool.capacityBytes).toBeLessThan(1024 * MiB)
    expect(pool).toMatchObject({ provisionedBytes: 0, overcommitMax: 1 })
    expect(pool.provisionLimitBytes).toBe(pool.usedBytes + pool.freeBytes)
    const big = await c.tess(['vdisk', 'create', 'big', '--size', '4G', '--json'])
    expect([big.code, big.json.error.code]).toEqual([5, 'TESS_E_CAPACITY'])
    expect(big.json.error.hint).toContain('--overcommit-max')
    const bad = await c.tess(['storage-pool', 'update', '--overcommit-max', '0', '--json'])
    expect([bad.code, bad.json.error.code]).toEqual([2, 'TESS_E_INVALID'])
    const up = await c.tess(['storage-pool', 'update', '--overcommit-max', '10', '--json'])
    expect(up.code, up.stdout + up.stderr).toBe(0)
    expect(up.json.overcommitMax).toBe(10)
    expect((await c.tess(['vdisk', 'create', 'big', '--size', '4G', '--json'])).code).toBe(0)
    const after = (await c.tess(['storage-pool', 'show', '--json'])).json
    expect(after.provisionedBytes).toBe(4096 * MiB)
    // human output says it too
    expect((await c.tess(['storage-pool', 'show'])).stdout).toMatch(/provisioned:\s+4(\.0)? GiB of at most/)
  })

  it('a write into a full pool gets ENOSPC; flushed data stays; deleting makes room again', async () => {
    const a = crypto.randomBytes(64 * MiB)
    const src = path.join(c.root, 'a.bin')
    fs.writeFileSync(src, a)
    expect((await run('nbdcopy', ['--flush', src, c.nbdUri('big')])).code).toBe(0)
    const cvm = c.pid('cvm')!
    // 1 MiB writes after the first 64 MiB until one fails: it must fail with ENOSPC (28)
    const script = [
      'import nbd, os, sys',
      'h = nbd.NBD()',
      'h.connect_uri(sys.argv[1])',
      'buf = os.urandom(1 << 20)',
      'off = 64 << 20',
      'err = 0',
      'while off < h.get_size():',
      '    try:',
      '        h.pwrite(buf, off)',
      '    except nbd.Error as e:',
      '        err = e.errnum',
      '        break',
      '    off += 1 << 20',
      'print(off >> 20, err, flush=True)',
    ].join('\n')
    const fill = await run('/usr/bin/python3', ['-c', script, c.nbdUri('big')], { timeoutMs: 300_000 })
    expect(fill.code, fill.stderr).toBe(0)
    const [stoppedAtMiB, errno] = fill.stdout.trim().split(' ').map(Number)
    expect(errno, fill.stdout).toBe(28)
    expect(stoppedAtMiB).toBeGreaterThan(64)
    expect(stoppedAtMiB).toBeLessThan(1024)
    // the node kept running, and what was flushed reads back
    expect(c.pid('cvm')).toBe(cvm)
    expect(alive(cvm)).toBe(true)
    const read = ['import hashlib, nbd, sys', 'h = nbd.NBD()', 'h.connect_uri(sys.argv[1])',
      'print(hashlib.sha256(b"".join(h.pread(1 << 20, o << 20) for o in range(64))).hexdigest())'].join('\n')
    const back = await run('/usr/bin/python3', ['-c', read, c.nbdUri('big')])
    expect(back.code, back.stderr).toBe(0)
    expect(back.stdout.trim()).toBe(crypto.createHash('sha256').update(a).digest('hex'))
    // room again: the vDisk goes, a new one takes writes
    expect((await c.tess(['vdisk', 'delete', 'big', '--yes', '--json'])).code).toBe(0)
    expect((await c.tess(['vdisk', 'create', 'again', '--size', '128M', '--json'])).code).toBe(0)
    expect((await run('nbdcopy', ['--flush', src, c.nbdUri('again')])).code).toBe(0)
  }, 300_000)
})
