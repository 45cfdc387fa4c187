import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { TessError } from '../../src/lib/errors.js'
import { jsonRequest } from '../../src/lib/jsonhttp.js'
import { repoRoot, runTess, waitFor, type TessResult } from '../helpers/cluster.js'
import { holdingNbdClient, qemuImgFromNbdTls, qemuImgToNbdTls, run } from '../helpers/run.js'
import { createTestHosts, nbdBurstInHost, type TestHosts } from '../helpers/testhosts.js'
import { buildBundle, type Bundle } from '../../src/bootstrap/bundle.js'

const MiB = 1024 * 1024
/** a vDisk of `tess cluster health --json` with every extent group at RF copies */
const wholeVdisk = (v: any): boolean => v.underReplicated === 0 && v.lost === 0 && v.healthy === v.egroups

function sha(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex')
}

/**
 * Three test hosts (network namespaces with their own sshd), bootstrapped over real SSH into one
 * cluster: RF 2 and RF 3 replication, forwarding through a non-owner, and the loss of a host.
 */
describe('multi-node cluster on 3 (+1) test hosts', () => {
  let th: TestHosts
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-mn-'))
  const env = { TESS_CONFIG_DIR: path.join(root, 'config') }
  const tess = (args: string[]): Promise<TessResult> => runTess(args, env, { timeoutMs: 240_000 })
  const addr = (i: number) => th.hosts[i]!.address
  // NBD on TCP requires TLS: a client certificate from `tess vdisk credentials`, made after create
  const creds = path.join(root, 'nbd-creds')
  const uri = (i: number, v: string) => `nbds://${addr(i)}:10809/${v}?tls-certificates=${creds}`
  const big = path.join(root, 'random.bin')
  /** The last lines of host i's CVM log, so a failure in CI says what the CVM saw. */
  const cvmLog = async (i: number) =>
    `\n--- CVM log of host ${i + 1} ---\n${(await th.exec(th.hosts[i]!, ['sh', '-c', 'tail -n 40 /var/lib/tess/logs/cvm.log'])).stdout}`

  /**
   * First contact (issue 20): a new RF 2 vDisk takes 16 MiB through host `via` over one connection
   * with 64 writes in flight, at once, without an error; the bytes read back through host `check`.
   * The vDisk is deleted after, so the replica counts below see only their own vDisks.
   */
  const firstWrites = async (v: string, via: number, check: number) => {
    const src = path.join(root, `${v}.bin`)
    fs.writeFileSync(src, crypto.randomBytes(16 * MiB))
    const c = await tess(['vdisk', 'create', v, '--size', '64M', '--rf', '2', '--json'])
    expect(c.code, c.stdout + c.stderr).toBe(0)
    const w = await nbdBurstInHost(th, th.hosts[via]!, src, v)
    expect(w.code, `writes through host ${via + 1}: ${w.stderr}`).toBe(0)
    if (!fs.existsSync(creds)) {
      const cr = await tess(['vdisk', 'credentials', '--user', 'ci', '--out', creds, '--json'])
      expect(cr.code, cr.stdout + cr.stderr).toBe(0)
    }
    const out = path.join(root, `${v}-out.bin`)
    const r = await run('nbdcopy', [uri(check, v), out])
    expect(r.code, r.stderr).toBe(0)
    expect(fs.readFileSync(out).subarray(0, 16 * MiB).equals(fs.readFileSync(src))).toBe(true)
    fs.rmSync(out)
    fs.rmSync(src)
    const d = await tess(['vdisk', 'delete', v, '--yes', '--json'])
    expect(d.code, d.stdout + d.stderr).toBe(0)
  }

  /**
   * A fault during writes: a new RF 2 vDisk `v` of 256 MiB takes random data through host `via`
   * (one nbdcopy with FLUSH), and `fault` strikes while the copy is in flight. The copy must
   * succeed: every write acknowledged. Returns the file written, to compare with what reads back.
   */
  const writeDuring = async (v: string, via: number, fault: () => Promise<void>): Promise<string> => {
    expect((await tess(['vdisk', 'create', v, '--size', '256M', '--rf', '2', '--json'])).code).toBe(0)
    const file = path.join(root, `${v}.bin`)
    fs.writeFileSync(file, crypto.randomBytes(256 * MiB))
    let written = false
    const writing = run('nbdcopy', ['--flush', file, uri(via, v)], { timeoutMs: 300_000 }).finally(() => { written = true })
    await new Promise((r) => setTimeout(r, 200))
    expect(written, 'the write was still in flight when the fault struck').toBe(false)
    await fault()
    const w = await writing
    expect(w.code, w.code === 0 ? '' : w.stderr + await cvmLog(via)).toBe(0)
    return file
  }

  /** the previous release's build, started at once (niced) so that it overlaps the tests before the upgrade's */
  let previous: Promise<{ dir: string, commit: string, bundle: Bundle }> | undefined

  beforeAll(async () => {
    th = await createTestHosts(4) // 3 bootstrapped; the 4th is added and removed
    fs.writeFileSync(big, crypto.randomBytes(256 * MiB))
    previous = previousRelease()
    previous.catch(() => undefined) // the upgrade test awaits it and fails with its error
  }, 60_000)

  afterAll(async () => {
    try {
      await previous?.catch(() => undefined) // its files are under root
      await tess(['cluster', 'destroy', '--yes'])
    } finally {
      await th?.destroy()
      fs.rmSync(root, { recursive: true, force: true })
    }
  }, 180_000)

  it('refuses unknown host keys without a terminal, then bootstraps with pinned keys', async () => {
    const hosts = th.hosts.slice(0, 3).map((h) => h.address).join(',')
    const noKeys = await tess(['cluster', 'create', '--name', 'mn', '--hosts', hosts, '--ssh-key', th.keyFile, '--json'])
    expect(noKeys.code).toBe(7)
    expect(noKeys.json.error.code).toBe('TESS_E_AUTH')
    const dry = await tess(['cluster', 'create', '--name', 'mn', '--hosts', hosts, '--ssh-key', th.keyFile, '--known-hosts', th.knownHostsFile, '--dry-run', '--json'])
    expect(dry.code, dry.stdout + dry.stderr).toBe(0)
    expect(dry.json.dryRun).toBe(true)
    expect(dry.json.plan.etcdMembers).toHaveLength(3)
    const r = await tess(['cluster', 'create', '--name', 'mn', '--hosts', hosts, '--ssh-key', th.keyFile, '--known-hosts', th.knownHostsFile, '--rf', '2', '--json'])
    expect(r.code, r.stdout + r.stderr).toBe(0)
    expect(r.json.nodes).toHaveLength(3)
    // credentials for the checks and the later tests: made inside firstWrites, after the writes
    await firstWrites('first', 0, 1)
    // re-running converges instead of failing on what exists
    const again = await tess(['cluster', 'create', '--name', 'mn', '--hosts', hosts, '--ssh-key', th.keyFile, '--known-hosts', th.knownHostsFile, '--rf', '2', '--json'])
    expect(again.code, again.stdout + again.stderr).toBe(0)
    expect(again.json.plan.nodes.map((n: any) => n.state)).toEqual(['running', 'running', 'running'])
    const st = await tess(['cluster', 'status', '--json'])
    expect(st.json.nodes.map((n: any) => n.state)).toEqual(['up', 'up', 'up'])
    for (const n of st.json.nodes) for (const d of n.daemons) expect(d.healthy, `${n.name} ${d.name}`).toBe(true)
    const hl = await tess(['host', 'list', '--json'])
    expect(hl.json.map((h: any) => h.disks.length)).toEqual([1, 1, 1])
    // the curator heals around a lost node after 5 s instead of 30 (the loss of host 3, below);
    // out-of-range values are refused and change nothing
    expect((await tess(['cluster', 'update', '--node-down-grace', '1s', '--json'])).code).toBe(2)
    const set = await tess(['cluster', 'update', '--node-down-grace', '5s', '--json'])
    expect(set.code, set.stdout + set.stderr).toBe(0)
    expect(set.json).toEqual({ nodeDownGraceMs: 5000, repairBytesPerSec: null, scrubBytesPerSec: 64 * MiB })
    expect((await tess(['cluster', 'update'])).stdout).toMatch(/node down grace:\s+5s/)
    // two bootstraps of 3 hosts (the bundle built and installed, etcd formed) and the first writes:
    // 90-115 s alone, past 120 s with the other lane's containers test on the same 2 cores
  }, 300_000)

  it('RF 3 puts a copy of every extent group on every host', async () => {
    expect((await tess(['vdisk', 'create', 'three', '--size', '64M', '--rf', '3', '--json'])).code).toBe(0)
    const src = path.join(root, 'three.bin')
    fs.writeFileSync(src, crypto.randomBytes(40 * MiB))
    expect((await run('nbdcopy', ['--flush', src, uri(2, 'three')])).code).toBe(0)
    const files = await Promise.all([0, 1, 2].map(async (i) => (await th.exec(th.hosts[i]!, ['sh', '-c', 'ls /var/lib/tess/disks/d0/egroups | grep -c "\\.eg$"'])).stdout.trim()))
    expect(files).toEqual(['2', '2', '2'])
    const out = path.join(root, 'three-out.bin')
    expect((await run('nbdcopy', [uri(0, 'three'), out])).code).toBe(0)
    expect(sha(out).length).toBe(64)
    expect(fs.readFileSync(out).subarray(0, 40 * MiB).equals(fs.readFileSync(src))).toBe(true)
  })

  it('users hold on every node: a token works through any host, a rotation is refused on all of them, changes through any host are in one audit log', async () => {
    const made = await tess(['user', 'create', 'op', '--role', 'operator', '--json'])
    expect(made.code, made.stdout + made.stderr).toBe(0)
    const ca = Buffer.from((await th.exec(th.hosts[0]!, ['cat', '/var/lib/tess/pki/ca.crt'])).stdout)
    const apiPort = (JSON.parse((await th.exec(th.hosts[0]!, ['cat', '/var/lib/tess/node.json'])).stdout) as { api: { port: number } }).api.port
    const at = (i: number, token: string) => ({ endpoint: `https://${addr(i)}:${apiPort}`, ca, token, what: `host ${i + 1}` })
    const answers = async (i: number, token: string) => jsonRequest(at(i, token), 'GET', '/v1/vdisks', undefined, 10_000).then(() => 'ok', (e: unknown) => (e as TessError).code)
    // every CVM follows the users in etcd: the new token works through hosts 2 and 3
    for (const i of [1, 2]) await waitFor(`host ${i + 1} to know user op`, async () => (await answers(i, made.json.token)) === 'ok' || undefined, 15_000, 200)
    // a change through host 3 by op, refused one through host 2
    await jsonRequest(at(2, made.json.token), 'POST', '/v1/vdisks', { name: 'by-op', sizeBytes: 16 * MiB, rf: 2 }, 30_000)
    const refused = await jsonRequest(at(1, made.json.token), 'POST', '/v1/registries', { name: 'r', url: 'http://127.0.0.1:5999', insecure: true }, 10_000).catch((e: unknown) => e as TessError)
    expect((refused as TessError).code).toBe('TESS_E_FORBIDDEN')
    // rotated through host 1: the old token is refused through hosts 2 and 3 within seconds
    const rot = await tess(['user', 'rotate', 'op', '--json'])
    expect(rot.code, rot.stdout + rot.stderr).toBe(0)
    for (const i of [1, 2]) await waitFor(`host ${i + 1} to refuse op's old token`, async () => (await answers(i, made.json.token)) === 'TESS_E_AUTH' || undefined, 15_000, 200)
    expect(await answers(2, rot.json.token)).toBe('ok')
    // one audit log for the cluster, whichever host took the change
    const log = await tess(['audit', 'list', '--user', 'op', '--json'])
    expect(log.code, log.stdout + log.stderr).toBe(0)
    // both changes, whichever host took them (the order between two hosts is their wall clocks': it
    // came out reversed once in CI, so it is not asserted; the times are printed if this fails)
    const entries = log.json as Array<{ method: string, path: string, status: number, at: string }>
    expect(entries.map((e) => `${e.method} ${e.path} ${e.status}`).sort(), JSON.stringify(entries)).toEqual(['POST /v1/registries 403', 'POST /v1/vdisks 201'])
    expect((await tess(['vdisk', 'delete', 'by-op', '--yes', '--json'])).code).toBe(0)
    expect((await tess(['user', 'delete', 'op', '--yes', '--json'])).code).toBe(0)
  })

  it('an encrypted vDisk: a CVM that restarts gets the cluster key from the others and serves it again', async () => {
    const mk = await tess(['vdisk', 'create', 'enc', '--size', '64M', '--rf', '2', '--encrypted', '--json'])
    expect(mk.code, mk.stdout + mk.stderr).toBe(0)
    const src = path.join(root, 'enc.bin')
    fs.writeFileSync(src, crypto.randomBytes(16 * MiB))
    // written through host 2, which becomes its owner (and so must open it with the key)
    const w = await run('nbdcopy', ['--flush', src, uri(1, 'enc')])
    expect(w.code, w.stderr).toBe(0)
    expect((await tess(['vdisk', 'show', 'enc', '--json'])).json.owner).toBe(th.hosts[1]!.name)
    const pidOf = async () => (await th.exec(th.hosts[1]!, ['cat', '/var/lib/tess/run/cvm.pid'])).stdout.trim()
    const old = await pidOf()
    await th.exec(th.hosts[1]!, ['kill', '-9', old])
    await waitFor('host 2\'s CVM to restart', async () => {
      const p = await pidOf()
      return p !== '' && p !== old ? p : undefined
    }, 30_000, 200)
    // no operator involved: the new CVM asks the others for the key, then opens the vDisk again
    const out = path.join(root, 'enc-out.bin')
    await waitFor('a read through host 2', async () => (await run('nbdcopy', [uri(1, 'enc'), out])).code === 0 || undefined, 60_000, 500)
    expect(fs.readFileSync(out).subarray(0, 16 * MiB).equals(fs.readFileSync(src))).toBe(true)
    expect((await tess(['vdisk', 'show', 'enc', '--json'])).json.owner).toBe(th.hosts[1]!.name)
    fs.rmSync(out)
    fs.rmSync(src)
    expect((await tess(['vdisk', 'delete', 'enc', '--yes', '--json'])).code).toBe(0)
  }, 180_000)

  it('writes 256 MiB at RF 2 through host 1 and reads it through host 2 (forwarded)', async () => {
    const c = await tess(['vdisk', 'create', 'data', '--size', '512M', '--rf', '2', '--json'])
    expect(c.code, c.stdout).toBe(0)
    const w = await qemuImgToNbdTls(big, creds, addr(0), 10809, 'data')
    expect(w.code, w.stderr).toBe(0)
    const show = await tess(['vdisk', 'show', 'data', '--json'])
    expect(show.json.owner).toBe(th.hosts[0]!.name)
    expect(show.json.allocatedBytes).toBe(256 * MiB)
    const out = path.join(root, 'data-out.bin')
    const r = await run('nbdcopy', [uri(1, 'data'), out], { timeoutMs: 300_000 })
    expect(r.code, r.stderr).toBe(0)
    expect(crypto.createHash('sha256').update(fs.readFileSync(out).subarray(0, 256 * MiB)).digest('hex')).toBe(sha(big))
    fs.rmSync(out)
    // every extent group has exactly 2 replicas, on 2 different hosts
    const lists = await Promise.all([0, 1, 2].map(async (i) => (await th.exec(th.hosts[i]!, ['sh', '-c', 'ls /var/lib/tess/disks/d0/egroups'])).stdout.split('\n').filter((f) => f.endsWith('.eg'))))
    const count = new Map<string, number>()
    for (const l of lists) for (const f of l) count.set(f, (count.get(f) ?? 0) + 1)
    const counts = [...count.values()]
    expect(counts.filter((n) => n === 3).length).toBe(2) // the RF 3 vDisk's two groups
    expect(counts.filter((n) => n === 2).length).toBeGreaterThanOrEqual(8) // 256 MiB / 32 MiB
    expect(counts.every((n) => n === 2 || n === 3)).toBe(true)
    // the replica writes went over bulk connections (data port mode crc, the default), none fell back to TLS
    const logs = await Promise.all([0, 1, 2].map(async (i) => (await th.exec(th.hosts[i]!, ['sh', '-c', 'cat /var/lib/tess/logs/cvm.log'])).stdout))
    expect(logs[0]).toMatch(/data port: bulk connection to node \S+ .* is up/)
    for (const l of logs) expect(l).not.toMatch(/no bulk connection|checksum mismatch/)
  })

  it('snapshots of an RF 2 vDisk owned by host 1: taken through host 2, read through hosts 2 and 3 (forwarded to the owner), cloned (the clone on host 2 reads its parent from host 1), deleted through host 3', async () => {
    expect((await tess(['vdisk', 'create', 'snapped', '--size', '64M', '--rf', '2', '--json'])).code).toBe(0)
    const first = path.join(root, 'snap-first.bin')
    fs.writeFileSync(first, crypto.randomBytes(32 * MiB))
    expect((await run('nbdcopy', ['--flush', first, uri(0, 'snapped')], { timeoutMs: 120_000 })).code).toBe(0)
    expect((await tess(['vdisk', 'show', 'snapped', '--json'])).json.owner).toBe(th.hosts[0]!.name)
    // the API of hosts 2 and 3 with an operator's token: the snapshot is made by the owner (host 1)
    const made = await tess(['user', 'create', 'snapper', '--role', 'operator', '--json'])
    expect(made.code, made.stdout + made.stderr).toBe(0)
    const ca = Buffer.from((await th.exec(th.hosts[0]!, ['cat', '/var/lib/tess/pki/ca.crt'])).stdout)
    const apiPort = (JSON.parse((await th.exec(th.hosts[0]!, ['cat', '/var/lib/tess/node.json'])).stdout) as { api: { port: number } }).api.port
    const at = (i: number) => ({ endpoint: `https://${addr(i)}:${apiPort}`, ca, token: made.json.token as string, what: `host ${i + 1}` })
    await waitFor('host 2 to know user snapper', async () => jsonRequest(at(1), 'GET', '/v1/vdisks', undefined, 10_000).then(() => true, () => undefined), 15_000, 200)
    const snap = await jsonRequest<{ name: string, nbdUri: string }>(at(1), 'POST', '/v1/vdisks/snapped/snapshots', { name: 's1' }, 60_000)
    expect(snap.name).toBe('s1')
    // new data through host 2 (forwarded to the owner), copy-on-write on host 1
    const second = path.join(root, 'snap-second.bin')
    fs.writeFileSync(second, crypto.randomBytes(8 * MiB))
    expect((await run('nbdcopy', ['--flush', second, uri(1, 'snapped')], { timeoutMs: 120_000 })).code).toBe(0)
    const now = Buffer.from(fs.readFileSync(first))
    fs.readFileSync(second).copy(now, 0)
    for (const [i, name, want] of [[1, 'snapped@s1', fs.readFileSync(first)], [2, 'snapped@s1', fs.readFileSync(first)], [0, 'snapped', now]] as const) {
      const out = path.join(root, 'snap-out.bin')
      const r = await run('nbdcopy', [uri(i, name), out], { timeoutMs: 120_000 })
      expect(r.code, r.code === 0 ? '' : r.stderr + await cvmLog(i)).toBe(0)
      expect(fs.readFileSync(out).subarray(0, 32 * MiB).equals(want), `${name} through host ${i + 1}`).toBe(true)
      fs.rmSync(out)
    }
    // a clone of it, RF 2, written through host 2 (which takes the clone): it reads its parent
    // from host 1 (forwarded) and is read through host 3 (forwarded to host 2)
    const cl = await tess(['vdisk', 'clone', 'snapped@s1', 'snapclone', '--rf', '2', '--json'])
    expect(cl.code, cl.stdout + cl.stderr).toBe(0)
    const third = path.join(root, 'snap-third.bin')
    fs.writeFileSync(third, crypto.randomBytes(4 * MiB))
    expect((await run('nbdcopy', ['--flush', third, uri(1, 'snapclone')], { timeoutMs: 120_000 })).code).toBe(0)
    expect((await tess(['vdisk', 'show', 'snapclone', '--json'])).json).toMatchObject({ owner: th.hosts[1]!.name, parent: 'snapped@s1' })
    const cloned = Buffer.from(fs.readFileSync(first))
    fs.readFileSync(third).copy(cloned, 0)
    const cout = path.join(root, 'snapclone-out.bin')
    const cr = await run('nbdcopy', [uri(2, 'snapclone'), cout], { timeoutMs: 120_000 })
    expect(cr.code, cr.code === 0 ? '' : cr.stderr + await cvmLog(1)).toBe(0)
    expect(fs.readFileSync(cout).subarray(0, 32 * MiB).equals(cloned)).toBe(true)
    fs.rmSync(cout)
    // its parent snapshot stays while it reads from it; flattened (by its owner, asked through host 1), it stands alone
    const refused = await jsonRequest(at(2), 'DELETE', '/v1/vdisks/snapped/snapshots/s1', undefined, 60_000).catch((e: unknown) => e as TessError)
    expect((refused as TessError).code).toBe('TESS_E_CONFLICT')
    const flat = await tess(['vdisk', 'flatten', 'snapclone', '--json'])
    expect(flat.code, flat.stdout + flat.stderr).toBe(0)
    expect(flat.json.parent).toBeUndefined()
    await jsonRequest(at(2), 'DELETE', '/v1/vdisks/snapped/snapshots/s1', undefined, 60_000)
    const fr = await run('nbdcopy', [uri(0, 'snapclone'), cout], { timeoutMs: 120_000 })
    expect(fr.code, fr.stderr).toBe(0)
    expect(fs.readFileSync(cout).subarray(0, 32 * MiB).equals(cloned)).toBe(true)
    fs.rmSync(cout)
    expect((await tess(['vdisk', 'delete', 'snapclone', '--yes', '--json'])).code).toBe(0)
    fs.rmSync(third)
    expect((await tess(['vdisk', 'snapshot', 'list', 'snapped', '--json'])).json).toEqual([])
    expect((await run('nbdinfo', [uri(0, 'snapped@s1')])).code).not.toBe(0)
    expect((await tess(['vdisk', 'delete', 'snapped', '--yes', '--json'])).code).toBe(0)
    expect((await tess(['user', 'delete', 'snapper', '--yes', '--json'])).code).toBe(0)
    fs.rmSync(first)
    fs.rmSync(second)
  })

  it('refuses to delete a vDisk through host 1 while an NBD client is connected through host 2; deletes it once the client is gone', async () => {
    expect((await tess(['vdisk', 'create', 'held', '--size', '64M', '--rf', '2', '--json'])).code).toBe(0)
    // a client that wrote and flushed through host 2 holds its connection meanwhile
    await holdingNbdClient(uri(1, 'held'), async () => {
      const d = await tess(['vdisk', 'delete', 'held', '--yes', '--json'])
      expect(d.code, d.stdout + d.stderr).toBe(4)
      expect(d.json.error.code).toBe('TESS_E_CONFLICT')
      expect(d.json.error.message).toContain(`through node ${th.hosts[1]!.name}`)
      // --dry-run makes the same check and is refused the same way
      const dry = await tess(['vdisk', 'delete', 'held', '--dry-run', '--json'])
      expect(dry.code, dry.stdout + dry.stderr).toBe(4)
      expect(dry.json.error.message).toContain(`through node ${th.hosts[1]!.name}`)
      expect((await tess(['vdisk', 'show', 'held', '--json'])).code).toBe(0)
    }, { write: true })
    // the client is gone: the delete goes through (its disconnect is seen by host 2 at once or soon after)
    await waitFor('the delete once the client left', async () => ((await tess(['vdisk', 'delete', 'held', '--yes', '--json'])).code === 0 ? true : undefined), 30_000, 500)
    expect((await tess(['vdisk', 'show', 'held', '--json'])).code).toBe(3)
  })

  it('repairs a corrupt replica from a good one on read', async () => {
    // the owner (host 1) reads its local replica first: corrupt one extent there
    const egDir = '/var/lib/tess/disks/d0/egroups'
    const files = (await th.exec(th.hosts[0]!, ['sh', '-c', `ls ${egDir} | grep '\\.eg$'`])).stdout.split('\n').filter(Boolean)
    expect(files.length).toBeGreaterThan(0)
    const before = path.join(root, 'repair-before.bin')
    expect((await run('nbdcopy', [uri(0, 'data'), before], { timeoutMs: 300_000 })).code).toBe(0)
    // flip one byte in the data region of every local extent group file of host 1 that holds
    // data there (a group made ahead of need holds none yet)
    let flipped = 0
    for (const f of files) {
      const at = 128 * 1024 + 4096 * 3 + 17
      const flip = `python3 -c "import sys; f=open(sys.argv[1],'r+b'); f.seek(${at}); b=f.read(1); f.seek(${at}); f.write(bytes([b[0]^0xff])) if b else None; print(len(b)); f.close()" ${egDir}/${f}`
      const r = await th.exec(th.hosts[0]!, ['sh', '-c', flip])
      expect(r.code, r.stderr).toBe(0)
      flipped += Number(r.stdout.trim())
    }
    expect(flipped).toBeGreaterThan(0)
    const after = path.join(root, 'repair-after.bin')
    const r = await run('nbdcopy', [uri(0, 'data'), after], { timeoutMs: 300_000 })
    expect(r.code, r.stderr).toBe(0)
    expect(sha(after)).toBe(sha(before))
    const log = (await th.exec(th.hosts[0]!, ['sh', '-c', 'cat /var/lib/tess/logs/cvm.log'])).stdout
    expect(log).toMatch(/checksum mismatch/)
    expect(log).toMatch(/repairing replica of extent group/)
    fs.rmSync(before)
    fs.rmSync(after)
  })

  it('the scrub finds bad copies that no read touches (host 2 holds second copies) and rewrites them from good ones', async () => {
    const egDir = '/var/lib/tess/disks/d0/egroups'
    const files = (await th.exec(th.hosts[1]!, ['sh', '-c', `ls ${egDir} | grep '\\.eg$'`])).stdout.split('\n').filter(Boolean)
    expect(files.length).toBeGreaterThan(0)
    // one byte of block 7 of slot 0 in every extent group file of host 2
    for (const f of files) {
      const at = 128 * 1024 + 4096 * 7 + 5
      const flip = `python3 -c "import sys; f=open(sys.argv[1],'r+b'); f.seek(${at}); b=f.read(1); f.seek(${at}); f.write(bytes([b[0]^0xff])) if b else None; f.close()" ${egDir}/${f}`
      expect((await th.exec(th.hosts[1]!, ['sh', '-c', flip])).code).toBe(0)
    }
    const s1 = await tess(['cluster', 'scrub', '--rate', '1G', '--wait', '--json'])
    expect(s1.code, s1.stdout + s1.stderr).toBe(0)
    expect(s1.json).toMatchObject({ started: true, bytesPerSec: 1024 ** 3 })
    expect(s1.json.found.badBlocks).toBeGreaterThan(0)
    expect(s1.json.found.repairedBlocks).toBe(s1.json.found.badBlocks)
    expect(s1.json.found.failedVdisks).toEqual([])
    // a second pass finds every copy good: the bad blocks were rewritten
    const s2 = await tess(['cluster', 'scrub', '--wait', '--json'])
    expect(s2.code, s2.stdout + s2.stderr).toBe(0)
    expect(s2.json.bytesPerSec).toBe(1024 ** 3) // the rate was kept
    expect(s2.json.found).toMatchObject({ badBlocks: 0, repairedBlocks: 0 })
    const h = await tess(['cluster', 'health', '--json'])
    expect(h.json.curator).toMatchObject({ scrubbing: false, lastScrubFound: { badBlocks: 0 } })
    // the master's garbage collection ran on every node when it was elected (node operation pool.gc)
    expect(h.json.curator.lastGcAt).not.toBeNull()
    expect(h.json.curator.lastGcFound).toMatchObject({ files: expect.any(Number), bytes: expect.any(Number), staleEntries: expect.any(Number) })
    const healthText = (await tess(['cluster', 'health'])).stdout
    expect(healthText).toMatch(/scrub found:\s+0 bad block copies/)
    expect(healthText).toMatch(/last gc:\s+.*file\(s\) removed/)
    const bad = await tess(['cluster', 'scrub', '--rate', '10', '--json'])
    expect(bad.code).toBe(2)
  })

  it('a disk that goes offline on a host (its directory moved away) has its replicas copied to another host after the grace; the data reads back', async () => {
    const count = async (i: number) => Number((await th.exec(th.hosts[i]!, ['sh', '-c', 'ls /var/lib/tess/disks/d0/egroups 2>/dev/null | grep -c "\\.eg$" || true'])).stdout.trim())
    const health = async () => (await tess(['cluster', 'health', '--json'])).json
    const before = await Promise.all([1, 2].map(count))
    expect((await tess(['vdisk', 'create', 'diskloss', '--size', '64M', '--rf', '2', '--json'])).code).toBe(0)
    const src = path.join(root, 'diskloss.bin')
    fs.writeFileSync(src, crypto.randomBytes(24 * MiB))
    const w = await run('nbdcopy', ['--flush', src, uri(0, 'diskloss')])
    expect(w.code, w.stderr).toBe(0)
    // host 1 owns it (first copies); the second copies went to host 2 or 3: that host loses its disk
    const after = await Promise.all([1, 2].map(count))
    const x = after[0]! > before[0]! ? 1 : 2
    const y = x === 1 ? 2 : 1
    expect(after[x - 1]!).toBeGreaterThan(before[x - 1]!)
    const onY = after[y - 1]!
    // root reads a directory whatever its mode: moving it away is what makes it unreadable to the CVM
    expect((await th.exec(th.hosts[x]!, ['mv', '/var/lib/tess/disks/d0', '/var/lib/tess/disks/d0.away'])).code).toBe(0)
    try {
      const lost = await waitFor('the disk reported offline', async () => {
        const h = await health()
        return h?.disksOffline?.some((d: any) => d.node === th.hosts[x]!.name) ? h : undefined
      }, 30_000, 1000)
      expect(lost.vdisks.find((v: any) => v.name === 'diskloss').underReplicated).toBeGreaterThan(0)
      expect(lost.nodesDown).toEqual([])
      // after the grace (5 s here) the owner copies them to the host that has none
      await waitFor('diskloss re-protected', async () => {
        const v = (await health())?.vdisks?.find((d: any) => d.name === 'diskloss')
        return v !== undefined && wholeVdisk(v) ? true : undefined
      }, 120_000, 2000)
      expect(await count(y)).toBeGreaterThan(onY)
      const out = path.join(root, 'diskloss-out.bin')
      const r = await run('nbdcopy', [uri(y, 'diskloss'), out], { timeoutMs: 120_000 })
      expect(r.code, r.stderr).toBe(0)
      expect(fs.readFileSync(out).subarray(0, 24 * MiB).equals(fs.readFileSync(src))).toBe(true)
    } finally {
      await th.exec(th.hosts[x]!, ['mv', '/var/lib/tess/disks/d0.away', '/var/lib/tess/disks/d0'])
    }
    // back: reported again (its groups of RF 3 vDisks are whole again; the copies it held of diskloss are garbage now)
    await waitFor('the disk back online', async () => ((await health())?.disksOffline?.length === 0 ? true : undefined), 30_000, 1000)
    expect((await tess(['vdisk', 'delete', 'diskloss', '--yes', '--json'])).code).toBe(0)
  }, 300_000)

  it('adds a 4th host, refuses to remove it while it holds the only copy, and removes it with --evacuate', async () => {
    const add = await tess(['host', 'add', addr(3), '--json'])
    expect(add.code, add.stdout + add.stderr).toBe(0)
    expect(add.json.node).toBe(th.hosts[3]!.name)
    expect(add.json.etcdMember).toBe(false)
    await firstWrites('joined', 3, 0)
    expect((await tess(['host', 'list', '--json'])).json.map((h: any) => h.state)).toEqual(['up', 'up', 'up', 'up'])
    // data whose owner is the new host: RF 1 (only copy there) and RF 2
    for (const [name, rf] of [['solo', '1'], ['pair', '2']] as const) {
      expect((await tess(['vdisk', 'create', name, '--size', '64M', '--rf', rf, '--json'])).code).toBe(0)
    }
    const src = path.join(root, 'moving.bin')
    fs.writeFileSync(src, crypto.randomBytes(40 * MiB))
    for (const v of ['solo', 'pair']) expect((await run('nbdcopy', ['--flush', src, uri(3, v)])).code).toBe(0)
    const onHost4 = async () => (await th.exec(th.hosts[3]!, ['sh', '-c', 'ls /var/lib/tess/disks/d0/egroups 2>/dev/null | grep -c "\\.eg$" || true'])).stdout.trim()
    expect(Number(await onHost4())).toBeGreaterThanOrEqual(3)

    const refused = await tess(['host', 'remove', th.hosts[3]!.name, '--yes', '--json'])
    expect(refused.code, refused.stdout).toBe(4)
    expect(refused.json.error.code).toBe('TESS_E_CONFLICT')
    expect(refused.json.error.message).toContain('solo')
    expect(refused.json.error.hint).toContain('--evacuate')
    expect((await tess(['host', 'remove', 'no-such-host', '--yes', '--json'])).code).toBe(3)

    const rm = await tess(['host', 'remove', th.hosts[3]!.name, '--evacuate', '--yes', '--json'])
    expect(rm.code, rm.stdout + rm.stderr).toBe(0)
    expect(rm.json.egroupsMoved).toBeGreaterThanOrEqual(3)
    expect(rm.json.cleaned).toBe(true)
    const list = (await tess(['host', 'list', '--json'])).json
    expect(list.map((h: any) => h.name)).toEqual(th.hosts.slice(0, 3).map((h) => h.name))
    expect(await onHost4()).toBe('0')
    // every byte is still there, read through host 1
    for (const v of ['solo', 'pair']) {
      const out = path.join(root, `${v}-out.bin`)
      const r = await run('nbdcopy', [uri(0, v), out], { timeoutMs: 120_000 })
      expect(r.code, r.stderr).toBe(0)
      expect(fs.readFileSync(out).subarray(0, 40 * MiB).equals(fs.readFileSync(src))).toBe(true)
    }
  })

  it('a network partition of host 2 during writes through host 1, and its end: every acknowledged write is there, RF is restored, host 2 serves again', async () => {
    // host 2's link goes down while 256 MiB are written through host 1; its processes go on (its
    // CVM still holds leases it cannot renew)
    let file: string
    try {
      file = await writeDuring('split', 0, () => th.partition(th.hosts[1]!))
      await waitFor('host 2 shown down', async () => {
        const st = await tess(['cluster', 'status', '--json'])
        return st.json?.nodes?.[1]?.state === 'down' ? true : undefined
      }, 60_000, 1000)
    } finally {
      await th.heal(th.hosts[1]!) // whatever failed, the tests after this one get host 2 back
    }
    // host 2 rejoins: up again, every vDisk healthy (what it missed is re-protected)
    let last = ''
    await waitFor('every vDisk healthy with host 2 back', async () => {
      const r = await tess(['cluster', 'health', '--json'])
      const v = r.json?.vdisks
      last = r.stdout
      return r.json?.nodesDown?.length === 0 && Array.isArray(v) && v.length > 0 && v.every(wholeVdisk) ? r : undefined
    }, 240_000, 2000).catch(async (e: unknown) => {
      throw new Error(`${String(e)}; the last health: ${last}${await cvmLog(0)}${await cvmLog(1)}`)
    })
    // every acknowledged byte reads back through host 2, which serves again (forwarding to the owner)
    const out = path.join(root, 'split-out.bin')
    const r = await run('nbdcopy', [uri(1, 'split'), out], { timeoutMs: 300_000 })
    expect(r.code, r.code === 0 ? '' : r.stderr + await cvmLog(1)).toBe(0)
    expect(fs.readFileSync(out).equals(fs.readFileSync(file))).toBe(true)
    fs.rmSync(out)
    fs.rmSync(file)
    expect((await tess(['vdisk', 'delete', 'split', '--yes', '--json'])).code).toBe(0)
  }, 600_000)

  it('survives the loss of host 3 during writes: acknowledged writes are there, data reads back through hosts 1 and 2, new writes succeed, status shows it down', async () => {
    // a vDisk owned by host 3, so its owner dies too
    expect((await tess(['vdisk', 'create', 'orphan', '--size', '64M', '--rf', '2', '--json'])).code).toBe(0)
    const src = path.join(root, 'orphan.bin')
    fs.writeFileSync(src, crypto.randomBytes(16 * MiB))
    expect((await run('nbdcopy', ['--flush', src, uri(2, 'orphan')])).code).toBe(0)
    expect((await tess(['vdisk', 'show', 'orphan', '--json'])).json.owner).toBe(th.hosts[2]!.name)
    // a clone of it, owned by host 1, whose parent snapshot is owned by host 3: its reads of the
    // parent fail over with the parent's owner (issue 14)
    expect((await tess(['vdisk', 'snapshot', 'create', 'orphan', 'base', '--json'])).code).toBe(0)
    expect((await tess(['vdisk', 'clone', 'orphan@base', 'orphankid', '--rf', '2', '--json'])).code).toBe(0)
    const kidTop = path.join(root, 'orphankid-top.bin')
    fs.writeFileSync(kidTop, crypto.randomBytes(MiB))
    expect((await run('nbdcopy', ['--flush', kidTop, uri(0, 'orphankid')])).code).toBe(0)
    expect((await tess(['vdisk', 'show', 'orphankid', '--json'])).json).toMatchObject({ owner: th.hosts[0]!.name, parent: 'orphan@base' })
    const kidWant = Buffer.concat([fs.readFileSync(kidTop), fs.readFileSync(src).subarray(MiB)])

    // host 3 dies while a client writes through host 2: every write is acknowledged (the replicas
    // on host 3 are replaced on the write path) and every byte is there after
    const inflight = await writeDuring('inflight', 1, () => th.kill(th.hosts[2]!))
    // the clone reads its parent's data through host 1 with the parent's owner dead (right after
    // the loss, before anything else read the parent: the clone's read may be what fails it over)
    const kidOut = path.join(root, 'orphankid-out.bin')
    const kr = await run('nbdcopy', [uri(0, 'orphankid'), kidOut], { timeoutMs: 120_000 })
    expect(kr.code, kr.code === 0 ? '' : kr.stderr + await cvmLog(0)).toBe(0)
    expect(fs.readFileSync(kidOut).subarray(0, 16 * MiB).equals(kidWant), 'the clone over its parent, read after the parent\'s owner died').toBe(true)
    fs.rmSync(kidOut)

    const inflightOut = path.join(root, 'inflight-out.bin')
    const ir = await run('nbdcopy', [uri(0, 'inflight'), inflightOut], { timeoutMs: 300_000 })
    expect(ir.code, ir.stderr).toBe(0)
    expect(fs.readFileSync(inflightOut).equals(fs.readFileSync(inflight))).toBe(true)
    fs.rmSync(inflightOut)

    for (const i of [0, 1]) {
      const out = path.join(root, `after-${i}.bin`)
      const r = await run('nbdcopy', [uri(i, 'data'), out], { timeoutMs: 300_000 })
      expect(r.code, r.code === 0 ? '' : r.stderr + await cvmLog(i)).toBe(0)
      expect(crypto.createHash('sha256').update(fs.readFileSync(out).subarray(0, 256 * MiB)).digest('hex')).toBe(sha(big))
      fs.rmSync(out)
    }
    // new writes at RF 2 succeed (replicas that were on host 3 are replaced on the write path)
    const fresh = path.join(root, 'fresh.bin')
    fs.writeFileSync(fresh, crypto.randomBytes(48 * MiB))
    const w = await qemuImgToNbdTls(fresh, creds, addr(1), 10809, 'data')
    expect(w.code, w.stderr).toBe(0)
    const back = path.join(root, 'fresh-out.bin')
    expect((await qemuImgFromNbdTls(creds, addr(0), 10809, 'data', back)).code).toBe(0)
    expect(fs.readFileSync(back).subarray(0, 48 * MiB).equals(fs.readFileSync(fresh))).toBe(true)
    fs.rmSync(back)

    // the vDisk whose owner died: a new connection works once the owner's lease expired
    const t0 = Date.now()
    const oout = path.join(root, 'orphan-out.bin')
    const r = await run('nbdcopy', [uri(0, 'orphan'), oout], { timeoutMs: 120_000 })
    expect(r.code, r.stderr).toBe(0)
    expect(fs.readFileSync(oout).subarray(0, 16 * MiB).equals(fs.readFileSync(src))).toBe(true)
    // bounded: the owner's lease TTL (10 s) plus the forwarder's retry, well under its 18 s limit
    console.log(`owner failover: a new connection read the data ${Date.now() - t0} ms after the first try`)
    expect(Date.now() - t0).toBeLessThan(60_000)
    // the dead host's ownership is gone: host 1 took the vDisk for the read, or the curator master
    // took it for its repair of what host 3 held (after the 5 s grace) and hands it back once no
    // client uses it, which may be before this reads the owner (then nobody owns it)
    const ownerNow = (await tess(['vdisk', 'show', 'orphan', '--json'])).json.owner as string | null
    expect(ownerNow, `owner of orphan: ${ownerNow}`).not.toBe(th.hosts[2]!.name)

    const st = await waitFor('host 3 shown down', async () => {
      const s = await tess(['cluster', 'status', '--json'])
      return s.json?.nodes?.[2]?.state === 'down' ? s : undefined
    }, 60_000, 1000)
    expect(st.json.nodes.map((n: any) => n.state)).toEqual(['up', 'up', 'down'])
    const h = await tess(['cluster', 'status'])
    expect(h.stdout).toMatch(/down/)

    // degraded writes: "three" (RF 3) has only two hosts left, RF - 1 = 2 copies are enough to go on
    const threeSrc = path.join(root, 'three.bin')
    fs.writeFileSync(threeSrc, crypto.randomBytes(16 * MiB))
    const tw = await run('nbdcopy', ['--flush', threeSrc, uri(0, 'three')], { timeoutMs: 180_000 })
    expect(tw.code, tw.stderr).toBe(0)
    const threeOut = path.join(root, 'three-out.bin')
    expect((await run('nbdcopy', [uri(1, 'three'), threeOut], { timeoutMs: 120_000 })).code).toBe(0)
    expect(fs.readFileSync(threeOut).subarray(0, 16 * MiB).equals(fs.readFileSync(threeSrc))).toBe(true)

    // The curator re-protects what host 3 held once it has been down for the grace (5 s), with no
    // client I/O: "orphan" and "pair" were only read (or not touched) since the loss. "three" (RF 3)
    // cannot get a third copy on two hosts: it waits, said so.
    const reprotected = ['orphan', 'pair', 'data']
    const health = await waitFor('RF 2 vDisks re-protected by the curator', async () => {
      const r = await tess(['cluster', 'health', '--json'])
      const ok = reprotected.every((n) => {
        const v = r.json?.vdisks?.find((x: any) => x.name === n)
        return v !== undefined && wholeVdisk(v)
      })
      return ok ? r : undefined
    }, 240_000, 2000)
    expect(health.json.nodesDown).toEqual([th.hosts[2]!.name])
    expect([th.hosts[0]!.name, th.hosts[1]!.name]).toContain(health.json.curator.master)
    expect(health.json.curator.repairedEgroups).toBeGreaterThan(0)
    expect(health.json.vdisks.find((x: any) => x.name === 'three').underReplicated).toBeGreaterThan(0)
    await waitFor('three shown waiting for nodes', async () => {
      const r = await tess(['cluster', 'health', '--json'])
      return r.json?.curator?.waiting?.some((w: string) => w.includes('three')) ? true : undefined
    }, 90_000, 2000)
    const text = await tess(['cluster', 'health'])
    expect(text.code, text.stderr).toBe(0)
    // "solo" (RF 1) may have a group on host 3: unavailable until it is back
    expect(text.stdout).toMatch(/state:\s+(degraded|data-unavailable)/)
    expect(text.stdout).toMatch(/waiting:\s+vDisk three: RF 3 needs 3 nodes up, 2 are/)
    expect(text.stdout).toMatch(/curator master:\s+\S+/)
    // the copies hold the data: read through host 2, with host 3 gone
    const again = path.join(root, 'orphan-again.bin')
    const rr = await run('nbdcopy', [uri(1, 'orphan'), again], { timeoutMs: 120_000 })
    expect(rr.code, rr.stderr).toBe(0)
    expect(fs.readFileSync(again).subarray(0, 16 * MiB).equals(fs.readFileSync(src))).toBe(true)
  }, 600_000)

  it('host 3 powers on: its boot entry point brings the node back; its etcd member catches up, its CVM serves again and what was written meanwhile is re-protected on it', async () => {
    const h3 = th.hosts[2]!
    // more writes while it is down: "pair" (RF 2) through host 1
    const meanwhile = path.join(root, 'meanwhile.bin')
    fs.writeFileSync(meanwhile, crypto.randomBytes(16 * MiB))
    expect((await run('nbdcopy', ['--flush', meanwhile, uri(0, 'pair')], { timeoutMs: 180_000 })).code).toBe(0)
    // power on: the link and sshd come back; then what an init script runs at boot, over SSH as an
    // operator would. The pidfiles of the killed daemons are still in the host's /run.
    await th.revive(h3)
    const boot = 'node /var/lib/tess/bundle/current/dist/supervisor/boot.js --data-dir /var/lib/tess'
    const on = await th.ssh(h3, boot)
    expect(on.code, on.stdout + on.stderr).toBe(0)
    expect(on.stdout).toMatch(/removed stale pidfiles: .*supervisor\.pid/)
    expect(on.stdout).toMatch(/started the supervisor/)
    const st = await waitFor('host 3 up with its etcd member and CVM healthy', async () => {
      const s = await tess(['cluster', 'status', '--json'])
      const nodes = s.json?.nodes
      return Array.isArray(nodes) && nodes.every((n: any) => n.state === 'up') && nodes[2].daemons.every((d: any) => d.healthy) ? s : undefined
    }, 120_000, 1000)
    expect(st.json.nodes[2].daemons.map((d: any) => d.name)).toEqual(['supervisor', 'etcd', 'cvm'])
    // a second boot finds the supervisor running and starts nothing
    const again = await th.ssh(h3, boot)
    expect(again.code, again.stderr).toBe(0)
    expect(again.stdout).toMatch(/already running/)
    // the curator re-protects everything, "three" (RF 3) now with its third copy on host 3
    const health = await waitFor('every vDisk healthy with host 3 back', async () => {
      const r = await tess(['cluster', 'health', '--json'])
      const v = r.json?.vdisks
      return r.json?.nodesDown?.length === 0 && Array.isArray(v) && v.every(wholeVdisk) ? r : undefined
    }, 300_000, 2000)
    // healthy means RF copies on distinct up nodes: for "three" (RF 3 on 3 hosts) one is on host 3
    expect(health.json.vdisks.find((x: any) => x.name === 'three').egroups).toBeGreaterThan(0)
    // host 3 serves the data again: reads through it (its CVM forwards to the owners, reads its replicas)
    for (const [v, file, bytes] of [['three', path.join(root, 'three.bin'), 16 * MiB], ['pair', meanwhile, 16 * MiB]] as const) {
      const out = path.join(root, `${v}-via3.bin`)
      const r = await run('nbdcopy', [uri(2, v), out], { timeoutMs: 180_000 })
      expect(r.code, r.code === 0 ? '' : r.stderr + await cvmLog(2)).toBe(0)
      const got = fs.readFileSync(out).subarray(0, bytes)
      const want = fs.readFileSync(file)
      // (a CI run once read other bytes here, right after the test before failed early: which MiBs differ, and the logs)
      const differ = Array.from({ length: bytes / MiB }, (_, k) => k).filter((k) => !got.subarray(k * MiB, (k + 1) * MiB).equals(want.subarray(k * MiB, (k + 1) * MiB)))
      expect(differ, differ.length === 0 ? '' : `vDisk ${v} through host 3: MiB ${differ.join(', ')} differ\n${await cvmLog(0)}\n${await cvmLog(2)}`).toEqual([])
      fs.rmSync(out)
    }
  }, 600_000)

  /**
   * The previous release (the last row of docs/releases.md), built from its source in git into
   * `<root>/previous`, and its bundle. Its node_modules is this checkout's when their lockfiles
   * list the same packages (npm ci otherwise), and so are the native addons.
   */
  const previousRelease = async (): Promise<{ dir: string, commit: string, bundle: Bundle }> => {
    const rows = [...fs.readFileSync(path.join(repoRoot, 'docs', 'releases.md'), 'utf8').matchAll(/^\| *[^|]+ *\| *([0-9a-f]{40}) *\|/gm)]
    const commit = rows.at(-1)?.[1]
    expect(commit, 'docs/releases.md names the previous release').toBeDefined()
    const dir = path.join(root, 'previous')
    fs.mkdirSync(dir)
    const x = await run('sh', ['-c', `git -C '${repoRoot}' archive ${commit} | tar -x -C '${dir}'`], { timeoutMs: 120_000 })
    expect(x.code, `the previous release ${commit} from git (the clone needs main's history): ${x.stderr}`).toBe(0)
    const pkgs = (d: string) => { const l = JSON.parse(fs.readFileSync(path.join(d, 'package-lock.json'), 'utf8')); delete l.packages['']; return JSON.stringify(l.packages) }
    if (pkgs(dir) === pkgs(repoRoot)) {
      fs.symlinkSync(path.join(repoRoot, 'node_modules'), path.join(dir, 'node_modules'))
      if (fs.existsSync(path.join(repoRoot, 'build'))) fs.cpSync(path.join(repoRoot, 'build'), path.join(dir, 'build'), { recursive: true })
    } else {
      const ci = await run('npm', ['ci', '--no-audit', '--no-fund', '--prefer-offline', '--prefix', dir], { timeoutMs: 600_000 })
      expect(ci.code, ci.stderr).toBe(0)
    }
    // (niced: the other lane's tests share the two cores)
    const tsc = await run('nice', ['-n', '19', process.execPath, path.join(dir, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', path.join(dir, 'tsconfig.json')], { timeoutMs: 300_000 })
    expect(tsc.code, tsc.stdout + tsc.stderr).toBe(0)
    return { dir, commit: commit!, bundle: await buildBundle(dir, path.join(root, 'previous-bundles')) }
  }

  /** fio writes 16 MiB at random to vDisk `v` through host i's NBD socket, then reads it all back and checks it */
  const fioVerify = (i: number, v: string) => th.exec(th.hosts[i]!, ['fio', `--name=${v}`, '--ioengine=nbd', `--uri=nbd+unix:///${v}?socket=/var/lib/tess/run/nbd.sock`,
    '--rw=randwrite', '--bs=16k', '--iodepth=8', '--size=16M', '--verify=crc32c', '--verify_fatal=1', '--do_verify=1', '--verify_state_save=0',
    '--randrepeat=0', '--directory=/tmp'], { timeoutMs: 180_000 })

  it('upgrades the three hosts from the previous release one node at a time: fio verifies through another host with no error, a client of the node being upgraded reconnects, status shows the versions', async () => {
    const before = (await tess(['cluster', 'status', '--json'])).json
    const installed = before.nodes[0].version
    expect(installed.bundle, JSON.stringify(before.nodes)).toMatch(/^[0-9a-f]{64}$/)
    for (const n of before.nodes) expect(n.version).toEqual(installed)
    expect((await tess(['cluster', 'status'])).stdout).toContain(installed.bundle.slice(0, 12))
    // every host restarted on the previous release's bundle, installed as bootstrap installs one
    // (all at once: test setup, not an upgrade)
    const prev = await previous!
    const v = prev.bundle.sha256.slice(0, 16)
    const b = '/var/lib/tess/bundle'
    await Promise.all([0, 1, 2].map(async (i) => {
      const r = await th.ssh(th.hosts[i]!, [
        'set -e', `rm -rf ${b}/${v}.tmp`, `mkdir -p ${b}/${v}.tmp`, `tar -xzf ${prev.bundle.file} -C ${b}/${v}.tmp --no-same-owner`,
        `echo ${prev.bundle.sha256} > ${b}/${v}.tmp/.tess-bundle-sha256`, `rm -rf ${b}/${v}`, `mv -T ${b}/${v}.tmp ${b}/${v}`,
        `ln -sfn ${v} ${b}/current.tmp`, `mv -T -f ${b}/current.tmp ${b}/current`,
        'p=$(cat /var/lib/tess/run/supervisor.pid)', 'kill -TERM $p', 'while kill -0 $p 2>/dev/null; do sleep 0.2; done',
        `node ${b}/current/dist/supervisor/boot.js --data-dir /var/lib/tess`,
      ].join('\n'), { timeoutMs: 120_000 })
      expect(r.code, r.stdout + r.stderr).toBe(0)
    }))
    await waitFor('the cluster healthy on the previous release', async () => {
      const st = await tess(['cluster', 'status', '--json'])
      const h = await tess(['cluster', 'health', '--json'])
      const up = st.json?.nodes?.every((n: any) => n.state === 'up' && n.daemons.every((d: any) => d.healthy))
      return up && h.json?.state === 'healthy' ? true : undefined
    }, 180_000, 1000)
    for (const i of [0, 1, 2]) {
      const cmd = await th.exec(th.hosts[i]!, ['sh', '-c', 'tr "\\0" " " < /proc/$(cat /var/lib/tess/run/cvm.pid)/cmdline'])
      expect(cmd.stdout, `the CVM of host ${i + 1} runs the previous release`).toContain(`${b}/${v}/dist/cvm/main.js`)
    }
    // what the previous release reports (its bundle, or nothing: releases before versions were reported)
    const prevReports = ((await tess(['cluster', 'status', '--json'])).json.nodes as any[]).map((n) => n.version?.bundle ?? null)
    for (const r of prevReports) expect([null, prev.bundle.sha256]).toContain(r)

    const dry = await tess(['cluster', 'upgrade', '--dry-run', '--json'])
    expect(dry.code, dry.stdout + dry.stderr).toBe(0)
    // the bundle of this build: the one bootstrap installed (the previous release runs from its own files)
    expect(dry.json.target).toEqual(installed)
    expect(dry.json.plan.map((p: any) => p.action)).toEqual(['upgrade', 'upgrade', 'upgrade'])
    expect(dry.json.plan.map((p: any) => p.from?.bundle ?? null)).toEqual(prevReports)
    expect(dry.json.upgraded).toEqual([])
    expect((await tess(['cluster', 'upgrade', '--node', 'no-such-node', '--json'])).code).toBe(3)
    expect((await tess(['cluster', 'upgrade', '--timeout', '1s', '--json'])).code).toBe(2)

    // what "data" holds before: it must read back the same through every host after
    const dataBefore = path.join(root, 'data-before.bin')
    expect((await run('nbdcopy', [uri(0, 'data'), dataBefore], { timeoutMs: 300_000 })).code).toBe(0)
    const shaBefore = sha(dataBefore)
    fs.rmSync(dataBefore)
    // two RF 2 vDisks, one per client: the client through the node being upgraded never asks the
    // other's node to hand its vDisk over (a 0.1.0 CVM could refuse a new client's open when it
    // lost that race: fixed since, see docs/releases.md)
    for (const v of ['rolling', 'rolling2']) expect((await tess(['vdisk', 'create', v, '--size', '64M', '--rf', '2', '--json'])).code).toBe(0)
    const names = before.nodes.map((n: any) => n.name as string)
    for (const [i, name] of names.entries()) {
      const other = (i + 1) % 3
      let upgrading = true
      // through another host: every run must pass, the whole time
      const strict = (async () => {
        let runs = 0
        do {
          const r = await fioVerify(other, 'rolling')
          if (r.code !== 0) throw new Error(`fio through host ${other + 1} failed while ${name} was upgraded: ${r.stdout}${r.stderr}${await cvmLog(other)}`)
          runs++
        } while (upgrading)
        return runs
      })()
      // through the node being upgraded: its connection may drop and be refused while it restarts,
      // but no run may ever read back other bytes than it wrote
      const loose = (async () => {
        let passed = 0
        let dropped = 0
        do {
          const r = await fioVerify(i, 'rolling2')
          if (r.code === 0) passed++
          else if (/verify|crc32c|bad magic|bad header/i.test(r.stderr)) throw new Error(`fio through the upgraded ${name} read back wrong data: ${r.stderr}`)
          else {
            dropped++
            await new Promise((res) => setTimeout(res, 500))
          }
        } while (upgrading)
        return { passed, dropped }
      })()
      // (their failures are thrown by the Promise.all below, after the upgrade's own result)
      strict.catch(() => undefined)
      loose.catch(() => undefined)
      const up = await runTess(['cluster', 'upgrade', '--node', name, '--json'], env, { timeoutMs: 900_000 }).finally(() => { upgrading = false })
      const [runs, l] = await Promise.all([strict, loose])
      expect(up.code, up.stdout + up.stderr).toBe(0)
      expect(up.json.upgraded.map((u: any) => u.node)).toEqual([name])
      expect(runs).toBeGreaterThan(0)
      console.log(`upgrade of ${name}: back in ${up.json.upgraded[0].restartMs} ms, cluster healthy in ${up.json.upgraded[0].healthyMs} ms; fio through host ${other + 1}: ${runs} verified run(s); through ${name}: ${l.passed} verified, ${l.dropped} dropped`)
      // after its restart the client of the upgraded node works again
      const again = await fioVerify(i, 'rolling2')
      expect(again.code, again.stderr).toBe(0)
      if (i === 0) {
        // half-upgraded: said by status, in JSON and text
        const mid = (await tess(['cluster', 'status', '--json'])).json
        expect(mid.nodes.map((n: any) => n.version?.bundle ?? null)).toEqual([installed.bundle, prevReports[1], prevReports[2]])
        expect(mid.warnings.join('\n')).toMatch(/nodes run different versions of tess/)
      }
    }
    // every node on the new bundle: a second run has nothing to do; status shows one version and no warning about it
    const rerun = await tess(['cluster', 'upgrade', '--json'])
    expect(rerun.code, rerun.stdout + rerun.stderr).toBe(0)
    expect(rerun.json.plan.map((p: any) => p.action)).toEqual(['current', 'current', 'current'])
    expect(rerun.json.upgraded).toEqual([])
    const after = (await tess(['cluster', 'status', '--json'])).json
    for (const n of after.nodes) expect(n.version).toEqual(installed)
    expect(after.warnings.join('\n')).not.toMatch(/different versions/)
    // nothing written was lost: the data written before the upgrade reads back through every host
    for (const i of [0, 1, 2]) {
      const out = path.join(root, `upgraded-${i}.bin`)
      const r = await run('nbdcopy', [uri(i, 'data'), out], { timeoutMs: 300_000 })
      expect(r.code, r.stderr).toBe(0)
      expect(sha(out), `"data" through host ${i + 1}`).toBe(shaBefore)
      fs.rmSync(out)
    }
  }, 900_000)
})
