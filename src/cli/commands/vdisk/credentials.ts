import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { keyValue } from '../../output.js'
import { clusterStateDir } from '../../../bootstrap/remote.js'
import { createUserCert, nbdUsersCa } from '../../../bootstrap/pki.js'
import { TessError } from '../../../lib/errors.js'
import { checkName } from '../../../lib/names.js'
import { nbdPortDefault } from '../../../lib/limits.js'

export interface VdiskCredentialsResult {
  user: string
  dir: string
  files: string[]
  notAfter: string
  /** commands that reach a vDisk with these credentials (VDISK stands for its name) */
  examples: string[]
}

/** `--revoke`: the user's credentials issued until `revokedAt` are refused from now on */
export interface VdiskCredentialsRevoked {
  user: string
  revokedAt: string
}

const daysMax = 3650

export default class VdiskCredentials extends TessCommand<VdiskCredentialsResult | VdiskCredentialsRevoked> {
  static override summary = 'Issue NBD client credentials (a TLS certificate) for a named user'
  static override description = `Writes a directory that NBD clients take as their x509 credentials: ca-cert.pem (the cluster CA, which signed the servers' certificates, and the NBD users CA), client-cert.pem and client-key.pem (mode 0600). The certificate names the user and is signed by the cluster's NBD users CA, which this command makes on first use (its key stays beside the cluster's secrets on this machine; its certificate goes to etcd, and every CVM accepts it within seconds). It opens NBD exports over TLS, and nothing else: etcd and the data port do not trust it. --revoke refuses every certificate issued to the user until now, on every node within seconds, and closes the connections they hold; credentials issued for the user afterwards (from the next second) work.`
  static override examples = [
    '<%= config.bin %> <%= command.id %> --user alice --out ./alice-nbd',
    '<%= config.bin %> <%= command.id %> --user backup --out /etc/backup/nbd --days 90 --json',
    '<%= config.bin %> <%= command.id %> --user alice --revoke',
  ]

  static override flags = {
    user: Flags.string({ description: 'User the certificate names: [a-z0-9][a-z0-9-]{0,62}.', required: true }),
    out: Flags.string({ description: 'Directory to write the credentials to (made with mode 0700; must not hold credentials already unless --force). Required unless --revoke.' }),
    days: Flags.integer({ description: `Days the certificate is valid (1..${daysMax}).`, default: 365 }),
    force: Flags.boolean({ description: 'Replace credentials already in the directory.', default: false }),
    revoke: Flags.boolean({ description: 'Revoke the user\'s credentials issued until now instead of issuing new ones.', default: false, exclusive: ['out', 'force'] }),
  }

  protected async exec(): Promise<VdiskCredentialsResult | VdiskCredentialsRevoked> {
    const { flags } = await this.parseInput(VdiskCredentials)
    const user = checkName('user', flags.user)
    if (flags.revoke) return this.client(this.context(flags.cluster)).post<VdiskCredentialsRevoked>('/v1/nbd/revocations', { user })
    if (flags.out === undefined) throw new TessError('TESS_E_USAGE', 'missing --out: the directory to write the credentials to', 'e.g. --out ./alice-nbd (or --revoke to revoke the user\'s credentials)')
    if (!Number.isInteger(flags.days) || flags.days < 1 || flags.days > daysMax) {
      throw new TessError('TESS_E_INVALID', `--days ${flags.days} is out of range 1..${daysMax}`, 'e.g. --days 365')
    }
    const ctx = this.context(flags.cluster)
    // the operator's copy of the cluster's secrets: the data dir's pki (embedded) or the cluster state
    const secretsDir = ctx.local !== undefined ? path.join(ctx.local.dataDir, 'pki') : clusterStateDir(ctx.name)
    if (!fs.existsSync(secretsDir)) {
      throw new TessError('TESS_E_PRECONDITION', `cannot issue credentials for cluster "${ctx.name}": its secrets (${secretsDir}) are not on this machine`,
        'run this where the cluster was created (the CA keys live there)')
    }
    const dir = path.resolve(flags.out)
    const files = ['ca-cert.pem', 'client-cert.pem', 'client-key.pem'].map((f) => path.join(dir, f))
    if (!flags.force && files.some((f) => fs.existsSync(f))) {
      throw new TessError('TESS_E_EXISTS', `cannot write credentials to ${dir}: it holds credentials already`, 'choose another directory, or pass --force to replace them')
    }
    const ca = nbdUsersCa(secretsDir, ctx.name)
    // every CVM accepts the users CA once it is in etcd; the call returns when every node that is
    // up does (a node that is down reads it when it comes back)
    const stored = await this.client(ctx).request<{ pendingNodes?: string[] }>('PUT', '/v1/nbd/user-ca', { certPem: fs.readFileSync(ca.caCert, 'utf8') })
    if ((stored.pendingNodes ?? []).length > 0) this.warn(`not yet accepted by node(s) ${stored.pendingNodes!.join(', ')}: connections through them are refused until they read the CA (within seconds of coming back)`)
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
    const cert = createUserCert(dir, ca, user, flags.days)
    // the cluster CA verifies the servers; the users CA is there too because qemu checks the
    // client's own certificate against this file
    fs.writeFileSync(files[0]!, `${ctx.caCert.trimEnd()}\n${fs.readFileSync(ca.caCert, 'utf8').trimEnd()}\n`, { mode: 0o644 })
    const notAfter = new Date(new crypto.X509Certificate(fs.readFileSync(cert.cert)).validTo).toISOString()
    const host = ctx.remote?.hosts[0]?.address ?? '127.0.0.1'
    const port = ctx.remote?.ports?.nbd ?? nbdPortDefault
    const nbdPort = ctx.local !== undefined ? localNbdPort(ctx.local.dataDir) ?? port : port
    return {
      user,
      dir,
      files,
      notAfter,
      examples: [
        `nbdinfo 'nbds://${host}:${nbdPort}/VDISK?tls-certificates=${dir}'`,
        `nbdcopy 'nbds://${host}:${nbdPort}/VDISK?tls-certificates=${dir}' out.img`,
        `qemu-img info --object tls-creds-x509,id=tls0,endpoint=client,dir=${dir} --image-opts driver=nbd,host=${host},port=${nbdPort},export=VDISK,tls-creds=tls0`,
      ],
    }
  }

  protected render(r: VdiskCredentialsResult | VdiskCredentialsRevoked): string {
    if (!('dir' in r)) return keyValue([['revoked NBD credentials of user', r.user], ['issued before', r.revokedAt]])
    return [keyValue([['user', r.user], ['directory', r.dir], ['valid until', r.notAfter]]), '', 'connect with (VDISK: the vDisk name):', ...r.examples.map((e) => `  ${e}`)].join('\n')
  }
}

/** The NBD port of an embedded cluster, from its node.json (the context does not keep it). */
function localNbdPort(dataDir: string): number | undefined {
  try {
    const cfg = JSON.parse(fs.readFileSync(path.join(dataDir, 'node.json'), 'utf8')) as { nbd?: { port?: number } }
    return typeof cfg.nbd?.port === 'number' ? cfg.nbd.port : undefined
  } catch {
    return undefined
  }
}
