import crypto from 'node:crypto'
import tls from 'node:tls'
import type { Etcd3 } from 'etcd3'
import { TessError, errorMessage } from '../../lib/errors.js'
import { followEtcd, keys, listJson } from '../../lib/etcd.js'
import type { Logger } from '../../lib/log.js'

/** how often a CVM reads the NBD users CA from etcd besides watching it (a watch can be lost) */
export const nbdTrustRefreshMs = 5_000
/** how long storing a new users CA waits for every CVM that is up to accept it */
export const nbdTrustAckWaitMs = 15_000
/** the organisation of NBD user certificates (bootstrap/pki.ts createUserCert) */
export const nbdUsersOrg = 'tessera-nbd-users'

/** A revocation of a user's NBD credentials, in etcd under keys.nbdRevocation(user). */
export interface NbdRevocation {
  user: string
  revokedAt: string
}

/** a CA certificate in PEM, at most this long */
export const nbdUserCaMaxBytes = 16 * 1024

/**
 * The TLS context of the NBD server: the node's certificate, and the CAs whose client
 * certificates open NBD exports: the cluster CA (other nodes, and root on a node) and the NBD
 * users CA, whose certificate is in etcd (`tess vdisk credentials` puts it there; its key stays
 * with the operator). Followed by reading etcd every few seconds; a failed read keeps the last
 * context.
 */
export class NbdTrust {
  private current: tls.SecureContext
  private userCa: string | undefined
  private followers: Array<{ stop(): void }> = []
  private acked: string | undefined
  /** user -> revokedAt (ms): certificates of the NBD users CA naming the user, issued up to then, are refused */
  private revoked = new Map<string, number>()
  /** called after the revocations changed (the NBD server closes connections they now refuse) */
  onRevocations: () => void = () => undefined

  constructor(
    private readonly etcd: Etcd3,
    private readonly creds: { cert: Buffer, key: Buffer, ca: Buffer },
    private readonly log: Logger,
    /** this node: it says in etcd which users CA it accepts (keys.nbdUserCaAck), so a new CA's setter can wait for every node */
    private readonly nodeName?: string,
  ) {
    this.current = this.build(undefined)
  }

  get context(): tls.SecureContext {
    return this.current
  }

  private build(userCa: string | undefined): tls.SecureContext {
    return tls.createSecureContext({ cert: this.creds.cert, key: this.creds.key, ca: userCa === undefined ? [this.creds.ca] : [this.creds.ca, userCa] })
  }

  /**
   * Why a client certificate is refused although its CA is trusted, or undefined: a certificate of
   * the NBD users CA naming a user whose certificates were revoked, issued (notBefore, whole
   * seconds) no later than the revocation. Credentials issued afterwards work again.
   */
  revokedReason(cert: tls.PeerCertificate | undefined): string | undefined {
    const subject = cert?.subject as Record<string, string | string[]> | undefined
    const cn = subject?.CN
    if (typeof cn !== 'string' || subject?.O !== nbdUsersOrg) return undefined
    const at = this.revoked.get(cn)
    if (at === undefined) return undefined
    const issued = Date.parse(cert!.valid_from)
    if (Number.isFinite(issued) && issued > at) return undefined
    return `the NBD credentials of user ${cn} issued before ${new Date(at).toISOString()} were revoked`
  }

  async refreshRevocations(): Promise<void> {
    const recs = await listJson<NbdRevocation>(this.etcd, keys.nbdRevocationsPrefix)
    const next = new Map<string, number>()
    for (const r of recs) {
      const at = Date.parse(r.revokedAt)
      if (typeof r.user === 'string' && Number.isFinite(at)) next.set(r.user, at)
    }
    const changed = next.size !== this.revoked.size || [...next].some(([u, at]) => this.revoked.get(u) !== at)
    this.revoked = next
    if (changed) this.onRevocations()
  }

  /** The node's certificate changed (the object given as creds): new connections get it. */
  rebuild(): void {
    this.current = this.build(this.userCa === undefined ? undefined : checkCaPem(this.userCa))
  }

  async refresh(): Promise<void> {
    await this.refreshRevocations()
    const pem = (await this.etcd.get(keys.nbdUserCa).string()) ?? undefined
    if (pem === this.userCa) return this.ack(pem)
    try {
      this.current = this.build(pem === undefined ? undefined : checkCaPem(pem))
      this.userCa = pem
      this.log.info(pem === undefined ? 'NBD: no users CA; client certificates of the cluster CA only' : 'NBD: client certificates of the NBD users CA are accepted')
    } catch (e) {
      this.log.error(`NBD: the users CA in etcd is not usable: ${errorMessage(e)}`)
      return
    }
    await this.ack(pem)
  }

  /** say in etcd which users CA this node accepts (once per CA; retried by the next refresh if it failed) */
  private async ack(pem: string | undefined): Promise<void> {
    if (this.nodeName === undefined || pem === undefined) return
    const fp = caFingerprint(pem)
    if (this.acked === fp) return
    await this.etcd.put(`${keys.nbdUserCaAck}${this.nodeName}`).value(fp)
    this.acked = fp
  }

  start(): void {
    // a change reaches this CVM at once through a watch; the poll (of both) covers a lost watch
    this.followers = [
      followEtcd(this.etcd, { key: keys.nbdUserCa }, { what: 'NBD: the users CA', log: this.log, pollMs: nbdTrustRefreshMs }, () => this.refresh()),
      followEtcd(this.etcd, { prefix: keys.nbdRevocationsPrefix }, { what: 'NBD: the revocations', log: this.log }, () => this.refreshRevocations()),
    ]
  }

  stop(): void {
    for (const f of this.followers) f.stop()
  }
}

/** what a node acknowledges: the SHA-256 of the CA certificate's PEM text */
export function caFingerprint(pem: string): string {
  return crypto.createHash('sha256').update(pem).digest('hex')
}

/**
 * After a new users CA was stored: wait until every node in `nodes()` (those up) has acknowledged
 * it, at most `timeoutMs`. Resolves with the nodes that did not (empty: all did).
 */
export async function waitForNbdTrustAcks(etcd: Etcd3, pem: string, nodes: () => string[], timeoutMs = nbdTrustAckWaitMs, pollMs = 100): Promise<string[]> {
  const want = caFingerprint(pem)
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const acks = await etcd.getAll().prefix(keys.nbdUserCaAck).strings()
    const missing = nodes().filter((n) => acks[`${keys.nbdUserCaAck}${n}`] !== want)
    if (missing.length === 0 || Date.now() >= deadline) return missing
    await new Promise((r) => setTimeout(r, pollMs))
  }
}

/** A PEM certificate that is a CA (as `tess vdisk credentials` makes it), else a coded error. */
export function checkCaPem(pem: string): string {
  if (Buffer.byteLength(pem) > nbdUserCaMaxBytes) throw new TessError('TESS_E_INVALID', `the CA certificate is longer than ${nbdUserCaMaxBytes} bytes`, 'send one PEM certificate')
  let cert: crypto.X509Certificate
  try {
    cert = new crypto.X509Certificate(pem)
  } catch (e) {
    throw new TessError('TESS_E_INVALID', `not a PEM certificate: ${errorMessage(e)}`, 'send the PEM text of the NBD users CA certificate')
  }
  if (!cert.ca) throw new TessError('TESS_E_INVALID', `certificate "${cert.subject}" is not a CA certificate`, 'send the NBD users CA certificate, not a client certificate')
  return pem
}
