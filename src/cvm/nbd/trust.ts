import crypto from 'node:crypto'
import tls from 'node:tls'
import type { Etcd3 } from 'etcd3'
import { TessError, errorMessage } from '../../common/errors.js'
import { keys } from '../../common/etcd.js'
import type { Logger } from '../../common/log.js'

/** how often a CVM reads the NBD users CA from etcd */
export const nbdTrustRefreshMs = 5_000
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
  private timer: NodeJS.Timeout | undefined

  constructor(private readonly etcd: Etcd3, private readonly creds: { cert: Buffer, key: Buffer, ca: Buffer }, private readonly log: Logger) {
    this.current = this.build(undefined)
  }

  get context(): tls.SecureContext {
    return this.current
  }

  private build(userCa: string | undefined): tls.SecureContext {
    return tls.createSecureContext({ cert: this.creds.cert, key: this.creds.key, ca: userCa === undefined ? [this.creds.ca] : [this.creds.ca, userCa] })
  }

  async refresh(): Promise<void> {
    const pem = (await this.etcd.get(keys.nbdUserCa).string()) ?? undefined
    if (pem === this.userCa) return
    try {
      this.current = this.build(pem === undefined ? undefined : checkCaPem(pem))
      this.userCa = pem
      this.log.info(pem === undefined ? 'NBD: no users CA; client certificates of the cluster CA only' : 'NBD: client certificates of the NBD users CA are accepted')
    } catch (e) {
      this.log.error(`NBD: the users CA in etcd is not usable: ${errorMessage(e)}`)
    }
  }

  start(): void {
    const tick = () => {
      this.refresh().catch((e: unknown) => this.log.warn(`NBD: cannot read the users CA: ${errorMessage(e)}`)).finally(() => {
        this.timer = setTimeout(tick, nbdTrustRefreshMs)
        this.timer.unref()
      })
    }
    tick()
  }

  stop(): void {
    clearTimeout(this.timer)
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
