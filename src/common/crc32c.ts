/**
 * CRC-32C (Castagnoli), the block checksum of extent group format version 2. This is the portable
 * implementation (slice-by-8 tables); a native one replaces it where it is built.
 */
const poly = 0x82f63b78
const tables: Int32Array[] = []
{
  const t0 = new Int32Array(256)
  for (let i = 0; i < 256; i++) {
    let c = i
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ poly : c >>> 1
    t0[i] = c
  }
  tables.push(t0)
  for (let n = 1; n < 8; n++) {
    const prev = tables[n - 1]!
    const t = new Int32Array(256)
    for (let i = 0; i < 256; i++) t[i] = (prev[i]! >>> 8) ^ t0[prev[i]! & 0xff]!
    tables.push(t)
  }
}
const [t0, t1, t2, t3, t4, t5, t6, t7] = tables as [Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array]

export const crc32cImplementation: 'native' | 'js' = 'js'

function update(crc: number, buf: Uint8Array, from: number, to: number): number {
  let c = crc
  let i = from
  const end8 = to - ((to - i) & 7)
  while (i < end8) {
    const lo = (buf[i]! | (buf[i + 1]! << 8) | (buf[i + 2]! << 16) | (buf[i + 3]! << 24)) ^ c
    c = t7[lo & 0xff]! ^ t6[(lo >>> 8) & 0xff]! ^ t5[(lo >>> 16) & 0xff]! ^ t4[lo >>> 24]! ^
      t3[buf[i + 4]!]! ^ t2[buf[i + 5]!]! ^ t1[buf[i + 6]!]! ^ t0[buf[i + 7]!]!
    i += 8
  }
  while (i < to) c = t0[(c ^ buf[i++]!) & 0xff]! ^ (c >>> 8)
  return c
}

export function crc32c(buf: Uint8Array): number {
  return (update(-1, buf, 0, buf.length) ^ -1) >>> 0
}

function readU32(b: Uint8Array, at: number): number {
  return (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0
}

export function crc32cBlocks(data: Uint8Array, blockBytes: number, out: Uint8Array, outOffset: number, strideBytes: number): void {
  for (let i = 0, at = 0; at < data.length; i++, at += blockBytes) {
    const c = (update(-1, data, at, at + blockBytes) ^ -1) >>> 0
    const o = outOffset + i * strideBytes
    out[o] = c & 0xff
    out[o + 1] = (c >>> 8) & 0xff
    out[o + 2] = (c >>> 16) & 0xff
    out[o + 3] = c >>> 24
  }
}

export function crc32cVerifyBlocks(data: Uint8Array, blockBytes: number, expected: Uint8Array, expectedOffset: number, strideBytes: number): number {
  for (let i = 0, at = 0; at < data.length; i++, at += blockBytes) {
    const o = expectedOffset + i * strideBytes
    if ((readU32(expected, o + 4) & 1) === 0) continue
    if (((update(-1, data, at, at + blockBytes) ^ -1) >>> 0) !== readU32(expected, o)) return i
  }
  return -1
}
