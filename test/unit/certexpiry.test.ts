import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createCa, createUserCert } from '../../src/bootstrap/pki.js'
import { CertificateFiles, certificateWarnings } from '../../src/lib/certexpiry.js'

const dayMs = 24 * 60 * 60 * 1000
const now = Date.parse('2026-12-06T12:00:00Z')
const at = (days: number): string => new Date(now + days * dayMs).toISOString()

describe('certificate expiry warnings', () => {
  it('warns within 30 days and after expiry, naming the node, the certificate and the day; not before, and not for unknown nodes', () => {
    const w = certificateWarnings([
      { name: 'n1', certificates: [{ name: 'node', subject: 'CN=n1', notAfter: at(10) }, { name: 'CA', subject: 'CN=ca', notAfter: at(3650) }] },
      { name: 'n2', certificates: [{ name: 'node', subject: 'CN=n2', notAfter: at(-1) }] },
      { name: 'n3', certificates: [{ name: 'node', subject: 'CN=n3', notAfter: at(31) }] },
      { name: 'n4', certificates: null },
    ], now)
    expect(w).toEqual([
      `the node certificate of node n1 expires on ${at(10).slice(0, 10)}, in 10 day(s): renew it before then (tess cluster rotate-certs)`,
      `the node certificate of node n2 expired on ${at(-1).slice(0, 10)}: TLS to that node fails until it is renewed`,
    ])
    expect(certificateWarnings([{ name: 'n1', certificates: [{ name: 'node', subject: '', notAfter: at(30) }] }], now)).toHaveLength(1)
  })
})

describe('certificate files (real certificates made with openssl)', () => {
  let dir: string
  beforeEach(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-certs-')) })
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }))

  it('reads the expiry of each file, leaves out a missing one, and reports a bad one once', () => {
    const ca = createCa(path.join(dir, 'ca'), 't')
    const user = createUserCert(path.join(dir, 'user'), ca, 'alice', 5)
    const bad = path.join(dir, 'bad.crt')
    fs.writeFileSync(bad, 'not a certificate\n')
    const warnings: string[] = []
    const files = new CertificateFiles([
      { name: 'CA', file: ca.caCert },
      { name: 'node', file: user.cert },
      { name: 'other', file: bad },
      { name: 'gone', file: path.join(dir, 'missing.crt') },
    ], (m) => warnings.push(m))
    const got = files.read()
    expect(got.map((c) => c.name)).toEqual(['CA', 'node'])
    const soon = Date.now()
    expect(Date.parse(got[0]!.notAfter) - soon).toBeGreaterThan(3600 * dayMs)
    expect(got[1]!.subject).toContain('alice')
    const left = Date.parse(got[1]!.notAfter) - soon
    expect(left).toBeGreaterThan(4 * dayMs)
    expect(left).toBeLessThanOrEqual(5 * dayMs)
    expect(certificateWarnings([{ name: 'n1', certificates: got }], soon)).toEqual([expect.stringMatching(/^the node certificate of node n1 expires on \d{4}-\d\d-\d\d, in 5 day\(s\)/)])
    expect(files.read()).toEqual(got)
    expect(warnings).toHaveLength(1)
    expect(warnings[0]).toContain(bad)
  })
})
