/**
 * The data port protocol between CVMs (replication and owner forwarding), over mutual TLS with
 * certificates of the cluster CA. Every frame, both directions:
 *
 *   u32 magic | u32 request id | u16 op (request) or status (response) | u16 reserved
 *   u32 JSON length | u32 data length | JSON parameters | data bytes
 *
 * Requests on one connection may be answered out of order (matched by request id).
 */
export const frameMagic = 0x54455353 // "TESS"
export const frameHeaderBytes = 20
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
  vdiskIo: 20,
  vdiskEvacuate: 21,
} as const
export type Op = (typeof ops)[keyof typeof ops]

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
  json: Record<string, unknown>
  data: Buffer
}

export function encodeFrame(id: number, code: number, json: unknown, data?: Buffer): Buffer[] {
  const j = Buffer.from(JSON.stringify(json ?? {}))
  const h = Buffer.allocUnsafe(frameHeaderBytes)
  h.writeUInt32BE(frameMagic, 0)
  h.writeUInt32BE(id >>> 0, 4)
  h.writeUInt16BE(code, 8)
  h.writeUInt16BE(0, 10)
  h.writeUInt32BE(j.length, 12)
  h.writeUInt32BE(data?.length ?? 0, 16)
  return data && data.length > 0 ? [h, j, data] : [h, j]
}

/**
 * Incremental frame parser with bounds: a frame over the limits or with a bad magic throws, and
 * the connection is dropped (never a crash).
 */
export class FrameParser {
  private chunks: Buffer[] = []
  private held = 0

  push(chunk: Buffer): Frame[] {
    this.chunks.push(chunk)
    this.held += chunk.length
    const out: Frame[] = []
    for (;;) {
      if (this.held < frameHeaderBytes) break
      const head = this.peek(frameHeaderBytes)
      if (head.readUInt32BE(0) !== frameMagic) throw new Error('bad frame magic')
      const jl = head.readUInt32BE(12)
      const dl = head.readUInt32BE(16)
      if (jl > frameJsonMaxBytes || dl > frameDataMaxBytes) throw new Error(`frame too large (${jl} + ${dl} bytes)`)
      const total = frameHeaderBytes + jl + dl
      if (this.held < total) break
      const all = this.take(total)
      let json: Record<string, unknown>
      try {
        const parsed: unknown = JSON.parse(all.subarray(frameHeaderBytes, frameHeaderBytes + jl).toString('utf8'))
        if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not an object')
        json = parsed as Record<string, unknown>
      } catch {
        throw new Error('frame parameters are not a JSON object')
      }
      out.push({ id: head.readUInt32BE(4), code: head.readUInt16BE(8), json, data: all.subarray(frameHeaderBytes + jl) })
    }
    return out
  }

  private peek(n: number): Buffer {
    if (this.chunks[0]!.length >= n) return this.chunks[0]!.subarray(0, n)
    const b = Buffer.concat(this.chunks)
    this.chunks = [b]
    return b.subarray(0, n)
  }

  private take(n: number): Buffer {
    let b: Buffer
    if (this.chunks[0]!.length >= n) {
      b = this.chunks[0]!.subarray(0, n)
      const rest = this.chunks[0]!.subarray(n)
      if (rest.length > 0) this.chunks[0] = rest
      else this.chunks.shift()
    } else {
      const all = Buffer.concat(this.chunks)
      b = all.subarray(0, n)
      this.chunks = all.length > n ? [all.subarray(n)] : []
    }
    this.held -= n
    return b
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
