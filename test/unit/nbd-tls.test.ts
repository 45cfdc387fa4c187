import { execFile } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import tls from 'node:tls'
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest'
import { createCa, createNodeCert } from '../../src/bootstrap/pki.js'
import type { Logger } from '../../src/lib/log.js'
import { NbdRep } from '../../src/cvm/nbd/protocol.js'
import { NbdServer } from '../../src/cvm/nbd/server.js'
import { MemoryExportProvider } from '../helpers/memdevice.js'

/**
 * NBD over TLS (NBD_OPT_STARTTLS) with client certificates of the cluster CA, and the Unix socket,
 * against real clients: nbdinfo, nbdcopy and qemu-img, the way nbdkit --tls and qemu-nbd
 * --tls-creds are used.
 */

const MiB = 1024 * 1024
const toolEnv = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` }
const quiet: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined }

function tool(cmd: string, args: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { env: toolEnv, timeout: 60_000, maxBuffer: 64 * MiB, encoding: 'utf8' }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr })
    })
  })
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-nbdtls-'))
/** a certificate directory as libnbd and qemu read it: ca-cert.pem, client-cert.pem, client-key.pem */
function certDir(name: string, ca: { caCert: string }, client: { cert: string, key: string }): string {
  const d = path.join(dir, name)
  fs.mkdirSync(d)
  fs.copyFileSync(ca.caCert, path.join(d, 'ca-cert.pem'))
  fs.copyFileSync(client.cert, path.join(d, 'client-cert.pem'))
  fs.copyFileSync(client.key, path.join(d, 'client-key.pem'))
  return d
}

let server: NbdServer | undefined
let good: string
let rogue: string
let context: tls.SecureContext
let provider: MemoryExportProvider
const data = crypto.randomBytes(4 * MiB)

beforeAll(() => {
  for (const d of ['pki', 'srv', 'cli', 'other', 'stranger']) fs.mkdirSync(path.join(dir, d))
  const pkiDir = path.join(dir, 'pki')
  const ca = createCa(pkiDir, 'nbdtls')
  const srv = createNodeCert(path.join(dir, 'srv'), ca, 'n1', ['127.0.0.1'])
  context = tls.createSecureContext({ cert: fs.readFileSync(srv.cert), key: fs.readFileSync(srv.key), ca: fs.readFileSync(ca.caCert) })
  good = certDir('good', ca, createNodeCert(path.join(dir, 'cli'), ca, 'operator', []))
  // a client certificate from another CA (a stranger), trusting our CA so that only we can refuse it
  const otherCa = createCa(path.join(dir, 'other'), 'other')
  const strangerCert = createNodeCert(path.join(dir, 'stranger'), otherCa, 'stranger', [])
  rogue = certDir('rogue', ca, strangerCert)
}, 60_000)

afterEach(async () => {
  await server?.close()
  server = undefined
})

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))


/** the reply type a plain client gets to one option (LIST 3 with no data, GO 7 for "disk") */
function replyTypeTo(port: number, opt: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1')
    let buf = Buffer.alloc(0)
    let sent = false
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d])
      if (!sent && buf.length >= 18) {
        sent = true
        buf = buf.subarray(18)
        const name = Buffer.from('disk')
        const data = opt === 7 ? Buffer.concat([Buffer.from([0, 0, 0, name.length]), name, Buffer.from([0, 0])]) : Buffer.alloc(0)
        const h = Buffer.alloc(16)
        h.writeBigUInt64BE(0x49484156454F5054n, 0)
        h.writeUInt32BE(opt, 8)
        h.writeUInt32BE(data.length, 12)
        sock.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), h, data]))
      }
      if (sent && buf.length >= 20) {
        resolve(buf.readUInt32BE(12))
        sock.destroy()
      }
    })
    sock.on('error', reject)
  })
}

async function start(require: boolean): Promise<{ port: number, sock: string }> {
  provider = new MemoryExportProvider()
  provider.add('disk', 8 * MiB, 'the test disk')
  server = new NbdServer({ provider, log: quiet, tls: { context: () => context, require } })
  await server.listen(0, '127.0.0.1')
  const sock = path.join(dir, `nbd-${crypto.randomBytes(4).toString('hex')}.sock`)
  await server.listenUnix(sock)
  return { port: server.address.port, sock }
}

describe('NBD with TLS required', () => {
  test('a client without TLS gets nothing, not even the export list; EXPORT_NAME is cut', async () => {
    const { port } = await start(true)
    const list = await tool('nbdinfo', ['--list', `nbd://127.0.0.1:${port}`])
    expect(list.code).not.toBe(0)
    expect(list.stdout).not.toContain('disk')
    const info = await tool('nbdinfo', [`nbd://127.0.0.1:${port}/disk`])
    expect(info.code).not.toBe(0)
    expect(info.stderr).toMatch(/not supported/i) // libnbd's words for NBD_REP_ERR_TLS_REQD
    // on the wire: LIST and GO are answered with NBD_REP_ERR_TLS_REQD
    for (const opt of [3, 7]) expect(await replyTypeTo(port, opt)).toBe(NbdRep.ERR_TLS_REQD)
  })

  test('nbdinfo, nbdcopy and qemu-img with a client certificate of the cluster CA read and write', async () => {
    const { port } = await start(true)
    const uri = `nbds://127.0.0.1:${port}/disk?tls-certificates=${good}`
    const info = await tool('nbdinfo', ['--json', uri])
    expect(info.code, info.stderr).toBe(0)
    expect(JSON.parse(info.stdout).exports[0]['export-size']).toBe(8 * MiB)
    const src = path.join(dir, 'src.bin')
    fs.writeFileSync(src, data)
    const w = await tool('nbdcopy', ['--flush', src, uri])
    expect(w.code, w.stderr).toBe(0)
    const out = path.join(dir, 'out.bin')
    const q = await tool('qemu-img', ['convert', '-O', 'raw', '--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${good}`,
      '--image-opts', `driver=nbd,host=127.0.0.1,port=${port},export=disk,tls-creds=tls0`, out])
    expect(q.code, q.stderr).toBe(0)
    expect(fs.readFileSync(out).subarray(0, 4 * MiB).equals(data)).toBe(true)
  })

  test('a certificate from another CA is refused', async () => {
    const { port } = await start(true)
    const r = await tool('nbdinfo', [`nbds://127.0.0.1:${port}/disk?tls-certificates=${rogue}`])
    expect(r.code).not.toBe(0)
    expect(r.stdout).not.toContain('disk')
  })

  test('the Unix socket serves local clients without TLS', async () => {
    const { sock } = await start(true)
    expect(fs.statSync(sock).mode & 0o777).toBe(0o600)
    const r = await tool('nbdinfo', ['--json', `nbd+unix:///disk?socket=${sock}`])
    expect(r.code, r.stderr).toBe(0)
    expect(JSON.parse(r.stdout).exports[0]['export-size']).toBe(8 * MiB)
  })
})

describe('NBD with TLS offered', () => {
  test('plain and TLS clients both work', async () => {
    const { port } = await start(false)
    expect((await tool('nbdinfo', [`nbd://127.0.0.1:${port}/disk`])).code).toBe(0)
    const r = await tool('nbdinfo', [`nbds://127.0.0.1:${port}/disk?tls-certificates=${good}`])
    expect(r.code, r.stderr).toBe(0)
  })
})
