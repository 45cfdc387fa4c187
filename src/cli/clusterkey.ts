import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { clusterStateDir } from '../bootstrap/remote.js'
import { TessError } from '../lib/errors.js'
import type { ApiClient } from '../lib/apiclient.js'
import type { ClusterContext } from '../lib/contexts.js'

/** bytes of the cluster key (src/cvm/vdisk/crypt.ts clusterKeyBytes) */
const clusterKeyBytes = 32

export interface UnlockResult {
  keyFile: string
  unlockedNodes: string[]
  failedNodes: Array<{ node: string, error: string }>
}

/** Where the operator keeps a cluster's key: beside its other secrets in the CLI's config dir, never on a node by tess. */
export function clusterKeyFile(ctx: ClusterContext): string {
  return path.join(clusterStateDir(ctx.name), 'cluster.key')
}

/** The key in `file` (base64, 32 bytes); with `create`, a new one is made when there is none. */
export function readClusterKey(file: string, create: boolean): Buffer {
  if (!fs.existsSync(file)) {
    if (!create) throw new TessError('TESS_E_NOT_FOUND', `no cluster key at ${file}`, 'give the key file with --key-file (it was written where the first encrypted vDisk was created)')
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 })
    fs.writeFileSync(file, `${crypto.randomBytes(clusterKeyBytes).toString('base64')}\n`, { mode: 0o600, flag: 'wx' })
  }
  const key = Buffer.from(fs.readFileSync(file, 'utf8').trim(), 'base64')
  if (key.length !== clusterKeyBytes) throw new TessError('TESS_E_INVALID', `${file} does not hold a cluster key (${clusterKeyBytes} bytes of base64)`, 'give the key file `tess vdisk create --encrypted` wrote')
  return key
}

/**
 * Before an encrypted vDisk or volume is made: the key this CLI keeps for the cluster (made here
 * on first use) goes to the CVMs, which check it and keep it in memory.
 */
export async function giveClusterKey(client: ApiClient, ctx: ClusterContext): Promise<UnlockResult> {
  const file = clusterKeyFile(ctx)
  return unlockCluster(client, file, readClusterKey(file, true))
}

/** Give the cluster its key: the CVM that answers checks it and hands it to the others. */
export async function unlockCluster(client: ApiClient, file: string, key: Buffer): Promise<UnlockResult> {
  const r = await client.post<{ unlockedNodes: string[], failedNodes: Array<{ node: string, error: string }> }>('/v1/keys/unlock', { key: key.toString('base64') })
  return { keyFile: file, ...r }
}
