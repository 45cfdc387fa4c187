import crypto from 'node:crypto'
import { TessError, assert } from '../../lib/errors.js'
import { checksumBlockSizeBytes } from '../../lib/limits.js'
import { BufferPool } from '../../lib/bufpool.js'
import { allocAligned, nativeXts } from '../../lib/nativeio.js'

/**
 * Encryption of vDisk data at rest. Every 4 KiB block is encrypted with AES-256-XTS under the
 * vDisk's own data key (64 random bytes), the block's number in the vDisk as the tweak: equal
 * blocks at different places differ on disk, and replicas hold ciphertext only (checksums, repair
 * and replication work on the ciphertext and never need the key). A block whose stored bytes are
 * all zeros was never written (the extent store reads unwritten blocks as zeros) and reads as zeros.
 *
 * The data key is stored in the vDisk's etcd record wrapped (AES-256-GCM, the vDisk id as
 * additional data) by the cluster key, which no node keeps on disk: the operator holds it and hands
 * it to the CVMs (`tess cluster unlock`), and CVMs hand it to each other over their mutually
 * authenticated channel. A CVM without it cannot open an encrypted vDisk.
 */

export const dataKeyBytes = 64
export const clusterKeyBytes = 32
const ivBytes = 12
const tagBytes = 16
const zeroBlock = Buffer.alloc(checksumBlockSizeBytes)
/** idle ciphertext blocks kept for reuse (aligned: large writes may go to the disk with O_DIRECT) */
const cipherPoolIdleMaxBytes = 32 * 1024 * 1024
const cipherPool = new BufferPool(cipherPoolIdleMaxBytes, checksumBlockSizeBytes, allocAligned)

/** The check value of a cluster key stored in etcd: proves a key given later is the same one. */
export function clusterKeyCheck(kek: Buffer): string {
  return crypto.createHmac('sha256', kek).update('tessera cluster key check v1').digest('hex')
}

export function wrapDataKey(kek: Buffer, dek: Buffer, vdiskId: string): string {
  assert(kek.length === clusterKeyBytes && dek.length === dataKeyBytes, 'key sizes')
  const iv = crypto.randomBytes(ivBytes)
  const c = crypto.createCipheriv('aes-256-gcm', kek, iv)
  c.setAAD(Buffer.from(`vdisk:${vdiskId}`))
  const ct = Buffer.concat([c.update(dek), c.final()])
  return Buffer.concat([iv, c.getAuthTag(), ct]).toString('base64')
}

export function unwrapDataKey(kek: Buffer, wrapped: string, vdiskId: string): Buffer {
  const raw = Buffer.from(wrapped, 'base64')
  if (raw.length !== ivBytes + tagBytes + dataKeyBytes) throw new TessError('TESS_E_IO', `the wrapped data key of vDisk ${vdiskId} is damaged (${raw.length} bytes)`, 'the vDisk record in etcd was changed by hand; restore it from a backup')
  const d = crypto.createDecipheriv('aes-256-gcm', kek, raw.subarray(0, ivBytes))
  d.setAAD(Buffer.from(`vdisk:${vdiskId}`))
  d.setAuthTag(raw.subarray(ivBytes, ivBytes + tagBytes))
  try {
    return Buffer.concat([d.update(raw.subarray(ivBytes + tagBytes)), d.final()])
  } catch {
    throw new TessError('TESS_E_FORBIDDEN', `the data key of vDisk ${vdiskId} does not open with this cluster key`, 'unlock the cluster with its own key (tess cluster unlock)')
  }
}

/**
 * AES-256-XTS over whole 4 KiB blocks of one vDisk: in the addon (one call per request, several
 * GB/s) where it is built, else with node:crypto, one cipher object per block (under 1 GB/s);
 * both give the same bytes.
 */
export class BlockCipher {
  private readonly tweak = Buffer.alloc(16)
  private readonly native: ReturnType<typeof nativeXts>

  constructor(private readonly key: Buffer, useNative = true) {
    assert(key.length === dataKeyBytes, 'an XTS data key is 64 bytes')
    this.native = useNative ? nativeXts() : undefined
  }

  /**
   * Encrypt `src` (whole blocks, the first being vDisk block `firstBlock`) into a new buffer; the
   * source is left as it is (it is the client's payload).
   */
  encrypt(src: Buffer, firstBlock: number): Buffer {
    assert(src.length % checksumBlockSizeBytes === 0, 'encrypt whole blocks')
    const out = Buffer.allocUnsafe(src.length)
    if (this.native !== undefined) {
      this.native(this.key, src, out, firstBlock, true)
      return out
    }
    for (let i = 0; i * checksumBlockSizeBytes < src.length; i++) {
      this.run(true, src.subarray(i * checksumBlockSizeBytes, (i + 1) * checksumBlockSizeBytes), out, i * checksumBlockSizeBytes, firstBlock + i)
    }
    return out
  }

  /**
   * encrypt() into a pooled, page-aligned block: `done()` gives it back once nothing holds the
   * ciphertext any more (after the replicas' writes resolved)
   */
  encryptPooled(src: Buffer, firstBlock: number): { data: Buffer, done: () => void } {
    assert(src.length % checksumBlockSizeBytes === 0, 'encrypt whole blocks')
    const block = cipherPool.take(src.length)
    const data = block.subarray(0, src.length)
    if (this.native !== undefined) this.native(this.key, src, data, firstBlock, true)
    else this.encrypt(src, firstBlock).copy(data)
    return { data, done: () => cipherPool.give(block) }
  }

  /** Decrypt whole blocks in place; blocks that are all zeros (never written) stay zeros. */
  decryptInPlace(buf: Buffer, firstBlock: number): void {
    assert(buf.length % checksumBlockSizeBytes === 0, 'decrypt whole blocks')
    if (this.native !== undefined) {
      this.native(this.key, buf, buf, firstBlock, false)
      return
    }
    for (let i = 0; i * checksumBlockSizeBytes < buf.length; i++) {
      const block = buf.subarray(i * checksumBlockSizeBytes, (i + 1) * checksumBlockSizeBytes)
      if (block.equals(zeroBlock)) continue
      this.run(false, block, buf, i * checksumBlockSizeBytes, firstBlock + i)
    }
  }

  private run(encrypt: boolean, block: Buffer, out: Buffer, at: number, blockNo: number): void {
    this.tweak.fill(0)
    this.tweak.writeUIntLE(blockNo, 0, 6)
    const c = encrypt ? crypto.createCipheriv('aes-256-xts', this.key, this.tweak) : crypto.createDecipheriv('aes-256-xts', this.key, this.tweak)
    const n = c.update(block).copy(out, at)
    c.final()
    assert(n === block.length, 'XTS keeps the block size')
  }
}
