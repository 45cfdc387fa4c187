import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { TestCluster, waitFor } from '../helpers/cluster.js'
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

  it('revoking a user refuses its certificates and closes the connections they hold; credentials issued afterwards work', async () => {
    const issue = async (user: string, dir: string) => {
      const r = await c.tess(['vdisk', 'credentials', '--user', user, '--out', dir, '--json'])
      expect(r.code, r.stdout + r.stderr).toBe(0)
      return `nbds://127.0.0.1:${c.ports.nbd}/v?tls-certificates=${dir}`
    }
    const carol = await issue('carol', path.join(c.root, 'carol'))
    const dave = await issue('dave', path.join(c.root, 'dave'))
    // a connection with carol's certificate, reading every 100 ms until it is cut (or 20 s pass)
    const marker = path.join(c.root, 'carol-connected')
    const script = [
      'import nbd, sys, time',
      'h = nbd.NBD()',
      'h.set_uri_allow_local_file(True)', // the URI's tls-certificates names a local directory
      `h.connect_uri(${JSON.stringify(carol)})`,
      `open(${JSON.stringify(marker)}, 'w').close()`,
      'for i in range(200):',
      '    try:',
      '        h.pread(4096, 0)',
      '    except Exception as e:',
      "        print('dropped:', e); sys.exit(0)",
      '    time.sleep(0.1)',
      "print('still open')",
    ].join('\n')
    const held = run('/usr/bin/python3', ['-c', script], { timeoutMs: 60_000 })
    await waitFor('carol\'s connection', () => fs.existsSync(marker) || undefined, 20_000)
    const rev = await c.tess(['vdisk', 'credentials', '--user', 'carol', '--revoke', '--json'])
    expect(rev.code, rev.stdout + rev.stderr).toBe(0)
    expect(rev.json.user).toBe('carol')
    const h = await held
    expect(h.stdout, h.stderr).toContain('dropped:')
    // new connections with carol's certificate get nothing; dave's still work
    expect((await run('nbdinfo', [carol])).code).not.toBe(0)
    expect((await run('nbdinfo', [dave])).code).toBe(0)
    // credentials issued after the revocation (from the next second) work again
    await new Promise((r) => setTimeout(r, 1100))
    const again = await issue('carol', path.join(c.root, 'carol-2'))
    const info = await run('nbdinfo', [again])
    expect(info.code, info.stderr).toBe(0)
    // --revoke issues nothing: with --out it is a usage error
    expect((await c.tess(['vdisk', 'credentials', '--user', 'dave', '--out', path.join(c.root, 'y'), '--revoke', '--json'])).code).toBe(2)
  })
})
