import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { TestCluster } from '../helpers/cluster.js'
import { run } from '../helpers/run.js'

const MiB = 1024 * 1024

/**
 * NBD over TLS on an embedded cluster with credentials from `tess vdisk credentials`: real
 * clients read and write with them; they open nothing else (etcd refuses them).
 */
describe('NBD credentials for a user', () => {
  const c = new TestCluster('creds')

  beforeAll(async () => {
    await c.create()
  }, 120_000)

  afterAll(async () => {
    await c.destroy()
  })

  it('issues a certificate that opens NBD over TLS for real clients, and not etcd', async () => {
    expect((await c.tess(['vdisk', 'create', 'v', '--size', '64M', '--json'])).code).toBe(0)
    const out = path.join(c.root, 'alice')
    const r = await c.tess(['vdisk', 'credentials', '--user', 'alice', '--out', out, '--days', '30', '--json'])
    expect(r.code, r.stdout + r.stderr).toBe(0)
    expect(r.json.user).toBe('alice')
    expect(r.json.examples[0]).toContain(`nbds://127.0.0.1:${c.ports.nbd}/VDISK?tls-certificates=${out}`)
    expect(fs.statSync(path.join(out, 'client-key.pem')).mode & 0o777).toBe(0o600)
    expect(fs.statSync(out).mode & 0o777).toBe(0o700)
    expect(new Date(r.json.notAfter).getTime()).toBeGreaterThan(Date.now() + 29 * 86_400_000)

    const uri = `nbds://127.0.0.1:${c.ports.nbd}/v?tls-certificates=${out}`
    // vdisk show tells how to connect over TLS
    const show = await c.tess(['vdisk', 'show', 'v'])
    expect(show.stdout).toContain(`nbds://127.0.0.1:${c.ports.nbd}/v?tls-certificates=DIR`)
    expect(show.stdout).toContain('tess vdisk credentials')
    const src = path.join(c.root, 'in.bin')
    fs.writeFileSync(src, crypto.randomBytes(4 * MiB))
    const w = await run('nbdcopy', ['--flush', src, uri])
    expect(w.code, w.stderr).toBe(0)
    const back = path.join(c.root, 'out.bin')
    const q = await run('qemu-img', ['convert', '-O', 'raw', '--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${out}`,
      '--image-opts', `driver=nbd,host=127.0.0.1,port=${c.ports.nbd},export=v,tls-creds=tls0`, back])
    expect(q.code, q.stderr).toBe(0)
    expect(fs.readFileSync(back).subarray(0, 4 * MiB).equals(fs.readFileSync(src))).toBe(true)

    // the user's certificate is not a cluster credential: etcd refuses it
    const etcd = await run('etcdctl', ['--endpoints', `https://127.0.0.1:${c.ports.etcdClient}`, '--cacert', path.join(out, 'ca-cert.pem'),
      '--cert', path.join(out, 'client-cert.pem'), '--key', path.join(out, 'client-key.pem'), '--dial-timeout', '3s', '--command-timeout', '5s', 'get', '/tess/cluster'], { env: { ETCDCTL_API: '3' } })
    expect(etcd.code).not.toBe(0)

    // existing credentials are not overwritten without --force
    const again = await c.tess(['vdisk', 'credentials', '--user', 'alice', '--out', out, '--json'])
    expect(again.code).toBe(4)
    expect(again.json.error.code).toBe('TESS_E_EXISTS')
    expect((await c.tess(['vdisk', 'credentials', '--user', 'Bad_Name', '--out', path.join(c.root, 'x'), '--json'])).code).toBe(2)
    expect((await c.tess(['vdisk', 'credentials', '--user', 'bob', '--out', out, '--force', '--json'])).code).toBe(0)
    const info = await run('nbdinfo', [uri])
    expect(info.code, info.stderr).toBe(0)
  })
})
