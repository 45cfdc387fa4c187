import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { TessError } from '../../src/lib/errors.js'
import { ContentStore, type ImageRecord } from '../../src/lib/images/store.js'
import { sha256 } from '../helpers/registry.js'

describe('content store', () => {
  let dir: string
  let store: ContentStore
  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-store-'))
    store = await new ContentStore(dir).init()
  })
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }))

  it('stores blobs by digest under blobs/sha256/<hex>, lists, sizes and deletes them', async () => {
    const a = Buffer.from('hello')
    const b = Buffer.from('world!!')
    await store.putBytes(a)
    await store.putBytes(b, { digest: sha256(b), size: b.length })
    expect(store.path(sha256(a))).toBe(path.join(dir, 'blobs/sha256', sha256(a).slice(7)))
    expect(fs.readFileSync(store.path(sha256(a)), 'utf8')).toBe('hello')
    expect(await store.has(sha256(a))).toBe(true)
    expect((await store.list()).map((x) => x.digest).sort()).toEqual([sha256(a), sha256(b)].sort())
    expect(await store.totalSizeBytes()).toBe(12)
    expect((await store.readBlob(sha256(b), 100)).toString()).toBe('world!!')
    expect(await store.delete(sha256(a))).toBe(true)
    expect(await store.delete(sha256(a))).toBe(false)
    expect(await store.has(sha256(a))).toBe(false)
    expect(() => store.path('sha256:xyz')).toThrow(TessError)
  })

  it('rejects bytes that do not match the digest, naming both, and stores nothing', async () => {
    const want = sha256(Buffer.from('the real thing'))
    const bad = Buffer.from('the fake thing')
    const err = await store.putBytes(bad, { digest: want, size: bad.length }, 'reg.example/repo').catch((e: unknown) => e)
    expect(err).toBeInstanceOf(TessError)
    expect((err as TessError).code).toBe('TESS_E_INVALID')
    expect((err as TessError).message).toContain(`expected ${want}`)
    expect((err as TessError).message).toContain(`actual ${sha256(bad)}`)
    expect((err as TessError).message).toContain('reg.example/repo')
    expect(await store.has(want)).toBe(false)
    expect(await store.list()).toEqual([])
    expect(fs.readdirSync(path.join(dir, 'ingest'))).toEqual([])
  })

  it('refuses more bytes than the descriptor size as they arrive', async () => {
    const data = Buffer.alloc(100, 1)
    const err = await store.ingest({ digest: sha256(data), size: 50 }, async (ing) => { await ing.write(data) }).catch((e: unknown) => e)
    expect((err as TessError).code).toBe('TESS_E_INVALID')
    expect((err as TessError).message).toMatch(/more than the 50 bytes/)
    expect(await store.has(sha256(data))).toBe(false)
  })

  it('keeps a partial ingest when the source fails and resumes after it', async () => {
    const data = Buffer.alloc(10_000, 7)
    data.write('unique', 0)
    const digest = sha256(data)
    await expect(store.ingest({ digest, size: data.length }, async (ing) => {
      await ing.write(data.subarray(0, 4000))
      throw new Error('connection reset')
    })).rejects.toThrow('connection reset')
    expect(await store.listIngests()).toEqual([{ digest, size: 4000 }])
    let offset = -1
    const info = await store.ingest({ digest, size: data.length }, async (ing) => {
      offset = ing.offset
      await ing.write(data.subarray(ing.offset))
    })
    expect(offset).toBe(4000)
    expect(info).toEqual({ digest, size: data.length })
    expect(fs.readFileSync(store.path(digest)).equals(data)).toBe(true)
    expect(await store.listIngests()).toEqual([])
  })

  it('does not call fill for a blob it already has, and serialises ingests of one digest', async () => {
    const data = Buffer.from('once')
    let fills = 0
    const fill = async (ing: { write(c: Uint8Array): Promise<void> }) => {
      fills++
      await new Promise((r) => setTimeout(r, 20))
      await ing.write(data)
    }
    await Promise.all([store.ingest({ digest: sha256(data) }, fill), store.ingest({ digest: sha256(data) }, fill)])
    expect(fills).toBe(1)
  })

  it('keeps the image index in images.json, written atomically', async () => {
    const rec: ImageRecord = {
      ref: 'r.example/app:v1', digest: sha256(Buffer.from('m')), mediaType: 'application/vnd.oci.image.manifest.v1+json',
      configDigest: sha256(Buffer.from('c')), layers: [{ digest: sha256(Buffer.from('l')), diffId: sha256(Buffer.from('d')), size: 1, mediaType: 'x' }],
      sizeBytes: 3, platform: 'linux/amd64', pulledAt: new Date().toISOString(),
    }
    await Promise.all([store.putImage(rec), store.putImage({ ...rec, ref: 'r.example/app:v2' })])
    expect((await store.listImages()).map((r) => r.ref)).toEqual(['r.example/app:v1', 'r.example/app:v2'])
    expect(await store.getImage('r.example/app:v1')).toEqual(rec)
    const onDisk = JSON.parse(fs.readFileSync(path.join(dir, 'images.json'), 'utf8'))
    expect(onDisk.version).toBe(1)
    expect(Object.keys(onDisk.images)).toHaveLength(2)
    expect(fs.readdirSync(dir).filter((n) => n.includes('.tmp-'))).toEqual([])
    expect(await store.removeImage('r.example/app:v1')).toBe(true)
    expect(await store.removeImage('r.example/app:v1')).toBe(false)
    fs.writeFileSync(path.join(dir, 'images.json'), '{broken')
    await expect(store.listImages()).rejects.toMatchObject({ code: 'TESS_E_IO' })
  })

  it('detects a stored blob that was modified when it is read back', async () => {
    const a = Buffer.from('{"a":1}')
    await store.putBytes(a)
    fs.chmodSync(store.path(sha256(a)), 0o644)
    fs.writeFileSync(store.path(sha256(a)), '{"a":2}')
    await expect(store.readBlob(sha256(a), 100)).rejects.toMatchObject({ code: 'TESS_E_IO' })
  })
})
