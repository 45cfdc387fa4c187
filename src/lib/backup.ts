/**
 * The cluster backup file (`tess cluster backup`, `tess cluster restore`): a consistent snapshot of
 * the cluster's etcd (every block map, extent group record, vDisk, volume, CSM and container
 * record) and what a restore needs beside it.
 *
 * Layout: the line `TESS-BACKUP 1`, one line of JSON (the manifest), then the etcd snapshot exactly
 * as etcd's Maintenance.Snapshot streamed it (etcd's own hash at its end, which `etcdctl snapshot
 * restore` checks). The manifest gives the snapshot's size and SHA-256, so a truncated or altered
 * file is refused before anything is stopped.
 *
 * The snapshot holds no secret in the clear (registry passwords in etcd are sealed with the
 * cluster's secrets key, lib/secretbox.ts). The operator's secrets (the secrets key, the CA key,
 * the API token, the cluster key of encrypted vDisks) are in the file only when asked for, and then
 * sealed with AES-256-GCM under a key derived from a passphrase with scrypt.
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import { TessError } from './errors.js'

export const backupMagic = 'TESS-BACKUP 1'
export const backupFormat = 1
/** the manifest line is read whole before anything else: bounded */
export const backupManifestMaxBytes = 4 * 1024 * 1024
/** a passphrase shorter than this is refused */
export const backupPassphraseMinChars = 12

export interface BackupMember { name: string, peerUrls: string[] }
export interface BackupNode { name: string, address: string }
export interface BackupDisk { id: string, node: string, path: string }

/** what the CVM that took the snapshot says of it (the API's answer, before the snapshot bytes) */
export interface BackupManifest {
  format: number
  clusterId: string
  clusterName: string
  /** when the snapshot was taken (ISO 8601) */
  takenAt: string
  /** the node whose etcd member streamed it */
  takenFrom: string
  /** etcd's revision at the snapshot */
  revision: string
  tessVersion: string
  snapshotBytes: number
  snapshotSha256: string
  /** the etcd members at the snapshot: a restore makes the same members again */
  members: BackupMember[]
  nodes: BackupNode[]
  disks: BackupDisk[]
  /** the cluster CA certificate (public): a restore checks it against the context's */
  caCert: string
  counts: { vdisks: number, volumes: number, containers: number, snapshots: number }
  /** the operator's secrets, sealed (only with --include-secrets) */
  secrets?: SealedSecrets
}

export interface SealedSecrets {
  kdf: 'scrypt'
  /** scrypt cost N (r 8, p 1) */
  n: number
  salt: string
  iv: string
  tag: string
  data: string
}

/** the operator's secrets, as files by name (cluster.json, ca.key, cluster.key, api-token, secrets.key) */
export type BackupSecrets = Record<string, string>

const scryptN = 1 << 15
const scryptMaxmem = 64 * 1024 * 1024

function keyFrom(passphrase: string, salt: Buffer, n: number): Buffer {
  return crypto.scryptSync(passphrase, salt, 32, { N: n, r: 8, p: 1, maxmem: scryptMaxmem })
}

export function checkPassphrase(passphrase: string, file: string): string {
  const p = passphrase.replace(/\r?\n$/, '')
  if (p.length < backupPassphraseMinChars) {
    throw new TessError('TESS_E_INVALID', `the passphrase in ${file} has ${p.length} characters: at least ${backupPassphraseMinChars} are needed`, 'write a longer passphrase to the file (mode 0600)')
  }
  return p
}

export function sealSecrets(secrets: BackupSecrets, passphrase: string, clusterId: string): SealedSecrets {
  const salt = crypto.randomBytes(16)
  const iv = crypto.randomBytes(12)
  const c = crypto.createCipheriv('aes-256-gcm', keyFrom(passphrase, salt, scryptN), iv)
  c.setAAD(Buffer.from(clusterId))
  const data = Buffer.concat([c.update(JSON.stringify(secrets), 'utf8'), c.final()])
  return { kdf: 'scrypt', n: scryptN, salt: salt.toString('base64'), iv: iv.toString('base64'), tag: c.getAuthTag().toString('base64'), data: data.toString('base64') }
}

export function openSecrets(s: SealedSecrets, passphrase: string, clusterId: string): BackupSecrets {
  if (s.kdf !== 'scrypt' || !Number.isInteger(s.n) || s.n < 1024 || s.n > (1 << 20)) throw new TessError('TESS_E_INVALID', 'the backup\'s sealed secrets name an unknown key derivation', 'the file was made by another tool or altered')
  const d = crypto.createDecipheriv('aes-256-gcm', keyFrom(passphrase, Buffer.from(s.salt, 'base64'), s.n), Buffer.from(s.iv, 'base64'))
  d.setAAD(Buffer.from(clusterId))
  d.setAuthTag(Buffer.from(s.tag, 'base64'))
  let text: string
  try {
    text = Buffer.concat([d.update(Buffer.from(s.data, 'base64')), d.final()]).toString('utf8')
  } catch {
    throw new TessError('TESS_E_AUTH', 'the backup\'s secrets do not open with this passphrase', 'give the passphrase the backup was made with (--passphrase-file)')
  }
  const parsed = JSON.parse(text) as unknown
  if (typeof parsed !== 'object' || parsed === null || Object.values(parsed).some((v) => typeof v !== 'string')) throw new TessError('TESS_E_INVALID', 'the backup\'s secrets are not a set of files', 'the file was altered')
  return parsed as BackupSecrets
}

const hex64 = /^[0-9a-f]{64}$/

function bad(file: string, why: string): TessError {
  return new TessError('TESS_E_INVALID', `${file} is not a usable Tessera backup: ${why}`, 'give a file written by tess cluster backup, whole and unaltered')
}

/** Check a manifest's shape (it came from a file or a CVM): every field a restore uses. */
export function checkManifest(m: unknown, file: string): BackupManifest {
  const o = m as Partial<BackupManifest> | null
  if (typeof o !== 'object' || o === null) throw bad(file, 'its manifest is not an object')
  if (o.format !== backupFormat) throw bad(file, `format ${String(o.format)} (this tess reads format ${backupFormat})`)
  for (const k of ['clusterId', 'clusterName', 'takenAt', 'takenFrom', 'revision', 'caCert'] as const) {
    if (typeof o[k] !== 'string' || o[k] === '') throw bad(file, `its manifest has no ${k}`)
  }
  if (typeof o.snapshotBytes !== 'number' || !Number.isSafeInteger(o.snapshotBytes) || o.snapshotBytes <= 0) throw bad(file, 'its manifest has no snapshot size')
  if (typeof o.snapshotSha256 !== 'string' || !hex64.test(o.snapshotSha256)) throw bad(file, 'its manifest has no snapshot SHA-256')
  if (!Array.isArray(o.members) || o.members.length === 0 || o.members.some((x) => typeof x?.name !== 'string' || !Array.isArray(x.peerUrls) || x.peerUrls.length === 0 || x.peerUrls.some((u) => typeof u !== 'string'))) {
    throw bad(file, 'its manifest names no etcd members')
  }
  if (!Array.isArray(o.nodes) || o.nodes.some((x) => typeof x?.name !== 'string' || typeof x.address !== 'string')) throw bad(file, 'its manifest has no node list')
  if (!Array.isArray(o.disks) || o.disks.some((x) => typeof x?.id !== 'string' || typeof x.node !== 'string' || typeof x.path !== 'string')) throw bad(file, 'its manifest has no disk list')
  return o as BackupManifest
}

/** The two header lines of a backup file. */
export function backupHeader(m: BackupManifest): Buffer {
  return Buffer.from(`${backupMagic}\n${JSON.stringify(m)}\n`, 'utf8')
}

export interface BackupFile {
  manifest: BackupManifest
  /** where the snapshot starts in the file */
  snapshotOffset: number
}

/**
 * Read a backup file's manifest and check its snapshot (size and SHA-256) without loading it:
 * a file cut short or altered is refused here, before a restore stops anything.
 */
export async function readBackupFile(file: string): Promise<BackupFile> {
  let fh: fs.promises.FileHandle
  try {
    fh = await fs.promises.open(file, 'r')
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    throw new TessError(code === 'ENOENT' ? 'TESS_E_NOT_FOUND' : 'TESS_E_IO', `cannot read backup ${file}: ${(e as Error).message}`, 'give the path of a file written by tess cluster backup')
  }
  try {
    const size = (await fh.stat()).size
    const head = Buffer.alloc(Math.min(backupManifestMaxBytes, size))
    const { bytesRead } = await fh.read(head, 0, head.length, 0)
    const text = head.subarray(0, bytesRead)
    const nl1 = text.indexOf(0x0a)
    if (nl1 < 0 || text.subarray(0, nl1).toString('latin1') !== backupMagic) throw bad(file, `it does not start with "${backupMagic}"`)
    const nl2 = text.indexOf(0x0a, nl1 + 1)
    if (nl2 < 0) throw bad(file, `its manifest line is missing or longer than ${backupManifestMaxBytes} bytes`)
    let parsed: unknown
    try {
      parsed = JSON.parse(text.subarray(nl1 + 1, nl2).toString('utf8'))
    } catch {
      throw bad(file, 'its manifest is not JSON')
    }
    const manifest = checkManifest(parsed, file)
    const snapshotOffset = nl2 + 1
    if (size !== snapshotOffset + manifest.snapshotBytes) throw bad(file, `it holds ${size - snapshotOffset} snapshot bytes, its manifest says ${manifest.snapshotBytes} (cut short?)`)
    const h = crypto.createHash('sha256')
    const buf = Buffer.allocUnsafe(1024 * 1024)
    for (let at = snapshotOffset; at < size;) {
      const { bytesRead: n } = await fh.read(buf, 0, Math.min(buf.length, size - at), at)
      if (n === 0) throw bad(file, 'it ended early')
      h.update(buf.subarray(0, n))
      at += n
    }
    if (h.digest('hex') !== manifest.snapshotSha256) throw bad(file, 'its snapshot does not match the SHA-256 in its manifest (altered or damaged)')
    return { manifest, snapshotOffset }
  } finally {
    await fh.close()
  }
}

/** Copy the snapshot out of a backup file (for etcdctl snapshot restore), mode 0600; `append`: to the end of `to`. */
export async function extractSnapshot(file: string, b: BackupFile, to: string, append = false): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const r = fs.createReadStream(file, { start: b.snapshotOffset })
    const w = fs.createWriteStream(to, { mode: 0o600, flags: append ? 'a' : 'w' })
    r.on('error', reject)
    w.on('error', reject)
    w.on('finish', resolve)
    r.pipe(w)
  })
}
