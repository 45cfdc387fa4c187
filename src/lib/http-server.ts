import crypto from 'node:crypto'
import fs from 'node:fs'
import http, { type IncomingMessage, type ServerResponse } from 'node:http'
import https from 'node:https'
import type { TLSSocket } from 'node:tls'
import { TessError, errorMessage } from './errors.js'
import { apiBodyMaxBytes, apiConnectionsMax, apiHandshakeTimeoutMs, apiHeadersTimeoutMs, apiKeepAliveTimeoutMs, apiRefusedBodyDrainMaxBytes, apiRefusedBodyDrainMs, apiRequestTimeoutMs, apiTimeoutCheckIntervalMs } from './limits.js'
import type { Logger } from './log.js'

/** What an operator may do: viewer reads; operator also changes workloads and vDisks; admin everything. */
export type Role = 'viewer' | 'operator' | 'admin'
export const roles: readonly Role[] = ['viewer', 'operator', 'admin']
/** The least a route asks: a role, or `node` (another CVM, by its node certificate: node operations). */
export type RouteRole = Role | 'node'

/** Who sent a request: an operator (a user's token, or the cluster's bootstrap token: user root) or a node. */
export interface Principal {
  kind: 'user' | 'node'
  name: string
  /** a node may do everything */
  role: Role | 'node'
}

/** One change (a request other than GET) as the audit log keeps it. */
export interface AuditEntry {
  at: string
  who: string
  kind: Principal['kind']
  role: Principal['role']
  method: string
  path: string
  status: number
  /** the error code of a refused or failed change */
  code?: string
}

export interface ApiRequest {
  method: string
  path: string
  params: Record<string, string>
  query: URLSearchParams
  body: unknown
  principal: Principal
}

export type Handler = (req: ApiRequest) => Promise<unknown>

/**
 * An answer that is a file, not JSON (`GET /v1/cluster/backup`): `head` then the file's bytes, as
 * application/octet-stream with its length; `done` runs once the answer is sent or abandoned.
 */
export class FileAnswer {
  constructor(readonly head: Buffer, readonly file: string, readonly done: () => void) {}
}

/** Bounds of the API server (defaults in lib/limits.ts; tests pass small ones) */
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
  path: string
  pattern: RegExp
  names: string[]
  handler: Handler
  role: RouteRole
}

const rank: Record<Role, number> = { viewer: 1, operator: 2, admin: 3 }

/** Whether `p` may call a route that asks `role`. */
export function allowed(p: Principal, role: RouteRole): boolean {
  if (p.role === 'node') return true
  if (role === 'node') return false
  return rank[p.role] >= rank[role]
}

/** TLS options and credentials of the HTTPS listener. */
export interface ApiTls {
  cert: Buffer
  key: Buffer
  /** the cluster CA: a client certificate it signed (O=tessera, CN=<node>) is a node */
  ca: Buffer
  /** the cluster's bootstrap token: user root, role admin (until root's token is rotated) */
  token: string
  /** a user by the SHA-256 of the token they presented (from the user directory) */
  users?: (tokenSha256: Buffer) => Principal | undefined
  /** true once user root's token is in the user directory: the bootstrap `token` is refused then */
  rootRotated?: () => boolean
  /** every change, after it was answered (refused ones too) */
  audit?: (entry: AuditEntry) => void
}

/**
 * The management API: HTTPS with a certificate from the cluster CA. A request is made by a
 * principal: a node (its client certificate from the cluster CA: the CVMs call each other this
 * way), or an operator by `Authorization: Bearer <token>` (a user's token, or the cluster's
 * bootstrap token: user root, admin). Every route names the least role it needs: reads need
 * viewer, other methods admin unless the route says operator or node. Refused: 401 without valid
 * credentials, 403 for too small a role. Every change is handed to the audit log once answered.
 * Bodies are JSON, bounded in size; every failure is a JSON error body
 * `{"error": {code, message, hint}}` with the status of its code. A handler's bug answers 500 and
 * is logged; it never takes the daemon down.
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
  constructor(private readonly opts: ((ApiTls & { log: Logger }) | { log: Logger }) & { limits?: Partial<ApiLimits> }) {
    this.tokenHash = 'token' in opts ? crypto.createHash('sha256').update(opts.token).digest() : undefined
    this.limits = { ...defaultLimits, ...opts.limits }
  }

  /** Add a route; `role`: the least it needs (default: viewer for GET, admin for other methods). */
  route(method: string, path: string, handler: Handler, role?: RouteRole): this {
    const names: string[] = []
    const pattern = new RegExp('^' + path.replace(/:([a-zA-Z]+)/g, (_m, n: string) => { names.push(n); return '([^/]+)' }) + '$')
    this.routes.push({ method, path, pattern, names, handler, role: role ?? (method === 'GET' ? 'viewer' : 'admin') })
    return this
  }

  /** A new certificate and key for connections from now on (those open go on with theirs). */
  setCredentials(cert: Buffer, key: Buffer): void {
    const o = this.opts
    if (!('token' in o)) throw new Error('a unix socket listener has no TLS credentials')
    o.cert = cert
    o.key = key
    if (this.server instanceof https.Server) this.server.setSecureContext({ cert, key, ca: o.ca })
  }

  /** Every route with the role it asks (tests and the README's API table). */
  routeRoles(): Array<{ method: string, path: string, role: RouteRole }> {
    return this.routes.map((r) => ({ method: r.method, path: r.path, role: r.role }))
  }

  listen(port: number, host: string): Promise<void> {
    const o = this.opts
    if (!('token' in o)) throw new Error('a TCP listener needs TLS and a token')
    // a client certificate is asked for, not required: operators come with a token, nodes with their certificate
    const server = https.createServer({ cert: o.cert, key: o.key, ca: o.ca, requestCert: true, rejectUnauthorized: false, handshakeTimeout: this.limits.handshakeTimeoutMs, ...this.httpTimeouts() }, (req, res) => {
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

  /** Who sent the request, or undefined for a stranger. */
  private principal(req: IncomingMessage): Principal | undefined {
    if (this.tokenHash === undefined) return { kind: 'user', name: 'root', role: 'admin' } // the unix socket: root on the node
    const h = req.headers.authorization
    if (h !== undefined && h.startsWith('Bearer ')) {
      const given = crypto.createHash('sha256').update(h.slice(7).trim()).digest()
      const user = 'users' in this.opts ? this.opts.users?.(given) : undefined
      if (user !== undefined) return user
      const rotated = 'rootRotated' in this.opts && this.opts.rootRotated?.() === true
      if (!rotated && crypto.timingSafeEqual(given, this.tokenHash)) return { kind: 'user', name: 'root', role: 'admin' }
      return undefined
    }
    const sock = req.socket as TLSSocket
    if (sock.authorized === true) {
      // verified against the cluster CA, which signs node certificates only
      const subject = sock.getPeerCertificate().subject as Record<string, string | string[]> | undefined
      const cn = subject?.CN
      if (typeof cn === 'string' && subject?.O === 'tessera') return { kind: 'node', name: cn, role: 'node' }
    }
    return undefined
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? 'GET'
    let who: Principal | undefined
    let auditPath: string | undefined
    try {
      who = this.principal(req)
      if (who === undefined) {
        // a stranger's body is dropped unread (within bounds) and the connection closes after the answer
        await refuse(req, res)
        throw new TessError('TESS_E_AUTH', 'request refused: missing or wrong API credentials', 'use the credentials saved in the cluster context (tess cluster create saves them), or a user\'s token in TESS_TOKEN')
      }
      const url = new URL(req.url ?? '/', 'https://localhost')
      let matchedPath = false
      for (const r of this.routes) {
        const m = r.pattern.exec(url.pathname)
        if (!m) continue
        matchedPath = true
        if (r.method !== method) continue
        if (method !== 'GET') auditPath = url.pathname
        if (!allowed(who, r.role)) {
          await refuse(req, res)
          throw new TessError('TESS_E_FORBIDDEN', `${who.kind} ${who.name} (role ${who.role}) may not ${method} ${url.pathname}: it needs ${r.role === 'node' ? 'a node certificate' : `role ${r.role}`}`,
            r.role === 'node' ? 'node operations are for the CVMs of the cluster only' : `ask an admin for a user with role ${r.role} (tess user create)`)
        }
        const params: Record<string, string> = {}
        r.names.forEach((n, i) => {
          try {
            params[n] = decodeURIComponent(m[i + 1] ?? '')
          } catch {
            throw new TessError('TESS_E_BAD_REQUEST', `bad path "${url.pathname}"`, 'percent-encode path parameters')
          }
        })
        const body = await readBody(req, res, this.limits.bodyMaxBytes)
        const result = await r.handler({ method, path: url.pathname, params, query: url.searchParams, body, principal: who })
        if (result instanceof FileAnswer) sendFile(res, result)
        else send(res, method === 'POST' ? 201 : 200, result ?? {})
        this.audit(who, method, auditPath, method === 'POST' ? 201 : 200)
        return
      }
      await refuse(req, res)
      if (matchedPath) throw new TessError('TESS_E_BAD_REQUEST', `method ${method} not allowed on ${url.pathname}`, 'see the API reference in the README')
      throw new TessError('TESS_E_NOT_FOUND', `no API route ${method} ${url.pathname}`, 'see the API reference in the README')
    } catch (e) {
      if (e instanceof TessError) {
        send(res, e.httpStatus, { error: e.toBody() })
        if (who !== undefined) this.audit(who, method, auditPath, e.httpStatus, e.code)
      } else {
        this.opts.log.error(`api ${req.method} ${req.url}: ${e instanceof Error ? e.stack : errorMessage(e)}`)
        send(res, 500, { error: { code: 'TESS_E_INTERNAL', message: `internal error: ${errorMessage(e)}`, hint: 'see the CVM log; this is a bug' } })
        if (who !== undefined) this.audit(who, method, auditPath, 500, 'TESS_E_INTERNAL')
      }
    }
  }

  /** hand a change (a routed request other than GET) to the audit log; node operations are the cluster's own */
  private audit(who: Principal, method: string, path: string | undefined, status: number, code?: string): void {
    if (path === undefined || who.kind === 'node' || !('audit' in this.opts) || this.opts.audit === undefined) return
    this.opts.audit({ at: new Date().toISOString(), who: who.name, kind: who.kind, role: who.role, method, path, status, ...(code !== undefined ? { code } : {}) })
  }
}

function sendFile(res: ServerResponse, a: FileAnswer): void {
  let size: number
  try {
    size = fs.statSync(a.file).size
  } catch (e) {
    a.done()
    throw e
  }
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': a.head.length + size })
  res.write(a.head)
  const r = fs.createReadStream(a.file)
  // a client that goes away ends the answer; the file is its owner's to remove either way
  const finished = (): void => {
    r.destroy()
    a.done()
  }
  res.once('close', finished)
  r.once('error', () => res.destroy())
  r.pipe(res)
}

function send(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) return
  const data = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) })
  res.end(data)
}

/**
 * A request that is answered without its body (bad token, no route, body too large): the answer
 * goes out once the client's body is in, read and dropped within bounds, and the connection closes
 * after it. Answering first and closing with the client's bytes still unread makes the kernel
 * reset the connection, and the client sees a reset or a broken pipe instead of the answer.
 */
function refuse(req: IncomingMessage, res: ServerResponse): Promise<void> {
  res.setHeader('connection', 'close')
  if (req.complete) return Promise.resolve()
  return new Promise((resolve) => {
    let dropped = 0
    const done = (): void => {
      clearTimeout(timer)
      resolve()
    }
    const timer = setTimeout(done, apiRefusedBodyDrainMs)
    req.on('data', (c: Buffer) => {
      dropped += c.length
      if (dropped <= apiRefusedBodyDrainMaxBytes) return
      req.socket.destroy()
      done()
    })
    req.once('end', done)
    req.once('close', done)
  })
}

function tooLarge(maxBytes: number): TessError {
  return new TessError('TESS_E_TOO_LARGE', `request body larger than ${maxBytes} bytes`, `send at most ${maxBytes} bytes`)
}

function readBody(req: IncomingMessage, res: ServerResponse, maxBytes: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? '0')
    if (Number.isFinite(declared) && declared > maxBytes) {
      void refuse(req, res).then(() => reject(tooLarge(maxBytes)))
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
        void refuse(req, res).then(() => reject(tooLarge(maxBytes)))
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

/**
 * Validation helpers for request bodies from any client: a wrong type, a missing field or a value
 * out of range is a coded TessError naming the field and the value (cut short), never a crash.
 * Missing fields and wrong types are TESS_E_BAD_REQUEST; numbers of the wrong kind or out of
 * range, lists too long and values not among the allowed ones are TESS_E_INVALID.
 */
export function bodyObject(body: unknown): Record<string, unknown> {
  if (body === undefined) return {}
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new TessError('TESS_E_BAD_REQUEST', `request body must be a JSON object, got ${shown(body)}`, 'send {"field": value, ...}')
  }
  return body as Record<string, unknown>
}

/** A value for a message: its JSON, cut to `max` characters (a body may hold megabytes). */
export function shown(v: unknown, max = 60): string {
  let text: string
  try {
    text = Array.isArray(v) ? `an array of ${v.length}` : typeof v === 'number' ? String(v) : JSON.stringify(v) ?? String(v)
  } catch {
    text = String(v)
  }
  return text.length > max ? `${text.slice(0, max)}...` : text
}

/** Run the checks of one request, its errors' messages prefixed with what the request is. */
export function within<T>(what: string, check: () => T): T {
  try {
    return check()
  } catch (e) {
    if (e instanceof TessError) throw new TessError(e.code, `${what}: ${e.message}`, e.hint)
    throw e
  }
}

export function str(o: Record<string, unknown>, k: string, required = true): string | undefined {
  const v = o[k]
  if (v === undefined || v === null) {
    if (required) throw new TessError('TESS_E_BAD_REQUEST', `field "${k}" is required`, `add "${k}" to the request`)
    return undefined
  }
  if (typeof v !== 'string') throw new TessError('TESS_E_BAD_REQUEST', `field "${k}" must be a string, got ${shown(v)}`, `give "${k}" as a JSON string`)
  return v
}

/** A string of at most `lengthMax` characters. */
export function strMax(o: Record<string, unknown>, k: string, lengthMax: number, required = true): string | undefined {
  const v = str(o, k, required)
  if (v !== undefined && v.length > lengthMax) throw new TessError('TESS_E_INVALID', `field "${k}" is ${v.length} characters long (${shown(v, 40)}), at most ${lengthMax}`, `shorten "${k}" to at most ${lengthMax} characters`)
  return v
}

export function int(o: Record<string, unknown>, k: string, min: number, max: number, required = true): number | undefined {
  const v = o[k]
  if (v === undefined || v === null) {
    if (required) throw new TessError('TESS_E_BAD_REQUEST', `field "${k}" is required`, `add "${k}" to the request`)
    return undefined
  }
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new TessError('TESS_E_INVALID', `field "${k}" must be a whole number, got ${shown(v)}`, `give "${k}" as a whole number from ${min} to ${max}`)
  if (v < min || v > max) throw new TessError('TESS_E_INVALID', `field "${k}" = ${v} is out of range ${min}..${max}`, `give a value from ${min} to ${max}`)
  return v
}

export function num(o: Record<string, unknown>, k: string, min: number, max: number, required = true): number | undefined {
  const v = o[k]
  if (v === undefined || v === null) {
    if (required) throw new TessError('TESS_E_BAD_REQUEST', `field "${k}" is required`, `add "${k}" to the request`)
    return undefined
  }
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new TessError('TESS_E_INVALID', `field "${k}" must be a number, got ${shown(v)}`, `give "${k}" as a number from ${min} to ${max}`)
  if (v < min || v > max) throw new TessError('TESS_E_INVALID', `field "${k}" = ${v} is out of range ${min}..${max}`, `give a value from ${min} to ${max}`)
  return v
}

export function bool(o: Record<string, unknown>, k: string): boolean {
  const v = o[k]
  if (v === undefined || v === null) return false
  if (typeof v !== 'boolean') throw new TessError('TESS_E_BAD_REQUEST', `field "${k}" must be true or false, got ${shown(v)}`, `give "${k}" as a JSON boolean, or leave it out for false`)
  return v
}

/** One of a few strings. */
export function oneOf<T extends string>(o: Record<string, unknown>, k: string, values: readonly T[], required = true): T | undefined {
  const v = str(o, k, required)
  if (v === undefined) return undefined
  if (!(values as readonly string[]).includes(v)) throw new TessError('TESS_E_INVALID', `field "${k}" = ${shown(v)} is not one of ${values.join(', ')}`, `give "${k}" as one of ${values.join(', ')}`)
  return v as T
}

/** An optional array of strings, at most `max` of them, each at most `lengthMax` characters. */
export function strList(o: Record<string, unknown>, k: string, max: number, lengthMax = 4096): string[] | undefined {
  const v = o[k]
  if (v === undefined || v === null) return undefined
  if (!Array.isArray(v)) throw new TessError('TESS_E_BAD_REQUEST', `field "${k}" must be an array of strings, got ${shown(v)}`, `give "${k}" as ["...", ...]`)
  if (v.length > max) throw new TessError('TESS_E_INVALID', `field "${k}" has ${v.length} entries, at most ${max} allowed`, `give at most ${max}`)
  v.forEach((x: unknown, i) => {
    if (typeof x !== 'string') throw new TessError('TESS_E_BAD_REQUEST', `entry ${i} of field "${k}" must be a string, got ${shown(x)}`, `give "${k}" as ["...", ...]`)
    if (x.length > lengthMax) throw new TessError('TESS_E_INVALID', `entry ${i} of field "${k}" is ${x.length} characters long, at most ${lengthMax}`, `shorten it to at most ${lengthMax} characters`)
  })
  return v as string[]
}

/** An optional array of at most `max` objects, each checked by `each` (its errors name the entry). */
export function objList<T>(o: Record<string, unknown>, k: string, max: number, each: (x: Record<string, unknown>, i: number) => T): T[] | undefined {
  const v = o[k]
  if (v === undefined || v === null) return undefined
  if (!Array.isArray(v)) throw new TessError('TESS_E_BAD_REQUEST', `field "${k}" must be an array of objects, got ${shown(v)}`, `give "${k}" as [{...}, ...]`)
  if (v.length > max) throw new TessError('TESS_E_INVALID', `field "${k}" has ${v.length} entries, at most ${max} allowed`, `give at most ${max}`)
  return v.map((x: unknown, i) => {
    if (x === null || typeof x !== 'object' || Array.isArray(x)) throw new TessError('TESS_E_BAD_REQUEST', `entry ${i} of field "${k}" must be an object, got ${shown(x)}`, `give "${k}" as [{...}, ...]`)
    return within(`entry ${i} of field "${k}"`, () => each(x as Record<string, unknown>, i))
  })
}

/** A required JSON object field. */
export function obj(o: Record<string, unknown>, k: string): Record<string, unknown> {
  const v = o[k]
  if (v === undefined || v === null) throw new TessError('TESS_E_BAD_REQUEST', `field "${k}" is required`, `add "${k}" to the request`)
  if (typeof v !== 'object' || Array.isArray(v)) throw new TessError('TESS_E_BAD_REQUEST', `field "${k}" must be an object, got ${shown(v)}`, `give "${k}" as {...}`)
  return v as Record<string, unknown>
}

/** An optional whole-number query parameter, 0..max. */
export function queryInt(req: ApiRequest, k: string, max: number): number | undefined {
  const v = req.query.get(k)
  if (v === null) return undefined
  if (!/^\d{1,15}$/.test(v) || Number(v) > max) throw new TessError('TESS_E_INVALID', `query parameter "${k}" must be a whole number 0..${max}`, `e.g. ?${k}=${Math.min(10, max)}`)
  return Number(v)
}
