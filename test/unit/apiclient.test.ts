import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createCa, createNodeCert } from '../../src/bootstrap/pki.js'
import { ApiClient } from '../../src/lib/apiclient.js'
import type { Logger } from '../../src/lib/log.js'
import { ApiServer } from '../../src/lib/http-server.js'

/**
 * The API client against real sockets on loopback: an endpoint that never completes its TLS
 * handshake (a node whose link is down answers nothing) is passed over for the next one, since
 * nothing was sent to it; an endpoint that took a request and does not answer is not (the request
 * may have been applied there).
 */
const quiet: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined }
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-apiclient-'))
const token = 'test-token-0123456789'
let caPem = ''
let server: ApiServer
let silent: net.Server
const held = new Set<net.Socket>()
let url = ''
let silentUrl = ''
let posts = 0

beforeAll(async () => {
  const ca = createCa(dir, 'apiclient')
  const n = createNodeCert(dir, ca, 'n1', ['127.0.0.1'])
  caPem = fs.readFileSync(ca.caCert, 'utf8')
  server = new ApiServer({ cert: fs.readFileSync(n.cert), key: fs.readFileSync(n.key), ca: fs.readFileSync(ca.caCert), token, log: quiet })
  server.route('GET', '/v1/ping', async () => ({ pong: true }))
  server.route('POST', '/v1/count', async () => ({ posts: ++posts }))
  server.route('POST', '/v1/hang', async () => new Promise(() => undefined))
  await server.listen(0, '127.0.0.1')
  url = `https://127.0.0.1:${((server as unknown as { server: net.Server }).server.address() as net.AddressInfo).port}`
  // accepts connections and never says a word (no TLS handshake)
  silent = net.createServer((c) => {
    held.add(c)
    c.on('error', () => undefined) // the client gave up: nothing to do
    c.on('close', () => held.delete(c))
  })
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r))
  silentUrl = `https://127.0.0.1:${(silent.address() as net.AddressInfo).port}`
})

afterAll(async () => {
  for (const c of held) c.destroy()
  silent?.close()
  await server?.close()
  fs.rmSync(dir, { recursive: true, force: true })
})

const client = (endpoints: string[]) => new ApiClient({ name: 't', endpoints, caCert: caPem, token })

describe('API client endpoints', () => {
  it('passes over an endpoint that never completes its handshake, for reads and changes alike', async () => {
    expect(await client([silentUrl, url]).get('/v1/ping', { timeoutMs: 1000 })).toEqual({ pong: true })
    const before = posts
    expect(await client([silentUrl, url]).post('/v1/count', {}, { timeoutMs: 1000 })).toEqual({ posts: before + 1 })
    expect(posts).toBe(before + 1)
  })

  it('with no endpoint that answers, fails as unreachable once its retries are over', async () => {
    await expect(client([silentUrl]).get('/v1/ping', { timeoutMs: 500, retryMs: 0 })).rejects.toMatchObject({ code: 'TESS_E_UNREACHABLE', message: expect.stringContaining('no TLS connection within') })
  })

  it('does not send a change again to another endpoint once one took it and did not answer', async () => {
    const before = posts
    const c = new ApiClient({ name: 't', endpoints: [url, url], caCert: caPem, token })
    await expect(c.post('/v1/hang', {}, { timeoutMs: 1000 })).rejects.toMatchObject({ code: 'TESS_E_TIMEOUT' })
    expect(posts).toBe(before)
  })
})
