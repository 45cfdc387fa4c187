import crypto from 'node:crypto'
import fs from 'node:fs'
import { TessError, errorMessage } from '../lib/errors.js'
import type { Logger } from '../lib/log.js'
import { nodePaths } from '../lib/nodeconfig.js'
import type { CertificateInfo, ReloadedCertificate } from '../lib/types.js'

/** the node's TLS credentials: one object, shared by reference with everything that makes TLS connections */
export interface NodeCreds { cert: Buffer, key: Buffer, ca: Buffer }

/**
 * This CVM's node certificate, key and the cluster CA, read from pki/ at start and again on
 * `reload()` (tess cluster rotate-certs wrote new files). The object in `creds` is changed in
 * place, so what reads it per connection (calls to other CVMs' data ports and APIs) takes the new
 * pair at once; the listeners (API, NBD, data port) are told through `onReload` and swap their
 * TLS contexts: connections already open go on. The etcd client keeps the certificate it started
 * with until the CVM restarts (its connections are made once); the status record says so.
 */
export class NodeCredentials {
  readonly creds: NodeCreds
  /** the certificate the CVM started with (its etcd client's) */
  readonly startedWith: crypto.X509Certificate
  private readonly listeners: Array<(c: NodeCreds) => void> = []

  constructor(private readonly dataDir: string, private readonly nodeName: string, private readonly log: Logger) {
    const p = nodePaths(dataDir)
    this.creds = { cert: fs.readFileSync(p.nodeCert), key: fs.readFileSync(p.nodeKey), ca: fs.readFileSync(p.caCert) }
    this.startedWithPem = this.creds.cert
    this.startedWith = new crypto.X509Certificate(this.creds.cert)
  }

  private readonly startedWithPem: Buffer

  /**
   * The certificate the CVM's etcd client still presents, when it is no longer the node's (a
   * rotation since the start): reported with the node's certificates, so that `tess cluster
   * status` warns before it expires too.
   */
  heldByEtcdClient(): CertificateInfo | undefined {
    if (this.creds.cert.equals(this.startedWithPem)) return undefined
    return { name: 'etcd client (the node certificate the CVM started with, until it restarts)', subject: this.startedWith.subject.replace(/\n/g, ', '), notAfter: new Date(this.startedWith.validTo).toISOString() }
  }

  onReload(fn: (c: NodeCreds) => void): void {
    this.listeners.push(fn)
  }

  /** Read pki/ again, check the pair, and hand it to every listener. A pair that does not check is refused and nothing changes. */
  reload(): ReloadedCertificate {
    const p = nodePaths(this.dataDir)
    let cert: Buffer
    let key: Buffer
    let ca: Buffer
    try {
      [cert, key, ca] = [fs.readFileSync(p.nodeCert), fs.readFileSync(p.nodeKey), fs.readFileSync(p.caCert)]
    } catch (e) {
      throw new TessError('TESS_E_IO', `node ${this.nodeName}: cannot read its certificate files: ${errorMessage(e)}`, `check ${p.pki}`)
    }
    const x = checkNodePair(cert, key, ca, this.nodeName)
    Object.assign(this.creds, { cert, key, ca })
    for (const fn of this.listeners) fn(this.creds)
    this.log.info(`node certificate ${x.serialNumber} taken up (valid until ${new Date(x.validTo).toISOString()})`)
    return { node: this.nodeName, subject: x.subject.replace(/\n/g, ', '), notAfter: new Date(x.validTo).toISOString(), serial: x.serialNumber, fingerprint256: x.fingerprint256 }
  }
}

/** A node certificate as the cluster needs it: its key's, signed by the CA, O=tessera, CN=the node, valid now. */
export function checkNodePair(cert: Buffer, key: Buffer, ca: Buffer, nodeName: string): crypto.X509Certificate {
  const bad = (why: string) => new TessError('TESS_E_INVALID', `the new certificate of node ${nodeName} is refused: ${why}; the node keeps the one it has`, 'write a certificate and key made for this node and signed by the cluster CA (tess cluster rotate-certs does), then reload again')
  let x: crypto.X509Certificate
  try {
    x = new crypto.X509Certificate(cert)
    if (!x.checkPrivateKey(crypto.createPrivateKey(key))) throw bad('it is not the key\'s')
  } catch (e) {
    if (e instanceof TessError) throw e
    throw bad(`it cannot be read (${errorMessage(e)})`)
  }
  if (!x.verify(new crypto.X509Certificate(ca).publicKey)) throw bad('the cluster CA did not sign it')
  const subject = x.subject.split('\n')
  if (!subject.includes(`CN=${nodeName}`) || !subject.includes('O=tessera')) throw bad(`its subject is ${x.subject.replace(/\n/g, ', ')}`)
  const now = Date.now()
  if (Date.parse(x.validFrom) > now || Date.parse(x.validTo) <= now) throw bad(`it is valid from ${x.validFrom} to ${x.validTo}`)
  return x
}
