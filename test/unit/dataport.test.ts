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
import { PeerClient } from '../../src/cvm/replication/client.js'
import { FrameParser, PeerError, encodeFrame, frameHeaderBytes, frameMagic, ops } from '../../src/cvm/replication/protocol.js'
import { DataServer } from '../../src/cvm/replication/server.js'
import { ReplicaStore } from '../../src/cvm/vdisk/replicastore.js'
import { RemoteReplica } from '../../src/cvm/vdisk/replica.js'
import { PeerPool } from '../../src/cvm/replication/client.js'
import { BufferPool } from '../../src/lib/bufpool.js'
import { allocAligned, directIoReady, nativeIoEngine } from '../../src/lib/nativeio.js'

const quiet: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined }

describe('frame parser', () => {
  it('splits frames across chunks and bounds them', () => {
    const p = new FrameParser()
    const bytes = Buffer.concat([...encodeFrame(7, 1, { a: 1 }, Buffer.from('xyz')), ...encodeFrame(8, 2, {})])
    const out = []
    for (let i = 0; i < bytes.length; i += 5) out.push(...p.push(bytes.subarray(i, i + 5)))
    expect(out.map((f) => [f.id, f.code, f.data.toString()])).toEqual([[7, 1, 'xyz'], [8, 2, '']])
    const bad = Buffer.alloc(20)
    bad.writeUInt32BE(0xdeadbeef, 0)
    expect(() => new FrameParser().push(bad)).toThrow(/magic/)
    const huge = Buffer.alloc(20)
    huge.writeUInt32BE(frameMagic, 0)
    huge.writeUInt32BE(0xffffffff, 16)
    expect(() => new FrameParser().push(huge)).toThrow(/too large/)
    const notJson = Buffer.from(encodeFrame(1, 1, {})[0]!.subarray(0, frameHeaderBytes))
    notJson.writeUInt32BE(3, 12)
    expect(() => new FrameParser().push(Buffer.concat([notJson, Buffer.from('[1]')]))).toThrow(/JSON object/)
  })

  it('bulk frames: any split, one reused receive buffer, data in pooled blocks given back by release()', () => {
    const pool = new BufferPool(64 * 1024 * 1024, 4096, allocAligned)
    const p = new FrameParser(true, pool)
    const payloads = [crypto.randomBytes(1024 * 1024), crypto.randomBytes(4096), Buffer.alloc(0), crypto.randomBytes(12345)]
    const bytes = Buffer.concat(payloads.flatMap((d, i) => encodeFrame(i + 1, 3, { egid: 'e', slot: i, offset: 0 }, d.length > 0 ? d : undefined, true)))
    // fed through one buffer that is overwritten after every push, as a socket's receive buffer is
    const recv = Buffer.alloc(777)
    const frames = []
    for (let at = 0; at < bytes.length; at += recv.length) {
      const n = bytes.copy(recv, 0, at, at + recv.length)
      frames.push(...p.push(recv.subarray(0, n)))
      recv.fill(0xaa)
    }
    expect(frames.map((f) => f.id)).toEqual([1, 2, 3, 4])
    frames.forEach((f, i) => {
      expect(f.json.slot).toBe(i)
      expect(f.data.equals(payloads[i]!)).toBe(true)
    })
    // the 1 MiB payload sits at the start of a pooled block: aligned where the addon is built
    if (nativeIoEngine === 'native') expect(directIoReady(frames[0]!.data)).toBe(true)
    // given back, the block is handed out again
    frames[0]!.release()
    frames[0]!.release()
    const again = pool.take(1024 * 1024)
    expect(again.buffer).toBe(frames[0]!.data.buffer)
    expect(pool.take(1024 * 1024).buffer).not.toBe(again.buffer)
  })
})

/** The data port against real files and real TLS: bad frames and strangers are refused, the server keeps serving. */
describe('data port', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-dp-'))
  let server: DataServer
  let port: number
  let creds: { cert: Buffer, key: Buffer, ca: Buffer }

  beforeAll(async () => {
    const pki = path.join(dir, 'pki')
    const ca = createCa(pki, 'dp')
    const node = createNodeCert(pki, ca, 'n1', ['127.0.0.1'])
    creds = { cert: fs.readFileSync(node.cert), key: fs.readFileSync(node.key), ca: fs.readFileSync(ca.caCert) }
    const disk = path.join(dir, 'disk')
    fs.mkdirSync(path.join(disk, 'egroups'), { recursive: true })
    const disks: DiskRecord[] = [{ id: '1', node: 'n1', path: disk, addedAt: '' }]
    const store = new ReplicaStore({ localDisks: async () => disks, log: quiet })
    server = new DataServer({ creds, store, vdisks: { io: async () => undefined, evacuate: async () => 0 }, log: quiet })
    await server.listen(0, '127.0.0.1')
    port = ((server as unknown as { server: net.Server }).server.address() as net.AddressInfo).port
  })

  afterAll(async () => {
    await server.close()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it('stores and reads a replica over the wire, checksummed', async () => {
    const pool = new PeerPool(creds, async () => ({ address: '127.0.0.1', dataPort: port }))
    const r = new RemoteReplica('n1', '1', '42', '9', pool)
    await r.open([])
    const data = Buffer.alloc(8192, 0x5a)
    await r.write(3, 4096, data)
    const out = Buffer.alloc(8192)
    await r.read(3, 4096, 8192, out, 0)
    expect(out.equals(data)).toBe(true)
    const raw = await r.readRaw(3)
    expect(raw?.data.subarray(4096, 12288).equals(data)).toBe(true)
    await r.sync()
    await expect(r.read(99, 0, 4096, out, 0)).rejects.toBeInstanceOf(PeerError)
    pool.closeAll()
  })

  it('drops a connection that sends garbage and keeps serving others', async () => {
    for (const garbage of [Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), Buffer.alloc(64, 0xff), Buffer.concat([...encodeFrame(1, 999, { x: 1 })])]) {
      const s = tls.connect({ host: '127.0.0.1', port, ...creds, checkServerIdentity: () => undefined })
      await new Promise<void>((resolve) => s.once('secureConnect', () => resolve()))
      const closedOrAnswered = new Promise<string>((resolve) => {
        s.once('close', () => resolve('closed'))
        s.once('data', (d: Buffer) => resolve(d.readUInt16BE(8) === 1 ? 'error-reply' : 'other'))
      })
      s.write(garbage)
      expect(['closed', 'error-reply']).toContain(await closedOrAnswered)
      s.destroy()
    }
    const c = new PeerClient('n1', '127.0.0.1', port, creds)
    const f = await c.request(ops.ping, {})
    expect(f.json.pong).toBe(true)
    c.close()
  })

  it('fails a request the peer never answers with a timeout, and the connection stays usable', async () => {
    // a peer that completes TLS and reads, but answers only the second request it gets
    let seen = 0
    const mute = tls.createServer({ cert: creds.cert, key: creds.key, ca: creds.ca, requestCert: true }, (s) => {
      const parser = new FrameParser(false)
      s.on('data', (d: Buffer) => {
        for (const f of parser.push(d)) if (++seen === 2) s.write(Buffer.concat(encodeFrame(f.id, 0, { pong: true })))
      })
    })
    await new Promise<void>((resolve) => mute.listen(0, '127.0.0.1', resolve))
    const c = new PeerClient('n1', '127.0.0.1', (mute.address() as net.AddressInfo).port, creds, { mode: 'tls' })
    try {
      const err = await c.request(ops.ping, {}, undefined, 200).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(PeerError)
      expect((err as PeerError).kind).toBe('timeout')
      expect((await c.request(ops.ping, {}, undefined, 5000)).json.pong).toBe(true)
    } finally {
      c.close()
      mute.close()
    }
  })

  it('refuses a peer whose certificate names another node (the client checks who answers)', async () => {
    // the server is n1; a client that meant n2 at this address must not talk to it
    const pool = new PeerPool(creds, async () => ({ address: '127.0.0.1', dataPort: port }))
    const wrong = new RemoteReplica('n2', '1', '43', '9', pool)
    const err = await wrong.open([]).then(() => undefined, (e: unknown) => e)
    expect(err).toBeInstanceOf(PeerError)
    expect((err as PeerError).kind).toBe('unreachable')
    expect((err as Error).message).toMatch(/certificate names node "n1", not n2/)
    // the right name still works
    await new RemoteReplica('n1', '1', '43', '9', pool).open([])
    pool.closeAll()
  })

  it('refuses a client without a cluster certificate', async () => {
    const s = tls.connect({ host: '127.0.0.1', port, ca: creds.ca, checkServerIdentity: () => undefined })
    const result = await new Promise<string>((resolve) => {
      s.once('error', () => resolve('refused'))
      s.once('close', () => resolve('refused'))
      s.once('secureConnect', () => {
        s.write(Buffer.concat(encodeFrame(1, ops.ping, {})))
        s.once('data', () => resolve('answered'))
      })
    })
    expect(result).toBe('refused')
    s.destroy()
  })
})

/**
 * A replica copied node to node (a repair's copy that skips the owner): the target's data port
 * reads the group from the source's over its own connection. Real TLS and files on both sides.
 */
describe('data port: egPull', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-dp-pull-'))
  const servers: DataServer[] = []
  const ports = new Map<string, number>()
  const creds = new Map<string, { cert: Buffer, key: Buffer, ca: Buffer }>()
  const pools: PeerPool[] = []
  const resolve = async (node: string) => ({ address: '127.0.0.1', dataPort: ports.get(node)! })
  const pool = (node: string) => {
    const p = new PeerPool(creds.get(node)!, resolve)
    pools.push(p)
    return p
  }

  beforeAll(async () => {
    const pki = path.join(dir, 'pki')
    const ca = createCa(pki, 'dp')
    for (const [i, node] of ['n1', 'n2'].entries()) {
      const c = createNodeCert(pki, ca, node, ['127.0.0.1'])
      creds.set(node, { cert: fs.readFileSync(c.cert), key: fs.readFileSync(c.key), ca: fs.readFileSync(ca.caCert) })
      const disk = path.join(dir, node)
      fs.mkdirSync(path.join(disk, 'egroups'), { recursive: true })
      const disks: DiskRecord[] = [{ id: String(i + 1), node, path: disk, addedAt: '' }]
      const store = new ReplicaStore({ localDisks: async () => disks, log: quiet })
      // n2 can reach the other nodes (as a CVM's can); n1 was made without: it refuses to pull
      const server = new DataServer({ creds: creds.get(node)!, store, vdisks: { io: async () => undefined, evacuate: async () => 0 }, log: quiet, ...(node === 'n2' ? { peers: pool('n2') } : {}) })
      await server.listen(0, '127.0.0.1')
      ports.set(node, ((server as unknown as { server: net.Server }).server.address() as net.AddressInfo).port)
      servers.push(server)
    }
  })

  afterAll(async () => {
    for (const p of pools) p.closeAll()
    for (const s of servers) await s.close()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it('copies every slot that holds data straight from the source node, checksums and all', async () => {
    // the owner: a third party that reaches both nodes
    const owner = pool('n1')
    const source = new RemoteReplica('n1', '1', '77', '9', owner)
    await source.open([])
    const slots = new Map([[0, crypto.randomBytes(1024 * 1024)], [5, crypto.randomBytes(1024 * 1024)], [31, Buffer.alloc(1024 * 1024, 0x33)]])
    for (const [slot, data] of slots) await source.write(slot, 0, data)
    await source.sync()
    const target = new RemoteReplica('n2', '2', '77', '9', owner)
    await target.open([])
    await target.pullFrom(source)
    await target.sync()
    const out = Buffer.alloc(1024 * 1024)
    for (const [slot, data] of slots) {
      await target.read(slot, 0, out.length, out, 0)
      expect(out.equals(data)).toBe(true)
    }
    // what the source never wrote stays empty in the copy
    expect(await target.readRaw(1)).toBeUndefined()
    // a node without connections to the others refuses, and the caller copies through itself
    const back = new RemoteReplica('n1', '1', '78', '9', owner)
    await back.open([])
    await expect(back.pullFrom(target)).rejects.toMatchObject({ kind: 'invalid' })
    // a source that does not hold the group: the pull fails, nothing is claimed copied
    const missing = new RemoteReplica('n1', '1', '79', '9', owner)
    const other = new RemoteReplica('n2', '2', '79', '9', owner)
    await other.open([])
    await expect(other.pullFrom(missing)).rejects.toBeInstanceOf(PeerError)
    // a malformed source is refused before anything is read
    const raw = await owner.get('n2')
    await expect(raw.request(ops.egPull, { egid: '79', diskId: '2', vdiskId: '9', from: 'n1' })).rejects.toMatchObject({ kind: 'invalid' })
  })
})
