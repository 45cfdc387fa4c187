import tls from 'node:tls'
import { TessError, errorMessage } from '../../common/errors.js'
import type { Logger } from '../../common/log.js'
import { DeviceError, nbdErrno } from '../nbd/device.js'
import { ChecksumError, egroupVersionsKnown } from '../vdisk/egroup.js'
import { NotOpenError, type ReplicaStore } from '../vdisk/replicastore.js'
import type { TlsCreds } from './client.js'
import { FrameParser, PeerError, dataPortIdleTimeoutMs, encodeFrame, num, ops, peerInFlightMax, statusError, statusOk, text, type Frame, type PeerErrorBody } from './protocol.js'

/** Forwarded vDisk I/O (a non-owner relays NBD requests to the owner). */
export interface VdiskIoHandler {
  io(name: string, op: string, offset: number, length: number, flags: { fua: boolean, noHole: boolean }, data: Buffer): Promise<Buffer | undefined>
  /** move every replica of the vDisk off a node (this CVM owns the vDisk) */
  evacuate(name: string, node: string): Promise<number>
}

const checksumEntriesBytes = 2048

/**
 * The data port: serves this node's extent group replicas to owners on other nodes, and vDisk I/O
 * forwarded by non-owners. Mutual TLS: only holders of a cluster certificate get in. A malformed
 * frame drops that connection only.
 */
export class DataServer {
  private server: tls.Server | undefined
  private readonly sockets = new Set<tls.TLSSocket>()

  constructor(private readonly opts: { creds: TlsCreds, store: ReplicaStore, vdisks: VdiskIoHandler, log: Logger }) {}

  listen(port: number, host: string): Promise<void> {
    this.server = tls.createServer({ ...this.opts.creds, requestCert: true, rejectUnauthorized: true }, (s) => this.serve(s))
    this.server.on('tlsClientError', () => { /* not one of ours */ })
    return new Promise((resolve, reject) => {
      this.server!.once('error', reject)
      this.server!.listen(port, host, () => resolve())
    })
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy()
    return new Promise((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()))
  }

  private serve(s: tls.TLSSocket): void {
    this.sockets.add(s)
    s.setNoDelay(true)
    const parser = new FrameParser()
    let inFlight = 0
    // A peer that goes quiet (or never finishes a frame) is dropped when nothing of its is being
    // served (a long evacuation is); owners reconnect on demand.
    s.setTimeout(dataPortIdleTimeoutMs, () => {
      if (inFlight === 0) s.destroy()
    })
    s.on('error', () => undefined)
    s.on('close', () => this.sockets.delete(s))
    s.on('data', (chunk: Buffer) => {
      let frames: Frame[]
      try {
        frames = parser.push(chunk)
      } catch (e) {
        this.opts.log.warn(`data port: dropping ${s.remoteAddress}: ${errorMessage(e)}`)
        s.destroy()
        return
      }
      for (const f of frames) {
        inFlight++
        if (inFlight >= peerInFlightMax) s.pause()
        void this.handle(f).then(
          ({ json, data }) => this.reply(s, f.id, statusOk, json, data),
          (e: unknown) => this.reply(s, f.id, statusError, errorBody(e, this.opts.log)),
        ).finally(() => {
          inFlight--
          if (inFlight < peerInFlightMax && s.isPaused()) s.resume()
        })
      }
    })
  }

  private reply(s: tls.TLSSocket, id: number, status: number, json: unknown, data?: Buffer): void {
    if (s.destroyed) return
    s.cork()
    for (const p of encodeFrame(id, status, json, data)) s.write(p)
    s.uncork()
  }

  private async handle(f: Frame): Promise<{ json: Record<string, unknown>, data?: Buffer }> {
    const j = f.json
    const st = this.opts.store
    switch (f.code) {
      case ops.ping:
        return { json: { pong: true } }
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
        await (await st.get(text(j, 'egid'))).read(num(j, 'slot'), num(j, 'offset'), length, out, 0)
        return { json: {}, data: out }
      }
      case ops.egWrite:
        await (await st.get(text(j, 'egid'))).write(num(j, 'slot'), num(j, 'offset'), f.data)
        return { json: {} }
      case ops.egClear:
        await (await st.get(text(j, 'egid'))).clear(num(j, 'slot'), num(j, 'offset'), num(j, 'length'))
        return { json: {} }
      case ops.egFreeSlot:
        await (await st.get(text(j, 'egid'))).freeSlot(num(j, 'slot'))
        return { json: {} }
      case ops.egSync:
        if (st.isOpen(text(j, 'egid'))) await (await st.get(text(j, 'egid'))).sync()
        return { json: {} }
      case ops.egDelete:
        await st.delete(text(j, 'egid'), text(j, 'diskId'))
        return { json: {} }
      case ops.egReadRaw: {
        const raw = await (await st.get(text(j, 'egid'))).readRaw(num(j, 'slot'))
        if (!raw) return { json: { entriesBytes: 0 } }
        return { json: { entriesBytes: raw.entries.length, version: raw.version }, data: Buffer.concat([raw.entries, raw.data]) }
      }
      case ops.egWriteRaw: {
        const eb = num(j, 'entriesBytes')
        if (eb !== checksumEntriesBytes || f.data.length !== eb + 1024 * 1024) throw new PeerError('invalid', 'raw slot of the wrong size')
        // the source's format version says which checksum the entries hold (absent: the first, CRC-32)
        const version = j.version === undefined ? 1 : num(j, 'version')
        if (!egroupVersionsKnown.includes(version)) throw new PeerError('invalid', `unknown extent group format version ${version}`)
        await (await st.get(text(j, 'egid'))).writeRaw(num(j, 'slot'), f.data.subarray(0, eb), f.data.subarray(eb), version)
        return { json: {} }
      }
      case ops.vdiskIo: {
        const data = await this.opts.vdisks.io(text(j, 'name'), text(j, 'op'), num(j, 'offset'), num(j, 'length'), { fua: j.fua === true, noHole: j.noHole === true }, f.data)
        return { json: {}, data }
      }
      case ops.vdiskEvacuate:
        return { json: { moved: await this.opts.vdisks.evacuate(text(j, 'name'), text(j, 'node')) } }
      default:
        throw new PeerError('invalid', `unknown op ${f.code}`)
    }
  }
}

function errorBody(e: unknown, log: Logger): PeerErrorBody {
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
