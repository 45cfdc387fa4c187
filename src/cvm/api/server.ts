import crypto from 'node:crypto'
import fs from 'node:fs'
import http, { type IncomingMessage, type ServerResponse } from 'node:http'
import https from 'node:https'
import { TessError, errorMessage } from '../../common/errors.js'
import { apiBodyMaxBytes, apiConnectionsMax, apiHandshakeTimeoutMs, apiHeadersTimeoutMs, apiKeepAliveTimeoutMs, apiRefusedBodyDrainMaxBytes, apiRequestTimeoutMs, apiTimeoutCheckIntervalMs } from '../../common/limits.js'
import type { Logger } from '../../common/log.js'

export interface ApiRequest {
  method: string
  path: string
  params: Record<string, string>
  query: URLSearchParams
  body: unknown
}

export type Handler = (req: ApiRequest) => Promise<unknown>

/** Bounds of the API server (defaults in common/limits.ts; tests pass small ones) */
export interface ApiLimits {
  bodyMaxBytes: number
  connectionsMax: number
  handshakeTimeoutMs: number
  headersTimeoutMs: number
  keepAliveTimeoutMs: number
}

const defaultLimits: ApiLimits = {
  bodyMaxBytes: apiBodyMaxBytes,
  connectionsMax: apiConnectionsMax,
  handshakeTimeoutMs: apiHandshakeTimeoutMs,
  headersTimeoutMs: apiHeadersTimeoutMs,
  keepAliveTimeoutMs: apiKeepAliveTimeoutMs,
}

interface Route {
  method: string
  pattern: RegExp
  names: string[]
  handler: Handler
}

/**
 * The management API: HTTPS with a certificate from the cluster CA; every request carries
 * `Authorization: Bearer <token>`. Bodies are JSON, bounded in size; every failure is a JSON error
 * body `{"error": {code, message, hint}}` with the status of its code. A handler's bug answers 500
 * and is logged; it never takes the daemon down.
 */
export class ApiServer {
  private readonly routes: Route[] = []
  private server: http.Server | undefined
  private readonly tokenHash: Buffer | undefined
  private readonly limits: ApiLimits

  /**
   * With `token`: HTTPS, and every request must carry the token. Without: plain HTTP for a unix
   * socket only (listenUnix), where the socket file's mode (0600 in a 0700 directory) is the
   * authentication: only root on the node reaches it.
   */
  constructor(private readonly opts: ({ cert: Buffer, key: Buffer, ca: Buffer, token: string, log: Logger } | { log: Logger }) & { limits?: Partial<ApiLimits> }) {
    this.tokenHash = 'token' in opts ? crypto.createHash('sha256').update(opts.token).digest() : undefined
    this.limits = { ...defaultLimits, ...opts.limits }
  }

  route(method: string, path: string, handler: Handler): this {
    const names: string[] = []
    const pattern = new RegExp('^' + path.replace(/:([a-zA-Z]+)/g, (_m, n: string) => { names.push(n); return '([^/]+)' }) + '$')
    this.routes.push({ method, pattern, names, handler })
    return this
  }

  listen(port: number, host: string): Promise<void> {
    const o = this.opts
    if (!('token' in o)) throw new Error('a TCP listener needs TLS and a token')
    const server = https.createServer({ cert: o.cert, key: o.key, ca: o.ca, handshakeTimeout: this.limits.handshakeTimeoutMs, ...this.httpTimeouts() }, (req, res) => {
      void this.handle(req, res)
    })
    server.on('tlsClientError', () => { /* a bad TLS client: drop it */ })
    return this.start(server, (s, cb) => s.listen(port, host, cb))
  }

  /** Listen on a unix socket (made mode 0600; a stale socket file is replaced). */
  async listenUnix(socketPath: string): Promise<void> {
    if ('token' in this.opts) throw new Error('a unix socket listener is for the token-less API')
    fs.rmSync(socketPath, { force: true })
    const server = http.createServer({ ...this.httpTimeouts() }, (req, res) => {
      void this.handle(req, res)
    })
    const old = process.umask(0o177)
    try {
      await this.start(server, (s, cb) => s.listen(socketPath, cb))
    } finally {
      process.umask(old)
    }
    fs.chmodSync(socketPath, 0o600)
  }

  private httpTimeouts(): http.ServerOptions {
    return {
      requestTimeout: Math.max(apiRequestTimeoutMs, this.limits.headersTimeoutMs),
      headersTimeout: this.limits.headersTimeoutMs,
      keepAliveTimeout: this.limits.keepAliveTimeoutMs,
      connectionsCheckingInterval: Math.min(apiTimeoutCheckIntervalMs, this.limits.headersTimeoutMs),
    }
  }

  private start(server: http.Server, listen: (s: http.Server, cb: () => void) => void): Promise<void> {
    this.server = server
    // beyond the cap, new connections are closed at once (Node counts connections still in their TLS handshake)
    server.maxConnections = this.limits.connectionsMax
    server.on('clientError', (_e, socket) => socket.destroy())
    return new Promise((resolve, reject) => {
      server.once('error', reject)
      listen(server, () => resolve())
    })
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      if (!this.server) return resolve()
      this.server.close(() => resolve())
      this.server.closeAllConnections()
    })
  }

  private authorized(req: IncomingMessage): boolean {
    if (this.tokenHash === undefined) return true
    const h = req.headers.authorization
    if (!h || !h.startsWith('Bearer ')) return false
    const given = crypto.createHash('sha256').update(h.slice(7).trim()).digest()
    return crypto.timingSafeEqual(given, this.tokenHash)
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      if (!this.authorized(req)) {
        // the body of a stranger is never read beyond a little: the connection closes after the answer
        refuse(req, res)
        throw new TessError('TESS_E_AUTH', 'request refused: missing or wrong API credentials', 'use the credentials saved in the cluster context (tess cluster create saves them)')
      }
      const url = new URL(req.url ?? '/', 'https://localhost')
      const method = req.method ?? 'GET'
      let matchedPath = false
      for (const r of this.routes) {
        const m = r.pattern.exec(url.pathname)
        if (!m) continue
        matchedPath = true
        if (r.method !== method) continue
        const params: Record<string, string> = {}
        r.names.forEach((n, i) => {
          try {
            params[n] = decodeURIComponent(m[i + 1] ?? '')
          } catch {
            throw new TessError('TESS_E_BAD_REQUEST', `bad path "${url.pathname}"`, 'percent-encode path parameters')
          }
        })
        const body = await readBody(req, res, this.limits.bodyMaxBytes)
        const result = await r.handler({ method, path: url.pathname, params, query: url.searchParams, body })
        send(res, method === 'POST' ? 201 : 200, result ?? {})
        return
      }
      refuse(req, res)
      if (matchedPath) throw new TessError('TESS_E_BAD_REQUEST', `method ${method} not allowed on ${url.pathname}`, 'see the API reference in the README')
      throw new TessError('TESS_E_NOT_FOUND', `no API route ${method} ${url.pathname}`, 'see the API reference in the README')
    } catch (e) {
      if (e instanceof TessError) {
        send(res, e.httpStatus, { error: e.toBody() })
      } else {
        this.opts.log.error(`api ${req.method} ${req.url}: ${e instanceof Error ? e.stack : errorMessage(e)}`)
        send(res, 500, { error: { code: 'TESS_E_INTERNAL', message: `internal error: ${errorMessage(e)}`, hint: 'see the CVM log; this is a bug' } })
      }
    }
  }
}

function send(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) return
  const data = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) })
  res.end(data)
}

/**
 * A request that is answered without its body (bad token, body too large): read and drop at most a
 * little of what the client is still sending, so that it receives the answer instead of a reset,
 * and close the connection after the answer.
 */
function refuse(req: IncomingMessage, res: ServerResponse): void {
  res.setHeader('connection', 'close')
  let dropped = 0
  req.on('data', (c: Buffer) => {
    dropped += c.length
    if (dropped > apiRefusedBodyDrainMaxBytes) req.socket.destroy()
  })
  res.on('finish', () => setImmediate(() => req.socket.destroy()))
}

function tooLarge(maxBytes: number): TessError {
  return new TessError('TESS_E_TOO_LARGE', `request body larger than ${maxBytes} bytes`, `send at most ${maxBytes} bytes`)
}

function readBody(req: IncomingMessage, res: ServerResponse, maxBytes: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? '0')
    if (Number.isFinite(declared) && declared > maxBytes) {
      refuse(req, res)
      reject(tooLarge(maxBytes))
      return
    }
    const chunks: Buffer[] = []
    let size = 0
    let over = false
    req.on('data', (c: Buffer) => {
      if (over) return
      size += c.length
      if (size > maxBytes) {
        over = true
        chunks.length = 0
        refuse(req, res)
        reject(tooLarge(maxBytes))
        return
      }
      chunks.push(c)
    })
    req.on('error', reject)
    req.on('end', () => {
      if (over) return
      if (size === 0) return resolve(undefined)
      const text = Buffer.concat(chunks).toString('utf8')
      try {
        resolve(JSON.parse(text))
      } catch (e) {
        reject(new TessError('TESS_E_BAD_REQUEST', `request body is not valid JSON: ${errorMessage(e)}`, 'send a JSON object'))
      }
    })
  })
}

/** Validation helpers for request bodies. */
export function bodyObject(body: unknown): Record<string, unknown> {
  if (body === undefined) return {}
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new TessError('TESS_E_BAD_REQUEST', 'request body must be a JSON object', 'send {"field": value, ...}')
  }
  return body as Record<string, unknown>
}

export function str(o: Record<string, unknown>, k: string, required = true): string | undefined {
  const v = o[k]
  if (v === undefined || v === null) {
    if (required) throw new TessError('TESS_E_BAD_REQUEST', `field "${k}" is required`, `add "${k}" to the request`)
    return undefined
  }
  if (typeof v !== 'string') throw new TessError('TESS_E_BAD_REQUEST', `field "${k}" must be a string`, `give "${k}" as a JSON string`)
  return v
}

export function int(o: Record<string, unknown>, k: string, min: number, max: number, required = true): number | undefined {
  const v = o[k]
  if (v === undefined || v === null) {
    if (required) throw new TessError('TESS_E_BAD_REQUEST', `field "${k}" is required`, `add "${k}" to the request`)
    return undefined
  }
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new TessError('TESS_E_INVALID', `field "${k}" must be a whole number, got ${JSON.stringify(v)}`, `give "${k}" as a whole number from ${min} to ${max}`)
  if (v < min || v > max) throw new TessError('TESS_E_INVALID', `field "${k}" = ${v} is out of range ${min}..${max}`, `give a value from ${min} to ${max}`)
  return v
}

export function num(o: Record<string, unknown>, k: string, min: number, max: number, required = true): number | undefined {
  const v = o[k]
  if (v === undefined || v === null) {
    if (required) throw new TessError('TESS_E_BAD_REQUEST', `field "${k}" is required`, `add "${k}" to the request`)
    return undefined
  }
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new TessError('TESS_E_INVALID', `field "${k}" must be a number, got ${JSON.stringify(v)}`, `give "${k}" as a number from ${min} to ${max}`)
  if (v < min || v > max) throw new TessError('TESS_E_INVALID', `field "${k}" = ${v} is out of range ${min}..${max}`, `give a value from ${min} to ${max}`)
  return v
}

export function bool(o: Record<string, unknown>, k: string): boolean {
  const v = o[k]
  if (v === undefined || v === null) return false
  if (typeof v !== 'boolean') throw new TessError('TESS_E_BAD_REQUEST', `field "${k}" must be true or false`, `give "${k}" as a JSON boolean, or leave it out for false`)
  return v
}

/** An optional array of strings, at most `max` of them, each at most `lengthMax` characters. */
export function strList(o: Record<string, unknown>, k: string, max: number, lengthMax = 4096): string[] | undefined {
  const v = o[k]
  if (v === undefined || v === null) return undefined
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw new TessError('TESS_E_BAD_REQUEST', `field "${k}" must be an array of strings`, `give "${k}" as ["...", ...]`)
  if (v.length > max) throw new TessError('TESS_E_INVALID', `field "${k}" has ${v.length} entries, at most ${max} allowed`, `give at most ${max}`)
  const long = (v as string[]).find((x) => x.length > lengthMax)
  if (long !== undefined) throw new TessError('TESS_E_INVALID', `an entry of "${k}" is longer than ${lengthMax} characters`, `shorten it to at most ${lengthMax} characters`)
  return v as string[]
}

/** An optional whole-number query parameter, 0..max. */
export function queryInt(req: ApiRequest, k: string, max: number): number | undefined {
  const v = req.query.get(k)
  if (v === null) return undefined
  if (!/^\d{1,15}$/.test(v) || Number(v) > max) throw new TessError('TESS_E_INVALID', `query parameter "${k}" must be a whole number 0..${max}`, `e.g. ?${k}=${Math.min(10, max)}`)
  return Number(v)
}
