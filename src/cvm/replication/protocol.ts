import { crc32c } from '../../lib/crc32c.js'
import { TessError, assert } from '../../lib/errors.js'
import type { BufferPool } from '../../lib/bufpool.js'
import { protocolVersion } from '../../lib/version.js'

/**
 * The data port protocol between CVMs (replication and owner forwarding). One listener, two kinds
 * of connection, told apart by their first byte:
 *
 * - mutual TLS with certificates of the cluster CA (a TLS handshake record starts with 0x16):
 *   every op, and the only way to get a bulk ticket;
 * - bulk (data port mode `crc`): plain TCP that starts with a hello (`bulkHelloMagic` and a ticket
 *   from `ops.bulkTicket`, single use, bound to the peer that asked for it). It carries only the
 *   ops in `bulkOps`, and every frame carries CRC-32C checksums (integrity against accidental
 *   corruption, not against an attacker on the path; see the README).
 *
 * Every frame, both directions, on both kinds:
 *
 *   u32 magic | u32 request id | u16 op (request) or status (response) | u16 sender's protocol
 *   u32 JSON length | u32 data length
 *   bulk only: u32 CRC-32C of the JSON | u32 CRC-32C of the data | u32 CRC-32C of the 28 bytes before
 *   JSON parameters | data bytes
 *
 * Requests on one connection may be answered out of order (matched by request id).
 */
export const frameMagic = 0x54455353 // "TESS"
export const frameHeaderBytes = 20
/** a bulk frame's header: the TLS one and three checksums (JSON, data, the header itself) */
export const bulkFrameHeaderBytes = 32
export const frameJsonMaxBytes = 64 * 1024
export const frameDataMaxBytes = 33 * 1024 * 1024
export const dataPortDefault = 10810
export const peerRequestTimeoutMs = 10_000
export const peerInFlightMax = 128
export const peerConnectTimeoutMs = 3_000
/** a data port connection with no traffic for this long is closed by the server */
export const dataPortIdleTimeoutMs = 5 * 60_000
/** how long a peer that refused or timed out a connect is failed fast */
export const peerDownBackoffMs = 3_000

/** The first byte of a TLS connection (a handshake record); a bulk hello never starts with it. */
export const tlsHandshakeRecordType = 0x16
/** what a bulk connection starts with, followed by its ticket ("T": never a TLS record) */
export const bulkHelloMagic = Buffer.from('TESSBLK1', 'latin1')
/** the server's answer to an accepted hello; nothing else is sent before it */
export const bulkAcceptMagic = Buffer.from('TESSBOK1', 'latin1')
export const bulkTicketBytes = 32
export const bulkHelloBytes = bulkHelloMagic.length + bulkTicketBytes
/** a ticket not used by then is void */
export const bulkTicketTtlMs = 10_000
export const bulkTicketsPendingPerPeerMax = 4
export const bulkTicketsPendingMax = 256
/** a client keeps one; the rest is room for a reconnect that overlaps the old one's close */
export const bulkConnectionsPerPeerMax = 4
/** a client that could not open a bulk connection sends over TLS and tries again after this */
export const bulkRetryAfterFailureMs = 30_000
/** a new connection must finish its TLS handshake or its bulk hello within this */
export const dataPortHelloTimeoutMs = 5_000
/** connections that have not finished a TLS handshake or a bulk hello, at once */
export const dataPortUnauthenticatedMax = 256
/** every connection of the data port, at once (the accept loop refuses beyond) */
export const dataPortConnectionsMax = 2048

export const ops = {
  ping: 1,
  egCreate: 2,
  egOpen: 3,
  egRead: 4,
  egWrite: 5,
  egClear: 6,
  egFreeSlot: 7,
  egSync: 8,
  egDelete: 9,
  egReadRaw: 10,
  egWriteRaw: 11,
  pickDisk: 12,
  /**
   * TLS only: copy every slot of an extent group that holds data from the same group's replica on
   * another node (`from: {node, diskId}`) into the replica here, reading it over this node's own
   * data port connection to that node (a repair's copy then crosses the network once, not twice
   * through the owner)
   */
  egPull: 13,
  vdiskIo: 20,
  vdiskEvacuate: 21,
  /** TLS only: a one-time ticket (data: `bulkTicketBytes`) for one bulk connection */
  bulkTicket: 30,
} as const
export type Op = (typeof ops)[keyof typeof ops]

/** The ops that carry extent data: the only ones a bulk connection serves; clients send them there when it is up. */
export const bulkOps: ReadonlySet<number> = new Set<number>([ops.egRead, ops.egWrite, ops.egReadRaw, ops.egWriteRaw, ops.vdiskIo])

/**
 * How a CVM sends bulk data to other CVMs: `tls`, everything inside mutual TLS; `crc` (default),
 * extent data over bulk connections with CRC-32C per frame and the rest over TLS. A CVM in `tls`
 * mode also refuses bulk connections to itself. Set in node.json (`data.mode`); the environment
 * variable TESS_DATA_PORT_MODE overrides it.
 */
export type DataPortMode = 'tls' | 'crc'
export const dataPortModes: readonly DataPortMode[] = ['tls', 'crc']
export const dataPortModeDefault: DataPortMode = 'crc'

export function dataPortMode(configured: string | undefined, env: string | undefined): DataPortMode {
  const [value, source] = env !== undefined && env !== '' ? [env, 'TESS_DATA_PORT_MODE'] : [configured, 'node.json data.mode']
  if (value === undefined) return dataPortModeDefault
  if ((dataPortModes as readonly string[]).includes(value)) return value as DataPortMode
  throw new TessError('TESS_E_INVALID', `data port mode "${value}" (${source}) is not one of ${dataPortModes.join(', ')}`, 'set tls or crc, or leave it unset for crc')
}

export const statusOk = 0
export const statusError = 1

/** Error kinds a peer reports; the caller decides (retry, repair, EIO). */
export type PeerErrorKind = 'checksum' | 'not-open' | 'io' | 'invalid' | 'not-owner' | 'errno' | 'internal'

export interface PeerErrorBody {
  kind: PeerErrorKind
  message: string
  errno?: number
}

export class PeerError extends Error {
  constructor(readonly kind: PeerErrorKind | 'unreachable' | 'timeout', message: string, readonly errno?: number) {
    super(message)
    this.name = 'PeerError'
  }
}

export interface Frame {
  id: number
  code: number
  /** the sender's protocol (lib/version.ts; 0 on the wire from releases before it was sent: 1) */
  protocol: number
  json: Record<string, unknown>
  data: Buffer
  /** give the frame's memory back to its parser's pool, once nothing holds `data` (safe to call twice) */
  release: () => void
}

/**
 * A frame as buffers to write in one go (corked). `bulk`: with the checksums of a bulk connection.
 * The data buffer is not copied: the caller must not change it until the request settles.
 */
export function encodeFrame(id: number, code: number, json: unknown, data?: Buffer, bulk = false): Buffer[] {
  const js = JSON.stringify(json ?? {})
  const jl = Buffer.byteLength(js)
  // what we send, the peer's parser must accept: a frame over its bounds would drop the connection
  assert(jl <= frameJsonMaxBytes && (data?.length ?? 0) <= frameDataMaxBytes, `a data port frame within bounds (${jl} + ${data?.length ?? 0} bytes)`)
  assert(Number.isInteger(code) && code >= 0 && code <= 0xffff, `a data port frame code fits 16 bits (${code})`)
  const hl = bulk ? bulkFrameHeaderBytes : frameHeaderBytes
  const h = Buffer.allocUnsafe(hl + jl)
  h.writeUInt32BE(frameMagic, 0)
  h.writeUInt32BE(id >>> 0, 4)
  h.writeUInt16BE(code, 8)
  h.writeUInt16BE(protocolVersion, 10)
  h.writeUInt32BE(jl, 12)
  h.writeUInt32BE(data?.length ?? 0, 16)
  h.write(js, hl, 'utf8')
  if (bulk) {
    h.writeUInt32BE(crc32c(h.subarray(hl)), 20)
    h.writeUInt32BE(data && data.length > 0 ? crc32c(data) : 0, 24)
    h.writeUInt32BE(crc32c(h.subarray(0, 28)), 28)
  }
  return data && data.length > 0 ? [h, data] : [h]
}

/** A bulk frame whose checksums do not match its bytes: the connection is dropped. */
export class FrameChecksumError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'FrameChecksumError'
  }
}

/**
 * Incremental frame parser with bounds: a frame over the limits, with a bad magic or (bulk) a
 * checksum that does not match throws, and the connection is dropped (never a crash). A bulk
 * header is checked before its lengths are trusted.
 */
export class FrameParser {
  private readonly headerBytes: number
  /** the header being received */
  private readonly head: Buffer
  private headFilled = 0
  /** the frame whose parameters and data are being received, after its header was checked */
  private body: { id: number, code: number, protocol: number, jsonSum: number, dataSum: number, params: Buffer, block: Buffer | undefined, data: Buffer, filled: number } | undefined

  /**
   * `pool`: where frame bodies are assembled; a frame's release() gives its block back. Without
   * one, each body is a fresh buffer and release() does nothing.
   */
  constructor(private readonly bulk = false, private readonly pool?: BufferPool) {
    this.headerBytes = bulk ? bulkFrameHeaderBytes : frameHeaderBytes
    this.head = Buffer.alloc(this.headerBytes)
  }

  /**
   * The frames `chunk` completes. Every byte is copied out of `chunk`, so it may be a view of a
   * receive buffer that is reused once this returns.
   */
  push(chunk: Buffer): Frame[] {
    const out: Frame[] = []
    const hl = this.headerBytes
    let at = 0
    for (;;) {
      let body = this.body
      if (body === undefined) {
        const n = Math.min(hl - this.headFilled, chunk.length - at)
        chunk.copy(this.head, this.headFilled, at, at + n)
        this.headFilled += n
        at += n
        if (this.headFilled < hl) break
        this.headFilled = 0
        body = this.startBody()
      }
      // the parameters into their own buffer, then the data into its (pooled, aligned) block
      const jl = body.params.length
      if (body.filled < jl) {
        const n = Math.min(jl - body.filled, chunk.length - at)
        chunk.copy(body.params, body.filled, at, at + n)
        body.filled += n
        at += n
      }
      if (body.filled >= jl) {
        const n = Math.min(jl + body.data.length - body.filled, chunk.length - at)
        chunk.copy(body.data, body.filled - jl, at, at + n)
        body.filled += n
        at += n
      }
      if (body.filled < jl + body.data.length) break
      this.body = undefined
      out.push(this.finish(body))
    }
    return out
  }

  /**
   * The rest of the data of the frame being received, once its parameters are in and at least
   * `minBytes` of it are missing: the next socket read may go straight there (withReceiveBuffer's
   * nextInto), one copy less per byte of extent data. Every byte push() was given is consumed by
   * then, so nothing received is waiting ahead of it.
   */
  dataRest(minBytes: number): Buffer | undefined {
    const body = this.body
    if (body === undefined || body.filled < body.params.length) return undefined
    const done = body.filled - body.params.length
    return body.data.length - done >= minBytes ? body.data.subarray(done) : undefined
  }

  /** `n` bytes were read straight into what dataRest() returned: the frame that completes, if it does */
  receivedData(n: number): Frame[] {
    const body = this.body
    assert(body !== undefined && body.filled >= body.params.length && body.filled + n <= body.params.length + body.data.length, 'data read into a frame stays inside its data')
    body.filled += n
    if (body.filled < body.params.length + body.data.length) return []
    this.body = undefined
    return [this.finish(body)]
  }

  /** a complete header: checked before its lengths are trusted */
  private startBody(): NonNullable<FrameParser['body']> {
    const head = this.head
    if (head.readUInt32BE(0) !== frameMagic) throw new Error('bad frame magic')
    if (this.bulk && crc32c(head.subarray(0, 28)) !== head.readUInt32BE(28)) throw new FrameChecksumError('frame header checksum mismatch')
    const jl = head.readUInt32BE(12)
    const dl = head.readUInt32BE(16)
    if (jl > frameJsonMaxBytes || dl > frameDataMaxBytes) throw new Error(`frame too large (${jl} + ${dl} bytes)`)
    // the data at the start of a pooled block: an aligned block lets a replica write it with O_DIRECT
    const block = dl > 0 ? this.pool?.take(dl) : undefined
    this.body = {
      id: head.readUInt32BE(4), code: head.readUInt16BE(8), protocol: head.readUInt16BE(10) || 1,
      jsonSum: this.bulk ? head.readUInt32BE(20) : 0, dataSum: this.bulk ? head.readUInt32BE(24) : 0,
      params: Buffer.allocUnsafe(jl), block, data: block ? block.subarray(0, dl) : Buffer.allocUnsafe(dl), filled: 0,
    }
    return this.body
  }

  private finish(body: NonNullable<FrameParser['body']>): Frame {
    const { params, data } = body
    if (this.bulk) {
      if (crc32c(params) !== body.jsonSum) throw new FrameChecksumError('frame parameters checksum mismatch')
      if ((data.length > 0 ? crc32c(data) : 0) !== body.dataSum) throw new FrameChecksumError(`frame data checksum mismatch (${data.length} bytes)`)
    }
    let json: Record<string, unknown>
    try {
      const parsed: unknown = JSON.parse(params.toString('utf8'))
      if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not an object')
      json = parsed as Record<string, unknown>
    } catch {
      throw new Error('frame parameters are not a JSON object')
    }
    const pool = this.pool
    let block = body.block
    const release = () => {
      if (block !== undefined && pool !== undefined) pool.give(block)
      block = undefined
    }
    return { id: body.id, code: body.code, protocol: body.protocol, json, data, release }
  }
}

export function num(j: Record<string, unknown>, k: string): number {
  const v = j[k]
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new PeerError('invalid', `parameter "${k}" must be a non-negative integer`)
  return v
}

export function text(j: Record<string, unknown>, k: string): string {
  const v = j[k]
  if (typeof v !== 'string' || v.length === 0 || v.length > 256) throw new PeerError('invalid', `parameter "${k}" must be a string`)
  return v
}
