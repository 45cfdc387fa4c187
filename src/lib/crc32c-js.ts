/**
 * CRC-32C (Castagnoli) in pure JavaScript: the fallback of src/lib/crc32c.ts when the native
 * addon is not built or not wanted (TESS_CRC32C=js), and the reference the tests compare the addon
 * with. Same functions, same results, same argument checks as the addon (native/crc32c.c).
 *
 * Slice-by-16: 16 tables of 256 entries in one Int32Array (16 KiB, fits L1), 16 bytes per step with
 * byte loads (measured faster in V8 than slice-by-8, and than word loads through an Int32Array view).
 */

const poly = 0x82f63b78 // reflected Castagnoli polynomial
const slices = 16

/** table[t * 256 + n]: CRC of byte n followed by t zero bytes. */
const table = (() => {
  const t = new Int32Array(slices * 256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ poly : c >>> 1
    t[n] = c
  }
  for (let n = 0; n < 256; n++) {
    let c = t[n]!
    for (let s = 1; s < slices; s++) {
      c = t[c & 0xff]! ^ (c >>> 8)
      t[s * 256 + n] = c
    }
  }
  return t
})()

/** CRC-32C of buf[start, end) (standard: init ~0, final xor ~0), as an unsigned 32-bit number. */
function crcRange(buf: Uint8Array, start: number, end: number): number {
  const t = table
  let crc = -1
  let i = start
  const end16 = start + ((end - start) & ~15)
  for (; i < end16; i += 16) {
    crc = t[3840 + ((buf[i]! ^ crc) & 0xff)]! ^ t[3584 + ((buf[i + 1]! ^ (crc >>> 8)) & 0xff)]! ^
      t[3328 + ((buf[i + 2]! ^ (crc >>> 16)) & 0xff)]! ^ t[3072 + (buf[i + 3]! ^ (crc >>> 24))]! ^
      t[2816 + buf[i + 4]!]! ^ t[2560 + buf[i + 5]!]! ^ t[2304 + buf[i + 6]!]! ^ t[2048 + buf[i + 7]!]! ^
      t[1792 + buf[i + 8]!]! ^ t[1536 + buf[i + 9]!]! ^ t[1280 + buf[i + 10]!]! ^ t[1024 + buf[i + 11]!]! ^
      t[768 + buf[i + 12]!]! ^ t[512 + buf[i + 13]!]! ^ t[256 + buf[i + 14]!]! ^ t[buf[i + 15]!]!
  }
  for (; i < end; i++) crc = t[(crc ^ buf[i]!) & 0xff]! ^ (crc >>> 8)
  return ~crc >>> 0
}

function checkBytes(v: unknown, name: string): asserts v is Uint8Array {
  if (!(v instanceof Uint8Array)) throw new TypeError(`crc32c: ${name} must be a Uint8Array`)
}

function checkIndex(v: unknown, name: string, min: number): asserts v is number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw new RangeError(`crc32c: ${name} must be an integer >= ${min}`)
}

/**
 * Checks the arguments of the block functions (the addon makes the same checks) and returns the
 * number of blocks. entryBytes: bytes read or written at each entry of `table`.
 */
function checkBlocks(data: Uint8Array, blockBytes: number, tbl: Uint8Array, offset: number, strideBytes: number, entryBytes: number, tableName: string): number {
  checkBytes(data, 'data')
  checkIndex(blockBytes, 'blockBytes', 1)
  checkBytes(tbl, tableName)
  checkIndex(offset, 'offset', 0)
  checkIndex(strideBytes, 'strideBytes', entryBytes)
  if (data.length % blockBytes !== 0) throw new RangeError('crc32c: data length is not a multiple of blockBytes')
  const count = data.length / blockBytes
  if (count > 0 && offset + (count - 1) * strideBytes + entryBytes > tbl.length) {
    throw new RangeError(`crc32c: ${tableName} is too short for ${count} entries`)
  }
  return count
}

/** CRC-32C of buf (standard: init ~0, final xor ~0; crc32c("123456789") === 0xe3069283) */
export function crc32c(buf: Uint8Array): number {
  checkBytes(buf, 'buf')
  return crcRange(buf, 0, buf.length)
}

/** For each block i of data: crc32c(block i) as u32 LE at out[outOffset + i*strideBytes]. */
export function crc32cBlocks(data: Uint8Array, blockBytes: number, out: Uint8Array, outOffset: number, strideBytes: number): void {
  const count = checkBlocks(data, blockBytes, out, outOffset, strideBytes, 4, 'out')
  for (let i = 0, start = 0, o = outOffset; i < count; i++, start += blockBytes, o += strideBytes) {
    const c = crcRange(data, start, start + blockBytes)
    out[o] = c
    out[o + 1] = c >>> 8
    out[o + 2] = c >>> 16
    out[o + 3] = c >>> 24
  }
}

/**
 * The index of the first block whose crc32c differs from the u32 LE at
 * expected[expectedOffset + i*strideBytes], among the blocks whose entry has bit 0 of the u32 LE
 * at +4 set (written); -1 when all match.
 */
export function crc32cVerifyBlocks(data: Uint8Array, blockBytes: number, expected: Uint8Array, expectedOffset: number, strideBytes: number): number {
  const count = checkBlocks(data, blockBytes, expected, expectedOffset, strideBytes, 8, 'expected')
  for (let i = 0, start = 0, e = expectedOffset; i < count; i++, start += blockBytes, e += strideBytes) {
    if ((expected[e + 4]! & 1) === 0) continue // bit 0 of a little-endian u32 is bit 0 of its first byte
    const want = (expected[e]! | expected[e + 1]! << 8 | expected[e + 2]! << 16 | expected[e + 3]! << 24) >>> 0
    if (crcRange(data, start, start + blockBytes) !== want) return i
  }
  return -1
}
