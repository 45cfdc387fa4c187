import { spawn } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { TestCluster, alive, repoRoot, waitFor } from '../helpers/cluster.js'
import { parseFioJson, run } from '../helpers/run.js'
import { egroupFileBytes, egroupZeroPrefixBytes } from '../../src/cvm/vdisk/egroup.js'

const MiB = 1024 * 1024
const GiB = 1024 * MiB

function sha256File(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex')
}

/** The vDisk data path against a real CVM, with real NBD clients: qemu-img, qemu-io, nbdinfo, nbdcopy, nbdsh, fio. */
describe('vDisk data path over NBD', () => {
  const c = new TestCluster('data')
  let uri: (name: string) => string

  beforeAll(async () => {
    await c.create()
    // the Unix socket: NBD on TCP requires TLS (refused below without it)
    uri = (name) => c.nbdUri(name)
  })

  afterAll(async () => {
    await c.destroy()
  })

  async function vdisk(name: string, size: string): Promise<any> {
    const r = await c.tess(['vdisk', 'create', name, '--size', size, '--json'])
    expect(r.code, r.stdout + r.stderr).toBe(0)
    return r.json
  }

  it('nbdinfo sees the size and the flags', async () => {
    await vdisk('info', '64M')
    const r = await run('nbdinfo', ['--json', uri('info')])
    expect(r.code, r.stderr).toBe(0)
    const info = JSON.parse(r.stdout)
    const exp = info.exports[0]
    expect(exp['export-size']).toBe(64 * MiB)
    expect(exp.can_flush).toBe(true)
    expect(exp.can_fua).toBe(true)
    expect(exp.can_trim).toBe(true)
    expect(exp.can_zero).toBe(true)
    expect(exp['block_size_preferred']).toBe(4096)
    const list = await run('nbdinfo', ['--list', '--json', c.nbdUri()])
    expect(list.code, list.stderr).toBe(0)
    expect(JSON.parse(list.stdout).exports.map((e: any) => e['export-name'])).toContain('info')
    const missing = await run('nbdinfo', [uri('no-such-vdisk')])
    expect(missing.code).not.toBe(0)
    // on TCP, without TLS and a certificate: nothing, not even the list of exports
    const plain = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${c.ports.nbd}`])
    expect(plain.code).not.toBe(0)
    expect(plain.stdout).not.toContain('info')
    // (libnbd shows NBD_REP_ERR_TLS_REQD as "Operation not supported")
    expect(plain.stderr).toMatch(/server replied with error to list request/)
    const plainOpen = await run('nbdinfo', ['--json', `nbd://127.0.0.1:${c.ports.nbd}/info`])
    expect(plainOpen.code).not.toBe(0)
    expect(plainOpen.stderr).toMatch(/server replied with error to opt_go request/)
  })

  it('qemu-img converts 256 MiB of random bytes in and out unchanged; allocation shows', async () => {
    await vdisk('big', '256M')
    const src = path.join(c.root, 'random.bin')
    fs.writeFileSync(src, crypto.randomBytes(256 * MiB))
    const w = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', '-t', 'none', src, uri('big')])
    expect(w.code, w.stderr).toBe(0)
    const out = path.join(c.root, 'back.bin')
    const r = await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri('big'), out])
    expect(r.code, r.stderr).toBe(0)
    expect(sha256File(out)).toBe(sha256File(src))
    fs.rmSync(out)
    const show = await c.tess(['vdisk', 'show', 'big', '--json'])
    expect(show.json.allocatedBytes).toBe(256 * MiB)
    expect(show.json.nbdUri).toBe(`nbd://127.0.0.1:${c.ports.nbd}/big`)
    const list = await c.tess(['vdisk', 'list', '--json'])
    expect(list.json.find((v: any) => v.name === 'big').allocatedBytes).toBe(256 * MiB)
  })

  it('qemu-io writes and reads patterns at unaligned offsets and lengths, discards and zeroes', async () => {
    await vdisk('qio', '16M')
    const cmds = [
      'write -P 0x11 0 4096',
      'write -P 0x22 1 3',
      'write -P 0x33 4095 2',
      'write -P 0x44 1048570 20',
      'write -P 0x55 2097151 1048579',
      'write -z 3145721 9',
      'flush',
      'read -P 0x11 0 1',
      'read -P 0x22 1 3',
      'read -P 0x11 4 4091',
      'read -P 0x33 4095 2',
      'read -P 0x00 4097 8000',
      'read -P 0x44 1048570 20',
      'read -P 0x55 2097151 1048570',
      'read -P 0x00 3145721 9',
      'discard 0 1048576',
      'read -P 0x00 0 1048576',
      'read -P 0x44 1048576 14',
    ]
    const r = await run('qemu-io', ['-f', 'raw', ...cmds.flatMap((x) => ['-c', x]), uri('qio')])
    expect(r.code, r.stdout + r.stderr).toBe(0)
    expect(r.stdout).not.toMatch(/Pattern verification failed|error|failed/i)
  })

  it('nbdcopy copies a vDisk to another and to a file', async () => {
    await vdisk('cpsrc', '32M')
    await vdisk('cpdst', '32M')
    const src = path.join(c.root, 'cp.bin')
    fs.writeFileSync(src, crypto.randomBytes(32 * MiB))
    expect((await run('nbdcopy', [src, uri('cpsrc')])).code).toBe(0)
    const cp = await run('nbdcopy', [uri('cpsrc'), uri('cpdst')])
    expect(cp.code, cp.stderr).toBe(0)
    const out = path.join(c.root, 'cp-out.bin')
    expect((await run('nbdcopy', [uri('cpdst'), out])).code).toBe(0)
    expect(sha256File(out)).toBe(sha256File(src))
  })

  it('fio (nbd engine) random writes of 4k, 64k and 1M at iodepth 16 verify with crc32c', async () => {
    await vdisk('fio', '128M')
    for (const bs of ['4k', '64k', '1M']) {
      const r = await run('fio', ['--name=verify', '--ioengine=nbd', `--uri=${uri('fio')}`, '--rw=randwrite', `--bs=${bs}`, '--iodepth=16',
        '--size=64M', '--verify=crc32c', '--verify_state_save=0', '--verify_fatal=1', '--do_verify=1', '--output-format=json'], { timeoutMs: 300_000 })
      expect(r.code, r.stdout + r.stderr).toBe(0)
      const job = parseFioJson(r.stdout).jobs[0]
      expect(job.error).toBe(0)
      expect(job.write.io_bytes).toBeGreaterThan(0)
      expect(job.read.io_bytes).toBeGreaterThan(0) // the verify pass read everything back
    }
  })

  it('keeps flushed data across kill -9 of the CVM', async () => {
    await vdisk('crash', '32M')
    const src = path.join(c.root, 'crash.bin')
    fs.writeFileSync(src, crypto.randomBytes(32 * MiB))
    // nbdcopy flushes at the end (--flush)
    expect((await run('nbdcopy', ['--flush', src, uri('crash')])).code).toBe(0)
    const pid = c.pid('cvm')!
    process.kill(pid, 'SIGKILL')
    await waitFor('the restarted CVM', () => {
      const p = c.pid('cvm')
      return p && p !== pid && alive(p) ? p : undefined
    })
    const out = path.join(c.root, 'crash-out.bin')
    const r = await waitFor('a read after restart', async () => {
      const x = await run('nbdcopy', [uri('crash'), out])
      return x.code === 0 ? x : undefined
    }, 30_000, 250)
    expect(r.code).toBe(0)
    expect(sha256File(out)).toBe(sha256File(src))
  })

  it('an allocating burst killed by kill -9 keeps every flushed write, and the extent store and the block map agree', async () => {
    const info = await vdisk('burst', '1G')
    const chunk = 256 * 1024
    const burst = path.join(repoRoot, 'test', 'helpers', 'alloc-burst.py')
    const py = '/usr/bin/python3'
    // writes into new vBlocks only, a FLUSH after every 16 writes (4 MiB), until the CVM dies
    const child = spawn(py, [burst, 'write', uri('burst'), '0', String(GiB), String(chunk)], { stdio: ['ignore', 'pipe', 'pipe'] })
    let durable = 0
    let out = ''
    child.stdout.on('data', (d) => {
      out += d
      for (const m of out.matchAll(/durable (\d+)/g)) durable = Math.max(durable, Number(m[1]))
    })
    const exited = new Promise<void>((resolve) => child.on('close', () => resolve()))
    // kill in the middle of the burst: after some flushes, well before the end
    await waitFor('a few flushed batches', () => (durable >= 24 * MiB ? true : undefined), 60_000, 20)
    const pid = c.pid('cvm')!
    process.kill(pid, 'SIGKILL')
    await exited
    expect(durable).toBeLessThan(GiB)
    await waitFor('the restarted CVM', () => {
      const p = c.pid('cvm')
      return p && p !== pid && alive(p) ? p : undefined
    })
    // everything acknowledged by a FLUSH reads back
    const v = await waitFor('a read after restart', async () => {
      const x = await run(py, [burst, 'verify', uri('burst'), '0', String(durable), String(chunk)])
      return x.stdout.includes('ok') || x.stdout.includes('bad') ? x : undefined
    }, 30_000, 250)
    expect(v.stdout.trim(), v.stderr).toBe('ok')
    // the block map (etcd) and the extent groups (files) agree: every slot that holds data is
    // named by the map, and every map entry points into an existing file's written slot
    const pki = path.join(c.dataDir, 'pki')
    const got = await run('etcdctl', ['--endpoints', `https://127.0.0.1:${c.ports.etcdClient}`, '--cacert', path.join(pki, 'ca.crt'),
      '--cert', path.join(pki, 'node.crt'), '--key', path.join(pki, 'node.key'), 'get', '--prefix', `/tess/vdisk-map/${info.id}/`], { env: { ETCDCTL_API: '3' } })
    expect(got.code, got.stderr).toBe(0)
    const lines = got.stdout.trim().split('\n').filter((l) => l.length > 0)
    const mapped = new Set<string>()
    for (let i = 0; i + 1 < lines.length; i += 2) {
      const m = JSON.parse(lines[i + 1]!) as { eg: string, s: number }
      mapped.add(`${m.eg}/${m.s}`)
    }
    // every flushed vBlock is mapped; allocations after the last flush may or may not be
    expect(mapped.size).toBeGreaterThanOrEqual(durable / MiB)
    const egDir = path.join(c.dataDir, 'disks', 'd0', 'egroups')
    const written = new Set<string>()
    for (const f of fs.readdirSync(egDir).filter((n) => n.endsWith('.eg'))) {
      const buf = fs.readFileSync(path.join(egDir, f))
      if (buf.readBigUInt64LE(32) !== BigInt(info.id)) continue
      const egid = f.slice(0, -3)
      for (let slot = 0; slot < 32; slot++) {
        for (let b = 0; b < 256; b++) {
          if (buf.readUInt32LE(4096 + (slot * 256 + b) * 8 + 4) & 1) {
            written.add(`${egid}/${slot}`)
            break
          }
        }
      }
    }
    expect([...written].filter((k) => !mapped.has(k))).toEqual([])
    expect([...mapped].filter((k) => !written.has(k))).toEqual([])
    // spare extent groups after the crash: whole files with a blank header and entries only, none
    // of them also an extent group (a take cut short leaves the spare's name on the group: dropped)
    const spareDir = path.join(c.dataDir, 'disks', 'd0', 'spares')
    for (const f of fs.existsSync(spareDir) ? fs.readdirSync(spareDir).filter((n) => n.endsWith('.eg')) : []) {
      const st = fs.statSync(path.join(spareDir, f))
      expect(st.size, f).toBe(egroupFileBytes)
      expect(st.nlink, f).toBe(1)
      const head = Buffer.alloc(egroupZeroPrefixBytes)
      const fd = fs.openSync(path.join(spareDir, f), 'r')
      fs.readSync(fd, head, 0, head.length, 0)
      fs.closeSync(fd)
      expect(head.every((x) => x === 0), f).toBe(true)
    }
  })

  it('multi-conn: a FLUSH on one connection makes writes acknowledged on another durable (kill -9 after)', async () => {
    await vdisk('multi', '64M')
    const py = '/usr/bin/python3'
    // two connections; writes into new vBlocks on both at once (aio, in flight together), no
    // flush on the writers; then one FLUSH on a third connection
    const script = [
      'import nbd, sys',
      'hs = [nbd.NBD() for _ in range(3)]',
      'for h in hs: h.connect_uri(sys.argv[1])',
      'assert all(h.can_multi_conn() for h in hs), "CAN_MULTI_CONN not advertised"',
      'cookies = []',
      'for i in range(16):',
      '    h = hs[i % 2]',
      '    cookies.append((h, h.aio_pwrite(bytes([i + 1]) * 1048576, i * 1048576)))',
      'for h, c in cookies:',
      '    while not h.aio_command_completed(c): h.poll(-1)',
      'hs[2].flush()',
      'print("flushed", flush=True)',
      // keep the connections open, so no disconnect flush helps: the test kills the CVM now
      'sys.stdin.read()',
    ].join('\n')
    const child = spawn(py, ['-c', script, uri('multi')], { stdio: ['pipe', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    child.stdout.on('data', (d) => { out += d })
    child.stderr.on('data', (d) => { err += d })
    const exited = new Promise<void>((resolve) => child.on('close', () => resolve()))
    await waitFor('the flush on the third connection', () => (out.includes('flushed') ? true : undefined), 60_000, 20).catch((e: unknown) => {
      throw new Error(`${String(e)}: ${err}`)
    })
    const pid = c.pid('cvm')!
    process.kill(pid, 'SIGKILL')
    child.stdin.end()
    await exited
    await waitFor('the restarted CVM', () => {
      const p = c.pid('cvm')
      return p && p !== pid && alive(p) ? p : undefined
    })
    const check = [
      'import nbd, sys',
      'h = nbd.NBD()',
      'h.connect_uri(sys.argv[1])',
      'for i in range(16):',
      '    assert h.pread(1048576, i * 1048576) == bytes([i + 1]) * 1048576, "vBlock %d lost" % i',
      'print("ok")',
    ].join('\n')
    const r = await waitFor('a read after restart', async () => {
      const x = await run(py, ['-c', check, uri('multi')])
      return x.code === 0 || x.stderr.includes('lost') ? x : undefined
    }, 30_000, 250)
    expect(r.stdout.trim(), r.stderr).toBe('ok')
  })

  it('detects a flipped byte in an extent group file and returns EIO', async () => {
    await vdisk('flip', '8M')
    const src = path.join(c.root, 'flip.bin')
    // one extent only, so it sits in slot 0 of the vDisk's first extent group
    fs.writeFileSync(src, crypto.randomBytes(MiB))
    expect((await run('nbdcopy', ['--flush', src, uri('flip')])).code).toBe(0)
    const show = (await c.tess(['vdisk', 'show', 'flip', '--json'])).json
    expect(show.allocatedBytes).toBe(MiB)
    // find the vDisk's egroup file: the newest .eg file under the data dir's disk
    const egDir = path.join(c.dataDir, 'disks', 'd0', 'egroups')
    const files = fs.readdirSync(egDir).filter((f) => f.endsWith('.eg')).map((f) => path.join(egDir, f))
    const newest = files.sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs)[0]!
    const fd = fs.openSync(newest, 'r+')
    const b = Buffer.alloc(1)
    const at = 128 * 1024 + 777_777 // inside the first extent's data
    fs.readSync(fd, b, 0, 1, at)
    b[0] = b[0]! ^ 0xff
    fs.writeSync(fd, b, 0, 1, at)
    fs.closeSync(fd)
    // reads go through the page cache, so the CVM sees the flipped byte at once
    const bad = await run('qemu-io', ['-f', 'raw', '-c', 'read 774144 4096', uri('flip')])
    expect(bad.stdout + bad.stderr).toMatch(/Input\/output error/)
    const good = await run('qemu-io', ['-f', 'raw', '-c', `read -P 0 ${4 * MiB} 4096`, uri('flip')])
    expect(good.stdout + good.stderr).not.toMatch(/error/i)
    const log = fs.readFileSync(path.join(c.dataDir, 'logs', 'cvm.log'), 'utf8')
    expect(log).toMatch(/checksum mismatch in extent group/)
    expect(log).toMatch(/vDisk flip/)
  })

  it('trim frees whole extents; delete frees the space', async () => {
    await vdisk('trim', '8M')
    const src = path.join(c.root, 'trim.bin')
    fs.writeFileSync(src, crypto.randomBytes(8 * MiB))
    expect((await run('nbdcopy', ['--flush', src, uri('trim')])).code).toBe(0)
    expect((await c.tess(['vdisk', 'show', 'trim', '--json'])).json.allocatedBytes).toBe(8 * MiB)
    const r = await run('qemu-io', ['-f', 'raw', '-c', `discard 0 ${4 * MiB}`, '-c', `read -P 0 0 ${4 * MiB}`, uri('trim')])
    expect(r.stdout + r.stderr).not.toMatch(/error|failed/i)
    expect((await c.tess(['vdisk', 'show', 'trim', '--json'])).json.allocatedBytes).toBe(4 * MiB)
    const used = (await c.tess(['storage-pool', 'show', '--json'])).json.usedBytes
    const del = await c.tess(['vdisk', 'delete', 'trim', '--yes', '--json'])
    expect(del.code, del.stdout).toBe(0)
    const after = (await c.tess(['storage-pool', 'show', '--json'])).json.usedBytes
    expect(used - after).toBeGreaterThanOrEqual(4 * MiB)
  })

  it('new extent groups take spares written ahead; a deleted plain vDisk leaves none of its data in the spares', async () => {
    // the suite keeps 2 spares per disk (vitest.config.ts); the CVM writes them while idle
    const spareDir = path.join(c.dataDir, 'disks', 'd0', 'spares')
    const spares = () => (fs.existsSync(spareDir) ? fs.readdirSync(spareDir).filter((n) => n.endsWith('.eg')).sort() : [])
    const ready = await waitFor('2 spare extent groups', () => (spares().length === 2 ? spares() : undefined), 60_000, 200)
    const info = await vdisk('spared', '32M')
    const src = path.join(c.root, 'spared.bin')
    fs.writeFileSync(src, crypto.randomBytes(32 * MiB))
    expect((await run('nbdcopy', ['--flush', src, uri('spared')])).code).toBe(0)
    // its first group is one of the spares: whole on disk from its first write (no holes)
    const egDir = path.join(c.dataDir, 'disks', 'd0', 'egroups')
    const mine = fs.readdirSync(egDir).filter((n) => n.endsWith('.eg')).filter((n) => {
      const head = Buffer.alloc(40)
      const fd = fs.openSync(path.join(egDir, n), 'r')
      fs.readSync(fd, head, 0, 40, 0)
      fs.closeSync(fd)
      return head.readBigUInt64LE(32) === BigInt(info.id)
    })
    expect(mine.length).toBeGreaterThanOrEqual(1)
    for (const n of mine) expect(fs.statSync(path.join(egDir, n)).blocks * 512).toBeGreaterThanOrEqual(egroupFileBytes)
    expect(ready.filter((n) => spares().includes(n)).length).toBeLessThan(2)
    // the data reads back through the group that was a spare
    const back = path.join(c.root, 'spared.out')
    expect((await run('nbdcopy', [uri('spared'), back])).code).toBe(0)
    expect(sha256File(back)).toBe(sha256File(src))
    // deleted: its files go (a plain vDisk's groups are never kept as spares: their data would
    // outlive it), the reserve is filled again with blank spares
    const written = fs.readFileSync(src).subarray(0, 4096)
    expect((await c.tess(['vdisk', 'delete', 'spared', '--yes'])).code).toBe(0)
    for (const n of mine) expect(fs.existsSync(path.join(egDir, n))).toBe(false)
    const after = await waitFor('the reserve back at 2', () => (spares().length === 2 ? spares() : undefined), 60_000, 200)
    for (const f of after) {
      const whole = fs.readFileSync(path.join(spareDir, f))
      expect(whole.subarray(0, egroupZeroPrefixBytes).every((x) => x === 0), f).toBe(true)
      expect(whole.indexOf(written), f).toBe(-1)
    }
  })
})
