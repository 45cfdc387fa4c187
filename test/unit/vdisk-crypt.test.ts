import crypto from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { TessError } from '../../src/lib/errors.js'
import { nativeXts } from '../../src/lib/nativeio.js'
import { BlockCipher, clusterKeyCheck, dataKeyBytes, unwrapDataKey, wrapDataKey } from '../../src/cvm/vdisk/crypt.js'

describe('vDisk encryption', () => {
  const key = crypto.randomBytes(dataKeyBytes)

  it('encrypts whole blocks, each under its own tweak, and decrypts them back in place', () => {
    const c = new BlockCipher(key)
    const plain = Buffer.concat([Buffer.alloc(4096, 7), Buffer.alloc(4096, 7), crypto.randomBytes(4096)])
    const enc = c.encrypt(plain, 100)
    expect(enc.equals(plain)).toBe(false)
    expect(plain.subarray(0, 4096).equals(Buffer.alloc(4096, 7))).toBe(true) // the source is untouched
    // equal plaintext blocks at different places differ on disk
    expect(enc.subarray(0, 4096).equals(enc.subarray(4096, 8192))).toBe(false)
    // the same block at the same place encrypts the same (XTS is deterministic per tweak)
    expect(c.encrypt(plain.subarray(4096, 8192), 101).equals(enc.subarray(4096, 8192))).toBe(true)
    const back = Buffer.from(enc)
    c.decryptInPlace(back, 100)
    expect(back.equals(plain)).toBe(true)
    // decrypting under the wrong block number gives garbage
    const wrong = Buffer.from(enc.subarray(0, 4096))
    c.decryptInPlace(wrong, 7)
    expect(wrong.equals(plain.subarray(0, 4096))).toBe(false)
  })

  it('leaves all-zero blocks (never written) as zeros, and an encrypted block of zeros is not all zeros', () => {
    const c = new BlockCipher(key)
    const zeros = Buffer.alloc(8192)
    c.decryptInPlace(zeros, 0)
    expect(zeros.equals(Buffer.alloc(8192))).toBe(true)
    const encZero = c.encrypt(Buffer.alloc(4096), 3)
    expect(encZero.equals(Buffer.alloc(4096))).toBe(false)
    c.decryptInPlace(encZero, 3)
    expect(encZero.equals(Buffer.alloc(4096))).toBe(true)
  })

  it('the addon and node:crypto give the same bytes both ways (data written by one reads with the other)', () => {
    const js = new BlockCipher(key, false)
    const maybeNative = new BlockCipher(key)
    const plain = Buffer.concat([crypto.randomBytes(12288), Buffer.alloc(4096)])
    const a = js.encrypt(plain, 12345)
    const b = maybeNative.encrypt(plain, 12345)
    expect(b.equals(a)).toBe(true)
    const back = Buffer.concat([a, Buffer.alloc(4096)])
    maybeNative.decryptInPlace(back, 12345)
    expect(back.subarray(0, plain.length).equals(plain)).toBe(true)
    expect(back.subarray(plain.length).equals(Buffer.alloc(4096))).toBe(true)
    const back2 = Buffer.from(b)
    js.decryptInPlace(back2, 12345)
    expect(back2.equals(plain)).toBe(true)
    if (process.env.TESS_IO !== 'pool') expect(nativeXts()).toBeTypeOf('function')
  })

  it('wraps a data key under the cluster key, bound to the vDisk id', () => {
    const kek = crypto.randomBytes(32)
    const w = wrapDataKey(kek, key, '42')
    expect(unwrapDataKey(kek, w, '42').equals(key)).toBe(true)
    // moved to another vDisk's record, or opened with another cluster's key: refused
    expect(() => unwrapDataKey(kek, w, '43')).toThrow(TessError)
    expect(() => unwrapDataKey(crypto.randomBytes(32), w, '42')).toThrow(/does not open/)
    expect(() => unwrapDataKey(kek, Buffer.from('short').toString('base64'), '42')).toThrow(/damaged/)
    expect(clusterKeyCheck(kek)).toBe(clusterKeyCheck(Buffer.from(kek)))
    expect(clusterKeyCheck(kek)).not.toBe(clusterKeyCheck(crypto.randomBytes(32)))
  })
})
