import crypto from 'node:crypto'
import type { BlockDevice, ExportInfo, ExportProvider } from '../../src/cvm/nbd/device.js'

export type MemOp = 'read' | 'write' | 'flush' | 'trim' | 'writeZeroes'

/**
 * One export held in memory. Every connection opens its own MemoryDevice on the same MemExport,
 * like the CVM shares one vDisk between connections. Tests read the counters, inject faults and
 * delays, and check `violations` (calls the server must never make: out of range, after close,
 * double close) stays empty.
 */
export class MemExport {
  readonly data: Buffer
  opens = 0
  closes = 0
  /** mutating calls: write, trim, writeZeroes */
  mutations = 0
  flushes = 0
  inFlight = 0
  inFlightMax = 0
  readonly violations: string[] = []
  /** return an error to throw instead of doing the operation */
  fault: ((op: MemOp, offset: number, length: number) => Error | undefined) | undefined
  /** milliseconds to wait before doing the operation */
  delayMs: ((op: MemOp, offset: number, length: number) => number) | undefined
  private gate: Promise<void> | undefined

  constructor(
    readonly name: string,
    sizeBytes: number,
    readonly description: string,
  ) {
    this.data = Buffer.alloc(sizeBytes)
  }

  get sizeBytes(): number {
    return this.data.length
  }

  sha256(): string {
    return crypto.createHash('sha256').update(this.data).digest('hex')
  }

  /** hold every operation until the returned function is called */
  hold(): () => void {
    let release!: () => void
    this.gate = new Promise((resolve) => {
      release = resolve
    })
    return () => {
      this.gate = undefined
      release()
    }
  }

  async run<T>(op: MemOp, offset: number, length: number, body: () => T): Promise<T> {
    if (op !== 'flush' && (offset < 0 || length <= 0 || offset + length > this.sizeBytes)) {
      this.violations.push(`${op} offset ${offset} length ${length} outside ${this.sizeBytes}`)
    }
    this.inFlight++
    this.inFlightMax = Math.max(this.inFlightMax, this.inFlight)
    try {
      if (this.gate) await this.gate
      const delay = this.delayMs?.(op, offset, length) ?? 0
      if (delay > 0) await new Promise((r) => setTimeout(r, delay))
      const err = this.fault?.(op, offset, length)
      if (err) throw err
      return body()
    } finally {
      this.inFlight--
    }
  }
}

export class MemoryDevice implements BlockDevice {
  private closed = false

  constructor(private readonly exp: MemExport) {}

  get name(): string {
    return this.exp.name
  }

  get sizeBytes(): number {
    return this.exp.sizeBytes
  }

  private live(op: string): void {
    if (this.closed) this.exp.violations.push(`${op} after close`)
  }

  read(offset: number, length: number): Promise<Buffer> {
    this.live('read')
    return this.exp.run('read', offset, length, () => Buffer.from(this.exp.data.subarray(offset, offset + length)))
  }

  /** the pooled-reply path of the server (large reads) */
  readInto(offset: number, out: Buffer): Promise<void> {
    this.live('read')
    return this.exp.run('read', offset, out.length, () => {
      this.exp.data.copy(out, 0, offset, offset + out.length)
    })
  }

  write(offset: number, data: Buffer, _fua: boolean): Promise<void> {
    this.live('write')
    return this.exp.run('write', offset, data.length, () => {
      this.exp.mutations++
      data.copy(this.exp.data, offset)
    })
  }

  flush(): Promise<void> {
    this.live('flush')
    return this.exp.run('flush', 0, 0, () => {
      this.exp.flushes++
    })
  }

  trim(offset: number, length: number): Promise<void> {
    this.live('trim')
    return this.exp.run('trim', offset, length, () => {
      this.exp.mutations++
      this.exp.data.fill(0, offset, offset + length)
    })
  }

  writeZeroes(offset: number, length: number, _noHole: boolean, _fua: boolean): Promise<void> {
    this.live('writeZeroes')
    return this.exp.run('writeZeroes', offset, length, () => {
      this.exp.mutations++
      this.exp.data.fill(0, offset, offset + length)
    })
  }

  async close(): Promise<void> {
    if (this.closed) this.exp.violations.push('close twice')
    this.closed = true
    this.exp.closes++
  }
}

export class MemoryExportProvider implements ExportProvider {
  readonly exports = new Map<string, MemExport>()
  /** make open() throw this instead of opening */
  openFault: Error | undefined
  /** make open() take this long first (a provider waiting for etcd after a node loss) */
  openDelayMs = 0

  add(name: string, sizeBytes: number, description = ''): MemExport {
    const exp = new MemExport(name, sizeBytes, description)
    this.exports.set(name, exp)
    return exp
  }

  get(name: string): MemExport {
    const exp = this.exports.get(name)
    if (!exp) throw new Error(`test bug: no memory export "${name}"`)
    return exp
  }

  async list(): Promise<ExportInfo[]> {
    return [...this.exports.values()].map((e) => ({ name: e.name, description: e.description }))
  }

  async open(name: string): Promise<BlockDevice | undefined> {
    if (this.openDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, this.openDelayMs))
    if (this.openFault) throw this.openFault
    const exp = this.exports.get(name)
    if (!exp) return undefined
    exp.opens++
    return new MemoryDevice(exp)
  }

  /** all violations across exports, and opens that were never closed */
  problems(): string[] {
    const out: string[] = []
    for (const e of this.exports.values()) {
      out.push(...e.violations.map((v) => `${e.name}: ${v}`))
      if (e.opens !== e.closes) out.push(`${e.name}: ${e.opens} opens, ${e.closes} closes`)
    }
    return out
  }
}

