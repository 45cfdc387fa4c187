import tls from 'node:tls'
import { errorMessage } from '../../common/errors.js'
import { FrameParser, PeerError, encodeFrame, peerConnectTimeoutMs, peerDownBackoffMs, peerInFlightMax, peerRequestTimeoutMs, statusOk, type Frame, type Op, type PeerErrorBody } from './protocol.js'

export interface TlsCreds { cert: Buffer, key: Buffer, ca: Buffer }

interface Pending {
  resolve: (f: Frame) => void
  reject: (e: Error) => void
  timer: NodeJS.Timeout
}

/**
 * One multiplexed mutual-TLS connection to a peer CVM's data port, opened on demand and again
 * after a failure. A refused or broken connection fails every request in flight with
 * PeerError('unreachable'); a request without an answer in time fails with 'timeout'.
 */
export class PeerClient {
  private sock: tls.TLSSocket | undefined
  private connecting: Promise<tls.TLSSocket> | undefined
  private readonly pending = new Map<number, Pending>()
  private nextId = 1
  private waiters: Array<() => void> = []

  constructor(readonly node: string, private readonly host: string, private readonly port: number, private readonly creds: TlsCreds) {}

  /** After a failed connect, fail fast until then instead of waiting on a dead host each time. */
  private downUntil = 0

  /** Is the peer believed down (a recent connect failed)? Reads use it to try other replicas first. */
  get suspect(): boolean {
    return Date.now() < this.downUntil
  }

  private connect(): Promise<tls.TLSSocket> {
    if (this.sock && !this.sock.destroyed) return Promise.resolve(this.sock)
    if (this.connecting) return this.connecting
    if (Date.now() < this.downUntil) return Promise.reject(new PeerError('unreachable', `node ${this.node} (${this.host}:${this.port}) is down (a connect failed recently)`))
    this.connecting = new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({ host: this.host, port: this.port, cert: this.creds.cert, key: this.creds.key, ca: this.creds.ca, checkServerIdentity: () => undefined, timeout: peerConnectTimeoutMs })
      const parser = new FrameParser()
      const fail = (e: Error) => {
        s.destroy()
        this.downUntil = Date.now() + peerDownBackoffMs
        reject(new PeerError('unreachable', `node ${this.node} (${this.host}:${this.port}): ${e.message}`))
      }
      s.once('secureConnect', () => {
        s.removeListener('error', fail)
        s.setNoDelay(true)
        s.setTimeout(0)
        this.sock = s
        s.on('error', () => { /* handled on close */ })
        s.on('close', () => {
          if (this.sock === s) this.sock = undefined
          const err = new PeerError('unreachable', `node ${this.node}: connection closed`)
          for (const [id, p] of this.pending) {
            clearTimeout(p.timer)
            p.reject(err)
            this.pending.delete(id)
          }
          this.wake()
        })
        s.on('data', (chunk: Buffer) => {
          let frames: Frame[]
          try {
            frames = parser.push(chunk)
          } catch (e) {
            s.destroy(new Error(`bad frame from ${this.node}: ${errorMessage(e)}`))
            return
          }
          for (const f of frames) {
            const p = this.pending.get(f.id)
            if (!p) continue // answered after its timeout
            this.pending.delete(f.id)
            clearTimeout(p.timer)
            p.resolve(f)
            this.wake()
          }
        })
        resolve(s)
      })
      s.once('error', fail)
      s.once('timeout', () => fail(new Error('connect timed out')))
    }).finally(() => { this.connecting = undefined })
    return this.connecting
  }

  private wake(): void {
    while (this.pending.size < peerInFlightMax && this.waiters.length > 0) this.waiters.shift()!()
  }

  async request(op: Op, json: Record<string, unknown>, data?: Buffer, timeoutMs = peerRequestTimeoutMs): Promise<Frame> {
    while (this.pending.size >= peerInFlightMax) await new Promise<void>((r) => this.waiters.push(r))
    const s = await this.connect()
    const id = this.nextId
    this.nextId = this.nextId >= 0xfffffff0 ? 1 : this.nextId + 1
    const frame = await new Promise<Frame>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(new PeerError('timeout', `node ${this.node}: no answer in ${timeoutMs} ms`))
        this.wake()
      }, timeoutMs)
      this.pending.set(id, { resolve, reject, timer })
      const parts = encodeFrame(id, op, json, data)
      s.cork()
      for (const p of parts) s.write(p)
      s.uncork()
    })
    if (frame.code !== statusOk) {
      const body = frame.json as unknown as PeerErrorBody
      throw new PeerError(body.kind ?? 'internal', `node ${this.node}: ${body.message ?? 'error'}`, body.errno)
    }
    return frame
  }

  close(): void {
    this.sock?.destroy()
    this.sock = undefined
  }
}

/** One client per peer node, made on first use. */
export class PeerPool {
  private readonly clients = new Map<string, PeerClient>()

  constructor(private readonly creds: TlsCreds, private readonly resolve: (node: string) => Promise<{ address: string, dataPort: number }>) {}

  /** Is this node believed down right now (a connect to it failed moments ago)? */
  suspect(node: string): boolean {
    return this.clients.get(node)?.suspect ?? false
  }

  async get(node: string): Promise<PeerClient> {
    let c = this.clients.get(node)
    if (!c) {
      const { address, dataPort } = await this.resolve(node)
      c = this.clients.get(node) ?? new PeerClient(node, address, dataPort, this.creds)
      this.clients.set(node, c)
    }
    return c
  }

  closeAll(): void {
    for (const c of this.clients.values()) c.close()
    this.clients.clear()
  }
}
