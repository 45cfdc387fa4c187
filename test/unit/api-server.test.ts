import crypto from 'node:crypto'
import fs from 'node:fs'
import https from 'node:https'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import tls from 'node:tls'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { createCa, createNodeCert } from '../../src/bootstrap/pki.js'
import type { Logger } from '../../src/lib/log.js'
import { ApiServer, allowed, bodyObject, type ApiLimits, type AuditEntry } from '../../src/lib/http-server.js'

/**
 * The management API's bounds with real sockets: an oversized body gets a coded 413 the client
 * actually receives, a stranger's body is not read, connections are capped, and a client that
 * never starts TLS or sends its headers slowly is closed.
 */
const quiet: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined }
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-api-'))
const token = 'test-token-0123456789'
let creds: { cert: Buffer, key: Buffer, ca: Buffer }
let server: ApiServer | undefined
let port = 0
let bodiesSeen = 0

beforeAll(() => {
  const ca = createCa(dir, 'api')
  const n = createNodeCert(dir, ca, 'n1', ['127.0.0.1'])
  creds = { cert: fs.readFileSync(n.cert), key: fs.readFileSync(n.key), ca: fs.readFileSync(ca.caCert) }
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))
afterEach(async () => {
  await server?.close()
  server = undefined
})

async function start(limits: Partial<ApiLimits> = {}): Promise<void> {
  server = new ApiServer({ ...creds, token, log: quiet, limits })
  server.route('POST', '/v1/echo', async (req) => {
    bodiesSeen++
    return { got: Object.keys(bodyObject(req.body)).length }
  })
  await server.listen(0, '127.0.0.1')
  port = ((server as unknown as { server: net.Server }).server.address() as net.AddressInfo).port
}

/** one request; resolves with the status and JSON body, or rejects on a reset */
function request(opts: { auth?: boolean, body?: Buffer, chunked?: boolean, paced?: boolean }): Promise<{ status: number, json: any, bodySent: boolean }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { 'content-type': 'application/json' }
    if (opts.auth !== false) headers.authorization = `Bearer ${token}`
    if (!opts.chunked && opts.body) headers['content-length'] = String(opts.body.length)
    const req = https.request({ host: '127.0.0.1', port, method: 'POST', path: '/v1/echo', ca: creds.ca, headers, agent: false }, (res) => {
      let text = ''
      res.on('data', (d) => { text += d })
      const bodySent = sent
      res.on('end', () => { answer = { status: res.statusCode ?? 0, json: JSON.parse(text), bodySent } })
    })
    // settled when the request is over, so that an error after the answer (a reset or a broken
    // pipe while the body is still being sent) fails the call too
    let answer: { status: number, json: any, bodySent: boolean } | undefined
    let sent = !opts.paced
    let failed: Error | undefined
    req.on('error', (e) => { failed = e })
    req.on('close', () => {
      if (failed !== undefined) reject(failed)
      else if (answer !== undefined) resolve(answer)
      else reject(new Error('request closed without an answer'))
    })
    if (opts.chunked && opts.body) {
      // stream in pieces without a length
      const b = opts.body
      let at = 0
      const more = () => {
        while (at < b.length) {
          const ok = req.write(b.subarray(at, at + 65536))
          at += 65536
          if (!ok) return void req.once('drain', more)
        }
        req.end()
      }
      more()
    } else if (opts.paced && opts.body) {
      // with its length, in pieces a little apart: the answer comes while the body is still on its way
      const b = opts.body
      let at = 0
      const next = (): void => {
        if (req.destroyed) return
        if (at >= b.length) return void req.end()
        req.write(b.subarray(at, at + 131072))
        at += 131072
        sent = at >= b.length
        setTimeout(next, 10)
      }
      next()
    } else {
      req.end(opts.body)
    }
  })
}

function closedWithin(sock: net.Socket, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    if (sock.destroyed) return resolve(true)
    const t = setTimeout(() => resolve(false), ms)
    sock.once('close', () => { clearTimeout(t); resolve(true) })
  })
}

describe('management API bounds', () => {
  it('answers a body over the limit with a coded 413, by its length and when streamed', async () => {
    await start({ bodyMaxBytes: 1024 })
    const small = await request({ body: Buffer.from(JSON.stringify({ a: 1 })) })
    expect(small).toMatchObject({ status: 201, json: { got: 1 } })
    const big = Buffer.from(JSON.stringify({ a: 'x'.repeat(4096) }))
    const byLength = await request({ body: big })
    expect(byLength.status).toBe(413)
    expect(byLength.json.error).toMatchObject({ code: 'TESS_E_TOO_LARGE' })
    expect(byLength.json.error.hint).toMatch(/at most 1024 bytes/)
    const streamed = await request({ body: Buffer.from(JSON.stringify({ a: 'y'.repeat(300_000) })), chunked: true })
    expect(streamed.status).toBe(413)
    expect(streamed.json.error.code).toBe('TESS_E_TOO_LARGE')
    // a client still sending megabytes when the answer is sent reads the answer, never a reset
    // (the connection closes once its body is in, not with its bytes unread)
    for (let i = 0; i < 5; i++) {
      const huge = await request({ body: Buffer.alloc(3 * 1024 * 1024, 0x20) })
      expect(huge.status).toBe(413)
    }
    // the same with the body sent in paced pieces: answered only once it is in, then closed
    const paced = await request({ body: Buffer.alloc(2 * 1024 * 1024, 0x20), paced: true })
    expect(paced).toMatchObject({ status: 413, bodySent: true })
    expect(paced.json.error.code).toBe('TESS_E_TOO_LARGE')
  })

  it('refuses a request without the token with 401, without reading its body', async () => {
    await start()
    const before = bodiesSeen
    const r = await request({ auth: false, body: Buffer.alloc(512 * 1024, 0x20) })
    expect(r.status).toBe(401)
    expect(r.json.error.code).toBe('TESS_E_AUTH')
    expect(bodiesSeen).toBe(before)
    const paced = await request({ auth: false, body: Buffer.alloc(2 * 1024 * 1024, 0x20), paced: true })
    expect(paced).toMatchObject({ status: 401, bodySent: true })
    expect(bodiesSeen).toBe(before)
  })

  it('caps connections: one past the cap is closed at once, the others stay', async () => {
    await start({ connectionsMax: 2 })
    const a = net.connect(port, '127.0.0.1')
    const b = net.connect(port, '127.0.0.1')
    await Promise.all([a, b].map((s) => new Promise((r) => s.once('connect', r))))
    const c = net.connect(port, '127.0.0.1')
    expect(await closedWithin(c, 5000)).toBe(true)
    expect(a.destroyed || b.destroyed).toBe(false)
    a.destroy()
    b.destroy()
  })

  it('closes a TCP connection that never starts TLS, and one whose headers never end', async () => {
    await start({ handshakeTimeoutMs: 300, headersTimeoutMs: 300 })
    const silent = net.connect(port, '127.0.0.1')
    expect(await closedWithin(silent, 10_000)).toBe(true)
    const slow = tls.connect({ host: '127.0.0.1', port, ca: creds.ca, servername: 'localhost' })
    await new Promise((r) => slow.once('secureConnect', r))
    slow.write('POST /v1/echo HTTP/1.1\r\nhost: x\r\n')
    const keep = setInterval(() => { if (!slow.destroyed) slow.write('x-slow: 1\r\n') }, 100)
    try {
      expect(await closedWithin(slow, 10_000)).toBe(true)
    } finally {
      clearInterval(keep)
    }
  })
})

describe('principals and roles', () => {
  it('allowed(): ranks viewer < operator < admin; a node may do everything; node routes are for nodes only', () => {
    const u = (role: 'viewer' | 'operator' | 'admin') => ({ kind: 'user' as const, name: 'u', role })
    const node = { kind: 'node' as const, name: 'n1', role: 'node' as const }
    expect(allowed(u('viewer'), 'viewer')).toBe(true)
    expect(allowed(u('viewer'), 'operator')).toBe(false)
    expect(allowed(u('operator'), 'operator')).toBe(true)
    expect(allowed(u('operator'), 'admin')).toBe(false)
    expect(allowed(u('admin'), 'admin')).toBe(true)
    expect(allowed(u('admin'), 'node')).toBe(false)
    expect(allowed(node, 'admin')).toBe(true)
    expect(allowed(node, 'node')).toBe(true)
  })

  it('routes default to viewer for GET and admin otherwise; users by token hash, nodes by certificate; changes are audited', async () => {
    const viewerToken = 'viewer-token-abc'
    const viewerHash = crypto.createHash('sha256').update(viewerToken).digest()
    const audited: AuditEntry[] = []
    server = new ApiServer({
      ...creds, token, log: quiet,
      users: (h) => (h.equals(viewerHash) ? { kind: 'user', name: 'v', role: 'viewer' } : undefined),
      audit: (e) => audited.push(e),
    })
    server.route('GET', '/v1/thing', async (req) => ({ who: req.principal.name }))
    server.route('POST', '/v1/thing', async () => ({ made: true }))
    server.route('POST', '/v1/op', async () => ({ done: true }), 'operator')
    server.route('POST', '/v1/node-only', async (req) => ({ node: req.principal.name }), 'node')
    expect(server.routeRoles()).toEqual([
      { method: 'GET', path: '/v1/thing', role: 'viewer' },
      { method: 'POST', path: '/v1/thing', role: 'admin' },
      { method: 'POST', path: '/v1/op', role: 'operator' },
      { method: 'POST', path: '/v1/node-only', role: 'node' },
    ])
    await server.listen(0, '127.0.0.1')
    port = ((server as unknown as { server: net.Server }).server.address() as net.AddressInfo).port
    const call = (method: string, p: string, auth: { token?: string, cert?: boolean }) => new Promise<{ status: number, json: any }>((resolve, reject) => {
      const headers: Record<string, string> = { 'content-type': 'application/json' }
      if (auth.token !== undefined) headers.authorization = `Bearer ${auth.token}`
      const req = https.request({
        host: '127.0.0.1', port, method, path: p, ca: creds.ca, headers, agent: false,
        ...(auth.cert === true ? { cert: creds.cert, key: creds.key } : {}),
      }, (res) => {
        let text = ''
        res.on('data', (d) => { text += d })
        res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(text) }))
      })
      req.on('error', reject)
      req.end(method === 'GET' ? undefined : '{}')
    })
    expect(await call('GET', '/v1/thing', { token: viewerToken })).toEqual({ status: 200, json: { who: 'v' } })
    const denied = await call('POST', '/v1/thing', { token: viewerToken })
    expect(denied.status).toBe(403)
    expect(denied.json.error.code).toBe('TESS_E_FORBIDDEN')
    expect((await call('POST', '/v1/op', { token: viewerToken })).status).toBe(403)
    expect((await call('POST', '/v1/thing', { token })).status).toBe(201)
    expect((await call('POST', '/v1/node-only', { token })).status).toBe(403)
    expect(await call('POST', '/v1/node-only', { cert: true })).toEqual({ status: 201, json: { node: 'n1' } })
    expect((await call('GET', '/v1/thing', {})).status).toBe(401)
    expect((await call('GET', '/v1/thing', { token: 'nope' })).status).toBe(401)
    // changes by users are audited, refused ones too; reads and node operations are not
    expect(audited.map((e) => [e.who, e.method, e.path, e.status, e.code ?? null])).toEqual([
      ['v', 'POST', '/v1/thing', 403, 'TESS_E_FORBIDDEN'],
      ['v', 'POST', '/v1/op', 403, 'TESS_E_FORBIDDEN'],
      ['root', 'POST', '/v1/thing', 201, null],
      ['root', 'POST', '/v1/node-only', 403, 'TESS_E_FORBIDDEN'],
    ])
  })
})
