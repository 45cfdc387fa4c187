import { DeviceError } from '../../src/cvm/nbd/device.js'
import type { ExtentRef, Vdisk } from '../../src/cvm/vdisk/vdisk.js'
import { ChecksumError, type EgroupFile } from '../../src/cvm/vdisk/egroup.js'
import { checksumBlockSizeBytes, extentsPerEgroup, vBlockSizeBytes } from '../../src/lib/limits.js'
import type { VdiskRecord } from '../../src/lib/types.js'
import { SimCluster, leaseTtlMs, type SimNode } from './cluster.js'
import { Oracle, crashSet, readSet, valuesAt, type Cell, type FlushSnap, type WriteRec } from './oracle.js'
import { Prng } from './prng.js'
import { noDiskFaults } from './simdisk.js'

const MiB = 1024 * 1024
const traceKeep = 60
/** simulated time one round of client operations may take before it counts as hung */
const roundLimitMs = 10 * 60_000
/** the chance per round that the balancing moves a replica between its node's disks */
const replicaMoveRate = 0.08
const dataRegionOffset = 128 * 1024
const checksumRegionOffset = 4096

export interface SimOptions {
  seed: number
  /** rounds of client operations (default 150) */
  steps?: number
  /** every trace line as it happens */
  verbose?: boolean
  /** the curator's replica moves between a node's disks during the rounds (default true; false: the runs as they were before moves, which the fixed seeds were recorded with) */
  replicaMoves?: boolean
  out?: (line: string) => void
}

export interface SimConfig {
  rf: number
  nodes: string[]
  sizeBytes: number
  /** faults of any kind (else a fault-free run: every operation must succeed) */
  faulty: boolean
  queueDepthMax: number
  rates: Record<FaultKind, number>
}

type FaultKind = 'ownerCrash' | 'nodeCrash' | 'partition' | 'diskEio' | 'bitFlip' | 'netDrop' | 'etcdFail'

export interface SimFailure {
  step: number
  invariant: string
  detail: string
  trace: string[]
  logs: string[]
}

export interface SimResult {
  seed: number
  ok: boolean
  config: SimConfig
  steps: number
  simMs: number
  events: number
  wallMs: number
  stats: Record<string, number>
  failure?: SimFailure
  /** open findings the run met (and went on past), and how often */
  known: Partial<Record<KnownFinding, number>>
  /** whether the run had the replica moves (SimOptions.replicaMoves) */
  replicaMoves: boolean
}

class Violation extends Error {
  constructor(readonly invariant: string, readonly detail: string) {
    super(`${invariant}: ${detail}`)
  }
}

/**
 * Open findings (README, "Simulator"): failures the simulator recognises and that are not fixed.
 * A run that meets one counts it, prints it in its trace, gives up the bytes it hit (any value
 * until they are written again) and goes on, so the rest of the run still checks everything else.
 */
export const knownFindings = {
  'scrub-accepts-rot': 'the scrub of a dirty extent group after a crash re-checksums a block whose bytes rotted on the disk (it cannot tell rot from a write cut short), so a flushed block comes back with a flipped bit',
} as const
export type KnownFinding = keyof typeof knownFindings

/** one client operation of a round */
interface ClientOp {
  kind: 'write' | 'read' | 'flush' | 'trim' | 'zero'
  off: number
  len: number
  fua: boolean
  desc: string
  settled: boolean
  outcome?: string
}

function bitCount(x: number): number {
  let n = 0
  for (let v = x; v !== 0; v &= v - 1) n++
  return n
}

function hex(n: number): string {
  return `0x${n.toString(16)}`
}

/** an error the code under test must never throw (a bug, not an I/O failure) */
function internalError(e: unknown): boolean {
  if (e instanceof TypeError || e instanceof RangeError || e instanceof ReferenceError || e instanceof SyntaxError) return true
  return e instanceof Error && e.message.startsWith('assertion failed')
}

function describeError(e: unknown): string {
  if (e instanceof DeviceError) return `errno ${e.errno} (${e.message})`
  return e instanceof Error ? `${e.name}: ${e.message}` : String(e)
}

export function configFor(seed: number): SimConfig {
  const p = new Prng(seed).fork('config')
  const rf = p.weighted([[1, 1], [2, 2], [3, 2]] as const)
  const nodes = Array.from({ length: rf + p.range(rf === 1 ? 0 : 1, 2) }, (_, i) => `n${i + 1}`)
  const faulty = p.chance(0.85)
  const base: Record<FaultKind, number> = { ownerCrash: 0.04, nodeCrash: 0.03, partition: 0.03, diskEio: 0.03, bitFlip: 0.03, netDrop: 0.02, etcdFail: 0.02 }
  const rates = Object.fromEntries(Object.entries(base).map(([k, v]) => [k, faulty && p.chance(0.75) ? v : 0])) as Record<FaultKind, number>
  return { rf, nodes, sizeBytes: p.range(24, 72) * MiB, faulty, queueDepthMax: p.range(1, 4), rates }
}

/**
 * One seeded run: a cluster of simulated nodes around the real storage code, a client that issues
 * random operations, faults at random moments, and the invariants checked after every round.
 */
class Run {
  readonly config: SimConfig
  readonly cluster: SimCluster
  readonly oracle: Oracle
  private readonly wl: Prng
  private readonly faults: Prng
  /** the curator's balancing: replica moves between a node's two disks, while the client runs (its own stream: the others draw as before) */
  private readonly moves: Prng
  private readonly trace: string[] = []
  readonly stats: Record<string, number> = {}
  private step = 0
  private faultsInjected = 0
  private hot: number
  private readonly out: (line: string) => void

  constructor(readonly opts: SimOptions) {
    const root = new Prng(opts.seed)
    this.config = configFor(opts.seed)
    const rec: VdiskRecord = { id: '7', name: 'simdisk', sizeBytes: this.config.sizeBytes, rf: this.config.rf, createdAt: '2024-01-01T00:00:00.000Z', state: 'ready' }
    this.cluster = new SimCluster(root.fork('cluster'), this.config.nodes, rec)
    this.oracle = new Oracle(this.config.sizeBytes)
    this.wl = root.fork('workload')
    this.faults = root.fork('faults')
    this.moves = root.fork('moves')
    this.hot = this.wl.int(this.config.sizeBytes)
    this.out = opts.out ?? ((l) => process.stdout.write(`${l}\n`))
    if (opts.verbose) this.cluster.echo = this.out
  }

  private count(k: string, n = 1): void {
    this.stats[k] = (this.stats[k] ?? 0) + n
  }

  private note(line: string): void {
    const l = `step ${this.step} t=${this.cluster.sched.now.toFixed(3)}ms ${line}`
    this.trace.push(l)
    if (this.trace.length > traceKeep * 4) this.trace.splice(0, this.trace.length - traceKeep)
    if (this.opts.verbose) this.out(l)
  }

  private get sched() {
    return this.cluster.sched
  }

  private get owner() {
    const o = this.cluster.owner
    if (o === undefined) throw new Error('no owner')
    return o
  }

  async run(): Promise<SimResult> {
    const started = Date.now()
    const steps = this.opts.steps ?? 150
    let failure: SimFailure | undefined
    const unhandled: unknown[] = []
    const onUnhandled = (e: unknown) => { unhandled.push(e) }
    process.on('unhandledRejection', onUnhandled)
    try {
      await this.loadOwner(this.config.nodes[0]!)
      for (this.step = 1; this.step <= steps; this.step++) {
        await this.round()
        if (unhandled.length > 0) throw new Violation('no unhandled rejection', describeError(unhandled[0]))
        if (this.step % 10 === 0) await this.quiesce()
      }
      this.step = steps
      await this.quiesce()
      await this.crashOwner('power', 'final power loss of the owner after a flush')
      await this.quiesce()
      if (unhandled.length > 0) throw new Violation('no unhandled rejection', describeError(unhandled[0]))
    } catch (e) {
      if (!(e instanceof Violation)) throw e
      failure = { step: this.step, invariant: e.invariant, detail: e.detail, trace: this.trace.slice(-traceKeep), logs: this.cluster.logs.slice(-80) }
    } finally {
      process.off('unhandledRejection', onUnhandled)
    }
    return {
      seed: this.opts.seed, ok: failure === undefined, config: this.config, steps: this.step, simMs: Math.round(this.sched.now),
      events: this.sched.events, wallMs: Date.now() - started, stats: this.stats, ...(failure !== undefined ? { failure } : {}),
      known: this.known, replicaMoves: this.opts.replicaMoves !== false,
    }
  }

  private async loadOwner(node: string): Promise<void> {
    const r = await this.sched.wait(this.cluster.loadOwner(node), this.sched.now + 10 * 60_000)
    if (r.ok !== true) throw new Violation('the vDisk loads', r.ok === 'pending' ? `its load on ${node} never finished` : describeError(r.error))
    this.note(`owner loaded on ${node} (${this.owner.proc.name}): ${CLUSTER.mapOf(this.owner.vdisk).size} extents in ${CLUSTER.egroupsOf(this.owner.vdisk).size} extent groups`)
  }

  // ---- the workload ----

  private range(aligned: boolean): { off: number, len: number } {
    const size = this.config.sizeBytes
    const len0 = this.wl.weighted([
      [() => this.wl.range(1, 512), 10],
      [() => this.wl.range(512, 16 * 1024), 30],
      [() => this.wl.range(16 * 1024, 256 * 1024), 30],
      [() => this.wl.range(256 * 1024, 1280 * 1024), 22],
      [() => this.wl.range(1280 * 1024, 2560 * 1024), 8],
    ] as const)()
    if (this.wl.chance(0.02)) this.hot = this.wl.int(size)
    let off = this.wl.chance(0.7) ? this.hot + this.wl.range(-4 * MiB, 4 * MiB) : this.wl.int(size)
    let len = len0
    if (aligned) {
      off -= off % checksumBlockSizeBytes
      len = Math.max(checksumBlockSizeBytes, len - (len % checksumBlockSizeBytes))
    }
    off = Math.max(0, Math.min(off, size - 1))
    if (aligned) off -= off % checksumBlockSizeBytes
    len = Math.max(1, Math.min(len, size - off))
    return { off, len }
  }

  private genOps(): ClientOp[] {
    const n = this.wl.range(1, this.config.queueDepthMax)
    const ops: ClientOp[] = []
    const overlaps = (a: ClientOp, b: ClientOp) => a.kind !== 'flush' && b.kind !== 'flush' && !(a.kind === 'read' && b.kind === 'read') && a.off < b.off + b.len && b.off < a.off + a.len
    for (let i = 0; i < n; i++) {
      for (let attempt = 0; attempt < 5; attempt++) {
        const kind = this.wl.weighted([['write', 40], ['read', 30], ['flush', 12], ['trim', 8], ['zero', 4]] as const)
        let op: ClientOp
        if (kind === 'flush') {
          if (ops.some((o) => o.kind === 'flush')) continue
          op = { kind, off: 0, len: 0, fua: false, desc: 'flush', settled: false }
        } else if (kind === 'trim' && this.wl.chance(0.4)) {
          const vbs = Math.ceil(this.config.sizeBytes / vBlockSizeBytes)
          const vb = this.wl.chance(0.7) ? Math.max(0, Math.min(vbs - 1, Math.floor(this.hot / vBlockSizeBytes) + this.wl.range(-4, 4))) : this.wl.int(vbs)
          const off = vb * vBlockSizeBytes
          const len = Math.min(this.wl.range(1, 3) * vBlockSizeBytes, this.config.sizeBytes - off)
          op = { kind, off, len, fua: false, desc: '', settled: false }
        } else {
          const { off, len } = this.range(this.wl.chance(0.5))
          op = { kind, off, len, fua: kind === 'write' ? this.wl.chance(0.15) : kind === 'zero' ? this.wl.chance(0.3) : false, desc: '', settled: false }
        }
        if (ops.some((o) => overlaps(o, op))) continue
        if (op.kind !== 'flush') op.desc = `${op.kind}${op.fua ? '+fua' : ''} ${hex(op.off)}+${op.len}`
        ops.push(op)
        break
      }
    }
    return ops
  }

  /** start one client operation on the owner's vDisk; the oracle follows its outcome */
  private start(op: ClientOp): void {
    const v = this.owner.vdisk
    const settle = (outcome: string) => {
      op.settled = true
      op.outcome = outcome
      this.note(`${op.desc} → ${outcome}`)
    }
    const failed = (e: unknown, w?: WriteRec) => {
      if (internalError(e)) throw new Violation('no internal error', `${op.desc}: ${describeError(e)}`)
      if (this.faultsInjected === 0) throw new Violation('no operation fails without a fault', `${op.desc}: ${describeError(e)}`)
      if (w !== undefined) this.oracle.fail(w, op.off, op.len)
      this.count(`${op.kind} failed`)
      settle(`failed: ${describeError(e)}`)
    }
    const guard = (p: Promise<void>) => {
      p.catch((e: unknown) => { this.violation ??= e instanceof Violation ? e : new Violation('the simulator itself', describeError(e)) })
    }
    this.note(`${op.desc} issued`)
    switch (op.kind) {
      case 'write': {
        const id = this.oracle.newId()
        const data = Buffer.from(valuesAt(id, op.off, op.len))
        const w = this.oracle.issue(id, op.off, op.len)
        op.desc += ` (write ${id})`
        guard(v.write(op.off, data, op.fua).then(() => {
          this.oracle.ack(w, op.off, op.len, op.fua)
          this.count(op.fua ? 'fua writes' : 'writes')
          settle('ok')
        }, (e: unknown) => failed(e, w)))
        break
      }
      case 'zero':
      case 'trim': {
        const w = this.oracle.issue(0, op.off, op.len)
        const p = op.kind === 'trim' ? v.trim(op.off, op.len) : v.writeZeroes(op.off, op.len, this.wl.chance(0.7), op.fua)
        guard(p.then(() => {
          this.oracle.ack(w, op.off, op.len, op.fua)
          this.count(op.kind === 'trim' ? 'trims' : 'zeroings')
          settle('ok')
        }, (e: unknown) => failed(e, w)))
        break
      }
      case 'read': {
        guard(v.read(op.off, op.len).then((data) => {
          let bad = this.oracle.check(op.off, data)
          while (bad !== undefined && this.acceptedRot(op.off, data, bad.at, readSet, `${op.desc}: ${bad.detail}`)) bad = this.oracle.check(op.off, data)
          if (bad !== undefined) {
            const at = bad.at
            const detail = bad.detail
            return this.replicaReport(at).then((where) => {
              throw new Violation('a read returns the last data written', `${op.desc}: ${detail}; ${this.oracle.identify(op.off, data, at)}; ${where}`)
            })
          }
          this.count('reads')
          settle('ok')
        }, (e: unknown) => failed(e)))
        break
      }
      case 'flush': {
        const snap: FlushSnap = this.oracle.flushStart()
        guard(v.flush().then(() => {
          this.oracle.flushDone(snap)
          this.count('flushes')
          settle('ok')
        }, (e: unknown) => failed(e)))
        break
      }
    }
  }

  private violation: Violation | undefined

  /** where the 4 KiB block of vDisk byte `at` lives now (extent group/slot/block), or undefined when unmapped */
  private physKey(at: number): string | undefined {
    const ref = CLUSTER.mapOf(this.owner.vdisk).get(Math.floor(at / vBlockSizeBytes))
    return ref === undefined ? undefined : `${ref.egroupId}/${ref.slot}/${Math.floor((at % vBlockSizeBytes) / checksumBlockSizeBytes)}`
  }


  /**
   * Every 4 KiB block (extent group/slot/block) a bit flip was injected into (on some replica),
   * and how many. Kept when the block is written again: the rot is gone only once that write is
   * durable, and a crash may undo it.
   */
  private readonly flipped = new Map<string, number>()
  /** ...of which the flip was in the block's checksum entry */
  private readonly flippedEntries = new Set<string>()

  private throwIfViolated(): void {
    if (this.violation !== undefined) throw this.violation
  }

  /** one round: faults maybe, then 1 to queueDepthMax operations at once (disjoint ranges), run until they end */
  private async round(): Promise<void> {
    this.injectFaults()
    const ops = this.genOps()
    const owner = this.owner
    let crashPending = false
    if (this.faults.chance(this.config.rates.ownerCrash)) {
      crashPending = true
      const kind = this.faults.chance(0.5) ? 'kill' : 'power'
      const delay = this.faults.range(0, 4000) / 1000
      this.sched.at(delay, () => {
        crashPending = false
        this.faultsInjected++
        this.count(`owner ${kind}`)
        this.note(`FAULT owner crash: ${this.cluster.crashNode(owner.node, kind)}`)
      })
    }
    for (const op of ops) this.start(op)
    const move = this.opts.replicaMoves !== false && this.moves.chance(replicaMoveRate) ? this.startMove() : undefined
    const limit = this.sched.now + roundLimitMs
    await this.sched.run(() => this.violation !== undefined || (!crashPending && (!owner.proc.alive || (ops.every((o) => o.settled) && move?.settled !== false))), limit)
    this.throwIfViolated()
    if (!owner.proc.alive) {
      for (const o of ops) if (!o.settled) this.note(`${o.desc} → cut short by the crash`)
      await this.recoverOwner(owner.node)
    } else if (!ops.every((o) => o.settled) || move?.settled === false) {
      throw new Violation('every operation ends', `still running after ${roundLimitMs} ms of simulated time: ${[...ops.filter((o) => !o.settled).map((o) => o.desc), ...(move?.settled === false ? [move.desc] : [])].join(', ')}`)
    }
    // the client thinks a little (background work runs: groups made ahead, dirty markers removed)
    const think = this.wl.chance(0.05) ? this.wl.range(2000, 4000) : this.wl.range(0, 30)
    await this.sched.run(() => this.violation !== undefined || this.cluster.owner === undefined, this.sched.now + think)
    this.throwIfViolated()
    if (this.cluster.owner === undefined) await this.recoverOwner(owner.node)
  }

  /**
   * The curator's balancing during the round: one replica of a random extent group moves to the
   * other disk of its node (Vdisk.move, under the group's lock, beside the client's operations).
   */
  private startMove(): { settled: boolean, desc: string } {
    const v = this.owner.vdisk
    const groups = [...CLUSTER.egroupsOf(v).values()].filter((g) => g.replicas.length > 0)
    const state = { settled: true, desc: 'no replica move (no extent group yet)' }
    if (groups.length === 0) return state
    const eg = this.moves.pick(groups)
    const r = this.moves.pick(eg.replicas)
    const to = this.cluster.nodes.get(r.node)!.diskRecs.find((d) => d.id !== r.diskId)!
    state.settled = false
    state.desc = `move of extent group ${eg.id}'s replica on ${r.node} from disk ${r.diskId} to ${to.id}`
    this.note(state.desc)
    v.move([{ egroupId: eg.id, from: { node: r.node, diskId: r.diskId }, to: { node: r.node, diskId: to.id } }]).then((res) => {
      this.count(res.egroups > 0 ? 'replica moves' : 'replica moves skipped')
      this.note(`${state.desc} → ${res.egroups > 0 ? 'moved' : 'skipped'}`)
    }, (e: unknown) => {
      if (internalError(e)) this.violation ??= new Violation('no bug in a replica move', describeError(e))
      this.count('replica moves cut short')
      this.note(`${state.desc} → ${describeError(e)}`)
    }).finally(() => { state.settled = true })
    return state
  }

  // ---- faults ----

  private injectFaults(): void {
    const r = this.config.rates
    const f = this.faults
    const c = this.cluster
    const others = () => this.config.nodes.filter((n) => n !== this.owner.node)
    if (f.chance(r.nodeCrash) && others().length > 0) {
      const n = f.pick(others())
      if (c.nodes.get(n)!.up) {
        const kind = f.chance(0.5) ? 'kill' : 'power'
        const down = f.range(200, 30_000)
        this.fault(`node crash: ${c.crashNode(n, kind)}; back in ${down} ms`)
        c.sched.at(down, () => {
          if (!c.nodes.get(n)!.up) {
            c.startNode(n)
            this.note(`node ${n} restarted`)
          }
        })
      }
    }
    if (f.chance(r.partition) && others().length > 0) {
      const n = f.pick(others())
      const ms = f.range(20, 15_000)
      c.net.partition(this.owner.node, n, ms)
      this.fault(`partition between ${this.owner.node} and ${n} for ${ms} ms`)
    }
    if (f.chance(r.diskEio)) {
      const n = f.pick(this.config.nodes)
      const disk = c.nodes.get(n)!.disk
      const faults = { readEio: f.range(0, 20) / 100, writeEio: f.range(0, 10) / 100, syncEio: f.range(0, 10) / 100 }
      const ms = f.range(5, 5000)
      disk.faults = faults
      c.sched.at(ms, () => { disk.faults = noDiskFaults })
      this.fault(`disk of ${n}: EIO on ${faults.readEio} of reads, ${faults.writeEio} of writes, ${faults.syncEio} of syncs for ${ms} ms`)
    }
    if (f.chance(r.bitFlip)) this.flipBit()
    if (f.chance(r.netDrop)) {
      const rate = f.range(1, 20) / 100
      const ms = f.range(10, 5000)
      c.net.dropRate = rate
      c.sched.at(ms, () => { c.net.dropRate = 0 })
      this.fault(`network drops ${rate} of messages for ${ms} ms`)
    }
    if (f.chance(r.etcdFail)) {
      const rate = f.range(5, 50) / 100
      const ms = f.range(10, 3000)
      c.etcd.failRate = rate
      c.sched.at(ms, () => { c.etcd.failRate = 0 })
      this.fault(`metadata store fails ${rate} of requests for ${ms} ms`)
    }
  }

  readonly known: Partial<Record<KnownFinding, number>> = {}

  /**
   * A wrong block that bit flips explain (as many bits off as flips were injected into it, or a
   * flip in its checksum entry): the open finding scrub-accepts-rot. Counted, and the block is
   * given up (any value) until it is written again. False for anything else.
   */
  private acceptedRot(off: number, data: Buffer, at: number, which: (c: Cell) => number[], detail: string): boolean {
    const key = this.physKey(at) ?? ''
    const flips = this.flipped.get(key) ?? 0
    const rotEntry = this.flippedEntries.has(key)
    if (flips === 0 && !rotEntry) return false
    const bits = this.oracle.bitsFrom(off, data, at, which)
    if (!rotEntry && bits > flips) return false
    this.knownHit('scrub-accepts-rot', `${detail} (${rotEntry ? 'a bit flip was injected into its checksum entry' : `${bits} bit(s) off; ${flips} bit flip(s) were injected into this block`})`)
    const a = at - (at % checksumBlockSizeBytes)
    this.oracle.forget(a, Math.min(this.config.sizeBytes, a + checksumBlockSizeBytes))
    return true
  }

  /** for failure reports: bit flips injected into the block, and how far the block is from what it may be */
  private rotNote(off: number, data: Buffer, at: number, which: (c: Cell) => number[]): string {
    const key = this.physKey(at) ?? ''
    const flips = this.flipped.get(key) ?? 0
    if (flips === 0) return ''
    return `${flips} bit flip(s) were injected into this block, which is ${this.oracle.bitsFrom(off, data, at, which)} bit(s) from what it may be; `
  }

  private knownHit(k: KnownFinding, detail: string): void {
    this.known[k] = (this.known[k] ?? 0) + 1
    this.note(`OPEN FINDING ${k}: ${detail}`)
  }

  private fault(what: string): void {
    this.faultsInjected++
    this.count(`fault: ${what.split(/ between | on | of |:| for |\(/)[0]}`)
    this.note(`FAULT ${what}`)
  }

  /** a node's open extent group file, or undefined while it is still being opened (that runs on the scheduler) */
  private async openFile(node: SimNode, egid: string, diskId: string): Promise<EgroupFile | undefined> {
    let file: EgroupFile | undefined
    node.store!.get(egid, diskId).then((f) => { file = f }, () => undefined)
    await new Promise((resolve) => setImmediate(resolve))
    return file
  }

  /** what each replica of the extent holding byte `at` has in its 4 KiB block (for failure reports) */
  private async replicaReport(at: number): Promise<string> {
    const v = this.owner.vdisk
    const vb = Math.floor(at / vBlockSizeBytes)
    const ref = CLUSTER.mapOf(v).get(vb)
    if (ref === undefined) return `vBlock ${vb} is not mapped`
    const eg = CLUSTER.egroupsOf(v).get(ref.egroupId)
    if (eg === undefined) return `vBlock ${vb} maps to unknown extent group ${ref.egroupId}`
    const blk = (at % vBlockSizeBytes) - (at % checksumBlockSizeBytes)
    const out: string[] = []
    for (const r of eg.replicas) {
      const node = this.cluster.nodes.get(r.node)!
      const lost = (r as unknown as { lost?: string }).lost
      if (!node.up || node.store === undefined || node.files === undefined || !node.store.isOpen(eg.id, r.diskId)) {
        out.push(`${r.node}: not open${lost !== undefined ? ' (known lost)' : ''}`)
        continue
      }
      node.files.peek = true
      try {
        const buf = Buffer.alloc(checksumBlockSizeBytes)
        const file = await this.openFile(node, eg.id, r.diskId)
        if (file === undefined) {
          out.push(`${r.node}: being opened`)
          continue
        }
        await file.read(ref.slot, blk, checksumBlockSizeBytes, buf, 0)
        out.push(`${r.node}${lost !== undefined ? ' (known lost)' : ''}: ${this.oracle.identify(at - (at % checksumBlockSizeBytes), buf, at)}`)
      } catch (e) {
        out.push(`${r.node}: ${describeError(e)}`)
      } finally {
        node.files.peek = false
      }
    }
    const sharing = [...CLUSTER.mapOf(v)].filter(([, x]) => x.egroupId === ref.egroupId && x.slot === ref.slot).map(([b]) => b)
    const committed = [...this.cluster.committedMap()].filter(([, x]) => x.eg === ref.egroupId && x.s === ref.slot).map(([b]) => b)
    return `extent group ${eg.id} slot ${ref.slot} block ${blk / checksumBlockSizeBytes} (the slot of vBlock(s) ${sharing.join(', ')} in memory, ${committed.join(', ') || 'none'} in the store): ${out.join('; ')}`
  }

  /** rot one bit of a replica's file on its disk: in the data of a used slot, or (sometimes) in its checksum entries */
  private flipBit(): void {
    const v = this.owner.vdisk
    const map = [...CLUSTER.mapOf(v)]
    if (map.length === 0) return
    for (let attempt = 0; attempt < 8; attempt++) {
      const [vb, ref] = this.faults.pick(map)
      const eg = CLUSTER.egroupsOf(v).get(ref.egroupId)
      if (eg === undefined || eg.replicas.length === 0) continue
      const r = this.faults.pick(eg.replicas)
      const inode = this.cluster.nodes.get(r.node)!.disk.ns.get(this.cluster.egroupFile(r.node, eg.id, r.diskId))
      if (inode === undefined) continue
      const block = this.faults.int(vBlockSizeBytes / checksumBlockSizeBytes)
      const inEntries = this.faults.chance(0.2)
      // in the entries: the checksum, or (a third of the time) the flag word's "written" bit
      const flagBit = inEntries && this.faults.chance(0.33)
      const pos = inEntries
        ? checksumRegionOffset + (ref.slot * (vBlockSizeBytes / checksumBlockSizeBytes) + block) * 8 + (flagBit ? 4 : this.faults.int(8))
        : dataRegionOffset + ref.slot * vBlockSizeBytes + block * checksumBlockSizeBytes + this.faults.int(checksumBlockSizeBytes)
      if (inode.flip(pos, flagBit ? 0 : this.faults.int(8))) {
        const key = `${eg.id}/${ref.slot}/${block}`
        this.flipped.set(key, (this.flipped.get(key) ?? 0) + 1)
        if (inEntries) this.flippedEntries.add(key)
        this.fault(`bit flip on ${r.node} in extent group ${eg.id} slot ${ref.slot} (vBlock ${vb}) block ${block} ${flagBit ? 'written flag' : inEntries ? 'checksum entry' : 'data'} at file offset ${pos}`)
        return
      }
    }
  }

  // ---- crashes of the owner ----

  private async crashOwner(kind: 'kill' | 'power', why: string): Promise<void> {
    const node = this.owner.node
    this.faultsInjected++
    this.note(`FAULT ${why}: ${this.cluster.crashNode(node, kind)}`)
    await this.recoverOwner(node)
  }

  /** the owner died: its node's CVM restarts, the vDisk loads there (or, sometimes, on another node), every byte is checked */
  private async recoverOwner(node: string): Promise<void> {
    this.oracle.crash()
    await this.sched.run(() => this.violation !== undefined, this.sched.now + this.wl.range(200, 2000))
    this.throwIfViolated()
    if (!this.cluster.nodes.get(node)!.up) {
      this.cluster.startNode(node)
      this.note(`node ${node} restarted`)
    }
    const up = this.config.nodes.filter((n) => this.cluster.nodes.get(n)!.up)
    const target = this.wl.chance(0.2) ? this.wl.pick(up) : node
    if (target !== node) this.note(`the vDisk moves to ${target} (once ${node}'s lease expires, ${leaseTtlMs} ms)`)
    await this.loadOwner(target)
    await this.verifyAll('after the crash')
  }

  /** read the whole vDisk: every byte must be one that the crash may have left */
  private async verifyAll(why: string): Promise<void> {
    const v = this.owner.vdisk
    let unverified = 0
    for (let off = 0; off < this.config.sizeBytes; off += vBlockSizeBytes) {
      const len = Math.min(vBlockSizeBytes, this.config.sizeBytes - off)
      const r = await this.sched.wait(v.read(off, len), this.sched.now + roundLimitMs)
      this.throwIfViolated()
      if (r.ok === 'pending') {
        if (!this.owner.proc.alive) return
        throw new Violation('every operation ends', `read ${hex(off)}+${len} ${why} never ended`)
      }
      if (r.ok === false) {
        if (internalError(r.error)) throw new Violation('no internal error', `read ${hex(off)}+${len} ${why}: ${describeError(r.error)}`)
        unverified++
        continue
      }
      for (;;) {
        const bad = this.oracle.check(off, r.value, crashSet)
        if (bad === undefined) break
        if (this.acceptedRot(off, r.value, bad.at, crashSet, `${why}: ${bad.detail}`)) continue
        throw new Violation('no acknowledged and flushed write is lost; unflushed data is old or new', `${why}: ${bad.detail}; ${this.oracle.identify(off, r.value, bad.at)}; ${this.rotNote(off, r.value, bad.at, crashSet)}${await this.replicaReport(bad.at)}`)
      }
    }
    this.count('full verifications')
    if (unverified > 0) this.count('vBlocks unreadable at a verification', unverified)
    this.note(`verified every byte ${why}${unverified > 0 ? ` (${unverified} vBlocks unreadable: faults)` : ''}`)
  }

  // ---- invariants at rest ----

  /** a flush alone, then: the block map in the store is the one in memory, and every replica holds what is certain */
  private async quiesce(): Promise<void> {
    const owner = this.owner
    const op: ClientOp = { kind: 'flush', off: 0, len: 0, fua: false, desc: 'flush (at rest)', settled: false }
    // what the flush must commit (pieces of a write that failed may still be allocating: not these)
    const pendingBefore = [...pendingOf(owner.vdisk)]
    this.start(op)
    await this.sched.run(() => this.violation !== undefined || op.settled || !owner.proc.alive, this.sched.now + roundLimitMs)
    this.throwIfViolated()
    if (!owner.proc.alive) return
    if (!op.settled) throw new Violation('every operation ends', 'a flush at rest never ended')
    if (op.outcome === 'ok') this.checkMap(pendingBefore)
    await this.checkReplicas()
  }

  private checkMap(pendingBefore: Array<[number, ExtentRef]>): void {
    const v = this.owner.vdisk
    const map = CLUSTER.mapOf(v)
    const egs = CLUSTER.egroupsOf(v)
    const pendingNow = pendingOf(v)
    const left = pendingBefore.filter(([vb, ref]) => pendingNow.get(vb) === ref)
    if (left.length > 0) throw new Violation('a flush commits every allocation made before it', `vBlock ${left[0]![0]} still pending after a flush that succeeded`)
    const committed = this.cluster.committedMap()
    for (const [vb, ref] of map) {
      // allocations made after the flush began (pieces of a failed write still running) are not in etcd yet
      if (pendingNow.get(vb) === ref) continue
      const c = committed.get(vb)
      if (c === undefined || c.eg !== ref.egroupId || c.s !== ref.slot) {
        throw new Violation('the committed block map is the one in memory', `vBlock ${vb}: memory ${ref.egroupId}/${ref.slot}, store ${c === undefined ? 'none' : `${c.eg}/${c.s}`}`)
      }
    }
    for (const [vb, c] of committed) {
      if (!map.has(vb)) throw new Violation('the committed block map is the one in memory', `vBlock ${vb}: store ${c.eg}/${c.s}, memory none`)
    }
    const seen = new Map<string, number>()
    const records = this.cluster.egroupRecords()
    for (const [vb, ref] of map) {
      const k = `${ref.egroupId}/${ref.slot}`
      if (seen.has(k)) throw new Violation('a slot holds one extent', `vBlocks ${seen.get(k)} and ${vb} both in ${k}`)
      seen.set(k, vb)
      const eg = egs.get(ref.egroupId)
      if (eg === undefined || !records.has(ref.egroupId)) throw new Violation('a mapped extent group exists', `vBlock ${vb} in ${k}`)
      if (!eg.usedSlots.has(ref.slot) || eg.freeSlots.includes(ref.slot)) throw new Violation('a used slot is not free', `vBlock ${vb} in ${k}`)
    }
    for (const eg of egs.values()) {
      if (eg.freeSlots.length + eg.usedSlots.size > extentsPerEgroup) throw new Violation('slots are free or used, not both', `extent group ${eg.id}`)
    }
    this.count('map checks')
  }

  /**
   * Every replica of every mapped extent holds the certain bytes (one acknowledged write, no
   * failed or cut-short write over them since): replicas converge. A block whose checksum no
   * longer matches (a bit flip) is skipped: it is reported, not returned. Replicas on nodes that
   * are down, or that have not opened the group since they restarted, are skipped.
   */
  private async checkReplicas(): Promise<void> {
    const v = this.owner.vdisk
    const map = CLUSTER.mapOf(v)
    const egs = CLUSTER.egroupsOf(v)
    const vbs = Math.ceil(this.config.sizeBytes / vBlockSizeBytes)
    const buf = Buffer.alloc(vBlockSizeBytes)
    for (let vb = 0; vb < vbs; vb++) {
      const start = vb * vBlockSizeBytes
      const end = Math.min(this.config.sizeBytes, start + vBlockSizeBytes)
      const certain = this.oracle.certain(start, end)
      const ref = map.get(vb)
      if (ref === undefined) {
        const lost = certain.find((c) => c.id !== 0)
        if (lost !== undefined) throw new Violation('written data has an extent', `vBlock ${vb} is not mapped but ${hex(lost.start)}..${hex(lost.end)} holds write ${lost.id}`)
        continue
      }
      const eg = egs.get(ref.egroupId)
      if (eg === undefined) continue
      for (const r of eg.replicas) {
        if ((r as unknown as { lost?: string }).lost !== undefined) {
          // the owner knows this copy lost writes (its node restarted before they were synced): never read, replaced when it can be
          this.count('replica checks skipped (copy known to have lost writes)')
          continue
        }
        const node = this.cluster.nodes.get(r.node)!
        if (!node.up || node.store === undefined || node.files === undefined || !node.store.isOpen(eg.id, r.diskId)) {
          this.count('replica checks skipped (node down or group not open)')
          continue
        }
        node.files.peek = true
        try {
          const file = await this.openFile(node, eg.id, r.diskId)
          if (file === undefined) {
            this.count('replica checks skipped (node down or group not open)')
            continue
          }
          for (const c of certain) {
            const a = c.start - start
            const b = c.end - start
            const ba = a - (a % checksumBlockSizeBytes)
            const bb = Math.min(vBlockSizeBytes, b + ((checksumBlockSizeBytes - (b % checksumBlockSizeBytes)) % checksumBlockSizeBytes))
            for (let blk = ba; blk < bb; blk += checksumBlockSizeBytes) {
              try {
                await file.read(ref.slot, blk, checksumBlockSizeBytes, buf, blk)
              } catch (e) {
                if (e instanceof ChecksumError) {
                  this.count('replica blocks with a checksum mismatch (rot)')
                  buf.fill(0xee, blk, blk + checksumBlockSizeBytes)
                  continue
                }
                throw e
              }
              const from = Math.max(a, blk)
              const to = Math.min(b, blk + checksumBlockSizeBytes)
              const want = valuesAt(c.id, start + from, to - from)
              if (!buf.subarray(from, to).equals(want)) {
                let x = from
                while (buf[x] === want[x - from]) x++
                const blockKey = `${eg.id}/${ref.slot}/${blk / checksumBlockSizeBytes}`
                let diff = 0
                for (let y = from; y < to; y++) diff += bitCount(buf[y]! ^ want[y - from]!)
                const flips = this.flipped.get(blockKey) ?? 0
                if ((flips > 0 && diff <= flips) || this.flippedEntries.has(blockKey)) {
                  this.knownHit('scrub-accepts-rot', `replica on ${r.node} of extent group ${eg.id} slot ${ref.slot}: vBlock ${vb} block ${blk / checksumBlockSizeBytes} ${diff} bit(s) off write ${c.id} (bit flips were injected into it)`)
                  this.oracle.forget(start + blk, Math.min(this.config.sizeBytes, start + blk + checksumBlockSizeBytes))
                  continue
                }
                throw new Violation('replicas converge: each holds the last acknowledged write',
                  `replica on ${r.node} of extent group ${eg.id} slot ${ref.slot}: vBlock ${vb} +${x} is ${buf[x]!.toString(16)}, write ${c.id} put ${want[x - from]!.toString(16)} there (block ${blk / checksumBlockSizeBytes})`)
              }
            }
          }
        } finally {
          node.files.peek = false
        }
        this.count('replica extents checked')
      }
    }
  }
}

const CLUSTER = SimCluster

function pendingOf(v: Vdisk): Map<number, ExtentRef> {
  return (v as unknown as { pendingMap: Map<number, ExtentRef> }).pendingMap
}

/** run one seed */
export async function runSim(opts: SimOptions): Promise<SimResult> {
  return new Run(opts).run()
}

/** the report of a failed run: seed, step, invariant, the trace's tail and the storage code's last log lines */
export function formatFailure(r: SimResult): string {
  const f = r.failure
  if (f === undefined) return `seed ${r.seed}: ok`
  return [
    `seed ${r.seed} FAILED at step ${f.step}: ${f.invariant}`,
    `  ${f.detail}`,
    `  config: RF ${r.config.rf}, nodes ${r.config.nodes.join(' ')}, ${r.config.sizeBytes / MiB} MiB, queue depth up to ${r.config.queueDepthMax}, fault rates ${JSON.stringify(r.config.rates)}`,
    '  operations and faults (last lines):',
    ...f.trace.map((l) => `    ${l}`),
    '  storage code log (last lines):',
    ...f.logs.map((l) => `    ${l}`),
    `  replay: npm run sim -- --seed ${r.seed} --steps ${f.step} --verbose${r.replicaMoves ? '' : ' --no-moves'}`,
  ].join('\n')
}
