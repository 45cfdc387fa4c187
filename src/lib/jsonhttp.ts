import http from 'node:http'
import https from 'node:https'
import { TessError } from './errors.js'

/** how long a TCP connection to another daemon may take (a node whose link is down never answers a SYN) */
export const jsonConnectTimeoutMs = 3000

/** Most bytes of a JSON answer a daemon reads from another daemon. */
export const jsonAnswerSizeMaxBytes = 64 * 1024 * 1024

export interface JsonTarget {
  /** `https://host:port` (with `ca`, and `token` or `cert` and `key`), or a unix socket path */
  endpoint: string
  ca?: Buffer
  token?: string
  /** a client certificate and its key (a CVM calling another: its node certificate) */
  cert?: Buffer
  key?: Buffer
  /** what to call the other end in errors ("CSM web", "the CVM of node2") */
  what: string
}

/**
 * The JSON answer of `what` with HTTP status `status`: the parsed body, or the TessError its error
 * body carries (a status of 400 and up); a body that is not JSON is TESS_E_INTERNAL with `hint`.
 */
export function jsonAnswer<T>(status: number | undefined, body: Buffer, what: string, hint: string): T {
  const text = body.toString('utf8')
  let parsed: unknown
  try {
    parsed = text ? JSON.parse(text) : {}
  } catch {
    throw new TessError('TESS_E_INTERNAL', `${what} answered ${status} with a body that is not JSON`, hint)
  }
  if ((status ?? 500) >= 400) throw TessError.fromBody(parsed, `${what} answered ${status}`)
  return parsed as T
}

/**
 * One JSON request between daemons: to another CVM's API (HTTPS, CA pinned, node certificate) or to a
 * CSM daemon's unix socket. A TessError body from the other end is re-thrown as it is; a
 * connection failure is TESS_E_UNREACHABLE, a timeout TESS_E_TIMEOUT.
 */
export function jsonRequest<T>(t: JsonTarget, method: string, path: string, body: unknown, timeoutMs: number): Promise<T> {
  const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body))
  const unix = !t.endpoint.startsWith('https://')
  const headers = {
    accept: 'application/json',
    ...(t.token !== undefined ? { authorization: `Bearer ${t.token}` } : {}),
    ...(data ? { 'content-type': 'application/json', 'content-length': data.length } : {}),
  }
  return new Promise<T>((resolve, reject) => {
    const onRes = (res: http.IncomingMessage) => {
      const chunks: Buffer[] = []
      let size = 0
      res.on('data', (c: Buffer) => {
        size += c.length
        if (size > jsonAnswerSizeMaxBytes) {
          req.destroy()
          reject(new TessError('TESS_E_IO', `${t.what} answered more than ${jsonAnswerSizeMaxBytes} bytes`, 'this is a bug: report it'))
          return
        }
        chunks.push(c)
      })
      res.on('error', reject)
      res.on('end', () => {
        try {
          resolve(jsonAnswer<T>(res.statusCode, Buffer.concat(chunks), t.what, 'see its log'))
        } catch (e) {
          reject(e)
        }
      })
    }
    const req = unix
      ? http.request({ socketPath: t.endpoint, path, method, headers, timeout: timeoutMs, agent: false }, onRes)
      : https.request(new URL(path, t.endpoint), { method, headers, timeout: timeoutMs, agent: false, ...(t.ca !== undefined ? { ca: t.ca } : {}), ...(t.cert !== undefined && t.key !== undefined ? { cert: t.cert, key: t.key } : {}) }, onRes)
    req.on('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })))
    if (!unix) {
      req.on('socket', (sock) => {
        if (!sock.connecting) return
        const t = setTimeout(() => req.destroy(Object.assign(new Error(`no connection within ${jsonConnectTimeoutMs} ms`), { code: 'ECONNTIMEOUT' })), jsonConnectTimeoutMs)
        sock.once('connect', () => clearTimeout(t))
        sock.once('close', () => clearTimeout(t))
      })
    }
    req.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ETIMEDOUT') reject(new TessError('TESS_E_TIMEOUT', `${t.what} did not answer ${method} ${path} within ${timeoutMs} ms`, 'see its log'))
      else reject(new TessError('TESS_E_UNREACHABLE', `cannot reach ${t.what}: ${e.message}`, 'is it running? see `tess cluster status` and the node\'s logs'))
    })
    req.end(data)
  })
}
