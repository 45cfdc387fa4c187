import crypto from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { TickWriter, tickWriterFlushBytes } from '../../src/lib/tickwriter.js'
import { onPair, receive } from '../helpers/sockets.js'

/**
 * The per-tick batching of the data port (src/lib/tickwriter.ts): everything arrives, in order,
 * with or without a sender thread, and a batch leaves early once it holds tickWriterFlushBytes.
 */

describe('TickWriter', () => {
  for (const thread of [false, true]) {
    it(`delivers every message in order (${thread ? 'sender thread where the addon is' : 'corked socket'})`, async () => {
      await onPair(async (p) => {
        const w = new TickWriter(p.server, { thread })
        // small frames (written at once or corked), 4 KiB ones (early flushes) and 1 MiB ones (the thread)
        const msgs = Array.from({ length: 200 }, (_, i) => [crypto.randomBytes(32), crypto.randomBytes(i % 10 === 0 ? 1024 * 1024 : i % 2 === 0 ? 4096 : 0)])
        const expected = Buffer.concat(msgs.flat())
        const arrived = receive(p.client, expected.length)
        // in several ticks, several messages each
        for (let i = 0; i < msgs.length; i += 7) {
          for (const m of msgs.slice(i, i + 7)) w.write(m)
          await new Promise((resolve) => setImmediate(resolve))
        }
        expect((await arrived).equals(expected)).toBe(true)
        w.close()
      })
    })
  }

  it('corks the socket for the tick and lets a batch go once it holds the flush size', async () => {
    await onPair(async (p) => {
      const w = new TickWriter(p.server, { thread: false })
      w.write([Buffer.alloc(100)])
      expect(p.server.writableCorked).toBe(1)
      w.write([Buffer.alloc(tickWriterFlushBytes)])
      expect(p.server.writableCorked).toBe(0)
      w.write([Buffer.alloc(10)])
      expect(p.server.writableCorked).toBe(1)
      const arrived = receive(p.client, 110 + tickWriterFlushBytes)
      await new Promise((resolve) => process.nextTick(resolve))
      expect(p.server.writableCorked).toBe(0)
      expect((await arrived).length).toBe(110 + tickWriterFlushBytes)
    })
  })

  it('ignores writes once the socket is destroyed', async () => {
    await onPair(async (p) => {
      const w = new TickWriter(p.server, { thread: true })
      p.server.destroy()
      expect(() => w.write([Buffer.alloc(10)])).not.toThrow()
      w.close()
    })
  })
})
