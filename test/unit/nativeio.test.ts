import { execFileSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import { createRequire } from 'node:module'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import net from 'node:net'
import { afterAll, describe, expect, it } from 'vitest'
import { SocketSender, nativeIoEngine, pagesCached, readCached } from '../../src/lib/nativeio.js'
import { RawFile } from '../../src/cvm/vdisk/rawfile.js'
import { onPair, receive } from '../helpers/sockets.js'

/**
 * Reads from the page cache on the calling thread (native/io.c: preadv2 with RWF_NOWAIT) and the
 * pool fallback. The addon is required unless TESS_IO=pool (scripts/test.sh runs this file both
 * ways): a build that silently lost it would make every read take the pool again.
 */

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
const addonFile = path.join(repoRoot, 'build', 'Release', 'tess_io.node')
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-nativeio-'))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

/** write, sync, and drop the file's pages from the page cache (POSIX_FADV_DONTNEED on clean pages) */
function uncachedFile(name: string, data: Buffer): string {
  const file = path.join(dir, name)
  fs.writeFileSync(file, data)
  const fd = fs.openSync(file, 'r+')
  fs.fsyncSync(fd)
  fs.closeSync(fd)
  // the kernel may keep a page a drop asks it to let go (still on a per-CPU list, under load):
  // drop again until none is cached (CI saw one page stay once), as far as the addon can tell
  const drop = () => execFileSync('python3', ['-c', 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)', file])
  drop()
  const check = fs.openSync(file, 'r')
  try {
    for (let i = 0; i < 20 && (pagesCached(check, 0, data.length) ?? 0) > 0; i++) {
      execFileSync('sleep', ['0.05'])
      drop()
    }
  } finally {
    fs.closeSync(check)
  }
  return file
}

describe('native page cache reads', () => {
  it('uses the addon unless TESS_IO=pool', () => {
    expect(nativeIoEngine).toBe(process.env.TESS_IO === 'pool' ? 'pool' : 'native')
  })

  it('copies cached bytes exactly, short at the end of the file, nothing past it', () => {
    const data = crypto.randomBytes(3 * 4096 + 100)
    const file = path.join(dir, 'cached')
    fs.writeFileSync(file, data)
    const fd = fs.openSync(file, 'r')
    try {
      const out = Buffer.alloc(8192, 0xee)
      const n = readCached(fd, out, 1000, 4096, 4096)
      if (nativeIoEngine === 'pool') {
        expect(n).toBe(0)
        return
      }
      expect(n).toBe(4096)
      expect(out.subarray(1000, 5096).equals(data.subarray(4096, 8192))).toBe(true)
      expect(out[999]).toBe(0xee)
      expect(out[5096]).toBe(0xee)
      expect(readCached(fd, out, 0, 4096, 3 * 4096)).toBe(100)
      expect(readCached(fd, out, 0, 4096, 1 << 20)).toBe(0)
    } finally {
      fs.closeSync(fd)
    }
  })

  it('copies nothing from a file whose pages are not cached; readFullCached reads them through the pool', async () => {
    const data = crypto.randomBytes(64 * 1024)
    const file = uncachedFile('cold', data)
    const fh = await RawFile.open(file, 'r')
    try {
      const probe = Buffer.alloc(4096)
      expect(readCached(fh.fd, probe, 0, 4096, 32 * 1024)).toBe(0)
      const out = Buffer.alloc(data.length)
      expect(await fh.readFullCached(out, 0, data.length, 0)).toBe(data.length)
      expect(out.equals(data)).toBe(true)
      // now cached: the same read is served on this thread
      if (nativeIoEngine === 'native') expect(readCached(fh.fd, probe, 0, 4096, 32 * 1024)).toBe(4096)
    } finally {
      await fh.close()
    }
  })

  it('the addon refuses bad arguments instead of touching memory out of bounds', () => {
    if (!fs.existsSync(addonFile)) {
      expect(process.env.TESS_IO).toBe('pool')
      return
    }
    const b = createRequire(import.meta.url)(addonFile) as { preadNowait: (...a: unknown[]) => number }
    const buf = Buffer.alloc(16)
    expect(() => b.preadNowait(0, buf, 0, 17, 0)).toThrow(/length out of range/)
    expect(() => b.preadNowait(0, buf, 17, 0, 0)).toThrow(/offset out of range/)
    expect(() => b.preadNowait(0, buf, 8, 9, 0)).toThrow(/length out of range/)
    expect(() => b.preadNowait(0, 'x', 0, 1, 0)).toThrow(/Uint8Array/)
    expect(() => b.preadNowait(-1, buf, 0, 1, 0)).toThrow(/fd/)
    expect(() => b.preadNowait(0, buf, 0, 1, -1)).toThrow(/position/)
    expect(() => b.preadNowait(0, buf, 0.5, 1, 0)).toThrow(/offset/)
    expect(() => b.preadNowait(0, buf)).toThrow(/5 arguments/)
    // a bad descriptor is an errno, not a crash
    expect(b.preadNowait(1 << 30, buf, 0, 1, 0)).toBe(-9)
    const more = b as unknown as Record<string, (...a: unknown[]) => unknown>
    expect(() => more.alignedBuffer!(0)).toThrow(/size/)
    expect(() => more.alignedBuffer!(2 ** 31)).toThrow(/size/)
    const aligned = more.alignedBuffer!(8192) as Buffer
    expect(aligned.length).toBe(8192)
    expect(more.addressAlignment!(aligned)).toBe(4096)
    expect(more.addressAlignment!(aligned.subarray(1))).toBe(1)
    expect(() => more.addressAlignment!('x')).toThrow(/Uint8Array/)
    expect(() => more.cachedPages!(-1, 0, 1)).toThrow(/fd/)
    expect(() => more.cachedPages!(0, 0, 0)).toThrow(/length/)
    expect(more.cachedPages!(1 << 30, 0, 4096)).toBe(-9)
  })
})

const openSender = (s: net.Socket, onError: (e: Error) => void = () => undefined, inline = true) =>
  SocketSender.open(s as unknown as { _handle?: { fd?: unknown } | null }, () => undefined, onError, { inline })

/** queue one batch; resolves with what its callback got once it is out (null) or failed */
const written = (sender: SocketSender, parts: Buffer[], onSent?: () => void) =>
  new Promise<Error | null | undefined>((resolve) => sender.write(parts, [(err) => { onSent?.(); resolve(err) }]))

describe('socket sender (writes on a thread of its own)', () => {
  it('exists exactly when the addon is used', async () => {
    await onPair(async (p) => {
      const sender = openSender(p.server)
      expect(sender !== undefined).toBe(nativeIoEngine === 'native')
      sender?.close()
    })
  })

  it('writes every batch in order, through a reader that starts late (the thread waits for room)', async () => {
    if (nativeIoEngine !== 'native') return
    await onPair(async (p) => {
      const sender = openSender(p.server)!
      const batches: Buffer[][] = []
      for (let i = 0; i < 300; i++) {
        // small batches (written at once while the thread is idle) between large ones
        const parts = Array.from({ length: 1 + (i % 4) }, () => crypto.randomBytes(1 + crypto.randomInt(i % 3 === 0 ? 2000 : 200_000)))
        batches.push(parts)
      }
      const expected = Buffer.concat(batches.flat())
      const order: number[] = []
      const results = batches.map((parts, i) => written(sender, parts, () => order.push(i)))
      // nothing is read for a while: the socket fills and the thread blocks in poll
      expect(sender.queuedBytes).toBeGreaterThan(expected.length / 2)
      await new Promise((resolve) => setTimeout(resolve, 100))
      expect(sender.idle).toBe(false)
      const received: Buffer[] = []
      let n = 0
      const all = new Promise<void>((resolve) => p.client.on('data', (d: Buffer) => {
        received.push(d)
        n += d.length
        if (n >= expected.length) resolve()
      }))
      await all
      expect(await Promise.all(results)).toEqual(batches.map(() => null))
      expect(order).toEqual(batches.map((_, i) => i))
      expect(Buffer.concat(received).equals(expected)).toBe(true)
      expect(sender.queuedBytes).toBe(0)
      await new Promise<void>((resolve) => sender.whenIdle(resolve))
      sender.close()
    })
  })

  it('a small batch while the sender is idle is written at once on the calling thread, unless inline is off', async () => {
    if (nativeIoEngine !== 'native') return
    await onPair(async (p) => {
      const sender = openSender(p.server)!
      const small = crypto.randomBytes(300)
      const big = crypto.randomBytes(8 * 1024 * 1024)
      const arrived = receive(p.client, small.length + big.length + small.length)
      let sent: Error | null | undefined
      sender.write([small.subarray(0, 100), small.subarray(100)], [(err) => (sent = err)])
      // out before write() returned: no thread, no report, nothing queued
      expect(sent).toBe(null)
      expect(sender.queuedBytes).toBe(0)
      expect(sender.idle).toBe(true)
      // a large batch goes to the thread; a small one right behind it waits its turn there
      const bigOut = written(sender, [big])
      let behind: Error | null | undefined
      sender.write([small], [(err) => (behind = err)])
      expect(behind).toBe(undefined)
      expect((await arrived).equals(Buffer.concat([small, big, small]))).toBe(true)
      expect(await bigOut).toBe(null)
      await new Promise<void>((resolve) => sender.whenIdle(resolve))
      expect(behind).toBe(null)
      sender.close()
    })
    await onPair(async (p) => {
      const sender = openSender(p.server, () => undefined, false)!
      const small = crypto.randomBytes(100)
      const arrived = receive(p.client, small.length)
      let sent: Error | null | undefined
      sender.write([small], [(err) => (sent = err)])
      expect(sent).toBe(undefined)
      expect(sender.queuedBytes).toBe(small.length)
      expect((await arrived).equals(small)).toBe(true)
      await new Promise<void>((resolve) => sender.whenIdle(resolve))
      expect(sent).toBe(null)
      sender.close()
    })
  })

  it('close while blocked: the thread stops, unwritten batches fail only after it has let go', async () => {
    if (nativeIoEngine !== 'native') return
    await onPair(async (p) => {
      const sender = openSender(p.server)!
      const big = Buffer.alloc(4 * 1024 * 1024, 1)
      const results = Array.from({ length: 16 }, () => written(sender, [big]))
      await new Promise((resolve) => setTimeout(resolve, 50))
      sender.close()
      const settled = await Promise.all(results)
      // 64 MiB cannot all have fit in the socket's buffers of a client that reads nothing
      expect(settled.some((e) => e instanceof Error)).toBe(true)
      expect(sender.queuedBytes).toBe(0)
      // a write after close fails at once
      const late = await written(sender, [big])
      expect(late).toBeInstanceOf(Error)
    })
  })

  it('a peer that goes away fails the writes and reports the error', async () => {
    if (nativeIoEngine !== 'native') return
    await onPair(async (p) => {
      let reported: Error | undefined
      const sender = openSender(p.server, (e) => (reported = e))!
      p.client.resetAndDestroy()
      await new Promise((resolve) => setTimeout(resolve, 50))
      const big = Buffer.alloc(1024 * 1024, 2)
      const results = Array.from({ length: 8 }, () => written(sender, [big]))
      const settled = await Promise.all(results)
      expect(settled.some((e) => e instanceof Error)).toBe(true)
      expect(reported?.message).toMatch(/errno/)
      sender.close()
    })
  })

  it('the addon refuses bad sender arguments', () => {
    if (!fs.existsSync(addonFile)) return
    const b = createRequire(import.meta.url)(addonFile) as Record<string, (...a: unknown[]) => unknown>
    expect(() => b.senderOpen!(-1, () => undefined)).toThrow(/fd/)
    expect(() => b.senderOpen!(1 << 30, () => undefined)).toThrow(/descriptor/)
    expect(() => b.senderOpen!(0, 'x')).toThrow(/function/)
    expect(() => b.senderWrite!({}, [Buffer.alloc(1)], false)).toThrow(/handle/)
    const h = b.senderOpen!(1, () => undefined)
    expect(() => b.senderWrite!(h, [Buffer.alloc(1)])).toThrow(/3 arguments/)
    expect(() => b.senderWrite!(h, [Buffer.alloc(1)], 'yes')).toThrow(/boolean/)
    expect(() => b.senderWrite!(h, 'x', false)).toThrow(/array/)
    expect(() => b.senderWrite!(h, [], false)).toThrow(/1 to 4096/)
    expect(() => b.senderWrite!(h, ['x'], false)).toThrow(/Uint8Array/)
    b.senderClose!(h)
  })
})
