import net from 'node:net'
import crypto from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { withReceiveBuffer } from '../../src/lib/recvbuffer.js'

/** a server whose accepted sockets read into one buffer each; resolves with what the first one received */
async function receiveThrough(bufferBytes: number, send: (c: net.Socket) => Promise<void>): Promise<{ received: Buffer; views: number; sameMemory: boolean; rewrapped: boolean }> {
  const buffer = Buffer.alloc(bufferBytes)
  const parts: Buffer[] = []
  let views = 0
  let sameMemory = true
  let rewrapped = false
  let ended!: () => void
  const done = new Promise<void>((resolve) => (ended = resolve))
  const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, (accepted) => {
    const socket = withReceiveBuffer(
      accepted,
      buffer,
      (view) => {
        views++
        if (view.buffer !== buffer.buffer || view.byteOffset !== buffer.byteOffset) sameMemory = false
        // the view is only valid during the call: keep a copy
        parts.push(Buffer.from(view))
      },
      { allowHalfOpen: true },
    )
    rewrapped = socket !== undefined
    const s = socket ?? accepted
    if (socket === undefined) accepted.on('data', (d: Buffer) => parts.push(d))
    s.on('end', () => {
      s.end('bye')
      ended()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as net.AddressInfo).port
  const client = net.connect(port, '127.0.0.1')
  await new Promise<void>((resolve) => client.once('connect', resolve))
  const reply: Buffer[] = []
  client.on('data', (d: Buffer) => reply.push(d))
  const closed = new Promise<void>((resolve) => client.once('close', () => resolve()))
  await send(client)
  client.end()
  await done
  await closed
  server.close()
  expect(Buffer.concat(reply).toString()).toBe('bye')
  return { received: Buffer.concat(parts), views, sameMemory, rewrapped }
}

describe('receive buffer', () => {
  it('reads an accepted socket into the one buffer it was given, every byte in order', async () => {
    const data = crypto.randomBytes(3 * 1024 * 1024 + 17)
    const r = await receiveThrough(64 * 1024, async (c) => {
      // uneven writes, so reads end at arbitrary places
      for (let at = 0; at < data.length; ) {
        const n = Math.min(data.length - at, 1 + Math.floor(Math.random() * 300_000))
        if (!c.write(data.subarray(at, at + n))) await new Promise((resolve) => c.once('drain', resolve))
        at += n
      }
    })
    expect(r.rewrapped).toBe(true)
    expect(r.sameMemory).toBe(true)
    // at most 64 KiB per read: 3 MiB takes at least 49 reads
    expect(r.views).toBeGreaterThanOrEqual(49)
    expect(r.received.equals(data)).toBe(true)
  })

  it('pausing the socket stops the reads and resuming continues them', async () => {
    const buffer = Buffer.alloc(4096)
    const got: Buffer[] = []
    let socket: net.Socket | undefined
    const server = net.createServer({ pauseOnConnect: true }, (accepted) => {
      socket = withReceiveBuffer(accepted, buffer, (v) => {
        got.push(Buffer.from(v))
        socket?.pause()
      }, { allowHalfOpen: false })
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1')
    await new Promise<void>((resolve) => client.once('connect', resolve))
    client.write(Buffer.alloc(64 * 1024, 7))
    await new Promise((resolve) => setTimeout(resolve, 200))
    // paused after the first read: nothing more arrives
    expect(got.length).toBe(1)
    let total = got[0]!.length
    while (total < 64 * 1024) {
      const before = got.length
      socket!.resume()
      while (got.length === before) await new Promise((resolve) => setTimeout(resolve, 5))
      total += got[got.length - 1]!.length
    }
    expect(Buffer.concat(got).equals(Buffer.alloc(64 * 1024, 7))).toBe(true)
    client.destroy()
    socket!.destroy()
    server.close()
  })
})
