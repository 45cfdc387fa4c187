import { execFileSync, spawn } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { ContainerView, CsmInfo, StatsResult } from '../../src/lib/csm-types.js'
import type { EventInfo } from '../../src/lib/event-types.js'
import { openSecret, readSecretsKey } from '../../src/lib/secretbox.js'
import { formatBytes } from '../../src/lib/units.js'
import { run } from '../helpers/run.js'
import { TestCluster, alive, ownedBy, repoRoot, tessBin, waitFor, withJson, type TessResult } from '../helpers/cluster.js'
import { FakeRegistry, buildBusyboxImage, exec, haveCommands, pushImage, sha256, startDockerRegistry, type DockerRegistry } from '../helpers/registry.js'

/**
 * Containers end to end on the embedded cluster, through the CLI: a real docker-registry on
 * loopback, images built with umoci and pushed with skopeo, CSM daemons run by the supervisor,
 * containers under real runc in the CSMs' cgroups.
 */
const missing = haveCommands('docker-registry', 'umoci', 'skopeo', 'busybox', 'runc', 'etcd')
const isRoot = process.getuid?.() === 0
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const MiB = 1024 * 1024

describe.skipIf(missing.length > 0 || !isRoot)('containers: CSMs, registries, images and containers through the CLI', () => {
  const c = new TestCluster('ctr')
  let reg: DockerRegistry | undefined
  let work: string
  let image: string
  let cgroupParent: string
  const password = `s3cret-${Math.random().toString(36).slice(2)}`

  const tess = (args: string[], opts?: { input?: string, timeoutMs?: number }): Promise<TessResult> => c.tess(args, opts)
  async function ok(args: string[], opts?: { input?: string, timeoutMs?: number }): Promise<any> {
    const r = await tess(withJson(args), opts)
    if (r.code !== 0) throw new Error(`tess ${args.join(' ')} exited ${r.code}: ${r.stdout} ${r.stderr}`)
    return r.json
  }
  async function fails(args: string[], exit: number, code: string, opts?: { input?: string }): Promise<{ code: string, message: string, hint: string }> {
    const r = await tess(withJson(args), opts)
    expect(r.code, `${args.join(' ')}: ${r.stdout} ${r.stderr}`).toBe(exit)
    expect(r.json?.error?.code, r.stdout).toBe(code)
    expect(r.json.error.hint.length).toBeGreaterThan(0)
    return r.json.error
  }
  const show = (name: string): Promise<ContainerView> => ok(['container', 'show', name])
  async function logsOf(name: string): Promise<string> {
    const r = await tess(['container', 'logs', name])
    expect(r.code, r.stderr).toBe(0)
    return r.stdout
  }
  async function waitLog(name: string, text: string): Promise<void> {
    await waitFor(`"${text}" in the log of ${name}`, async () => (await logsOf(name)).includes(text), 15_000, 200)
  }
  const cpuOf = async (name: string): Promise<number> => {
    const s = await ok(['container', 'stats', name]) as StatsResult
    return s.containers[0]!.cpuCpus!
  }
  const cgroupDir = (controller: string, sub = '') => path.join('/sys/fs/cgroup', controller, cgroupParent, sub)

  beforeAll(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-ctr-it-'))
    reg = await startDockerRegistry()
    const built = await buildBusyboxImage(path.join(work, 'build'), 'v1')
    image = `${reg.host}/test/busybox:v1`
    await pushImage(built, image)
    await pushImage(await buildBusyboxImage(path.join(work, 'build'), 'v2', { name: 'etc/v2', content: 'only in v2\n' }), `${reg.host}/test/tampered:v2`)
    await pushImage(built, `${reg.host}/test/denied:v1`)
    await pushImage(await buildBusyboxImage(path.join(work, 'build'), 'big', { name: 'etc/big', content: crypto.randomBytes(3 * MiB).toString('base64') }), `${reg.host}/test/big:v1`)
    await c.create()
    const nodeCfg = JSON.parse(fs.readFileSync(path.join(c.dataDir, 'node.json'), 'utf8')) as { clusterId: string, nodeName: string }
    cgroupParent = `/tess-${nodeCfg.clusterId.replace(/[^a-zA-Z0-9]/g, '').slice(0, 12)}-${nodeCfg.nodeName}`
  }, 180_000)

  afterAll(async () => {
    await c.destroy()
    await reg?.cleanup().catch(() => undefined)
    if (work !== undefined) fs.rmSync(work, { recursive: true, force: true })
  }, 120_000)

  it('registries: validated, credentials stored but never shown', async () => {
    await fails(['registry', 'add', 'plain', `http://${reg!.host}`], 2, 'TESS_E_INVALID')
    await fails(['registry', 'add', 'bad', 'ftp://x'], 2, 'TESS_E_INVALID')
    const r = await ok(['registry', 'add', 'local', `http://${reg!.host}`, '--insecure'])
    expect(r).toMatchObject({ name: 'local', host: reg!.host, insecure: true, hasPassword: false })
    await fails(['registry', 'add', 'again', `http://${reg!.host}`, '--insecure'], 4, 'TESS_E_EXISTS')
    // a second registry with credentials (the password arrives on stdin)
    const withPw = await ok(['registry', 'add', 'private', 'https://registry.example.test:5443', '--username', 'ops', '--password-stdin'], { input: `${password}\n` })
    expect(withPw).toMatchObject({ username: 'ops', hasPassword: true })
    const list = await tess(['registry', 'list'])
    const listJson = await tess(['registry', 'list', '--json'])
    expect(list.stdout).toContain('private')
    for (const out of [list.stdout, list.stderr, listJson.stdout, JSON.stringify(withPw)]) expect(out).not.toContain(password)
    expect(fs.readFileSync(path.join(c.dataDir, 'logs', 'cvm.log'), 'utf8')).not.toContain(password)
    // stored in etcd, whose files are 0600 in a 0700 directory, sealed with the node's secrets key
    // (not in etcd): neither etcd's database nor its log holds the password, the stored value opens
    // with the key file
    const db = path.join(c.dataDir, 'etcd', 'member', 'snap', 'db')
    expect(fs.statSync(db).mode & 0o777).toBe(0o600)
    expect(fs.statSync(path.join(c.dataDir, 'etcd')).mode & 0o777).toBe(0o700)
    expect(fs.statSync(path.join(c.dataDir, 'pki', 'secrets.key')).mode & 0o777).toBe(0o600)
    const pki = path.join(c.dataDir, 'pki')
    const got = await run('etcdctl', ['--endpoints', `https://127.0.0.1:${c.ports.etcdClient}`, '--cacert', path.join(pki, 'ca.crt'),
      '--cert', path.join(pki, 'node.crt'), '--key', path.join(pki, 'node.key'), 'get', '--print-value-only', '/tess/registry-secrets/private'], { env: { ETCDCTL_API: '3' } })
    expect(got.code, got.stderr).toBe(0)
    const stored = got.stdout.trim()
    expect(stored).toMatch(/^tess-sealed-v1:/)
    expect(stored).not.toContain(password)
    expect(openSecret(readSecretsKey(path.join(pki, 'secrets.key')), stored, '/tess/registry-secrets/private')).toBe(password)
    const etcdFiles = (d: string): string[] => fs.readdirSync(d, { withFileTypes: true }).flatMap((e) => e.isDirectory() ? etcdFiles(path.join(d, e.name)) : [path.join(d, e.name)])
    for (const f of etcdFiles(path.join(c.dataDir, 'etcd'))) expect(fs.readFileSync(f).includes(Buffer.from(password)), f).toBe(false)
    expect((await ok(['registry', 'remove', 'private', '--yes'])).name).toBe('private')
    await fails(['registry', 'remove', 'private', '--yes'], 3, 'TESS_E_NOT_FOUND')
  })

  it('CSMs: created as supervised daemons with their own cgroup caps; quotas the node cannot hold are refused with numbers', async () => {
    const e = await fails(['csm', 'create', 'huge', '--cpus', '64', '--memory', '1G'], 5, 'TESS_E_CAPACITY')
    expect(e.message).toMatch(/64 cpus/)
    expect(e.message).toMatch(/\d+ cpus and [\d.]+ GiB free/)
    await fails(['csm', 'create', 'Bad_Name', '--cpus', '1', '--memory', '64M'], 2, 'TESS_E_INVALID')
    const web = await ok(['csm', 'create', 'web', '--cpus', '1', '--memory', '256M']) as CsmInfo
    expect(web).toMatchObject({ name: 'web', cpus: 1, memoryBytes: 256 * MiB, state: 'running', runtime: 'runc', containers: 0 })
    expect(web.pid).toBeGreaterThan(0)
    expect(alive(web.pid!)).toBe(true)
    await fails(['csm', 'create', 'web', '--cpus', '1', '--memory', '256M'], 4, 'TESS_E_EXISTS')
    // its cgroup caps (v1 here: cpu and memory hierarchies)
    expect(fs.readFileSync(cgroupDir('cpu', 'csm-web/cpu.cfs_quota_us'), 'utf8').trim()).toBe('100000')
    expect(fs.readFileSync(cgroupDir('memory', 'csm-web/memory.limit_in_bytes'), 'utf8').trim()).toBe(String(256 * MiB))
    // its state directory, and the supervisor reports it
    expect(fs.existsSync(path.join(c.dataDir, 'csms', 'web', 'state'))).toBe(true)
    const st = await ok(['cluster', 'status'])
    expect(st.nodes[0].daemons.find((d: { name: string }) => d.name === 'csm-web')).toMatchObject({ pid: web.pid, healthy: true })
    // list, show, update
    expect((await ok(['csm', 'list']) as CsmInfo[]).map((x) => x.name)).toEqual(['web'])
    expect((await ok(['csm', 'show', 'web']) as CsmInfo).node).toBe(web.node)
    const up = await ok(['csm', 'update', 'web', '--cpus', '1.5']) as CsmInfo
    expect(up.cpus).toBe(1.5)
    expect(fs.readFileSync(cgroupDir('cpu', 'csm-web/cpu.cfs_quota_us'), 'utf8').trim()).toBe('150000')
    await fails(['csm', 'update', 'web', '--cpus', '500'], 5, 'TESS_E_CAPACITY')
    await fails(['csm', 'show', 'nope'], 3, 'TESS_E_NOT_FOUND')
  })

  it('images: pull verifies and unpacks; a deny rule and a tampered blob are refused and leave nothing', async () => {
    const p = await ok(['image', 'pull', image])
    expect(p).toMatchObject({ ref: image, layers: 3 })
    expect(p.nodes[0].downloadedBytes).toBeGreaterThan(500_000)
    // a second pull downloads nothing
    expect((await ok(['image', 'pull', image])).nodes[0].downloadedBytes).toBe(0)
    const imgs = await ok(['image', 'list'])
    expect(imgs.map((i: { ref: string }) => i.ref)).toEqual([image])

    // deny rules name the rule; digests too
    await fails(['registry', 'deny', 'not a pattern'], 2, 'TESS_E_INVALID')
    expect(await ok(['registry', 'deny', `${reg!.host}/test/denied`])).toEqual({ allow: [], deny: [`${reg!.host}/test/denied`] })
    const denied = await fails(['image', 'pull', `${reg!.host}/test/denied:v1`], 7, 'TESS_E_FORBIDDEN')
    expect(denied.message).toContain(`deny ${reg!.host}/test/denied`)
    await ok(['registry', 'deny', `${reg!.host}/test/denied`, '--remove'])
    await ok(['registry', 'allow', `${reg!.host}/test/busybox`])
    const notAllowed = await fails(['image', 'pull', `${reg!.host}/test/denied:v1`], 7, 'TESS_E_FORBIDDEN')
    expect(notAllowed.message).toContain('allow list')
    await ok(['registry', 'allow', `${reg!.host}/test/busybox`, '--remove'])
    const digest = p.digest as string
    await ok(['registry', 'deny', `@${digest}`])
    expect((await fails(['image', 'pull', `${reg!.host}/test/denied:v1`], 7, 'TESS_E_FORBIDDEN')).message).toContain(`deny @${digest}`)
    await ok(['registry', 'deny', `@${digest}`, '--remove'])
    expect(await ok(['registry', 'policy'])).toEqual({ allow: [], deny: [] })

    // a tampered top layer: both digests in the error, no layer or image recorded
    const man = JSON.parse((await exec('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg!.host}/test/tampered:v2`])).stdout)
    const top: string = man.layers[2].digest
    const data = reg!.blobDataPath(top)
    const orig = fs.readFileSync(data)
    const bad = Buffer.from(orig)
    bad[bad.length - 10]! ^= 0xff
    fs.writeFileSync(data, bad)
    const layersDir = path.join(c.dataDir, 'images', 'layers')
    const layersBefore = fs.readdirSync(layersDir).sort()
    try {
      const t = await fails(['image', 'pull', `${reg!.host}/test/tampered:v2`], 2, 'TESS_E_INVALID')
      expect(t.message).toContain(`expected ${top}`)
      expect(t.message).toContain(`actual ${sha256(bad)}`)
      expect(fs.readdirSync(layersDir).sort()).toEqual(layersBefore)
      expect((await ok(['image', 'list'])).map((i: { ref: string }) => i.ref)).toEqual([image])
    } finally {
      fs.writeFileSync(data, orig)
    }
    // unknown image, unreachable registry
    await fails(['image', 'pull', `${reg!.host}/test/nothing:v1`], 3, 'TESS_E_NOT_FOUND')
    const unreach = await tess(['image', 'pull', '127.0.0.1:1/test/x:v1', '--json'], { timeoutMs: 120_000 })
    expect(unreach.code, unreach.stdout).toBe(6)
    // a full disk: a clear error (exit 5), no image recorded, no layer left; after space is freed the pull works
    const content = path.join(c.dataDir, 'images', 'content')
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', content])
    try {
      for (const d of ['blobs/sha256', 'blobs/sha512', 'ingest']) fs.mkdirSync(path.join(content, d), { recursive: true })
      const full = await fails(['image', 'pull', `${reg!.host}/test/big:v1`], 5, 'TESS_E_CAPACITY')
      expect(full.message).toContain('disk is full')
      expect(fs.readdirSync(layersDir).sort()).toEqual(layersBefore)
    } finally {
      execFileSync('umount', [content])
    }
    expect((await ok(['image', 'list'])).map((i: { ref: string }) => i.ref)).toEqual([image])
    await ok(['image', 'pull', `${reg!.host}/test/big:v1`])
    await ok(['image', 'remove', `${reg!.host}/test/big:v1`, '--yes'])
    expect(fs.readdirSync(layersDir).sort()).toEqual(layersBefore)

    // repaired: pulls, then removed (only the layers no other image uses go)
    await ok(['image', 'pull', `${reg!.host}/test/tampered:v2`])
    expect((await ok(['image', 'remove', `${reg!.host}/test/tampered:v2`, '--yes'])).nodes).toHaveLength(1)
    expect(fs.readdirSync(layersDir).sort()).toEqual(layersBefore)
    await fails(['image', 'remove', `${reg!.host}/test/tampered:v2`, '--yes'], 3, 'TESS_E_NOT_FOUND')
  })

  it('a pull on a terminal shows the layers and bytes done while it downloads', async () => {
    // a registry in this process that holds back the second layer after 4 KiB, until released
    const fake = await new FakeRegistry().start()
    let child: ReturnType<typeof spawn> | undefined
    try {
      const { first, second, release } = fake.addHeldImage('test/held', 'v1', { secondBytes: 533_336, holdBytes: 4096 })
      await ok(['registry', 'add', 'held', `http://${fake.host}`, '--insecure'])
      const ref = `${fake.host}/test/held:v1`
      // a pseudo-terminal 120 columns wide (script(1)); CI turns progress off, so the child has none
      const env: NodeJS.ProcessEnv = { ...process.env, ...c.env, TERM: 'xterm' }
      delete env.CI
      delete env.NO_COLOR
      child = spawn('script', ['-qec', `stty cols 120 rows 24; exec ${process.execPath} ${tessBin} image pull ${ref}`, '/dev/null'], { env, stdio: ['ignore', 'pipe', 'pipe'] })
      let out = ''
      child.stdout!.on('data', (d: Buffer) => { out += d.toString() })
      const exited = new Promise<number | null>((resolve) => child!.once('close', (code) => resolve(code)))
      const shown = `1/2 layers, ${formatBytes(first.blob.length + 4096)} of ${formatBytes(first.blob.length + second.blob.length)} on `
      await waitFor('the spinner to show one layer of two done', () => out.includes(shown) || undefined, 60_000, 100)
      release()
      expect(await exited, out).toBe(0)
      // the result as on any terminal, once the spinner ended (colours and cursor moves left out)
      const plain = out.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '')
      expect(plain, out).toMatch(/platform: +linux\/amd64/)
      expect(plain).toContain(`✔ Pulling ${ref}\r\n`)
      expect((await ok(['image', 'list'])).map((i: { ref: string }) => i.ref)).toContain(ref)
      await ok(['image', 'remove', ref, '--yes'])
    } finally {
      if (child?.exitCode === null) child.kill('SIGKILL')
      await fake.stop()
      await tess(['registry', 'remove', 'held', '--yes'])
    }
  })

  it('run, logs, list, show; names are unique; a missing command leaves nothing behind', async () => {
    // a deny rule added after the pull holds at run time: the cached image is refused, nothing is made
    await ok(['registry', 'deny', `${reg!.host}/test/busybox`])
    try {
      const refused = await fails(['container', 'run', image, '--name', 'denied', '--csm', 'web', '--', 'true'], 7, 'TESS_E_FORBIDDEN')
      expect(refused.message).toContain(`deny ${reg!.host}/test/busybox`)
      expect(refused.message).toContain('pulled before the rule')
      await fails(['container', 'show', 'denied'], 3, 'TESS_E_NOT_FOUND')
    } finally {
      await ok(['registry', 'deny', `${reg!.host}/test/busybox`, '--remove'])
    }
    const token = `tok-${Math.random().toString(36).slice(2)}-${Date.now()}`
    const v = await ok(['container', 'run', image, '--name', 'hello', '--csm', 'web', '--env', 'GREETING=hi', '--env', `API_TOKEN=${token}`, '--', 'sh', '-c', 'echo "$GREETING from $(hostname)"; cat /etc/hello; busybox sleep 1000']) as ContainerView
    // the environment (often credentials) is sealed in etcd: no etcd file holds the value
    const etcdFiles = (d: string): string[] => fs.readdirSync(d, { withFileTypes: true }).flatMap((e) => e.isDirectory() ? etcdFiles(path.join(d, e.name)) : [path.join(d, e.name)])
    for (const f of etcdFiles(path.join(c.dataDir, 'etcd'))) expect(fs.readFileSync(f).includes(Buffer.from(token)), f).toBe(false)
    expect((await show('hello') as ContainerView & { env: string[] }).env).toContain(`API_TOKEN=${token}`)
    // network none: reached through loopback only
    expect((await show('hello')).addresses).toEqual(['127.0.0.1', '::1'])
    expect((await tess(['container', 'show', 'hello'])).stdout).toMatch(/^addresses: +127\.0\.0\.1, ::1 \(loopback only: network none\)$/m)
    expect(v).toMatchObject({ name: 'hello', csm: 'web', status: 'running', image })
    expect(v.id).toMatch(/^[a-f0-9]{12}$/)
    await waitLog('hello', 'hello from layer 1')
    expect(await logsOf('hello')).toBe('hi from hello\nhello from layer 1\n')
    expect((await tess(['container', 'logs', 'hello', '--tail', '1'])).stdout).toBe('hello from layer 1\n')
    const list = await ok(['container', 'list']) as ContainerView[]
    expect(list.map((x) => [x.name, x.status])).toEqual([['hello', 'running']])
    const text = await tess(['container', 'list'])
    expect(text.stdout).toMatch(/hello.*web.*running/)
    expect((await show('hello')).id).toBe(v.id)
    // --follow prints what comes until the container exits
    await ok(['container', 'run', image, '--name', 'ticker', '--csm', 'web', '--', 'sh', '-c', 'for i in 1 2 3; do echo tick $i; busybox sleep 0.4; done'])
    const followed = await tess(['container', 'logs', 'ticker', '--follow'], { timeoutMs: 30_000 })
    expect(followed.code, followed.stderr).toBe(0)
    expect(followed.stdout).toBe('tick 1\ntick 2\ntick 3\n')
    expect((await ok(['container', 'logs', 'ticker'])).logs).toBe('tick 1\ntick 2\ntick 3\n')
    // --timestamps: each line with the time it was written; --since: from a time on
    const stamped = (await tess(['container', 'logs', 'ticker', '--timestamps'])).stdout.split('\n').filter(Boolean)
    expect(stamped, stamped.join('\n')).toHaveLength(3)
    stamped.forEach((l, i) => expect(l).toMatch(new RegExp(`^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{9}Z tick ${i + 1}$`)))
    const times = stamped.map((l) => Date.parse(`${l.slice(0, 23)}Z`))
    expect(times[2]! - times[0]!).toBeGreaterThanOrEqual(400) // two sleeps of 0.4 s between them
    const since = new Date(times[1]!).toISOString()
    expect((await ok(['container', 'logs', 'ticker', '--since', since])).logs).toBe('tick 2\ntick 3\n')
    expect((await ok(['container', 'logs', 'ticker', '--since', '1h', '--tail', '1'])).logs).toBe('tick 3\n')
    expect((await ok(['container', 'logs', 'ticker', '-t', '--since', '1h', '-n', '1'])).logs).toMatch(/^\S+Z tick 3\n$/)
    await fails(['container', 'logs', 'ticker', '--since', 'yesterday'], 2, 'TESS_E_USAGE')
    await ok(['container', 'remove', 'ticker', '--yes'])
    // unique names, cluster-wide
    const dup = await fails(['container', 'run', image, '--name', 'hello', '--csm', 'web', '--', 'true'], 4, 'TESS_E_EXISTS')
    expect(dup.message).toContain('CSM web')
    // a command that is not in the image: clear error, no container, the name is free again
    const stateDir = path.join(c.dataDir, 'csms', 'web', 'state', 'containers')
    const before = fs.readdirSync(stateDir).sort()
    const nc = await tess(withJson(['container', 'run', image, '--name', 'nocmd', '--csm', 'web', '--', '/bin/no-such-thing']))
    expect(nc.code, nc.stdout).not.toBe(0)
    expect(nc.json.error.message).toContain('no-such-thing')
    expect(fs.readdirSync(stateDir).sort()).toEqual(before)
    await fails(['container', 'show', 'nocmd'], 3, 'TESS_E_NOT_FOUND')
    // a container asking more than its CSM has
    const big = await fails(['container', 'run', image, '--name', 'big', '--csm', 'web', '--cpus', '4', '--', 'true'], 5, 'TESS_E_CAPACITY')
    expect(big.message).toContain('the CSM has 1.5 cpus')
    // unknown image: clear error, nothing made
    await fails(['container', 'run', `${reg!.host}/test/nothing:v1`, '--name', 'ghost', '--csm', 'web', '--', 'true'], 3, 'TESS_E_NOT_FOUND')
    await fails(['container', 'show', 'ghost'], 3, 'TESS_E_NOT_FOUND')
  })

  it('a container with host networking reaches no vDisk: NBD on TCP wants TLS first, the Unix socket and block devices are not there', async () => {
    // a vDisk the container was not given, with data on it
    await ok(['vdisk', 'create', 'private', '--size', '16M'])
    const octal = (b: string) => b.split('').map((ch) => `\\${ch.charCodeAt(0).toString(8).padStart(3, '0')}`).join('')
    // NBD fixed newstyle, as any client would start: client flags, then NBD_OPT_LIST (3) asking for the export list
    const optList = `\\000\\000\\000\\003${octal('IHAVEOPT')}\\000\\000\\000\\003\\000\\000\\000\\000`
    const script = [
      `busybox printf '${optList}' | busybox nc -w 3 127.0.0.1 ${c.ports.nbd} | busybox od -An -tx1 | busybox tr -d ' \\n'; echo`,
      `ls ${path.dirname(c.nbdSocket)} >/dev/null 2>&1 && echo socket-dir=visible || echo socket-dir=absent`,
      'ls /dev/loop* /dev/vda /dev/sda >/dev/null 2>&1 && echo block=visible || echo block=absent',
    ].join('; ')
    await ok(['container', 'run', image, '--name', 'prober', '--csm', 'web', '--network', 'host', '--', 'sh', '-c', script])
    const log = await waitFor('the prober container to finish', async () => {
      const l = await logsOf('prober')
      return l.includes('block=') ? l : undefined
    }, 30_000, 200)
    const [answer = ''] = log.split('\n')
    // the server's greeting (NBDMAGIC IHAVEOPT), then its reply to NBD_OPT_LIST: NBD_REP_ERR_TLS_REQD (0x80000005)
    expect(answer.startsWith(Buffer.from('NBDMAGICIHAVEOPT').toString('hex'))).toBe(true)
    expect(answer).toContain('0003e889045565a9' + '00000003' + '80000005')
    // and no export name came back: the list needs TLS first
    expect(answer).not.toContain(Buffer.from('private').toString('hex'))
    expect(log).toMatch(/^socket-dir=absent$/m)
    // network host: the node's address
    const nodeAddress = (await ok(['cluster', 'status']) as { nodes: Array<{ address: string }> }).nodes[0]!.address
    expect((await show('prober')).addresses).toEqual([nodeAddress])
    expect(log).toMatch(/^block=absent$/m)
    await ok(['container', 'remove', 'prober', '--yes', '--force'])
    await ok(['vdisk', 'delete', 'private', '--yes'])
  })

  it('a CSM daemon killed with -9 comes back and re-adopts its running containers', async () => {
    const before = await show('hello')
    const pidFile = path.join(c.dataDir, 'run', 'csm-web.pid')
    const csmPid = Number(fs.readFileSync(pidFile, 'utf8'))
    process.kill(csmPid, 'SIGKILL')
    const newPid = await waitFor('a new CSM daemon', () => {
      try {
        const p = Number(fs.readFileSync(pidFile, 'utf8'))
        return p !== csmPid && alive(p) ? p : undefined
      } catch {
        return undefined
      }
    }, 30_000)
    expect(newPid).not.toBe(csmPid)
    expect(alive(before.pid!)).toBe(true)
    const after = await waitFor('the container seen again', async () => {
      const s = await tess(['container', 'show', 'hello', '--json'])
      return s.code === 0 ? s.json as ContainerView : undefined
    }, 30_000, 200)
    expect(after).toMatchObject({ id: before.id, status: 'running', pid: before.pid })
    expect(await logsOf('hello')).toContain('hello from layer 1')
    expect(fs.readFileSync(path.join(c.dataDir, 'logs', 'csm-web.log'), 'utf8')).toMatch(/adopted 1/)
  })

  it('pause stops CPU use, resume restarts it; stats per container and per CSM', async () => {
    await ok(['container', 'run', image, '--name', 'spin', '--csm', 'web', '--', 'sh', '-c', 'while :; do :; done'])
    await sleep(300)
    // a spinner takes a core when it can get one; with both cores busy (the other test lane,
    // stress-ng) it may get a third of one: "running" is well above 0.05, not a whole core
    expect(await cpuOf('spin')).toBeGreaterThan(0.2)
    expect((await ok(['container', 'pause', 'spin'])).status).toBe('paused')
    const paused = await cpuOf('spin')
    expect(paused).toBeLessThan(0.05)
    expect((await ok(['container', 'resume', 'spin'])).status).toBe('running')
    await sleep(200)
    expect(await cpuOf('spin')).toBeGreaterThan(0.2)
    const all = await ok(['container', 'stats']) as StatsResult
    expect(all.containers.map((x) => x.name).sort()).toEqual(['hello', 'spin'])
    expect(all.csms).toHaveLength(1)
    expect(all.csms[0]).toMatchObject({ csm: 'web', containers: 2, cpuLimitCpus: 1.5, memoryLimitBytes: 256 * MiB })
    const text = await tess(['container', 'stats'])
    expect(text.code).toBe(0)
    expect(text.stdout).toMatch(/spin/)
    expect((await ok(['container', 'remove', 'spin', '--force', '--yes'])).name).toBe('spin')
  })

  it('a memory cap OOM-kills an allocator and the container is reported OOM-killed', async () => {
    await ok(['container', 'run', image, '--name', 'hog', '--csm', 'web', '--memory', '32M', '--', 'sh', '-c', 'busybox head -c 209715200 /dev/zero | busybox tail'])
    const done = await waitFor('the hog to exit', async () => {
      const s = await show('hog')
      return s.status === 'exited' ? s : undefined
    }, 30_000, 200)
    expect(done.oomKilled).toBe(true)
    expect(done.exitCode).toBe(137)
    expect((await tess(['container', 'list'])).stdout).toMatch(/hog.*OOM/)
    // tess events: the node reports the OOM kill (within its reconcile of a few seconds), and the
    // run as a change (who did what); --watch prints the remove as it happens, one JSON per line
    const oom = await waitFor('the OOM kill among the events', async () => {
      const es = await ok(['events', '--kind', 'container-oom', '--since', '10m']) as EventInfo[]
      return es.find((e) => e.subject === 'web/hog')
    }, 30_000, 500)
    expect(oom).toMatchObject({ kind: 'container-oom', severity: 'error' })
    expect(oom.message).toContain('code 137')
    const changes = await ok(['events', '--kind', 'change', '--since', '10m']) as EventInfo[]
    expect(changes.some((e) => e.subject === 'root' && e.message.startsWith('POST /v1/containers: 20'))).toBe(true)
    expect((await tess(['events', '--since', 'yesterday', '--json'])).json.error.code).toBe('TESS_E_USAGE')
    const watch = spawn(process.execPath, [tessBin, 'events', '--watch', '--json', '--kind', 'change'], { env: { ...process.env, ...c.env }, stdio: ['ignore', 'pipe', 'pipe'] })
    const closed = new Promise((r) => watch.once('close', r))
    let lines = ''
    watch.stdout.on('data', (d) => { lines += d })
    try {
      await sleep(2000) // its first page is printed: what comes next is new
      await ok(['container', 'remove', 'hog', '--yes'])
      const removed = await waitFor('the remove printed by tess events --watch', async () => lines.split('\n').filter(Boolean).map((l) => JSON.parse(l) as EventInfo)
        .find((e) => e.message.startsWith('DELETE /v1/containers/hog')), 15_000, 200)
      expect(removed).toMatchObject({ kind: 'change', subject: 'root' })
    } finally {
      watch.kill('SIGINT')
    }
    expect(await closed).toBe(0)
  })

  it('a CPU cap throttles; stop honours its timeout; remove refuses a running container without --force', async () => {
    await ok(['container', 'run', image, '--name', 'capped', '--csm', 'web', '--cpus', '0.2', '--', 'sh', '-c', 'while :; do :; done'])
    await sleep(500)
    const s = (await ok(['container', 'stats', 'capped']) as StatsResult).containers[0]!
    expect(s.cpuLimitCpus).toBeCloseTo(0.2, 5)
    expect(s.cpuCpus!).toBeLessThan(0.35)
    expect(s.cpuThrottledPeriods).toBeGreaterThan(0)
    await fails(['container', 'remove', 'capped', '--yes'], 4, 'TESS_E_CONFLICT')
    await ok(['container', 'remove', 'capped', '--force', '--yes'])

    await ok(['container', 'run', image, '--name', 'stubborn', '--csm', 'web', '--', 'sh', '-c', 'trap "echo got TERM" TERM; echo ready; while :; do busybox sleep 1; done'])
    await waitLog('stubborn', 'ready')
    const t0 = Date.now()
    const stopped = await ok(['container', 'stop', 'stubborn', '--timeout', '2s']) as ContainerView
    const ms = Date.now() - t0
    expect(ms).toBeGreaterThanOrEqual(1900)
    expect(ms).toBeLessThan(10_000)
    expect(stopped).toMatchObject({ status: 'exited', exitCode: 137 })
    expect(await logsOf('stubborn')).toContain('got TERM')
    // an exited container starts again
    expect((await ok(['container', 'start', 'stubborn'])).status).toBe('running')
    await ok(['container', 'remove', 'stubborn', '--force', '--yes'])
  })

  it('a CSM quota caps two containers together', async () => {
    await ok(['csm', 'create', 'tight', '--cpus', '0.5', '--memory', '128M'])
    await ok(['container', 'run', image, '--name', 'busy-a', '--csm', 'tight', '--', 'sh', '-c', 'while :; do :; done'])
    await ok(['container', 'run', image, '--name', 'busy-b', '--csm', 'tight', '--', 'sh', '-c', 'while :; do :; done'])
    await sleep(500)
    const st = await ok(['container', 'stats']) as StatsResult
    const tight = st.csms.find((x) => x.csm === 'tight')!
    expect(tight.cpuCpus!).toBeLessThan(0.5 * 1.3)
    expect(tight.cpuCpus!).toBeGreaterThan(0.1) // they run (under load they may get less than their cap)
    expect(tight.cpuThrottledPeriods).toBeGreaterThan(0)
    for (const n of ['busy-a', 'busy-b']) expect(st.containers.find((x) => x.name === n)!.cpuUsageNs).toBeGreaterThan(20_000_000)
    // delete refuses while it hosts containers; --force removes them with it
    const e = await fails(['csm', 'delete', 'tight', '--yes'], 4, 'TESS_E_CONFLICT')
    expect(e.message).toContain('busy-a')
    const pids = [(await show('busy-a')).pid!, (await show('busy-b')).pid!]
    const del = await ok(['csm', 'delete', 'tight', '--force', '--yes'])
    expect(del.containersRemoved.sort()).toEqual(['busy-a', 'busy-b'])
    for (const p of pids) expect(alive(p)).toBe(false)
    expect(fs.existsSync(cgroupDir('cpu', 'csm-tight'))).toBe(false)
    expect(fs.existsSync(path.join(c.dataDir, 'csms', 'tight'))).toBe(false)
    await waitFor('the supervisor to stop the daemon of tight', async () => !(await ok(['cluster', 'status'])).nodes[0].daemons.some((d: { name: string }) => d.name === 'csm-tight'), 15_000, 300)
    await fails(['container', 'show', 'busy-a'], 3, 'TESS_E_NOT_FOUND')
  })

  it('CSM pools: containers are placed by the scheduler on the CSM with the most room', async () => {
    // web holds 1.5 of the 2 cpus of this machine
    await ok(['csm', 'create', 'pa', '--cpus', '0.2', '--memory', '64M'])
    await ok(['csm', 'create', 'pb', '--cpus', '0.2', '--memory', '64M'])
    await fails(['csm-pool', 'create', 'pool1', '--csm', 'pa,nope'], 3, 'TESS_E_NOT_FOUND')
    expect((await ok(['csm-pool', 'create', 'pool1', '--csm', 'pa'])).csms).toEqual(['pa'])
    expect((await ok(['csm-pool', 'add', 'pool1', '--csm', 'pb'])).csms).toEqual(['pa', 'pb'])
    expect((await ok(['csm-pool', 'list'])).map((p: { name: string }) => p.name)).toEqual(['pool1'])
    const a = await ok(['container', 'run', image, '--name', 'p1', '--pool', 'pool1', '--cpus', '0.15', '--memory', '32M', '--', 'busybox', 'sleep', '1000']) as ContainerView
    const b = await ok(['container', 'run', image, '--name', 'p2', '--pool', 'pool1', '--cpus', '0.15', '--memory', '32M', '--', 'busybox', 'sleep', '1000']) as ContainerView
    expect([a.csm, b.csm].sort()).toEqual(['pa', 'pb'])
    // too big for every CSM of the pool
    await fails(['container', 'run', image, '--name', 'p3', '--pool', 'pool1', '--cpus', '0.5', '--', 'true'], 5, 'TESS_E_CAPACITY')
    await fails(['container', 'run', image, '--name', 'p4', '--pool', 'nopool', '--', 'true'], 3, 'TESS_E_NOT_FOUND')
    expect((await ok(['csm-pool', 'remove', 'pool1', '--csm', 'pb'])).csms).toEqual(['pa'])
    await fails(['csm-pool', 'remove', 'pool1', '--csm', 'pa'], 4, 'TESS_E_CONFLICT')
    expect((await ok(['csm-pool', 'delete', 'pool1', '--yes'])).name).toBe('pool1')
    for (const n of ['p1', 'p2']) await ok(['container', 'remove', n, '--force', '--yes'])
    for (const n of ['pa', 'pb']) await ok(['csm', 'delete', n, '--yes'])
  })

  it('bad requests to the API get 400s and every daemon keeps serving', async () => {
    const cur = JSON.parse(fs.readFileSync(path.join(c.configDir, 'contexts.json'), 'utf8')).clusters[c.name] as { caCert: string, token: string }
    const caFile = path.join(work, 'ca.crt')
    fs.writeFileSync(caFile, cur.caCert)
    const pki = path.join(c.dataDir, 'pki')
    // asNode: with the node's certificate instead of the token (node operations are for nodes only)
    const curl = (method: string, p: string, body?: string, asNode = false) => {
      try {
        const who = asNode ? ['--cert', path.join(pki, 'node.crt'), '--key', path.join(pki, 'node.key')] : ['-H', `authorization: Bearer ${cur.token}`]
        return execFileSync('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '--cacert', caFile, ...who, '-X', method,
          ...(body !== undefined ? ['-H', 'content-type: application/json', '--data-binary', body] : []), `https://127.0.0.1:${c.ports.api}${p}`], { encoding: 'utf8' })
      } catch (e) {
        return String(e)
      }
    }
    expect(curl('POST', '/v1/containers', '{"name": 5}')).toBe('400')
    expect(curl('POST', '/v1/containers', '[]')).toBe('400')
    expect(curl('POST', '/v1/csms', '{"name":"x","cpus":"many","memoryBytes":1}')).toBe('400')
    expect(curl('POST', '/v1/node-ops/container.run', '{"csm":"web","spec":"nope"}', true)).toBe('400')
    expect(curl('POST', '/v1/node-ops/container.logs', '{"csm":"web","id":"../../etc"}', true)).toBe('400')
    expect(curl('POST', '/v1/node-ops/no.such', '{}', true)).toBe('404')
    // an operator's token, even the bootstrap one, cannot call node operations
    expect(curl('POST', '/v1/node-ops/container.logs', '{"csm":"web","id":"x"}')).toBe('403')
    expect(curl('GET', '/v1/containers/hello/logs?offset=-1')).toBe('400')
    expect(curl('POST', '/v1/registry-policy', '{"kind":"maybe","pattern":"a/b"}')).toBe('400')
    // without the token: 401
    const noAuth = execFileSync('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '--cacert', caFile, `https://127.0.0.1:${c.ports.api}/v1/containers`], { encoding: 'utf8' })
    expect(noAuth).toBe('401')
    // the CSM socket: only root can reach it, and garbage does not kill the daemon
    const sock = path.join(c.dataDir, 'csms', 'web', 'sock')
    expect(fs.statSync(sock).mode & 0o777).toBe(0o600)
    expect(fs.statSync(path.dirname(sock)).mode & 0o777).toBe(0o700)
    await new Promise<void>((resolve) => {
      const s = net.connect(sock, () => s.end('GARBAGE \x00\xff\r\n\r\nPOST /v1/containers HTTP/1.1\r\ncontent-length: 99999999\r\n\r\n{'))
      s.on('error', () => resolve())
      s.on('close', () => resolve())
      s.resume()
    })
    expect((await show('hello')).status).toBe('running')
  })

  it('power loss: every daemon and container of the node killed; the boot entry point brings the node back and the container with a restart policy runs again once the CVM confirmed its CSM', async () => {
    const v = await ok(['container', 'run', image, '--name', 'phoenix', '--csm', 'web', '--restart', 'always', '--', 'sh', '-c', 'echo risen; busybox sleep 1000']) as ContainerView
    await waitLog('phoenix', 'risen')
    // "power off": the supervisor first (so nothing is restarted), then every process of the node:
    // the daemons and helpers (their command lines name the data dir) and the containers (in the
    // node's cgroups)
    const procsUnder = (d: string): number[] => !fs.existsSync(d) ? [] : [
      ...fs.readFileSync(path.join(d, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number),
      ...fs.readdirSync(d, { withFileTypes: true }).filter((e) => e.isDirectory()).flatMap((e) => procsUnder(path.join(d, e.name))),
    ]
    const sup = c.pid('supervisor')!
    process.kill(sup, 'SIGKILL')
    const ours = fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n)).map(Number).filter((p) => p !== process.pid && ownedBy(p, c.dataDir))
    const victims = [...new Set([...ours, ...procsUnder(cgroupDir('memory'))])]
    expect(victims).toContain(v.pid)
    expect(victims).toContain(Number(fs.readFileSync(path.join(c.dataDir, 'run', 'csm-web.pid'), 'utf8')))
    for (const p of victims) {
      try {
        process.kill(p, 'SIGKILL')
      } catch { /* gone already */ }
    }
    for (const p of [sup, ...victims]) await waitFor(`pid ${p} gone`, () => (alive(p) ? undefined : true), 15_000, 50)
    // "power on"
    const on = await run(process.execPath, [path.join(repoRoot, 'dist', 'supervisor', 'boot.js'), '--data-dir', c.dataDir])
    expect(on.code, on.stdout + on.stderr).toBe(0)
    const back = await waitFor('phoenix running again', async () => {
      const r = await tess(['container', 'show', 'phoenix', '--json'])
      return r.code === 0 && r.json.status === 'running' && r.json.pid !== v.pid ? r.json as ContainerView : undefined
    }, 90_000, 500)
    expect(back.restartCount).toBeGreaterThanOrEqual(1)
    expect(await logsOf('phoenix')).toMatch(/risen\n[^]*risen\n/)
    const csmLog = fs.readFileSync(path.join(c.dataDir, 'logs', 'csm-web.log'), 'utf8')
    expect(csmLog).toMatch(/restarts held until the node's CVM confirms/)
    expect(csmLog).toMatch(/confirmed this CSM is placed on this node/)
    // a container without a policy stays exited until it is started
    const hello = await show('hello')
    expect(hello.status).toBe('exited')
    expect((await ok(['container', 'start', 'hello'])).status).toBe('running')
    await ok(['container', 'remove', 'phoenix', '--force', '--yes'])
  }, 180_000)

  it('destroy removes every container, cgroup, mount and daemon', async () => {
    const pid = (await show('hello')).pid!
    const csmPid = Number(fs.readFileSync(path.join(c.dataDir, 'run', 'csm-web.pid'), 'utf8'))
    const r = await tess(['cluster', 'destroy', '--yes', '--cluster', c.name])
    expect(r.code, r.stderr).toBe(0)
    expect(alive(pid)).toBe(false)
    expect(alive(csmPid)).toBe(false)
    expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(c.root)
    expect(fs.existsSync(cgroupDir('cpu'))).toBe(false)
    expect(fs.existsSync(cgroupDir('memory'))).toBe(false)
  })
})
