import crypto from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import tls from 'node:tls'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createCa, createNodeCert } from '../../src/bootstrap/pki.js'
import type { Logger } from '../../src/lib/log.js'
import type { DiskRecord } from '../../src/lib/types.js'
import { PeerClient, PeerPool, type TlsCreds } from '../../src/cvm/replication/client.js'
import {
  FrameChecksumError, FrameParser, PeerError, bulkAcceptMagic, bulkConnectionsPerPeerMax, bulkHelloMagic, bulkTicketBytes,
  bulkTicketTtlMs, bulkTicketsPendingPerPeerMax, dataPortMode, encodeFrame, ops, type DataPortMode, type Frame,
} from '../../src/cvm/replication/protocol.js'
import { DataServer } from '../../src/cvm/replication/server.js'
import { protocolVersion } from '../../src/lib/version.js'
import { ReplicaStore } from '../../src/cvm/vdisk/replicastore.js'
import { RemoteReplica } from '../../src/cvm/vdisk/replica.js'

const quiet: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined }
const helloTimeoutMs = 400

function recordingLog(): Logger & { lines: string[] } {
  const lines: string[] = []
  return { lines, info: (m) => lines.push(`INFO ${m}`), warn: (m) => lines.push(`WARN ${m}`), error: (m) => lines.push(`ERROR ${m}`) }
}

const MiB = 1024 * 1024

describe('bulk frames', () => {
  it('carry the sender\'s protocol; a frame with 0 there (from a release before it was sent) is protocol 1', () => {
    for (const bulk of [false, true]) {
      const bytes = Buffer.concat(encodeFrame(3, ops.ping, {}, undefined, bulk))
      expect(bytes.readUInt16BE(10)).toBe(protocolVersion)
      expect(new FrameParser(bulk).push(bytes)[0]!.protocol).toBe(protocolVersion)
    }
    const old = Buffer.concat(encodeFrame(3, ops.ping, {}))
    old.writeUInt16BE(0, 10)
    expect(new FrameParser(false).push(old)[0]!.protocol).toBe(1)
  })

  it('round-trip with checksums, and any flipped byte is caught', () => {
    const data = crypto.randomBytes(5000)
    const bytes = Buffer.concat(encodeFrame(9, ops.egWrite, { egid: 'e1', slot: 2 }, data, true))
    const p = new FrameParser(true)
    const out: Frame[] = []
    for (let i = 0; i < bytes.length; i += 777) out.push(...p.push(bytes.subarray(i, i + 777)))
    expect(out).toHaveLength(1)
    expect(out[0]!.id).toBe(9)
    expect(out[0]!.json).toEqual({ egid: 'e1', slot: 2 })
    expect(out[0]!.data.equals(data)).toBe(true)
    // a TLS parser does not take bulk frames (and the other way round)
    expect(() => new FrameParser(false).push(bytes)).toThrow()
    expect(() => new FrameParser(true).push(Buffer.concat([...encodeFrame(1, ops.ping, {}), Buffer.alloc(32)]))).toThrow()
    // flip one bit anywhere but the magic (header, its checksums, JSON, data): never accepted
    for (const at of [4, 8, 13, 17, 20, 25, 29, 33, 40, bytes.length - 4000, bytes.length - 1]) {
      const bad = Buffer.from(bytes)
      bad[at]! ^= 0x10
      let caught: unknown
      try {
        // a corrupted length may leave the parser waiting for more: that is no frame either
        expect(new FrameParser(true).push(bad)).toEqual([])
      } catch (e) {
        caught = e
      }
      if (caught) expect(caught).toBeInstanceOf(FrameChecksumError)
    }
    // a header whose length field was hit is refused at once, before its payload is awaited
    const badLen = Buffer.from(bytes)
    badLen[18]! ^= 0x01
    expect(() => new FrameParser(true).push(badLen.subarray(0, 40))).toThrow(FrameChecksumError)
    // an empty frame has checksums too
    const empty = Buffer.concat(encodeFrame(3, 0, {}, undefined, true))
    expect(new FrameParser(true).push(empty)[0]!.data.length).toBe(0)
  })

  it('the rest of a frame\'s data may be received straight into it, and is checked like any other', () => {
    const data = crypto.randomBytes(MiB)
    const bytes = Buffer.concat(encodeFrame(4, ops.egWrite, { egid: 'e2', slot: 1 }, data, true))
    const dataAt = bytes.length - data.length
    const viaRest = (frame: Buffer): Frame[] => {
      const p = new FrameParser(true)
      // header, parameters and 1000 bytes of data through push(): nothing is offered before the parameters are in
      expect(p.push(frame.subarray(0, dataAt - 5))).toEqual([])
      expect(p.dataRest(64 * 1024)).toBeUndefined()
      expect(p.push(frame.subarray(dataAt - 5, dataAt + 1000))).toEqual([])
      const out: Frame[] = []
      for (let at = dataAt + 1000; at < frame.length;) {
        const rest = p.dataRest(1)!
        // exactly what is missing of the data, never more
        expect(rest.length).toBe(frame.length - at)
        const n = Math.min(rest.length, 200_000)
        frame.copy(rest, 0, at, at + n)
        out.push(...p.receivedData(n))
        at += n
      }
      expect(p.dataRest(1)).toBeUndefined()
      return out
    }
    const out = viaRest(bytes)
    expect(out).toHaveLength(1)
    expect(out[0]!.json).toEqual({ egid: 'e2', slot: 1 })
    expect(out[0]!.data.equals(data)).toBe(true)
    // a byte flipped in the data that arrives this way is caught by the frame's checksum
    const bad = Buffer.from(bytes)
    bad[bytes.length - 10]! ^= 0x01
    expect(() => viaRest(bad)).toThrow(FrameChecksumError)
    // less missing than asked for: nothing offered (the buffer takes the end and the next header)
    const p = new FrameParser(true)
    p.push(bytes.subarray(0, bytes.length - 100))
    expect(p.dataRest(64 * 1024)).toBeUndefined()
    expect(p.dataRest(100)!.length).toBe(100)
  })

  it('mode: crc by default, node.json, the environment wins, nonsense refused', () => {
    expect(dataPortMode(undefined, undefined)).toBe('crc')
    expect(dataPortMode('tls', undefined)).toBe('tls')
    expect(dataPortMode('tls', 'crc')).toBe('crc')
    expect(dataPortMode('crc', '')).toBe('crc')
    expect(() => dataPortMode('plain', undefined)).toThrow(/node.json/)
    expect(() => dataPortMode(undefined, 'none')).toThrow(/TESS_DATA_PORT_MODE/)
  })
})

/**
 * Forwards connections to the data port; flips one byte of the next big chunk of a bulk connection
 * in the direction asked, or refuses bulk connections.
 */
class Proxy {
  readonly server: net.Server
  port = 0
  flipUp = 0
  flipDown = 0
  refuseBulk = false
  bulkSeen = 0

  constructor(target: () => number) {
    this.server = net.createServer((c) => {
      const u = net.connect(target(), '127.0.0.1')
      let kind: 'tls' | 'bulk' | undefined
      const kill = () => { c.destroy(); u.destroy() }
      c.on('error', kill)
      u.on('error', kill)
      c.on('close', kill)
      u.on('close', kill)
      c.on('data', (chunk: Buffer) => {
        if (!kind) {
          kind = chunk[0] === 0x16 ? 'tls' : 'bulk'
          if (kind === 'bulk') this.bulkSeen++
          if (kind === 'bulk' && this.refuseBulk) return kill()
        }
        if (kind === 'bulk' && this.flipUp > 0 && chunk.length > 1000) {
          this.flipUp--
          chunk = Buffer.from(chunk)
          chunk[chunk.length >> 1]! ^= 0x01
        }
        u.write(chunk)
      })
      u.on('data', (chunk: Buffer) => {
        if (kind === 'bulk' && this.flipDown > 0 && chunk.length > 1000) {
          this.flipDown--
          chunk = Buffer.from(chunk)
          chunk[chunk.length >> 1]! ^= 0x01
        }
        c.write(chunk)
      })
    })
  }

  async listen(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()))
    this.port = (this.server.address() as net.AddressInfo).port
  }
}

function waitClose(s: net.Socket): Promise<void> {
  return new Promise((resolve) => (s.destroyed ? resolve() : s.once('close', () => resolve())))
}

/** Connect and say hello with this ticket: accepted (the socket, open) or refused (closed). */
async function hello(port: number, ticket: Buffer, opts: { localAddress?: string } = {}): Promise<{ accepted: boolean, sock: net.Socket }> {
  const sock = net.connect({ host: '127.0.0.1', port, localAddress: opts.localAddress })
  sock.on('error', () => undefined)
  await new Promise<void>((r) => sock.once('connect', () => r()))
  sock.write(Buffer.concat([bulkHelloMagic, ticket]))
  const accepted = await new Promise<boolean>((resolve) => {
    let got = Buffer.alloc(0)
    sock.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d])
      if (got.length >= bulkAcceptMagic.length) resolve(got.subarray(0, bulkAcceptMagic.length).equals(bulkAcceptMagic))
    })
    sock.once('close', () => resolve(false))
  })
  if (accepted) sock.removeAllListeners('data')
  return { accepted, sock }
}

/** One request on an accepted bulk socket. */
function bulkCall(sock: net.Socket, op: number, json: Record<string, unknown>, data?: Buffer): Promise<Frame | 'closed'> {
  const parser = new FrameParser(true)
  return new Promise((resolve) => {
    sock.on('data', (d: Buffer) => {
      const f = parser.push(d)[0]
      if (f) resolve(f)
    })
    sock.once('close', () => resolve('closed'))
    sock.write(Buffer.concat(encodeFrame(1, op, json, data, true)))
  })
}

describe('data port bulk connections', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-dpb-'))
  let n1: TlsCreds
  let n2: TlsCreds
  let store: ReplicaStore
  const servers: DataServer[] = []
  const clients: Array<{ close(): void }> = []
  const proxies: Proxy[] = []

  async function start(o: { mode?: DataPortMode, clock?: () => number, random?: (n: number) => Buffer, log?: Logger } = {}): Promise<{ server: DataServer, port: number }> {
    const server = new DataServer({ creds: n1, store, vdisks: { io: async () => undefined, evacuate: async () => 0 }, log: o.log ?? quiet, helloTimeoutMs, ...o })
    await server.listen(0, '127.0.0.1')
    servers.push(server)
    return { server, port: server.address().port }
  }

  function client(port: number, creds: TlsCreds, mode: DataPortMode = 'crc', log: Logger = quiet): PeerClient {
    // the server is always n1 (its certificate names it); creds are the client's own
    const c = new PeerClient('n1', '127.0.0.1', port, creds, { mode, log })
    clients.push(c)
    return c
  }

  function replica(port: number, egid: string, mode: DataPortMode = 'crc', log: Logger = quiet): { r: RemoteReplica, pool: PeerPool } {
    const pool = new PeerPool(n2, async () => ({ address: '127.0.0.1', dataPort: port }), { mode, log })
    clients.push({ close: () => pool.closeAll() })
    return { r: new RemoteReplica('n1', '1', egid, '7', pool), pool }
  }

  async function ticket(c: PeerClient): Promise<Buffer> {
    const f = await c.request(ops.bulkTicket, {})
    expect(f.data.length).toBe(bulkTicketBytes)
    return f.data
  }

  beforeAll(() => {
    const pki = path.join(dir, 'pki')
    const ca = createCa(pki, 'dpb')
    const c1 = createNodeCert(pki, ca, 'n1', ['127.0.0.1'])
    n1 = { cert: fs.readFileSync(c1.cert), key: fs.readFileSync(c1.key), ca: fs.readFileSync(ca.caCert) }
    const c2 = createNodeCert(pki, ca, 'n2', ['127.0.0.1'])
    n2 = { cert: fs.readFileSync(c2.cert), key: fs.readFileSync(c2.key), ca: fs.readFileSync(ca.caCert) }
    const disk = path.join(dir, 'disk')
    fs.mkdirSync(path.join(disk, 'egroups'), { recursive: true })
    const disks: DiskRecord[] = [{ id: '1', node: 'n1', path: disk, addedAt: '' }]
    store = new ReplicaStore({ localDisks: async () => disks, log: quiet })
  })

  afterAll(async () => {
    for (const c of clients) c.close()
    for (const p of proxies) p.server.close()
    for (const s of servers) await s.close()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it('a replica is written and read over a bulk connection got with a ticket', async () => {
    const { server, port } = await start()
    const { r, pool } = replica(port, '101')
    await r.open([])
    const data = crypto.randomBytes(256 * 1024)
    await r.write(0, 0, data)
    const c = await pool.get('n1')
    expect(c.bulkUp).toBe(true)
    expect(server.bulkConnections().get('n2')).toBe(1)
    const out = Buffer.alloc(data.length)
    await r.read(0, 0, data.length, out, 0)
    expect(out.equals(data)).toBe(true)
    const raw = await r.readRaw(0)
    expect(raw?.data.subarray(0, data.length).equals(data)).toBe(true)
    await r.writeRaw(1, raw!)
    await r.read(1, 0, data.length, out.fill(0), 0)
    expect(out.equals(data)).toBe(true)
    await r.sync()
    // the replica still checks its blocks: a read of a slot never written fails as before
    await expect(r.read(99, 0, 4096, out, 0)).rejects.toBeInstanceOf(PeerError)
  })

  it('refuses unknown, reused, expired and misplaced tickets; serves only extent data', async () => {
    let now = Date.now()
    const { server, port } = await start({ clock: () => now })
    const c = client(port, n2, 'tls')
    // a ticket nobody issued
    expect((await hello(port, crypto.randomBytes(bulkTicketBytes))).accepted).toBe(false)
    // a good one, once
    const t = await ticket(c)
    const first = await hello(port, t)
    expect(first.accepted).toBe(true)
    expect(server.bulkConnections().get('n2')).toBe(1)
    expect((await hello(port, t)).accepted).toBe(false)
    // ping, or anything that is not extent data, is refused on a bulk connection, which stays usable
    const refused = await bulkCall(first.sock, ops.egDelete, { egid: '101', diskId: '1' })
    expect(refused).not.toBe('closed')
    expect((refused as Frame).code).toBe(1)
    expect((refused as Frame).json.kind).toBe('invalid')
    first.sock.removeAllListeners('data')
    first.sock.removeAllListeners('close')
    const answered = await bulkCall(first.sock, ops.egRead, { egid: 'nope', slot: 0, offset: 0, length: 4096 })
    expect(answered).not.toBe('closed')
    first.sock.destroy()
    // expired
    const t2 = await ticket(c)
    now += bulkTicketTtlMs + 1
    expect((await hello(port, t2)).accepted).toBe(false)
    // from another address than the connection that asked for it (and used up by that try)
    const t3 = await ticket(c)
    expect((await hello(port, t3, { localAddress: '127.0.0.2' })).accepted).toBe(false)
    expect((await hello(port, t3)).accepted).toBe(false)
    // a wrong byte anywhere in the ticket
    const t4 = await ticket(c)
    const wrong = Buffer.from(t4)
    wrong[31]! ^= 0x80
    expect((await hello(port, wrong)).accepted).toBe(false)
    expect((await hello(port, t4)).accepted).toBe(true)
  })

  it('bounds pending tickets and bulk connections per peer', async () => {
    const { server, port } = await start()
    const c = client(port, n2, 'tls')
    const ts: Buffer[] = []
    for (let i = 0; i < bulkTicketsPendingPerPeerMax; i++) ts.push(await ticket(c))
    await expect(c.request(ops.bulkTicket, {})).rejects.toThrow(/too many bulk tickets/)
    // another peer is not affected
    await ticket(client(port, n1, 'tls'))
    const socks: net.Socket[] = []
    for (const t of ts) {
      const h = await hello(port, t)
      expect(h.accepted).toBe(true)
      socks.push(h.sock)
    }
    expect(server.bulkConnections().get('n2')).toBe(bulkConnectionsPerPeerMax)
    const extra = await ticket(c)
    expect((await hello(port, extra)).accepted).toBe(false)
    socks[0]!.destroy()
    await new Promise((r) => setTimeout(r, 50))
    expect((await hello(port, await ticket(c))).accepted).toBe(true)
  })

  it('drops strangers and garbage; a good bulk connection keeps working', async () => {
    let tickets = 0
    const { port } = await start({ random: (n) => { tickets++; return crypto.randomBytes(n) } })
    const { r, pool } = replica(port, '102')
    await r.open([])
    const data = crypto.randomBytes(64 * 1024)
    await r.write(0, 0, data)
    expect((await pool.get('n1')).bulkUp).toBe(true)
    expect(tickets).toBe(1)

    const strangers: Array<() => Promise<void>> = [
      // plain garbage, an HTTP request, half a magic then garbage
      async () => { const s = net.connect(port, '127.0.0.1'); s.on('error', () => undefined); s.write(Buffer.alloc(64, 0xff)); await waitClose(s) },
      async () => { const s = net.connect(port, '127.0.0.1'); s.on('error', () => undefined); s.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'); await waitClose(s) },
      async () => { const s = net.connect(port, '127.0.0.1'); s.on('error', () => undefined); s.write(bulkHelloMagic.subarray(0, 5)); s.write('XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX'); await waitClose(s) },
      // a hello that never ends, silence, a TLS hello that never ends: dropped after the hello timeout
      async () => { const s = net.connect(port, '127.0.0.1'); s.on('error', () => undefined); s.write(Buffer.concat([bulkHelloMagic, Buffer.alloc(10)])); await waitClose(s) },
      async () => { const s = net.connect(port, '127.0.0.1'); s.on('error', () => undefined); await waitClose(s) },
      async () => { const s = net.connect(port, '127.0.0.1'); s.on('error', () => undefined); s.write(Buffer.from([0x16, 3, 1, 0, 200, 1])); await waitClose(s) },
      // a hello with a ticket and frames right behind it (the client must wait for the accept)
      async () => { const s = net.connect(port, '127.0.0.1'); s.on('error', () => undefined); s.write(Buffer.concat([bulkHelloMagic, crypto.randomBytes(32), ...encodeFrame(1, ops.egRead, {}, undefined, true)])); await waitClose(s) },
      // TLS without a cluster certificate
      async () => {
        const s = tls.connect({ host: '127.0.0.1', port, ca: n1.ca, checkServerIdentity: () => undefined })
        s.on('error', () => undefined)
        await waitClose(s)
      },
    ]
    const t0 = Date.now()
    await Promise.all(strangers.map((f) => f()))
    expect(Date.now() - t0).toBeLessThan(helloTimeoutMs * 10)
    // a peer with a ticket that then sends garbage, or a frame with a bad checksum
    const c = client(port, n1, 'tls')
    for (const junk of [Buffer.alloc(100, 0x41), (() => { const f = Buffer.concat(encodeFrame(1, ops.egRead, { egid: '102' }, undefined, true)); f[f.length - 2]! ^= 1; return f })()]) {
      const h = await hello(port, await ticket(c))
      expect(h.accepted).toBe(true)
      h.sock.write(junk)
      await waitClose(h.sock)
    }
    // the first client's bulk connection is the same one and still serves
    const out = Buffer.alloc(data.length)
    await r.read(0, 0, data.length, out, 0)
    expect(out.equals(data)).toBe(true)
    await r.write(0, 65536, data)
    expect(tickets).toBe(1 + 2)
  })

  it('a byte flipped on the way to the replica fails the write and stores nothing', async () => {
    const serverLog = recordingLog()
    const { port } = await start({ log: serverLog })
    const proxy = new Proxy(() => port)
    proxies.push(proxy)
    await proxy.listen()
    const { r, pool } = replica(proxy.port, '103')
    await r.open([])
    const good = crypto.randomBytes(1024 * 1024)
    await r.write(0, 0, good)
    expect((await pool.get('n1')).bulkUp).toBe(true)
    proxy.flipUp = 1
    const bad = crypto.randomBytes(1024 * 1024)
    const err = await r.write(0, 0, bad).then(() => undefined, (e: unknown) => e)
    expect(err).toBeInstanceOf(PeerError)
    expect((err as PeerError).kind).toBe('unreachable')
    expect(proxy.flipUp).toBe(0)
    expect(serverLog.lines.join('\n')).toMatch(/dropping bulk connection of node n2 .*: frame data checksum mismatch/)
    // what is stored is the write before, whole (read through TLS only, straight to the server)
    const check = replica(port, '103', 'tls').r
    const out = Buffer.alloc(good.length)
    await check.read(0, 0, good.length, out, 0)
    expect(out.equals(good)).toBe(true)
    // the next write opens a new bulk connection and succeeds
    await r.write(0, 0, bad)
    expect((await pool.get('n1')).bulkUp).toBe(true)
    await check.read(0, 0, bad.length, out, 0)
    expect(out.equals(bad)).toBe(true)
  })

  it('a byte flipped on the way back fails the read instead of returning it', async () => {
    const { port } = await start()
    const proxy = new Proxy(() => port)
    proxies.push(proxy)
    await proxy.listen()
    const { r } = replica(proxy.port, '104')
    await r.open([])
    const data = crypto.randomBytes(512 * 1024)
    await r.write(0, 0, data)
    proxy.flipDown = 1
    const out = Buffer.alloc(data.length)
    const err = await r.read(0, 0, data.length, out, 0).then(() => undefined, (e: unknown) => e)
    expect(err).toBeInstanceOf(PeerError)
    expect((err as PeerError).message).toMatch(/checksum mismatch/)
    await r.read(0, 0, data.length, out, 0)
    expect(out.equals(data)).toBe(true)
  })

  it('falls back to TLS when no bulk connection can be made, and says so once', async () => {
    // the peer is in mode tls: it gives no tickets
    const tlsOnly = await start({ mode: 'tls' })
    const log1 = recordingLog()
    const a = replica(tlsOnly.port, '105', 'crc', log1)
    await a.r.open([])
    const data = crypto.randomBytes(128 * 1024)
    for (let i = 0; i < 3; i++) await a.r.write(i, 0, data)
    expect((await a.pool.get('n1')).bulkUp).toBe(false)
    expect(log1.lines.filter((l) => l.includes('no bulk connection'))).toHaveLength(1)
    expect(log1.lines[0]).toMatch(/mode is tls/)
    // and refuses bulk hellos outright
    expect((await hello(tlsOnly.port, crypto.randomBytes(bulkTicketBytes))).accepted).toBe(false)

    // something on the path lets TLS through but not plain TCP
    const { port } = await start()
    const proxy = new Proxy(() => port)
    proxies.push(proxy)
    proxy.refuseBulk = true
    await proxy.listen()
    const log2 = recordingLog()
    const b = replica(proxy.port, '106', 'crc', log2)
    await b.r.open([])
    for (let i = 0; i < 3; i++) await b.r.write(i, 0, data)
    const out = Buffer.alloc(data.length)
    await b.r.read(2, 0, data.length, out, 0)
    expect(out.equals(data)).toBe(true)
    expect(proxy.bulkSeen).toBe(1)
    expect(log2.lines.filter((l) => l.includes('no bulk connection'))).toHaveLength(1)

    // mode tls on the client: never asks
    const c = replica(proxy.port, '106', 'tls')
    await c.r.read(2, 0, data.length, out.fill(0), 0)
    expect(out.equals(data)).toBe(true)
    expect(proxy.bulkSeen).toBe(1)
  })
})
