import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { TessError } from '../../src/lib/errors.js'
import type { Logger } from '../../src/lib/log.js'
import { pullImage } from '../../src/cvm/images/puller.js'
import { ContentStore } from '../../src/lib/images/store.js'
import { LayerStore } from '../../src/lib/images/unpack.js'
import { mountOverlay, mountsUnder, overlayMountPlan, parseProcLimits, unmount } from '../../src/csm/runtime/bundle.js'
import { mountAddon } from '../../src/csm/runtime/mountaddon.js'
import { CgroupHost, type CgroupLimits, type CsmCgroup } from '../../src/csm/runtime/cgroups.js'
import { ContainerManager, type ContainerInfo, type ContainerManagerOptions } from '../../src/csm/runtime/containers.js'
import { isProcessAlive, type RuntimeName } from '../../src/csm/runtime/runc.js'
import { buildBusyboxImage, exec, haveCommands, pushImage, startDockerRegistry, type DockerRegistry } from '../helpers/registry.js'
import { waitFor } from '../helpers/cluster.js'

/**
 * The container runtime against the real thing: runc on this host's cgroups (v1 hybrid here),
 * a busybox image built with umoci, pushed to Debian's docker-registry and pulled with the
 * puller. Every CSM cgroup lives under a parent of its own (/tess-it-<pid>) and every file under
 * a temp dir; afterAll removes all of it even when a test failed.
 */
const missing = haveCommands('docker-registry', 'umoci', 'skopeo', 'busybox', 'mount', 'runc')
const isRoot = process.getuid?.() === 0
const hasCrun = haveCommands('crun').length === 0

const quiet: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined }
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const MiB = 1024 * 1024
const killPid = (pid: number) => {
  try {
    process.kill(pid, 'SIGKILL')
  } catch {
    // gone already
  }
}

describe.skipIf(missing.length > 0 || !isRoot)('runtime: containers under real runc', () => {
  let reg: DockerRegistry | undefined
  let work: string
  let store: ContentStore
  let layers: LayerStore
  let host: CgroupHost
  let image: string
  const parent = `/tess-it-${process.pid}`
  const managers: ContainerManager[] = []
  const csms: CsmCgroup[] = []
  const shimPids: number[] = []
  let main: ContainerManager

  const options = (name: string, csm: CsmCgroup, runtime: RuntimeName = 'runc'): ContainerManagerOptions => ({
    csm: name, stateDir: path.join(work, `csm-${name}`), cgroup: csm, images: store, layers, runtime, log: quiet,
  })

  async function makeCsm(name: string, limits: CgroupLimits, runtime: RuntimeName = 'runc', more: Partial<ContainerManagerOptions> = {}): Promise<ContainerManager> {
    const csm = await host.createCsm(name, limits)
    csms.push(csm)
    const m = new ContainerManager({ ...options(name, csm, runtime), ...more })
    managers.push(m)
    return m
  }

  async function run(m: ContainerManager, spec: Parameters<ContainerManager['run']>[0]): Promise<ContainerInfo> {
    const c = await m.run(spec)
    if (c.shimPid !== undefined) shimPids.push(c.shimPid)
    return c
  }

  async function waitForLog(m: ContainerManager, id: string, text: string, ms = 10_000): Promise<void> {
    const deadline = Date.now() + ms
    while (!(await m.logText(id)).includes(text)) {
      if (Date.now() > deadline) throw new Error(`container ${id} did not print "${text}" in ${ms} ms: ${await m.logText(id)}`)
      await sleep(50)
    }
  }

  async function cpuOver(read: () => Promise<number>, ms: number): Promise<{ cpus: number, usedNs: number }> {
    const a = await read()
    const t0 = process.hrtime.bigint()
    await sleep(ms)
    const b = await read()
    const wallNs = Number(process.hrtime.bigint() - t0)
    return { cpus: (b - a) / wallNs, usedNs: b - a }
  }

  /** every directory of this test's cgroup parent, in every hierarchy */
  const cgroupLeftovers = () => host.allDirs(parent).filter((d) => fs.existsSync(d))

  beforeAll(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-runtime-it-'))
    reg = await startDockerRegistry()
    const built = await buildBusyboxImage(path.join(work, 'build'), 'v1')
    await pushImage(built, `${reg.host}/test/busybox:v1`)
    store = await new ContentStore(path.join(work, 'node/content')).init()
    layers = await new LayerStore(path.join(work, 'node/layers')).init()
    const pulled = await pullImage(`${reg.host}/test/busybox:v1`, { store, layers, registries: { [reg.host]: { insecure: true } } })
    image = pulled.ref
    host = await CgroupHost.detect({ parent })
    main = await makeCsm('main', { cpus: 1.5, memoryBytes: 512 * MiB })
    await main.adopt()
  })

  afterAll(async () => {
    for (const m of managers) {
      try {
        for (const c of await m.list()) await m.remove(c.id, { force: true }).catch(() => undefined)
      } catch {
        // keep cleaning the rest
      }
      try {
        for (const st of await m.runtime.list()) await m.runtime.delete(st.id, { force: true })
      } catch {
        // the state dir may be gone already
      }
    }
    // a safety net: processes of our containers (in our cgroups) and our shims, by pid
    for (const c of csms) for (const pid of await c.processes().catch(() => [])) killPid(pid)
    for (const pid of shimPids) if (await isProcessAlive(pid)) killPid(pid)
    if (csms.length > 0) await sleep(200)
    for (const c of csms) await c.remove().catch(() => undefined)
    await reg?.cleanup().catch(() => undefined)
    if (work !== undefined) {
      for (const mp of (await mountsUnder(work)).reverse()) await exec('umount', ['-l', mp])
      fs.rmSync(work, { recursive: true, force: true })
    }
  })

  it('runs a container that prints and exits: output in the log, exit code 0, isolated', async () => {
    const hostNofile = parseProcLimits(fs.readFileSync('/proc/self/limits', 'utf8')).get('RLIMIT_NOFILE')!.hard
    const c = await run(main, {
      name: 'hello',
      image,
      env: ['GREETING=hello from'],
      command: ['sh', '-c', 'echo "$GREETING $HOSTNAME"; cat /etc/hello; echo to-stderr >&2; echo "nofile=$(ulimit -n)"; cat /proc/net/dev; cat /etc/hosts; ls /etc'],
    })
    expect(c.name).toBe('hello')
    const done = await main.wait(c.id, 15_000)
    expect(done.status).toBe('exited')
    expect(done, JSON.stringify(done)).toMatchObject({ exitCode: 0 })
    expect(done.oomKilled).toBe(false)
    const log = await main.logText('hello')
    expect(log).toContain('hello from hello\n')
    expect(log).toContain('hello from layer 1\n')
    expect(log).toContain('to-stderr\n')
    expect(log).toContain(`nofile=${Math.min(1_048_576, hostNofile)}\n`)
    // network "none": loopback only
    expect(log).toMatch(/^\s*lo:/m)
    expect(log).not.toMatch(/^\s*(eth|ens|veth)\w*:/m)
    expect(log).toMatch(/127\.0\.1\.1\thello/)
    expect(log).not.toContain('doomed') // the whiteout of layer 2 hides it
    expect(await main.logText('hello', 1)).toBe(log.trimEnd().split('\n').pop()! + '\n')
    // after the exit: no overlay mounted, no runtime state, no container cgroup
    expect(await mountsUnder(path.join(work, 'csm-main/containers', c.id))).toEqual([])
    expect(await main.runtime.state(c.id)).toBeUndefined()
    expect(host.allDirs(`${parent}/csm-main/${c.id}`).filter((d) => fs.existsSync(d))).toEqual([])
    // logs can be followed to the end of a container that has exited
    const chunks: Buffer[] = []
    for await (const b of main.logs(c.id, { follow: true })) chunks.push(b)
    expect(Buffer.concat(chunks).toString()).toBe(log)
    // an exited container starts again on the same rootfs
    const again = await main.start('hello')
    expect(['running', 'exited']).toContain(again.status)
    expect((await main.wait(c.id, 15_000)).exitCode).toBe(0)
    expect((await main.logText('hello')).split('hello from hello\n')).toHaveLength(3)
    await main.remove(c.id)
    expect(fs.existsSync(path.join(work, 'csm-main/containers', c.id))).toBe(false)
    // network "host": no network namespace, the host's interfaces
    const h = await run(main, { name: 'hostnet', image, network: 'host', command: ['sh', '-c', 'cat /proc/net/dev'] })
    expect((await main.wait(h.id, 15_000)).exitCode).toBe(0)
    const ifaces = (text: string) => [...text.matchAll(/^\s*([^\s:]+):/gm)].map((m) => m[1]).sort()
    expect(ifaces(await main.logText(h.id))).toEqual(ifaces(fs.readFileSync('/proc/net/dev', 'utf8')))
    await main.remove(h.id)
  })

  it('logs carry the time of each line (tess-logger); a CSM without tess-logger logs as before and refuses times', async () => {
    const t0 = Date.now()
    const c = await run(main, { name: 'stamped', image, command: ['sh', '-c', 'echo one; printf tw; sleep 1; echo o; echo three'] })
    expect((await main.wait(c.id, 15_000)).exitCode).toBe(0)
    const t1 = Date.now()
    expect(await main.logText('stamped')).toBe('one\ntwo\nthree\n')
    const stamped = (await main.readLog('stamped', { timestamps: true })).data.toString().split('\n').filter(Boolean)
    expect(stamped.map((l) => l.replace(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z /, ''))).toEqual(['one', 'two', 'three'])
    const times = stamped.map((l) => Date.parse(`${l.slice(0, 23)}Z`))
    // "two" was begun before the sleep, "three" written after it
    for (const t of times) expect(t).toBeGreaterThanOrEqual(t0 - 1000)
    for (const t of times) expect(t).toBeLessThanOrEqual(t1 + 1000)
    expect(times[1]).toBeLessThanOrEqual(times[0]! + 500)
    expect(times[2]! - times[1]!).toBeGreaterThanOrEqual(500)
    // since a time: from the first line written then on; with --tail within those
    expect((await main.readLog('stamped', { sinceMs: times[1]! + 200 })).data.toString()).toBe('three\n')
    expect((await main.readLog('stamped', { sinceMs: t0 - 1000, tail: 1 })).data.toString()).toBe('three\n')
    expect((await main.readLog('stamped', { sinceMs: t1 + 60_000 })).data.toString()).toBe('')
    // from a byte inside a line: that line's rest has no time
    expect((await main.readLog('stamped', { offset: 2, timestamps: true })).data.toString()).toMatch(/^e\n\S+Z two\n\S+Z three\n$/)
    await main.remove(c.id)

    const plain = await makeCsm('nologger', { cpus: 0.5, memoryBytes: 128 * 1024 * 1024 }, 'runc', { logger: null })
    const p = await run(plain, { name: 'plain', image, command: ['sh', '-c', 'echo as before'] })
    expect((await plain.wait(p.id, 15_000)).exitCode).toBe(0)
    expect(await plain.logText('plain')).toBe('as before\n')
    await expect(plain.readLog('plain', { timestamps: true })).rejects.toMatchObject({ code: 'TESS_E_PRECONDITION', message: expect.stringContaining('container "plain"') })
    await expect(plain.readLog('plain', { sinceMs: t0 })).rejects.toMatchObject({ code: 'TESS_E_PRECONDITION' })
    await plain.remove(p.id)
  })

  it('a log keeps about its last logMaxBytes: the head is given back to the disk, offsets hold, reads start at a whole line', async () => {
    const max = 256 * 1024
    const capped = await makeCsm('capped', { cpus: 0.5, memoryBytes: 128 * 1024 * 1024 }, 'runc', { logMaxBytes: max })
    const t0 = Date.now()
    // 20000 lines of 56 bytes (about 1.1 MiB), one write each: one index record per line too
    const c = await run(capped, { name: 'chatty', image, command: ['sh', '-c', 'i=0; while [ $i -lt 20000 ]; do printf "line %05d %s\\n" $i 0123456789012345678901234567890123456789abcd; i=$((i+1)); done'] })
    expect((await capped.wait(c.id, 60_000)).exitCode).toBe(0)
    const dir = path.join(work, 'csm-capped', 'containers', c.id)
    const log = fs.statSync(path.join(dir, 'container.log'))
    const idx = fs.statSync(path.join(dir, 'container.log.idx'))
    expect(log.size).toBe(20000 * 56)
    // on disk: what is kept (half the cap to all of it) and a block or two, not the whole log
    expect(log.blocks * 512).toBeLessThanOrEqual(max + 8192)
    // the index too, once it has blocks to give back (one record per chunk read: a busy machine merges writes)
    if (idx.size >= 64 * 1024) expect(idx.blocks * 512).toBeLessThan(idx.size / 2)
    const start = Number(fs.readFileSync(path.join(dir, 'container.log.start'), 'utf8'))
    // where the first whole line kept starts
    expect(start).toBeGreaterThan(0)
    expect(start % 56, `${start}: ${JSON.stringify(fs.readFileSync(path.join(dir, "container.log")).subarray(start - 60, start + 20).toString("latin1"))}`).toBe(0)
    expect(log.size - start).toBeLessThanOrEqual(max)
    // everything still held, from the first whole line after the cut, in order, to the last line
    const text = await capped.logText('chatty')
    const lines = text.split('\n').filter(Boolean)
    const first = Number(lines[0]!.slice(5, 10))
    expect(first).toBe(start / 56)
    expect(lines.map((l) => l.slice(0, 10))).toEqual(Array.from({ length: 20000 - first }, (_, k) => `line ${String(first + k).padStart(5, '0')}`))
    // a reader from offset 0 (or one that fell behind) goes on from that line; offsets are the log's own
    const r = await capped.readLog('chatty', { offset: 0, maxBytes: 4096 })
    expect(r.data.toString().slice(0, 10)).toBe(`line ${String(first).padStart(5, '0')}`)
    expect(r.offset).toBe(first * 56 + r.data.length)
    expect(r.sizeBytes).toBe(20000 * 56)
    expect((await capped.readLog('chatty', { tail: 2 })).data.toString().split('\n').filter(Boolean).map((l) => l.slice(0, 10))).toEqual(['line 19998', 'line 19999'])
    // times of what is kept; --since before the run starts at the first line kept
    const stamped = (await capped.readLog('chatty', { offset: 0, timestamps: true, maxBytes: 4096 })).data.toString().split('\n').filter(Boolean)
    for (const l of stamped) expect(Date.parse(`${l.slice(0, 23)}Z`), l).toBeGreaterThanOrEqual(t0 - 1000)
    expect((await capped.readLog('chatty', { sinceMs: t0 - 1000, maxBytes: 4096 })).data.toString().slice(0, 10)).toBe(`line ${String(first).padStart(5, '0')}`)
    await capped.remove(c.id)
  })

  it('confines containers: the default seccomp filter refuses new namespaces, keys and mounts; no CAP_NET_RAW', async () => {
    // unshare -U needs no capability (this kernel allows unprivileged user namespaces): only the
    // filter refuses it. Seccomp: 2 in /proc/self/status is filter mode.
    const c = await run(main, {
      name: 'confined',
      image,
      command: ['sh', '-c', 'busybox unshare -U true; echo "unshare=$?"; busybox unshare -n true; echo "unsharenet=$?"; grep -E "^(Seccomp|CapBnd):" /proc/self/status; echo "plain=$(echo fine)"'],
    })
    const done = await main.wait(c.id, 15_000)
    expect(done.exitCode).toBe(0)
    const log = await main.logText('confined')
    expect(log).toMatch(/^unshare=[1-9]/m)
    expect(log).toMatch(/Operation not permitted/)
    expect(log).toMatch(/^unsharenet=[1-9]/m)
    expect(log).toMatch(/^Seccomp:\s+2$/m)
    const bnd = BigInt(`0x${/^CapBnd:\s+([0-9a-f]+)$/m.exec(log)![1]}`)
    expect(bnd & (1n << 13n)).toBe(0n) // CAP_NET_RAW
    expect(bnd & (1n << 0n)).toBe(1n) // CAP_CHOWN stays
    expect(log).toContain('plain=fine\n')
    await main.remove(c.id)
  })

  it('a user namespace (--userns): root inside is an unprivileged host user, the image reads as its own, no devices can be made', async () => {
    const cmd = 'cat /proc/self/uid_map; echo "uid=$(id -u)"; cat /etc/hello; stat -c "owner=%u" /etc/hello; echo made > /made-here && echo write=ok; '
      + 'busybox mknod /null-node c 1 3; echo "mknod=$?"; ls /sys/kernel >/dev/null && echo sys=ok'
    // the same command without a user namespace: its root may make a device node (CAP_MKNOD)
    const plain = await run(main, { name: 'plain-root', image, command: ['sh', '-c', cmd] })
    expect((await main.wait(plain.id, 15_000)).exitCode).toBe(0)
    const plainLog = await main.logText('plain-root')
    expect(plainLog).toMatch(/^mknod=0$/m)
    expect(plainLog).toMatch(/^\s*0\s+0\s+4294967295$/m)
    await main.remove(plain.id)
    for (const network of ['none', 'host'] as const) {
      const name = `userns-${network}`
      const c = await run(main, { name, image, network, userns: true, command: ['sh', '-c', cmd] })
      expect(c.spec.userns).toEqual({ hostId: 100_000, size: 65_536 })
      const done = await main.wait(c.id, 15_000)
      const log = await main.logText(name)
      expect(done.exitCode, log).toBe(0)
      expect(log).toMatch(/^\s*0\s+100000\s+65536$/m)
      expect(log).toContain('uid=0\n')
      expect(log).toContain('hello from layer 1\n') // the image's files, through idmapped layers
      expect(log).toContain('owner=0\n') // ...owned by the container's own root
      expect(log).toContain('write=ok\n')
      expect(log).toMatch(/^mknod=[1-9]/m)
      expect(log).toContain('sys=ok\n')
      // on the host: what it wrote belongs to 100000; the unpacked layers are untouched (still root's)
      const made = path.join(work, 'csm-main/containers', c.id, 'upper', 'made-here')
      expect(fs.statSync(made).uid).toBe(100_000)
      const rec = (await store.getImage(image))!
      for (const l of rec.layers) expect(fs.statSync(layers.path(l.diffId)).uid).toBe(0)
      // no idmapped mount is left behind by the run (the overlay holds its own references)
      expect((await mountsUnder(path.join(work, 'csm-main/containers', c.id))).filter((m) => m.includes('/idmap/'))).toEqual([])
      await main.remove(c.id)
    }
  })

  it('mounts a rootfs through short lowerdir links when the absolute paths do not fit', async () => {
    const rec = (await store.getImage(image))!
    const lowers = [...rec.layers].reverse().map((l) => layers.path(l.diffId))
    const d = path.join(work, 'short-overlay')
    for (const sub of ['upper', 'work', 'rootfs']) fs.mkdirSync(path.join(d, sub), { recursive: true })
    const plan = overlayMountPlan(lowers, path.join(d, 'upper'), path.join(d, 'work'), d, 80)
    expect(plan.options).toBe('lowerdir=l/0:l/1:l/2,upperdir=upper,workdir=work')
    await mountOverlay(plan, path.join(d, 'rootfs'))
    try {
      expect(fs.readdirSync(path.join(d, 'rootfs/etc')).sort()).toEqual(['added', 'hello'])
      expect(fs.readFileSync(path.join(d, 'rootfs/etc/hello'), 'utf8')).toBe('hello from layer 1\n')
    } finally {
      await unmount(path.join(d, 'rootfs'))
    }
    expect(await mountsUnder(d)).toEqual([])
    fs.rmSync(d, { recursive: true })
  })

  it('mounts a rootfs with mount(2) through the addon when the options are absolute, and names a failure', async () => {
    // npm ci builds the addon here; without it every overlay goes through the mount command (the test above)
    expect(mountAddon.binding?.overlayMount, mountAddon.error).toBeDefined()
    const rec = (await store.getImage(image))!
    const lowers = [...rec.layers].reverse().map((l) => layers.path(l.diffId))
    const d = path.join(work, 'native-overlay')
    for (const sub of ['upper', 'work', 'rootfs']) fs.mkdirSync(path.join(d, sub), { recursive: true })
    const plan = overlayMountPlan(lowers, path.join(d, 'upper'), path.join(d, 'work'), d)
    expect(plan.cwd).toBeUndefined()
    await mountOverlay(plan, path.join(d, 'rootfs'))
    try {
      expect(await mountsUnder(d)).toEqual([path.join(d, 'rootfs')])
      expect(fs.readFileSync(path.join(d, 'rootfs/etc/hello'), 'utf8')).toBe('hello from layer 1\n')
      fs.writeFileSync(path.join(d, 'rootfs/etc/new'), 'x')
      expect(fs.readFileSync(path.join(d, 'upper/etc/new'), 'utf8')).toBe('x')
    } finally {
      await unmount(path.join(d, 'rootfs'))
    }
    expect(await mountsUnder(d)).toEqual([])
    const bad = overlayMountPlan([path.join(d, 'no-such-layer')], path.join(d, 'upper'), path.join(d, 'work'), d)
    await expect(mountOverlay(bad, path.join(d, 'rootfs'))).rejects.toMatchObject({ code: 'TESS_E_IO', message: expect.stringMatching(/cannot mount the rootfs overlay at .*rootfs: mount overlay: No such file or directory/) })
    expect(await mountsUnder(d)).toEqual([])
    fs.rmSync(d, { recursive: true })
  })

  it('pause stops CPU use and resume restarts it', async () => {
    const c = await run(main, { name: 'spinner', image, command: ['sh', '-c', 'while :; do :; done'] })
    try {
      await sleep(300)
      expect((await main.pause(c.id)).status).toBe('paused')
      expect((await main.inspect(c.id)).status).toBe('paused')
      const paused = await cpuOver(async () => (await main.stats(c.id)).cpuUsageNs, 1000)
      expect(paused.usedNs).toBeLessThan(20_000_000)
      expect((await main.resume(c.id)).status).toBe('running')
      const resumed = await cpuOver(async () => (await main.stats(c.id)).cpuUsageNs, 700)
      expect(resumed.cpus).toBeGreaterThan(0.5)
    } finally {
      await main.remove(c.id, { force: true })
    }
  })

  it('a memory cap OOM-kills an allocator and the container is reported OOM-killed (137)', async () => {
    const c = await run(main, {
      name: 'hog', image, memoryBytes: 32 * MiB,
      command: ['sh', '-c', 'busybox head -c 209715200 /dev/zero | busybox tail'],
    })
    const done = await main.wait(c.id, 30_000)
    expect(done.status).toBe('exited')
    expect(done.oomKilled).toBe(true)
    expect(done.exitCode).toBe(137)
    await main.remove(c.id)
  })

  it('a CPU cap of 0.2 cpus throttles a busy loop to about 20% of one CPU', async () => {
    const c = await run(main, { name: 'capped', image, cpus: 0.2, command: ['sh', '-c', 'while :; do :; done'] })
    try {
      await sleep(300)
      const m = await cpuOver(async () => (await main.stats(c.id)).cpuUsageNs, 2000)
      const s = await main.stats(c.id)
      expect(s.cpuLimitCpus).toBeCloseTo(0.2, 5)
      expect(s.cpuThrottledPeriods).toBeGreaterThan(0)
      expect(s.cpuThrottledNs).toBeGreaterThan(0)
      expect(m.cpus).toBeGreaterThan(0.12)
      expect(m.cpus).toBeLessThan(0.3)
    } finally {
      await main.remove(c.id, { force: true })
    }
  })

  it('stop honours the timeout: a container ignoring SIGTERM is killed after it, one that exits on SIGTERM stops at once', async () => {
    const stubborn = await run(main, { name: 'stubborn', image, command: ['sh', '-c', 'trap "echo got TERM" TERM; echo ready; while :; do busybox sleep 1; done'] })
    const polite = await run(main, { name: 'polite', image, command: ['sh', '-c', 'trap "echo bye; exit 0" TERM; echo ready; busybox sleep 1000 & wait'] })
    try {
      await waitForLog(main, stubborn.id, 'ready')
      await waitForLog(main, polite.id, 'ready')
      let t0 = Date.now()
      const s1 = await main.stop(stubborn.id, 1500)
      const stubbornMs = Date.now() - t0
      expect(stubbornMs).toBeGreaterThanOrEqual(1400)
      expect(stubbornMs).toBeLessThan(8000)
      expect(s1.exitCode).toBe(137)
      expect(s1.oomKilled).toBe(false)
      const followed = (async () => {
        const chunks: Buffer[] = []
        for await (const b of main.logs(polite.id, { follow: true })) chunks.push(b)
        return Buffer.concat(chunks).toString()
      })()
      t0 = Date.now()
      const s2 = await main.stop(polite.id, 10_000)
      const politeMs = Date.now() - t0
      expect(politeMs).toBeLessThan(3000)
      expect(s2.exitCode).toBe(0)
      expect(await main.logText(polite.id)).toContain('bye\n')
      // a follower sees the output up to the exit, then ends
      expect(await followed).toBe('ready\nbye\n')
      // stopping an exited container is a no-op
      expect((await main.stop(polite.id, 1000)).exitCode).toBe(0)
    } finally {
      await main.remove(stubborn.id, { force: true })
      await main.remove(polite.id, { force: true })
    }
  })

  it('the CSM quota caps its containers together, and a container cannot ask for more than its CSM', async () => {
    const q = await makeCsm('quota', { cpus: 2, memoryBytes: 1024 * MiB })
    await q.adopt()
    // limits can be updated in place
    const qcg = csms[csms.length - 1]!
    await qcg.setLimits({ cpus: 0.5, memoryBytes: 256 * MiB, pidsMax: 200 })
    expect(await qcg.limits()).toEqual({ cpus: 0.5, memoryBytes: 256 * MiB, pidsMax: 200 })
    const e = await q.run({ image, cpus: 1, command: ['true'] }).catch((x: unknown) => x) as TessError
    expect(e).toBeInstanceOf(TessError)
    expect(e.code).toBe('TESS_E_CAPACITY')
    expect(e.message).toContain('CSM "quota" has 0.5')
    const a = await run(q, { name: 'busy-a', image, command: ['sh', '-c', 'while :; do :; done'] })
    const b = await run(q, { name: 'busy-b', image, command: ['sh', '-c', 'while :; do :; done'] })
    try {
      await sleep(300)
      const total = await cpuOver(async () => (await q.csmStats()).cpuUsageNs, 2000)
      expect(total.cpus).toBeLessThan(0.5 * 1.2)
      expect(total.cpus).toBeGreaterThan(0.3)
      // both got some of it
      expect((await q.stats(a.id)).cpuUsageNs).toBeGreaterThan(50_000_000)
      expect((await q.stats(b.id)).cpuUsageNs).toBeGreaterThan(50_000_000)
      expect((await q.csmStats()).cpuThrottledPeriods).toBeGreaterThan(0)
    } finally {
      await q.remove(a.id, { force: true })
      await q.remove(b.id, { force: true })
    }
  })

  it('a command that is not in the image is refused with a clear error and leaves nothing behind', async () => {
    const containers = path.join(work, 'csm-main/containers')
    const before = fs.readdirSync(containers)
    const e = await main.run({ name: 'broken', image, command: ['nope', '--flag'] }).catch((x: unknown) => x) as TessError
    expect(e).toBeInstanceOf(TessError)
    expect(e.code).toBe('TESS_E_NOT_FOUND')
    expect(e.message).toContain('command "nope" is not an executable file in image')
    expect(e.message).toContain('PATH=')
    expect(fs.readdirSync(containers)).toEqual(before)
    expect(await mountsUnder(containers)).toEqual([])
    expect(await main.runtime.list()).toEqual([])
    expect(fs.readdirSync(host.dir('memory', `${parent}/csm-main`)!, { withFileTypes: true }).filter((d) => d.isDirectory())).toEqual([])
    await expect(main.inspect('broken')).rejects.toMatchObject({ code: 'TESS_E_NOT_FOUND' })
    // a missing image and a path that is not there are refused the same way
    await expect(main.run({ image: `${reg!.host}/test/nothing:v1`, command: ['true'] })).rejects.toMatchObject({ code: 'TESS_E_NOT_FOUND' })
    await expect(main.run({ image, command: ['/bin/missing'] })).rejects.toMatchObject({ code: 'TESS_E_NOT_FOUND' })
    expect(fs.readdirSync(containers)).toEqual(before)
  })

  it('restart policies: on-failure:2 starts a failing container twice more, never after a clean exit; always restarts; a stop holds it off until a start', async () => {
    // as the daemon starts: restarts held until the node's CVM confirms the CSM is placed here
    main.holdRestarts()
    main.superviseRestarts()
    const made: string[] = []
    try {
      const failing = await run(main, { name: 'failing', image, command: ['sh', '-c', 'echo run; exit 3'], restart: { policy: 'on-failure', maxRetries: 2 } })
      const clean = await run(main, { name: 'clean', image, command: ['sh', '-c', 'echo run; exit 0'], restart: { policy: 'on-failure' } })
      const looping = await run(main, { name: 'looping', image, command: ['sh', '-c', 'echo run; busybox sleep 0.2'], restart: { policy: 'always' } })
      made.push(failing.id, clean.id, looping.id)
      // held: they exit and stay exited
      await waitFor('the failing container exited', async () => ((await main.inspect(failing.id)).status === 'exited' ? true : undefined), 30_000, 100)
      await sleep(1500)
      expect((await main.inspect(failing.id)).restartCount ?? 0).toBe(0)
      expect((await main.inspect(looping.id)).restartCount ?? 0).toBe(0)
      expect(main.releaseRestarts()).toBe(true)
      expect(main.releaseRestarts()).toBe(false)
      // the first run and two restarts, then it stays exited with its code
      const f = await waitFor('two restarts of the failing container', async () => {
        const c = await main.inspect(failing.id)
        return c.restartCount === 2 && c.status === 'exited' && c.nextRestartAt === undefined ? c : undefined
      }, 30_000, 100)
      expect(f.exitCode).toBe(3)
      expect((await main.logText(failing.id)).split('run\n')).toHaveLength(4)
      const l = await waitFor('looping restarted three times', async () => {
        const c = await main.inspect(looping.id)
        return (c.restartCount ?? 0) >= 3 ? c : undefined
      }, 30_000, 100)
      expect(l.spec.restart).toEqual({ policy: 'always' })
      // a clean exit under on-failure is final; retries used up stay used up
      await sleep(1500)
      expect((await main.inspect(clean.id)).restartCount ?? 0).toBe(0)
      expect((await main.inspect(clean.id)).exitCode).toBe(0)
      expect((await main.inspect(failing.id)).restartCount).toBe(2)
      // a stop holds the policy off (also a restart waiting its backoff), a start lifts the hold
      const stopped = await main.stop(looping.id, 1000)
      expect(stopped.stoppedByUser).toBe(true)
      const count = (await main.inspect(looping.id)).restartCount
      await sleep(1500)
      const held = await main.inspect(looping.id)
      expect(held.status).toBe('exited')
      expect(held.restartCount).toBe(count)
      await main.start(looping.id)
      expect((await main.inspect(looping.id)).stoppedByUser).toBeUndefined()
      await waitFor('looping restarted after the start', async () => ((await main.inspect(looping.id)).restartCount ?? 0) > (count ?? 0) || undefined, 30_000, 100)
    } finally {
      main.stopSupervising()
      for (const id of made) await main.remove(id, { force: true }).catch(() => undefined)
    }
  })

  it('containers keep running across a manager restart and are adopted; ones that ended meanwhile report their status', async () => {
    const a = await makeCsm('restart', { cpus: 1 })
    await a.adopt()
    const survivor = await run(a, { name: 'survivor', image, command: ['sh', '-c', 'echo started; while :; do busybox sleep 1; done'] })
    const quick = await run(a, { name: 'quick', image, command: ['sh', '-c', 'busybox sleep 1; exit 7'] })
    await waitForLog(a, survivor.id, 'started')
    // a half-made container, as a crash during run() would leave it
    const halfDir = path.join(work, 'csm-restart/containers/0123456789ab')
    fs.mkdirSync(path.join(halfDir, 'bundle/rootfs'), { recursive: true })
    fs.writeFileSync(path.join(halfDir, 'state.json'), JSON.stringify({ version: 1, id: '0123456789ab', name: 'half', status: 'creating', layers: [] }))
    // "restart": the old manager is dropped, the quick one ends while nobody watches
    await sleep(1800)
    managers.splice(managers.indexOf(a), 1)
    const b = new ContainerManager(options('restart', host.csm('restart')))
    managers.push(b)
    const report = await b.adopt()
    expect(report.adopted).toEqual([survivor.id])
    expect(report.exited).toEqual([quick.id])
    expect(report.cleaned).toEqual(['0123456789ab'])
    expect(fs.existsSync(halfDir)).toBe(false)
    const q = await b.inspect('quick')
    expect(q.status).toBe('exited')
    expect(q.exitCode).toBe(7)
    const s = await b.inspect('survivor')
    expect(s.status).toBe('running')
    expect(s.pid).toBe(survivor.pid)
    expect(await isProcessAlive(s.pid!)).toBe(true)
    expect((await b.stats('survivor')).pidsCurrent).toBeGreaterThanOrEqual(1)
    const stopped = await b.stop('survivor', 500)
    expect(stopped.status).toBe('exited')
    expect(stopped.exitCode).toBe(137)
    expect(await isProcessAlive(survivor.pid!)).toBe(false)
    for (const id of [survivor.id, quick.id]) await b.remove(id)
    expect(await b.list()).toEqual([])
  })

  it.skipIf(!hasCrun)('crun is selectable: it runs a container, or says clearly why it cannot on this host', async () => {
    const m = await makeCsm('crun', { cpus: 1 }, 'crun')
    const controllers = await host.hybridUnifiedControllers()
    if (host.mode === 'hybrid' && controllers.length > 0) {
      const e = await m.adopt().catch((x: unknown) => x) as TessError
      expect(e.code).toBe('TESS_E_PRECONDITION')
      expect(e.message).toContain(controllers[0]!)
      expect(e.hint).toContain(`mount -t cgroup -o ${controllers[0]}`)
      return
    }
    await m.adopt()
    const c = await run(m, { name: 'crun-hello', image, command: ['sh', '-c', 'echo hi from crun; exit 3'] })
    const done = await m.wait(c.id, 15_000)
    expect(done.exitCode).toBe(3)
    expect(await m.logText(c.id)).toContain('hi from crun\n')
    await m.remove(c.id)
  })

  it('cleanup leaves no mounts, cgroups, runtime state or processes', async () => {
    for (const m of managers) {
      for (const c of await m.list()) await m.remove(c.id, { force: true })
      expect(await m.runtime.list()).toEqual([])
    }
    for (const c of csms) await c.remove()
    csms.length = 0
    expect(cgroupLeftovers()).toEqual([])
    expect(await mountsUnder(work)).toEqual([])
    for (const pid of shimPids) expect(await isProcessAlive(pid)).toBe(false)
  })
})
