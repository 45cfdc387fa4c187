/**
 * `tess cluster rotate-certs`: a new certificate and key for every node, one node at a time, with
 * nothing restarted. For each node: the pair is made here with the cluster CA (the operator's copy,
 * or the embedded cluster's pki/), written to the node's pki/ (over SSH for a cluster on hosts),
 * taken up by its CVM (`POST /v1/nodes/NAME/certificates/reload`: the API, NBD and data port
 * listeners swap their TLS contexts, open connections go on), and checked from here: the node's
 * API and its etcd member (which reads its files at every new connection) present the new one.
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import tls from 'node:tls'
import type { ApiClient } from '../lib/apiclient.js'
import type { ClusterContext } from '../lib/contexts.js'
import { TessError, errorMessage } from '../lib/errors.js'
import { nodePaths, readNodeConfig } from '../lib/nodeconfig.js'
import type { NodeInfo, ReloadedCertificate } from '../lib/types.js'
import { createNodeCert, type CaFiles } from './pki.js'
import { clusterStateDir, connectHost, remoteDataDir, remotePortDefaults } from './remote.js'
import { shellQuote } from './ssh.js'

/** how long a node's etcd member may take to present the new certificate */
const etcdCheckTimeoutMs = 10_000

export interface RotatedNode {
  node: string
  /** the node certificate's expiry before (null: the node did not report it) */
  notAfterBefore: string | null
  notAfter: string
  serial: string
  fingerprint256: string
  /** its etcd member was seen presenting the new certificate (null: the node is no etcd member) */
  etcdChecked: boolean | null
}

function caOf(ctx: ClusterContext): CaFiles {
  const files = ctx.local
    ? { caCert: nodePaths(ctx.local.dataDir).caCert, caKey: nodePaths(ctx.local.dataDir).caKey }
    : { caCert: path.join(clusterStateDir(ctx.name), 'ca.crt'), caKey: path.join(clusterStateDir(ctx.name), 'ca.key') }
  if (!fs.existsSync(files.caKey)) {
    throw new TessError('TESS_E_PRECONDITION', `cannot renew the certificates of cluster "${ctx.name}": its CA key ${files.caKey} is not on this machine`, 'run the command where the cluster was created, or put the CA key back (tess cluster restore --passphrase-file from a backup made with --include-secrets)')
  }
  return files
}

function etcdClientPort(ctx: ClusterContext): number {
  return ctx.local ? readNodeConfig(ctx.local.dataDir).etcd.clientPort : (ctx.remote?.ports?.etcdClient ?? remotePortDefaults.etcdClient)
}

/** The certificate a TLS server at host:port presents (its fingerprint), the CA pinned. */
function presented(host: string, port: number, ca: string, client?: { cert: Buffer, key: Buffer }): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host, port, ca, ...client, checkServerIdentity: () => undefined, timeout: 5000 }, () => {
      const fp = s.getPeerCertificate().fingerprint256
      s.end()
      resolve(fp)
    })
    s.on('timeout', () => s.destroy(new Error('timed out')))
    s.on('error', reject)
  })
}

async function install(ctx: ClusterContext, node: NodeInfo, cert: Buffer, key: Buffer): Promise<void> {
  if (ctx.local) {
    const p = nodePaths(ctx.local.dataDir)
    fs.writeFileSync(`${p.nodeKey}.new`, key, { mode: 0o600 })
    fs.writeFileSync(`${p.nodeCert}.new`, cert, { mode: 0o644 })
    fs.renameSync(`${p.nodeKey}.new`, p.nodeKey)
    fs.renameSync(`${p.nodeCert}.new`, p.nodeCert)
    return
  }
  const host = ctx.remote?.hosts.find((h) => h.name === node.name)
  if (host === undefined) throw new TessError('TESS_E_NOT_FOUND', `node ${node.name} is not among the hosts of the context of cluster "${ctx.name}"`, 'add it again (tess host add) or edit the context')
  const t = await connectHost(ctx.remote!, host.address)
  try {
    const pki = `${remoteDataDir}/pki`
    await t.writeFile(`${pki}/node.key.new`, key, 0o600)
    await t.writeFile(`${pki}/node.crt.new`, cert, 0o644)
    // the key first: a handshake between the two moves fails, and is tried again by its client
    await t.execOk(`mv -f ${shellQuote(`${pki}/node.key.new`)} ${shellQuote(`${pki}/node.key`)} && mv -f ${shellQuote(`${pki}/node.crt.new`)} ${shellQuote(`${pki}/node.crt`)}`, { what: 'put the new certificate in place' })
  } finally {
    await t.close().catch(() => undefined) // closing the SSH connection when done: nothing is lost if it is gone
  }
}

/** Renew one node's certificate (see the file's comment). */
async function rotateOne(ctx: ClusterContext, client: ApiClient, ca: CaFiles, n: NodeInfo, days: number): Promise<RotatedNode> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-rotate-'))
  try {
    const files = createNodeCert(tmp, ca, n.name, [n.address], days)
    const cert = fs.readFileSync(files.cert)
    const key = fs.readFileSync(files.key)
    const want = new crypto.X509Certificate(cert).fingerprint256
    await install(ctx, n, cert, key)
    const got = await client.post<ReloadedCertificate>(`/v1/nodes/${encodeURIComponent(n.name)}/certificates/reload`, {})
    if (got.fingerprint256 !== want) throw new TessError('TESS_E_CONFLICT', `node ${n.name} took up certificate ${got.fingerprint256}, not the one just written (${want})`, 'another rotation ran at the same time? run the command again')
    const api = await presented(n.address, n.apiPort, ctx.caCert)
    if (api !== want) throw new TessError('TESS_E_IO', `the API of node ${n.name} still presents certificate ${api} after the reload`, 'see the CVM log of the node')
    let etcdChecked: boolean | null = null
    if (n.daemons.some((d) => d.name === 'etcd')) {
      const deadline = Date.now() + etcdCheckTimeoutMs
      for (;;) {
        const fp = await presented(n.address, etcdClientPort(ctx), ctx.caCert, { cert, key }).catch((e: unknown) => `unreachable (${errorMessage(e)})`) // said in the error below if it lasts
        if (fp === want) break
        if (Date.now() > deadline) throw new TessError('TESS_E_IO', `the etcd member of node ${n.name} still presents ${fp} ${etcdCheckTimeoutMs / 1000} s after its files changed`, 'see the etcd log of the node; etcd takes up new files at each new connection')
        await new Promise((r) => setTimeout(r, 250))
      }
      etcdChecked = true
    }
    const before = n.certificates?.find((c) => c.name === 'node')?.notAfter ?? null
    return { node: n.name, notAfterBefore: before, notAfter: got.notAfter, serial: got.serial, fingerprint256: got.fingerprint256, etcdChecked }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true })
  }
}

/** Every node in turn; a node that fails stops the rotation (the ones before keep their new certificates). */
export async function rotateNodeCertificates(ctx: ClusterContext, client: ApiClient, nodes: NodeInfo[], days: number, progress: (node: string) => void): Promise<RotatedNode[]> {
  const ca = caOf(ctx)
  const out: RotatedNode[] = []
  for (const n of nodes) {
    progress(n.name)
    out.push(await rotateOne(ctx, client, ca, n, days))
  }
  return out
}
