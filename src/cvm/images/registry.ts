import http from 'node:http'
import https from 'node:https'
import { TessError, errorMessage } from '../../lib/errors.js'
import { Digester, parseDigest } from '../../lib/images/digest.js'
import {
  errorBodySizeMaxBytes, manifestSizeMaxBytes, registryConnectTimeoutMs, registryIdleTimeoutMs, registryRedirectsMax,
  registryRetriesMax, registryRetryAfterMaxMs, registryRetryBackoffMaxMs, registryRetryBackoffMinMs, tokenExpirySlackMs,
  tokenLifetimeDefaultMs, tokenResponseSizeMaxBytes,
} from '../../lib/images/limits.js'
import { manifestAccept, parseManifestDocument, type ImageIndex, type ImageManifest } from '../../lib/images/manifest.js'
import { parseRegistryHost } from '../../lib/images/reference.js'
import type { BlobInfo, ContentStore, Ingest } from '../../lib/images/store.js'

/**
 * A client of one registry (OCI distribution spec / Docker registry HTTP API v2), over node:http
 * and node:https. It fetches manifests with the Accept header of every image format we read,
 * resolves tags to digests, and streams blobs into the content store while they are hashed,
 * resuming an interrupted download with an HTTP Range request when the registry honours it.
 *
 * Auth: on a 401 it follows the WWW-Authenticate challenge: Bearer (token server at `realm`,
 * with `service` and `scope`, Basic credentials sent to the token server when configured) or
 * Basic (the credentials themselves). Tokens are cached per scope until shortly before expiry.
 *
 * Failures are retried with bounded, jittered exponential backoff: connection errors and
 * resets, timeouts, 5xx and 429. Redirects are followed (bounded); the Authorization header is
 * not sent to another origin.
 *
 * `insecure`: the registry may be plain HTTP or HTTPS with a certificate we do not verify. The
 * first request tries HTTPS without verification and falls back to HTTP when the server does
 * not speak TLS (like Docker's insecure registries); `scheme` forces one.
 */

export interface RegistryCredentials {
  username: string
  password: string
}

/** What a node knows about one registry. */
export interface RegistryConfig {
  insecure?: boolean
  /** force the scheme instead of https (or, when insecure, https-then-http) */
  scheme?: 'http' | 'https'
  credentials?: RegistryCredentials
  /** extra trusted CA certificates (PEM) */
  ca?: string | Buffer
}

export interface RegistryClientOptions extends RegistryConfig {
  /** `host[:port]` */
  registry: string
  connectTimeoutMs?: number
  idleTimeoutMs?: number
  retriesMax?: number
  backoffMinMs?: number
  backoffMaxMs?: number
  /** injected for tests (fault injection, fast retries, token expiry) */
  sleep?: (ms: number) => Promise<void>
  random?: () => number
  now?: () => number
  userAgent?: string
}

export interface FetchedManifest {
  digest: string
  mediaType: string
  bytes: Buffer
  document: ImageManifest | ImageIndex
}

export interface ResolvedTag {
  digest: string
  mediaType?: string
  size?: number
}

export interface FetchBlobOptions {
  signal?: AbortSignal
  /** bytes held so far (including a resumed part) and the total when known */
  onProgress?: (bytes: number, total: number | undefined) => void
}

export interface FetchBlobResult extends BlobInfo {
  /** bytes received over the network for this blob (0 if it was already stored) */
  downloadedBytes: number
  /** offset the download resumed from (0 when it started from the beginning) */
  resumedFrom: number
  /** true if the blob was in the store already */
  cached: boolean
}

interface Challenge {
  scheme: string
  params: Record<string, string>
}

interface CachedToken {
  token: string
  expiresAt: number
}

interface SendRequest {
  method: 'GET' | 'HEAD'
  path: string
  repo?: string
  headers?: Record<string, string>
  signal?: AbortSignal
}

const retryableStatus = new Set([408, 429, 500, 502, 503, 504])
const retryableErrorCodes = new Set(['ECONNRESET', 'ECONNREFUSED', 'ECONNABORTED', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ENETDOWN', 'ERR_STREAM_PREMATURE_CLOSE', 'TESS_BODY_TIMEOUT'])
const tlsMismatchErrorCodes = new Set(['EPROTO', 'ERR_SSL_WRONG_VERSION_NUMBER', 'ERR_SSL_PACKET_LENGTH_TOO_LONG', 'ECONNRESET', 'HPE_INVALID_CONSTANT'])

export class RegistryClient {
  readonly registry: string
  private readonly opts: RegistryClientOptions
  private scheme: 'http' | 'https' | undefined
  private readonly httpAgent: http.Agent
  private readonly httpsAgent: https.Agent
  private auth: { kind: 'basic' } | { kind: 'bearer', realm: string, service?: string } | undefined
  private readonly tokens = new Map<string, CachedToken>()
  private readonly sleep: (ms: number) => Promise<void>
  private readonly random: () => number
  private readonly now: () => number

  constructor(opts: RegistryClientOptions) {
    this.registry = parseRegistryHost(opts.registry)
    this.opts = opts
    this.scheme = opts.scheme ?? (opts.insecure === true ? undefined : 'https')
    this.httpAgent = new http.Agent({ keepAlive: true, maxSockets: 8 })
    this.httpsAgent = new https.Agent({ keepAlive: true, maxSockets: 8, rejectUnauthorized: opts.insecure !== true, ...(opts.ca !== undefined ? { ca: opts.ca } : {}) })
    this.sleep = opts.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)))
    this.random = opts.random ?? Math.random
    this.now = opts.now ?? Date.now
  }

  /** Close idle keep-alive connections. */
  close(): void {
    this.httpAgent.destroy()
    this.httpsAgent.destroy()
  }

  /** GET /v2/: is this a v2 registry we may use (auth included)? */
  async ping(): Promise<void> {
    const res = await this.request({ method: 'GET', path: '/v2/' })
    await this.expectOk(res, 'GET', '/v2/', `cannot use registry ${this.registry}`)
    res.resume()
  }

  /** HEAD a manifest: the digest a tag points at, when the registry says (Docker-Content-Digest). */
  async resolve(repo: string, reference: string): Promise<ResolvedTag | undefined> {
    const p = `/v2/${repo}/manifests/${reference}`
    const res = await this.request({ method: 'HEAD', path: p, repo, headers: { accept: manifestAccept } })
    res.resume()
    await this.expectOk(res, 'HEAD', p, `cannot resolve image ${this.registry}/${repo}:${reference}`, 'manifest')
    const digest = headerString(res, 'docker-content-digest')
    if (digest === undefined) return undefined
    try {
      parseDigest(digest)
    } catch {
      return undefined
    }
    const out: ResolvedTag = { digest }
    const ct = headerString(res, 'content-type')?.split(';')[0]?.trim()
    if (ct !== undefined) out.mediaType = ct
    const len = Number(headerString(res, 'content-length'))
    if (Number.isSafeInteger(len) && len >= 0) out.size = len
    return out
  }

  /**
   * GET a manifest or index by tag or digest. Fetched by digest, the bytes must hash to it; by
   * tag, they must hash to the Docker-Content-Digest the registry sends (when it sends one).
   */
  async getManifest(repo: string, reference: string, expectedDigest?: string): Promise<FetchedManifest> {
    const p = `/v2/${repo}/manifests/${reference}`
    const name = `${this.registry}/${repo}${reference.includes(':') ? '@' : ':'}${reference}`
    const res = await this.request({ method: 'GET', path: p, repo, headers: { accept: manifestAccept } })
    await this.expectOk(res, 'GET', p, `cannot pull image ${name}`, 'manifest')
    const bytes = await readBody(res, manifestSizeMaxBytes, `manifest of ${name}`)
    const algorithm = expectedDigest !== undefined ? parseDigest(expectedDigest).algorithm : 'sha256'
    const d = new Digester(algorithm)
    d.update(bytes)
    const digest = d.digest()
    if (expectedDigest !== undefined && digest !== expectedDigest) {
      throw new TessError('TESS_E_INVALID', `cannot pull image ${name}: the manifest does not match its digest: expected ${expectedDigest}, actual ${digest}`,
        'the registry served corrupted or tampered content; nothing was stored')
    }
    const header = headerString(res, 'docker-content-digest')
    if (header !== undefined && header.startsWith(`${algorithm}:`) && header !== digest) {
      throw new TessError('TESS_E_INVALID', `cannot pull image ${name}: the manifest does not match the digest the registry announced: expected ${header}, actual ${digest}`,
        'the registry served corrupted or tampered content; nothing was stored')
    }
    const document = parseManifestDocument(bytes, headerString(res, 'content-type'), `manifest of ${name}`)
    return { digest, mediaType: document.mediaType, bytes, document }
  }

  /**
   * Download a blob into the store: streamed to its ingest file while hashed, verified, then
   * renamed into place. An interrupted download (here or in an earlier run) resumes from the
   * bytes kept in ingest/ with a Range request; a registry that answers 200 instead of 206
   * sends the whole blob again. If a resumed download does not verify, it is fetched once more
   * from the start before the mismatch is reported.
   */
  async fetchBlob(repo: string, desc: { digest: string, size?: number }, store: ContentStore, opts: FetchBlobOptions = {}): Promise<FetchBlobResult> {
    const cachedInfo = await store.stat(desc.digest)
    if (cachedInfo !== undefined) return { ...cachedInfo, downloadedBytes: 0, resumedFrom: 0, cached: true }
    let downloadedBytes = 0
    let resumedFrom = 0
    for (let round = 0; ; round++) {
      let resumed = false
      try {
        const info = await store.ingest(desc, async (ing) => {
          resumedFrom = ing.offset
          resumed = ing.offset > 0
          await this.fillBlob(repo, desc, ing, opts, (n) => { downloadedBytes += n })
        }, `${this.registry}/${repo}`)
        return { ...info, downloadedBytes, resumedFrom, cached: downloadedBytes === 0 && resumedFrom === 0 }
      } catch (e) {
        if (round === 0 && resumed && e instanceof TessError && e.code === 'TESS_E_INVALID') continue
        throw e
      }
    }
  }

  private async fillBlob(repo: string, desc: { digest: string, size?: number }, ing: Ingest, opts: FetchBlobOptions, received: (n: number) => void): Promise<void> {
    const p = `/v2/${repo}/blobs/${desc.digest}`
    const what = `blob ${desc.digest} of ${this.registry}/${repo}`
    const retriesMax = this.opts.retriesMax ?? registryRetriesMax
    let failures = 0
    for (;;) {
      const offset = ing.offset
      if (desc.size !== undefined && offset === desc.size && offset > 0) return
      let retryAfterMs: number | undefined
      try {
        const headers: Record<string, string> = {}
        if (offset > 0) headers.range = `bytes=${offset}-`
        const res = await this.send({ method: 'GET', path: p, repo, headers, ...(opts.signal !== undefined ? { signal: opts.signal } : {}) })
        if (offset > 0 && res.statusCode === 416) {
          res.resume()
          await ing.reset()
          throw Object.assign(new Error('range not satisfiable'), { code: 'TESS_RANGE_RESET' })
        }
        if (retryableStatus.has(res.statusCode ?? 0)) {
          res.resume()
          retryAfterMs = retryAfter(res)
          throw Object.assign(new Error(`status ${res.statusCode}`), { code: 'TESS_STATUS', status: res.statusCode })
        }
        await this.expectOk(res, 'GET', p, `cannot pull ${what}`, 'blob')
        if (offset > 0) {
          const start = contentRangeStart(res)
          if (res.statusCode !== 206 || start !== offset) await ing.reset() // range not honoured: take the whole blob
        }
        const total = desc.size
        for await (const chunk of res as AsyncIterable<Buffer>) {
          await ing.write(chunk)
          received(chunk.length)
          opts.onProgress?.(ing.offset, total)
        }
        if (!res.complete) throw Object.assign(new Error('the connection closed before the whole blob arrived'), { code: 'ERR_STREAM_PREMATURE_CLOSE' })
        return
      } catch (e) {
        if (e instanceof TessError || isAbort(e, opts.signal)) throw e
        const c = errCode(e)
        const retryable = c === 'TESS_STATUS' || c === 'TESS_RANGE_RESET' || retryableErrorCodes.has(c ?? '') || isResetLike(e)
        if (!retryable) throw this.unreachable(`cannot pull ${what}`, e)
        failures++
        if (failures > retriesMax) {
          if (c === 'TESS_STATUS') {
            throw new TessError('TESS_E_UNREACHABLE', `cannot pull ${what}: the registry answered ${(e as { status?: number }).status} ${failures} times`,
              'the registry is failing; try again later. The part already downloaded is kept and the next pull resumes it')
          }
          throw this.unreachable(`cannot pull ${what} (${failures} tries)`, e)
        }
        await this.sleep(retryAfterMs ?? this.backoffMs(failures))
      }
    }
  }

  /**
   * Fetch a small blob (an image config) into memory, verified against its digest and size; the
   * caller stores it once the whole image verified.
   */
  async getBlobBytes(repo: string, desc: { digest: string, size: number }, sizeMaxBytes: number): Promise<Buffer> {
    const what = `blob ${desc.digest} of ${this.registry}/${repo}`
    if (desc.size > sizeMaxBytes) {
      throw new TessError('TESS_E_INVALID', `cannot pull ${what}: ${desc.size} bytes, more than ${sizeMaxBytes}`, 'the image config is too large')
    }
    const p = `/v2/${repo}/blobs/${desc.digest}`
    const res = await this.request({ method: 'GET', path: p, repo })
    await this.expectOk(res, 'GET', p, `cannot pull ${what}`, 'blob')
    const bytes = await readBody(res, Math.min(sizeMaxBytes, desc.size), what)
    const d = new Digester(parseDigest(desc.digest).algorithm)
    d.update(bytes)
    if (d.digest() !== desc.digest || bytes.length !== desc.size) {
      throw new TessError('TESS_E_INVALID', `cannot pull ${what}: its content does not match its digest: expected ${desc.digest}, actual ${d.digest()}${bytes.length !== desc.size ? ` (${bytes.length} bytes, ${desc.size} expected)` : ''}`,
        'the registry served corrupted or tampered content; nothing was stored')
    }
    return bytes
  }

  // ---- HTTP ----

  /** send() with retries for connection errors, timeouts, 5xx and 429. */
  private async request(req: SendRequest): Promise<http.IncomingMessage> {
    const retriesMax = this.opts.retriesMax ?? registryRetriesMax
    for (let failures = 0; ; ) {
      let res: http.IncomingMessage
      try {
        res = await this.send(req)
      } catch (e) {
        if (e instanceof TessError || isAbort(e, req.signal)) throw e
        if (!(retryableErrorCodes.has(errCode(e) ?? '') || isResetLike(e)) || failures >= retriesMax) {
          throw this.unreachable(`cannot reach registry ${this.registry} (${req.method} ${req.path}${failures > 0 ? `, ${failures + 1} tries` : ''})`, e)
        }
        failures++
        await this.sleep(this.backoffMs(failures))
        continue
      }
      if (retryableStatus.has(res.statusCode ?? 0) && failures < retriesMax) {
        res.resume()
        failures++
        await this.sleep(retryAfter(res) ?? this.backoffMs(failures))
        continue
      }
      return res
    }
  }

  /** One request: scheme, redirects and the auth challenge (one retry with credentials). */
  private async send(req: SendRequest): Promise<http.IncomingMessage> {
    const scheme = this.scheme ?? await this.probeScheme(req.signal)
    const base = `${scheme}://${this.registry}`
    const scope = req.repo !== undefined ? `repository:${req.repo}:pull` : undefined
    let authTried = false
    for (;;) {
      const authorization = await this.authorization(scope, req.signal)
      const res = await this.followRedirects(new URL(req.path, base), req, authorization)
      if (res.statusCode !== 401 || authTried) return res
      const challenges = parseChallenges(res.headers['www-authenticate'] === undefined ? [] : (res.headersDistinct['www-authenticate'] ?? []))
      await drain(res)
      authTried = true
      const bearer = challenges.find((c) => c.scheme.toLowerCase() === 'bearer')
      const basic = challenges.find((c) => c.scheme.toLowerCase() === 'basic')
      if (bearer !== undefined && bearer.params.realm !== undefined) {
        this.auth = { kind: 'bearer', realm: bearer.params.realm, ...(bearer.params.service !== undefined ? { service: bearer.params.service } : {}) }
        // the scope the registry asks for (ours when it names none), cached under our scope
        this.tokens.set(scope ?? '', await this.fetchToken(bearer.params.scope ?? scope ?? '', req.signal))
        continue
      }
      if (basic !== undefined) {
        if (this.opts.credentials === undefined) {
          throw new TessError('TESS_E_AUTH', `cannot access registry ${this.registry} (${req.method} ${req.path}): it asks for a user name and password and none is configured`,
            `configure credentials for registry ${this.registry}`)
        }
        this.auth = { kind: 'basic' }
        continue
      }
      throw new TessError('TESS_E_AUTH', `cannot access registry ${this.registry} (${req.method} ${req.path}): it answered 401 with no challenge we support (${challenges.map((c) => c.scheme).join(', ') || 'none'})`,
        'the registry must use Bearer token or Basic authentication')
    }
  }

  private async followRedirects(url: URL, req: SendRequest, authorization: string | undefined): Promise<http.IncomingMessage> {
    const origin = url.origin
    let current = url
    for (let hops = 0; ; hops++) {
      const headers: Record<string, string> = { 'user-agent': this.opts.userAgent ?? 'tessera-csm', ...req.headers }
      if (authorization !== undefined && current.origin === origin) headers.authorization = authorization
      const res = await this.rawRequest(req.method, current, headers, req.signal)
      const status = res.statusCode ?? 0
      if (![301, 302, 303, 307, 308].includes(status)) return res
      const location = headerString(res, 'location')
      res.resume()
      if (location === undefined) {
        throw new TessError('TESS_E_INVALID', `cannot fetch ${current.href}: the registry answered ${status} without a Location`, 'the registry is misconfigured')
      }
      if (hops >= registryRedirectsMax) {
        throw new TessError('TESS_E_INVALID', `cannot fetch ${url.href}: more than ${registryRedirectsMax} redirects`, 'the registry or its storage redirects in a loop')
      }
      const next = new URL(location, current)
      if (next.protocol !== 'http:' && next.protocol !== 'https:') {
        throw new TessError('TESS_E_INVALID', `cannot fetch ${url.href}: redirected to unsupported URL ${next.href}`, 'the registry is misconfigured')
      }
      current = next
    }
  }

  private rawRequest(method: string, url: URL, headers: Record<string, string>, signal: AbortSignal | undefined): Promise<http.IncomingMessage> {
    const connectMs = this.opts.connectTimeoutMs ?? registryConnectTimeoutMs
    const idleMs = this.opts.idleTimeoutMs ?? registryIdleTimeoutMs
    return new Promise((resolve, reject) => {
      const isHttps = url.protocol === 'https:'
      const options: https.RequestOptions = {
        method,
        headers,
        agent: isHttps ? this.httpsAgent : this.httpAgent,
        ...(signal !== undefined ? { signal } : {}),
      }
      const req = (isHttps ? https : http).request(url, options)
      let connectTimer: NodeJS.Timeout | undefined
      req.on('socket', (socket) => {
        if (socket.connecting) {
          connectTimer = setTimeout(() => req.destroy(Object.assign(new Error(`connect timed out after ${connectMs} ms`), { code: 'ETIMEDOUT' })), connectMs)
          socket.once(isHttps ? 'secureConnect' : 'connect', () => clearTimeout(connectTimer))
        }
      })
      req.setTimeout(idleMs, () => req.destroy(Object.assign(new Error(`no data for ${idleMs} ms`), { code: 'TESS_BODY_TIMEOUT' })))
      req.on('error', (e) => {
        clearTimeout(connectTimer)
        reject(e)
      })
      req.on('response', (res) => {
        clearTimeout(connectTimer)
        resolve(res)
      })
      req.end()
    })
  }

  /** insecure without a scheme: HTTPS (unverified) if the server speaks TLS, else HTTP. */
  private async probeScheme(signal: AbortSignal | undefined): Promise<'http' | 'https'> {
    try {
      const res = await this.rawRequest('GET', new URL(`https://${this.registry}/v2/`), { 'user-agent': this.opts.userAgent ?? 'tessera-csm' }, signal)
      res.resume()
      this.scheme = 'https'
    } catch (e) {
      if (isAbort(e, signal)) throw e
      const c = errCode(e) ?? ''
      if (tlsMismatchErrorCodes.has(c) || c.startsWith('ERR_SSL') || /wrong version number|packet length too long|unexpected eof|socket hang up/i.test(errorMessage(e))) {
        this.scheme = 'http'
      } else {
        return 'https' // cannot tell yet (e.g. refused): let the caller's retries decide
      }
    }
    return this.scheme
  }

  private async authorization(scope: string | undefined, signal: AbortSignal | undefined): Promise<string | undefined> {
    const auth = this.auth
    if (auth === undefined) return undefined
    if (auth.kind === 'basic') {
      const c = this.opts.credentials
      return c === undefined ? undefined : basicHeader(c)
    }
    const key = scope ?? ''
    let t = this.tokens.get(key)
    if (t === undefined || t.expiresAt <= this.now()) {
      t = await this.fetchToken(key, signal)
      this.tokens.set(key, t)
    }
    return `Bearer ${t.token}`
  }

  /** GET a token from the realm for `scope` ('' for none). */
  private async fetchToken(scope: string, signal: AbortSignal | undefined): Promise<CachedToken> {
    const auth = this.auth
    if (auth?.kind !== 'bearer') throw new Error('assertion failed: bearer challenge known')
    let url: URL
    try {
      url = new URL(auth.realm)
    } catch {
      throw new TessError('TESS_E_AUTH', `cannot authenticate to registry ${this.registry}: token realm "${auth.realm}" is not a URL`, 'the registry is misconfigured')
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') {
      throw new TessError('TESS_E_AUTH', `cannot authenticate to registry ${this.registry}: token realm ${auth.realm} is not http(s)`, 'the registry is misconfigured')
    }
    const creds = this.opts.credentials
    if (url.protocol === 'http:' && creds !== undefined && this.opts.insecure !== true && this.scheme !== 'http') {
      throw new TessError('TESS_E_AUTH', `cannot authenticate to registry ${this.registry}: its token server ${url.origin} is plain HTTP and would see the password`,
        'use an HTTPS token server, or mark the registry insecure')
    }
    if (auth.service !== undefined) url.searchParams.set('service', auth.service)
    if (scope !== '') url.searchParams.set('scope', scope)
    const headers: Record<string, string> = { 'user-agent': this.opts.userAgent ?? 'tessera-csm', accept: 'application/json' }
    if (creds !== undefined) headers.authorization = basicHeader(creds)
    const retriesMax = this.opts.retriesMax ?? registryRetriesMax
    let res: http.IncomingMessage
    for (let failures = 0; ; failures++) {
      try {
        res = await this.rawRequest('GET', url, headers, signal)
      } catch (e) {
        if (isAbort(e, signal)) throw e
        if (failures >= retriesMax) throw this.unreachable(`cannot reach the token server ${url.origin} of registry ${this.registry}`, e)
        await this.sleep(this.backoffMs(failures + 1))
        continue
      }
      if (retryableStatus.has(res.statusCode ?? 0) && failures < retriesMax) {
        res.resume()
        await this.sleep(retryAfter(res) ?? this.backoffMs(failures + 1))
        continue
      }
      break
    }
    const status = res.statusCode ?? 0
    if (status === 401) {
      await drain(res)
      throw new TessError('TESS_E_AUTH', `cannot authenticate to registry ${this.registry}: the token server ${url.origin} refused ${creds !== undefined ? `the credentials of user "${creds.username}"` : 'anonymous access'} for ${scope}`,
        creds !== undefined ? 'check the user name and password configured for this registry' : `configure credentials for registry ${this.registry}`)
    }
    if (status === 403) {
      await drain(res)
      throw new TessError('TESS_E_FORBIDDEN', `cannot authenticate to registry ${this.registry}: the token server ${url.origin} denies ${scope}`, 'ask the registry owner for pull access to this repository')
    }
    if (status !== 200) {
      await drain(res)
      throw new TessError('TESS_E_AUTH', `cannot authenticate to registry ${this.registry}: the token server ${url.origin} answered ${status}`, 'check the token server')
    }
    const body = await readBody(res, tokenResponseSizeMaxBytes, `token from ${url.origin}`)
    let o: Record<string, unknown>
    try {
      o = JSON.parse(body.toString('utf8')) as Record<string, unknown>
    } catch {
      throw new TessError('TESS_E_AUTH', `cannot authenticate to registry ${this.registry}: the token server ${url.origin} answered with no JSON`, 'check the token server')
    }
    const token = typeof o.token === 'string' && o.token !== '' ? o.token : typeof o.access_token === 'string' ? o.access_token : undefined
    if (token === undefined || token === '') {
      throw new TessError('TESS_E_AUTH', `cannot authenticate to registry ${this.registry}: the token server ${url.origin} answered with no token`, 'check the token server')
    }
    const lifetimeMs = typeof o.expires_in === 'number' && o.expires_in > 0 ? o.expires_in * 1000 : tokenLifetimeDefaultMs
    return { token, expiresAt: this.now() + Math.max(lifetimeMs / 2, lifetimeMs - tokenExpirySlackMs) }
  }

  /** Map a non-2xx answer to an error (drains the body); 2xx passes. */
  private async expectOk(res: http.IncomingMessage, method: string, p: string, action: string, kind?: 'manifest' | 'blob'): Promise<void> {
    const status = res.statusCode ?? 0
    if (status >= 200 && status < 300) return
    const codes = await errorCodes(res)
    const detail = codes.length > 0 ? ` (${codes.join(', ')})` : ''
    if (status === 404) {
      const what = kind === 'manifest' ? (codes.includes('NAME_UNKNOWN') ? 'the registry has no such repository' : 'the registry has no such tag or manifest')
        : kind === 'blob' ? 'the registry has no such blob' : `${method} ${p} answered 404`
      throw new TessError('TESS_E_NOT_FOUND', `${action}: ${what}${detail}`, 'check the repository name and tag, e.g. with skopeo list-tags')
    }
    if (status === 401) {
      throw new TessError('TESS_E_AUTH', `${action}: the registry refused our credentials${detail}`, `check the credentials configured for registry ${this.registry}`)
    }
    if (status === 403) {
      throw new TessError('TESS_E_FORBIDDEN', `${action}: the registry denies access${detail}`, 'ask the registry owner for pull access to this repository')
    }
    if (status >= 500 || status === 429 || status === 408) {
      throw new TessError('TESS_E_UNREACHABLE', `${action}: the registry answered ${status}${detail} after ${(this.opts.retriesMax ?? registryRetriesMax) + 1} tries`, 'the registry is failing; try again later')
    }
    throw new TessError('TESS_E_INVALID', `${action}: the registry answered ${status} to ${method} ${p}${detail}`, 'check the image reference')
  }

  private unreachable(action: string, e: unknown): TessError {
    const c = errCode(e)
    return new TessError('TESS_E_UNREACHABLE', `${action}: ${errorMessage(e)}${c !== undefined && !errorMessage(e).includes(c) ? ` (${c})` : ''}`,
      `check that the registry ${this.registry} runs and is reachable${this.opts.insecure === true ? '' : '; a plain-HTTP registry must be configured as insecure'}`)
  }

  private backoffMs(failures: number): number {
    const min = this.opts.backoffMinMs ?? registryRetryBackoffMinMs
    const max = this.opts.backoffMaxMs ?? registryRetryBackoffMaxMs
    const base = Math.min(max, min * 2 ** Math.max(0, failures - 1))
    return Math.round(base * (0.5 + this.random() / 2))
  }
}

/** Parse WWW-Authenticate values: `Bearer realm="...",service="...",scope="..."`, `Basic realm="..."`. */
export function parseChallenges(values: string[]): Challenge[] {
  const out: Challenge[] = []
  const token = /[A-Za-z0-9!#$%&'*+.^_`|~-]+/y
  for (const v of values) {
    let pos = 0
    const skip = (re: RegExp) => { re.lastIndex = pos; if (re.exec(v) !== null) pos = re.lastIndex }
    const ws = /[\s,]*/y
    const sp = /\s*/y
    for (;;) {
      skip(ws)
      token.lastIndex = pos
      const scheme = token.exec(v)
      if (scheme === null) break
      pos = token.lastIndex
      const ch: Challenge = { scheme: scheme[0], params: {} }
      out.push(ch)
      for (;;) {
        skip(ws)
        const save = pos
        token.lastIndex = pos
        const name = token.exec(v)
        if (name === null) break
        pos = token.lastIndex
        skip(sp)
        if (v[pos] !== '=') {
          pos = save
          break
        }
        pos++
        skip(sp)
        let value = ''
        if (v[pos] === '"') {
          pos++
          while (pos < v.length && v[pos] !== '"') {
            if (v[pos] === '\\' && pos + 1 < v.length) pos++
            value += v[pos]
            pos++
          }
          pos++
        } else {
          const t = /[^\s,]*/y
          t.lastIndex = pos
          const m = t.exec(v)
          value = m?.[0] ?? ''
          pos = t.lastIndex
        }
        ch.params[name[0].toLowerCase()] = value
      }
    }
  }
  return out
}

function basicHeader(c: RegistryCredentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`
}

function headerString(res: http.IncomingMessage, name: string): string | undefined {
  const v = res.headers[name]
  return Array.isArray(v) ? v[0] : v
}

function contentRangeStart(res: http.IncomingMessage): number | undefined {
  const m = /^bytes\s+(\d+)-\d+\/(?:\d+|\*)$/.exec(headerString(res, 'content-range') ?? '')
  return m?.[1] !== undefined ? Number(m[1]) : undefined
}

function retryAfter(res: http.IncomingMessage): number | undefined {
  const v = headerString(res, 'retry-after')
  if (v === undefined || !/^\d+$/.test(v.trim())) return undefined
  return Math.min(registryRetryAfterMaxMs, Number(v) * 1000)
}

async function readBody(res: http.IncomingMessage, sizeMaxBytes: number, what: string): Promise<Buffer> {
  const len = Number(headerString(res, 'content-length'))
  if (Number.isFinite(len) && len > sizeMaxBytes) {
    res.destroy()
    throw new TessError('TESS_E_INVALID', `cannot read ${what}: ${len} bytes, more than ${sizeMaxBytes}`, 'the registry sent a document too large to be what we asked for')
  }
  const chunks: Buffer[] = []
  let n = 0
  try {
    for await (const c of res as AsyncIterable<Buffer>) {
      n += c.length
      if (n > sizeMaxBytes) {
        res.destroy()
        throw new TessError('TESS_E_INVALID', `cannot read ${what}: more than ${sizeMaxBytes} bytes`, 'the registry sent a document too large to be what we asked for')
      }
      chunks.push(c)
    }
  } catch (e) {
    if (e instanceof TessError) throw e
    throw new TessError('TESS_E_UNREACHABLE', `cannot read ${what}: ${errorMessage(e)}`, 'the connection to the registry broke; try again')
  }
  return Buffer.concat(chunks)
}

/** Error codes of a registry error body `{"errors":[{"code":...}]}` (empty if none). */
async function errorCodes(res: http.IncomingMessage): Promise<string[]> {
  try {
    const body = await readBody(res, errorBodySizeMaxBytes, 'error body')
    const o = JSON.parse(body.toString('utf8')) as { errors?: Array<{ code?: unknown }> }
    return (o.errors ?? []).map((e) => e.code).filter((c): c is string => typeof c === 'string').slice(0, 5)
  } catch {
    return []
  }
}

async function drain(res: http.IncomingMessage): Promise<void> {
  try {
    await readBody(res, errorBodySizeMaxBytes, 'body')
  } catch {
    // ignored: we only empty the socket
  }
}

function errCode(e: unknown): string | undefined {
  return e !== null && typeof e === 'object' && 'code' in e && typeof (e as { code: unknown }).code === 'string' ? (e as { code: string }).code : undefined
}

function isResetLike(e: unknown): boolean {
  return /socket hang up|aborted|premature close/i.test(errorMessage(e))
}

function isAbort(e: unknown, signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true || (e instanceof Error && e.name === 'AbortError')
}
