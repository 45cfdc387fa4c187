import type { Etcd3 } from 'etcd3'
import type { Prng } from './prng.js'
import type { Proc, Scheduler } from './sched.js'

export interface TxnOp { kind: 'put' | 'del', key: string, value: string, lease?: Proc }

/**
 * The metadata store in etcd's place, with the semantics the storage code relies on: a
 * transaction applies atomically when its compare holds (puts fenced on the owner key), and is
 * durable once applied. It answers after a latency; with `failRate`, an operation fails before it
 * applies, or applies and loses its answer (the caller sees an error for a change that was made).
 * Keys put with a process's lease go `leaseTtlMs` after the process dies.
 */
export class SimEtcd {
  readonly kv = new Map<string, string>()
  private readonly leased = new Map<string, Proc>()
  failRate = 0
  /** revisions of changes, for watchers */
  revision = 1
  onChange: ((key: string, value: string | undefined, revision: number) => void) | undefined

  constructor(private readonly sched: Scheduler, private readonly prng: Prng, readonly leaseTtlMs: number) {}

  private latency(): number {
    return this.prng.chance(0.05) ? this.prng.range(5000, 50000) / 1000 : this.prng.range(300, 2000) / 1000
  }

  private set(key: string, value: string | undefined, lease?: Proc): void {
    if (value === undefined) {
      this.kv.delete(key)
      this.leased.delete(key)
    } else {
      this.kv.set(key, value)
      if (lease !== undefined) this.leased.set(key, lease)
      else this.leased.delete(key)
    }
    this.revision++
    this.onChange?.(key, value, this.revision)
  }

  /**
   * One transaction from `proc`: if `compare` holds (the key's value equals `value`; undefined:
   * the key does not exist), apply `ops`. Settles for the caller only while it is alive.
   */
  txn(proc: Proc, compare: { key: string, value: string | undefined } | undefined, ops: TxnOp[]): Promise<{ succeeded: boolean }> {
    return new Promise((resolve, reject) => {
      const failing = this.prng.chance(this.failRate)
      const before = failing && this.prng.chance(0.5)
      this.sched.at(this.latency(), () => {
        if (before) {
          this.sched.at(this.latency(), () => reject(new Error('etcd: request timed out (not applied)')), proc)
          return
        }
        const ok = compare === undefined || this.kv.get(compare.key) === compare.value
        if (ok) for (const op of ops) this.set(op.key, op.kind === 'put' ? op.value : undefined, op.lease)
        this.sched.at(this.latency(), () => {
          if (failing) reject(new Error('etcd: request timed out (applied, answer lost)'))
          else resolve({ succeeded: ok })
        }, proc)
      })
    })
  }

  /** read keys under a prefix (one consistent snapshot), answered after the latency */
  async list(proc: Proc, prefix: string): Promise<Map<string, string>> {
    return (await this.snapshot(proc, prefix)).kv
  }

  /** keys under a prefix and the revision they were read at */
  snapshot(proc: Proc, prefix: string): Promise<{ kv: Map<string, string>, revision: number }> {
    return new Promise((resolve, reject) => {
      const failing = this.prng.chance(this.failRate)
      this.sched.at(this.latency(), () => {
        const kv = new Map([...this.kv].filter(([k]) => k.startsWith(prefix)).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)))
        const revision = this.revision
        this.sched.at(this.latency(), () => (failing ? reject(new Error('etcd: request timed out')) : resolve({ kv, revision })), proc)
      })
    })
  }

  async get(proc: Proc, key: string): Promise<string | undefined> {
    return (await this.list(proc, key)).get(key)
  }

  /** a process died: its leased keys go when the lease expires */
  died(proc: Proc): void {
    this.sched.at(this.leaseTtlMs, () => {
      for (const [k, p] of [...this.leased]) if (p === proc) this.set(k, undefined)
    })
  }

  /** put directly (the simulation's setup and node status records, not the code under test) */
  seed(key: string, value: string, lease?: Proc): void {
    this.set(key, value, lease)
  }

  /** the subset of the etcd3 client the real MapWriter uses, for one process */
  client(proc: Proc): Etcd3 {
    const c = {
      if: (key: string, _field: 'Value', _cmp: '==', value: string) => ({
        then: (...ops: TxnOp[]) => ({ commit: () => this.txn(proc, { key, value }, ops) }),
      }),
      put: (key: string) => ({ value: (v: string | Buffer) => ({ kind: 'put', key, value: String(v) }) as TxnOp }),
      delete: () => ({ key: (k: string) => ({ kind: 'del', key: k, value: '' }) as TxnOp }),
    }
    return c as unknown as Etcd3
  }
}
