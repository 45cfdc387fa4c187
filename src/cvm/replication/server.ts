import crypto from 'node:crypto'
import net from 'node:net'
import tls from 'node:tls'
import { TessError, errorMessage } from '../../lib/errors.js'
import type { Logger } from '../../lib/log.js'
import { BufferPool } from '../../lib/bufpool.js'
import { allocAligned } from '../../lib/nativeio.js'
import { withReceiveBuffer } from '../../lib/recvbuffer.js'
import { DeviceError, nbdErrno } from '../nbd/device.js'
import { ChecksumError, egroupVersionsKnown } from '../vdisk/egroup.js'
import { NotOpenError, type ReplicaStore } from '../vdisk/replicastore.js'
import type { PeerPool, TlsCreds } from './client.js'
import { egroupCopyInFlightMax, egroupPullTimeoutMs, extentsPerEgroup, vBlockSizeBytes } from '../../lib/limits.js'
import { TickWriter } from '../../lib/tickwriter.js'
import { protocolVersionOldest } from '../../lib/version.js'
import {
  FrameParser, PeerError, bulkAcceptMagic, bulkConnectionsPerPeerMax, bulkHelloBytes, bulkHelloMagic, bulkOps, bulkTicketBytes,
  bulkTicketTtlMs, bulkTicketsPendingMax, bulkTicketsPendingPerPeerMax, dataPortConnectionsMax, dataPortHelloTimeoutMs,
  dataPortIdleTimeoutMs, dataPortModeDefault, dataPortUnauthenticatedMax, encodeFrame, num, ops, peerInFlightMax, statusError,
  statusOk, text, tlsHandshakeRecordType, type DataPortMode, type Frame, type PeerErrorBody,
} from './protocol.js'

/** Forwarded vDisk I/O (a non-owner relays NBD requests to the owner). */
export interface VdiskIoHandler {
  /** `vdiskId`: the id of the vDisk the forwarder's client opened (absent from older forwarders) */
  io(name: string, op: string, offset: number, length: number, flags: { fua: boolean, noHole: boolean }, data: Buffer, vdiskId?: string): Promise<Buffer | undefined>
  /** move every replica of the vDisk off a node (this CVM owns the vDisk) */
  evacuate(name: string, node: string): Promise<number>
}

const checksumEntriesBytes = 2048
/** each bulk connection reads into a buffer of this size that it reuses */
const dataPortReceiveBufferBytes = 256 * 1024
/** the rest of a bulk frame's data at least this large is read from the socket straight into its block */
const dataPortDirectReceiveMinBytes = 64 * 1024
/** idle pooled frame bodies kept per data server */
const dataPortPoolIdleMaxBytes = 64 * 1024 * 1024
/** refused strangers are summed up in one log line at most this often */
const dropLogIntervalMs = 60_000

export interface DataServerOptions {
  creds: TlsCreds
  store: ReplicaStore
  vdisks: VdiskIoHandler
  log: Logger
  /** `tls`: no bulk tickets, no bulk connections (default `crc`: both accepted) */
  mode?: DataPortMode
  /** milliseconds since the epoch (tests move it to expire tickets) */
  clock?: () => number
  /** ticket bytes */
  random?: (bytes: number) => Buffer
  /** default `dataPortHelloTimeoutMs` (tests shorten it) */
  helloTimeoutMs?: number
  /** this node's connections to the other nodes' data ports: without them, `egPull` is refused */
  peers?: PeerPool
}

/** A connection that got in: which peer (the CN of its cluster certificate) and of which kind. */
interface Session {
  peer: string
  address: string
  bulk: boolean
}

interface Ticket {
  value: Buffer
  peer: string
  address: string
  expiresAt: number
}

/**
 * The data port: serves this node's extent group replicas to owners on other nodes, and vDisk I/O
 * forwarded by non-owners. One listener; the first byte of a connection says its kind:
 *
 * - a TLS handshake: mutual TLS, only holders of a cluster certificate get in; every op;
 * - a bulk hello (mode `crc`): the magic and a ticket that a TLS connection of the same peer asked
 *   for (single use, expires in `bulkTicketTtlMs`, from the same address); only the ops that carry
 *   extent data, every frame with CRC-32C checksums;
 * - anything else, or no hello in `dataPortHelloTimeoutMs`: dropped.
 *
 * A malformed frame, a checksum mismatch or a refused hello drops that connection only.
 */
export class DataServer {
  private server: net.Server | undefined
  private tlsServer: tls.Server | undefined
  private readonly sockets = new Set<net.Socket>()
  private readonly tickets: Ticket[] = []
  private readonly bulkPerPeer = new Map<string, number>()
  private unauthenticated = 0
  private readonly bulkEnabled: boolean
  private readonly clock: () => number
  private readonly random: (bytes: number) => Buffer
  private readonly helloTimeoutMs: number
  private drops = { count: 0, loggedAt: 0, last: '' }
  /** where frame bodies are assembled (replica writes of up to 1 MiB) */
  private readonly pool = new BufferPool(dataPortPoolIdleMaxBytes, 4096, allocAligned)

  constructor(private readonly opts: DataServerOptions) {
    this.bulkEnabled = (opts.mode ?? dataPortModeDefault) === 'crc'
    this.clock = opts.clock ?? Date.now
    this.random = opts.random ?? ((n) => crypto.randomBytes(n))
    this.helloTimeoutMs = opts.helloTimeoutMs ?? dataPortHelloTimeoutMs
  }

  /** The node's credentials changed (the object in opts.creds): handshakes from now on use them. */
  setCredentials(): void {
    this.tlsServer?.setSecureContext({ ...this.opts.creds })
  }

  listen(port: number, host: string): Promise<void> {
    // never listens itself: the data port hands it the connections that start a TLS handshake
    this.tlsServer = tls.createServer({ ...this.opts.creds, requestCert: true, rejectUnauthorized: true, handshakeTimeout: this.helloTimeoutMs }, (s) => this.serveTls(s))
    // a failed or stalled handshake: not one of ours (Node leaves a timed-out one open otherwise)
    this.tlsServer.on('tlsClientError', (_e, s) => s.destroy())
    this.server = net.createServer((s) => this.accept(s))
    this.server.maxConnections = dataPortConnectionsMax
    return new Promise((resolve, reject) => {
      this.server!.once('error', reject)
      this.server!.listen(port, host, () => resolve())
    })
  }

  /** where it listens (port 0 in tests picks one) */
  address(): net.AddressInfo {
    return this.server!.address() as net.AddressInfo
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy()
    return new Promise((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()))
  }

  /** Bulk connections open now, by peer (tests, diagnostics). */
  bulkConnections(): Map<string, number> {
    return new Map(this.bulkPerPeer)
  }

  /** A new connection: read its first bytes, then hand it to TLS or check its bulk hello. */
  private accept(raw: net.Socket): void {
    if (this.unauthenticated >= dataPortUnauthenticatedMax) {
      this.dropped(raw, 'too many connections without a handshake')
      return
    }
    this.unauthenticated++
    let counted = true
    const release = () => {
      if (!counted) return
      counted = false
      this.unauthenticated--
    }
    this.sockets.add(raw)
    const timer = setTimeout(() => this.dropped(raw, 'no handshake or hello in time'), this.helloTimeoutMs)
    raw.on('error', () => undefined)
    raw.on('close', () => {
      clearTimeout(timer)
      release()
      this.sockets.delete(raw)
    })
    let head: Buffer = Buffer.alloc(0)
    const onData = (chunk: Buffer) => {
      if (head.length === 0 && chunk[0] === tlsHandshakeRecordType) {
        raw.removeListener('data', onData)
        raw.pause()
        raw.unshift(chunk)
        clearTimeout(timer)
        // From here the TLS server's handshake timeout bounds it. Its socket is not ours to map
        // back, so the slot is given back when the handshake could at the latest have ended.
        setTimeout(release, this.helloTimeoutMs).unref()
        this.tlsServer!.emit('connection', raw)
        return
      }
      head = head.length === 0 ? chunk : Buffer.concat([head, chunk])
      const n = Math.min(head.length, bulkHelloMagic.length)
      if (!head.subarray(0, n).equals(bulkHelloMagic.subarray(0, n))) return this.dropped(raw, 'neither TLS nor a bulk hello', timer)
      if (!this.bulkEnabled) return this.dropped(raw, 'a bulk hello, but this node is in data port mode tls', timer)
      if (head.length < bulkHelloBytes) return
      // the client waits for the accept before it sends frames
      if (head.length > bulkHelloBytes) return this.dropped(raw, 'bytes after the bulk hello', timer)
      raw.removeListener('data', onData)
      clearTimeout(timer)
      const redeemed = this.redeem(head.subarray(bulkHelloMagic.length), raw.remoteAddress ?? '')
      if (typeof redeemed === 'string') return this.dropped(raw, redeemed)
      const open = this.bulkPerPeer.get(redeemed.peer) ?? 0
      if (open >= bulkConnectionsPerPeerMax) return this.dropped(raw, `node ${redeemed.peer} has ${open} bulk connections already`)
      release()
      this.bulkPerPeer.set(redeemed.peer, open + 1)
      this.serveBulk(raw, { peer: redeemed.peer, address: redeemed.address, bulk: true })
    }
    raw.on('data', onData)
  }

  /** A stranger, garbage or a refused hello: close it; say so in the log at most once a minute. */
  private dropped(s: net.Socket, why: string, timer?: NodeJS.Timeout): void {
    if (timer) clearTimeout(timer)
    s.destroy()
    this.drops.count++
    this.drops.last = `${s.remoteAddress ?? '?'}: ${why}`
    const now = Date.now()
    if (now - this.drops.loggedAt >= dropLogIntervalMs) {
      this.opts.log.warn(`data port: refused ${this.drops.count} connection(s) since the last report (last ${this.drops.last})`)
      this.drops = { count: 0, loggedAt: now, last: '' }
    }
  }

  private serveTls(s: tls.TLSSocket): void {
    this.sockets.add(s)
    s.on('close', () => this.sockets.delete(s))
    const cert = s.getPeerCertificate()
    const cn = cert.subject?.CN
    const peer = (Array.isArray(cn) ? cn[0] : cn) ?? cert.fingerprint256
    this.serve(s, { peer, address: s.remoteAddress ?? '', bulk: false })
  }

  /** A ticket for one bulk connection of this peer, from this address. */
  private issueTicket(session: Session): Buffer {
    if (!this.bulkEnabled) throw new PeerError('invalid', 'no bulk connections to this node: its data port mode is tls')
    const now = this.clock()
    this.expireTickets(now)
    const mine = this.tickets.filter((t) => t.peer === session.peer).length
    if (mine >= bulkTicketsPendingPerPeerMax || this.tickets.length >= bulkTicketsPendingMax) {
      throw new PeerError('invalid', `too many bulk tickets pending (${mine} of node ${session.peer}, ${this.tickets.length} in all)`)
    }
    const value = this.random(bulkTicketBytes)
    if (value.length !== bulkTicketBytes) throw new Error(`assertion failed: a ticket has ${bulkTicketBytes} bytes, got ${value.length}`)
    this.tickets.push({ value, peer: session.peer, address: session.address, expiresAt: now + bulkTicketTtlMs })
    return value
  }

  private expireTickets(now: number): void {
    for (let i = this.tickets.length - 1; i >= 0; i--) if (this.tickets[i]!.expiresAt <= now) this.tickets.splice(i, 1)
  }

  /**
   * Use up a ticket: the peer it was issued to, or why not. Every pending ticket is compared in
   * constant time (no early exit); a matching one is gone after this, even when refused.
   */
  private redeem(value: Buffer, address: string): { peer: string, address: string } | string {
    let found = -1
    for (let i = 0; i < this.tickets.length; i++) {
      if (crypto.timingSafeEqual(this.tickets[i]!.value, value) && found < 0) found = i
    }
    if (found < 0) return 'unknown or used bulk ticket'
    const t = this.tickets[found]!
    this.tickets.splice(found, 1)
    if (t.expiresAt <= this.clock()) return `expired bulk ticket of node ${t.peer}`
    if (t.address !== address) return `bulk ticket of node ${t.peer} (issued to ${t.address})`
    return { peer: t.peer, address }
  }

  /**
   * A bulk connection carries extent data at disk speed: it reads into one receive buffer of its
   * own (no fresh buffer per socket read), and frame bodies are assembled in pooled blocks.
   */
  private serveBulk(raw: net.Socket, session: Session): void {
    // the peer sends no frame before it has our accept, so nothing was read past the hello
    raw.pause()
    let received: (view: Buffer, into: 'buffer' | 'nextInto') => void = () => undefined
    const parser = new FrameParser(true, this.pool)
    const own = raw.readableLength === 0
      ? withReceiveBuffer(raw, Buffer.allocUnsafe(dataPortReceiveBufferBytes), (view, into) => received(view, into), {
        allowHalfOpen: false,
        // the rest of a large frame's data is read straight into its block
        nextInto: () => parser.dataRest(dataPortDirectReceiveMinBytes),
      })
      : undefined
    const s = own ?? raw
    if (own !== undefined) {
      // the handle moved to `own` (`raw` is closed): it is tracked in its place
      this.sockets.add(own)
      own.on('close', () => this.sockets.delete(own))
    }
    s.on('close', () => {
      const left = (this.bulkPerPeer.get(session.peer) ?? 1) - 1
      if (left > 0) this.bulkPerPeer.set(session.peer, left)
      else this.bulkPerPeer.delete(session.peer)
    })
    s.write(bulkAcceptMagic)
    if (own === undefined) {
      this.serve(raw, session, parser)
      raw.resume()
    } else {
      this.serve(own, session, parser, (on) => (received = on))
    }
  }

  private serve(
    s: net.Socket,
    session: Session,
    parser = new FrameParser(session.bulk, this.pool),
    onBytes: (on: (chunk: Buffer, into: 'buffer' | 'nextInto') => void) => void = (on) => s.on('data', (chunk: Buffer) => on(chunk, 'buffer')),
  ): void {
    s.setNoDelay(true)
    // replies on a bulk connection (plain TCP) are written by a thread of their own; TLS ones corked per tick
    const out = new TickWriter(s, { thread: session.bulk })
    s.on('close', () => out.close())
    let inFlight = 0
    // A peer that goes quiet (or never finishes a frame) is dropped when nothing of its is being
    // served (a long evacuation is); owners reconnect on demand.
    s.setTimeout(dataPortIdleTimeoutMs, () => {
      if (inFlight === 0) s.destroy()
    })
    s.on('error', () => undefined)
    onBytes((chunk: Buffer, into: 'buffer' | 'nextInto') => {
      if (s.destroyed) return
      let frames: Frame[]
      try {
        frames = into === 'nextInto' ? parser.receivedData(chunk.length) : parser.push(chunk)
      } catch (e) {
        this.opts.log.warn(`data port: dropping ${session.bulk ? 'bulk' : 'TLS'} connection of node ${session.peer} (${s.remoteAddress}): ${errorMessage(e)}`)
        s.destroy()
        return
      }
      for (const f of frames) {
        inFlight++
        if (inFlight >= peerInFlightMax) s.pause()
        void this.handle(f, session).then(
          ({ json, data }) => {
            // the store is done with the frame's data once the op resolved
            f.release()
            this.reply(s, out, session, f.id, statusOk, json, data)
          },
          (e: unknown) => this.reply(s, out, session, f.id, statusError, errorBody(e, this.opts.log)),
        ).finally(() => {
          inFlight--
          if (inFlight < peerInFlightMax && s.isPaused()) s.resume()
        })
      }
    })
  }

  private reply(s: net.Socket, out: TickWriter, session: Session, id: number, status: number, json: unknown, data?: Buffer): void {
    if (s.destroyed) return
    out.write(encodeFrame(id, status, json, data, session.bulk)) // the replies of this tick leave in one write
  }

  /**
   * egPull: every slot of the group that holds data, read raw from its replica on `from`'s node
   * (up to egroupCopyInFlightMax at once) and written into the replica here, which the owner has
   * opened (the group is under its exclusive lock: nothing else changes it meanwhile). Each slot is
   * checked as an egWriteRaw from the owner would be. The number of slots copied.
   *
   * The answer comes only once every worker has stopped, failure or not: the owner copies through
   * itself after a failed pull and then lets client writes at the group again, so nothing of this
   * copy may land after the answer (a late write of a slot would put back older bytes). For the
   * same reason the pull gives up at half the owner's wait, so its answer comes first.
   */
  private async pull(j: Record<string, unknown>): Promise<number> {
    const peers = this.opts.peers
    if (peers === undefined) throw new PeerError('invalid', 'this node does not copy from other nodes')
    const from = pullSource(j)
    const egid = text(j, 'egid')
    const vdiskId = text(j, 'vdiskId')
    const target = await this.opts.store.get(egid, text(j, 'diskId'))
    const source = await peers.get(from.node)
    const deadline = Date.now() + egroupPullTimeoutMs / 2
    let next = 0
    let copied = 0
    let failure: { e: unknown } | undefined
    const worker = async () => {
      try {
        while (failure === undefined && next < extentsPerEgroup) {
          if (Date.now() > deadline) throw new PeerError('io', `the copy from node ${from.node} took longer than ${egroupPullTimeoutMs / 2000} s`)
          const slot = next++
          const f = await source.request(ops.egReadRaw, { egid, diskId: from.diskId, vdiskId, slot })
          if (f.data.length === 0 || failure !== undefined) continue
          const raw = rawSlotOf(f.json, f.data, `node ${from.node}`)
          await target.writeRaw(slot, raw.entries, raw.data, raw.version)
          copied++
        }
      } catch (e) {
        failure ??= { e } // the other workers stop before their next write
      }
    }
    await Promise.all(Array.from({ length: egroupCopyInFlightMax }, worker))
    if (failure !== undefined) throw failure.e
    return copied
  }

  private async handle(f: Frame, session: Session): Promise<{ json: Record<string, unknown>, data?: Buffer }> {
    const j = f.json
    const st = this.opts.store
    // what reaches a bulk connection is only as trustworthy as a TCP stream: extent data, nothing that deletes or moves
    if (session.bulk && !bulkOps.has(f.code)) throw new PeerError('invalid', `op ${f.code} is not served on a bulk connection`)
    if (f.protocol < protocolVersionOldest) throw new PeerError('invalid', `a request in protocol ${f.protocol}: this CVM works beside protocol ${protocolVersionOldest} and later (finish the upgrade)`)
    switch (f.code) {
      case ops.ping:
        return { json: { pong: true } }
      case ops.egPull:
        return { json: { slots: await this.pull(j) } }
      case ops.pickDisk:
      case ops.egCreate:
      case ops.egOpen:
      case ops.egRead:
      case ops.egWrite:
      case ops.egClear:
      case ops.egFreeSlot:
      case ops.egSync:
      case ops.egDelete:
      case ops.egReadRaw:
      case ops.egWriteRaw:
        return serveReplicaOp(st, f.code, j, f.data)
      case ops.vdiskIo: {
        const data = await this.opts.vdisks.io(text(j, 'name'), text(j, 'op'), num(j, 'offset'), num(j, 'length'), { fua: j.fua === true, noHole: j.noHole === true }, f.data, typeof j.id === 'string' ? j.id : undefined)
        return { json: {}, data }
      }
      case ops.bulkTicket:
        return { json: { ttlMs: bulkTicketTtlMs }, data: this.issueTicket(session) }
      case ops.vdiskEvacuate:
        return { json: { moved: await this.opts.vdisks.evacuate(text(j, 'name'), text(j, 'node')) } }
      default:
        throw new PeerError('invalid', `unknown op ${f.code}`)
    }
  }
}

/**
 * A raw slot as a frame carries it (an egWriteRaw's, or an egReadRaw's answer to a pull): the
 * checksum entries then the extent, their sizes checked, and the format version of the source,
 * which says which checksum the entries hold (absent: the first, CRC-32). `sender` names who sent
 * it in the errors.
 */
function rawSlotOf(j: Record<string, unknown>, data: Buffer, sender: string): { entries: Buffer, data: Buffer, version: number } {
  const eb = num(j, 'entriesBytes')
  if (eb !== checksumEntriesBytes || data.length !== eb + vBlockSizeBytes) throw new PeerError('invalid', `${sender} sent a raw slot of the wrong size`)
  const version = j.version === undefined ? 1 : num(j, 'version')
  if (!egroupVersionsKnown.includes(version)) throw new PeerError('invalid', `${sender} sent an unknown extent group format version ${version}`)
  return { entries: data.subarray(0, eb), data: data.subarray(eb), version }
}

/** `from` of an egPull: the node and disk of the replica to copy from */
function pullSource(j: Record<string, unknown>): { node: string, diskId: string } {
  const from = j.from
  if (typeof from !== 'object' || from === null || Array.isArray(from)) throw new PeerError('invalid', 'parameter "from" must be an object')
  return { node: text(from as Record<string, unknown>, 'node'), diskId: text(from as Record<string, unknown>, 'diskId') }
}

/**
 * One request on this node's extent group replicas, served from its store: what the data port
 * does with the replica ops of a frame (the storage simulator, test/sim, calls it over its
 * simulated network). `data` is the frame's payload.
 */
export async function serveReplicaOp(st: ReplicaStore, code: number, j: Record<string, unknown>, data: Buffer): Promise<{ json: Record<string, unknown>, data?: Buffer }> {
  switch (code) {
    case ops.pickDisk:
      return { json: { diskId: await st.pickDisk() } }
    case ops.egCreate:
      await st.create(text(j, 'vdiskId'), text(j, 'egid'), text(j, 'diskId'))
      return { json: {} }
    case ops.egOpen: {
      const inUse = Array.isArray(j.inUse) ? j.inUse.filter((x): x is number => typeof x === 'number') : []
      await st.openEgroup(text(j, 'egid'), text(j, 'diskId'), inUse, text(j, 'vdiskId'), j.create === true)
      return { json: {} }
    }
    case ops.egRead: {
      const length = num(j, 'length')
      const out = Buffer.allocUnsafe(length)
      await (await st.get(text(j, 'egid'), text(j, 'diskId'))).read(num(j, 'slot'), num(j, 'offset'), length, out, 0)
      return { json: {}, data: out }
    }
    case ops.egWrite:
      await (await st.get(text(j, 'egid'), text(j, 'diskId'))).write(num(j, 'slot'), num(j, 'offset'), data)
      return { json: {} }
    case ops.egClear:
      await (await st.get(text(j, 'egid'), text(j, 'diskId'))).clear(num(j, 'slot'), num(j, 'offset'), num(j, 'length'))
      return { json: {} }
    case ops.egFreeSlot:
      await (await st.get(text(j, 'egid'), text(j, 'diskId'))).freeSlot(num(j, 'slot'))
      return { json: {} }
    case ops.egSync:
      // not open here (this CVM restarted since the owner's writes): 'not-open', never a sync that
      // vouches for writes this process never saw through (the replica re-opens, or is replaced)
      await (await st.get(text(j, 'egid'), text(j, 'diskId'))).sync()
      return { json: {} }
    case ops.egDelete:
      await st.delete(text(j, 'egid'), text(j, 'diskId'), j.recycle === true)
      return { json: {} }
    case ops.egReadRaw: {
      const raw = await (await st.get(text(j, 'egid'), text(j, 'diskId'))).readRaw(num(j, 'slot'))
      if (!raw) return { json: { entriesBytes: 0 } }
      return { json: { entriesBytes: raw.entries.length, version: raw.version }, data: Buffer.concat([raw.entries, raw.data]) }
    }
    case ops.egWriteRaw: {
      const raw = rawSlotOf(j, data, 'the owner')
      await (await st.get(text(j, 'egid'), text(j, 'diskId'))).writeRaw(num(j, 'slot'), raw.entries, raw.data, raw.version)
      return { json: {} }
    }
    default:
      throw new PeerError('invalid', `op ${code} is not a replica op`)
  }
}

/** The error a data port request answers with (the client turns it back into a PeerError). */
export function errorBody(e: unknown, log: Logger): PeerErrorBody {
  if (e instanceof ChecksumError) return { kind: 'checksum', message: e.message }
  if (e instanceof NotOpenError) return { kind: 'not-open', message: e.message }
  if (e instanceof PeerError && e.kind !== 'unreachable' && e.kind !== 'timeout') return { kind: e.kind, message: e.message, errno: e.errno }
  if (e instanceof DeviceError) return { kind: 'errno', message: e.message, errno: e.errno }
  // no disk with room (pick a disk): the caller leaves this node out, and says ENOSPC if none has room
  if (e instanceof TessError && e.code === 'TESS_E_CAPACITY') return { kind: 'errno', message: e.message, errno: nbdErrno.ENOSPC }
  if (e instanceof Error && e.message.startsWith('assertion failed')) return { kind: 'invalid', message: e.message }
  log.warn(`data port request failed: ${errorMessage(e)}`)
  return { kind: 'io', message: errorMessage(e) }
}
