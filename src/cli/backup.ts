/**
 * The operator's side of `tess cluster backup` and `tess cluster restore`: the file is fetched from
 * a CVM (`GET /v1/cluster/backup`), checked, given the operator's secrets when asked, and written
 * with mode 0600 under its final name only once whole and synced.
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import type { ApiClient } from '../lib/apiclient.js'
import { backupHeader, checkPassphrase, extractSnapshot, openSecrets, readBackupFile, sealSecrets, type BackupFile, type BackupManifest, type BackupSecrets } from '../lib/backup.js'
import type { ClusterContext } from '../lib/contexts.js'
import { TessError } from '../lib/errors.js'
import { fsyncDir, fsyncPath } from '../lib/fsutil.js'
import { nodePaths } from '../lib/nodeconfig.js'
import { clusterStateDir } from '../bootstrap/remote.js'
import { clusterKeyFile } from './clusterkey.js'

/** a backup's answer may take long on a large etcd: the socket may idle this long */
const backupAnswerTimeoutMs = 10 * 60_000

export interface BackupResult {
  file: string
  sizeBytes: number
  clusterName: string
  clusterId: string
  takenAt: string
  takenFrom: string
  revision: string
  snapshotBytes: number
  snapshotSha256: string
  etcdMembers: string[]
  counts: BackupManifest['counts']
  /** names of the operator's secret files sealed in it (empty without --include-secrets) */
  secrets: string[]
}

/** The operator's secrets of a cluster, by file name: what --include-secrets seals into the file. */
export function operatorSecrets(ctx: ClusterContext): Record<string, string> {
  const files: Record<string, string> = {}
  if (ctx.local) {
    const p = nodePaths(ctx.local.dataDir)
    files['ca.key'] = p.caKey
    files['api-token'] = p.apiToken
    files['secrets.key'] = p.secretsKey
  } else {
    const dir = clusterStateDir(ctx.name)
    files['cluster.json'] = path.join(dir, 'cluster.json')
    files['ca.key'] = path.join(dir, 'ca.key')
  }
  files['cluster.key'] = clusterKeyFile(ctx)
  return files
}

function readSecrets(ctx: ClusterContext): BackupSecrets {
  const out: BackupSecrets = {}
  for (const [name, file] of Object.entries(operatorSecrets(ctx))) {
    if (fs.existsSync(file)) out[name] = fs.readFileSync(file, 'utf8')
  }
  return out
}

export function readPassphrase(file: string | undefined): string {
  if (file === undefined) throw new TessError('TESS_E_USAGE', 'sealing or opening the secrets needs a passphrase: --passphrase-file FILE', 'write the passphrase to a file of mode 0600 and give its path')
  let text: string
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (e) {
    throw new TessError('TESS_E_NOT_FOUND', `cannot read the passphrase file ${file}: ${(e as Error).message}`, 'give the path of a file holding the passphrase')
  }
  return checkPassphrase(text, file)
}

/** Fetch, check and write a backup to `file` (refused if it exists, unless `overwrite`). */
export async function writeBackup(client: ApiClient, ctx: ClusterContext, file: string, o: { overwrite: boolean, passphrase?: string }): Promise<BackupResult> {
  const target = path.resolve(file)
  if (fs.existsSync(target) && !o.overwrite) throw new TessError('TESS_E_EXISTS', `${target} exists`, 'give a new file name, or --force to replace it')
  const dir = path.dirname(target)
  if (!fs.existsSync(dir)) throw new TessError('TESS_E_NOT_FOUND', `the directory ${dir} does not exist`, 'create it first')
  const part = path.join(dir, `.${path.basename(target)}.${crypto.randomBytes(4).toString('hex')}.partial`)
  const sealed = path.join(dir, `.${path.basename(target)}.${crypto.randomBytes(4).toString('hex')}.sealed`)
  try {
    await client.download('/v1/cluster/backup', part, { timeoutMs: backupAnswerTimeoutMs })
    let b = await readBackupFile(part)
    let secretNames: string[] = []
    let written = part
    if (o.passphrase !== undefined) {
      const secrets = readSecrets(ctx)
      secretNames = Object.keys(secrets).sort()
      const manifest: BackupManifest = { ...b.manifest, secrets: sealSecrets(secrets, o.passphrase, b.manifest.clusterId) }
      await fs.promises.writeFile(sealed, backupHeader(manifest), { mode: 0o600 })
      await extractSnapshot(part, b, sealed, true)
      b = await readBackupFile(sealed)
      written = sealed
    }
    await fsyncPath(written)
    fs.chmodSync(written, 0o600)
    fs.renameSync(written, target)
    await fsyncDir(dir)
    return resultOf(target, b, secretNames)
  } finally {
    fs.rmSync(part, { force: true })
    fs.rmSync(sealed, { force: true })
  }
}

function resultOf(file: string, b: BackupFile, secrets: string[]): BackupResult {
  const m = b.manifest
  return {
    file,
    sizeBytes: fs.statSync(file).size,
    clusterName: m.clusterName,
    clusterId: m.clusterId,
    takenAt: m.takenAt,
    takenFrom: m.takenFrom,
    revision: m.revision,
    snapshotBytes: m.snapshotBytes,
    snapshotSha256: m.snapshotSha256,
    etcdMembers: m.members.map((x) => x.name),
    counts: m.counts,
    secrets,
  }
}

/**
 * Put the operator's secrets of a backup back where this tess keeps them, for the files that are
 * missing there (an existing file is never replaced). Returns the names written.
 */
export function restoreSecrets(ctx: ClusterContext, m: BackupManifest, passphrase: string): string[] {
  if (m.secrets === undefined) throw new TessError('TESS_E_NOT_FOUND', 'the backup holds no secrets (it was made without --include-secrets)', 'leave out --passphrase-file')
  const secrets = openSecrets(m.secrets, passphrase, m.clusterId)
  const where = operatorSecrets(ctx)
  const written: string[] = []
  for (const [name, text] of Object.entries(secrets)) {
    const file = where[name]
    if (file === undefined || fs.existsSync(file)) continue
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 })
    fs.writeFileSync(file, text, { mode: 0o600 })
    written.push(name)
  }
  return written.sort()
}
