import { spawn } from 'node:child_process'
import fs from 'node:fs'
import https from 'node:https'
import path from 'node:path'
import tls from 'node:tls'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { TestCluster, waitFor } from '../helpers/cluster.js'
import { run } from '../helpers/run.js'

const MiB = 1024 * 1024

/** The fingerprint of the certificate a TLS server presents (the cluster CA pinned). */
function presented(port: number, ca: Buffer, client?: { cert: Buffer, key: Buffer }): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, ca, ...client, checkServerIdentity: () => undefined }, () => {
      const fp = s.getPeerCertificate().fingerprint256
      s.end()
      resolve(fp)
    })
    s.on('error', reject)
  })
}

/**
 * An NBD client over TLS that writes, then waits for a line on stdin, then writes and reads on
 * the same connection: it prints "ready" once connected and "ok" if the second round went well.
 */
const heldClient = [
  'import nbd, sys',
  'h = nbd.NBD()',
  'h.set_uri_allow_local_file(True)',
  'h.connect_uri(sys.argv[1])',
  'h.pwrite(b"a" * 1048576, 0)',
  'h.flush()',
  'print("ready", flush=True)',
  'sys.stdin.readline()',
  'h.pwrite(b"b" * 1048576, 1048576)',
  'h.flush()',
  'assert h.pread(2097152, 0) == b"a" * 1048576 + b"b" * 1048576',
  'print("ok", flush=True)',
].join('\n')

/**
 * `tess cluster rotate-certs` on an embedded cluster: the node gets a new certificate that its API,
 * NBD server and etcd member present, with an NBD client connected over TLS all along and no
 * daemon restarted; a pair that does not belong to the node is refused and changes nothing; the
 * status warns about a certificate that expires soon, and stops once it is renewed.
 */
describe('node certificate rotation', () => {
  const c = new TestCluster('rot')
  let pki: string
  let ca: Buffer

  beforeAll(async () => {
    await c.create()
    pki = path.join(c.dataDir, 'pki')
    ca = fs.readFileSync(path.join(pki, 'ca.crt'))
  }, 120_000)

  afterAll(async () => {
    await c.destroy()
  })

  it('renews the node certificate with a TLS client connected and nothing restarted', async () => {
    const creds = path.join(c.root, 'creds')
    expect((await c.tess(['vdisk', 'credentials', '--user', 'rot', '--out', creds, '--json'])).code).toBe(0)
    expect((await c.tess(['vdisk', 'create', 'v', '--size', '16M', '--json'])).code).toBe(0)
    const uri = `nbds://127.0.0.1:${c.ports.nbd}/v?tls-certificates=${creds}`
    const nodeClient = () => ({ cert: fs.readFileSync(path.join(pki, 'node.crt')), key: fs.readFileSync(path.join(pki, 'node.key')) })
    const apiBefore = await presented(c.ports.api, ca)
    const etcdBefore = await presented(c.ports.etcdClient, ca, nodeClient())
    expect(etcdBefore).toBe(apiBefore)
    const pids = { cvm: c.pid('cvm'), etcd: c.pid('etcd') }

    const client = spawn('/usr/bin/python3', ['-c', heldClient, uri], { stdio: ['pipe', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    client.stdout.on('data', (d) => { out += d })
    client.stderr.on('data', (d) => { err += d })
    const exited = new Promise<number | null>((resolve) => client.on('close', (code) => resolve(code)))
    try {
      await waitFor('the NBD client to connect', () => {
        if (client.exitCode !== null) throw new Error(`the NBD client exited: ${err}`)
        return out.includes('ready') || undefined
      }, 30_000, 50)
      const r = await c.tess(['cluster', 'rotate-certs', '--json'])
      expect(r.code, r.stdout + r.stderr).toBe(0)
      expect(r.json.nodes).toHaveLength(1)
      const n = r.json.nodes[0]
      expect(n.etcdChecked).toBe(true)
      expect(n.fingerprint256).not.toBe(apiBefore)
      expect(await presented(c.ports.api, ca)).toBe(n.fingerprint256)
      expect(await presented(c.ports.etcdClient, ca, nodeClient())).toBe(n.fingerprint256)
      // the connection made before the rotation goes on
      client.stdin.write('\n')
      expect(await exited, err).toBe(0)
      expect(out).toContain('ok')
    } finally {
      client.stdin.end()
      if (client.exitCode === null) client.kill('SIGKILL')
    }
    // a new TLS connection, to the new certificate
    const copy = path.join(c.root, 'v.bin')
    const rd = await run('nbdcopy', [uri, copy])
    expect(rd.code, rd.stderr).toBe(0)
    expect(fs.readFileSync(copy).subarray(0, 2 * MiB).equals(Buffer.concat([Buffer.alloc(MiB, 'a'), Buffer.alloc(MiB, 'b')]))).toBe(true)
    expect({ cvm: c.pid('cvm'), etcd: c.pid('etcd') }).toEqual(pids)
    // the CVM's etcd client still holds the first certificate: the status says so
    const st = await waitFor('the status to show the new certificate', async () => {
      const s = await c.tess(['cluster', 'status', '--json'])
      const certs = s.json?.nodes?.[0]?.certificates ?? []
      return certs.some((x: { name: string }) => x.name.startsWith('etcd client')) ? certs : undefined
    }, 30_000, 500)
    expect(st.map((x: { name: string }) => x.name)).toEqual(expect.arrayContaining(['node', 'CA']))
  }, 180_000)

  it('refuses a pair that is not the node\'s, and warns until a short-lived one is renewed', async () => {
    const before = await presented(c.ports.api, ca)
    const crt = path.join(pki, 'node.crt')
    const saved = fs.readFileSync(crt)
    // an NBD user's certificate (another CA, another key): the reload refuses it, the API keeps its own
    fs.copyFileSync(path.join(c.root, 'creds', 'client-cert.pem'), crt)
    const ctx = JSON.parse(fs.readFileSync(path.join(c.configDir, 'contexts.json'), 'utf8')).clusters.rot
    const answer = await new Promise<{ status: number, body: any }>((resolve, reject) => {
      const req = https.request(`${ctx.endpoints[0]}/v1/nodes/${encodeURIComponent(JSON.parse(fs.readFileSync(path.join(c.dataDir, 'node.json'), 'utf8')).nodeName)}/certificates/reload`, {
        method: 'POST', ca, headers: { authorization: `Bearer ${ctx.token}`, 'content-type': 'application/json' },
      }, (res) => {
        let b = ''
        res.on('data', (d) => { b += d })
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(b) }))
      })
      req.on('error', reject)
      req.end('{}')
    })
    fs.writeFileSync(crt, saved)
    expect(answer.status).toBe(400)
    expect(answer.body.error).toMatchObject({ code: 'TESS_E_INVALID' })
    expect(answer.body.error.message).toMatch(/not the key's|did not sign/)
    expect(await presented(c.ports.api, ca)).toBe(before)

    const dry = await c.tess(['cluster', 'rotate-certs', '--dry-run', '--json'])
    expect(dry.code).toBe(0)
    expect(dry.json.plan).toHaveLength(1)
    expect(await presented(c.ports.api, ca)).toBe(before)

    expect((await c.tess(['cluster', 'rotate-certs', '--days', '10', '--json'])).code).toBe(0)
    await waitFor('a warning about the node certificate', async () => {
      const s = await c.tess(['cluster', 'status', '--json'])
      return (s.json?.warnings ?? []).some((w: string) => /node certificate of node .* in 10 day\(s\): renew it/.test(w)) ? true : undefined
    }, 30_000, 500)
    expect((await c.tess(['cluster', 'rotate-certs', '--json'])).code).toBe(0)
    await waitFor('no warning once renewed', async () => {
      const s = await c.tess(['cluster', 'status', '--json'])
      return s.code === 0 && (s.json?.warnings ?? []).length === 0 ? true : undefined
    }, 30_000, 500)
  }, 180_000)
})
