import net from 'node:net'
import tls from 'node:tls'
import { assert, errorMessage } from '../../lib/errors.js'
import type { Logger } from '../../lib/log.js'
import { TickWriter } from '../../lib/tickwriter.js'
import {
  FrameParser, PeerError, bulkAcceptMagic, bulkHelloMagic, bulkOps, bulkRetryAfterFailureMs, bulkTicketBytes, dataPortModeDefault,
  encodeFrame, ops, peerConnectTimeoutMs, peerDownBackoffMs, peerInFlightMax, peerRequestTimeoutMs, statusOk,
  type DataPortMode, type Frame, type Op, type PeerErrorBody,
} from './protocol.js'

export interface TlsCreds { cert: Buffer, key: Buffer, ca: Buffer }

/**
 * The peer must be the node we meant: its certificate (from the cluster CA, which the TLS layer
 * checks) names the node in its subject CN. Addresses are not checked: a node's address may
 * change, its name and certificate do not. Without this, any node's certificate could answer for
 * any other node.
 */
export function peerIdentityCheck(node: string): (host: string, cert: tls.PeerCertificate) => Error | undefined {
  return (_host, cert) => {
    const cn = cert.subject?.CN
    return cn === node ? undefined : new Error(`the peer's certificate names node "${cn ?? '?'}", not ${node}`)
  }
}

export interface PeerClientOptions {
  /** `crc` (default): extent data over a bulk connection when one can be made; `tls`: everything over TLS */
  mode?: DataPortMode
  log?: Logger
}

interface Pending {
  resolve: (f: Frame) => void
  reject: (e: Error) => void
  /** Date.now() after which it fails with 'timeout' */
  deadline: number
  timeoutMs: number
}

/**
 * How often a channel looks for requests past their deadline: one timer per connection instead of
 * one per request (a timer made and cleared per 4 KiB write was a measurable share of the owner's
 * event loop). A request fails at most this much after its timeout.
 */
const pendingSweepMs = 250

const quiet: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined }

/**
 * One connection to a peer's data port, TLS or bulk, with its requests in flight. When it closes
 * (peer gone, bad frame, checksum mismatch) every request in flight on it fails with
 * PeerError('unreachable').
 */
class Channel {
  readonly pending = new Map<number, Pending>()
  private readonly parser: FrameParser
  private readonly out: TickWriter
  private reason: string | undefined

  private readonly sweep: NodeJS.Timeout

  constructor(readonly sock: net.Socket, readonly bulk: boolean, readonly node: string, onClose: (c: Channel) => void, onAnswer: () => void) {
    this.parser = new FrameParser(bulk)
    // bulk frames (plain TCP) are written by a thread of their own; TLS ones corked per tick
    this.out = new TickWriter(sock, { thread: bulk })
    sock.setNoDelay(true)
    sock.setTimeout(0)
    sock.on('error', (e) => { this.reason ??= e.message })
    this.sweep = setInterval(() => this.expire(Date.now()), pendingSweepMs).unref()
    sock.on('close', () => {
      clearInterval(this.sweep)
      const err = new PeerError('unreachable', `node ${node}: ${bulk ? 'bulk ' : ''}connection closed${this.reason ? ` (${this.reason})` : ''}`)
      for (const [id, p] of this.pending) {
        p.reject(err)
        this.pending.delete(id)
      }
      this.out.close()
      onClose(this)
    })
    sock.on('data', (chunk: Buffer) => {
      let frames: Frame[]
      try {
        frames = this.parser.push(chunk)
      } catch (e) {
        sock.destroy(new Error(`bad frame from ${node}: ${errorMessage(e)}`))
        return
      }
      for (const f of frames) {
        const p = this.pending.get(f.id)
        if (!p) continue // answered after its timeout
        this.pending.delete(f.id)
        p.resolve(f)
        onAnswer()
      }
    })
  }

  get up(): boolean {
    return !this.sock.destroyed
  }

  /** fail the requests past their deadline (the answer, should it come, is dropped) */
  expire(now: number): void {
    for (const [id, p] of this.pending) {
      if (p.deadline > now) continue
      this.pending.delete(id)
      p.reject(new PeerError('timeout', `node ${this.node}: no answer in ${p.timeoutMs} ms`))
    }
  }

  send(id: number, op: Op, json: Record<string, unknown>, data: Buffer | undefined): void {
    const parts = encodeFrame(id, op, json, data, this.bulk)
    this.out.write(parts) // the frames of this tick leave in one write
  }
}

/**
 * A peer CVM's data port, as one client: a multiplexed mutual-TLS connection, opened on demand and
 * again after a failure, and in mode `crc` a bulk connection beside it for the ops that carry
 * extent data (`bulkOps`), opened with a ticket asked for over TLS. If no bulk connection can be
 * made, those ops go over TLS (logged once) and another try follows after `bulkRetryAfterFailureMs`.
 * A refused or broken connection fails every request in flight on it with
 * PeerError('unreachable'); a request without an answer in time fails with 'timeout'.
 */
export class PeerClient {
  private tls: Channel | undefined
  private connecting: Promise<Channel> | undefined
  private bulk: Channel | undefined
  private bulkOpening: Promise<Channel | undefined> | undefined
  private bulkRetryAt = 0
  private bulkFallbackLogged = false
  private bulkLogged = false
  private inFlight = 0
  private nextId = 1
  private waiters: Array<() => void> = []
  private readonly mode: DataPortMode
  private readonly log: Logger

  constructor(readonly node: string, private readonly host: string, private readonly port: number, private readonly creds: TlsCreds, opts: PeerClientOptions = {}) {
    this.mode = opts.mode ?? dataPortModeDefault
    this.log = opts.log ?? quiet
  }

  /** After a failed connect, fail fast until then instead of waiting on a dead host each time. */
  private downUntil = 0

  /** Is the peer believed down (a recent connect failed)? Reads use it to try other replicas first. */
  get suspect(): boolean {
    return Date.now() < this.downUntil
  }

  /** Is a bulk connection up now (tests, diagnostics)? */
  get bulkUp(): boolean {
    return this.bulk?.up ?? false
  }

  private connect(): Promise<Channel> {
    if (this.tls?.up) return Promise.resolve(this.tls)
    if (this.connecting) return this.connecting
    if (Date.now() < this.downUntil) return Promise.reject(new PeerError('unreachable', `node ${this.node} (${this.host}:${this.port}) is down (a connect failed recently)`))
    this.connecting = new Promise<Channel>((resolve, reject) => {
      const s = tls.connect({ host: this.host, port: this.port, cert: this.creds.cert, key: this.creds.key, ca: this.creds.ca, checkServerIdentity: peerIdentityCheck(this.node), timeout: peerConnectTimeoutMs })
      const fail = (e: Error) => {
        s.destroy()
        this.downUntil = Date.now() + peerDownBackoffMs
        reject(new PeerError('unreachable', `node ${this.node} (${this.host}:${this.port}): ${e.message}`))
      }
      s.once('secureConnect', () => {
        s.removeListener('error', fail)
        const ch = new Channel(s, false, this.node, (c) => this.closed(c), () => this.wake())
        this.tls = ch
        resolve(ch)
      })
      s.once('error', fail)
      s.once('timeout', () => fail(new Error('connect timed out')))
    }).finally(() => { this.connecting = undefined })
    return this.connecting
  }

  private closed(c: Channel): void {
    if (this.tls === c) this.tls = undefined
    if (this.bulk === c) this.bulk = undefined
    this.wake()
  }

  /** The channel for a bulk op: the bulk connection (opened if need be) or, failing that, TLS. */
  private async bulkChannel(): Promise<Channel> {
    if (this.mode === 'tls') return this.connect()
    if (this.bulk?.up) return this.bulk
    if (Date.now() < this.bulkRetryAt) return this.connect()
    this.bulkOpening ??= this.openBulk().finally(() => { this.bulkOpening = undefined })
    return (await this.bulkOpening) ?? this.connect()
  }

  /** Ask for a ticket over TLS, connect, say hello, wait for the accept. Undefined: use TLS. */
  private async openBulk(): Promise<Channel | undefined> {
    const control = await this.connect() // a peer that cannot be reached fails the request as before
    try {
      const f = await this.exchange(control, ops.bulkTicket, {}, undefined, peerConnectTimeoutMs)
      if (f.data.length !== bulkTicketBytes) throw new Error(`a ticket of ${f.data.length} bytes`)
      const s = await this.helloBulk(f.data)
      const ch = new Channel(s, true, this.node, (c) => this.closed(c), () => this.wake())
      this.bulk = ch
      // said once per peer (and again after a fallback), not at every reconnect after an idle close
      if (!this.bulkLogged || this.bulkFallbackLogged) this.log.info(`data port: bulk connection to node ${this.node} (${this.host}:${this.port}) is up${this.bulkFallbackLogged ? ' again' : ''}`)
      this.bulkLogged = true
      this.bulkFallbackLogged = false
      return ch
    } catch (e) {
      // the TLS connection broke too: the peer is going away, not a bulk problem (no backoff)
      if (!control.up) return undefined
      this.bulkRetryAt = Date.now() + bulkRetryAfterFailureMs
      if (!this.bulkFallbackLogged) {
        this.bulkFallbackLogged = true
        this.log.warn(`data port: no bulk connection to node ${this.node} (${this.host}:${this.port}): ${errorMessage(e)}; its extent data goes over TLS, next try in ${bulkRetryAfterFailureMs / 1000} s`)
      }
      return undefined
    }
  }

  private helloBulk(ticket: Buffer): Promise<net.Socket> {
    return new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect({ host: this.host, port: this.port })
      let got: Buffer = Buffer.alloc(0)
      const done = (e?: Error) => {
        clearTimeout(timer)
        s.removeListener('error', done)
        s.removeListener('close', onClose)
        s.removeListener('data', onData)
        if (e) {
          s.destroy()
          reject(e)
        } else {
          resolve(s)
        }
      }
      const onClose = () => done(new Error('the peer closed the bulk connection (ticket refused?)'))
      const onData = (chunk: Buffer) => {
        got = Buffer.concat([got, chunk])
        if (got.length < bulkAcceptMagic.length) return
        // the peer sends nothing else before a request
        if (got.length > bulkAcceptMagic.length || !got.equals(bulkAcceptMagic)) done(new Error('unexpected answer to the bulk hello'))
        else done()
      }
      const timer = setTimeout(() => done(new Error(`no answer to the bulk hello in ${peerConnectTimeoutMs} ms`)), peerConnectTimeoutMs)
      s.on('error', done)
      s.on('close', onClose)
      s.on('data', onData)
      s.once('connect', () => {
        s.setNoDelay(true)
        s.write(Buffer.concat([bulkHelloMagic, ticket]))
      })
    })
  }

  private wake(): void {
    while (this.inFlight < peerInFlightMax && this.waiters.length > 0) this.waiters.shift()!()
  }

  async request(op: Op, json: Record<string, unknown>, data?: Buffer, timeoutMs = peerRequestTimeoutMs): Promise<Frame> {
    while (this.inFlight >= peerInFlightMax) await new Promise<void>((r) => this.waiters.push(r))
    this.inFlight++
    try {
      // a channel that is up is used without a turn of the event loop
      const ch = bulkOps.has(op)
        ? (this.mode !== 'tls' && this.bulk?.up === true ? this.bulk : await this.bulkChannel())
        : (this.tls?.up === true ? this.tls : await this.connect())
      return await this.exchange(ch, op, json, data, timeoutMs)
    } finally {
      this.inFlight--
      this.wake()
    }
  }

  /** One request on one channel (not counted against `peerInFlightMax`: the caller did). */
  private async exchange(ch: Channel, op: Op, json: Record<string, unknown>, data: Buffer | undefined, timeoutMs: number): Promise<Frame> {
    const id = this.nextId
    this.nextId = this.nextId >= 0xfffffff0 ? 1 : this.nextId + 1
    const frame = await new Promise<Frame>((resolve, reject) => {
      if (!ch.up) {
        reject(new PeerError('unreachable', `node ${this.node}: connection closed`))
        return
      }
      // ids are unique per channel while in flight: an answer must find exactly its request
      assert(!ch.pending.has(id), `data port request id ${id} is not in flight twice`)
      ch.pending.set(id, { resolve, reject, deadline: Date.now() + timeoutMs, timeoutMs })
      ch.send(id, op, json, data)
    })
    if (frame.code !== statusOk) {
      const body = frame.json as unknown as PeerErrorBody
      throw new PeerError(body.kind ?? 'internal', `node ${this.node}: ${body.message ?? 'error'}`, body.errno)
    }
    return frame
  }

  close(): void {
    this.bulk?.sock.destroy()
    this.bulk = undefined
    this.tls?.sock.destroy()
    this.tls = undefined
  }
}

/** One client per peer node, made on first use. */
export class PeerPool {
  private readonly clients = new Map<string, PeerClient>()

  constructor(private readonly creds: TlsCreds, private readonly resolve: (node: string) => Promise<{ address: string, dataPort: number }>, private readonly opts: PeerClientOptions = {}) {}

  /** Is this node believed down right now (a connect to it failed moments ago)? */
  suspect(node: string): boolean {
    return this.clients.get(node)?.suspect ?? false
  }

  /** the client of a node, if one was made (callers fall back to get) */
  peek(node: string): PeerClient | undefined {
    return this.clients.get(node)
  }

  async get(node: string): Promise<PeerClient> {
    let c = this.clients.get(node)
    if (!c) {
      const { address, dataPort } = await this.resolve(node)
      c = this.clients.get(node) ?? new PeerClient(node, address, dataPort, this.creds, this.opts)
      this.clients.set(node, c)
    }
    return c
  }

  closeAll(): void {
    for (const c of this.clients.values()) c.close()
    this.clients.clear()
  }
}
