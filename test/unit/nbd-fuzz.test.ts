/**
 * Fuzz the NBD server with random and mutated frames over many connections, in both protocol
 * phases. The fuzzer only ever names the export "fuzz" (or unknown ones); the export "protected"
 * is written through a clean connection before and must come out of the fuzzing untouched (never
 * even opened) and still be served correctly through a clean connection afterwards.
 *
 * Seeded: the seed is printed; NBD_FUZZ_SEED=<seed> replays the same frames.
 */
import { execFile } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { expect, test } from 'vitest'
import { nbdPayloadMaxBytes } from '../../src/lib/limits.js'
import { NbdCmd, NbdCmdFlag, NbdInfo, NbdOpt } from '../../src/cvm/nbd/protocol.js'
import { NbdServer } from '../../src/cvm/nbd/server.js'
import { MemoryExportProvider } from '../helpers/memdevice.js'

const MiB = 1024 * 1024
const fuzzConnections = Number(process.env.NBD_FUZZ_CONNECTIONS ?? 1000)
const fuzzConcurrency = 32
/** a fuzz connection the server has not closed by then is cut by the fuzzer */
const connectionLifetimeMaxMs = 1500
const toolEnv = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` }

/** mulberry32: small, fast, good enough to drive a fuzzer, and replayable from one integer */
class Rng {
  constructor(private state: number) {}

  next(): number {
    this.state = (this.state + 0x6d2b79f5) | 0
    let t = this.state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }

  int(n: number): number {
    return Math.floor(this.next() * n)
  }

  chance(p: number): boolean {
    return this.next() < p
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!
  }

  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n)
    for (let i = 0; i < n; i++) b[i] = this.int(256)
    return b
  }

  u64(): bigint {
    return (BigInt(this.int(2 ** 32)) << 32n) | BigInt(this.int(2 ** 32))
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(n >>> 0)
  return b
}

function optionFrame(code: number, data: Buffer): Buffer {
  const h = Buffer.alloc(16)
  h.write('IHAVEOPT', 0, 'latin1')
  h.writeUInt32BE(code >>> 0, 8)
  h.writeUInt32BE(data.length, 12)
  return Buffer.concat([h, data])
}

function requestFrame(type: number, flags: number, offset: bigint, length: number, payload?: Buffer): Buffer {
  const h = Buffer.alloc(28)
  h.writeUInt32BE(0x25609513, 0)
  h.writeUInt16BE(flags, 4)
  h.writeUInt16BE(type, 6)
  h.writeBigUInt64BE(BigInt(Date.now()), 8)
  h.writeBigUInt64BE(BigInt.asUintN(64, offset), 16)
  h.writeUInt32BE(length >>> 0, 24)
  return payload ? Buffer.concat([h, payload]) : h
}

function goData(name: Buffer, infos: number[]): Buffer {
  const b = Buffer.alloc(4 + name.length + 2 + 2 * infos.length)
  b.writeUInt32BE(name.length, 0)
  name.copy(b, 4)
  b.writeUInt16BE(infos.length, 4 + name.length)
  infos.forEach((t, i) => b.writeUInt16BE(t, 4 + name.length + 2 + 2 * i))
  return b
}

/** names the fuzzer may use: never "protected" (random names are shorter than it) */
function fuzzName(r: Rng): Buffer {
  return r.pick([() => Buffer.from('fuzz'), () => Buffer.from('nope'), () => Buffer.alloc(0), () => r.bytes(r.int(8))])()
}

function validOption(r: Rng): Buffer {
  switch (r.int(9)) {
    case 0:
    case 1:
      return optionFrame(r.pick([NbdOpt.GO, NbdOpt.INFO]), goData(fuzzName(r), Array.from({ length: r.int(5) }, () => r.pick([NbdInfo.EXPORT, NbdInfo.NAME, NbdInfo.DESCRIPTION, NbdInfo.BLOCK_SIZE, r.int(65536)]))))
    case 2:
      return optionFrame(NbdOpt.LIST, Buffer.alloc(0))
    case 3:
      return optionFrame(NbdOpt.STRUCTURED_REPLY, Buffer.alloc(0))
    case 4: {
      const queries = Array.from({ length: r.int(4) }, () => r.pick([Buffer.from('base:allocation'), Buffer.from('base:'), r.bytes(r.int(20))]))
      const name = fuzzName(r)
      return optionFrame(r.pick([NbdOpt.SET_META_CONTEXT, NbdOpt.LIST_META_CONTEXT]), Buffer.concat([u32(name.length), name, u32(queries.length), ...queries.flatMap((q) => [u32(q.length), q])]))
    }
    case 5:
      return optionFrame(r.int(2 ** 32), r.bytes(r.int(64)))
    case 6:
      return optionFrame(NbdOpt.EXPORT_NAME, fuzzName(r))
    case 7:
      return optionFrame(NbdOpt.ABORT, Buffer.alloc(0))
    default:
      return optionFrame(NbdOpt.STARTTLS, Buffer.alloc(0))
  }
}

const commands = [NbdCmd.READ, NbdCmd.WRITE, NbdCmd.WRITE, NbdCmd.FLUSH, NbdCmd.TRIM, NbdCmd.WRITE_ZEROES, NbdCmd.CACHE, NbdCmd.BLOCK_STATUS, 8, 0xffff]
const commandFlags = [NbdCmdFlag.FUA, NbdCmdFlag.NO_HOLE, NbdCmdFlag.DF, NbdCmdFlag.REQ_ONE, NbdCmdFlag.FAST_ZERO, 0x8000]
/** WRITE payloads the fuzzer actually sends stay small; larger claimed lengths come without them */
const fuzzPayloadMaxBytes = 128 * 1024

function validRequest(r: Rng, size: number): Buffer {
  const type = r.chance(0.02) ? NbdCmd.DISC : r.pick(commands)
  const flags = r.chance(0.7) ? 0 : r.chance(0.8) ? r.pick(commandFlags) : r.int(65536)
  const offset = r.chance(0.8) ? BigInt(r.int(size)) : r.pick([BigInt(size), BigInt(size - 1), 2n ** 63n, 2n ** 64n - 1n, r.u64()])
  const length = r.chance(0.8) ? 1 + r.int(64 * 1024) : r.pick([0, nbdPayloadMaxBytes, nbdPayloadMaxBytes + 1, 2 ** 32 - 1, r.int(2 ** 32)])
  if (type !== NbdCmd.WRITE) return requestFrame(type, flags, offset, length)
  const payload = length <= fuzzPayloadMaxBytes ? r.bytes(length) : r.bytes(r.int(1024))
  return requestFrame(type, flags, offset, length, payload)
}

/** a mutation of a frame; lengthAt is where its length field sits */
function mutate(r: Rng, frame: Buffer, lengthAt: number): Buffer {
  const f = Buffer.from(frame)
  switch (r.int(6)) {
    case 0:
      for (let i = 1 + r.int(4); i > 0; i--) f[r.int(f.length)] = r.int(256)
      return f
    case 1:
      return f.subarray(0, r.int(f.length))
    case 2:
      if (f.length >= lengthAt + 4) f.writeUInt32BE(r.pick([nbdPayloadMaxBytes + 1, 2 ** 32 - 1, r.int(2 ** 32), 0]), lengthAt)
      return f
    case 3: {
      // break the magic
      const at = r.int(Math.min(4, f.length))
      f[at] = (f[at] ?? 0) ^ (1 + r.int(255))
      return f
    }
    case 4: {
      const at = r.int(f.length + 1)
      return Buffer.concat([f.subarray(0, at), r.bytes(1 + r.int(32)), f.subarray(at)])
    }
    default:
      return Buffer.concat([f, f])
  }
}

interface Plan {
  frames: Buffer[]
  /** write the frames in pieces with pauses, so the server sees partial frames */
  trickle: boolean
  ending: 'end' | 'destroy' | 'wait'
}

function planConnection(r: Rng, fuzzSize: number): Plan {
  const frames: Buffer[] = []
  const kind = r.int(10)
  if (kind === 0) {
    // pure noise from the first byte
    frames.push(r.bytes(1 + r.int(2000)))
  } else if (kind <= 3) {
    // handshake phase: valid, mutated and random options
    frames.push(u32(r.chance(0.9) ? r.pick([3, 1]) : r.int(2 ** 32)))
    for (let i = 5 + r.int(40); i > 0; i--) {
      const o = validOption(r)
      frames.push(r.chance(0.7) ? o : r.chance(0.9) ? mutate(r, o, 12) : r.bytes(r.int(100)))
    }
  } else {
    // transmission phase on the fuzz export: valid, mutated and random requests
    frames.push(u32(3))
    if (r.chance(0.5)) frames.push(optionFrame(NbdOpt.STRUCTURED_REPLY, Buffer.alloc(0)))
    frames.push(r.chance(0.8) ? optionFrame(NbdOpt.GO, goData(Buffer.from('fuzz'), [NbdInfo.BLOCK_SIZE])) : optionFrame(NbdOpt.EXPORT_NAME, Buffer.from('fuzz')))
    for (let i = 10 + r.int(150); i > 0; i--) {
      const q = validRequest(r, fuzzSize)
      // mostly valid, so a connection lives long enough to reach deep states before a mutation ends it
      frames.push(r.chance(0.9) ? q : r.chance(0.9) ? mutate(r, q, 24) : r.bytes(r.int(64)))
    }
  }
  return { frames, trickle: r.chance(0.15), ending: r.pick(['end', 'end', 'destroy', 'wait'] as const) }
}

async function runConnection(port: number, plan: Plan, r: Rng): Promise<void> {
  const s = net.connect(port, '127.0.0.1')
  s.on('error', () => {})
  // replies are read and dropped, so the server never stalls on a full socket
  s.resume()
  const closed = new Promise<void>((resolve) => s.on('close', () => resolve()))
  const cut = setTimeout(() => s.destroy(), connectionLifetimeMaxMs)
  await new Promise<void>((resolve) => {
    s.once('connect', resolve)
    s.once('close', resolve)
  })
  for (const f of plan.frames) {
    if (s.destroyed || !s.writable) break
    if (plan.trickle && f.length > 1) {
      const at = 1 + r.int(f.length - 1)
      s.write(f.subarray(0, at))
      await new Promise((res) => setTimeout(res, 1))
      if (s.destroyed || !s.writable) break
      s.write(f.subarray(at))
    } else {
      s.write(f)
    }
  }
  if (plan.ending === 'end') s.end()
  else if (plan.ending === 'destroy') setTimeout(() => s.destroy(), r.int(20))
  await closed
  clearTimeout(cut)
}

function tool(cmd: string, args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { env: toolEnv, timeout: 60_000 }, (err, _stdout, stderr) => resolve({ code: err ? 1 : 0, stderr }))
  })
}

test('fuzzing with random and mutated frames leaves the server serving and the protected export untouched', async () => {
  const seed = Number(process.env.NBD_FUZZ_SEED ?? crypto.randomInt(2 ** 31))
  console.log(`NBD fuzz seed ${seed} (replay: NBD_FUZZ_SEED=${seed} npx vitest run test/unit/nbd-fuzz.test.ts)`)
  const rng = new Rng(seed)

  const provider = new MemoryExportProvider()
  const protectedExport = provider.add('protected', 4 * MiB, 'written before the fuzzing, never touched by it')
  const fuzzExport = provider.add('fuzz', MiB + 3, 'the fuzzer writes here')
  const logs: string[] = []
  const server = new NbdServer({
    provider,
    log: { info: (m) => logs.push(`INFO ${m}`), warn: (m) => logs.push(`WARN ${m}`), error: (m) => logs.push(`ERROR ${m}`) },
    handshakeTimeoutMs: 500,
  })
  await server.listen(0, '127.0.0.1')
  const port = server.address.port
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'tess-nbd-fuzz-'))
  try {
    // data written through a clean connection before the fuzzing
    const original = crypto.randomBytes(4 * MiB)
    const src = path.join(dir, 'protected.img')
    await fs.writeFile(src, original)
    let r = await tool('nbdcopy', [src, `nbd://127.0.0.1:${port}/protected`])
    expect(r.code, r.stderr).toBe(0)
    expect(protectedExport.sha256()).toBe(crypto.createHash('sha256').update(original).digest('hex'))
    const before = { sha256: protectedExport.sha256(), opens: protectedExport.opens, mutations: protectedExport.mutations }

    const started = Date.now()
    let frames = 0
    let next = 0
    const worker = async () => {
      while (next < fuzzConnections) {
        next++
        const plan = planConnection(rng, fuzzExport.sizeBytes)
        frames += plan.frames.length
        // each connection draws its own stream so its timing cannot change the others' frames
        await runConnection(port, plan, new Rng(rng.int(2 ** 31)))
      }
    }
    await Promise.all(Array.from({ length: fuzzConcurrency }, worker))
    console.log(`NBD fuzz: ${fuzzConnections} connections, ${frames} frames in ${Date.now() - started} ms; the fuzz export saw ${fuzzExport.opens} opens, ${fuzzExport.mutations} writes; ${logs.filter((l) => l.startsWith("WARN")).length} connections dropped`)
    expect(frames).toBeGreaterThan(20_000)

    // the server released everything the fuzzer opened
    const deadline = Date.now() + 10_000
    while ((server.connectionsFor('fuzz') > 0 || fuzzExport.opens !== fuzzExport.closes) && Date.now() < deadline) {
      await new Promise((res) => setTimeout(res, 20))
    }
    expect(server.connectionsFor('fuzz')).toBe(0)
    expect(provider.problems()).toEqual([])
    // no handler failed: every bad input was an error reply or a dropped connection
    expect(logs.filter((l) => l.startsWith('ERROR'))).toEqual([])
    expect(fuzzExport.opens).toBeGreaterThan(100)

    // the protected export was never opened, never written, and reads back through a clean connection
    expect(protectedExport.opens).toBe(before.opens)
    expect(protectedExport.mutations).toBe(before.mutations)
    expect(protectedExport.sha256()).toBe(before.sha256)
    const out = path.join(dir, 'out.img')
    await fs.writeFile(out, Buffer.alloc(0))
    r = await tool('nbdcopy', [`nbd://127.0.0.1:${port}/protected`, out])
    expect(r.code, r.stderr).toBe(0)
    expect((await fs.readFile(out)).equals(original)).toBe(true)
    // and the fuzzed export still works for a real client
    r = await tool('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${port}/fuzz`, '-c', 'write -P 0x5c 3 70000', '-c', 'read -P 0x5c 3 70000'])
    expect(r.code, r.stderr).toBe(0)
  } finally {
    await server.close()
    await fs.rm(dir, { recursive: true, force: true })
  }
  expect(provider.problems()).toEqual([])
}, 60_000)
