import type { Logger } from '../../src/lib/log.js'
import { PeerError, peerRequestTimeoutMs, type Op } from '../../src/cvm/replication/protocol.js'
import { errorBody, serveReplicaOp } from '../../src/cvm/replication/server.js'
import type { ReplicaStore } from '../../src/cvm/vdisk/replicastore.js'
import type { Prng } from './prng.js'
import type { Proc, Scheduler } from './sched.js'

/** what the network needs to know of a node: its running process and that process's replica store */
export interface NetHost {
  proc: Proc | undefined
  store: ReplicaStore | undefined
  log: Logger
}

export interface Reply { json: Record<string, unknown>, data: Buffer }

/**
 * The data port between simulated nodes. A request from one process to a node is delivered after
 * a latency drawn from the seed (in order per direction of a link: one connection), served by the
 * real replica op code (serveReplicaOp, over the node's real ReplicaStore), and its answer comes
 * back the same way; errors are mapped by the real errorBody and become PeerErrors as the client
 * makes them. Faults: a node whose process is not running refuses (`unreachable`), a partition
 * swallows messages both ways until the client's timeout, a dropped connection loses the request
 * or (worse) only its answer, after the peer did the work. A request already sent is delivered
 * even if its sender dies meanwhile (the kernel sends what it took); its answer is not.
 */
export class SimNet {
  dropRate = 0
  private readonly partitions: Array<{ a: string, b: string, until: number }> = []
  private readonly arrivals = new Map<string, number>()
  private readonly downUntil = new Map<string, number>()
  /** requests being served by a process: failed when it dies */
  private readonly serving = new Map<Proc, Set<() => void>>()

  constructor(private readonly sched: Scheduler, private readonly prng: Prng, private readonly host: (node: string) => NetHost) {}

  partition(a: string, b: string, ms: number): void {
    this.partitions.push({ a, b, until: this.sched.now + ms })
  }

  partitioned(a: string, b: string): boolean {
    const now = this.sched.now
    return this.partitions.some((p) => p.until > now && ((p.a === a && p.b === b) || (p.a === b && p.b === a)))
  }

  private latency(): number {
    return this.prng.chance(0.02) ? this.prng.range(2000, 20000) / 1000 : this.prng.range(50, 500) / 1000
  }

  /** arrival time of a message sent now on the link from → to: never before one sent earlier */
  private arrival(from: string, to: string): number {
    const key = `${from}>${to}`
    const at = Math.max(this.sched.now + this.latency(), (this.arrivals.get(key) ?? 0) + 0.001)
    this.arrivals.set(key, at)
    return at - this.sched.now
  }

  suspect(from: Proc, node: string): boolean {
    return (this.downUntil.get(`${from.name}>${node}`) ?? -1) > this.sched.now
  }

  /** a process died: the requests it was serving fail at their senders (connection closed) */
  died(proc: Proc): void {
    const s = this.serving.get(proc)
    this.serving.delete(proc)
    for (const f of s ?? []) f()
  }

  request(from: Proc, to: string, op: Op, json: Record<string, unknown>, data: Buffer | undefined, timeoutMs = peerRequestTimeoutMs): Promise<Reply> {
    return new Promise<Reply>((resolve, reject) => {
      let settled = false
      const settle = (f: () => void) => {
        if (settled) return
        settled = true
        timer.cancel()
        f()
      }
      const fail = (kind: 'unreachable' | 'timeout', msg: string, delay: number) => {
        this.sched.at(delay, () => settle(() => {
          this.downUntil.set(`${from.name}>${to}`, this.sched.now + 1000)
          reject(new PeerError(kind, `node ${to}: ${msg}`))
        }), from)
      }
      // the client's own timeout
      const timer = this.sched.at(timeoutMs, () => settle(() => reject(new PeerError('timeout', `node ${to}: no answer in ${timeoutMs} ms`))), from)
      const h = this.host(to)
      const target = h.proc
      if (target === undefined || !target.alive || h.store === undefined) return fail('unreachable', 'connection refused: its CVM is not running', this.latency())
      if (this.partitioned(from.node, to)) return // lost in the partition: the timeout answers
      if (this.prng.chance(this.dropRate)) return fail('unreachable', 'connection reset (request lost)', this.latency())
      const store = h.store
      const payload = data === undefined ? Buffer.alloc(0) : Buffer.from(data)
      this.sched.at(this.arrival(from.node, to), () => {
        if (!target.alive) return fail('unreachable', 'connection closed: its CVM stopped', this.latency())
        if (this.partitioned(from.node, to)) return
        let s = this.serving.get(target)
        if (s === undefined) this.serving.set(target, s = new Set())
        const onDeath = () => fail('unreachable', 'connection closed: its CVM stopped', this.latency())
        s.add(onDeath)
        const answer = (f: () => void) => {
          s.delete(onDeath)
          if (!target.alive) return
          if (this.partitioned(to, from.node)) return
          if (this.prng.chance(this.dropRate)) return fail('unreachable', 'connection reset (answer lost)', this.latency())
          this.sched.at(this.arrival(to, from.node), () => settle(f), from)
        }
        serveReplicaOp(store, op, json, payload).then(
          (res) => {
            const out = res.data === undefined ? Buffer.alloc(0) : Buffer.from(res.data)
            answer(() => resolve({ json: res.json, data: out }))
          },
          (e: unknown) => {
            const body = errorBody(e, h.log)
            answer(() => reject(new PeerError(body.kind ?? 'internal', `node ${to}: ${body.message ?? 'error'}`, body.errno)))
          },
        )
      })
    })
  }

  /** the PeerPool a process's RemoteReplicas use */
  pool(from: Proc): { peek(node: string): undefined, get(node: string): Promise<{ request(op: Op, json: Record<string, unknown>, data?: Buffer, timeoutMs?: number): Promise<Reply> }>, suspect(node: string): boolean, closeAll(): void } {
    return {
      // every call goes through get (a turn of the simulated network's scheduler), as before
      peek: () => undefined,
      get: async (node) => ({ request: (op, json, data, timeoutMs) => this.request(from, node, op, json, data, timeoutMs) }),
      suspect: (node) => this.suspect(from, node),
      closeAll: () => undefined,
    }
  }
}
