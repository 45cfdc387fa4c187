import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { createSecretsKey, isSealed, openSecret, readSecretsKey, sealSecret } from '../../src/lib/secretbox.js'

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-secretbox-'))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

describe('secrets sealed for etcd', () => {
  const file = path.join(dir, 'secrets.key')
  createSecretsKey(file)
  const key = readSecretsKey(file)!

  it('writes a 32-byte key in a file of mode 0600', () => {
    expect(fs.statSync(file).mode & 0o777).toBe(0o600)
    expect(key.length).toBe(32)
    expect(readSecretsKey(path.join(dir, 'none'))).toBeUndefined()
    fs.writeFileSync(path.join(dir, 'short'), 'c2hvcnQ=\n')
    expect(() => readSecretsKey(path.join(dir, 'short'))).toThrow(/not 32 bytes/)
  })

  it('seals without the plaintext in the stored form, and opens only with the same key and name', () => {
    const s = sealSecret(key, 'hunter2-very-secret', '/tess/registry-secrets/a')
    expect(isSealed(s)).toBe(true)
    expect(s).not.toContain('hunter2')
    expect(sealSecret(key, 'hunter2-very-secret', '/tess/registry-secrets/a')).not.toBe(s) // a fresh IV each time
    expect(openSecret(key, s, '/tess/registry-secrets/a')).toBe('hunter2-very-secret')
    // moved to another name, another cluster's key, one bit flipped, truncated: refused with a code
    expect(() => openSecret(key, s, '/tess/registry-secrets/b')).toThrow(/does not open/)
    const other = Buffer.alloc(32, 7)
    expect(() => openSecret(other, s, '/tess/registry-secrets/a')).toThrow(/does not open/)
    const raw = Buffer.from(s.slice('tess-sealed-v1:'.length), 'base64url')
    raw[raw.length - 1]! ^= 1
    expect(() => openSecret(key, `tess-sealed-v1:${raw.toString('base64url')}`, '/tess/registry-secrets/a')).toThrow(/does not open/)
    expect(() => openSecret(key, 'tess-sealed-v1:AAAA', '/tess/registry-secrets/a')).toThrow(/truncated/)
  })

  it('reads a value an older tess stored in the clear; without a key it refuses to seal or open', () => {
    expect(openSecret(key, 'plain-old', 'x')).toBe('plain-old')
    expect(openSecret(undefined, 'plain-old', 'x')).toBe('plain-old')
    expect(() => sealSecret(undefined, 'p', 'x')).toThrow(/no secrets key/)
    expect(() => openSecret(undefined, sealSecret(key, 'p', 'x'), 'x')).toThrow(/no secrets key/)
  })
})
