import fs from 'node:fs'
import https from 'node:https'
import { TessError, errorMessage } from './errors.js'
import { jsonAnswer } from './jsonhttp.js'
import { apiClientTimeoutMs, apiConnectTimeoutMs } from './limits.js'
import type { ClusterContext } from './contexts.js'

/** How long to keep retrying a refused connection (a CVM being restarted by its supervisor). */
const connectRetryMs = 15_000
/** the error code of an endpoint whose TLS handshake did not complete within apiConnectTimeoutMs */
const notConnected = 'ETESSNOTCONNECTED'

export interface RequestOptions {
  /** keep retrying connection refusals for this long (default connectRetryMs) */
  retryMs?: number
  /** how long the answer may take (socket idle time); default apiClientTimeoutMs */
  timeoutMs?: number
}

/**
 * The management API client. Pins the cluster CA from the context (no system CAs), sends the
 * bearer token, and turns every failure into a TessError with a code.
 */
export class ApiClient {
  constructor(private readonly ctx: Pick<ClusterContext, 'endpoints' | 'caCert' | 'token' | 'name'>) {}

  get<T>(path: string, opts?: RequestOptions): Promise<T> {
    return this.request<T>('GET', path, undefined, opts)
  }

  post<T>(path: string, body: unknown, opts?: RequestOptions): Promise<T> {
    return this.request<T>('POST', path, body, opts)
  }

  patch<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>('PATCH', path, body)
  }

  delete<T>(path: string, opts?: RequestOptions): Promise<T> {
    return this.request<T>('DELETE', path, undefined, opts)
  }

  /**
   * GET a file answer (application/octet-stream) into `file` (created with mode 0600, replaced if
   * there); an error answer is JSON and thrown as for any request. Returns the bytes written.
   */
  download(path: string, file: string, opts?: RequestOptions): Promise<number> {
    return this.request<number>('GET', path, undefined, opts, file)
  }

  async request<T>(method: string, path: string, body: unknown, opts: RequestOptions = {}, file?: string): Promise<T> {
    const deadline = Date.now() + (opts.retryMs ?? connectRetryMs)
    let lastErr: unknown
    for (;;) {
      for (const endpoint of this.ctx.endpoints) {
        try {
          return await this.once<T>(endpoint, method, path, body, opts.timeoutMs ?? apiClientTimeoutMs, file)
        } catch (e) {
          if (e instanceof TessError) throw e
          lastErr = e
          const code = (e as NodeJS.ErrnoException).code
          // Only a connection that was refused or never made is safe to retry for any method: nothing was sent.
          if (code !== 'ECONNREFUSED' && code !== 'EHOSTUNREACH' && code !== 'ENETUNREACH' && code !== notConnected) {
            throw this.unreachable(endpoint, e)
          }
        }
      }
      if (Date.now() >= deadline) throw this.unreachable(this.ctx.endpoints.join(', '), lastErr)
      await new Promise((r) => setTimeout(r, 200))
    }
  }

  private unreachable(endpoint: string, e: unknown): TessError {
    const code = (e as NodeJS.ErrnoException | undefined)?.code
    if (code === 'ETIMEDOUT' || code === 'ESOCKETTIMEDOUT') {
      return new TessError('TESS_E_TIMEOUT', `cluster "${this.ctx.name}": the API at ${endpoint} did not answer in time`, 'check `tess cluster status` and the CVM log')
    }
    if (code && /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS/.test(code)) {
      return new TessError('TESS_E_AUTH', `cluster "${this.ctx.name}": the API at ${endpoint} presented a certificate not signed by the cluster CA (${code})`, 'the saved context belongs to another cluster, or the endpoint was taken over')
    }
    return new TessError('TESS_E_UNREACHABLE', `cluster "${this.ctx.name}": cannot reach the API at ${endpoint}: ${errorMessage(e)}`,
      'is the cluster running? `tess cluster status`; for a local cluster, see the logs in <data-dir>/logs')
  }

  private once<T>(endpoint: string, method: string, path: string, body: unknown, timeoutMs: number, file?: string): Promise<T> {
    const url = new URL(path, endpoint)
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body))
    return new Promise<T>((resolve, reject) => {
      const req = https.request(url, {
        method,
        ca: this.ctx.caCert,
        agent: false,
        timeout: timeoutMs,
        headers: {
          authorization: `Bearer ${this.ctx.token}`,
          accept: 'application/json',
          ...(data ? { 'content-type': 'application/json', 'content-length': data.length } : {}),
        },
      }, (res) => {
        if (file !== undefined && res.statusCode === 200 && res.headers['content-type'] === 'application/octet-stream') {
          const out = fs.createWriteStream(file, { mode: 0o600 })
          let bytes = 0
          res.on('data', (c: Buffer) => { bytes += c.length })
          res.on('error', (e) => out.destroy(e))
          res.on('aborted', () => out.destroy(new Error('the answer was cut short')))
          out.on('error', (e) => {
            res.destroy()
            reject(e instanceof TessError ? e : new TessError('TESS_E_IO', `cannot write ${file}: ${errorMessage(e)}`, 'check the path and the free space'))
          })
          out.on('finish', () => {
            const want = Number(res.headers['content-length'])
            if (Number.isFinite(want) && bytes !== want) reject(new TessError('TESS_E_IO', `the answer from ${endpoint} was cut short: ${bytes} of ${want} bytes`, 'run the command again'))
            else resolve(bytes as T)
          })
          res.pipe(out)
          return
        }
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('error', reject)
        res.on('end', () => {
          try {
            resolve(jsonAnswer<T>(res.statusCode, Buffer.concat(chunks), 'the API', 'is the endpoint a Tessera CVM?'))
          } catch (e) {
            reject(e)
          }
        })
      })
      req.on('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })))
      // a handshake that does not complete in time: the request was never sent (the next endpoint may answer)
      let connected = false
      const connectTimer = setTimeout(() => {
        if (!connected) req.destroy(Object.assign(new Error(`no TLS connection within ${apiConnectTimeoutMs / 1000} s`), { code: notConnected }))
      }, Math.min(apiConnectTimeoutMs, timeoutMs))
      req.on('socket', (s) => s.once('secureConnect', () => { connected = true }))
      req.on('close', () => clearTimeout(connectTimer))
      req.on('error', reject)
      req.end(data)
    })
  }
}
