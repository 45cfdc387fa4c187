import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { createCa, createNodeCert } from '../../src/bootstrap/pki.js'
import { checkNodePair, NodeCredentials } from '../../src/cvm/credentials.js'

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-creds-'))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))
const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined }

function pair(sub: string, ca: { caCert: string, caKey: string }, node: string, days?: number): { cert: Buffer, key: Buffer } {
  const d = path.join(dir, sub)
  fs.mkdirSync(d, { recursive: true })
  const f = createNodeCert(d, ca, node, ['127.0.0.1'], days)
  return { cert: fs.readFileSync(f.cert), key: fs.readFileSync(f.key) }
}

describe('node credentials', () => {
  const ca = createCa(path.join(dir, 'ca'), 'c1')
  const other = createCa(path.join(dir, 'other'), 'c2')
  const caPem = fs.readFileSync(ca.caCert)

  it('takes a pair of this node signed by the cluster CA, and refuses any other', () => {
    const good = pair('good', ca, 'n1', 30)
    const x = checkNodePair(good.cert, good.key, caPem, 'n1')
    expect(Date.parse(x.validTo) - Date.now()).toBeLessThan(31 * 24 * 3600 * 1000)
    const foreign = pair('foreign', other, 'n1')
    expect(() => checkNodePair(foreign.cert, foreign.key, caPem, 'n1')).toThrow(/did not sign/)
    const second = pair('second', ca, 'n1')
    expect(() => checkNodePair(good.cert, second.key, caPem, 'n1')).toThrow(/not the key's/)
    const n2 = pair('n2', ca, 'n2')
    expect(() => checkNodePair(n2.cert, n2.key, caPem, 'n1')).toThrow(/subject/)
    expect(() => checkNodePair(Buffer.from('junk'), good.key, caPem, 'n1')).toThrow(/cannot be read/)
  })

  it('reloads in place, tells its listeners, and reports the etcd client\'s certificate until a restart', () => {
    const data = path.join(dir, 'data')
    fs.mkdirSync(path.join(data, 'pki'), { recursive: true })
    const first = pair('first', ca, 'n1')
    fs.writeFileSync(path.join(data, 'pki', 'node.crt'), first.cert)
    fs.writeFileSync(path.join(data, 'pki', 'node.key'), first.key)
    fs.copyFileSync(ca.caCert, path.join(data, 'pki', 'ca.crt'))
    const nc = new NodeCredentials(data, 'n1', quiet)
    const held = nc.creds
    let told = 0
    nc.onReload(() => { told++ })
    expect(nc.heldByEtcdClient()).toBeUndefined()
    // a bad pair changes nothing
    const foreign = pair('foreign2', other, 'n1')
    fs.writeFileSync(path.join(data, 'pki', 'node.crt'), foreign.cert)
    fs.writeFileSync(path.join(data, 'pki', 'node.key'), foreign.key)
    expect(() => nc.reload()).toThrow(expect.objectContaining({ code: 'TESS_E_INVALID' }))
    expect([told, nc.creds.cert.equals(first.cert)]).toEqual([0, true])
    const next = pair('next', ca, 'n1', 100)
    fs.writeFileSync(path.join(data, 'pki', 'node.crt'), next.cert)
    fs.writeFileSync(path.join(data, 'pki', 'node.key'), next.key)
    const r = nc.reload()
    expect(r.node).toBe('n1')
    expect([told, nc.creds === held, held.cert.equals(next.cert), held.key.equals(next.key)]).toEqual([1, true, true, true])
    expect(nc.heldByEtcdClient()?.name).toMatch(/^etcd client/)
  })
})
