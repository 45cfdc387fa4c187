import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { TessError } from '../../src/lib/errors.js'
import { pullImage, type PullOptions, type PullProgress } from '../../src/cvm/images/puller.js'
import { ContentStore } from '../../src/lib/images/store.js'
import { LayerStore } from '../../src/lib/images/unpack.js'
import { imageWorkerNice } from '../../src/lib/images/limits.js'
import { ImageWorker, type WorkerPullRequest } from '../../src/cvm/images/worker.js'
import { repoRoot } from '../helpers/cluster.js'
import { FakeRegistry, buildBusyboxImage, exec, haveCommands, pushImage, sha256, startDockerRegistry, type DockerRegistry } from '../helpers/registry.js'

/**
 * The image layer against the real thing: Debian's docker-registry on 127.0.0.1, an image built
 * with umoci from busybox-static (3 layers: files, a whiteout, an added file) and pushed with
 * skopeo; pulled with pullImage and mounted as a real overlay.
 */
const missing = haveCommands('docker-registry', 'umoci', 'skopeo', 'busybox', 'mount')
const isRoot = process.getuid?.() === 0

describe.skipIf(missing.length > 0 || !isRoot)('images: pull from a real docker-registry', () => {
  let reg: DockerRegistry
  let work: string
  let store: ContentStore
  let layers: LayerStore

  const opts = (extra: Partial<PullOptions> = {}): PullOptions => ({
    store, layers, registries: { [reg.host]: { insecure: true } }, ...extra,
  })

  beforeAll(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-images-it-'))
    reg = await startDockerRegistry()
    const v1 = await buildBusyboxImage(path.join(work, 'build'), 'v1')
    await pushImage(v1, `${reg.host}/test/busybox:v1`)
    const v2 = await buildBusyboxImage(path.join(work, 'build'), 'v2', { name: 'etc/v2', content: 'only in v2\n' })
    await pushImage(v2, `${reg.host}/test/busybox:v2`)
    store = await new ContentStore(path.join(work, 'node/content')).init()
    layers = await new LayerStore(path.join(work, 'node/layers')).init()
  })

  afterAll(async () => {
    await reg?.cleanup()
    if (work !== undefined) fs.rmSync(work, { recursive: true, force: true })
  })

  it('pulls the image, verifies and unpacks its layers and records it', async () => {
    const events: PullProgress[] = []
    const r = await pullImage(`${reg.host}/test/busybox:v1`, opts({ onProgress: (p) => events.push(p) }))
    expect(r.ref).toBe(`${reg.host}/test/busybox:v1`)
    expect(r.layers).toHaveLength(3)
    expect(r.downloadedBytes).toBeGreaterThan(500_000)
    // every blob in the store hashes to its name
    for (const d of [r.digest, r.configDigest, ...r.layers.map((l) => l.digest)]) {
      expect(sha256(fs.readFileSync(store.path(d)))).toBe(d)
    }
    const config = JSON.parse(fs.readFileSync(store.path(r.configDigest), 'utf8'))
    expect(config.rootfs.diff_ids).toEqual(r.layers.map((l) => l.diffId))
    expect(config.architecture).toBe('amd64')
    // layers unpacked: busybox and its links in layer 1, the whiteout in layer 2, the new file in layer 3
    const [l1, l2, l3] = r.layers as [typeof r.layers[0], typeof r.layers[0], typeof r.layers[0]]
    expect(fs.statSync(path.join(l1.path, 'bin/busybox')).mode & 0o777).toBe(0o755)
    expect(fs.readlinkSync(path.join(l1.path, 'bin/sh'))).toBe('busybox')
    expect(fs.readFileSync(path.join(l1.path, 'etc/doomed'), 'utf8')).toBe('deleted by layer 2\n')
    const wh = fs.lstatSync(path.join(l2.path, 'etc/doomed'))
    expect(wh.isCharacterDevice() && wh.rdev === 0).toBe(true)
    expect(fs.readFileSync(path.join(l3.path, 'etc/added'), 'utf8')).toBe('added by layer 3\n')
    // images.json
    const index = JSON.parse(fs.readFileSync(path.join(work, 'node/content/images.json'), 'utf8'))
    const rec = index.images[r.ref]
    expect(rec).toMatchObject({ ref: r.ref, digest: r.digest, configDigest: r.configDigest, sizeBytes: r.sizeBytes, platform: 'linux/amd64' })
    expect(rec.layers.map((l: { digest: string }) => l.digest)).toEqual(r.layers.map((l) => l.digest))
    expect(Date.parse(rec.pulledAt)).toBeGreaterThan(Date.now() - 120_000)
    expect(r.sizeBytes).toBe(fs.statSync(store.path(r.digest)).size + fs.statSync(store.path(r.configDigest)).size + r.layers.reduce((n, l) => n + l.size, 0))
    expect(events.filter((e) => e.phase === 'unpacked')).toHaveLength(3)
  })

  it('the layers as a real overlay: the whiteout hides the file, the image runs busybox', async () => {
    const rec = (await store.getImage(`${reg.host}/test/busybox:v1`))!
    const lower = [...rec.layers].reverse().map((l) => layers.path(l.diffId)).join(':')
    const m = path.join(work, 'merged')
    const upper = path.join(work, 'upper')
    const wd = path.join(work, 'work')
    for (const d of [m, upper, wd]) fs.mkdirSync(d, { recursive: true })
    const mount = await exec('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lower},upperdir=${upper},workdir=${wd}`, m])
    expect(mount.stderr).toBe('')
    expect(mount.code).toBe(0)
    try {
      expect(fs.readdirSync(path.join(m, 'etc')).sort()).toEqual(['added', 'hello'])
      expect(fs.existsSync(path.join(m, 'etc/doomed'))).toBe(false)
      const sh = await exec('chroot', [m, '/bin/sh', '-c', 'cat /etc/hello /etc/added; ls /etc; echo written > /etc/new'])
      expect(sh.code).toBe(0)
      expect(sh.stdout).toBe('hello from layer 1\nadded by layer 3\nadded\nhello\n')
      // writes land in the upper dir, never in the shared layers
      expect(fs.readFileSync(path.join(upper, 'etc/new'), 'utf8')).toBe('written\n')
      for (const l of rec.layers) expect(fs.existsSync(path.join(layers.path(l.diffId), 'etc/new'))).toBe(false)
    } finally {
      expect((await exec('umount', [m])).code).toBe(0)
    }
  })

  it('pulling again downloads no blob and unpacks nothing', async () => {
    const events: PullProgress[] = []
    const r = await pullImage(`${reg.host}/test/busybox:v1`, opts({ onProgress: (p) => events.push(p) }))
    expect(r.downloadedBytes).toBe(0)
    expect(events.filter((e) => e.phase === 'download')).toEqual([])
    expect(events.filter((e) => e.phase === 'blob-done').every((e) => e.phase === 'blob-done' && e.cached)).toBe(true)
    expect(events.filter((e) => e.phase === 'unpacked').every((e) => e.phase === 'unpacked' && e.cached)).toBe(true)
  })

  it('a tampered blob in the registry is rejected with both digests and nothing of it is stored', async () => {
    // v2 shares layers 1-2 with v1; its top layer is its own: tamper that one in the registry's storage
    const man = JSON.parse((await exec('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/test/busybox:v2`])).stdout)
    const topDigest: string = man.layers[2].digest
    const data = reg.blobDataPath(topDigest)
    const orig = fs.readFileSync(data)
    const bad = Buffer.from(orig)
    bad[bad.length - 10]! ^= 0xff
    fs.writeFileSync(data, bad)
    try {
      const e = await pullImage(`${reg.host}/test/busybox:v2`, opts()).catch((x: unknown) => x) as TessError
      expect(e).toBeInstanceOf(TessError)
      expect(e.code).toBe('TESS_E_INVALID')
      expect(e.message).toContain(`expected ${topDigest}`)
      expect(e.message).toContain(`actual ${sha256(bad)}`)
      expect(await store.has(topDigest)).toBe(false)
      expect((await store.listIngests()).map((i) => i.digest)).not.toContain(topDigest)
      expect(await store.getImage(`${reg.host}/test/busybox:v2`)).toBeUndefined()
      expect(await store.has(man.config.digest)).toBe(false)
    } finally {
      fs.writeFileSync(data, orig)
    }
    // repaired registry: the pull succeeds, fetching only the top layer
    const r = await pullImage(`${reg.host}/test/busybox:v2`, opts())
    expect(r.layers[2]!.digest).toBe(topDigest)
    expect(r.downloadedBytes).toBe(r.layers[2]!.size + fs.statSync(store.path(r.configDigest)).size)
    expect(fs.readFileSync(path.join(r.layers[2]!.path, 'etc/v2'), 'utf8')).toBe('only in v2\n')
  })

  it('an unknown tag is TESS_E_NOT_FOUND', async () => {
    const e = await pullImage(`${reg.host}/test/busybox:nope`, opts()).catch((x: unknown) => x) as TessError
    expect(e.code).toBe('TESS_E_NOT_FOUND')
    expect(e.message).toContain(`${reg.host}/test/busybox:nope`)
    const e2 = await pullImage(`${reg.host}/test/nothing:v1`, opts()).catch((x: unknown) => x) as TessError
    expect(e2.code).toBe('TESS_E_NOT_FOUND')
  })

  describe('through the image worker (the child process the CVM pulls in)', () => {
    // the worker's entry is the built one: the suite builds before it runs
    const entry = path.join(repoRoot, 'dist', 'cvm', 'images', 'worker-main.js')
    const niceOf = (pid: number) => {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
      return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16])
    }
    let wstore: ContentStore
    let wlayers: LayerStore
    let worker: ImageWorker
    const req = (ref: string, policy: WorkerPullRequest['policy'] = () => undefined): WorkerPullRequest => ({
      ref, contentRoot: wstore.root, layersRoot: wlayers.root, registries: { [reg.host]: { insecure: true } }, defaultRegistry: 'docker.io', policy,
    })

    beforeAll(async () => {
      wstore = await new ContentStore(path.join(work, 'worker/content')).init()
      wlayers = await new LayerStore(path.join(work, 'worker/layers')).init()
      worker = new ImageWorker({ entry })
    })
    afterAll(async () => {
      await worker?.stop()
    })

    it('pulls in a child process at the worker\'s nice value and leaves images.json to the caller', async () => {
      const asked: string[] = []
      const r = await worker.pull(req(`${reg.host}/test/busybox:v1`, (img) => { asked.push(img.digest); return undefined }))
      expect(asked).toEqual([r.digest])
      expect(worker.pid).toBeGreaterThan(0)
      expect(worker.pid).not.toBe(process.pid)
      expect(niceOf(worker.pid!)).toBe(imageWorkerNice)
      expect(r.layers).toHaveLength(3)
      for (const d of [r.digest, r.configDigest, ...r.layers.map((l) => l.digest)]) {
        expect(sha256(fs.readFileSync(wstore.path(d)))).toBe(d)
      }
      expect(fs.statSync(path.join(r.layers[0]!.path, 'bin/busybox')).mode & 0o777).toBe(0o755)
      // the worker never writes the image index: the caller records what it returns
      expect(await wstore.listImages()).toEqual([])
      await wstore.putImage(r.record)
      expect((await wstore.getImage(`${reg.host}/test/busybox:v1`))?.digest).toBe(r.digest)
    })

    it('tells how far a pull is: its layers and bytes mid-download, and nothing once it ended', async () => {
      const fake = await new FakeRegistry().start()
      try {
        const { first, second, release } = fake.addHeldImage('test/held', 'v1', { secondBytes: 400_000, holdBytes: 1000 })
        const wreq = { ...req(`${fake.host}/test/held:v1`), registries: { [fake.host]: { insecure: true, scheme: 'http' as const } } }
        const pull = worker.pull(wreq)
        // the first layer is whole and unpacked, the second holds 1000 bytes of its download
        let view = worker.progress()
        for (const t0 = Date.now(); !(view[0]?.layersDone === 1 && view[0].bytesDone === first.blob.length + 1000) && Date.now() - t0 < 30_000;) {
          await new Promise((r) => setTimeout(r, 50))
          view = worker.progress()
        }
        expect(view).toEqual([expect.objectContaining({
          ref: `${fake.host}/test/held:v1`, state: 'pulling', layersTotal: 2, layersDone: 1,
          bytesTotal: first.blob.length + second.blob.length, bytesDone: first.blob.length + 1000,
        })])
        expect(Date.parse(view[0]!.startedAt)).toBeGreaterThan(0)
        release()
        const r = await pull
        expect(r.layers).toHaveLength(2)
        expect(worker.progress()).toEqual([])
      } finally {
        await fake.stop()
      }
    })

    it('asks the caller\'s registry rules before downloading: a refusal is TESS_E_FORBIDDEN and stores nothing', async () => {
      const e = await worker.pull(req(`${reg.host}/test/busybox:v2`, () => 'deny-v2')).catch((x: unknown) => x) as TessError
      expect(e).toBeInstanceOf(TessError)
      expect(e.code).toBe('TESS_E_FORBIDDEN')
      expect(e.message).toContain('"deny-v2"')
      const man = JSON.parse((await exec('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/test/busybox:v2`])).stdout)
      expect(await wstore.has(man.layers[2].digest)).toBe(false)
      expect(await wstore.has(man.config.digest)).toBe(false)
    })

    it('a worker that dies fails its pulls with TESS_E_IO, and the next pull starts a new one', async () => {
      const first = worker.pid!
      const e = await worker.pull(req(`${reg.host}/test/busybox:v2`, () => {
        process.kill(first, 'SIGKILL')
        return new Promise<undefined>(() => undefined) // never answers: the worker's death ends the pull
      })).catch((x: unknown) => x) as TessError
      expect(e).toBeInstanceOf(TessError)
      expect(e.code).toBe('TESS_E_IO')
      expect(e.message).toContain('SIGKILL')
      const r = await worker.pull(req(`${reg.host}/test/busybox:v2`))
      expect(worker.pid).not.toBe(first)
      expect(fs.readFileSync(path.join(r.layers[2]!.path, 'etc/v2'), 'utf8')).toBe('only in v2\n')
    })

    it('stop ends the worker and refuses new pulls', async () => {
      const pid = worker.pid!
      await worker.stop()
      expect(() => process.kill(pid, 0)).toThrow()
      const e = await worker.pull(req(`${reg.host}/test/busybox:v1`)).catch((x: unknown) => x) as TessError
      expect(e.code).toBe('TESS_E_UNREACHABLE')
    })
  })

  it('a stopped registry is TESS_E_UNREACHABLE', async () => {
    await reg.stop()
    const e = await pullImage(`${reg.host}/test/busybox:v1`, opts({ clientOptions: { retriesMax: 2, backoffMinMs: 50, backoffMaxMs: 100 } }))
      .catch((x: unknown) => x) as TessError
    expect(e.code).toBe('TESS_E_UNREACHABLE')
    expect(e.message).toContain(reg.host)
  })
})
