import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { TessError } from '../../src/lib/errors.js'
import { pullImage, type PullOptions, type PullProgress } from '../../src/cvm/images/puller.js'
import { PullTally } from '../../src/cvm/images/progress.js'
import { ContentStore } from '../../src/lib/images/store.js'
import { LayerStore } from '../../src/lib/images/unpack.js'
import { FakeRegistry, file, makeImage, makeIndex, makeLayer, sha256 } from '../helpers/registry.js'

const isRoot = process.getuid?.() === 0

describe.skipIf(!isRoot)('pullImage against an in-test registry', () => {
  let reg: FakeRegistry
  let dir: string
  let store: ContentStore
  let layers: LayerStore
  let events: PullProgress[]

  const base = makeLayer([{ name: 'etc/', type: 'dir' }, file('etc/os-release', 'ID=test\n'), file('etc/doomed', 'x'),
    file('big', crypto.randomBytes(200_000).toString('base64'))])
  const top = makeLayer([file('etc/.wh.doomed', ''), file('etc/added', 'y')])
  const amd64 = makeImage([base, top])
  const arm64 = makeImage([makeLayer([file('arm', 'arm64 only')])], { architecture: 'arm64' })

  const opts = (extra: Partial<PullOptions> = {}): PullOptions => ({
    store, layers,
    registries: { [reg.host]: { insecure: true, scheme: 'http' } },
    clientOptions: { sleep: async () => undefined },
    onProgress: (p) => events.push(p),
    ...extra,
  })

  beforeEach(async () => {
    reg = await new FakeRegistry().start()
    reg.addImage('test/app', 'v1', amd64)
    const index = makeIndex([{ image: arm64, os: 'linux', architecture: 'arm64' }, { image: amd64, os: 'linux', architecture: 'amd64' }])
    reg.addIndex('test/multi', 'latest', index, [arm64, amd64])
    const armOnly = makeIndex([{ image: arm64, os: 'linux', architecture: 'arm64', variant: 'v8' }], { docker: true })
    reg.addIndex('test/armonly', 'latest', armOnly, [arm64])
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-pull-'))
    store = await new ContentStore(path.join(dir, 'content')).init()
    layers = await new LayerStore(path.join(dir, 'layers')).init()
    events = []
  })
  afterEach(async () => {
    await reg.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it('pulls, verifies, stores, unpacks and records an image', async () => {
    const r = await pullImage(`${reg.host}/test/app:v1`, opts())
    expect(r.ref).toBe(`${reg.host}/test/app:v1`)
    expect(r.digest).toBe(amd64.manifestDigest)
    expect(r.configDigest).toBe(amd64.configDigest)
    expect(r.layers.map((l) => [l.digest, l.diffId, l.size])).toEqual([[base.digest, base.diffId, base.blob.length], [top.digest, top.diffId, top.blob.length]])
    expect(r.sizeBytes).toBe(amd64.manifest.length + amd64.config.length + base.blob.length + top.blob.length)
    for (const d of [amd64.manifestDigest, amd64.configDigest, base.digest, top.digest]) expect(await store.has(d)).toBe(true)
    expect(fs.readFileSync(path.join(r.layers[0]!.path, 'etc/os-release'), 'utf8')).toBe('ID=test\n')
    expect(fs.lstatSync(path.join(r.layers[1]!.path, 'etc/doomed')).isCharacterDevice()).toBe(true)
    const rec = await store.getImage(r.ref)
    expect(rec).toMatchObject({ ref: r.ref, digest: r.digest, configDigest: r.configDigest, sizeBytes: r.sizeBytes, platform: 'linux/amd64' })
    expect(rec?.layers.map((l) => l.digest)).toEqual([base.digest, top.digest])
    expect(events.at(-1)).toEqual({ phase: 'done', ref: r.ref, digest: r.digest })
  })

  it('its progress events add up to the layers and compressed bytes of the image', async () => {
    const tally = new PullTally()
    const seen: Array<ReturnType<PullTally['view']>> = []
    await pullImage(`${reg.host}/test/app:v1`, opts({ onProgress: (p) => { tally.add(p); seen.push(tally.view()) } }))
    const total = base.blob.length + top.blob.length
    expect(tally.view()).toEqual({ layersTotal: 2, layersDone: 2, bytesTotal: total, bytesDone: total })
    // before the manifest is read nothing is known; the counts only grow, and never pass the totals
    expect(seen[0]).toMatchObject({ layersTotal: null, bytesTotal: null, layersDone: 0 })
    for (let i = 1; i < seen.length; i++) {
      expect(seen[i]!.layersDone).toBeGreaterThanOrEqual(seen[i - 1]!.layersDone)
      expect(seen[i]!.bytesDone).toBeGreaterThanOrEqual(seen[i - 1]!.bytesDone)
      expect(seen[i]!.bytesDone).toBeLessThanOrEqual(total)
    }
    // pulled again, every layer is found stored: it counts as done, bytes included
    const again = new PullTally()
    await pullImage(`${reg.host}/test/app:v1`, opts({ onProgress: (p) => again.add(p) }))
    expect(again.view()).toEqual({ layersTotal: 2, layersDone: 2, bytesTotal: total, bytesDone: total })
  })

  it('resolves a name without a registry against the default registry', async () => {
    const r = await pullImage('test/app:v1', opts({ defaultRegistry: reg.host }))
    expect(r.ref).toBe(`${reg.host}/test/app:v1`)
  })

  it('pulling again downloads no blob', async () => {
    await pullImage(`${reg.host}/test/app:v1`, opts())
    const before = reg.requests.filter((q) => q.url.includes('/blobs/')).length
    events = []
    const r = await pullImage(`${reg.host}/test/app:v1`, opts())
    expect(r.downloadedBytes).toBe(0)
    expect(reg.requests.filter((q) => q.url.includes('/blobs/')).length).toBe(before)
    expect(events.filter((e) => e.phase === 'download')).toEqual([])
    expect(events.filter((e) => e.phase === 'unpacked').every((e) => e.phase === 'unpacked' && e.cached)).toBe(true)
  })

  it('picks linux/amd64 from an index', async () => {
    const r = await pullImage(`${reg.host}/test/multi:latest`, opts())
    expect(r.digest).toBe(amd64.manifestDigest)
    expect(r.indexDigest).toBeDefined()
    expect(reg.blobGets(arm64.layers[0]!.digest)).toEqual([])
    expect((await store.getImage(r.ref))?.indexDigest).toBe(r.indexDigest)
    expect(await store.has(r.indexDigest!)).toBe(true)
  })

  it('refuses an index without linux/amd64 with TESS_E_NOT_FOUND listing what it has', async () => {
    const e = await pullImage(`${reg.host}/test/armonly:latest`, opts()).catch((x: unknown) => x) as TessError
    expect(e.code).toBe('TESS_E_NOT_FOUND')
    expect(e.message).toContain('linux/amd64')
    expect(e.message).toContain('linux/arm64/v8')
  })

  it('asks the policy before downloading any blob', async () => {
    const seen: string[] = []
    const e = await pullImage(`${reg.host}/test/app:v1`, opts({
      policy: (img) => {
        seen.push(`${img.registry}/${img.repository}@${img.digest}`)
        return img.repository.startsWith('test/') ? 'deny-test-repos' : undefined
      },
    })).catch((x: unknown) => x) as TessError
    expect(e.code).toBe('TESS_E_FORBIDDEN')
    expect(e.message).toContain('"deny-test-repos"')
    expect(e.message).toContain(`${reg.host}/test/app:v1`)
    expect(seen).toEqual([`${reg.host}/test/app@${amd64.manifestDigest}`])
    expect(reg.requests.filter((q) => q.url.includes('/blobs/'))).toEqual([])
    expect(await store.list()).toEqual([])
    expect(await store.listImages()).toEqual([])
  })

  it('a tampered layer fails the pull with both digests; it is not stored and the image is not recorded', async () => {
    const bad = Buffer.from(top.blob)
    bad[20]! ^= 0x55
    reg.tampered.set(top.digest, bad)
    const e = await pullImage(`${reg.host}/test/app:v1`, opts()).catch((x: unknown) => x) as TessError
    expect(e.code).toBe('TESS_E_INVALID')
    expect(e.message).toContain(`expected ${top.digest}`)
    expect(e.message).toContain(`actual ${sha256(bad)}`)
    expect(await store.has(top.digest)).toBe(false)
    expect(await store.has(amd64.manifestDigest)).toBe(false)
    expect(await store.has(amd64.configDigest)).toBe(false)
    expect(await store.listImages()).toEqual([])
    expect(await layers.has(top.diffId)).toBe(false)
  })

  it('a pull interrupted mid-layer resumes in the next try from what was stored and kept', async () => {
    reg.cutBlobAfter.set(base.digest, 100_000)
    const first = await pullImage(`${reg.host}/test/app:v1`, opts({ clientOptions: { retriesMax: 0, sleep: async () => undefined }, layerConcurrency: 1 }))
      .catch((x: unknown) => x) as TessError
    expect(first.code).toBe('TESS_E_UNREACHABLE')
    const partial = await store.listIngests()
    expect(partial.map((p) => p.digest)).toEqual([base.digest])
    expect(await store.listImages()).toEqual([])
    events = []
    const r = await pullImage(`${reg.host}/test/app:v1`, opts())
    const done = events.find((ev) => ev.phase === 'blob-done' && ev.digest === base.digest)
    expect(done).toMatchObject({ resumedFrom: partial[0]!.size, downloadedBytes: base.blob.length - partial[0]!.size })
    expect(reg.blobGets(base.digest).at(-1)?.headers.range).toBe(`bytes=${partial[0]!.size}-`)
    expect(r.layers).toHaveLength(2)
    expect(await store.listIngests()).toEqual([])
  })

  it('an unknown tag is TESS_E_NOT_FOUND', async () => {
    const e = await pullImage(`${reg.host}/test/app:nope`, opts()).catch((x: unknown) => x) as TessError
    expect(e.code).toBe('TESS_E_NOT_FOUND')
    expect(e.message).toContain(`${reg.host}/test/app:nope`)
  })

  it('an image whose config lists other diff_ids is refused at unpack', async () => {
    const liar = makeImage([base])
    const cfg = JSON.parse(liar.config.toString())
    cfg.rootfs.diff_ids = [top.diffId]
    const config = Buffer.from(JSON.stringify(cfg))
    const man = JSON.parse(liar.manifest.toString())
    man.config.digest = sha256(config)
    man.config.size = config.length
    const manifest = Buffer.from(JSON.stringify(man))
    reg.addImage('test/liar', 'v1', { ...liar, config, configDigest: sha256(config), manifest, manifestDigest: sha256(manifest) })
    const e = await pullImage(`${reg.host}/test/liar:v1`, opts()).catch((x: unknown) => x) as TessError
    expect(e.code).toBe('TESS_E_INVALID')
    expect(e.message).toContain(`expected ${top.diffId}`)
    expect(e.message).toContain(`actual ${base.diffId}`)
    expect(await store.listImages()).toEqual([])
  })

  it('pulls by digest, verifying the manifest against it', async () => {
    const r = await pullImage(`${reg.host}/test/app@${amd64.manifestDigest}`, opts())
    expect(r.ref).toBe(`${reg.host}/test/app@${amd64.manifestDigest}`)
    expect(r.digest).toBe(amd64.manifestDigest)
  })
})
