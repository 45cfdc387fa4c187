import crypto from 'node:crypto'
import fs from 'node:fs'
import type { CertificateInfo, NodeInfo } from './types.js'

/** `tess cluster status` warns this long before a certificate of a node expires */
export const certificateWarnDays = 30
const dayMs = 24 * 60 * 60 * 1000

/**
 * The expiry of each certificate file (PEM), read again only when the file changes (a node's
 * certificates are read at every heartbeat). A file that cannot be read or parsed is left out and
 * reported once through `warn`.
 */
export class CertificateFiles {
  private readonly seen = new Map<string, { mtimeMs: number, info: CertificateInfo | undefined }>()

  constructor(private readonly files: Array<{ name: string, file: string }>, private readonly warn: (message: string) => void) {}

  read(): CertificateInfo[] {
    const out: CertificateInfo[] = []
    for (const { name, file } of this.files) {
      let mtimeMs: number
      try {
        mtimeMs = fs.statSync(file).mtimeMs
      } catch {
        continue // not there (yet): nothing to report
      }
      let entry = this.seen.get(file)
      if (entry === undefined || entry.mtimeMs !== mtimeMs) {
        entry = { mtimeMs, info: parseCertificate(name, file, this.warn) }
        this.seen.set(file, entry)
      }
      if (entry.info !== undefined) out.push(entry.info)
    }
    return out
  }
}

function parseCertificate(name: string, file: string, warn: (message: string) => void): CertificateInfo | undefined {
  try {
    const cert = new crypto.X509Certificate(fs.readFileSync(file))
    return { name, subject: cert.subject.replace(/\n/g, ', '), notAfter: new Date(cert.validTo).toISOString() }
  } catch (e) {
    warn(`certificate ${file}: cannot be read (${e instanceof Error ? e.message : String(e)}); its expiry is not reported`)
    return undefined
  }
}

/** One line per certificate of a node that expires within certificateWarnDays of `nowMs`, or has. */
export function certificateWarnings(nodes: Array<Pick<NodeInfo, 'name' | 'certificates'>>, nowMs: number): string[] {
  const out: string[] = []
  for (const n of nodes) {
    for (const c of n.certificates ?? []) {
      const left = Date.parse(c.notAfter) - nowMs
      const day = c.notAfter.slice(0, 10)
      if (left <= 0) out.push(`the ${c.name} certificate of node ${n.name} expired on ${day}: TLS to that node fails until it is renewed`)
      else if (left <= certificateWarnDays * dayMs) out.push(`the ${c.name} certificate of node ${n.name} expires on ${day}, in ${Math.ceil(left / dayMs)} day(s): ${c.name.startsWith('etcd client') ? 'restart the node\'s CVM before then (it takes up the renewed one)' : 'renew it before then (tess cluster rotate-certs)'}`)
    }
  }
  return out
}
