import type { Clock } from '../../src/lib/clock.js'

/**
 * One incarnation of a node's CVM process. Everything a process started (disk completions, replies,
 * timers) runs only while it is alive: a crash makes its pending promises never settle, as a
 * killed process's never do.
 */
export class Proc {
  alive = true
  constructor(readonly node: string, readonly gen: number) {}

  get name(): string {
    return `${this.node}#${this.gen}`
  }
}

interface Ev {
  at: number
  seq: number
  fn: () => void
  proc: Proc | undefined
  cancelled: boolean
}

export interface Cancel { cancel(): void }

/** let every promise continuation that is ready run (microtasks and nextTicks) before going on */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

/**
 * The simulation's only source of asynchrony: every completion of the simulated disks, network
 * and metadata store, and every timer of the code under test, is an event here ordered by
 * (simulated time, sequence). One event runs, then every continuation it made ready, then the next:
 * the same seed gives the same interleaving.
 */
export class Scheduler {
  now = 0
  events = 0
  private seq = 0
  private heap: Ev[] = []

  /** run `fn` `delayMs` from now (for `proc`: only if it is still alive then) */
  at(delayMs: number, fn: () => void, proc?: Proc): Cancel {
    const ev: Ev = { at: this.now + Math.max(0, delayMs), seq: this.seq++, fn, proc, cancelled: false }
    this.push(ev)
    return { cancel: () => { ev.cancelled = true } }
  }

  /** a promise settled by an event `delayMs` from now (never, if `proc` dies first) */
  after<T>(delayMs: number, proc: Proc | undefined, fn: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.at(delayMs, () => {
        try {
          resolve(fn())
        } catch (e) {
          reject(e)
        }
      }, proc)
    })
  }

  /** the Clock the code under test reads, for the timers of one process */
  clock(proc?: Proc): Clock {
    return {
      now: () => this.now,
      sleep: (ms) => new Promise<void>((resolve) => { this.at(ms, resolve, proc) }),
    }
  }

  get pending(): number {
    return this.heap.length
  }

  /**
   * Run events until `done()` holds, the queue is empty, or simulated time passes `untilMs`.
   * `done` is checked after every event once its continuations ran.
   */
  async run(done: () => boolean, untilMs = Infinity): Promise<'done' | 'idle' | 'time'> {
    await settle()
    for (;;) {
      if (done()) return 'done'
      const ev = this.peek()
      if (ev === undefined) return 'idle'
      if (ev.at > untilMs) {
        this.now = Math.max(this.now, untilMs)
        return 'time'
      }
      this.pop()
      if (ev.cancelled || (ev.proc !== undefined && !ev.proc.alive)) continue
      this.now = ev.at
      this.events++
      ev.fn()
      await settle()
    }
  }

  /** run until `p` settles (or the queue runs dry, or the time limit passes) */
  async wait<T>(p: Promise<T>, untilMs = Infinity): Promise<{ ok: true, value: T } | { ok: false, error: unknown } | { ok: 'pending' }> {
    let out: { ok: true, value: T } | { ok: false, error: unknown } | undefined
    p.then((value) => { out = { ok: true, value } }, (error: unknown) => { out = { ok: false, error } })
    await this.run(() => out !== undefined, untilMs)
    return out ?? { ok: 'pending' }
  }

  // a binary heap on (at, seq)
  private less(a: Ev, b: Ev): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq)
  }

  private push(ev: Ev): void {
    const h = this.heap
    h.push(ev)
    let i = h.length - 1
    while (i > 0) {
      const p = (i - 1) >> 1
      if (!this.less(h[i]!, h[p]!)) break
      ;[h[i], h[p]] = [h[p]!, h[i]!]
      i = p
    }
  }

  private peek(): Ev | undefined {
    return this.heap[0]
  }

  private pop(): Ev | undefined {
    const h = this.heap
    const top = h[0]
    const last = h.pop()
    if (h.length > 0 && last !== undefined) {
      h[0] = last
      let i = 0
      for (;;) {
        const l = 2 * i + 1
        const r = l + 1
        let m = i
        if (l < h.length && this.less(h[l]!, h[m]!)) m = l
        if (r < h.length && this.less(h[r]!, h[m]!)) m = r
        if (m === i) break
        ;[h[i], h[m]] = [h[m]!, h[i]!]
        i = m
      }
    }
    return top
  }
}
