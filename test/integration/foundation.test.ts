import { spawn } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import https from 'node:https'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { egroupDirName } from '../../src/cvm/pool/disks.js'
import { TestCluster, alive, mapLimit, ownedBy, repoRoot, tessBin, waitFor } from '../helpers/cluster.js'
import { run } from '../helpers/run.js'

const MiB = 1024 * 1024

/**
 * The foundation against the real thing: a real etcd, supervisor and CVM started by
 * `tess cluster create --local`, driven through the built CLI.
 */
describe('embedded cluster, disks, pool and vDisk control plane', () => {
  const c = new TestCluster('found')
  let created: any

  beforeAll(async () => {
    created = (await c.create()).json
  })

  afterAll(async () => {
    await c.destroy()
  })

  it('creates a cluster with one node, running daemons and a disk', async () => {
    expect(created.name).toBe('found')
    expect(created.nodes).toHaveLength(1)
    const r = await c.tess(['cluster', 'status', '--json'])
    expect(r.code).toBe(0)
    expect(r.json.name).toBe('found')
    const node = r.json.nodes[0]
    expect(node).toMatchObject({ state: 'up' })
    expect(typeof node.name).toBe('string')
    expect(node.address).toBe('127.0.0.1')
    const names = node.daemons.map((d: any) => d.name).sort()
    expect(names).toEqual(['cvm', 'etcd', 'supervisor'])
    for (const d of node.daemons) {
      expect(d.healthy).toBe(true)
      expect(alive(d.pid)).toBe(true)
    }
    expect(r.json.pool.capacityBytes).toBeGreaterThan(0)
    expect(r.json.pool.freeBytes).toBeGreaterThan(0)
    expect(r.json.pool.usedBytes).toBeGreaterThanOrEqual(0)
    // the node's certificates (node and CA, made for 10 years) and when they expire: nothing to warn about
    expect(node.certificates.map((x: { name: string }) => x.name)).toEqual(['node', 'CA'])
    for (const cert of node.certificates) expect(Date.parse(cert.notAfter) - Date.now()).toBeGreaterThan(3600 * 24 * 3600 * 1000)
    expect(r.json.warnings).toEqual([])
    // human output is a table and key: value lines
    const h = await c.tess(['cluster', 'status'])
    expect(h.code).toBe(0)
    expect(h.stdout).toMatch(/cluster:\s+found/)
    expect(h.stdout).toMatch(/supervisor/)
  })

  it('keeps secrets and contexts in files of mode 0600', () => {
    const ctxFile = path.join(c.configDir, 'contexts.json')
    expect(fs.statSync(ctxFile).mode & 0o777).toBe(0o600)
    for (const f of ['ca.key', 'node.key', 'api-token', 'secrets.key']) {
      expect(fs.statSync(path.join(c.dataDir, 'pki', f)).mode & 0o777).toBe(0o600)
    }
  })

  it('refuses a second cluster in the same data dir', async () => {
    const r = await c.tess(['cluster', 'create', '--local', '--name', 'other', '--data-dir', c.dataDir, '--json'])
    expect(r.code).toBe(4)
    expect(r.json.error.code).toBe('TESS_E_EXISTS')
    expect(r.json.error.message).toContain(c.dataDir)
    expect(r.json.error.hint).toBeTruthy()
  })

  it('creates, lists, shows, resizes and deletes vDisks', async () => {
    const cr = await c.tess(['vdisk', 'create', 'v1', '--size', '1G', '--json'])
    expect(cr.code).toBe(0)
    expect(cr.json).toMatchObject({ name: 'v1', sizeBytes: 1024 ** 3, rf: 1, allocatedBytes: 0 })
    expect(cr.json.id).toMatch(/^\d+$/)
    expect(cr.json.nbdUri).toBe(`nbd://127.0.0.1:${c.ports.nbd}/v1`)
    const cr2 = await c.tess(['vdisk', 'create', 'v2', '--size', '536870912', '--json'])
    expect(cr2.code).toBe(0)
    expect(cr2.json.id).not.toBe(cr.json.id)
    const ls = await c.tess(['vdisk', 'list', '--json'])
    expect(ls.code).toBe(0)
    expect(ls.json.map((v: any) => [v.name, v.sizeBytes, v.rf])).toEqual([['v1', 1024 ** 3, 1], ['v2', 512 * 1024 ** 2, 1]])
    const show = await c.tess(['vdisk', 'show', 'v1', '--json'])
    expect(show.json).toMatchObject({ id: cr.json.id, name: 'v1', sizeBytes: 1024 ** 3, rf: 1 })
    const grow = await c.tess(['vdisk', 'resize', 'v2', '--size', '1GiB', '--json'])
    expect(grow.code).toBe(0)
    expect(grow.json.sizeBytes).toBe(1024 ** 3)
    const table = await c.tess(['vdisk', 'list'])
    expect(table.stdout).toMatch(/v1.*1 GiB/)
    // --dry-run: no question (no terminal here, no --yes), the vDisk as it would go, nothing deleted
    const dry = await c.tess(['vdisk', 'delete', 'v2', '--dry-run', '--json'])
    expect(dry.code, dry.stdout + dry.stderr).toBe(0)
    expect(dry.json).toMatchObject({ name: 'v2', dryRun: true })
    expect((await c.tess(['vdisk', 'delete', 'v2', '--dry-run'])).stdout).toMatch(/^would delete vDisk: v2$/m)
    expect((await c.tess(['vdisk', 'show', 'v2', '--json'])).code).toBe(0)
    expect((await c.tess(['vdisk', 'delete', 'nope', '--dry-run', '--json'])).code).toBe(3)
    const del = await c.tess(['vdisk', 'delete', 'v2', '--yes', '--json'])
    expect(del.code).toBe(0)
    expect(del.json.dryRun).toBe(false)
    expect((await c.tess(['vdisk', 'show', 'v2', '--json'])).code).toBe(3)
  })

  it('--watch prints a list again as it changes until Ctrl-C: one JSON document per line, or texts a blank line apart', async () => {
    const watch = (args: string[]) => {
      const p = spawn(process.execPath, [tessBin, ...args], { env: { ...process.env, ...c.env }, stdio: ['ignore', 'pipe', 'pipe'] })
      const closed = new Promise<number | null>((r) => p.once('close', r))
      const out = { text: '' }
      p.stdout.on('data', (d) => { out.text += d })
      return { p, closed, out }
    }
    const json = watch(['vdisk', 'list', '--watch', '--json'])
    const text = watch(['vdisk', 'list', '-w'])
    try {
      // both have printed once before the change (on a busy machine a watcher may start late)
      await waitFor('a first list', () => (json.out.text.includes('\n') && text.out.text.includes('\n')) || undefined, 30_000, 100)
      expect((await c.tess(['vdisk', 'create', 'watched', '--size', '1G', '--json'])).code).toBe(0)
      const lines = await waitFor('the new vDisk in a later list', () => {
        const ls = json.out.text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Array<{ name: string }>)
        return ls.some((l) => l.some((v) => v.name === 'watched')) ? ls : undefined
      }, 30_000, 100)
      expect(lines[0]!.some((v) => v.name === 'watched')).toBe(false)
      // a later print, after a blank line, has the new vDisk (the first one did not)
      await waitFor('a later text with the new vDisk', () => /\n\n[^]*watched/.test(text.out.text) || undefined, 30_000, 100)
      expect(text.out.text.split('\n\n')[0]).not.toContain('watched')
      expect(text.out.text).toMatch(/\n\n.*name/i) // one print after another, a blank line between
      expect(text.out.text).not.toContain('\x1b[') // no screen redraw when stdout is not a terminal
    } finally {
      json.p.kill('SIGINT')
      text.p.kill('SIGINT')
    }
    expect(await json.closed).toBe(0)
    expect(await text.closed).toBe(0)
    // a command that changes something takes no --watch
    expect((await c.tess(['vdisk', 'create', 'w2', '--size', '1G', '--watch', '--json'])).json.error.code).toBe('TESS_E_USAGE')
    expect((await c.tess(['vdisk', 'delete', 'watched', '--yes', '--json'])).code).toBe(0)
  })

  it('rejects bad input with codes, hints and exit codes', async () => {
    const cases: Array<[string[], number, string]> = [
      [['vdisk', 'create', 'v1', '--size', '1G'], 4, 'TESS_E_EXISTS'],
      [['vdisk', 'create', 'zero', '--size', '0'], 2, 'TESS_E_INVALID'],
      [['vdisk', 'create', 'nan', '--size', 'lots'], 2, 'TESS_E_INVALID'],
      [['vdisk', 'create', 'odd', '--size', '1000'], 2, 'TESS_E_INVALID'],
      [['vdisk', 'create', 'unit', '--size', '5Q'], 2, 'TESS_E_INVALID'],
      [['vdisk', 'create', 'Bad_Name', '--size', '1G'], 2, 'TESS_E_INVALID'],
      [['vdisk', 'create', '-lead', '--size', '1G'], 2, 'TESS_E_USAGE'],
      [['vdisk', 'create', 'x'.repeat(64), '--size', '1G'], 2, 'TESS_E_INVALID'],
      [['vdisk', 'create', 'rf2', '--size', '1G', '--rf', '2'], 5, 'TESS_E_TOO_FEW_NODES'],
      [['vdisk', 'create', 'huge', '--size', '900T'], 5, 'TESS_E_CAPACITY'],
      [['vdisk', 'resize', 'v1', '--size', '512M'], 2, 'TESS_E_INVALID'],
      [['vdisk', 'show', 'nope'], 3, 'TESS_E_NOT_FOUND'],
      [['vdisk', 'delete', 'nope', '--yes'], 3, 'TESS_E_NOT_FOUND'],
      [['vdisk', 'delete', 'v1'], 2, 'TESS_E_USAGE'], // no terminal and no --yes
      [['vdisk', 'create', 'v9'], 2, 'TESS_E_USAGE'], // --size missing
      [['vdisk', 'list', '--bogus'], 2, 'TESS_E_USAGE'],
      [['vdisk', 'list', '--cluster', 'nosuch'], 3, 'TESS_E_NO_CLUSTER'],
    ]
    // every case refuses and changes nothing, so they run a few at a time
    const results = await mapLimit(cases, 4, async ([args]) => ({ json: await c.tess([...args, '--json']), text: await c.tess(args) }))
    for (const [i, [args, exit, code]] of cases.entries()) {
      const { json: r, text: t } = results[i]!
      expect({ args, exit: r.code, code: r.json?.error?.code }).toEqual({ args, exit, code })
      expect(r.json.error.message.length).toBeGreaterThan(5)
      expect(typeof r.json.error.hint).toBe('string')
      // without --json: message and hint on stderr, nothing on stdout
      expect(t.code).toBe(exit)
      expect(t.stdout).toBe('')
      expect(t.stderr).toContain(code)
    }
    // nothing changed
    const ls = await c.tess(['vdisk', 'list', '--json'])
    expect(ls.json.map((v: any) => [v.name, v.sizeBytes])).toEqual([['v1', 1024 ** 3]])
  })

  it('adds and removes disks with checks', async () => {
    const extra = path.join(c.root, 'disk2')
    fs.mkdirSync(extra)
    const add = await c.tess(['disk', 'add', extra, '--json'])
    expect(add.code).toBe(0)
    expect(add.json).toMatchObject({ path: extra, state: 'online' })
    const again = await c.tess(['disk', 'add', extra, '--json'])
    expect(again.code).toBe(4)
    expect(again.json.error.code).toBe('TESS_E_EXISTS')
    const inner = path.join(extra, 'sub')
    fs.mkdirSync(inner)
    expect((await c.tess(['disk', 'add', inner, '--json'])).json.error.code).toBe('TESS_E_EXISTS')
    expect((await c.tess(['disk', 'add', path.join(c.root, 'missing'), '--json'])).code).toBe(3)
    const file = path.join(c.root, 'afile')
    fs.writeFileSync(file, 'x')
    expect((await c.tess(['disk', 'add', file, '--json'])).json.error.code).toBe('TESS_E_INVALID')
    const ro = path.join(c.root, 'ro')
    fs.mkdirSync(ro)
    fs.chmodSync(ro, 0o500)
    // root ignores mode bits; a read-only bind mount is what really refuses writes
    const list = await c.tess(['disk', 'list', '--json'])
    expect(list.json).toHaveLength(2)
    const pool = await c.tess(['storage-pool', 'show', '--json'])
    expect(pool.json.disks).toHaveLength(2)
    // both disks share one filesystem: counted once
    expect(pool.json.capacityBytes).toBe(pool.json.disks[0].capacityBytes)
    // the numbers add up: capacity = used + free + reserved + other (a spare written between the
    // statfs and the count of spares can be counted twice for a moment: one spare at most)
    const j = pool.json
    expect(j.reservedBytes).toBeGreaterThanOrEqual(0)
    expect(j.otherBytes).toBeGreaterThanOrEqual(0)
    expect(Math.abs(j.usedBytes + j.freeBytes + j.reservedBytes + j.otherBytes - j.capacityBytes)).toBeLessThanOrEqual(33 * 1024 * 1024)
    const text = await c.tess(['storage-pool', 'show'])
    expect(text.stdout).toMatch(/^reserved: /m)
    expect(text.stdout).toMatch(/^other: .*other files/m)
    const rm = await c.tess(['disk', 'remove', extra, '--yes', '--json'])
    expect(rm.code).toBe(0)
    expect((await c.tess(['disk', 'list', '--json'])).json).toHaveLength(1)
    expect((await c.tess(['disk', 'remove', extra, '--json'])).code).toBe(2) // no terminal to ask on, no --yes
    expect((await c.tess(['disk', 'remove', extra, '--yes', '--json'])).code).toBe(3)
  })

  it('balances the disks after a disk add: the new disk gets its share of the extent groups; disk remove --evacuate moves them back; the data reads back', async () => {
    const src = path.join(c.root, 'bal.bin')
    fs.writeFileSync(src, crypto.randomBytes(256 * MiB))
    expect((await c.tess(['vdisk', 'create', 'bal', '--size', '512M', '--json'])).code).toBe(0)
    const w = await run('nbdcopy', [src, c.nbdUri('bal')], { timeoutMs: 120_000 })
    expect(w.code, w.stderr).toBe(0)
    const groups = (disk: string) => fs.readdirSync(path.join(disk, egroupDirName)).filter((f) => f.endsWith('.eg')).length
    const disks = (await c.tess(['disk', 'list', '--json'])).json
    expect(disks).toHaveLength(1)
    const first = disks[0].path as string
    const n = groups(first)
    expect(n).toBeGreaterThanOrEqual(8) // 32 extents of 1 MiB per group
    const extra = path.join(c.root, 'disk3')
    fs.mkdirSync(extra)
    expect((await c.tess(['disk', 'add', extra, '--json'])).code).toBe(0)
    // the disk add starts a scan; the curator master moves groups to the new disk (within the node)
    const h = await waitFor('the curator to balance the disks', async () => {
      const r = await c.tess(['cluster', 'health', '--json'])
      return (r.json?.curator?.lastBalanceMoved?.egroups ?? 0) > 0 && r.json.curator.balancing === false ? r : undefined
    }, 90_000, 1000)
    expect(h.json.state).toBe('healthy')
    expect(h.json.curator.lastBalanceMoved.planned).toBe(h.json.curator.lastBalanceMoved.egroups)
    const [a, b] = [groups(first), groups(extra)]
    expect(a + b, 'every group once: the old file goes after each move').toBe(n)
    expect(Math.abs(a - b), `${a} and ${b} groups on the two disks`).toBeLessThanOrEqual(1)
    expect((await c.tess(['cluster', 'health'])).stdout).toMatch(/disk balance:\s+last moved .*extent group replica/)
    const readBack = async () => {
      const out = path.join(c.root, 'bal-out.bin')
      const r = await run('nbdcopy', [c.nbdUri('bal'), out], { timeoutMs: 120_000 })
      expect(r.code, r.stderr).toBe(0)
      expect(fs.readFileSync(out).subarray(0, 256 * MiB).equals(fs.readFileSync(src))).toBe(true)
      fs.rmSync(out)
    }
    await readBack()
    // the new disk holds data now: its removal is refused, with --evacuate it moves the data back first
    const rm = await c.tess(['disk', 'remove', extra, '--yes', '--json'])
    expect(rm.code).toBe(4)
    expect(rm.json.error.code).toBe('TESS_E_CONFLICT')
    expect(rm.json.error.hint).toContain('--evacuate')
    const ev = await c.tess(['disk', 'remove', extra, '--evacuate', '--yes', '--json'])
    expect(ev.code, ev.stdout + ev.stderr).toBe(0)
    expect(ev.json).toMatchObject({ path: extra, egroupsMoved: b })
    expect(groups(first)).toBe(n)
    expect((await c.tess(['disk', 'list', '--json'])).json.map((d: any) => d.path)).toEqual([first])
    await readBack()
    // the only disk of the node: nothing can take its data, refused before anything changes
    const only = await c.tess(['disk', 'remove', first, '--evacuate', '--yes', '--json'])
    expect(only.code).toBe(5)
    expect(only.json.error.code).toBe('TESS_E_PRECONDITION')
    expect((await c.tess(['disk', 'list', '--json'])).json[0].draining).toBeUndefined()
    fs.rmSync(src)
    expect((await c.tess(['vdisk', 'delete', 'bal', '--yes', '--json'])).code).toBe(0)
  })

  it('refuses unauthenticated, wrong-credential and malformed API requests', async () => {
    const ctx = JSON.parse(fs.readFileSync(path.join(c.configDir, 'contexts.json'), 'utf8')).clusters.found
    const call = (method: string, p: string, headers: Record<string, string>, body?: string) => new Promise<{ status: number, body: any }>((resolve, reject) => {
      const req = https.request(`https://127.0.0.1:${c.ports.api}${p}`, { method, ca: ctx.caCert, headers, agent: false }, (res) => {
        let d = ''
        res.on('data', (x) => { d += x })
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(d) }))
      })
      req.on('error', reject)
      req.end(body)
    })
    const none = await call('GET', '/v1/vdisks', {})
    expect(none.status).toBe(401)
    expect(none.body.error.code).toBe('TESS_E_AUTH')
    const wrong = await call('GET', '/v1/vdisks', { authorization: 'Bearer not-the-token' })
    expect(wrong.status).toBe(401)
    const auth = { authorization: `Bearer ${ctx.token}`, 'content-type': 'application/json' }
    const bad = await call('POST', '/v1/vdisks', auth, '{"name": "x", ')
    expect(bad.status).toBe(400)
    expect(bad.body.error.code).toBe('TESS_E_BAD_REQUEST')
    const neg = await call('POST', '/v1/vdisks', auth, JSON.stringify({ name: 'neg', sizeBytes: -5 }))
    expect(neg.status).toBe(400)
    const str = await call('POST', '/v1/vdisks', auth, JSON.stringify({ name: 'str', sizeBytes: '1G' }))
    expect(str.status).toBe(400)
    const arr = await call('POST', '/v1/vdisks', auth, '[1,2,3]')
    expect(arr.status).toBe(400)
    const rf = await call('POST', '/v1/vdisks', auth, JSON.stringify({ name: 'rf', sizeBytes: 4096, rf: 9 }))
    expect(rf.status).toBe(400)
    // an oversized body: a coded 413 the client receives (it used to be a reset)
    const big = await call('POST', '/v1/vdisks', auth, JSON.stringify({ name: 'big', pad: 'x'.repeat(2 * 1024 * 1024) }))
    expect(big.status).toBe(413)
    expect(big.body.error.code).toBe('TESS_E_TOO_LARGE')
    // the CVM is still serving
    const ok = await call('GET', '/v1/vdisks', auth)
    expect(ok.status).toBe(200)
    // and the CLI refuses a context whose token is wrong
    const ctxFile = path.join(c.configDir, 'contexts.json')
    const saved = fs.readFileSync(ctxFile, 'utf8')
    const doc = JSON.parse(saved)
    doc.clusters.found.token = 'wrong'
    fs.writeFileSync(ctxFile, JSON.stringify(doc))
    const r = await c.tess(['vdisk', 'list', '--json'])
    expect(r.code).toBe(7)
    expect(r.json.error.code).toBe('TESS_E_AUTH')
    fs.writeFileSync(ctxFile, saved)
  })

  it('survives kill -9 of the CVM: the supervisor restarts it and state is intact', async () => {
    const before = (await c.tess(['vdisk', 'list', '--json'])).json
    const pid = c.pid('cvm')!
    expect(alive(pid)).toBe(true)
    process.kill(pid, 'SIGKILL')
    const newPid = await waitFor('a new CVM pid', () => {
      const p = c.pid('cvm')
      return p !== undefined && p !== pid && alive(p) ? p : undefined
    })
    expect(newPid).not.toBe(pid)
    const after = await c.tess(['vdisk', 'list', '--json'])
    expect(after.code).toBe(0)
    expect(after.json.map((v: any) => [v.id, v.name, v.sizeBytes])).toEqual(before.map((v: any) => [v.id, v.name, v.sizeBytes]))
    const st = await c.tess(['cluster', 'status', '--json'])
    const cvm = st.json.nodes[0].daemons.find((d: any) => d.name === 'cvm')
    expect(cvm.pid).toBe(newPid)
    expect(cvm.restarts).toBeGreaterThanOrEqual(1)
  })

  it('power loss: every process of the node killed at once; the boot entry point brings it back with the data (and only once)', async () => {
    const src = path.join(c.root, 'boot.bin')
    fs.writeFileSync(src, crypto.randomBytes(24 * MiB))
    expect((await c.tess(['vdisk', 'create', 'boot', '--size', '64M', '--json'])).code).toBe(0)
    const w = await run('nbdcopy', ['--flush', src, c.nbdUri('boot')], { timeoutMs: 120_000 })
    expect(w.code, w.stderr).toBe(0)
    // "power off": SIGKILL to the supervisor first (so nothing is restarted), then to its daemons
    const before = c.pids()
    expect(before).toHaveLength(3)
    for (const p of before) process.kill(p, 'SIGKILL')
    for (const p of before) await waitFor(`pid ${p} gone`, () => (alive(p) ? undefined : true))
    const boot = path.join(repoRoot, 'dist', 'supervisor', 'boot.js')
    // "power on": the one command the README gives for starting a node at boot; its pidfiles are stale
    const on = await run(process.execPath, [boot, '--data-dir', c.dataDir])
    expect(on.code, on.stdout + on.stderr).toBe(0)
    expect(on.stdout).toMatch(/removed stale pidfiles: .*supervisor\.pid/)
    expect(on.stdout).toMatch(/started the supervisor/)
    const st = await waitFor('etcd and the CVM healthy again', async () => {
      const r = await c.tess(['cluster', 'status', '--json'])
      return r.code === 0 && r.json.nodes[0].daemons.every((d: any) => d.healthy) ? r : undefined
    }, 60_000, 500)
    const sup = c.pid('supervisor')!
    expect(before).not.toContain(sup)
    expect(st.json.nodes[0].daemons.map((d: any) => d.pid)).not.toContain(before[1])
    // a second run finds it running and starts nothing
    const again = await run(process.execPath, [boot, '--data-dir', c.dataDir])
    expect(again.code, again.stderr).toBe(0)
    expect(again.stdout).toContain(`already running (pid ${sup})`)
    // what was flushed before the power loss is there
    const out = path.join(c.root, 'boot-out.bin')
    const r = await run('nbdcopy', [c.nbdUri('boot'), out], { timeoutMs: 120_000 })
    expect(r.code, r.stderr).toBe(0)
    expect(fs.readFileSync(out).subarray(0, 24 * MiB).equals(fs.readFileSync(src))).toBe(true)
    fs.rmSync(out)
    // a directory that holds no node, and no directory: clear errors
    const none = await run(process.execPath, [boot, '--data-dir', path.join(c.root, 'no-node')])
    expect(none.code).toBe(3)
    expect(none.stderr).toMatch(/holds no node/)
    expect((await run(process.execPath, [boot])).code).toBe(2)
  }, 180_000)

  it('destroy stops every process it started and removes the data dir', async () => {
    const pids = c.pids()
    expect(pids.length).toBe(3)
    const r = await c.tess(['cluster', 'destroy', '--yes', '--json'])
    expect(r.code).toBe(0)
    expect(r.json.name).toBe('found')
    for (const p of pids) expect(ownedBy(p, c.root)).toBe(false)
    expect(fs.existsSync(c.dataDir)).toBe(false)
    const ls = await c.tess(['cluster', 'list', '--json'])
    expect(ls.json).toEqual([])
  })
})
