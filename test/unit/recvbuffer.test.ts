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

  it('nextInto: reads go straight into the memory it names, never past its end, then back to the buffer', async () => {
    // a 100-byte header, then a 1 MiB body read straight into `body`, then a trailer
    const header = crypto.randomBytes(100)
    const bodyData = crypto.randomBytes(1024 * 1024)
    const trailer = crypto.randomBytes(5000)
    const buffer = Buffer.alloc(4096)
    const body = Buffer.alloc(bodyData.length)
    let bodyFilled = -1 // -1: header not yet complete
    const viaBuffer: Buffer[] = []
    let intoReads = 0
    let intoBytes = 0
    let outside = false
    let ended!: () => void
    const done = new Promise<void>((resolve) => (ended = resolve))
    const server = net.createServer({ pauseOnConnect: true }, (accepted) => {
      const socket = withReceiveBuffer(accepted, buffer, (view, into) => {
        if (into === 'nextInto') {
          intoReads++
          intoBytes += view.length
          if (view.buffer !== body.buffer || view.byteOffset !== body.byteOffset + bodyFilled) outside = true
          bodyFilled += view.length
          return
        }
        viaBuffer.push(Buffer.from(view))
        const got = Buffer.concat(viaBuffer).length
        if (bodyFilled < 0 && got >= header.length) {
          // whatever came after the header in this read belongs to the body
          const extra = Buffer.concat(viaBuffer).subarray(header.length)
          extra.copy(body, 0, 0, Math.min(extra.length, body.length))
          bodyFilled = Math.min(extra.length, body.length)
        }
      }, {
        allowHalfOpen: false,
        nextInto: () => bodyFilled >= 0 && bodyFilled < body.length ? body.subarray(bodyFilled) : undefined,
      })
      socket!.on('end', () => ended())
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1')
    await new Promise<void>((resolve) => client.once('connect', resolve))
    client.write(header)
    await new Promise((resolve) => setTimeout(resolve, 50))
    // the body's end and the trailer in one write: the read into the body must stop at its end
    client.end(Buffer.concat([bodyData, trailer]))
    await done
    server.close()
    expect(outside).toBe(false)
    expect(intoReads).toBeGreaterThan(0)
    expect(body.equals(bodyData)).toBe(true)
    const all = Buffer.concat(viaBuffer)
    expect(all.subarray(0, header.length).equals(header)).toBe(true)
    // the buffer saw the header, possibly the body's first bytes, and the whole trailer after it
    expect(all.subarray(all.length - trailer.length).equals(trailer)).toBe(true)
    // every body byte came exactly once: through the buffer (right after the header) or straight in
    const bodyViaBuffer = all.subarray(header.length, all.length - trailer.length)
    expect(bodyViaBuffer.equals(bodyData.subarray(0, bodyViaBuffer.length))).toBe(true)
    expect(bodyViaBuffer.length + intoBytes).toBe(body.length)
  })
})
