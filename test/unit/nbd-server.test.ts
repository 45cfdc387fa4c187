import { execFile } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, test } from 'vitest'
import type { Logger } from '../../src/lib/log.js'
import { nbdInFlightPerConnMax, nbdPayloadMaxBytes } from '../../src/lib/limits.js'
import { DeviceError, nbdErrno } from '../../src/cvm/nbd/device.js'
import { NbdCmd, NbdCmdFlag, NbdFlag, NbdInfo, NbdOpt, NbdRep, NbdReplyFlag, NbdReplyType } from '../../src/cvm/nbd/protocol.js'
import { NbdServer, type NbdServerOptions } from '../../src/cvm/nbd/server.js'
import { MemoryExportProvider } from '../helpers/memdevice.js'

const MiB = 1024 * 1024
/** real clients come from Debian packages in /usr/bin; pyenv's python must not shadow python3-libnbd */
const toolEnv = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` }
const toolTimeoutMs = 60_000

interface ToolResult {
  code: number
  stdout: string
  stderr: string
}

/** run a client as a subprocess; never execFileSync: the server lives in this event loop */
function tool(cmd: string, args: string[]): Promise<ToolResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { env: toolEnv, timeout: toolTimeoutMs, maxBuffer: 64 * MiB, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0
      resolve({ code, stdout, stderr })
    })
  })
}

function sha256(b: Buffer): string {
  return crypto.createHash('sha256').update(b).digest('hex')
}

interface Harness {
  server: NbdServer
  provider: MemoryExportProvider
  port: number
  logs: string[]
  uri(name: string): string
}

function captureLog(lines: string[]): Logger {
  return {
    info: (m) => lines.push(`INFO ${m}`),
    warn: (m) => lines.push(`WARN ${m}`),
    error: (m) => lines.push(`ERROR ${m}`),
  }
}

let harness: Harness | undefined
const clients: RawClient[] = []

async function start(opts: Partial<NbdServerOptions> = {}, setup?: (p: MemoryExportProvider) => void): Promise<Harness> {
  const provider = new MemoryExportProvider()
  if (setup) setup(provider)
  else {
    provider.add('disk', 8 * MiB, 'the test disk')
    provider.add('other', 1 * MiB + 7, 'an odd-sized disk')
  }
  const logs: string[] = []
  const server = new NbdServer({ provider, log: captureLog(logs), ...opts })
  await server.listen(0, '127.0.0.1')
  const port = server.address.port
  harness = { server, provider, port, logs, uri: (name) => `nbd://127.0.0.1:${port}/${name}` }
  return harness
}

afterEach(async () => {
  for (const c of clients.splice(0)) c.socket.destroy()
  if (harness) {
    const h = harness
    harness = undefined
    await h.server.close()
    // every device the server opened was closed exactly once, and never called out of range
    expect(h.provider.problems()).toEqual([])
  }
})

// ---- a raw NBD client for frames real clients never send ----

function u32(n: number): Buffer {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(n)
  return b
}

function goData(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name)
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length)
  b.writeUInt32BE(n.length, 0)
  n.copy(b, 4)
  b.writeUInt16BE(infos.length, 4 + n.length)
  infos.forEach((t, i) => b.writeUInt16BE(t, 4 + n.length + 2 + 2 * i))
  return b
}

function metaData(name: string, queries: string[]): Buffer {
  return Buffer.concat([u32(name.length), Buffer.from(name), u32(queries.length), ...queries.flatMap((q) => [u32(q.length), Buffer.from(q)])])
}

interface RequestFields {
  flags?: number
  handle?: bigint
  offset?: number | bigint
  length?: number
  payload?: Buffer
}

function requestFrame(type: number, o: RequestFields = {}): Buffer {
  const h = Buffer.alloc(28)
  h.writeUInt32BE(0x25609513, 0)
  h.writeUInt16BE(o.flags ?? 0, 4)
  h.writeUInt16BE(type, 6)
  h.writeBigUInt64BE(o.handle ?? 1n, 8)
  h.writeBigUInt64BE(BigInt(o.offset ?? 0), 16)
  h.writeUInt32BE(o.length ?? o.payload?.length ?? 0, 24)
  return o.payload ? Buffer.concat([h, o.payload]) : h
}

interface OptionReply {
  option: number
  type: number
  data: Buffer
}

interface Chunk {
  flags: number
  type: number
  handle: bigint
  payload: Buffer
}

class RawClient {
  private chunks: Buffer[] = []
  private held = 0
  private wake: (() => void) | undefined
  private ended = false
  readonly closed: Promise<void>

  constructor(readonly socket: net.Socket) {
    socket.on('data', (c: Buffer) => {
      this.chunks.push(c)
      this.held += c.length
      this.wake?.()
    })
    socket.on('error', () => {})
    this.closed = new Promise((resolve) => {
      socket.on('close', () => {
        this.ended = true
        this.wake?.()
        resolve()
      })
    })
    clients.push(this)
  }

  static connect(port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(new RawClient(s)))
      s.once('error', reject)
    })
  }

  /** handshake and GO; returns the client ready for requests */
  static async open(port: number, name: string, opts: { structured?: boolean } = {}): Promise<RawClient> {
    const c = await RawClient.connect(port)
    await c.handshake()
    if (opts.structured) {
      c.option(NbdOpt.STRUCTURED_REPLY)
      expect((await c.optionReply()).type).toBe(NbdRep.ACK)
    }
    await c.go(name)
    return c
  }

  write(b: Buffer): void {
    this.socket.write(b)
  }

  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs
    while (this.held < n) {
      if (this.ended) throw new Error(`connection closed with ${this.held} of ${n} bytes`)
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`timed out waiting for ${n} bytes (have ${this.held})`)
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left)
        this.wake = () => {
          clearTimeout(t)
          resolve()
        }
      })
      this.wake = undefined
    }
    const parts: Buffer[] = []
    let need = n
    while (need > 0) {
      const head = this.chunks[0]!
      if (head.length > need) {
        parts.push(head.subarray(0, need))
        this.chunks[0] = head.subarray(need)
        need = 0
      } else {
        parts.push(head)
        this.chunks.shift()
        need -= head.length
      }
    }
    this.held -= n
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, n)
  }

  /** true when the server closes the connection within the time */
  async closedWithin(ms: number): Promise<boolean> {
    return Promise.race([this.closed.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))])
  }

  async handshake(clientFlags = 3): Promise<Buffer> {
    const greeting = await this.read(18)
    this.write(u32(clientFlags))
    return greeting
  }

  option(code: number, data: Buffer = Buffer.alloc(0), lengthField = data.length): void {
    const h = Buffer.alloc(16)
    h.write('IHAVEOPT', 0, 'latin1')
    h.writeUInt32BE(code, 8)
    h.writeUInt32BE(lengthField, 12)
    this.write(Buffer.concat([h, data]))
  }

  async optionReply(): Promise<OptionReply> {
    const h = await this.read(20)
    expect(h.readBigUInt64BE(0)).toBe(0x3e889045565a9n)
    const length = h.readUInt32BE(16)
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.read(length) }
  }

  /** send INFO or GO; returns the info replies by type, or the error reply */
  async info(code: number, name: string, infos: number[] = []): Promise<{ infos: Map<number, Buffer>; final: OptionReply }> {
    this.option(code, goData(name, infos))
    const got = new Map<number, Buffer>()
    for (;;) {
      const r = await this.optionReply()
      expect(r.option).toBe(code)
      if (r.type !== NbdRep.INFO) return { infos: got, final: r }
      got.set(r.data.readUInt16BE(0), r.data.subarray(2))
    }
  }

  async go(name: string): Promise<{ size: number; flags: number }> {
    const { infos, final } = await this.info(NbdOpt.GO, name)
    expect(final.type).toBe(NbdRep.ACK)
    const e = infos.get(NbdInfo.EXPORT)!
    return { size: Number(e.readBigUInt64BE(0)), flags: e.readUInt16BE(8) }
  }

  request(type: number, o: RequestFields = {}): void {
    this.write(requestFrame(type, o))
  }

  async simpleReply(dataLength = 0): Promise<{ error: number; handle: bigint; data: Buffer }> {
    const h = await this.read(16)
    expect(h.readUInt32BE(0)).toBe(0x67446698)
    const error = h.readUInt32BE(4)
    return { error, handle: h.readBigUInt64BE(8), data: error === 0 ? await this.read(dataLength) : Buffer.alloc(0) }
  }

  async chunk(): Promise<Chunk> {
    const h = await this.read(20)
    expect(h.readUInt32BE(0)).toBe(0x668e33ef)
    return { flags: h.readUInt16BE(4), type: h.readUInt16BE(6), handle: h.readBigUInt64BE(8), payload: await this.read(h.readUInt32BE(16)) }
  }

  async readData(offset: number, length: number): Promise<Buffer> {
    this.request(NbdCmd.READ, { offset, length, handle: 77n })
    const r = await this.simpleReply(length)
    expect(r.error).toBe(0)
    return r.data
  }
}

function errnoOfChunk(c: Chunk): number {
  expect(c.type).toBe(NbdReplyType.ERROR)
  expect(c.flags & NbdReplyFlag.DONE).toBe(NbdReplyFlag.DONE)
  return c.payload.readUInt32BE(0)
}

async function waitFor(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

function randomBytes(n: number): Buffer {
  return crypto.randomBytes(n)
}

// ---- real clients ----

describe('real clients', () => {
  let dir: string
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'tess-nbd-'))
  })
  afterEach(async () => {
    await fs.rm(dir, { recursive: true, force: true })
  })

  test('nbdinfo reports size, flags and block sizes; --list shows every export', async () => {
    const h = await start()
    const r = await tool('nbdinfo', ['--json', h.uri('disk')])
    expect(r.code, r.stderr).toBe(0)
    const e = JSON.parse(r.stdout).exports[0]
    expect(e).toMatchObject({
      'export-name': 'disk',
      description: 'the test disk',
      'export-size': 8 * MiB,
      is_read_only: false,
      can_flush: true,
      can_fua: true,
      can_trim: true,
      can_zero: true,
      can_multi_conn: true,
      can_df: true,
      can_cache: false,
      can_fast_zero: false,
      block_size_minimum: 1,
      block_size_preferred: 4096,
      block_size_maximum: nbdPayloadMaxBytes,
    })
    expect(e.contexts).toEqual([])

    const list = await tool('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${h.port}`])
    expect(list.code, list.stderr).toBe(0)
    const exports = JSON.parse(list.stdout).exports.map((x: { 'export-name': string; description: string; 'export-size': number }) => [x['export-name'], x.description, x['export-size']])
    expect(exports).toEqual([
      ['disk', 'the test disk', 8 * MiB],
      ['other', 'an odd-sized disk', MiB + 7],
    ])
  })

  test('nbdinfo: CAN_MULTI_CONN is an option', async () => {
    const h = await start({ multiConn: false })
    const r = await tool('nbdinfo', ['--json', h.uri('disk')])
    expect(r.code, r.stderr).toBe(0)
    expect(JSON.parse(r.stdout).exports[0].can_multi_conn).toBe(false)
  })

  test('nbdinfo: an unknown export fails cleanly', async () => {
    const h = await start()
    const r = await tool('nbdinfo', ['--json', h.uri('nope')])
    expect(r.code).not.toBe(0)
    expect(r.stderr).toMatch(/nope/)
  })

  test('qemu-io: unaligned pattern writes, zeroes, discard, FUA and flush read back as written', async () => {
    const h = await start()
    const exp = h.provider.get('disk')
    const model = Buffer.alloc(exp.sizeBytes)
    const cmds: string[] = []
    const write = (pattern: number, off: number, len: number, flags = '') => {
      cmds.push(`write ${flags} -P ${pattern} ${off} ${len}`)
      model.fill(pattern, off, off + len)
    }
    const zero = (cmd: string, off: number, len: number) => {
      cmds.push(`${cmd} ${off} ${len}`)
      model.fill(0, off, off + len)
    }
    write(0x11, 0, 65536)
    write(0x22, 1000, 5000)
    write(0x33, 70001, 123457)
    write(0x44, 400000, 777, '-f')
    write(0x55, 8 * MiB - 4097, 4097)
    write(0x66, 1 * MiB + 3, 3 * MiB + 5)
    zero('write -z', 3000, 9000)
    zero('discard', 262144, 65536)
    cmds.push('flush')
    cmds.push('read -P 0x11 0 1000', 'read -P 0x22 1000 2000', 'read -P 0 3000 9000', 'read -P 0x11 12000 53536')
    cmds.push('read -P 0x33 70001 123457', 'read -P 0x44 400000 777', 'read -P 0x55 8384511 4097', 'read -P 0x66 1048579 3145733')
    cmds.push('read -P 0 262144 4096')
    const r = await tool('qemu-io', ['-f', 'raw', h.uri('disk'), ...cmds.flatMap((c) => ['-c', c])])
    expect(r.stdout).not.toMatch(/fail/i)
    expect(r.code, r.stdout + r.stderr).toBe(0)
    expect(sha256(exp.data)).toBe(sha256(model))
    expect(exp.flushes).toBeGreaterThan(0)
  })

  test('qemu-img convert in and out keeps every byte', async () => {
    const h = await start()
    const src = path.join(dir, 'in.img')
    const out = path.join(dir, 'out.img')
    const data = randomBytes(8 * MiB)
    data.fill(0, 2 * MiB, 3 * MiB) // a hole, so zero detection gets exercised
    await fs.writeFile(src, data)
    let r = await tool('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, h.uri('disk')])
    expect(r.code, r.stderr).toBe(0)
    expect(h.provider.get('disk').sha256()).toBe(sha256(data))
    r = await tool('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', h.uri('disk'), out])
    expect(r.code, r.stderr).toBe(0)
    expect(sha256(await fs.readFile(out))).toBe(sha256(data))
  })

  test('nbdcopy in and out over 4 connections (multi-conn)', async () => {
    const h = await start()
    const src = path.join(dir, 'in.img')
    const out = path.join(dir, 'out.img')
    const data = randomBytes(8 * MiB)
    await fs.writeFile(src, data)
    let r = await tool('nbdcopy', ['--connections=4', '--flush', src, h.uri('disk')])
    expect(r.code, r.stderr).toBe(0)
    expect(h.provider.get('disk').sha256()).toBe(sha256(data))
    await fs.writeFile(out, Buffer.alloc(0))
    r = await tool('nbdcopy', ['--connections=4', h.uri('disk'), out])
    expect(r.code, r.stderr).toBe(0)
    expect(sha256(await fs.readFile(out))).toBe(sha256(data))
  })

  test('fio --ioengine=nbd: random and sequential writes verified with crc32c', async () => {
    const h = await start()
    const common = ['--ioengine=nbd', `--uri=${h.uri('disk')}`, '--size=8m', '--verify=crc32c', '--verify_state_save=0', '--do_verify=1', '--output-format=json']
    for (const job of [
      ['--name=rand4k', '--rw=randwrite', '--bs=4k', '--iodepth=32'],
      ['--name=seq1m', '--rw=write', '--bs=1m', '--iodepth=8'],
      ['--name=mixed', '--rw=randwrite', '--bsrange=512-64k', '--iodepth=16', '--verify_backlog=64'],
    ]) {
      const r = await tool('fio', [...job, ...common])
      expect(r.code, r.stdout + r.stderr).toBe(0)
      // fio prints one line (the nbd engine's notice) before its JSON
      const json = JSON.parse(r.stdout.slice(r.stdout.indexOf('{')))
      const j = json.jobs[0]
      expect(j.error).toBe(0)
      expect(j.write.io_bytes).toBeGreaterThan(0)
      expect(j.read.io_bytes).toBeGreaterThan(0) // the verify pass
    }
  })

  test('libnbd (nbdsh): simple replies, structured replies with DF, option mode, non-fixed newstyle, errno', async () => {
    const h = await start()
    const script = `
import json, sys, nbd
uri, base = sys.argv[1], sys.argv[2]
out = {}
def err(f):
    try:
        f()
        return 0
    except nbd.Error as e:
        return e.errno
h = nbd.NBD(); h.set_request_structured_replies(False); h.connect_uri(uri)
size = h.get_size()
out['simple'] = [h.get_structured_replies_negotiated(), h.can_df()]
h.pwrite(b'\\x5a' * 10000, 12345)
out['simple_read'] = h.pread(10000, 12345) == b'\\x5a' * 10000
h.set_strict_mode(0)
out['simple_errnos'] = [err(lambda: h.pread(10, size - 5)), err(lambda: h.pwrite(b'x' * 10, size - 5)), err(lambda: h.trim(10, size - 5))]
h.shutdown()
h = nbd.NBD(); h.connect_uri(uri)
out['structured'] = [h.get_structured_replies_negotiated(), h.can_df()]
chunks = []
buf = h.pread_structured(65536, 12345 - 1000, lambda sub, off, status, error: chunks.append([len(sub), off, status]), nbd.CMD_FLAG_DF)
out['df_read'] = [buf[1000:11000] == b'\\x5a' * 10000, chunks]
h.zero(5000, 12345 + 100, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
out['zeroed'] = h.pread(5000, 12345 + 100) == bytes(5000)
h.set_strict_mode(0)
out['structured_errnos'] = [err(lambda: h.pread(10, size - 5)), err(lambda: h.pwrite(b'x' * 10, size - 5)), err(lambda: h.zero(10, size - 5)), err(lambda: h.pread(0, 0))]
h.shutdown()
h = nbd.NBD(); h.set_opt_mode(True); h.set_full_info(True); h.connect_uri(uri)
names = []
h.opt_list(lambda name, desc: names.append([name, desc]))
out['list'] = names
h.set_export_name('nope')
out['info_unknown'] = err(lambda: h.opt_info()) != 0
h.set_export_name('other')
h.opt_info()
out['info'] = [h.get_size(), h.get_canonical_export_name(), h.get_export_description(), h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_PREFERRED), h.get_block_size(nbd.SIZE_MAXIMUM)]
h.opt_abort()
h = nbd.NBD(); h.set_handshake_flags(0); h.connect_uri(uri)
out['oldstyle'] = [h.get_protocol(), h.get_size(), h.pread(100, 12345) == b'\\x5a' * 100]
h.shutdown()
print(json.dumps(out))
`
    const r = await tool('/usr/bin/python3', ['-c', script, h.uri('disk'), `nbd://127.0.0.1:${h.port}`])
    expect(r.code, r.stderr).toBe(0)
    const out = JSON.parse(r.stdout)
    expect(out.simple).toEqual([false, false])
    expect(out.simple_read).toBe(true)
    // python-libnbd names the errno the server sent
    expect(out.simple_errnos).toEqual(['EINVAL', 'ENOSPC', 'EINVAL'])
    expect(out.structured).toEqual([true, true])
    // one data chunk for the whole read, as DF asks
    expect(out.df_read).toEqual([true, [[65536, 12345 - 1000, 1]]])
    expect(out.zeroed).toBe(true)
    expect(out.structured_errnos).toEqual(['EINVAL', 'ENOSPC', 'ENOSPC', 'EINVAL'])
    expect(out.list).toEqual([
      ['disk', 'the test disk'],
      ['other', 'an odd-sized disk'],
    ])
    expect(out.info_unknown).toBe(true)
    expect(out.info).toEqual([MiB + 7, 'other', 'an odd-sized disk', 1, 4096, nbdPayloadMaxBytes])
    expect(out.oldstyle).toEqual(['newstyle', 8 * MiB, true])
  })
})

// ---- handshake, over a raw socket ----

describe('handshake', () => {
  test('greeting: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES', async () => {
    const h = await start()
    const c = await RawClient.connect(h.port)
    const g = await c.read(18)
    expect(g.subarray(0, 16).toString('latin1')).toBe('NBDMAGICIHAVEOPT')
    expect(g.readUInt16BE(16)).toBe(3)
  })

  test('unknown client flags close the connection', async () => {
    const h = await start()
    const c = await RawClient.connect(h.port)
    await c.handshake(0x7)
    expect(await c.closedWithin(2000)).toBe(true)
  })

  test('bad option magic closes the connection', async () => {
    const h = await start()
    const c = await RawClient.connect(h.port)
    await c.handshake()
    c.write(Buffer.from('IHAVEOPX\0\0\0\x07\0\0\0\0', 'latin1'))
    expect(await c.closedWithin(2000)).toBe(true)
  })

  test('unknown and unsupported options get ERR_UNSUP and the connection goes on', async () => {
    const h = await start()
    const c = await RawClient.connect(h.port)
    await c.handshake()
    for (const code of [99, NbdOpt.STARTTLS, NbdOpt.EXTENDED_HEADERS, NbdOpt.PEEK_EXPORT, 0xffffffff]) {
      c.option(code, Buffer.from('junk'))
      const r = await c.optionReply()
      expect(r.option).toBe(code)
      expect(r.type).toBe(NbdRep.ERR_UNSUP)
    }
    expect((await c.go('disk')).size).toBe(8 * MiB)
  })

  test('GO or INFO on an unknown export: ERR_UNKNOWN, then a good GO works', async () => {
    const h = await start()
    const c = await RawClient.connect(h.port)
    await c.handshake()
    for (const code of [NbdOpt.INFO, NbdOpt.GO]) {
      const { infos, final } = await c.info(code, 'nope')
      expect(infos.size).toBe(0)
      expect(final.type).toBe(NbdRep.ERR_UNKNOWN)
      expect(final.data.toString()).toMatch(/nope/)
    }
    await c.go('disk')
    expect(h.server.connectionsFor('disk')).toBe(1)
  })

  test('an export that fails to open: ERR_UNKNOWN with its message, ESHUTDOWN → ERR_SHUTDOWN', async () => {
    const h = await start()
    const c = await RawClient.connect(h.port)
    await c.handshake()
    h.provider.openFault = new Error('vDisk "disk" is being deleted')
    let r = await c.info(NbdOpt.GO, 'disk')
    expect(r.final.type).toBe(NbdRep.ERR_UNKNOWN)
    expect(r.final.data.toString()).toBe('vDisk "disk" is being deleted')
    h.provider.openFault = new DeviceError(nbdErrno.ESHUTDOWN, 'CVM is stopping')
    r = await c.info(NbdOpt.GO, 'disk')
    expect(r.final.type).toBe(NbdRep.ERR_SHUTDOWN)
    h.provider.openFault = undefined
    await c.go('disk')
  })

  test('malformed option lengths get ERR_INVALID', async () => {
    const h = await start()
    const c = await RawClient.connect(h.port)
    await c.handshake()
    const cases: Array<[number, Buffer]> = [
      [NbdOpt.GO, Buffer.from([0, 0, 0])], // shorter than name length + info count
      [NbdOpt.GO, Buffer.concat([u32(100), Buffer.from('disk'), Buffer.from([0, 0])])], // name longer than the data
      [NbdOpt.INFO, Buffer.concat([goData('disk', [1]), Buffer.from([0])])], // trailing byte
      [NbdOpt.GO, Buffer.concat([u32(4), Buffer.from('disk'), Buffer.from([0, 5])])], // 5 info requests, none sent
      [NbdOpt.GO, goData('di\0sk')], // NUL inside the name
      [NbdOpt.GO, Buffer.concat([u32(2), Buffer.from([0xc3, 0x28]), Buffer.from([0, 0])])], // not UTF-8
      [NbdOpt.LIST, Buffer.from('x')],
      [NbdOpt.STRUCTURED_REPLY, Buffer.from('x')],
    ]
    for (const [code, data] of cases) {
      c.option(code, data)
      const r = await c.optionReply()
      expect([r.option, r.type]).toEqual([code, NbdRep.ERR_INVALID])
    }
    await c.go('disk')
  })

  test('option data above the limit: ERR_TOO_BIG after skipping it, connection continues', async () => {
    const h = await start()
    const c = await RawClient.connect(h.port)
    await c.handshake()
    c.option(NbdOpt.GO, Buffer.alloc(200 * 1024, 0x41))
    const r = await c.optionReply()
    expect([r.option, r.type]).toEqual([NbdOpt.GO, NbdRep.ERR_TOO_BIG])
    await c.go('disk')
  })

  test('EXPORT_NAME with oversized data closes the connection (it has no error reply)', async () => {
    const h = await start()
    const c = await RawClient.connect(h.port)
    await c.handshake()
    c.option(NbdOpt.EXPORT_NAME, Buffer.alloc(0), 1 << 30)
    expect(await c.closedWithin(2000)).toBe(true)
  })

  test('LIST names every export with its description', async () => {
    const h = await start()
    const c = await RawClient.connect(h.port)
    await c.handshake()
    c.option(NbdOpt.LIST)
    const seen: string[] = []
    for (;;) {
      const r = await c.optionReply()
      if (r.type === NbdRep.ACK) break
      expect(r.type).toBe(NbdRep.SERVER)
      const n = r.data.readUInt32BE(0)
      seen.push(`${r.data.subarray(4, 4 + n)}|${r.data.subarray(4 + n)}`)
    }
    expect(seen).toEqual(['disk|the test disk', 'other|an odd-sized disk'])
  })

  test('INFO: export, name, description and block sizes on request; the device is released', async () => {
    const h = await start()
    const c = await RawClient.connect(h.port)
    await c.handshake()
    let r = await c.info(NbdOpt.INFO, 'other', [NbdInfo.NAME, NbdInfo.DESCRIPTION, NbdInfo.BLOCK_SIZE, 999])
    expect(r.final.type).toBe(NbdRep.ACK)
    const e = r.infos.get(NbdInfo.EXPORT)!
    expect(Number(e.readBigUInt64BE(0))).toBe(MiB + 7)
    const flags = e.readUInt16BE(8)
    expect(flags).toBe(NbdFlag.HAS_FLAGS | NbdFlag.SEND_FLUSH | NbdFlag.SEND_FUA | NbdFlag.SEND_TRIM | NbdFlag.SEND_WRITE_ZEROES | NbdFlag.CAN_MULTI_CONN)
    expect(r.infos.get(NbdInfo.NAME)!.toString()).toBe('other')
    expect(r.infos.get(NbdInfo.DESCRIPTION)!.toString()).toBe('an odd-sized disk')
    const bs = r.infos.get(NbdInfo.BLOCK_SIZE)!
    expect([bs.readUInt32BE(0), bs.readUInt32BE(4), bs.readUInt32BE(8)]).toEqual([1, 4096, nbdPayloadMaxBytes])
    await waitFor(() => h.provider.get('other').closes === 1, 'INFO to release its device')
    // without requests: only NBD_INFO_EXPORT
    r = await c.info(NbdOpt.INFO, 'other')
    expect([...r.infos.keys()]).toEqual([NbdInfo.EXPORT])
    // structured replies add SEND_DF
    c.option(NbdOpt.STRUCTURED_REPLY)
    expect((await c.optionReply()).type).toBe(NbdRep.ACK)
    const go = await c.go('other')
    expect(go.flags).toBe(flags | NbdFlag.SEND_DF)
  })

  test('meta contexts: none offered; INVALID before structured replies or when malformed', async () => {
    const h = await start()
    const c = await RawClient.connect(h.port)
    await c.handshake()
    c.option(NbdOpt.SET_META_CONTEXT, metaData('disk', ['base:allocation']))
    expect((await c.optionReply()).type).toBe(NbdRep.ERR_INVALID)
    c.option(NbdOpt.STRUCTURED_REPLY)
    expect((await c.optionReply()).type).toBe(NbdRep.ACK)
    for (const code of [NbdOpt.LIST_META_CONTEXT, NbdOpt.SET_META_CONTEXT]) {
      c.option(code, metaData('disk', ['base:allocation', 'qemu:dirty-bitmap:x']))
      expect((await c.optionReply()).type).toBe(NbdRep.ACK)
      c.option(code, metaData('disk', []))
      expect((await c.optionReply()).type).toBe(NbdRep.ACK)
      c.option(code, Buffer.concat([metaData('disk', ['base:allocation']).subarray(0, 14), u32(1000)]))
      expect((await c.optionReply()).type).toBe(NbdRep.ERR_INVALID)
    }
    await c.go('disk')
  })

  test('EXPORT_NAME: 124 zero bytes unless NO_ZEROES, then transmission', async () => {
    const h = await start()
    for (const clientFlags of [1, 3]) {
      const c = await RawClient.connect(h.port)
      await c.handshake(clientFlags)
      c.option(NbdOpt.EXPORT_NAME, Buffer.from('other'))
      const reply = await c.read(10)
      expect(Number(reply.readBigUInt64BE(0))).toBe(MiB + 7)
      expect(reply.readUInt16BE(8) & NbdFlag.SEND_DF).toBe(0)
      if (clientFlags === 1) expect((await c.read(124)).equals(Buffer.alloc(124))).toBe(true)
      c.request(NbdCmd.WRITE, { offset: 5, payload: Buffer.from('hello') })
      expect((await c.simpleReply()).error).toBe(0)
      expect((await c.readData(5, 5)).toString()).toBe('hello')
    }
  })

  test('EXPORT_NAME of an unknown export closes the connection', async () => {
    const h = await start()
    const c = await RawClient.connect(h.port)
    await c.handshake()
    c.option(NbdOpt.EXPORT_NAME, Buffer.from('nope'))
    expect(await c.closedWithin(2000)).toBe(true)
  })

  test('a client without fixed newstyle may only send EXPORT_NAME', async () => {
    const h = await start()
    const c = await RawClient.connect(h.port)
    await c.handshake(0)
    c.option(NbdOpt.GO, goData('disk'))
    expect(await c.closedWithin(2000)).toBe(true)
    expect(h.provider.get('disk').opens).toBe(0)
  })

  test('ABORT is acknowledged and the server closes', async () => {
    const h = await start()
    const c = await RawClient.connect(h.port)
    await c.handshake()
    c.option(NbdOpt.ABORT)
    expect((await c.optionReply()).type).toBe(NbdRep.ACK)
    expect(await c.closedWithin(2000)).toBe(true)
  })

  test('handshake timeout closes a silent client', async () => {
    const h = await start({ handshakeTimeoutMs: 200 })
    const c = await RawClient.connect(h.port)
    await c.handshake()
    expect(await c.closedWithin(2000)).toBe(true)
    expect(h.logs.join('\n')).toMatch(/no export chosen within 200 ms/)
    // a client that chose its export in time is not cut
    const d = await RawClient.open(h.port, 'disk')
    expect(await d.closedWithin(400)).toBe(false)
    expect((await d.readData(0, 4)).length).toBe(4)
  })

  test('the handshake timeout does not run while the server itself is opening the export', async () => {
    const h = await start({ handshakeTimeoutMs: 200 })
    h.provider.openDelayMs = 600
    const c = await RawClient.open(h.port, 'disk')
    expect((await c.readData(0, 4)).length).toBe(4)
    // a slow open that fails gives the client its time again, then the timeout cuts it when idle
    h.provider.openFault = new Error('etcd: no leader')
    const d = await RawClient.connect(h.port)
    await d.handshake()
    d.option(NbdOpt.GO, goData('disk'))
    expect((await d.optionReply()).type).toBe(NbdRep.ERR_UNKNOWN)
    expect(await d.closedWithin(2000)).toBe(true)
    expect(h.logs.join('\n')).toMatch(/no export chosen within 200 ms/)
  })

  test('connection cap: extra connections are closed, freed slots are reused', async () => {
    const h = await start({ connectionsMax: 2 })
    const a = await RawClient.open(h.port, 'disk')
    const b = await RawClient.open(h.port, 'other')
    const extra = await RawClient.connect(h.port)
    expect(await extra.closedWithin(2000)).toBe(true)
    expect(h.logs.join('\n')).toMatch(/refused: 2 connections open/)
    b.socket.destroy()
    await waitFor(() => h.logs.some((l) => l.includes('on export "other" closed')), 'b to be closed')
    await new Promise((r) => setTimeout(r, 20))
    const c = await RawClient.open(h.port, 'other')
    expect((await c.readData(0, 3)).length).toBe(3)
    expect((await a.readData(0, 3)).length).toBe(3)
  })
})

// ---- transmission phase, over a raw socket ----

describe('transmission', () => {
  test('write then read, handles echoed; simple replies', async () => {
    const h = await start()
    const c = await RawClient.open(h.port, 'disk')
    const data = randomBytes(100_000)
    c.request(NbdCmd.WRITE, { offset: 4097, payload: data, handle: 0xdeadbeefcafebaben })
    const w = await c.simpleReply()
    expect([w.error, w.handle]).toEqual([0, 0xdeadbeefcafebaben])
    c.request(NbdCmd.READ, { offset: 4097, length: data.length, handle: 42n })
    const r = await c.simpleReply(data.length)
    expect([r.error, r.handle]).toEqual([0, 42n])
    expect(r.data.equals(data)).toBe(true)
    expect(h.provider.get('disk').data.subarray(4097, 4097 + data.length).equals(data)).toBe(true)
  })

  test('large WRITE payloads sent in pieces, each ending mid-payload or with the next request, read back as written', async () => {
    // the rest of a large payload is read from the socket straight into its block: those reads
    // must stop where the payload ends, whatever the client sends after it in the same write
    const h = await start()
    const c = await RawClient.open(h.port, 'disk')
    const a = randomBytes(MiB)
    const b = randomBytes(3 * MiB + 4096)
    const first = requestFrame(NbdCmd.WRITE, { offset: 0, payload: a, handle: 1n })
    const second = requestFrame(NbdCmd.WRITE, { offset: 2 * MiB, payload: b, handle: 2n })
    const read = requestFrame(NbdCmd.READ, { offset: 0, length: 2 * MiB + b.length, handle: 3n })
    const tick = () => new Promise((resolve) => setTimeout(resolve, 20))
    c.write(first.subarray(0, 28 + 1000)) // a header and a little of its payload
    await tick()
    c.write(first.subarray(28 + 1000, 28 + 300_000))
    await tick()
    // the end of the first payload, the second request and a part of its payload, at once
    c.write(Buffer.concat([first.subarray(28 + 300_000), second.subarray(0, 28 + 70_000)]))
    await tick()
    // the rest of the second payload and the READ in one write
    c.write(Buffer.concat([second.subarray(28 + 70_000), read]))
    const r1 = await c.simpleReply()
    const r2 = await c.simpleReply()
    expect([r1.error, r1.handle, r2.error, r2.handle]).toEqual([0, 1n, 0, 2n])
    const r3 = await c.simpleReply(2 * MiB + b.length)
    expect([r3.error, r3.handle]).toEqual([0, 3n])
    const want = Buffer.concat([a, Buffer.alloc(MiB), b])
    expect(r3.data.equals(want)).toBe(true)
    expect(h.provider.get('disk').data.subarray(0, want.length).equals(want)).toBe(true)
  })

  test('structured replies: OFFSET_DATA with DONE, NONE for the rest, ERROR chunks with a message', async () => {
    const h = await start()
    const c = await RawClient.open(h.port, 'disk', { structured: true })
    const data = randomBytes(5000)
    c.request(NbdCmd.WRITE, { offset: 123, payload: data, handle: 1n, flags: NbdCmdFlag.FUA })
    let k = await c.chunk()
    expect([k.type, k.flags, k.handle, k.payload.length]).toEqual([NbdReplyType.NONE, NbdReplyFlag.DONE, 1n, 0])
    c.request(NbdCmd.READ, { offset: 123, length: 5000, handle: 2n, flags: NbdCmdFlag.DF })
    k = await c.chunk()
    expect([k.type, k.flags, k.handle]).toEqual([NbdReplyType.OFFSET_DATA, NbdReplyFlag.DONE, 2n])
    expect(Number(k.payload.readBigUInt64BE(0))).toBe(123)
    expect(k.payload.subarray(8).equals(data)).toBe(true)
    c.request(NbdCmd.READ, { offset: 8 * MiB - 1, length: 2, handle: 3n })
    k = await c.chunk()
    expect(k.handle).toBe(3n)
    expect(errnoOfChunk(k)).toBe(nbdErrno.EINVAL)
    const msgLength = k.payload.readUInt16BE(4)
    expect(k.payload.subarray(6, 6 + msgLength).toString()).toMatch(/past the end/)
    for (const type of [NbdCmd.FLUSH, NbdCmd.TRIM, NbdCmd.WRITE_ZEROES]) {
      c.request(type, type === NbdCmd.FLUSH ? { handle: 4n } : { offset: 0, length: 100, handle: 4n })
      k = await c.chunk()
      expect([k.type, k.flags]).toEqual([NbdReplyType.NONE, NbdReplyFlag.DONE])
    }
  })

  test('bad request magic closes only that connection', async () => {
    const h = await start()
    const bad = await RawClient.open(h.port, 'disk')
    const good = await RawClient.open(h.port, 'disk')
    bad.write(Buffer.alloc(28, 0x55))
    expect(await bad.closedWithin(2000)).toBe(true)
    expect((await good.readData(0, 10)).length).toBe(10)
    expect(h.logs.join('\n')).toMatch(/bad request magic/)
  })

  test('every rejected request gets its errno, changes nothing, and the connection goes on', async () => {
    const h = await start()
    const exp = h.provider.get('disk')
    const before = exp.sha256()
    const size = 8 * MiB
    const junk = Buffer.alloc(4096, 0xee)
    const cases: Array<[string, number, RequestFields, number]> = [
      ['unknown command', 99, { offset: 0, length: 10 }, nbdErrno.EINVAL],
      ['CACHE is not advertised', NbdCmd.CACHE, { offset: 0, length: 10 }, nbdErrno.EINVAL],
      ['BLOCK_STATUS without contexts', NbdCmd.BLOCK_STATUS, { offset: 0, length: 10 }, nbdErrno.EINVAL],
      ['read past the end', NbdCmd.READ, { offset: size - 10, length: 11 }, nbdErrno.EINVAL],
      ['read at a huge offset', NbdCmd.READ, { offset: 2n ** 63n, length: 1 }, nbdErrno.EINVAL],
      ['read of 0 bytes', NbdCmd.READ, { offset: 0, length: 0 }, nbdErrno.EINVAL],
      ['read above the maximum', NbdCmd.READ, { offset: 0, length: nbdPayloadMaxBytes + 1 }, nbdErrno.EINVAL],
      ['read with DF before structured replies', NbdCmd.READ, { offset: 0, length: 1, flags: NbdCmdFlag.DF }, nbdErrno.EINVAL],
      ['read with an unknown flag', NbdCmd.READ, { offset: 0, length: 1, flags: 0x100 }, nbdErrno.EINVAL],
      ['write past the end', NbdCmd.WRITE, { offset: size - 100, payload: junk }, nbdErrno.ENOSPC],
      ['write at a huge offset', NbdCmd.WRITE, { offset: 2n ** 64n - 1n, payload: junk }, nbdErrno.ENOSPC],
      ['write of 0 bytes', NbdCmd.WRITE, { offset: 0, payload: Buffer.alloc(0) }, nbdErrno.EINVAL],
      ['write with NO_HOLE', NbdCmd.WRITE, { offset: 0, payload: junk, flags: NbdCmdFlag.NO_HOLE }, nbdErrno.EINVAL],
      ['write with FAST_ZERO', NbdCmd.WRITE, { offset: 0, payload: junk, flags: NbdCmdFlag.FAST_ZERO }, nbdErrno.EINVAL],
      ['zeroes past the end', NbdCmd.WRITE_ZEROES, { offset: size - 1, length: 2 }, nbdErrno.ENOSPC],
      ['zeroes of 0 bytes', NbdCmd.WRITE_ZEROES, { offset: 0, length: 0 }, nbdErrno.EINVAL],
      ['zeroes above the maximum', NbdCmd.WRITE_ZEROES, { offset: 0, length: nbdPayloadMaxBytes + 1 }, nbdErrno.EINVAL],
      ['zeroes with FAST_ZERO (not advertised)', NbdCmd.WRITE_ZEROES, { offset: 0, length: 10, flags: NbdCmdFlag.FAST_ZERO }, nbdErrno.EINVAL],
      ['trim past the end', NbdCmd.TRIM, { offset: size, length: 1 }, nbdErrno.EINVAL],
      ['trim of 0 bytes', NbdCmd.TRIM, { offset: 0, length: 0 }, nbdErrno.EINVAL],
      ['trim with NO_HOLE', NbdCmd.TRIM, { offset: 0, length: 10, flags: NbdCmdFlag.NO_HOLE }, nbdErrno.EINVAL],
      ['flush with an offset', NbdCmd.FLUSH, { offset: 1, length: 0 }, nbdErrno.EINVAL],
      ['flush with a length', NbdCmd.FLUSH, { offset: 0, length: 1 }, nbdErrno.EINVAL],
    ]
    for (const structured of [false, true]) {
      const c = await RawClient.open(h.port, 'disk', { structured })
      let handle = 1000n
      for (const [what, type, req, errno] of cases) {
        if (structured && req.flags === NbdCmdFlag.DF) continue // DF is valid with structured replies
        c.request(type, { ...req, handle: ++handle })
        if (structured) {
          const k = await c.chunk()
          expect([what, k.handle, errnoOfChunk(k)]).toEqual([what, handle, errno])
        } else {
          const r = await c.simpleReply()
          expect([what, r.handle, r.error]).toEqual([what, handle, errno])
        }
      }
      // the rejected payloads were skipped: the stream is still in sync
      expect((await (structured ? readStructured(c, 0, 16) : c.readData(0, 16))).length).toBe(16)
    }
    expect(exp.sha256()).toBe(before)
    expect(exp.mutations).toBe(0)
  })

  test('trim is not bound by the maximum block size', async () => {
    const h = await start({}, (p) => p.add('big', 64 * MiB).data.fill(0x77))
    const c = await RawClient.open(h.port, 'big')
    c.request(NbdCmd.TRIM, { offset: 0, length: 48 * MiB, flags: NbdCmdFlag.FUA })
    expect((await c.simpleReply()).error).toBe(0)
    const exp = h.provider.get('big')
    expect(exp.data.subarray(0, 48 * MiB).equals(Buffer.alloc(48 * MiB))).toBe(true)
    expect(exp.flushes).toBe(1) // FUA on TRIM becomes a flush
  })

  test('a WRITE above the maximum closes the connection without touching data', async () => {
    const h = await start()
    const c = await RawClient.open(h.port, 'disk')
    c.request(NbdCmd.WRITE, { offset: 0, length: nbdPayloadMaxBytes + 1 })
    c.write(Buffer.alloc(64 * 1024, 1))
    expect(await c.closedWithin(2000)).toBe(true)
    expect(h.provider.get('disk').mutations).toBe(0)
  })

  test('truncated frames and clients vanishing mid-request change nothing and release the device', async () => {
    const h = await start()
    const exp = h.provider.get('disk')
    const before = exp.sha256()
    const write = requestFrame(NbdCmd.WRITE, { offset: 0, payload: Buffer.alloc(100_000, 9) })
    for (const cut of [1, 27, 28, 29, 50_000, write.length - 1]) {
      for (const how of ['end', 'destroy'] as const) {
        const c = await RawClient.open(h.port, 'disk')
        c.write(write.subarray(0, cut))
        await new Promise((r) => setTimeout(r, 20))
        if (how === 'end') c.socket.end()
        else c.socket.destroy()
        await c.closed
      }
    }
    await waitFor(() => exp.closes === exp.opens, 'every device to be closed')
    expect(exp.sha256()).toBe(before)
    expect(exp.mutations).toBe(0)
    expect(h.server.connectionsFor('disk')).toBe(0)
  })

  test('complete requests sent before the client half-closes are still answered', async () => {
    const h = await start()
    const c = await RawClient.open(h.port, 'disk')
    c.request(NbdCmd.WRITE, { offset: 10, payload: Buffer.from('kept'), handle: 1n })
    c.request(NbdCmd.READ, { offset: 10, length: 4, handle: 2n })
    c.socket.end()
    expect((await c.simpleReply()).handle).toBe(1n)
    expect((await c.simpleReply(4)).data.toString()).toBe('kept')
    expect(await c.closedWithin(2000)).toBe(true)
  })

  test('device errors: DeviceError keeps its errno; any other error is EIO and logged with export, offset, length', async () => {
    const h = await start()
    const exp = h.provider.get('disk')
    exp.fault = (op, offset) => {
      if (offset === 4096) return new DeviceError(nbdErrno.ENOSPC, 'pool is full')
      if (offset === 8192) return new Error('extent group eg-7 checksum mismatch')
      if (offset === 12288) return new DeviceError(0, 'a device bug: errno 0 would mean success')
      return undefined
    }
    for (const structured of [false, true]) {
      const c = await RawClient.open(h.port, 'disk', { structured })
      const expectErr = async (errno: number) => {
        if (structured) expect(errnoOfChunk(await c.chunk())).toBe(errno)
        else expect((await c.simpleReply()).error).toBe(errno)
      }
      c.request(NbdCmd.WRITE, { offset: 4096, payload: Buffer.alloc(10) })
      await expectErr(nbdErrno.ENOSPC)
      c.request(NbdCmd.READ, { offset: 8192, length: 512 })
      await expectErr(nbdErrno.EIO)
      c.request(NbdCmd.WRITE_ZEROES, { offset: 12288, length: 10 })
      await expectErr(nbdErrno.EIO)
    }
    const logs = h.logs.join('\n')
    expect(logs).toMatch(/export "disk": read at offset 8192 length 512 failed: extent group eg-7 checksum mismatch/)
    expect(logs).toMatch(/export "disk": write-zeroes at offset 12288 length 10 failed/)
  })

  test('replies complete out of order', async () => {
    const h = await start()
    h.provider.get('disk').delayMs = (op, offset) => (offset === 8192 ? 200 : 0)
    const c = await RawClient.open(h.port, 'disk')
    c.request(NbdCmd.READ, { offset: 8192, length: 10, handle: 1n })
    c.request(NbdCmd.READ, { offset: 4096, length: 10, handle: 2n })
    c.request(NbdCmd.FLUSH, { handle: 3n })
    const order = [(await c.simpleReply(10)).handle, (await c.simpleReply(0)).handle]
    expect(order).toEqual([2n, 3n])
    expect((await c.simpleReply(10)).handle).toBe(1n)
  })

  test(`at most ${nbdInFlightPerConnMax} requests in flight per connection; the rest wait in the socket`, async () => {
    const h = await start()
    const exp = h.provider.get('disk')
    const release = exp.hold()
    const c = await RawClient.open(h.port, 'disk')
    const n = 500
    for (let i = 0; i < n; i++) c.request(NbdCmd.READ, { offset: i * 4096, length: 4096, handle: BigInt(i) })
    await waitFor(() => exp.inFlight === nbdInFlightPerConnMax, 'the bound to fill')
    await new Promise((r) => setTimeout(r, 100))
    expect(exp.inFlight).toBe(nbdInFlightPerConnMax)
    release()
    const seen = new Set<bigint>()
    for (let i = 0; i < n; i++) seen.add((await c.simpleReply(4096)).handle)
    expect(seen.size).toBe(n)
    expect(exp.inFlightMax).toBe(nbdInFlightPerConnMax)
  })

  test('in-flight payload bytes are bounded too', async () => {
    const h = await start({ inFlightBytesPerConnMax: 1 * MiB })
    const exp = h.provider.get('disk')
    const release = exp.hold()
    const c = await RawClient.open(h.port, 'disk')
    const size = 256 * 1024
    const payloads = Array.from({ length: 20 }, () => randomBytes(size))
    payloads.forEach((payload, i) => c.request(NbdCmd.WRITE, { offset: i * size, payload, handle: BigInt(i) }))
    await waitFor(() => exp.inFlight === 4, 'four writes to be in flight')
    await new Promise((r) => setTimeout(r, 100))
    expect(exp.inFlight).toBe(4)
    release()
    for (let i = 0; i < 20; i++) expect((await c.simpleReply()).error).toBe(0)
    // payloads assembled in reused pool blocks each landed intact
    payloads.forEach((payload, i) => expect(exp.data.subarray(i * size, (i + 1) * size).equals(payload)).toBe(true))
  })

  test('a client that does not read its replies is paused, not buffered without bound', async () => {
    const h = await start()
    const exp = h.provider.get('disk')
    const c = await RawClient.open(h.port, 'disk')
    c.socket.pause()
    const n = 400
    let reads = 0
    exp.fault = () => {
      reads++
      return undefined
    }
    for (let i = 0; i < n; i++) c.request(NbdCmd.READ, { offset: (i % 8) * MiB, length: MiB, handle: BigInt(i) })
    await new Promise((r) => setTimeout(r, 500))
    // far fewer than 400 MiB of replies were produced while nobody read them
    expect(reads).toBeLessThan(150)
    c.socket.resume()
    for (let i = 0; i < n; i++) expect((await c.simpleReply(MiB)).error).toBe(0)
    expect(reads).toBe(n)
  }, 30_000)

  test('DISC: in-flight requests are answered, written data flushed, the device closed once', async () => {
    const h = await start()
    const exp = h.provider.get('disk')
    const release = exp.hold()
    const c = await RawClient.open(h.port, 'disk')
    expect(h.server.connectionsFor('disk')).toBe(1)
    for (let i = 0; i < 10; i++) c.request(NbdCmd.WRITE, { offset: i * 100, payload: Buffer.alloc(100, i + 1), handle: BigInt(i) })
    await waitFor(() => exp.inFlight === 10, 'writes in flight')
    c.request(NbdCmd.DISC)
    await new Promise((r) => setTimeout(r, 50))
    expect(exp.closes).toBe(0)
    release()
    for (let i = 0; i < 10; i++) expect((await c.simpleReply()).error).toBe(0)
    expect(await c.closedWithin(2000)).toBe(true)
    await waitFor(() => exp.closes === 1, 'device close')
    expect(exp.flushes).toBe(1)
    expect(h.server.connectionsFor('disk')).toBe(0)
    // a reader that disconnects costs no flush
    const r = await RawClient.open(h.port, 'disk')
    expect((await r.readData(0, 100)).every((b) => b === 1)).toBe(true)
    r.request(NbdCmd.DISC)
    expect(await r.closedWithin(2000)).toBe(true)
    await waitFor(() => exp.closes === 2, 'device close')
    expect(exp.flushes).toBe(1)
  })

  test('a second connection keeps working while the first misbehaves', async () => {
    const h = await start()
    const exp = h.provider.get('disk')
    exp.delayMs = (op, offset) => (offset >= 7 * MiB ? 300 : 0)
    const bad = await RawClient.open(h.port, 'disk')
    // a slow request, then half a write whose payload never comes
    bad.request(NbdCmd.READ, { offset: 7 * MiB, length: 4096 })
    bad.request(NbdCmd.WRITE, { offset: 0, length: 65536 })
    bad.write(Buffer.alloc(1000, 0xbb))
    const good = await RawClient.open(h.port, 'disk', { structured: true })
    for (let i = 0; i < 20; i++) {
      const data = randomBytes(4096 + i)
      good.request(NbdCmd.WRITE, { offset: MiB + i * 8192, payload: data })
      expect((await good.chunk()).type).toBe(NbdReplyType.NONE)
      expect((await readStructured(good, MiB + i * 8192, data.length)).equals(data)).toBe(true)
    }
    bad.write(Buffer.alloc(28, 0xff)) // now garbage: part of the payload, then nothing
    bad.socket.destroy()
    expect((await readStructured(good, 0, 1000)).every((b) => b === 0)).toBe(true)
  })

  test('close() ends every connection and releases every device', async () => {
    const h = await start()
    const a = await RawClient.open(h.port, 'disk')
    const b = await RawClient.open(h.port, 'other', { structured: true })
    const hs = await RawClient.connect(h.port)
    await hs.read(18)
    a.request(NbdCmd.WRITE, { offset: 0, payload: Buffer.from('x') })
    expect((await a.simpleReply()).error).toBe(0)
    expect(h.server.connectionsFor('disk')).toBe(1)
    expect(h.server.connectionsFor('other')).toBe(1)
    harness = undefined
    await h.server.close()
    expect(await a.closedWithin(1000)).toBe(true)
    expect(await b.closedWithin(1000)).toBe(true)
    expect(await hs.closedWithin(1000)).toBe(true)
    expect(h.provider.problems()).toEqual([])
    expect(h.provider.get('disk').flushes).toBe(1)
    expect(h.server.connectionsFor('disk')).toBe(0)
  })
})

describe('server close', () => {
  test('in-flight requests are answered before the connection closes', async () => {
    const h = await start()
    harness = undefined
    const exp = h.provider.get('disk')
    const release = exp.hold()
    const c = await RawClient.open(h.port, 'disk')
    c.request(NbdCmd.READ, { offset: 0, length: 10, handle: 1n })
    await waitFor(() => exp.inFlight === 1, 'the read to be in flight')
    const closing = h.server.close()
    setTimeout(release, 100)
    expect((await c.simpleReply(10)).handle).toBe(1n)
    expect(await c.closedWithin(1000)).toBe(true)
    await closing
    expect(h.provider.problems()).toEqual([])
  })

  test('a connection whose requests take longer than closeDrainTimeoutMs is cut; its device is closed after them', async () => {
    const h = await start({ closeDrainTimeoutMs: 100 })
    harness = undefined
    const exp = h.provider.get('disk')
    const release = exp.hold()
    const c = await RawClient.open(h.port, 'disk')
    c.request(NbdCmd.READ, { offset: 0, length: 10, handle: 1n })
    await waitFor(() => exp.inFlight === 1, 'the read to be in flight')
    const closing = h.server.close()
    expect(await c.closedWithin(1000)).toBe(true)
    expect(exp.closes).toBe(0) // never while a request still runs on it
    release()
    await closing
    expect(h.provider.problems()).toEqual([])
  })
})

async function readStructured(c: RawClient, offset: number, length: number): Promise<Buffer> {
  c.request(NbdCmd.READ, { offset, length, handle: 99n })
  const k = await c.chunk()
  expect([k.type, k.flags, k.handle]).toEqual([NbdReplyType.OFFSET_DATA, NbdReplyFlag.DONE, 99n])
  expect(Number(k.payload.readBigUInt64BE(0))).toBe(offset)
  return k.payload.subarray(8)
}
