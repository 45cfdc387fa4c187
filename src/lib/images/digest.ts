import crypto from 'node:crypto'
import { TessError } from '../errors.js'

/**
 * Digests as the OCI image spec defines them: `algorithm:encoded`. We verify sha256 (the one the
 * spec requires) and sha512 (the other registered algorithm); anything else is refused.
 */
export type DigestAlgorithm = 'sha256' | 'sha512'

const encodedLength: Record<DigestAlgorithm, number> = { sha256: 64, sha512: 128 }

export interface ParsedDigest {
  algorithm: DigestAlgorithm
  hex: string
}

export function isDigestAlgorithm(s: string): s is DigestAlgorithm {
  return s === 'sha256' || s === 'sha512'
}

/** Parse and validate a digest; `what` names the value in the error (e.g. `layer 2 digest`). */
export function parseDigest(digest: string, what = 'digest'): ParsedDigest {
  const i = digest.indexOf(':')
  const algorithm = i > 0 ? digest.slice(0, i) : ''
  const hex = i > 0 ? digest.slice(i + 1) : ''
  if (!isDigestAlgorithm(algorithm)) {
    throw new TessError('TESS_E_INVALID', `invalid ${what} "${short(digest)}": algorithm "${algorithm}" is not supported`,
      'digests are sha256:<64 lowercase hex> (or sha512:<128 lowercase hex>)')
  }
  if (hex.length !== encodedLength[algorithm] || !/^[a-f0-9]+$/.test(hex)) {
    throw new TessError('TESS_E_INVALID', `invalid ${what} "${short(digest)}": expected ${encodedLength[algorithm]} lowercase hex digits after "${algorithm}:"`,
      'copy the digest exactly as the registry or the image config shows it')
  }
  return { algorithm, hex }
}

export function isDigest(s: string): boolean {
  try {
    parseDigest(s)
    return true
  } catch {
    return false
  }
}

/** Incremental digest of a byte stream. */
export class Digester {
  private readonly hash: crypto.Hash
  private result: string | undefined
  bytes = 0

  constructor(readonly algorithm: DigestAlgorithm = 'sha256') {
    this.hash = crypto.createHash(algorithm)
  }

  update(chunk: Uint8Array): void {
    if (this.result !== undefined) throw new Error('assertion failed: no update after digest()')
    this.hash.update(chunk)
    this.bytes += chunk.length
  }

  digest(): string {
    this.result ??= `${this.algorithm}:${this.hash.digest('hex')}`
    return this.result
  }
}

export function digestOf(bytes: Uint8Array, algorithm: DigestAlgorithm = 'sha256'): string {
  return `${algorithm}:${crypto.createHash(algorithm).update(bytes).digest('hex')}`
}

/** Digest in messages: whole, since operators compare them; only absurd inputs are cut. */
function short(s: string): string {
  return s.length > 200 ? `${s.slice(0, 200)}...` : s
}
