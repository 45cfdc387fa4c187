import { Prng } from './prng.js'

/**
 * What every byte of the vDisk may read as, now and after a crash.
 *
 * Data: write number `id` puts at vDisk byte `b` the value valueAt(id, b), a slice of one fixed
 * random table (id 0 is zeros: never written, trimmed or zeroed), so a byte's value says which
 * write it came from (up to chance, 1 in 256 per byte) and the oracle stores ids, never data.
 *
 * Per byte (in segments of equal state):
 * - `cur`: the last write acknowledged; a read must return it (undefined after a crash);
 * - `alts`: other values a read may return: writes that failed (some replicas or blocks may hold
 *   them) and, after a crash, every value the crash may have left;
 * - `base`: the values that are durable (made so by a flush or FUA that was acknowledged);
 * - `vol`: writes since, acknowledged or not, that a crash may or may not keep.
 * After a crash, a byte must be one of base ∪ vol: a flushed write is never lost, and an
 * unflushed one leaves the old or the new value, nothing else.
 */

const tableBytes = 4 * 1024 * 1024 + 4099
const table: Buffer = (() => {
  const b = Buffer.alloc(2 * tableBytes)
  const r = new Prng(0x5eed7ab1)
  for (let i = 0; i < tableBytes; i += 4) b.writeUInt32LE(r.u32(), i)
  b.copy(b, tableBytes, 0, tableBytes)
  return b
})()
const zeros = Buffer.alloc(tableBytes)

function tableOffset(id: number): number {
  return Math.imul(id ^ 0x3c6ef372, 0x9e3779b1) >>> 0
}

/** the bytes write `id` puts at [b, b + len) (len up to 4 MiB) */
/** the id of "any value": bytes the simulator gave up on (an open finding hit them) until they are written again */
export const anyValue = -1

export function valuesAt(id: number, b: number, len: number): Buffer {
  if (len > tableBytes) throw new Error('span too large for the pattern table')
  if (id === 0) return zeros.subarray(0, len)
  const start = (b + tableOffset(id)) % tableBytes
  return table.subarray(start, start + len)
}

export interface WriteRec {
  id: number
  seq: number
  /** completion tick (acknowledged, failed, or cut short by a crash); undefined while in flight */
  done: number | undefined
}

export interface Cell {
  readonly cur: number | undefined
  readonly alts: readonly number[]
  readonly base: readonly number[]
  /** when `base` was set: a flush taken before it must not undo it */
  readonly baseTick: number
  readonly vol: readonly WriteRec[]
}

interface Seg { readonly start: number, readonly end: number, readonly cell: Cell }

export interface FlushSnap { tick: number, segs: readonly Seg[] }

function uniq(xs: readonly number[]): number[] {
  return [...new Set(xs)]
}

export function readSet(c: Cell): number[] {
  return c.cur === undefined ? [...c.alts] : c.alts.length === 0 ? [c.cur] : uniq([c.cur, ...c.alts])
}

export function crashSet(c: Cell): number[] {
  return uniq([...c.base, ...c.vol.map((w) => w.id)])
}

export class Oracle {
  private segs: Seg[]
  private tick = 0
  private nextId = 1
  private nextSeq = 1
  private readonly inflight = new Set<WriteRec>()

  constructor(readonly size: number) {
    this.segs = [{ start: 0, end: size, cell: { cur: 0, alts: [], base: [0], baseTick: 0, vol: [] } }]
  }

  newId(): number {
    return this.nextId++
  }

  private find(at: number): number {
    let lo = 0
    let hi = this.segs.length - 1
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1
      if (this.segs[mid]!.start <= at) lo = mid
      else hi = mid - 1
    }
    return lo
  }

  /** make `at` a segment boundary; returns the index of the segment starting there */
  private split(at: number): number {
    if (at >= this.size) return this.segs.length
    const i = this.find(at)
    const s = this.segs[i]!
    if (s.start === at) return i
    this.segs.splice(i, 1, { start: s.start, end: at, cell: s.cell }, { start: at, end: s.end, cell: s.cell })
    return i + 1
  }

  /** change the state of [start, end) with `f` (applied once per distinct cell) */
  private update(start: number, end: number, f: (c: Cell) => Cell): void {
    if (end <= start) return
    const i = this.split(start)
    const j = this.split(end)
    const memo = new Map<Cell, Cell>()
    for (let k = i; k < j; k++) {
      const s = this.segs[k]!
      let c = memo.get(s.cell)
      if (c === undefined) memo.set(s.cell, c = f(s.cell))
      this.segs[k] = { start: s.start, end: s.end, cell: c }
    }
    // merge neighbours that share a cell
    const from = Math.max(0, i - 1)
    const to = Math.min(this.segs.length, j + 1)
    const merged: Seg[] = []
    for (let k = from; k < to; k++) {
      const s = this.segs[k]!
      const last = merged[merged.length - 1]
      if (last !== undefined && last.cell === s.cell && last.end === s.start) merged[merged.length - 1] = { start: last.start, end: s.end, cell: s.cell }
      else merged.push(s)
    }
    this.segs.splice(from, to - from, ...merged)
  }

  /** the segments over [start, end), clipped */
  cells(start: number, end: number): Seg[] {
    const out: Seg[] = []
    for (let k = this.find(start); k < this.segs.length; k++) {
      const s = this.segs[k]!
      if (s.start >= end) break
      out.push({ start: Math.max(s.start, start), end: Math.min(s.end, end), cell: s.cell })
    }
    return out
  }

  /** a write (or trim or zeroing: id 0) of [off, off + len) is issued */
  issue(id: number, off: number, len: number): WriteRec {
    const w: WriteRec = { id, seq: this.nextSeq++, done: undefined }
    this.inflight.add(w)
    this.update(off, off + len, (c) => ({ ...c, vol: [...c.vol, w] }))
    return w
  }

  /** the write was acknowledged; with `durable` (FUA) it is durable too */
  ack(w: WriteRec, off: number, len: number, durable: boolean): void {
    this.inflight.delete(w)
    w.done = ++this.tick
    const t = w.done
    this.update(off, off + len, (c) => (durable ? { cur: w.id, alts: [], base: [w.id], baseTick: t, vol: [] } : { ...c, cur: w.id, alts: [] }))
  }

  /** the write failed: some replicas or blocks may hold it */
  fail(w: WriteRec, off: number, len: number): void {
    this.inflight.delete(w)
    w.done = ++this.tick
    this.update(off, off + len, (c) => (c.cur === w.id || c.alts.includes(w.id) ? c : { ...c, alts: [...c.alts, w.id] }))
  }

  flushStart(): FlushSnap {
    return { tick: ++this.tick, segs: [...this.segs] }
  }

  /** a flush issued at `snap` was acknowledged: what could be read then is durable now */
  flushDone(snap: FlushSnap): void {
    const covered = (w: WriteRec) => w.done !== undefined && w.done < snap.tick
    for (const s of snap.segs) {
      const base = readSet(s.cell)
      // a FUA write acknowledged after the flush began made a newer value durable: it stays
      this.update(s.start, s.end, (c) => (c.baseTick > snap.tick ? c : { ...c, base, baseTick: snap.tick, vol: c.vol.filter((w) => !covered(w)) }))
    }
  }

  /** the owner crashed: writes in flight end now; every byte may read as whatever the crash left */
  crash(): void {
    const t = ++this.tick
    for (const w of this.inflight) {
      w.done = t
    }
    this.inflight.clear()
    this.update(0, this.size, (c) => ({ ...c, cur: undefined, alts: crashSet(c) }))
  }

  /**
   * Check bytes read at [off, off + data.length) against what they may be. Returns the first byte
   * that may not be there and a description, or undefined.
   */
  check(off: number, data: Buffer, which: (c: Cell) => number[] = readSet): { at: number, detail: string } | undefined {
    for (const s of this.cells(off, off + data.length)) {
      const ids = which(s.cell)
      if (ids.includes(anyValue)) continue
      const got = data.subarray(s.start - off, s.end - off)
      if (ids.length === 1 && got.equals(valuesAt(ids[0]!, s.start, s.end - s.start))) continue
      // per 512 bytes, any candidate whole; else byte by byte
      for (let a = s.start; a < s.end; a = Math.min(s.end, (Math.floor(a / 512) + 1) * 512)) {
        const b = Math.min(s.end, (Math.floor(a / 512) + 1) * 512)
        const part = data.subarray(a - off, b - off)
        if (ids.some((id) => part.equals(valuesAt(id, a, b - a)))) continue
        for (let x = a; x < b; x++) {
          const v = data[x - off]!
          if (!ids.some((id) => valuesAt(id, x, 1)[0] === v)) {
            const expect = ids.map((id) => `write ${id}: ${valuesAt(id, x, 1)[0]!.toString(16).padStart(2, '0')}`).join(', ')
            return { at: x, detail: `byte ${x} (vBlock ${Math.floor(x / 1048576)} +${x % 1048576}) is ${v.toString(16).padStart(2, '0')}; may be only ${expect}` }
          }
        }
      }
    }
    return undefined
  }

  /**
   * Whose bytes are these? `data` was read at `off`; looks at the 4 KiB block holding `at`, for a
   * write whose bytes for the same place in some vBlock match it (the mark of an extent read from
   * the wrong slot, or of a stale copy). For failure reports.
   */
  identify(off: number, data: Buffer, at: number): string {
    const blockEnd = at - (at % 4096) + 4096
    const a = at
    const n = Math.min(64, off + data.length - a, blockEnd - a)
    const got = data.subarray(a - off, a - off + n)
    if (got.equals(zeros.subarray(0, n))) return `the ${n} bytes from there are zeros`
    const vbs = Math.ceil(this.size / 1048576)
    for (let id = 1; id < this.nextId; id++) {
      for (let vb = 0; vb < vbs; vb++) {
        const pos = vb * 1048576 + (a % 1048576)
        if (valuesAt(id, pos, n).equals(got)) return `the ${n} bytes from there are write ${id}'s for vBlock ${vb} +${a % 1048576}${pos === a ? '' : ' (another vBlock)'}`
      }
    }
    return `the ${n} bytes from there match no write at that offset of any vBlock`
  }

  /** any value may be in [start, end) from now on, after a crash too, until it is written again */
  forget(start: number, end: number): void {
    this.update(start, end, () => ({ cur: undefined, alts: [anyValue], base: [anyValue], baseTick: ++this.tick, vol: [] }))
  }

  /** byte ranges whose value is certain (one acknowledged write, no alternative), within [start, end) */
  certain(start: number, end: number): Array<{ start: number, end: number, id: number }> {
    return this.cells(start, end).filter((s) => s.cell.cur !== undefined && s.cell.alts.length === 0).map((s) => ({ start: s.start, end: s.end, id: s.cell.cur! }))
  }

  /**
   * How many bits the 4 KiB block holding byte `at` (in `data`, read at `off`) is away from the
   * nearest value it may have, byte by byte (the mark of bit flips on a disk: one per flip).
   */
  bitsFrom(off: number, data: Buffer, at: number, which: (c: Cell) => number[] = readSet): number {
    const a = Math.max(off, at - (at % 4096))
    const b = Math.min(off + data.length, at - (at % 4096) + 4096)
    let bits = 0
    for (let x = a; x < b; x++) {
      const ids = which(this.stateAt(x))
      if (ids.includes(anyValue)) continue
      const v = data[x - off]!
      let best = 8
      for (const id of ids) {
        let d = valuesAt(id, x, 1)[0]! ^ v
        let n = 0
        for (; d !== 0; d &= d - 1) n++
        if (n < best) best = n
      }
      bits += best
    }
    return bits
  }

  get segments(): number {
    return this.segs.length
  }

  /** ids written or zeroed that a byte may hold, anywhere (tests of the oracle) */
  stateAt(b: number): Cell {
    return this.segs[this.find(b)]!.cell
  }
}
