/**
 * Secrets at rest in etcd (registry passwords): sealed with AES-256-GCM under the cluster's secrets
 * key, a file on every node (`<data-dir>/pki/secrets.key`, mode 0600) and in the operator's cluster
 * state, never in etcd. Whoever reads etcd, its files or a backup of it, gets ciphertext only.
 *
 * Stored form: `tess-sealed-v1:` + base64url(iv (12 bytes) | tag (16 bytes) | ciphertext). The
 * name the secret is stored under is the additional authenticated data, so a sealed value moved to
 * another key does not open. Values without the prefix were stored by an older tess in the clear
 * and are read as they are.
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import { TessError } from './errors.js'

export const secretsKeyBytes = 32
const sealedPrefix = 'tess-sealed-v1:'
const ivBytes = 12
const tagBytes = 16

/** A new random key, written base64 to `file` with mode 0600; returns it as base64. */
export function createSecretsKey(file: string): string {
  const key = crypto.randomBytes(secretsKeyBytes).toString('base64')
  fs.writeFileSync(file, key + '\n', { mode: 0o600 })
  fs.chmodSync(file, 0o600)
  return key
}

/** The key from its file; undefined when there is none (a node set up by an older tess). */
export function readSecretsKey(file: string): Buffer | undefined {
  let text: string
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (e) {
    if ((e as { code?: string }).code === 'ENOENT') return undefined
    throw e
  }
  const key = Buffer.from(text.trim(), 'base64')
  if (key.length !== secretsKeyBytes) {
    throw new TessError('TESS_E_INVALID', `the secrets key ${file} is not ${secretsKeyBytes} bytes of base64`, 'restore it from another node of the cluster (the same file on every node)')
  }
  return key
}

function noKey(what: string): TessError {
  return new TessError('TESS_E_PRECONDITION', `cannot ${what}: this node has no secrets key (pki/secrets.key; the node was set up by an older tess)`,
    'copy pki/secrets.key from a node that has it (mode 0600), or store no password')
}

export function isSealed(stored: string): boolean {
  return stored.startsWith(sealedPrefix)
}

/** Seal `plaintext`, bound to `name` (the key it is stored under). */
export function sealSecret(key: Buffer | undefined, plaintext: string, name: string): string {
  if (key === undefined) throw noKey(`store the secret ${name}`)
  const iv = crypto.randomBytes(ivBytes)
  const c = crypto.createCipheriv('aes-256-gcm', key, iv)
  c.setAAD(Buffer.from(name))
  const ct = Buffer.concat([c.update(plaintext, 'utf8'), c.final()])
  return sealedPrefix + Buffer.concat([iv, c.getAuthTag(), ct]).toString('base64url')
}

/** The plaintext of a stored value (a value stored in the clear by an older tess is returned as is). */
export function openSecret(key: Buffer | undefined, stored: string, name: string): string {
  if (!isSealed(stored)) return stored
  if (key === undefined) throw noKey(`read the secret ${name}`)
  const raw = Buffer.from(stored.slice(sealedPrefix.length), 'base64url')
  if (raw.length < ivBytes + tagBytes) throw new TessError('TESS_E_PRECONDITION', `the sealed secret ${name} is truncated`, 'store it again')
  const d = crypto.createDecipheriv('aes-256-gcm', key, raw.subarray(0, ivBytes))
  d.setAAD(Buffer.from(name))
  d.setAuthTag(raw.subarray(ivBytes, ivBytes + tagBytes))
  try {
    return Buffer.concat([d.update(raw.subarray(ivBytes + tagBytes)), d.final()]).toString('utf8')
  } catch {
    throw new TessError('TESS_E_PRECONDITION', `the sealed secret ${name} does not open with this node's secrets key (another cluster's key, or tampered)`,
      'check that pki/secrets.key is the same on every node, then store the secret again')
  }
}
