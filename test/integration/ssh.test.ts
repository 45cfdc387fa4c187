import { spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildBundle, installBundle, type Bundle } from '../../src/bootstrap/bundle.js'
import { fingerprintSha256, lookupKnownHost } from '../../src/bootstrap/knownhosts.js'
import { formatPreflight, preflightError, preflightPorts, runPreflight, type PreflightPlan } from '../../src/bootstrap/preflight.js'
import { SshTransport, type SshConnectOptions } from '../../src/bootstrap/ssh.js'
import { TessError } from '../../src/lib/errors.js'
import { createTestHosts, type TestHost, type TestHosts } from '../helpers/testhosts.js'

// test lane: local
// (two bare test hosts, no cluster: it runs beside the files of the other lane; see scripts/test.sh)

/**
 * The SSH building blocks of `tess cluster create --hosts ...` against two test hosts (network +
 * mount namespaces with their own sshd): host key pinning under every policy, error mapping,
 * exec / SFTP, pre-flight checks and bundle install.
 */

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')

let th: TestHosts
let h1: TestHost
let h2: TestHost
let tmp: string
/** stands in for tess's own known_hosts (<config dir>/known_hosts) */
let tessKnownHosts: string
const opened: SshTransport[] = []

function sh(cmd: string, args: string[]): { code: number, stdout: string, stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 30_000 })
  return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' }
}

function opts(h: TestHost, extra: Partial<SshConnectOptions> = {}): SshConnectOptions {
  return {
    host: h.address,
    port: h.sshPort,
    username: 'root',
    privateKey: th.keyFile,
    knownHostsFile: th.knownHostsFile,
    recordKnownHostsFile: tessKnownHosts,
    hostKeyPolicy: 'strict',
    readyTimeoutMs: 10_000,
    ...extra,
  }
}

async function connect(h: TestHost, extra: Partial<SshConnectOptions> = {}): Promise<SshTransport> {
  const t = await SshTransport.connect(opts(h, extra))
  opened.push(t)
  return t
}

async function connectError(h: TestHost, extra: Partial<SshConnectOptions>): Promise<TessError> {
  try {
    const t = await SshTransport.connect(opts(h, extra))
    await t.close()
  } catch (e) {
    expect(e).toBeInstanceOf(TessError)
    return e as TessError
  }
  throw new Error('connect succeeded, expected a failure')
}

/** the host's real ed25519 host key blob (from the harness state dir) */
function hostKeyBlob(h: TestHost): Buffer {
  const pub = fs.readFileSync(path.join(th.stateDir, h.name, 'sshd', 'ssh_host_ed25519_key.pub'), 'utf8')
  return Buffer.from(pub.split(' ')[1]!, 'base64')
}

/** The harness known_hosts line of host h: `name,address type base64`. */
function harnessLine(h: TestHost): { type: string, b64: string } {
  const line = fs.readFileSync(th.knownHostsFile, 'utf8').split('\n').find((l) => l.split(' ')[0]!.split(',').includes(h.address))
  expect(line).toBeDefined()
  const [, type, b64] = line!.split(' ')
  return { type: type!, b64: b64! }
}

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-ssh-'))
  tessKnownHosts = path.join(tmp, 'config', 'known_hosts')
  th = await createTestHosts(2)
  h1 = th.hosts[0]!
  h2 = th.hosts[1]!
})

afterAll(async () => {
  for (const t of opened) await t.close().catch(() => undefined)
  await th?.destroy()
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true })
})

describe('host keys', () => {
  it('connects in strict mode with the harness known_hosts', async () => {
    const t = await connect(h1)
    expect(t.hostKey.keyType).toBe('ssh-ed25519')
    expect(t.hostKey.fingerprint).toBe(fingerprintSha256(hostKeyBlob(h1)))
    const r = await t.exec('hostname')
    expect(r).toMatchObject({ code: 0, stdout: `${h1.name}\n` })
    await t.close()
    expect(t.connected).toBe(false)
    await t.close() // idempotent
    await expect(t.exec('true')).rejects.toMatchObject({ code: 'TESS_E_UNREACHABLE' })
  })

  it('refuses an unknown host key in strict mode', async () => {
    const empty = path.join(tmp, 'empty_known_hosts')
    fs.writeFileSync(empty, '')
    const e = await connectError(h1, { knownHostsFile: empty })
    expect(e.code).toBe('TESS_E_AUTH')
    expect(e.message).toContain(h1.address)
    expect(e.message).toContain(fingerprintSha256(hostKeyBlob(h1)))
    expect(e.message).toMatch(/not in known_hosts/)
    expect(e.hint).toMatch(/--accept-new-host-keys|ssh-keyscan/)
    expect(fs.existsSync(tessKnownHosts)).toBe(false) // strict never records
  })

  it('accept-new records the key in tess\'s known_hosts; strict then accepts it from there', async () => {
    const empty = path.join(tmp, 'empty_known_hosts')
    const t = await connect(h1, { knownHostsFile: empty, hostKeyPolicy: 'accept-new' })
    expect((await t.execOk('echo ok')).stdout).toBe('ok\n')
    await t.close()
    expect(fs.statSync(tessKnownHosts).mode & 0o777).toBe(0o600)
    expect(lookupKnownHost(tessKnownHosts, h1.address, 22, 'ssh-ed25519', hostKeyBlob(h1))).toBe('match')
    // OpenSSH reads what we wrote
    expect(sh('ssh-keygen', ['-F', h1.address, '-f', tessKnownHosts]).stdout).toMatch(/found: line 1/)
    const again = await connect(h1, { knownHostsFile: tessKnownHosts, hostKeyPolicy: 'strict' })
    expect((await again.exec('hostname')).stdout.trim()).toBe(h1.name)
    await again.close()
    // a second accept-new run adds nothing
    const before = fs.readFileSync(tessKnownHosts, 'utf8')
    await (await connect(h1, { knownHostsFile: empty, hostKeyPolicy: 'accept-new' })).close()
    expect(fs.readFileSync(tessKnownHosts, 'utf8')).toBe(before)
  })

  it('refuses a CHANGED key under every policy, naming both fingerprints', async () => {
    const { type, b64 } = harnessLine(h2)
    const changed = path.join(tmp, 'changed_known_hosts')
    fs.writeFileSync(changed, `${h1.address} ${type} ${b64}\n`)
    const record = path.join(tmp, 'changed_record')
    let asked = 0
    for (const policy of ['accept-new', 'ask', 'strict'] as const) {
      const e = await connectError(h1, { knownHostsFile: changed, recordKnownHostsFile: record, hostKeyPolicy: policy, ask: async () => { asked++; return true } })
      expect(e.code, policy).toBe('TESS_E_AUTH')
      expect(e.message).toContain(h1.address)
      expect(e.message).toMatch(/CHANGED/)
      expect(e.message).toContain(fingerprintSha256(hostKeyBlob(h1)))
      expect(e.message).toContain(fingerprintSha256(Buffer.from(b64, 'base64')))
      expect(e.hint).toMatch(/ssh-keygen -R/)
    }
    expect(asked).toBe(0)
    expect(fs.existsSync(record)).toBe(false)
  })

  it('refuses a revoked key', async () => {
    const { type, b64 } = harnessLine(h1)
    const revoked = path.join(tmp, 'revoked_known_hosts')
    fs.writeFileSync(revoked, `@revoked * ${type} ${b64}\n${h1.address} ${type} ${b64}\n`)
    const e = await connectError(h1, { knownHostsFile: revoked })
    expect(e.code).toBe('TESS_E_AUTH')
    expect(e.message).toMatch(/revoked/)
  })

  it('ask: a declined key is refused, an accepted one is recorded', async () => {
    const empty = path.join(tmp, 'empty_known_hosts')
    const record = path.join(tmp, 'ask_record')
    const seen: string[] = []
    const e = await connectError(h2, { knownHostsFile: empty, recordKnownHostsFile: record, hostKeyPolicy: 'ask', ask: async (host, fp) => { seen.push(`${host} ${fp}`); return false } })
    expect(e.code).toBe('TESS_E_AUTH')
    expect(e.message).toMatch(/not accepted/)
    expect(fs.existsSync(record)).toBe(false)
    // the operator may take longer than readyTimeoutMs to answer
    const t = await connect(h2, {
      knownHostsFile: empty, recordKnownHostsFile: record, hostKeyPolicy: 'ask', readyTimeoutMs: 1_500,
      ask: async (host, fp) => { seen.push(`${host} ${fp}`); await new Promise((r) => setTimeout(r, 2_500)); return true },
    })
    await t.close()
    expect(seen).toEqual(Array(2).fill(`${h2.address} ${fingerprintSha256(hostKeyBlob(h2))}`))
    expect(lookupKnownHost(record, h2.address, 22, 'ssh-ed25519', hostKeyBlob(h2))).toBe('match')
  })
})

describe('connection errors', () => {
  it('a key the host does not know is TESS_E_AUTH', async () => {
    const wrongKey = path.join(tmp, 'wrong_ed25519')
    expect(sh('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', wrongKey]).code).toBe(0)
    const e = await connectError(h1, { privateKey: wrongKey })
    expect(e.code).toBe('TESS_E_AUTH')
    expect(e.message).toContain(h1.address)
    expect(e.message).toContain(wrongKey)
    expect(e.hint).toMatch(/authorized_keys/)
  })

  it('an unreadable or public key file is refused before connecting', async () => {
    expect((await connectError(h1, { privateKey: path.join(tmp, 'no-such-key') })).code).toBe('TESS_E_NOT_FOUND')
    expect((await connectError(h1, { privateKey: `${th.keyFile}.pub` })).code).toBe('TESS_E_AUTH')
  })

  it('a closed port is TESS_E_UNREACHABLE at once', async () => {
    const t0 = Date.now()
    const e = await connectError(h1, { port: 2222 })
    expect(Date.now() - t0).toBeLessThan(3_000)
    expect(e.code).toBe('TESS_E_UNREACHABLE')
    expect(e.message).toMatch(/refused/)
    expect(e.hint).toContain(`is sshd running on ${h1.address}:2222?`)
  })

  it('an address nobody answers is TESS_E_UNREACHABLE within the deadline', async () => {
    const t0 = Date.now()
    const silent = th.subnet.replace(/\.0\/24$/, '.200')
    const e = await connectError({ ...h1, address: silent }, { readyTimeoutMs: 1_500 })
    expect(Date.now() - t0).toBeLessThan(5_000)
    expect(e.code).toBe('TESS_E_UNREACHABLE')
    expect(e.message).toContain(silent)
  })
})

describe('exec and files', () => {
  let t: SshTransport

  beforeAll(async () => {
    t = await connect(h1)
  })

  it('exec returns exit code and output; execOk throws with the stderr tail', async () => {
    expect(await t.exec('echo out; echo err >&2; exit 3')).toMatchObject({ code: 3, stdout: 'out\n', stderr: 'err\n', truncated: false })
    expect((await t.exec('cat', { input: 'from stdin\n' })).stdout).toBe('from stdin\n')
    expect((await t.exec('cat')).stdout).toBe('') // stdin gets EOF
    expect((await t.exec('printf "%s|" "$FOO" "$BAR"', { env: { FOO: "a b'c", BAR: '$HOME' } })).stdout).toBe("a b'c|$HOME|")
    expect((await t.exec(['printf', '%s|', 'a b', "c'd", '$x'])).stdout).toBe("a b|c'd|$x|")
    const e = await t.execOk('echo line1 >&2; echo line2 >&2; exit 7').catch((x: unknown) => x)
    expect(e).toBeInstanceOf(TessError)
    expect(e).toMatchObject({ code: 'TESS_E_IO' })
    expect((e as TessError).message).toContain(h1.address)
    expect((e as TessError).message).toContain('exit 7')
    expect((e as TessError).message).toContain('exited with 7')
    expect((e as TessError).message).toContain('line1\nline2')
  })

  it('bounds output, times out, and runs many commands at once', async () => {
    const big = await t.exec('head -c 3000000 /dev/zero; head -c 2000000 /dev/zero | tr "\\0" e >&2', { maxOutputBytes: 1_000_000 })
    expect(big.code).toBe(0)
    expect(big.stdout.length).toBe(1_000_000)
    expect(big.stderr.length).toBe(1_000_000)
    expect(big.truncated).toBe(true)
    const t0 = Date.now()
    await expect(t.exec('sleep 30', { timeoutMs: 300 })).rejects.toMatchObject({ code: 'TESS_E_TIMEOUT' })
    expect(Date.now() - t0).toBeLessThan(3_000)
    const many = await Promise.all(Array.from({ length: 30 }, (_, i) => t.execOk(`echo ${i}`)))
    expect(many.map((r) => Number(r.stdout))).toEqual(Array.from({ length: 30 }, (_, i) => i))
  })

  it('mkdirp, writeFile (atomic, with mode), readFile, upload', async () => {
    const dir = '/etc/tess/sshtest/a/b'
    await t.mkdirp(dir, 0o750)
    await t.mkdirp(dir, 0o750) // idempotent
    expect((await th.exec(h1, ['stat', '-c', '%a %F', dir])).stdout.trim()).toBe('750 directory')
    await t.writeFile(`${dir}/f.conf`, 'hello\n', 0o640)
    expect((await th.exec(h1, ['stat', '-c', '%a', `${dir}/f.conf`])).stdout.trim()).toBe('640')
    await t.writeFile(`${dir}/f.conf`, Buffer.from('again\n'), 0o600)
    expect((await th.exec(h1, ['stat', '-c', '%a', `${dir}/f.conf`])).stdout.trim()).toBe('600')
    expect((await t.readFile(`${dir}/f.conf`)).toString()).toBe('again\n')
    await expect(t.readFile(`${dir}/f.conf`, { maxBytes: 3 })).rejects.toMatchObject({ code: 'TESS_E_INVALID' })
    await expect(t.readFile(`${dir}/nope`)).rejects.toMatchObject({ code: 'TESS_E_NOT_FOUND' })
    const big = crypto.randomBytes(200_000)
    await t.writeFile(`${dir}/big`, big, 0o644)
    expect(await t.readFile(`${dir}/big`)).toEqual(big)
    // /etc/tess is the host's own: host 2 does not see it
    expect((await th.exec(h2, ['test', '-e', `${dir}/f.conf`])).code).not.toBe(0)

    const local = path.join(tmp, 'payload.bin')
    const data = crypto.randomBytes(3 * 1024 * 1024 + 17)
    fs.writeFileSync(local, data)
    const progress: Array<[number, number]> = []
    const up = await t.upload(local, `${dir}/payload.bin`, { mode: 0o755, onProgress: (s, n) => progress.push([s, n]) })
    expect(up.sizeBytes).toBe(data.length)
    expect(progress.at(-1)).toEqual([data.length, data.length])
    expect(progress.length).toBeGreaterThan(1)
    const st = await th.exec(h1, ['sh', '-c', `stat -c %a ${dir}/payload.bin; sha256sum ${dir}/payload.bin`])
    expect(st.stdout.split('\n')[0]).toBe('755')
    expect(st.stdout.split('\n')[1]!.split(' ')[0]).toBe(crypto.createHash('sha256').update(data).digest('hex'))
    // no temp files left behind
    expect((await th.exec(h1, ['ls', '-A', dir])).stdout.split('\n').filter(Boolean).sort()).toEqual(['big', 'f.conf', 'payload.bin'])

    await expect(t.mkdirp(`${dir}/f.conf/sub`)).rejects.toMatchObject({ code: 'TESS_E_PRECONDITION' })
    await t.exec('rm -rf /etc/tess/sshtest')
  })
})

describe('pre-flight', () => {
  let t1: SshTransport
  let t2: SshTransport
  const plan = (): PreflightPlan => ({
    clusterName: 'sshtest',
    ports: preflightPorts(),
    disks: [path.join(tmp, 'disk0'), '/etc/tess/disk1'],
    installDeps: false,
  })

  beforeAll(async () => {
    fs.mkdirSync(path.join(tmp, 'disk0'))
    ;[t1, t2] = await Promise.all([connect(h1), connect(h2)])
  })

  it('is all green on both hosts', async () => {
    const r = await runPreflight(new Map([[h1.name, t1], [h2.name, t2]]), plan())
    const report = formatPreflight(r)
    expect(r.ok, report).toBe(true)
    for (const h of r.hosts) {
      const checks = h.checks.map((c) => c.check)
      for (const c of ['reachable', 'os', 'node', 'binary', 'port', 'disk', 'data-dir', 'clock', 'containers']) expect(checks, `${h.host} ${c}`).toContain(c)
      // the test hosts share the machine's cgroups, runc, /dev/fuse and loop devices
      expect(h.checks.filter((c) => c.check === 'containers').map((c) => c.level)).toEqual(['ok'])
      expect(h.checks.filter((c) => c.check === 'port').length).toBe(5)
      expect(h.checks.filter((c) => c.check === 'disk').length).toBe(2)
      expect(h.checks.find((c) => c.check === 'clock')!.message).toMatch(/clock offset [+-]\d+ ms/)
    }
    expect(report).toContain(`${h1.name}: ready`)
    expect(report).toContain(`${h2.name}: ready`)
  })

  it('reports a busy port and a disk path that is a file, on host 1 only, with hints', async () => {
    // a listener on the API port inside host 1, and a file where host 1's disk1 should be
    const start = await th.exec(h1, ['sh', '-c', `node -e "require('net').createServer().listen(${9440}, '0.0.0.0')" </dev/null >/dev/null 2>&1 & echo $!`])
    const pid = Number(start.stdout.trim())
    expect(pid).toBeGreaterThan(1)
    try {
      for (let i = 0; i < 100; i++) {
        if ((await th.exec(h1, ['ss', '-ltnH', 'sport = :9440'])).stdout.includes('9440')) break
        await new Promise((r) => setTimeout(r, 50))
      }
      await th.exec(h1, ['sh', '-c', 'echo not a dir > /etc/tess/disk1'])
      const r = await runPreflight(new Map([[h1.name, t1], [h2.name, t2]]), plan())
      const report = formatPreflight(r)
      expect(r.ok).toBe(false)
      const [r1, r2] = r.hosts
      expect(r2!.ok, report).toBe(true)
      const failed = r1!.checks.filter((c) => !c.ok)
      expect(failed.map((c) => `${c.check} ${c.subject}`), report).toEqual(['port API 9440', 'disk /etc/tess/disk1'])
      expect(failed[0]!.message).toMatch(/API port 9440 is in use/)
      expect(failed[0]!.message).toContain(`pid ${pid}`)
      expect(failed[1]!.message).toMatch(/not a directory/)
      for (const f of failed) expect(f.hint).not.toBe('')
      expect(report).toMatch(/FAIL port +API port 9440/)
      expect(report).toContain('hint:')
      const err = preflightError(r)
      expect(err.code).toBe('TESS_E_PRECONDITION')
      expect(err.message).toContain(`${h1.name} (2)`)
      expect(err.message).not.toContain(h2.name)
    } finally {
      if (fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('createServer')) process.kill(pid, 'SIGKILL')
      await th.exec(h1, ['rm', '-f', '/etc/tess/disk1'])
    }
  })

  it('warns about a clock offset above 500 ms and fails above 5 s, with the numbers', async () => {
    const clock = async (skewMs: number) => {
      const r = await runPreflight(new Map([[h1.name, t1]]), { ...plan(), localClock: () => Date.now() - skewMs })
      return r.hosts[0]!.checks.find((c) => c.check === 'clock')!
    }
    const fine = await clock(0)
    expect(fine.level, fine.message).toBe('ok')
    const rtt = Number(/round trip (\d+) ms/.exec(fine.message)![1])
    expect(rtt).toBeLessThan(200) // one channel, no process start per sample
    const w = await clock(2_000)
    expect(w).toMatchObject({ level: 'warn', ok: true })
    expect(w.message).toMatch(/clock offset \+(19\d\d|20\d\d) ms .*more than 500 ms/)
    expect(w.hint).toMatch(/NTP/)
    const f = await clock(-7_000)
    expect(f).toMatchObject({ level: 'fail', ok: false })
    expect(f.message).toMatch(/clock offset -(69\d\d|70\d\d) ms .*more than the 5000 ms allowed/)
  })

  it('reports a host that could not be connected as not reachable', async () => {
    const down = new TessError('TESS_E_UNREACHABLE', 'cannot connect to ghost: connection refused', 'is sshd running on ghost:22?')
    const r = await runPreflight(new Map<string, SshTransport | Error>([[h2.name, t2], ['ghost', down]]), plan())
    expect(r.ok).toBe(false)
    expect(r.hosts[0]!.ok).toBe(true)
    expect(r.hosts[1]!.checks).toEqual([expect.objectContaining({ check: 'reachable', ok: false, hint: 'is sshd running on ghost:22?' })])
  })
})

describe('bundle install', () => {
  let bundle: Bundle
  let t1: SshTransport
  let t2: SshTransport

  beforeAll(async () => {
    if (!fs.existsSync(path.join(repoRoot, 'dist', 'lib', 'units.js'))) {
      expect(spawnSync('npm', ['run', 'build'], { cwd: repoRoot, timeout: 300_000 }).status).toBe(0)
    }
    bundle = await buildBundle(repoRoot, path.join(tmp, 'bundles'))
    ;[t1, t2] = await Promise.all([connect(h1), connect(h2)])
  }, 300_000)

  it('installs on both hosts, idempotently, and the daemons\' modules import there', async () => {
    const first = await Promise.all([installBundle(t1, bundle), installBundle(t2, bundle)])
    expect(first.map((r) => r.uploaded)).toEqual([true, true])
    const version = bundle.sha256.slice(0, 16)
    expect(first[0]!.dir).toBe(`/var/lib/tess/bundle/${version}`)
    const again = await Promise.all([installBundle(t1, bundle), installBundle(t2, bundle)])
    expect(again.map((r) => r.uploaded)).toEqual([false, false])
    for (const [h, t] of [[h1, t1], [h2, t2]] as const) {
      expect((await th.exec(h, ['readlink', '/var/lib/tess/bundle/current'])).stdout.trim()).toBe(version)
      expect((await th.exec(h, ['ls', '-A', '/var/lib/tess/bundle'])).stdout.split('\n').filter(Boolean).sort()).toEqual([version, 'current'].sort())
      const units = await t.execOk(['node', '-e', "import('/var/lib/tess/bundle/current/dist/lib/units.js').then(m => console.log(m.parseSize('1G')))"])
      expect(units.stdout.trim()).toBe('1073741824')
      const svc = await t.execOk(['node', '-e', "import('/var/lib/tess/bundle/current/dist/supervisor/services.js').then(m => console.log(typeof m.etcdService))"], { env: { NODE_PATH: '' } })
      expect(svc.stdout.trim()).toBe('function')
      // its own copy: host 1 and host 2 each hold the bundle in their /var/lib/tess
      expect((await th.exec(h, ['cat', `/var/lib/tess/bundle/${version}/.tess-bundle-sha256`])).stdout.trim()).toBe(bundle.sha256)
    }
    // a half-installed version (marker gone) is installed again
    await th.exec(h1, ['rm', `/var/lib/tess/bundle/${version}/.tess-bundle-sha256`])
    expect((await installBundle(t1, bundle)).uploaded).toBe(true)
    expect((await installBundle(t1, bundle)).uploaded).toBe(false)
    // older versions beyond keepVersions are removed, newest first kept, never the current one
    await th.exec(h2, ['sh', '-c', 'cd /var/lib/tess/bundle && mkdir 0000000000000001 0000000000000002 && touch -d "2 days ago" 0000000000000001 && touch -d "1 day ago" 0000000000000002 && touch -d "3 days ago" ' + version])
    const pruned = await installBundle(t2, bundle, { keepVersions: 2 })
    expect(pruned).toMatchObject({ uploaded: false, pruned: ['0000000000000001'] })
    expect((await th.exec(h2, ['ls', '-A', '/var/lib/tess/bundle'])).stdout.split('\n').filter(Boolean).sort()).toEqual(['0000000000000002', version, 'current'].sort())
  })

  it('refuses a bundle whose upload does not match its sha256', async () => {
    const wrong = { ...bundle, sha256: 'f'.repeat(64) }
    await expect(installBundle(t1, wrong)).rejects.toMatchObject({ code: 'TESS_E_IO', message: expect.stringMatching(/expected f{64}/) })
    expect((await th.exec(h1, ['ls', '-A', '/var/lib/tess/bundle'])).stdout.split('\n').filter((l) => l.startsWith('.')).length).toBe(0)
    expect((await th.exec(h1, ['readlink', '/var/lib/tess/bundle/current'])).stdout.trim()).toBe(bundle.sha256.slice(0, 16))
  })
})

describe('node loss', () => {
  it('a killed host is TESS_E_UNREACHABLE quickly, and its open transport fails', async () => {
    const t2 = await connect(h2)
    await th.kill(h2)
    const t0 = Date.now()
    const e = await connectError(h2, { readyTimeoutMs: 2_000 })
    expect(Date.now() - t0).toBeLessThan(5_000)
    expect(e.code).toBe('TESS_E_UNREACHABLE')
    expect(e.message).toContain(h2.address)
    const x = await t2.exec('true', { timeoutMs: 2_000 }).catch((err: unknown) => err)
    expect(x).toBeInstanceOf(TessError)
    expect(['TESS_E_UNREACHABLE', 'TESS_E_TIMEOUT']).toContain((x as TessError).code)
  })
})
