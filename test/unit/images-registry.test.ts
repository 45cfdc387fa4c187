import crypto from 'node:crypto'
import fs from 'node:fs'
import http from 'node:http'
import type net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { TessError } from '../../src/lib/errors.js'
import { RegistryClient, parseChallenges, type RegistryClientOptions } from '../../src/cvm/images/registry.js'
import { ContentStore } from '../../src/lib/images/store.js'
import { FakeRegistry, file, freePort, makeImage, makeLayer, sha256 } from '../helpers/registry.js'

async function rejects(p: Promise<unknown>): Promise<TessError> {
  try {
    await p
  } catch (e) {
    expect(e).toBeInstanceOf(TessError)
    return e as TessError
  }
  throw new Error('expected a rejection')
}

describe('registry client against an in-test registry', () => {
  let reg: FakeRegistry
  let dir: string
  let store: ContentStore
  let sleeps: number[]
  const clients: RegistryClient[] = []
  const bigLayer = makeLayer([file('big', crypto.randomBytes(300_000).toString('base64'))])
  const image = makeImage([bigLayer, makeLayer([file('etc/hostname', 'x\n')])])

  const client = (opts: Partial<RegistryClientOptions> = {}) => {
    const c = new RegistryClient({ registry: reg.host, scheme: 'http', sleep: async (ms) => { sleeps.push(ms) }, ...opts })
    clients.push(c)
    return c
  }

  beforeEach(async () => {
    reg = await new FakeRegistry().start()
    reg.addImage('test/app', 'v1', image)
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-reg-'))
    store = await new ContentStore(dir).init()
    sleeps = []
  })
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close()
    await reg.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it('GETs manifests with the Accept header of every format and resolves tags with HEAD', async () => {
    const c = client()
    const resolved = await c.resolve('test/app', 'v1')
    expect(resolved?.digest).toBe(image.manifestDigest)
    const m = await c.getManifest('test/app', 'v1')
    expect(m.digest).toBe(image.manifestDigest)
    expect(m.document.kind).toBe('manifest')
    const get = reg.requests.find((r) => r.method === 'GET' && r.url === '/v2/test/app/manifests/v1')!
    const accept = String(get.headers.accept)
    for (const t of ['application/vnd.oci.image.manifest.v1+json', 'application/vnd.oci.image.index.v1+json',
      'application/vnd.docker.distribution.manifest.v2+json', 'application/vnd.docker.distribution.manifest.list.v2+json']) {
      expect(accept).toContain(t)
    }
    // by digest: verified against it
    const byDigest = await c.getManifest('test/app', image.manifestDigest, image.manifestDigest)
    expect(byDigest.bytes.equals(image.manifest)).toBe(true)
  })

  it('maps an unknown tag or repository to TESS_E_NOT_FOUND naming the image', async () => {
    const e = await rejects(client().getManifest('test/app', 'nope'))
    expect(e.code).toBe('TESS_E_NOT_FOUND')
    expect(e.message).toContain(`${reg.host}/test/app:nope`)
    expect(e.message).toContain('MANIFEST_UNKNOWN')
    const e2 = await rejects(client().getManifest('test/other', 'v1'))
    expect(e2.code).toBe('TESS_E_NOT_FOUND')
    expect(e2.message).toMatch(/no such repository/)
  })

  it('maps a closed port to TESS_E_UNREACHABLE after bounded retries', async () => {
    const port = await freePort()
    const c = new RegistryClient({ registry: `127.0.0.1:${port}`, scheme: 'http', retriesMax: 2, sleep: async (ms) => { sleeps.push(ms) } })
    clients.push(c)
    const e = await rejects(c.getManifest('test/app', 'v1'))
    expect(e.code).toBe('TESS_E_UNREACHABLE')
    expect(e.message).toContain(`127.0.0.1:${port}`)
    expect(e.message).toContain('ECONNREFUSED')
    expect(sleeps).toHaveLength(2)
  })

  it('retries 5xx with bounded exponential backoff, then succeeds', async () => {
    reg.failNext = 3
    reg.failStatus = 503
    const c = client({ backoffMinMs: 100, backoffMaxMs: 250, random: () => 1 })
    const m = await c.getManifest('test/app', 'v1')
    expect(m.digest).toBe(image.manifestDigest)
    expect(sleeps).toEqual([100, 200, 250])
    // too many failures: UNREACHABLE with the status
    reg.failNext = 100
    const e = await rejects(client({ retriesMax: 2 }).getManifest('test/app', 'v1'))
    expect(e.code).toBe('TESS_E_UNREACHABLE')
    expect(e.message).toMatch(/answered 503/)
  })

  it('retries 5xx on blobs too', async () => {
    reg.failNext = 2
    reg.failPath = /\/blobs\//
    const layer = image.layers[1]!
    const got = await client().fetchBlob('test/app', { digest: layer.digest, size: layer.blob.length }, store)
    expect(got.digest).toBe(layer.digest)
    expect(reg.blobGets(layer.digest)).toHaveLength(3)
  })

  describe('auth', () => {
    it('follows a Bearer challenge anonymously and caches the token', async () => {
      reg.auth = { kind: 'bearer' }
      const c = client()
      await c.getManifest('test/app', 'v1')
      await c.resolve('test/app', 'v1')
      await c.getManifest('test/app', image.manifestDigest)
      expect(reg.tokensIssued).toBe(1)
      const tokenReq = reg.requests.find((r) => r.url.startsWith('/token'))!
      const u = new URL(tokenReq.url, 'http://x')
      expect(u.searchParams.get('service')).toBe('fake-registry')
      expect(u.searchParams.get('scope')).toBe('repository:test/app:pull')
      expect(tokenReq.headers.authorization).toBeUndefined()
    })

    it('sends Basic credentials to the token server and refuses wrong ones with TESS_E_AUTH', async () => {
      reg.auth = { kind: 'bearer', username: 'alice', password: 's3cret' }
      await client({ credentials: { username: 'alice', password: 's3cret' } }).getManifest('test/app', 'v1')
      expect(reg.requests.find((r) => r.url.startsWith('/token'))?.headers.authorization).toBe(`Basic ${Buffer.from('alice:s3cret').toString('base64')}`)
      const e = await rejects(client({ credentials: { username: 'alice', password: 'wrong' } }).getManifest('test/app', 'v1'))
      expect(e.code).toBe('TESS_E_AUTH')
      expect(e.message).toContain('"alice"')
      expect(e.message).toContain(reg.host)
      const anon = await rejects(client().getManifest('test/app', 'v1'))
      expect(anon.code).toBe('TESS_E_AUTH')
      expect(anon.hint).toMatch(/configure credentials/)
    })

    it('renews an expired token', async () => {
      reg.auth = { kind: 'bearer', expiresIn: 60 }
      let now = 1_000_000
      const c = client({ now: () => now })
      await c.getManifest('test/app', 'v1')
      now += 49_000 // renewed 10 s before the announced expiry
      await c.getManifest('test/app', 'v1')
      expect(reg.tokensIssued).toBe(1)
      now += 2_000
      await c.getManifest('test/app', 'v1')
      expect(reg.tokensIssued).toBe(2)
    })

    it('uses Basic auth when challenged, and TESS_E_AUTH without or with wrong credentials', async () => {
      reg.auth = { kind: 'basic', username: 'bob', password: 'pw' }
      const m = await client({ credentials: { username: 'bob', password: 'pw' } }).getManifest('test/app', 'v1')
      expect(m.digest).toBe(image.manifestDigest)
      const none = await rejects(client().getManifest('test/app', 'v1'))
      expect(none.code).toBe('TESS_E_AUTH')
      expect(none.message).toMatch(/none is configured/)
      const wrong = await rejects(client({ credentials: { username: 'bob', password: 'x' } }).getManifest('test/app', 'v1'))
      expect(wrong.code).toBe('TESS_E_AUTH')
    })

    it('parses WWW-Authenticate challenges', () => {
      expect(parseChallenges(['Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"'])).toEqual([
        { scheme: 'Bearer', params: { realm: 'https://auth.example/token', service: 'registry.example', scope: 'repository:a/b:pull,push' } },
      ])
      expect(parseChallenges(['Basic realm="x", Bearer realm="y"'])).toEqual([
        { scheme: 'Basic', params: { realm: 'x' } }, { scheme: 'Bearer', params: { realm: 'y' } },
      ])
      expect(parseChallenges(['Bearer realm=tok, error="insufficient_scope"'])[0]?.params).toEqual({ realm: 'tok', error: 'insufficient_scope' })
    })

    it('maps 403 to TESS_E_FORBIDDEN', async () => {
      const server = http.createServer((_req, res) => { res.writeHead(403, { 'content-type': 'application/json' }); res.end('{"errors":[{"code":"DENIED"}]}') })
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
      try {
        const c = new RegistryClient({ registry: `127.0.0.1:${(server.address() as net.AddressInfo).port}`, scheme: 'http' })
        clients.push(c)
        const e = await rejects(c.getManifest('test/app', 'v1'))
        expect(e.code).toBe('TESS_E_FORBIDDEN')
        expect(e.message).toContain('DENIED')
      } finally {
        server.closeAllConnections()
        server.close()
      }
    })
  })

  it('rejects a tampered blob with the expected and actual digests and stores nothing', async () => {
    const layer = image.layers[1]!
    const bad = Buffer.from(layer.blob)
    bad[bad.length - 5]! ^= 0xff
    reg.tampered.set(layer.digest, bad)
    const e = await rejects(client().fetchBlob('test/app', { digest: layer.digest, size: layer.blob.length }, store))
    expect(e.code).toBe('TESS_E_INVALID')
    expect(e.message).toContain(`expected ${layer.digest}`)
    expect(e.message).toContain(`actual ${sha256(bad)}`)
    expect(await store.has(layer.digest)).toBe(false)
    expect(await store.listIngests()).toEqual([])
    expect(await store.list()).toEqual([])
  })

  it('resumes an interrupted blob download with a Range request', async () => {
    const layer = bigLayer
    reg.cutBlobAfter.set(layer.digest, 100_000)
    const got = await client().fetchBlob('test/app', { digest: layer.digest, size: layer.blob.length }, store)
    expect(got.digest).toBe(layer.digest)
    const gets = reg.blobGets(layer.digest)
    expect(gets).toHaveLength(2)
    expect(gets[0]!.headers.range).toBeUndefined()
    expect(gets[1]!.headers.range).toMatch(/^bytes=\d+-$/)
    const from = Number(/bytes=(\d+)-/.exec(String(gets[1]!.headers.range))![1])
    expect(from).toBeGreaterThan(0)
    expect(from).toBeLessThanOrEqual(100_000)
    expect(got.downloadedBytes).toBe(layer.blob.length)
    expect(fs.readFileSync(store.path(layer.digest)).equals(layer.blob)).toBe(true)
  })

  it('keeps a partial download across runs and resumes it in the next one', async () => {
    const layer = bigLayer
    reg.cutBlobAfter.set(layer.digest, 120_000)
    const e = await rejects(client({ retriesMax: 0 }).fetchBlob('test/app', { digest: layer.digest, size: layer.blob.length }, store))
    expect(e.code).toBe('TESS_E_UNREACHABLE')
    const partial = await store.listIngests()
    expect(partial).toHaveLength(1)
    expect(partial[0]!.digest).toBe(layer.digest)
    expect(partial[0]!.size).toBeGreaterThan(0)
    const got = await client().fetchBlob('test/app', { digest: layer.digest, size: layer.blob.length }, store)
    expect(got.resumedFrom).toBe(partial[0]!.size)
    expect(got.downloadedBytes).toBe(layer.blob.length - partial[0]!.size)
    expect(reg.blobGets(layer.digest)[1]!.headers.range).toBe(`bytes=${partial[0]!.size}-`)
    expect(await store.listIngests()).toEqual([])
  })

  it('starts over when the registry ignores Range', async () => {
    const layer = bigLayer
    reg.rangeSupport = false
    reg.cutBlobAfter.set(layer.digest, 50_000)
    const got = await client().fetchBlob('test/app', { digest: layer.digest, size: layer.blob.length }, store)
    expect(got.digest).toBe(layer.digest)
    expect(fs.readFileSync(store.path(layer.digest)).equals(layer.blob)).toBe(true)
  })

  it('does not download a blob already stored', async () => {
    const layer = image.layers[1]!
    await client().fetchBlob('test/app', { digest: layer.digest, size: layer.blob.length }, store)
    const again = await client().fetchBlob('test/app', { digest: layer.digest, size: layer.blob.length }, store)
    expect(again.cached).toBe(true)
    expect(again.downloadedBytes).toBe(0)
    expect(reg.blobGets(layer.digest)).toHaveLength(1)
  })

  it('follows redirects for blobs without sending credentials to another origin', async () => {
    const layer = image.layers[1]!
    const seen: http.IncomingHttpHeaders[] = []
    const storage = http.createServer((req, res) => {
      seen.push(req.headers)
      res.writeHead(200, { 'content-length': layer.blob.length })
      res.end(layer.blob)
    })
    await new Promise<void>((r) => storage.listen(0, '127.0.0.1', r))
    const storagePort = (storage.address() as net.AddressInfo).port
    const front = http.createServer((req, res) => {
      if (req.headers.authorization !== 'Basic ' + Buffer.from('u:p').toString('base64')) {
        res.writeHead(401, { 'www-authenticate': 'Basic realm="x"' })
        return void res.end()
      }
      res.writeHead(307, { location: `http://127.0.0.1:${storagePort}/bucket/blob?sig=1` })
      res.end()
    })
    await new Promise<void>((r) => front.listen(0, '127.0.0.1', r))
    try {
      const c = new RegistryClient({ registry: `127.0.0.1:${(front.address() as net.AddressInfo).port}`, scheme: 'http', credentials: { username: 'u', password: 'p' } })
      clients.push(c)
      const got = await c.fetchBlob('test/app', { digest: layer.digest, size: layer.blob.length }, store)
      expect(got.digest).toBe(layer.digest)
      expect(seen).toHaveLength(1)
      expect(seen[0]!.authorization).toBeUndefined()
    } finally {
      for (const s of [front, storage]) {
        s.closeAllConnections()
        s.close()
      }
    }
  })

  it('insecure without a scheme: falls back from HTTPS to plain HTTP', async () => {
    const c = new RegistryClient({ registry: reg.host, insecure: true })
    clients.push(c)
    const m = await c.getManifest('test/app', 'v1')
    expect(m.digest).toBe(image.manifestDigest)
  })

  it('secure by default: a plain-HTTP registry is unreachable over HTTPS', async () => {
    const c = new RegistryClient({ registry: reg.host, retriesMax: 0 })
    clients.push(c)
    const e = await rejects(c.getManifest('test/app', 'v1'))
    expect(e.code).toBe('TESS_E_UNREACHABLE')
    expect(e.hint).toMatch(/insecure/)
  })
})
