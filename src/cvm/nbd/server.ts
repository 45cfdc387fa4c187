import fs from 'node:fs'
import net from 'node:net'
import tls from 'node:tls'
import { assert, errorMessage } from '../../lib/errors.js'
import {
  checksumBlockSizeBytes,
  nbdConnectionsMax,
  nbdHandshakeTimeoutMs,
  nbdInFlightPerConnMax,
  nbdOptionLengthMaxBytes,
  nbdPayloadMaxBytes,
  nbdReceiveBufferBytes,
} from '../../lib/limits.js'
import type { Logger } from '../../lib/log.js'
import { BufferPool } from '../../lib/bufpool.js'
import { SocketSender, allocAligned } from '../../lib/nativeio.js'
import { withReceiveBuffer } from '../../lib/recvbuffer.js'
import { DeviceError, nbdErrno, type BlockDevice, type ExportInfo, type ExportProvider } from './device.js'
import {
  NbdClientFlag,
  NbdCmd,
  NbdCmdFlag,
  NbdFlag,
  NbdHandshakeFlag,
  NbdInfo,
  NbdOpt,
  NbdRep,
  NbdReplyFlag,
  NbdReplyType,
  nbdClientFlagsBytes,
  nbdErrorPrefixBytes,
  nbdExportNameReplyBytes,
  nbdExportNameZeroesBytes,
  nbdInitMagic,
  nbdOffsetDataPrefixBytes,
  nbdOptionHeaderBytes,
  nbdOptionMagic,
  nbdOptionReplyHeaderBytes,
  nbdOptionReplyMagic,
  nbdRequestHeaderBytes,
  nbdRequestMagic,
  nbdServerGreetingBytes,
  nbdSimpleReplyBytes,
  nbdSimpleReplyMagic,
  nbdStringMaxBytes,
  nbdStructuredReplyHeaderBytes,
  nbdStructuredReplyMagic,
} from './protocol.js'

/**
 * Block size constraints we advertise (NBD_INFO_BLOCK_SIZE). Any byte offset and length works (the
 * device does its own read-modify-write), but writes smaller than a checksum block cost a
 * read-modify-write, so that is the preferred size. The maximum is the largest payload we accept;
 * it equals the 32 MiB the spec tells clients to stay under when they negotiate nothing, so a
 * client that never asks for block sizes still works and we never answer NBD_REP_ERR_BLOCK_SIZE_REQD.
 */
const blockSizeMinBytes = 1
const blockSizePreferredBytes = checksumBlockSizeBytes
const blockSizeMaxBytes = nbdPayloadMaxBytes

/** payload bytes (WRITE data received, READ data being produced) one connection may hold in flight */
const inFlightBytesPerConnMaxDefault = 4 * nbdPayloadMaxBytes
/** stop reading requests while this many reply bytes wait in the socket's user-space buffer */
const replyBufferedMaxBytes = 8 * 1024 * 1024
/**
 * On server close, how long a connection may take to finish its in-flight requests before it is
 * cut; well inside the few seconds a daemon gets to stop before it is killed.
 */
const closeDrainTimeoutMsDefault = 5_000
/**
 * READs and WRITEs (without FUA) up to this size are first tried on the calling thread
 * (BlockDevice.readIfCached, writeIfQuick): a cached 4 KiB read or a 4 KiB write into the page
 * cache costs a few microseconds that way against several promise hops. The extent group decides
 * below this which sizes it takes at once (egroupCachedReadMaxBytes, egroupSyncWriteMaxBytes).
 */
const ioNowMaxBytes = 1024 * 1024
/** WRITE payloads at least this large that span socket chunks are assembled in pooled blocks */
const payloadPoolBlockMinBytes = 64 * 1024
/** the rest of a WRITE payload at least this large is read from the socket straight into its block */
const payloadDirectReceiveMinBytes = 64 * 1024
/** the smallest pooled block: a payload copied out of the receive buffer is at least a page */
const payloadPoolBlockSmallestBytes = 4096
/** idle pooled payload blocks kept per server; beyond this, released blocks are left to the GC */
const payloadPoolIdleMaxBytes = 64 * 1024 * 1024

const transmissionFlagsBase =
  NbdFlag.HAS_FLAGS | NbdFlag.SEND_FLUSH | NbdFlag.SEND_FUA | NbdFlag.SEND_TRIM | NbdFlag.SEND_WRITE_ZEROES

const knownErrnos: ReadonlySet<number> = new Set(Object.values(nbdErrno))

const commandNames: Record<number, string> = {
  [NbdCmd.READ]: 'read',
  [NbdCmd.WRITE]: 'write',
  [NbdCmd.FLUSH]: 'flush',
  [NbdCmd.TRIM]: 'trim',
  [NbdCmd.WRITE_ZEROES]: 'write-zeroes',
}

const emptyBuffer = Buffer.alloc(0)
const utf8 = new TextDecoder('utf-8', { fatal: true })

export interface NbdServerOptions {
  provider: ExportProvider
  log: Logger
  /**
   * Advertise NBD_FLAG_CAN_MULTI_CONN. True for the CVM: every connection to one export shares
   * one device object, so a FLUSH or FUA on any connection covers writes acknowledged on all.
   */
  multiConn?: boolean
  /** connections beyond this are closed at once */
  connectionsMax?: number
  /** a connection that has not entered the transmission phase by then is closed */
  handshakeTimeoutMs?: number
  /** requests one connection may have in flight; at the bound we stop reading its socket */
  inFlightPerConnMax?: number
  /** payload bytes one connection may have in flight; at the bound we stop reading its socket */
  inFlightBytesPerConnMax?: number
  /** close(): time each connection gets to finish in-flight requests before its socket is cut */
  closeDrainTimeoutMs?: number
  /**
   * TLS (NBD_OPT_STARTTLS, as nbdkit and qemu-nbd offer it): `context()` gives the server's
   * certificate and the CAs whose client certificates are accepted (a client must present one);
   * it is asked at every STARTTLS, so the accepted CAs may change while the server runs;
   * with `require`, a TCP client gets nothing (not even the export list) before TLS. Connections
   * on the Unix socket (listenUnix) never need TLS: its file mode is their authentication.
   */
  tls?: {
    context: () => tls.SecureContext
    require: boolean
    /** why a client certificate that verified is refused anyway (a revoked user's), or undefined */
    revoked?: (cert: tls.PeerCertificate) => string | undefined
  }
}

interface ConnectionConfig {
  provider: ExportProvider
  log: Logger
  pool: BufferPool
  multiConn: boolean
  handshakeTimeoutMs: number
  inFlightMax: number
  inFlightBytesMax: number
  closeDrainTimeoutMs: number
  tls: NbdServerOptions['tls']
}

/**
 * NBD server (fixed newstyle handshake; simple and structured replies) in front of an
 * ExportProvider. Each connection serves one export; many requests run at once per connection and
 * replies go out in completion order. A misbehaving client gets an error reply, or loses its own
 * connection; it never affects other connections or stored data.
 */
export class NbdServer {
  private readonly server: net.Server
  private readonly connections = new Set<Connection>()
  private readonly config: ConnectionConfig
  private readonly connectionsMax: number
  private closing = false

  constructor(opts: NbdServerOptions) {
    this.config = {
      provider: opts.provider,
      log: opts.log,
      // aligned blocks: large writes can go from them to the disk with O_DIRECT (egroup.ts)
      pool: new BufferPool(payloadPoolIdleMaxBytes, payloadPoolBlockSmallestBytes, allocAligned),
      multiConn: opts.multiConn ?? true,
      handshakeTimeoutMs: opts.handshakeTimeoutMs ?? nbdHandshakeTimeoutMs,
      inFlightMax: opts.inFlightPerConnMax ?? nbdInFlightPerConnMax,
      inFlightBytesMax: opts.inFlightBytesPerConnMax ?? inFlightBytesPerConnMaxDefault,
      closeDrainTimeoutMs: opts.closeDrainTimeoutMs ?? closeDrainTimeoutMsDefault,
      tls: opts.tls,
    }
    this.connectionsMax = opts.connectionsMax ?? nbdConnectionsMax
    // allowHalfOpen: a client that shuts down its sending side still gets the replies it is owed;
    // pauseOnConnect: nothing is read before the connection moves the socket to its receive buffer
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => this.accept(socket, false))
  }

  /** Unix socket listener: local clients (root: the socket is mode 0600 in a 0700 directory), no TLS needed */
  private unixServer: net.Server | undefined

  /** Listen on a Unix socket too (the file is replaced, and made mode 0600). */
  listenUnix(file: string): Promise<void> {
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => this.accept(socket, true))
    this.unixServer = server
    return new Promise((resolve, reject) => {
      fs.rmSync(file, { force: true })
      server.once('error', (err) => reject(new Error(`cannot listen for NBD on ${file}: ${err.message}`)))
      server.listen(file, () => {
        fs.chmodSync(file, 0o600)
        server.on('error', (err) => this.config.log.error(`NBD Unix listener: ${err.message}`))
        resolve()
      })
    })
  }

  listen(port: number, host: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(new Error(`cannot listen for NBD on ${host}:${port}: ${err.message}`))
      this.server.once('error', onError)
      this.server.listen(port, host, () => {
        this.server.off('error', onError)
        this.server.on('error', (err) => this.config.log.error(`NBD listener: ${err.message}`))
        resolve()
      })
    })
  }

  get address(): net.AddressInfo {
    const a = this.server.address()
    assert(a !== null && typeof a === 'object', 'NBD server address read before listen()')
    return a
  }

  /** Close the connections whose client certificate `revoked` now refuses; returns how many. */
  closeRevoked(): number {
    const check = this.config.tls?.revoked
    if (check === undefined) return 0
    let n = 0
    for (const c of this.connections) {
      const reason = c.certificate !== undefined ? check(c.certificate) : undefined
      if (reason !== undefined) {
        c.revoke(reason)
        n++
      }
    }
    return n
  }

  /** connections in the transmission phase on the export with this (canonical) name */
  connectionsFor(name: string): number {
    let n = 0
    for (const c of this.connections) if (c.servingExport === name) n++
    return n
  }

  /**
   * Stop listening and end every connection: each finishes its in-flight requests (or is cut after
   * closeDrainTimeoutMs), then its device is closed. Resolves when every device is closed, which
   * waits for device calls still running even on a cut connection.
   */
  async close(): Promise<void> {
    this.closing = true
    const listenerClosed = new Promise<void>((resolve) => this.server.close(() => resolve()))
    const unix = this.unixServer
    const unixClosed = unix === undefined ? Promise.resolve() : new Promise<void>((resolve) => unix.close(() => resolve()))
    await Promise.all([...this.connections].map((c) => c.shutdown()))
    await listenerClosed
    await unixClosed
  }

  private accept(socket: net.Socket, local: boolean): void {
    if (this.closing || this.connections.size >= this.connectionsMax) {
      this.config.log.warn(`NBD connection from ${local ? 'the unix socket' : `${socket.remoteAddress}:${socket.remotePort}`} refused: ${this.closing ? 'server is closing' : `${this.connectionsMax} connections open`}`)
      socket.destroy()
      return
    }
    const conn = new Connection(socket, this.config, local)
    this.connections.add(conn)
    void conn.finished.then(() => this.connections.delete(conn))
  }
}

/** One request header, its 64-bit handle kept as two halves so it is echoed without a bigint. */
interface Request {
  type: number
  flags: number
  handleHi: number
  handleLo: number
  offset: number
  length: number
}

interface Rejection {
  errno: number
  message: string
}

/**
 * Bytes received and not yet parsed: the socket's chunks, consumed from the front. A frame that
 * lies inside one chunk is returned as a view of it (no copy); only frames spanning chunks are copied.
 */
class ByteQueue {
  private chunks: Buffer[] = []
  length = 0
  /**
   * some chunk is a view of the connection's receive buffer, which the next read overwrites: such
   * views are parsed at once, and own() copies what is left before the read callback returns
   */
  borrowed = false

  push(chunk: Buffer, borrowed = false): void {
    if (chunk.length === 0) return
    this.chunks.push(chunk)
    this.length += chunk.length
    if (borrowed) this.borrowed = true
  }

  /** copy the bytes still held out of the receive buffer, so the next read can reuse it */
  own(): void {
    if (!this.borrowed) return
    this.borrowed = false
    if (this.length === 0) return
    const out = Buffer.allocUnsafe(this.length)
    let at = 0
    for (const c of this.chunks) {
      c.copy(out, at)
      at += c.length
    }
    this.chunks = [out]
  }

  /** whether the next n bytes lie in one chunk, so take(n) needs no copy */
  contiguous(n: number): boolean {
    const head = this.chunks[0]
    return head !== undefined && head.length >= n
  }

  /** the next n bytes (n <= length) as one buffer */
  take(n: number): Buffer {
    if (n === 0) return emptyBuffer
    const head = this.head(n)
    if (head.length >= n) {
      this.consumeHead(head, n)
      return head.subarray(0, n)
    }
    const out = Buffer.allocUnsafe(n)
    this.copyInto(out, 0, n)
    return out
  }

  /** move the next n bytes (n <= length) into target at position at */
  copyInto(target: Buffer, at: number, n: number): void {
    while (n > 0) {
      const head = this.head(n)
      const k = Math.min(n, head.length)
      head.copy(target, at, 0, k)
      this.consumeHead(head, k)
      at += k
      n -= k
    }
  }

  skip(n: number): void {
    while (n > 0) {
      const head = this.head(n)
      const k = Math.min(n, head.length)
      this.consumeHead(head, k)
      n -= k
    }
  }

  private head(wanted: number): Buffer {
    const head = this.chunks[0]
    assert(head !== undefined && wanted <= this.length, `ByteQueue: ${wanted} bytes wanted, ${this.length} held`)
    return head
  }

  private consumeHead(head: Buffer, n: number): void {
    if (n === head.length) this.chunks.shift()
    else this.chunks[0] = head.subarray(n)
    this.length -= n
  }
}

function u64(hi: number, lo: number): number {
  // exact below 2^53; above it the value is still far beyond any export size, which is all we test
  return hi * 2 ** 32 + lo
}

function writeU64(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32BE(Math.floor(value / 2 ** 32), at)
  buf.writeUInt32BE(value % 2 ** 32, at + 4)
}

/** a protocol string: UTF-8, at most nbdStringMaxBytes (longer text is cut, it is only shown to humans) */
function protocolString(text: string): Buffer {
  const b = Buffer.from(text, 'utf8')
  return b.length > nbdStringMaxBytes ? b.subarray(0, nbdStringMaxBytes) : b
}

/** an export name from the wire, or undefined when it is not a valid protocol string */
function decodeName(bytes: Buffer): string | undefined {
  if (bytes.length > nbdStringMaxBytes || bytes.includes(0)) return undefined
  try {
    return utf8.decode(bytes)
  } catch {
    return undefined
  }
}

/**
 * One client connection: the handshake, then the transmission phase on one export.
 *
 * Reading is a loop over the ByteQueue (pump) that stops whenever the connection must not take more
 * work: an option is being answered, the in-flight bounds are reached, replies are backing up in the
 * socket, or the client disconnected. While stopped, the socket is paused, so TCP flow control
 * pushes back on the client instead of us buffering.
 */
class Connection {
  readonly finished: Promise<void>
  private resolveFinished!: () => void
  private readonly log: Logger
  private readonly peer: string
  private readonly queue = new ByteQueue()
  private handshakeTimer: NodeJS.Timeout | undefined

  // handshake state
  private inTransmission = false
  private clientFlagsSeen = false
  private fixedNewstyle = false
  private noZeroes = false
  private structured = false
  /** the option whose header was read; its data is awaited or, when too big, discarded */
  private option: { code: number; length: number; tooBig: boolean } | undefined
  /** an option is being answered (asynchronously); the client may not send the next one before */
  private optionBusy = false

  // transmission state
  private device: BlockDevice | undefined
  private sizeBytes = 0
  private inFlight = 0
  private inFlightBytes = 0
  /** a WRITE whose payload is being assembled (in a pooled block when large) */
  private filling: { req: Request; block: Buffer | undefined; payload: Buffer; filled: number } | undefined
  /** payload bytes of a rejected WRITE still to be skipped */
  private discardBytes = 0
  /** some write completed without FUA since the last FLUSH began */
  private dirty = false

  // flow and lifetime
  private paused = false
  private corked = false
  private writeBlocked = false
  /** DISC received, client or server ending: no more requests are read */
  private disconnecting = false
  /** the client shut down its sending side; finish what was received, then disconnect */
  private peerEnded = false
  private ending = false
  private closed = false
  private finishing = false

  /** the socket requests arrive on and replies leave by: the TCP or Unix socket, or TLS over it after STARTTLS */
  private socket: net.Socket
  /** writes replies on a thread of its own once in transmission (see senderFor) */
  private sender: SocketSender | undefined
  private senderTried = false
  /** the replies of this tick, written as one batch by the sender */
  private batch: { buffers: Buffer[]; sent: ((err?: Error | null) => void)[]; bytes: number } | undefined
  /** the client completed STARTTLS with a certificate of a CA the server trusts */
  private tlsActive = false
  private peerCert: tls.PeerCertificate | undefined

  constructor(
    socket: net.Socket,
    private readonly config: ConnectionConfig,
    /** on the Unix socket: TLS is never required */
    private readonly local = false,
  ) {
    this.log = config.log
    this.peer = local ? 'unix socket' : `${socket.remoteAddress}:${socket.remotePort}`
    this.finished = new Promise((resolve) => {
      this.resolveFinished = resolve
    })
    if (!local) socket.setNoDelay(true)
    // plain TCP and Unix sockets read into one buffer of the connection's own (see recvbuffer.ts)
    const own = withReceiveBuffer(socket, Buffer.allocUnsafe(nbdReceiveBufferBytes), (view, into) => this.received(view, into), {
      allowHalfOpen: true,
      nextInto: () => this.payloadRest(),
    })
    this.socket = own ?? socket
    this.listen(this.socket, own !== undefined)
    this.armHandshakeTimer()

    const greeting = Buffer.alloc(nbdServerGreetingBytes)
    greeting.writeBigUInt64BE(nbdInitMagic, 0)
    greeting.writeBigUInt64BE(nbdOptionMagic, 8)
    greeting.writeUInt16BE(NbdHandshakeFlag.FIXED_NEWSTYLE | NbdHandshakeFlag.NO_ZEROES, 16)
    this.send(greeting)
  }

  /**
   * Bytes read into the receive buffer (parsed now, and what is left copied out before the next
   * read), or straight into the rest of a WRITE payload being assembled (see payloadRest).
   */
  private received(view: Buffer, into: 'buffer' | 'nextInto'): void {
    if (into === 'nextInto') {
      const filling = this.filling
      assert(filling !== undefined && view.byteOffset === filling.payload.byteOffset + filling.filled, 'a direct read lands where the payload goes on')
      filling.filled += view.length
    } else {
      this.queue.push(view, true)
    }
    this.pump()
    this.queue.own()
  }

  /**
   * Where the next socket read goes when a large WRITE payload is being assembled and every byte
   * received so far is parsed: the rest of the payload itself, so the kernel copies it there at
   * once instead of into the receive buffer and then out of it (a copy of every byte of a large
   * write, a tenth of the CVM's time in 1 MiB writes). The read cannot go past the payload: the
   * view handed to the socket ends where the payload ends, and the next header is read into the
   * receive buffer again.
   */
  private payloadRest(): Buffer | undefined {
    const filling = this.filling
    if (filling === undefined || this.queue.length > 0 || this.dead) return undefined
    const rest = filling.payload.length - filling.filled
    return rest >= payloadDirectReceiveMinBytes ? filling.payload.subarray(filling.filled) : undefined
  }

  private listen(socket: net.Socket, ownBuffer = false): void {
    if (!ownBuffer) {
      socket.on('data', (chunk: Buffer) => {
        this.queue.push(chunk)
        this.pump()
      })
    }
    socket.on('end', () => {
      this.peerEnded = true
      this.pump()
    })
    socket.on('drain', () => {
      this.writeBlocked = false
      this.pump()
    })
    socket.on('error', (err) => this.log.info(`NBD connection from ${this.peer}${this.exportLabel()}: ${err.message}`))
    socket.on('close', () => this.onClose())
  }

  /** TLS is required before any option but STARTTLS and ABORT */
  private get tlsRequired(): boolean {
    return this.config.tls?.require === true && !this.local && !this.tlsActive
  }

  /**
   * NBD_OPT_STARTTLS: ACK in the clear, then the TLS handshake on the same socket (the client's
   * certificate must come from a CA of the server's context); option haggling starts again inside TLS.
   */
  private startTls(data: Buffer): void {
    const tlsConfig = this.config.tls
    if (tlsConfig === undefined) return this.optionReplyError(NbdOpt.STARTTLS, NbdRep.ERR_UNSUP, 'this server does not offer TLS')
    if (this.tlsActive) return this.optionReplyError(NbdOpt.STARTTLS, NbdRep.ERR_INVALID, 'TLS is already on')
    if (data.length !== 0) return this.optionReplyError(NbdOpt.STARTTLS, NbdRep.ERR_INVALID, 'STARTTLS carries no data')
    if (this.queue.length > 0) return this.drop('bytes sent after STARTTLS before its reply')
    this.optionReply(NbdOpt.STARTTLS, NbdRep.ACK)
    const raw = this.socket
    // the ACK leaves in the clear now (send() corks until the next tick, which would uncork the TLS socket)
    if (this.corked) {
      this.corked = false
      raw.uncork()
    }
    raw.removeAllListeners('data')
    raw.removeAllListeners('end')
    raw.removeAllListeners('drain')
    raw.removeAllListeners('close')
    // errors of the raw socket surface on the TLS socket; this one only keeps them from throwing
    raw.removeAllListeners('error')
    raw.on('error', () => undefined)
    // the raw socket may be paused (options are answered one at a time): TLS reads through its handle
    raw.resume()
    const secure = new tls.TLSSocket(raw, { isServer: true, secureContext: tlsConfig.context(), requestCert: true, rejectUnauthorized: true })
    this.socket = secure
    this.listen(secure)
    secure.once('secure', () => {
      const cert = secure.getPeerCertificate()
      this.peerCert = cert
      const revoked = tlsConfig.revoked?.(cert)
      if (revoked !== undefined) return this.drop(`client certificate refused: ${revoked}`)
      this.tlsActive = true
      const cn = cert.subject?.CN
      this.log.info(`NBD connection from ${this.peer}: TLS with the certificate of "${cn ?? '?'}"`)
    })
    // reading went through the raw socket until now: the TLS socket flows on its own
    this.paused = false
  }

  /** the export this connection serves while in the transmission phase */
  get servingExport(): string | undefined {
    return this.inTransmission && !this.finishing ? this.device?.name : undefined
  }

  /** Server close: finish in-flight requests (bounded by closeDrainTimeoutMs), then close. */
  shutdown(): Promise<void> {
    if (!this.inTransmission) {
      this.socket.destroy()
    } else if (!this.closed) {
      this.beginDisconnect()
      const cut = setTimeout(() => this.socket.destroy(), this.config.closeDrainTimeoutMs)
      void this.finished.then(() => clearTimeout(cut))
    }
    return this.finished
  }

  // ---- reading ----

  private pump(): void {
    while (!this.dead && !this.readBlocked()) {
      const progressed = this.inTransmission ? this.pumpTransmission() : this.pumpHandshake()
      if (!progressed) break
    }
    if (this.peerEnded && !this.dead && !this.readBlocked()) {
      // nothing more can be parsed and nothing more will arrive
      if (this.inTransmission) {
        if (this.queue.length > 0 || this.filling || this.discardBytes > 0) {
          this.log.info(`NBD connection from ${this.peer}${this.exportLabel()}: client left in the middle of a request`)
        }
        this.beginDisconnect()
      } else {
        this.socket.destroy()
      }
    }
    this.updateFlow()
  }

  /** closed, or destroyed and about to close: nothing more is read or sent */
  private get dead(): boolean {
    return this.closed || this.socket.destroyed
  }

  private readBlocked(): boolean {
    return (
      this.optionBusy ||
      this.disconnecting ||
      this.writeBlocked ||
      this.inFlight >= this.config.inFlightMax ||
      this.inFlightBytes >= this.config.inFlightBytesMax
    )
  }

  private updateFlow(): void {
    if (this.dead) return
    const stop = this.readBlocked()
    if (stop && !this.paused) {
      this.paused = true
      this.socket.pause()
    } else if (!stop && this.paused) {
      this.paused = false
      this.socket.resume()
    }
  }

  /** one step of the handshake; false when more bytes (or the answer to an option) are needed */
  private pumpHandshake(): boolean {
    const q = this.queue
    if (!this.clientFlagsSeen) {
      if (q.length < nbdClientFlagsBytes) return false
      const flags = q.take(nbdClientFlagsBytes).readUInt32BE(0)
      if ((flags & ~(NbdClientFlag.C_FIXED_NEWSTYLE | NbdClientFlag.C_NO_ZEROES)) !== 0) {
        this.drop(`unknown client flags 0x${flags.toString(16)}`)
        return false
      }
      this.clientFlagsSeen = true
      this.fixedNewstyle = (flags & NbdClientFlag.C_FIXED_NEWSTYLE) !== 0
      this.noZeroes = (flags & NbdClientFlag.C_NO_ZEROES) !== 0
      return true
    }
    const option = this.option
    if (option === undefined) {
      if (q.length < nbdOptionHeaderBytes) return false
      const h = q.take(nbdOptionHeaderBytes)
      if (h.readBigUInt64BE(0) !== nbdOptionMagic) {
        this.drop('bad option magic')
        return false
      }
      const code = h.readUInt32BE(8)
      const length = h.readUInt32BE(12)
      const tooBig = length > nbdOptionLengthMaxBytes
      if (tooBig && (code === NbdOpt.EXPORT_NAME || !this.fixedNewstyle)) {
        // no error reply exists for these: the only answer is to hang up
        this.drop(`option ${code} with ${length} bytes of data`)
        return false
      }
      if (tooBig) this.discardBytes = length
      this.option = { code, length, tooBig }
      return true
    }
    if (option.tooBig) {
      const n = Math.min(this.discardBytes, q.length)
      q.skip(n)
      this.discardBytes -= n
      if (this.discardBytes > 0) return false
      this.option = undefined
      this.optionReplyError(option.code, NbdRep.ERR_TOO_BIG, `option data of ${option.length} bytes exceeds ${nbdOptionLengthMaxBytes}`)
      return true
    }
    if (q.length < option.length) return false
    // answered asynchronously: a copy, never a view of the receive buffer
    const data = Buffer.from(q.take(option.length))
    this.option = undefined
    this.optionBusy = true
    this.handleOption(option.code, data)
      .catch((err: unknown) => {
        this.log.error(`NBD connection from ${this.peer}: option ${option.code} failed: ${errorMessage(err)}`)
        this.socket.destroy()
      })
      .finally(() => {
        this.optionBusy = false
        if (this.closed) this.maybeFinish()
        else this.pump()
      })
    return false
  }

  /** one step of the transmission phase; false when more bytes are needed */
  private pumpTransmission(): boolean {
    const q = this.queue
    const filling = this.filling
    if (filling) {
      const n = Math.min(filling.payload.length - filling.filled, q.length)
      q.copyInto(filling.payload, filling.filled, n)
      filling.filled += n
      if (filling.filled < filling.payload.length) return false
      this.filling = undefined
      this.start(filling.req, filling.payload, filling.block)
      return true
    }
    if (this.discardBytes > 0) {
      const n = Math.min(this.discardBytes, q.length)
      q.skip(n)
      this.discardBytes -= n
      return this.discardBytes === 0
    }
    if (q.length < nbdRequestHeaderBytes) return false
    const h = q.take(nbdRequestHeaderBytes)
    if (h.readUInt32BE(0) !== nbdRequestMagic) {
      // without the magic we cannot find the next frame boundary
      this.drop(`bad request magic 0x${h.readUInt32BE(0).toString(16)}`)
      return false
    }
    const req: Request = {
      flags: h.readUInt16BE(4),
      type: h.readUInt16BE(6),
      handleHi: h.readUInt32BE(8),
      handleLo: h.readUInt32BE(12),
      offset: u64(h.readUInt32BE(16), h.readUInt32BE(20)),
      length: h.readUInt32BE(24),
    }
    if (req.type === NbdCmd.DISC) {
      this.beginDisconnect()
      return false
    }
    if (req.type === NbdCmd.WRITE && req.length > blockSizeMaxBytes) {
      // the spec lets us treat a payload this large as denial of service; skipping it would mean
      // reading up to 4 GiB from a client that already broke the rules
      this.drop(`write of ${req.length} bytes exceeds the maximum of ${blockSizeMaxBytes}`)
      return false
    }
    const rejection = this.check(req)
    if (rejection) {
      this.replyError(req, rejection.errno, rejection.message)
      if (req.type === NbdCmd.WRITE) this.discardBytes = req.length
      return true
    }
    if (req.type !== NbdCmd.WRITE) {
      this.start(req, undefined, undefined)
    } else if (q.contiguous(req.length) && !q.borrowed) {
      // a view of one socket chunk the connection owns: no copy
      this.start(req, q.take(req.length), undefined)
    } else if (q.contiguous(req.length)) {
      // in the receive buffer, which the next read reuses: one copy into a pooled block
      const block = this.config.pool.take(req.length)
      const payload = block.subarray(0, req.length)
      q.copyInto(payload, 0, req.length)
      this.start(req, payload, block)
    } else {
      // the payload spans socket chunks: copy them, as they arrive, into one buffer
      const block = req.length >= payloadPoolBlockMinBytes || q.borrowed ? this.config.pool.take(req.length) : undefined
      const payload = block ? block.subarray(0, req.length) : Buffer.allocUnsafe(req.length)
      this.filling = { req, block, payload, filled: 0 }
    }
    return true
  }

  /** why a request must be refused, before it touches the device */
  private check(req: Request): Rejection | undefined {
    const name = commandNames[req.type]
    if (name === undefined) {
      return { errno: nbdErrno.EINVAL, message: `unknown command ${req.type}` }
    }
    const badFlags = req.flags & ~this.allowedFlags(req.type)
    if (badFlags !== 0) {
      return { errno: nbdErrno.EINVAL, message: `flags 0x${badFlags.toString(16)} are not valid for ${name}` }
    }
    if (req.type === NbdCmd.FLUSH) {
      return req.offset !== 0 || req.length !== 0 ? { errno: nbdErrno.EINVAL, message: 'flush with a nonzero offset or length' } : undefined
    }
    if (this.device?.readOnly === true && (req.type === NbdCmd.WRITE || req.type === NbdCmd.TRIM || req.type === NbdCmd.WRITE_ZEROES)) {
      return { errno: nbdErrno.EPERM, message: `${name} on a read-only export` }
    }
    if (req.length === 0) return { errno: nbdErrno.EINVAL, message: `${name} of 0 bytes` }
    // the maximum block size does not bind TRIM (no payload, and the spec leaves it out)
    if (req.type !== NbdCmd.TRIM && req.length > blockSizeMaxBytes) {
      return { errno: nbdErrno.EINVAL, message: `${name} of ${req.length} bytes exceeds the maximum of ${blockSizeMaxBytes}` }
    }
    if (req.offset + req.length > this.sizeBytes) {
      // the spec asks for ENOSPC when writing past the end, EINVAL for reading or trimming there
      const writes = req.type === NbdCmd.WRITE || req.type === NbdCmd.WRITE_ZEROES
      return { errno: writes ? nbdErrno.ENOSPC : nbdErrno.EINVAL, message: `${name} past the end of the export (${this.sizeBytes} bytes)` }
    }
    return undefined
  }

  private allowedFlags(type: number): number {
    // FUA is valid on every command once SEND_FUA is advertised (it is)
    switch (type) {
      case NbdCmd.READ:
        return NbdCmdFlag.FUA | (this.structured ? NbdCmdFlag.DF : 0)
      case NbdCmd.WRITE_ZEROES:
        return NbdCmdFlag.FUA | NbdCmdFlag.NO_HOLE
      default:
        return NbdCmdFlag.FUA
    }
  }

  // ---- handshake options ----

  private async handleOption(code: number, data: Buffer): Promise<void> {
    if (!this.fixedNewstyle && code !== NbdOpt.EXPORT_NAME) {
      // a client without fixed newstyle cannot parse option replies
      this.drop(`option ${code} from a client that did not set C_FIXED_NEWSTYLE`)
      return
    }
    if (this.tlsRequired && code !== NbdOpt.STARTTLS && code !== NbdOpt.ABORT) {
      // nothing, not even the export list, before TLS; EXPORT_NAME has no error reply
      if (code === NbdOpt.EXPORT_NAME) return this.drop('EXPORT_NAME before TLS, which this server requires')
      return this.optionReplyError(code, NbdRep.ERR_TLS_REQD, 'this server requires TLS (NBD_OPT_STARTTLS) with a client certificate: tess vdisk credentials issues one')
    }
    switch (code) {
      case NbdOpt.STARTTLS:
        return this.startTls(data)
      case NbdOpt.EXPORT_NAME:
        return this.exportName(data)
      case NbdOpt.ABORT:
        // the spec asks us to ignore any data sent with ABORT
        this.optionReply(code, NbdRep.ACK)
        this.beginDisconnect()
        return
      case NbdOpt.LIST:
        return this.list(data)
      case NbdOpt.INFO:
      case NbdOpt.GO:
        return this.infoOrGo(code, data)
      case NbdOpt.STRUCTURED_REPLY:
        if (data.length !== 0) return this.optionReplyError(code, NbdRep.ERR_INVALID, 'STRUCTURED_REPLY carries no data')
        this.structured = true
        this.optionReply(code, NbdRep.ACK)
        return
      case NbdOpt.LIST_META_CONTEXT:
      case NbdOpt.SET_META_CONTEXT:
        return this.metaContext(code, data)
      default:
        return this.optionReplyError(code, NbdRep.ERR_UNSUP, `option ${code} is not supported`)
    }
  }

  private async exportName(data: Buffer): Promise<void> {
    const name = decodeName(data)
    if (name === undefined) return this.drop('EXPORT_NAME with an invalid name')
    let device: BlockDevice | undefined
    try {
      device = await this.openDevice(name)
    } catch (err) {
      return this.drop(`cannot open export "${name}": ${errorMessage(err)}`)
    }
    if (device === undefined) return this.drop(`EXPORT_NAME "${name}": no such export`)
    if (this.dead) return device.close()
    const flags = this.flagsFor(device)
    const reply = Buffer.alloc(nbdExportNameReplyBytes + (this.noZeroes ? 0 : nbdExportNameZeroesBytes))
    writeU64(reply, device.sizeBytes, 0)
    reply.writeUInt16BE(flags, 8)
    this.send(reply)
    this.enterTransmission(device)
  }

  private async list(data: Buffer): Promise<void> {
    if (data.length !== 0) return this.optionReplyError(NbdOpt.LIST, NbdRep.ERR_INVALID, 'LIST carries no data')
    let exports: ExportInfo[]
    try {
      exports = await this.config.provider.list()
    } catch (err) {
      return this.optionReplyError(NbdOpt.LIST, this.providerErrorReply(err, NbdRep.ERR_POLICY), `cannot list exports: ${errorMessage(err)}`)
    }
    for (const e of exports) {
      const name = protocolString(e.name)
      const description = protocolString(e.description)
      const payload = Buffer.allocUnsafe(4 + name.length + description.length)
      payload.writeUInt32BE(name.length, 0)
      name.copy(payload, 4)
      description.copy(payload, 4 + name.length)
      this.optionReply(NbdOpt.LIST, NbdRep.SERVER, payload)
    }
    this.optionReply(NbdOpt.LIST, NbdRep.ACK)
  }

  private async infoOrGo(code: number, data: Buffer): Promise<void> {
    // data: u32 name length, name, u16 number of info requests, u16 × n info requests
    if (data.length < 4 + 2) return this.optionReplyError(code, NbdRep.ERR_INVALID, 'option data too short')
    const nameLength = data.readUInt32BE(0)
    if (nameLength > data.length - 6) return this.optionReplyError(code, NbdRep.ERR_INVALID, 'name length exceeds the option data')
    const requestCount = data.readUInt16BE(4 + nameLength)
    if (data.length !== 4 + nameLength + 2 + 2 * requestCount) {
      return this.optionReplyError(code, NbdRep.ERR_INVALID, 'information request count does not match the option length')
    }
    const requested = new Set<number>()
    for (let i = 0; i < requestCount; i++) requested.add(data.readUInt16BE(4 + nameLength + 2 + 2 * i))
    const name = decodeName(data.subarray(4, 4 + nameLength))
    if (name === undefined) return this.optionReplyError(code, NbdRep.ERR_INVALID, 'export name is not a valid string')

    let device: BlockDevice | undefined
    try {
      device = await this.openDevice(name)
    } catch (err) {
      return this.optionReplyError(code, this.providerErrorReply(err, NbdRep.ERR_UNKNOWN), errorMessage(err))
    }
    if (device === undefined) return this.optionReplyError(code, NbdRep.ERR_UNKNOWN, `export "${name}" does not exist`)
    if (this.dead) return device.close()

    const flags = this.flagsFor(device)
    const exportInfo = Buffer.allocUnsafe(2 + 8 + 2)
    exportInfo.writeUInt16BE(NbdInfo.EXPORT, 0)
    writeU64(exportInfo, device.sizeBytes, 2)
    exportInfo.writeUInt16BE(flags, 10)
    this.optionReply(code, NbdRep.INFO, exportInfo)
    if (requested.has(NbdInfo.NAME)) this.optionReply(code, NbdRep.INFO, this.infoString(NbdInfo.NAME, device.name))
    if (requested.has(NbdInfo.DESCRIPTION)) {
      const description = await this.describe(device.name)
      if (description) this.optionReply(code, NbdRep.INFO, this.infoString(NbdInfo.DESCRIPTION, description))
    }
    // Sent only on request: a client that did not ask may not understand it, and our constraints
    // are the defaults such a client already assumes (see blockSizeMaxBytes).
    if (requested.has(NbdInfo.BLOCK_SIZE)) {
      const sizes = Buffer.allocUnsafe(2 + 4 + 4 + 4)
      sizes.writeUInt16BE(NbdInfo.BLOCK_SIZE, 0)
      sizes.writeUInt32BE(blockSizeMinBytes, 2)
      sizes.writeUInt32BE(blockSizePreferredBytes, 6)
      sizes.writeUInt32BE(blockSizeMaxBytes, 10)
      this.optionReply(code, NbdRep.INFO, sizes)
    }
    if (this.dead) return device.close()
    this.optionReply(code, NbdRep.ACK)
    if (code === NbdOpt.GO) this.enterTransmission(device)
    else await device.close()
  }

  private infoString(type: number, text: string): Buffer {
    const s = protocolString(text)
    const payload = Buffer.allocUnsafe(2 + s.length)
    payload.writeUInt16BE(type, 0)
    s.copy(payload, 2)
    return payload
  }

  /** the export's description from the provider's list; a failure only loses the description */
  private async describe(name: string): Promise<string | undefined> {
    try {
      return (await this.config.provider.list()).find((e) => e.name === name)?.description
    } catch (err) {
      this.log.warn(`NBD: cannot describe export "${name}": ${errorMessage(err)}`)
      return undefined
    }
  }

  /**
   * We implement no metadata context (base:allocation needs allocation data the BlockDevice does
   * not offer), so after checking the request's syntax the answer is always "no contexts": ACK.
   */
  private metaContext(code: number, data: Buffer): void {
    if (!this.structured) return this.optionReplyError(code, NbdRep.ERR_INVALID, 'negotiate structured replies first')
    // data: u32 name length, name, u32 query count, then per query: u32 length, query
    let at = 0
    const field = (): number | undefined => {
      if (at + 4 > data.length) return undefined
      const v = data.readUInt32BE(at)
      at += 4
      return v
    }
    const nameLength = field()
    if (nameLength === undefined || nameLength > data.length - at) return this.optionReplyError(code, NbdRep.ERR_INVALID, 'name length exceeds the option data')
    at += nameLength
    const queries = field()
    if (queries === undefined) return this.optionReplyError(code, NbdRep.ERR_INVALID, 'query count missing')
    for (let i = 0; i < queries; i++) {
      const length = field()
      if (length === undefined || length > data.length - at) return this.optionReplyError(code, NbdRep.ERR_INVALID, 'query length exceeds the option data')
      at += length
    }
    if (at !== data.length) return this.optionReplyError(code, NbdRep.ERR_INVALID, 'trailing bytes after the queries')
    this.optionReply(code, NbdRep.ACK)
  }

  /** The handshake timeout bounds an idle client, not our own work: it is paused while we open. */
  private armHandshakeTimer(): void {
    clearTimeout(this.handshakeTimer)
    const ms = this.config.handshakeTimeoutMs
    this.handshakeTimer = setTimeout(() => this.drop(`no export chosen within ${ms} ms`), ms)
  }

  private async openDevice(name: string): Promise<BlockDevice | undefined> {
    clearTimeout(this.handshakeTimer)
    try {
      return await this.config.provider.open(name)
    } finally {
      // still negotiating (a failed open, or INFO): the client gets its time again
      if (this.device === undefined && !this.dead) this.armHandshakeTimer()
    }
  }

  private providerErrorReply(err: unknown, fallback: number): number {
    if (err instanceof DeviceError && err.errno === nbdErrno.ESHUTDOWN) return NbdRep.ERR_SHUTDOWN
    if (err instanceof DeviceError && err.errno === nbdErrno.EPERM) return NbdRep.ERR_POLICY
    return fallback
  }

  private flagsFor(device: BlockDevice): number {
    return (
      transmissionFlagsBase |
      (device.readOnly === true ? NbdFlag.READ_ONLY : 0) |
      (this.config.multiConn ? NbdFlag.CAN_MULTI_CONN : 0) |
      // every read is answered in one chunk, so DF costs nothing once chunks exist at all
      (this.structured ? NbdFlag.SEND_DF : 0)
    )
  }

  private enterTransmission(device: BlockDevice): void {
    clearTimeout(this.handshakeTimer)
    this.handshakeTimer = undefined
    this.device = device
    // the size may change between connections, never during one
    this.sizeBytes = device.sizeBytes
    this.inTransmission = true
    this.log.info(`NBD connection from ${this.peer} serves export "${device.name}" (${this.sizeBytes} bytes${this.structured ? ', structured replies' : ''})`)
  }

  private optionReply(code: number, type: number, payload?: Buffer): void {
    const h = Buffer.allocUnsafe(nbdOptionReplyHeaderBytes)
    h.writeBigUInt64BE(nbdOptionReplyMagic, 0)
    h.writeUInt32BE(code, 8)
    h.writeUInt32BE(type, 12)
    h.writeUInt32BE(payload?.length ?? 0, 16)
    this.send(h, payload)
  }

  private optionReplyError(code: number, type: number, message: string): void {
    this.optionReply(code, type, protocolString(message))
  }

  // ---- transmission ----

  /** run a checked request; `block` is the pooled block holding the payload, if any */
  private start(req: Request, payload: Buffer | undefined, block: Buffer | undefined): void {
    const device = this.device
    assert(device !== undefined, 'a request runs only in the transmission phase')
    if (req.length <= ioNowMaxBytes) {
      if (req.type === NbdCmd.READ && this.readNow(req, device)) return
      if (req.type === NbdCmd.WRITE && (req.flags & NbdCmdFlag.FUA) === 0 && this.writeNow(req, device, payload, block)) return
    }
    const bytes = req.type === NbdCmd.READ || req.type === NbdCmd.WRITE ? req.length : 0
    this.inFlight++
    this.inFlightBytes += bytes
    void this.execute(req, device, payload)
      .then(
        () => {
          if (block) this.config.pool.give(block)
        },
        (err: unknown) => this.replyFailure(req, device, err),
      )
      .finally(() => {
        this.inFlight--
        this.inFlightBytes -= bytes
        this.settled()
      })
  }

  /**
   * Answer a READ at once when the device can do it without waiting (a cached extent): no promise,
   * and the reply's memory comes from the pool. False when the ordinary path must run it.
   */
  private readNow(req: Request, device: BlockDevice): boolean {
    if (device.readIfCached === undefined) return false
    const pool = this.config.pool
    const block = pool.take(req.length)
    const data = block.subarray(0, req.length)
    if (!device.readIfCached(req.offset, data)) {
      pool.give(block)
      return false
    }
    this.replyData(req, data, (err) => {
      if (!err) pool.give(block)
    })
    return true
  }

  /** Do a WRITE (no FUA) at once when the device can without waiting, and acknowledge it; false when the ordinary path must run it. */
  private writeNow(req: Request, device: BlockDevice, payload: Buffer | undefined, block: Buffer | undefined): boolean {
    assert(payload !== undefined, 'a WRITE runs with its payload')
    if (device.writeIfQuick === undefined || !device.writeIfQuick(req.offset, payload)) return false
    this.dirty = true
    if (block) this.config.pool.give(block)
    this.replyDone(req)
    return true
  }

  private async execute(req: Request, device: BlockDevice, payload: Buffer | undefined): Promise<void> {
    const fua = (req.flags & NbdCmdFlag.FUA) !== 0
    switch (req.type) {
      case NbdCmd.READ: {
        if (device.readInto !== undefined && req.length >= payloadPoolBlockMinBytes) {
          // a pooled block, back in the pool once the socket has taken the reply
          const pool = this.config.pool
          const block = pool.take(req.length)
          const data = block.subarray(0, req.length)
          await device.readInto(req.offset, data)
          return this.replyData(req, data, (err) => {
            if (!err) pool.give(block)
          })
        }
        const data = await device.read(req.offset, req.length)
        if (data.length !== req.length) throw new Error(`device returned ${data.length} bytes`)
        return this.replyData(req, data)
      }
      case NbdCmd.WRITE:
        assert(payload !== undefined, 'a WRITE runs with its payload')
        await device.write(req.offset, payload, fua)
        if (!fua) this.dirty = true
        break
      case NbdCmd.FLUSH:
        // covers every write completed before now; later completions make us dirty again
        this.dirty = false
        try {
          await device.flush()
        } catch (err) {
          this.dirty = true
          throw err
        }
        break
      case NbdCmd.TRIM:
        await device.trim(req.offset, req.length)
        // BlockDevice.trim has no FUA of its own
        if (fua) await device.flush()
        else this.dirty = true
        break
      case NbdCmd.WRITE_ZEROES:
        await device.writeZeroes(req.offset, req.length, (req.flags & NbdCmdFlag.NO_HOLE) !== 0, fua)
        if (!fua) this.dirty = true
        break
      default:
        assert(false, `command ${req.type} passed the checks`)
    }
    this.replyDone(req)
  }

  private replyFailure(req: Request, device: BlockDevice, err: unknown): void {
    if (err instanceof DeviceError && knownErrnos.has(err.errno)) {
      this.replyError(req, err.errno, err.message)
      return
    }
    this.log.error(`NBD export "${device.name}": ${commandNames[req.type]} at offset ${req.offset} length ${req.length} failed: ${errorMessage(err)}`)
    this.replyError(req, nbdErrno.EIO, 'I/O error')
  }

  /** a request finished: resume reading, or finish a disconnect that waited for it */
  private settled(): void {
    if (this.closed) this.maybeFinish()
    else if (this.disconnecting && this.inFlight === 0) this.finishDisconnect()
    else this.pump()
  }

  /** `sent` (optional) is called once the socket no longer needs `data` */
  private replyData(req: Request, data: Buffer, sent?: (err?: Error | null) => void): void {
    if (this.structured) {
      // one chunk, marked DONE: the data is complete before the header leaves, so no error can follow
      const h = this.chunkHeader(req, NbdReplyFlag.DONE, NbdReplyType.OFFSET_DATA, nbdOffsetDataPrefixBytes + data.length, nbdOffsetDataPrefixBytes)
      writeU64(h, req.offset, nbdStructuredReplyHeaderBytes)
      this.send(h, data, sent)
    } else {
      this.send(this.simpleReply(req, 0), data, sent)
    }
  }

  private replyDone(req: Request): void {
    this.send(this.structured ? this.chunkHeader(req, NbdReplyFlag.DONE, NbdReplyType.NONE, 0, 0) : this.simpleReply(req, 0))
  }

  private replyError(req: Request, errno: number, message: string): void {
    if (!this.structured) {
      this.send(this.simpleReply(req, errno))
      return
    }
    const text = protocolString(message)
    const h = this.chunkHeader(req, NbdReplyFlag.DONE, NbdReplyType.ERROR, nbdErrorPrefixBytes + text.length, nbdErrorPrefixBytes)
    h.writeUInt32BE(errno, nbdStructuredReplyHeaderBytes)
    h.writeUInt16BE(text.length, nbdStructuredReplyHeaderBytes + 4)
    this.send(h, text)
  }

  private simpleReply(req: Request, errno: number): Buffer {
    const h = Buffer.allocUnsafe(nbdSimpleReplyBytes)
    h.writeUInt32BE(nbdSimpleReplyMagic, 0)
    h.writeUInt32BE(errno, 4)
    h.writeUInt32BE(req.handleHi, 8)
    h.writeUInt32BE(req.handleLo, 12)
    return h
  }

  /** a structured chunk header with `extra` bytes of room after it for the payload's fixed fields */
  private chunkHeader(req: Request, flags: number, type: number, length: number, extra: number): Buffer {
    const h = Buffer.allocUnsafe(nbdStructuredReplyHeaderBytes + extra)
    h.writeUInt32BE(nbdStructuredReplyMagic, 0)
    h.writeUInt16BE(flags, 4)
    h.writeUInt16BE(type, 6)
    h.writeUInt32BE(req.handleHi, 8)
    h.writeUInt32BE(req.handleLo, 12)
    h.writeUInt32BE(length, 16)
    return h
  }

  // ---- writing ----

  /**
   * Queue one message (header and optional body) on the socket. Both writes happen in the same
   * tick while corked, so nothing can come between them; every message of the tick leaves in one
   * writev when the cork comes off.
   */
  private send(head: Buffer, body?: Buffer, sent?: (err?: Error | null) => void): void {
    // a reply that is never written leaves its pooled body to the garbage collector
    if (this.dead || !this.socket.writable) return
    const sender = this.senderFor()
    if (sender !== undefined) {
      // this tick's replies leave as one batch, written on the sender's thread
      let batch = this.batch
      if (batch === undefined) {
        batch = this.batch = { buffers: [], sent: [], bytes: 0 }
        process.nextTick(() => this.flushBatch())
      }
      batch.buffers.push(head)
      batch.bytes += head.length
      if (body !== undefined && body.length > 0) {
        batch.buffers.push(body)
        batch.bytes += body.length
        if (sent) batch.sent.push(sent)
      }
      if (sender.queuedBytes + batch.bytes >= replyBufferedMaxBytes) this.writeBlocked = true
      return
    }
    if (!this.corked) {
      this.corked = true
      this.socket.cork()
      process.nextTick(() => {
        this.corked = false
        this.socket.uncork()
      })
    }
    this.socket.write(head)
    if (body !== undefined && body.length > 0) this.socket.write(body, sent)
    // 'drain' follows: write() has returned false long before the buffer gets this large
    if (this.socket.writableLength >= replyBufferedMaxBytes) this.writeBlocked = true
  }

  /**
   * The sender that writes replies on a thread of its own (nativeio.ts), once the connection is in
   * the transmission phase on a plain socket and everything Node was sending has left; undefined
   * where there is none (no addon, TLS, or still in the handshake): replies go through the socket.
   */
  private senderFor(): SocketSender | undefined {
    if (this.sender !== undefined || this.senderTried) return this.sender
    if (!this.inTransmission || this.tlsActive || this.corked || this.socket.writableLength > 0) return undefined
    this.senderTried = true
    this.sender = SocketSender.open(
      this.socket as unknown as { _handle?: { fd?: unknown } | null },
      () => this.senderProgress(),
      (err) => {
        this.log.info(`NBD connection from ${this.peer}${this.exportLabel()}: ${err.message}`)
        this.socket.destroy()
      },
    )
    return this.sender
  }

  private flushBatch(): void {
    const batch = this.batch
    this.batch = undefined
    if (batch === undefined || this.sender === undefined) return
    // the addon takes at most 4096 buffers per batch; the callbacks go with the last part
    for (let i = 0; i < batch.buffers.length; i += 4096) {
      const last = i + 4096 >= batch.buffers.length
      this.sender.write(batch.buffers.slice(i, i + 4096), last ? batch.sent : [])
    }
  }

  private senderProgress(): void {
    if (this.writeBlocked && this.sender !== undefined && this.sender.queuedBytes < replyBufferedMaxBytes) {
      this.writeBlocked = false
      if (!this.closed) this.pump()
    }
  }

  // ---- ending ----

  private exportLabel(): string {
    return this.device ? ` (export "${this.device.name}")` : ''
  }

  /** a protocol violation we cannot answer: cut this connection only */
  private drop(reason: string): void {
    this.log.warn(`NBD connection from ${this.peer}${this.exportLabel()}: ${reason}; disconnecting`)
    this.socket.destroy()
  }

  /** the client certificate of a TLS connection */
  get certificate(): tls.PeerCertificate | undefined {
    return this.peerCert
  }

  /** its credentials were revoked: cut the connection (requests in flight get no answer) */
  revoke(reason: string): void {
    this.drop(`client certificate revoked: ${reason}`)
  }

  /** DISC, ABORT, the client leaving or the server closing: stop reading, end once idle */
  private beginDisconnect(): void {
    this.disconnecting = true
    this.updateFlow()
    if (this.inFlight === 0) this.finishDisconnect()
  }

  private finishDisconnect(): void {
    if (this.ending) return
    this.ending = true
    const device = this.device
    // replies still queued on the sender leave first; the socket ends after them
    const end = () => {
      this.flushBatch()
      const sender = this.sender
      if (sender === undefined) return this.socket.end(() => this.socket.destroy())
      sender.whenIdle(() => {
        sender.close()
        this.socket.end(() => this.socket.destroy())
      })
    }
    if (device === undefined || !this.dirty) {
      end()
      return
    }
    // the spec does not ask for a flush here, but a client that wrote and left expects its data kept
    this.inFlight++
    device
      .flush()
      .catch((err: unknown) => this.log.warn(`NBD export "${device.name}": flush at disconnect failed: ${errorMessage(err)}`))
      .finally(() => {
        this.inFlight--
        if (this.closed) this.maybeFinish()
        else end()
      })
  }

  private onClose(): void {
    this.closed = true
    this.batch = undefined
    this.sender?.close()
    clearTimeout(this.handshakeTimer)
    this.maybeFinish()
  }

  /** once closed and idle, release the device (once) and report the connection finished */
  private maybeFinish(): void {
    if (!this.closed || this.inFlight > 0 || this.optionBusy || this.finishing) return
    this.finishing = true
    const device = this.device
    if (device === undefined) {
      this.resolveFinished()
      return
    }
    device
      .close()
      .catch((err: unknown) => this.log.warn(`NBD export "${device.name}": close failed: ${errorMessage(err)}`))
      .finally(() => {
        this.log.info(`NBD connection from ${this.peer} on export "${device.name}" closed`)
        this.resolveFinished()
      })
  }
}
