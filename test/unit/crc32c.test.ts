import crypto from 'node:crypto'
import fs from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { crc32c, crc32cBlocks, crc32cImplementation, crc32cVerifyBlocks } from '../../src/lib/crc32c.js'
import * as js from '../../src/lib/crc32c-js.js'

/**
 * CRC-32C: known vectors, random sizes and offsets against a bit-at-a-time reference, the block
 * functions, and every implementation there is: the one src/lib/crc32c.ts chose (TESS_CRC32C),
 * the pure-JS one always, and the addon's hardware and table engines whenever the addon is built.
 * With TESS_CRC32C=native a missing or broken addon fails this file (the module throws at load).
 */

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
const addonFile = path.join(repoRoot, 'build', 'Release', 'tess_crc32c.node')

type Crc = (buf: Uint8Array) => number
type Blocks = (data: Uint8Array, blockBytes: number, out: Uint8Array, outOffset: number, strideBytes: number) => void
type Verify = (data: Uint8Array, blockBytes: number, expected: Uint8Array, expectedOffset: number, strideBytes: number) => number
interface Impl { crc32c: Crc, blocks: Blocks, verify: Verify }
interface Binding extends Impl { hardware: boolean, software: Impl }

const binding: Binding | undefined = fs.existsSync(addonFile) ? createRequire(import.meta.url)(addonFile) as Binding : undefined

const impls: Record<string, Impl> = {
  [`module (${crc32cImplementation})`]: { crc32c, blocks: crc32cBlocks, verify: crc32cVerifyBlocks },
  js: { crc32c: js.crc32c, blocks: js.crc32cBlocks, verify: js.crc32cVerifyBlocks },
}
if (binding) {
  impls[`addon (${binding.hardware ? 'SSE4.2' : 'tables'})`] = binding
  impls['addon tables'] = binding.software
}

/** Bit at a time, straight from the definition. */
function reference(buf: Uint8Array): number {
  let c = 0xffffffff
  for (const b of buf) {
    c ^= b
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1
  }
  return (c ^ 0xffffffff) >>> 0
}

/** Deterministic pseudo-random bytes (seeded), so a failure replays. */
function bytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n)
  let s = 0
  for (let off = 0; off < n; off += 32, s++) {
    const h = crypto.createHash('sha256').update(`${seed}:${s}`).digest()
    out.set(h.subarray(0, Math.min(32, n - off)), off)
  }
  return out
}

/** buf placed at byteOffset `shift` inside a larger buffer whose other bytes are noise. */
function at(buf: Uint8Array, shift: number): Uint8Array {
  const big = bytes(buf.length + shift + 13, 999)
  big.set(buf, shift)
  return big.subarray(shift, shift + buf.length)
}

const u32 = (b: Uint8Array, o: number): number => (b[o]! | b[o + 1]! << 8 | b[o + 2]! << 16 | b[o + 3]! << 24) >>> 0

function putU32(b: Uint8Array, o: number, v: number): void {
  b[o] = v
  b[o + 1] = v >>> 8
  b[o + 2] = v >>> 16
  b[o + 3] = v >>> 24
}

describe('implementation choice', () => {
  it('follows TESS_CRC32C', () => {
    const want = process.env.TESS_CRC32C
    if (want === 'js' || want === 'native') expect(crc32cImplementation).toBe(want)
    // unset: a built addon is used
    else expect(crc32cImplementation).toBe(binding ? 'native' : 'js')
  })

  it('the addon uses SSE4.2 where the CPU has it', () => {
    if (!binding) return
    const sse42 = process.arch === 'x64' && /\bsse4_2\b/.test(fs.readFileSync('/proc/cpuinfo', 'utf8'))
    expect(binding.hardware).toBe(sse42)
  })

  describe('at load', () => {
    afterEach(() => {
      vi.unstubAllEnvs()
      vi.doUnmock('node:module')
      vi.resetModules()
    })

    const load = async (): Promise<typeof import('../../src/lib/crc32c.js')> => {
      vi.resetModules()
      return await import('../../src/lib/crc32c.js')
    }

    it('refuses an unknown TESS_CRC32C', async () => {
      vi.stubEnv('TESS_CRC32C', 'fast')
      await expect(load()).rejects.toMatchObject({ code: 'TESS_E_INVALID', message: expect.stringMatching(/TESS_CRC32C="fast"/) })
    })

    it('TESS_CRC32C=js uses JS even with the addon built', async () => {
      vi.stubEnv('TESS_CRC32C', 'js')
      const m = await load()
      expect(m.crc32cImplementation).toBe('js')
      expect(m.crc32c(new TextEncoder().encode('123456789'))).toBe(0xe3069283)
    })

    it('an addon that does not load: silent JS fallback, or an error when native was asked for', async () => {
      vi.doMock('node:module', () => ({ createRequire: () => () => { throw new Error('no such file (mocked)') } }))
      const spy = vi.spyOn(process.stderr, 'write')
      try {
        vi.stubEnv('TESS_CRC32C', '')
        const m = await load()
        expect(m.crc32cImplementation).toBe('js')
        expect(m.crc32c(new TextEncoder().encode('123456789'))).toBe(0xe3069283)
        expect(spy).not.toHaveBeenCalled()
        vi.stubEnv('TESS_CRC32C', 'native')
        await expect(load()).rejects.toMatchObject({ code: 'TESS_E_PRECONDITION', message: expect.stringMatching(/tess_crc32c\.node.*no such file \(mocked\)/) })
      } finally {
        spy.mockRestore()
      }
    })

    it('an addon that loads but computes wrong CRCs is not used', async () => {
      const broken = { crc32c: () => 0, blocks: () => undefined, verify: () => -1, hardware: true, software: { crc32c: () => 0 } }
      vi.doMock('node:module', () => ({ createRequire: () => () => broken }))
      vi.stubEnv('TESS_CRC32C', '')
      expect((await load()).crc32cImplementation).toBe('js')
      vi.stubEnv('TESS_CRC32C', 'native')
      await expect(load()).rejects.toMatchObject({ message: expect.stringMatching(/self-test failed/) })
    })
  })
})

for (const [name, impl] of Object.entries(impls)) {
  describe(`crc32c: ${name}`, () => {
    it('known vectors (RFC 3720 B.4 and the check value)', () => {
      expect(impl.crc32c(new TextEncoder().encode('123456789'))).toBe(0xe3069283)
      expect(impl.crc32c(new Uint8Array(32))).toBe(0x8a9136aa)
      expect(impl.crc32c(new Uint8Array(32).fill(0xff))).toBe(0x62a8ab43)
      expect(impl.crc32c(Uint8Array.from({ length: 32 }, (_, i) => i))).toBe(0x46dd794e)
      expect(impl.crc32c(Uint8Array.from({ length: 32 }, (_, i) => 31 - i))).toBe(0x113fdb5c)
      expect(impl.crc32c(new Uint8Array(0))).toBe(0)
      expect(impl.crc32c(Buffer.from('a'))).toBe(0xc1d04330)
    })

    it('random buffers of every small size and some large ones, at every alignment', () => {
      const sizes = [...Array.from({ length: 80 }, (_, i) => i), 127, 128, 129, 255, 511, 4095, 4096, 4097, 65_537, 1_048_576 + 3]
      for (const n of sizes) {
        const buf = bytes(n, n)
        const want = reference(buf)
        expect(impl.crc32c(buf), `size ${n}`).toBe(want)
        for (const shift of n <= 4097 ? [1, 2, 3, 5, 7] : [3]) expect(impl.crc32c(at(buf, shift)), `size ${n} at +${shift}`).toBe(want)
      }
    })

    it('honours the byteOffset and length of subarrays and of Buffers from the pool', () => {
      const big = bytes(10_000, 1)
      for (const [s, e] of [[0, 0], [1, 2], [3, 4099], [17, 9999], [4096, 8192]] as const) {
        expect(impl.crc32c(big.subarray(s, e))).toBe(reference(big.slice(s, e)))
      }
      const pooled = Buffer.from('hello, world') // small Buffers share a pool: byteOffset is usually not 0
      expect(impl.crc32c(pooled)).toBe(reference(new Uint8Array(pooled)))
    })

    it('blocks: every block CRC as u32 LE at its stride, nothing else written', () => {
      for (const blockBytes of [1, 3, 8, 13, 64, 4096]) {
        for (const count of [0, 1, 3, 4, 5, 7, 8, 9, 13]) {
          for (const [stride, outOffset, shift] of [[4, 0, 0], [8, 4, 1], [12, 5, 6]] as const) {
            const data = at(bytes(blockBytes * count, blockBytes * 100 + count), shift)
            const outBig = bytes(outOffset + stride * count + 16 + 3, 7)
            const out = outBig.subarray(3)
            const before = Uint8Array.from(out)
            impl.blocks(data, blockBytes, out, outOffset, stride)
            const want = Uint8Array.from(before)
            for (let i = 0; i < count; i++) putU32(want, outOffset + i * stride, reference(data.subarray(i * blockBytes, (i + 1) * blockBytes)))
            expect(Buffer.from(out).equals(want), `blockBytes ${blockBytes} count ${count} stride ${stride}`).toBe(true)
          }
        }
      }
    })

    it('verify: -1 when all match, else the first mismatching block; skips blocks not written', () => {
      const blockBytes = 4096
      const count = 13 // 3 groups of 4 and a tail
      const data = at(bytes(blockBytes * count, 42), 1)
      const entries = new Uint8Array(16 + count * 8).subarray(16) // a region inside a larger buffer
      impl.blocks(data, blockBytes, entries, 0, 8)
      for (let i = 0; i < count; i++) putU32(entries, i * 8 + 4, 1) // all written
      expect(impl.verify(data, blockBytes, entries, 0, 8)).toBe(-1)
      expect(impl.verify(data.subarray(0, 0), blockBytes, entries, 0, 8)).toBe(-1)

      for (const bad of [0, 1, 2, 3, 4, 7, 8, 11, 12]) {
        const d = Uint8Array.from(data)
        d[bad * blockBytes + 1234]! ^= 0x10
        expect(impl.verify(d, blockBytes, entries, 0, 8), `bad ${bad}`).toBe(bad)
        // two bad blocks: the first is reported, whichever group of 4 each is in
        for (const later of [bad + 1, bad + 3, bad + 5].filter((x) => x < count)) {
          const d2 = Uint8Array.from(d)
          d2[later * blockBytes]! ^= 1
          expect(impl.verify(d2, blockBytes, entries, 0, 8), `bad ${bad} and ${later}`).toBe(bad)
        }
        // the same block not written: skipped (other flag bits do not count)
        const e = Uint8Array.from(entries)
        putU32(e, bad * 8 + 4, 0xfffffffe)
        expect(impl.verify(d, blockBytes, e, 0, 8), `bad ${bad} unwritten`).toBe(-1)
        putU32(e, bad * 8 + 4, 0x80000001)
        expect(impl.verify(d, blockBytes, e, 0, 8), `bad ${bad} written again`).toBe(bad)
      }

      // a wrong stored CRC is a mismatch too; nothing written: nothing to check
      const e = Uint8Array.from(entries)
      putU32(e, 5 * 8, u32(e, 5 * 8) ^ 0x100)
      expect(impl.verify(data, blockBytes, e, 0, 8)).toBe(5)
      for (let i = 0; i < count; i++) putU32(e, i * 8 + 4, 0)
      expect(impl.verify(bytes(blockBytes * count, 1), blockBytes, e, 0, 8)).toBe(-1)

      // only some blocks written, with an offset and a wider stride
      const stride = 16
      const off = 24
      const t = new Uint8Array(off + count * stride)
      const written = [0, 2, 3, 6, 7, 8, 9, 12]
      for (const i of written) {
        putU32(t, off + i * stride, reference(data.subarray(i * blockBytes, (i + 1) * blockBytes)))
        putU32(t, off + i * stride + 4, 1)
      }
      expect(impl.verify(data, blockBytes, t, off, stride)).toBe(-1)
      const d = Uint8Array.from(data)
      d[1 * blockBytes]! ^= 1 // not written
      d[9 * blockBytes + 4095]! ^= 1
      d[12 * blockBytes]! ^= 1
      expect(impl.verify(d, blockBytes, t, off, stride)).toBe(9)
    })

    it('refuses bad arguments instead of reading or writing out of bounds', () => {
      const data = new Uint8Array(4096 * 3)
      const out = new Uint8Array(24)
      expect(() => impl.crc32c([1, 2, 3] as unknown as Uint8Array)).toThrow(TypeError)
      expect(() => impl.crc32c(new Uint16Array(4) as unknown as Uint8Array)).toThrow(TypeError)
      expect(() => impl.blocks(data.subarray(1), 4096, out, 0, 8)).toThrow(RangeError) // not a multiple
      expect(() => impl.blocks(data, 0, out, 0, 8)).toThrow(RangeError)
      expect(() => impl.blocks(data, 4096, out, 0, 3)).toThrow(RangeError)
      expect(() => impl.blocks(data, 4096, out, -1, 8)).toThrow(RangeError)
      expect(() => impl.blocks(data, 4096, out, 0.5, 8)).toThrow(RangeError)
      expect(() => impl.blocks(data, 4096, out, 5, 8)).toThrow(RangeError) // the last entry would end at 25
      expect(() => impl.blocks(data, 4096, out.subarray(0, 19), 0, 8)).toThrow(RangeError)
      expect(() => impl.blocks(data, 4096, 'x' as unknown as Uint8Array, 0, 8)).toThrow(TypeError)
      impl.blocks(data, 4096, out, 0, 8) // exactly fits
      impl.blocks(data, 4096, out, 4, 8)
      impl.blocks(data, 4096, out.subarray(0, 20), 0, 8)
      expect(() => impl.verify(data, 4096, out, 1, 8)).toThrow(RangeError) // verify reads 8 bytes per entry
      expect(() => impl.verify(data, 4096, out, 0, 4)).toThrow(RangeError)
      expect(impl.verify(data, 4096, out, 0, 8)).toBeTypeOf('number')
    })
  })
}

describe('implementations agree', () => {
  const names = Object.keys(impls)

  it(`on blocks and verify, random sizes and strides (${names.join(', ')})`, () => {
    const all = Object.values(impls)
    for (let round = 0; round < 40; round++) {
      const r = bytes(8, 10_000 + round)
      const blockBytes = [512, 4096, 4096, 8, 100 + r[0]!][round % 5]!
      const count = r[1]! % 11
      const stride = 8 + (r[2]! % 3) * 4
      const off = r[3]! % 9
      const data = at(bytes(blockBytes * count, round), r[4]! % 8)
      const outs = all.map(() => new Uint8Array(off + count * stride + 8))
      all.forEach((impl, k) => impl.blocks(data, blockBytes, outs[k]!, off, stride))
      for (const o of outs) expect(Buffer.from(o).equals(outs[0]!)).toBe(true)
      // mark some written, corrupt one block, compare verify results
      const t = outs[0]!
      for (let i = 0; i < count; i++) putU32(t, off + i * stride + 4, (r[5]! >> (i % 8)) & 1)
      if (count > 0) data[(r[6]! % count) * blockBytes]! ^= 0xff
      const got = all.map((impl) => impl.verify(data, blockBytes, t, off, stride))
      expect(new Set(got).size, `round ${round}: ${got.join(', ')}`).toBe(1)
    }
  })
})
