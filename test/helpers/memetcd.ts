import { EtcdLeaseInvalidError, type Etcd3 } from 'etcd3'
import type { Clock } from '../../src/lib/clock.js'

/** One call a client made (what fault rules and hooks match on). */
export interface EtcdCall {
  /** the client's holder: the node whose CVM made the call */
  holder: string
  kind: 'get' | 'range' | 'txn' | 'put' | 'delete' | 'lease'
  /** the key (get, put, delete), the prefix (range, delete of a prefix) or the compared key (txn) */
  key: string
  /** the keys a txn, put or delete would change (a prefix ends with '/'), what a lease grant keeps ('') */
  writes: string[]
}

interface Entry {
  value: string
  lease: string | undefined
  createRevision: number
  modRevision: number
}

interface LeaseState {
  id: string
  holder: string
  ttlMs: number
  /** when its holder stopped keeping it alive (it died); undefined while kept alive */
  deadAt: number | undefined
  gone: boolean
  onLost: Array<(e: Error) => void>
}

type WriteOp = { kind: 'put', key: string, value: string, lease: string | undefined } | { kind: 'del', key: string, prefix: boolean }

interface Fault {
  match: (c: EtcdCall) => boolean
  /** the change is made, then its answer is lost (the caller sees an error all the same) */
  applied: boolean
  times: number
}

/**
 * An in-memory etcd for unit tests of code that takes an Etcd3 client: the subset of the etcd3
 * builder API the core uses (get, getAll with a prefix, put and delete, transactions comparing a
 * key's Value or its Create revision, leases), answered at once (on a later microtask). Each node's
 * CVM gets its own client (`client(holder)`); keys put with a lease go when it is revoked, or
 * `ttl` (by the injected clock) after its holder `died()`. Faults: `failWhen` makes matching calls
 * fail before they apply or after (the answer lost). Unlike test/sim/etcd.ts it has no latency and
 * no scheduler: the unit tests drive it with plain awaits.
 */
export class MemEtcd {
  private readonly kv = new Map<string, Entry>()
  private readonly leases = new Map<string, LeaseState>()
  private nextLease = 1
  private readonly faults: Fault[] = []
  revision = 1
  readonly calls: EtcdCall[] = []
  /** runs before each call is answered (a test changes the store in between: a race) */
  onCall: ((c: EtcdCall) => void) | undefined

  constructor(readonly clock: Clock) {}

  // ---- for tests: direct access, no faults ----

  value(key: string): string | undefined {
    this.expire()
    return this.kv.get(key)?.value
  }

  json<T>(key: string): T | undefined {
    const v = this.value(key)
    return v === undefined ? undefined : JSON.parse(v) as T
  }

  /** keys under a prefix, sorted */
  keys(prefix: string): string[] {
    this.expire()
    return [...this.kv.keys()].filter((k) => k.startsWith(prefix)).sort()
  }

  /** every key and value (to compare before and after a failed call) */
  dump(): Record<string, string> {
    this.expire()
    return Object.fromEntries([...this.kv.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1)).map(([k, e]) => [k, e.value]))
  }

  seed(key: string, value: string): void {
    this.apply([{ kind: 'put', key, value, lease: undefined }])
  }

  remove(key: string): void {
    this.apply([{ kind: 'del', key, prefix: false }])
  }

  /** the lease a key is bound to, and its holder */
  leaseOf(key: string): { id: string, holder: string } | undefined {
    const id = this.kv.get(key)?.lease
    const l = id === undefined ? undefined : this.leases.get(id)
    return l === undefined ? undefined : { id: l.id, holder: l.holder }
  }

  /** the holder's CVM died: its leases are no longer kept alive and expire their TTL from now */
  died(holder: string): void {
    for (const l of this.leases.values()) if (l.holder === holder && !l.gone && l.deadAt === undefined) l.deadAt = this.clock.now()
  }

  /** etcd lost the holder's leases while it runs (their keys go; the holder's lease objects emit 'lost') */
  loseLeases(holder: string): void {
    for (const l of [...this.leases.values()]) {
      if (l.holder !== holder || l.gone) continue
      this.dropLease(l)
      for (const f of l.onLost) f(new Error('lease expired or revoked'))
    }
  }

  /** make the next `times` calls that match fail (before applying, or after: `applied`) */
  failWhen(match: (c: EtcdCall) => boolean, opts: { applied?: boolean, times?: number } = {}): void {
    this.faults.push({ match, applied: opts.applied ?? false, times: opts.times ?? 1 })
  }

  clearFaults(): void {
    this.faults.length = 0
  }

  // ---- the store ----

  private expire(): void {
    const now = this.clock.now()
    for (const l of [...this.leases.values()]) if (!l.gone && l.deadAt !== undefined && now >= l.deadAt + l.ttlMs) this.dropLease(l)
  }

  private dropLease(l: LeaseState): void {
    l.gone = true
    for (const [k, e] of [...this.kv]) {
      if (e.lease === l.id) {
        this.kv.delete(k)
        this.revision++
      }
    }
  }

  private apply(ops: WriteOp[]): void {
    this.expire()
    for (const op of ops) {
      this.revision++
      if (op.kind === 'put') {
        if (op.lease !== undefined && (this.leases.get(op.lease)?.gone ?? true)) throw new Error(`etcd: lease ${op.lease} not found`)
        const old = this.kv.get(op.key)
        this.kv.set(op.key, { value: op.value, lease: op.lease, createRevision: old?.createRevision ?? this.revision, modRevision: this.revision })
      } else if (op.prefix) {
        for (const k of [...this.kv.keys()]) if (k.startsWith(op.key)) this.kv.delete(k)
      } else {
        this.kv.delete(op.key)
      }
    }
  }

  private range(prefix: string): Array<[string, Entry]> {
    return [...this.kv.entries()].filter(([k]) => k.startsWith(prefix)).sort((a, b) => (a[0] < b[0] ? -1 : 1))
  }

  /** one call: faults and the hook, then `run` (which applies and answers) */
  async call<T>(c: EtcdCall, run: () => T): Promise<T> {
    await Promise.resolve()
    this.calls.push(c)
    this.onCall?.(c)
    this.expire()
    const f = this.faults.find((x) => x.times > 0 && x.match(c))
    if (f !== undefined) {
      f.times--
      if (!f.applied) throw new Error(`etcd: injected failure of ${c.kind} ${c.key} (not applied)`)
      run()
      throw new Error(`etcd: injected failure of ${c.kind} ${c.key} (applied, answer lost)`)
    }
    return run()
  }

  /** the subset of the etcd3 client the core uses, for the CVM of `holder` */
  client(holder: string): Etcd3 {
    const store = this
    const opWrites = (ops: WriteOp[]) => ops.map((o) => o.key)
    class PutOp {
      readonly op: WriteOp & { kind: 'put' }
      constructor(key: string) { this.op = { kind: 'put', key, value: '', lease: undefined } }
      value(v: string | Buffer | number): this { this.op.value = String(v); return this }
      lease(id: string): this { this.op.lease = id; return this }
      then<A, B>(ok?: (v: unknown) => A, bad?: (e: unknown) => B): Promise<A | B> {
        return store.call({ holder, kind: 'put', key: this.op.key, writes: [this.op.key] }, () => { store.apply([this.op]); return {} }).then(ok, bad)
      }
    }
    class DeleteOp {
      op: WriteOp & { kind: 'del' } = { kind: 'del', key: '', prefix: false }
      key(k: string): this { this.op = { kind: 'del', key: k, prefix: false }; return this }
      prefix(p: string): this { this.op = { kind: 'del', key: p, prefix: true }; return this }
      then<A, B>(ok?: (v: unknown) => A, bad?: (e: unknown) => B): Promise<A | B> {
        return store.call({ holder, kind: 'delete', key: this.op.key, writes: [this.op.key] }, () => { store.apply([this.op]); return {} }).then(ok, bad)
      }
    }
    const toOp = (o: unknown): WriteOp => {
      if (o instanceof PutOp || o instanceof DeleteOp) return o.op
      throw new Error('MemEtcd: a transaction op that is not a put or delete of this client')
    }
    const client = {
      get: (key: string) => ({
        string: () => store.call({ holder, kind: 'get', key, writes: [] }, () => store.kv.get(key)?.value ?? null),
        json: () => store.call({ holder, kind: 'get', key, writes: [] }, () => { const v = store.kv.get(key)?.value; return v === undefined ? null : JSON.parse(v) as unknown }),
        exists: () => store.call({ holder, kind: 'get', key, writes: [] }, () => store.kv.has(key)),
      }),
      getAll: () => ({
        prefix: (prefix: string) => ({
          strings: () => store.call({ holder, kind: 'range', key: prefix, writes: [] }, () => Object.fromEntries(store.range(prefix).map(([k, e]) => [k, e.value]))),
          keys: () => store.call({ holder, kind: 'range', key: prefix, writes: [] }, () => store.range(prefix).map(([k]) => k)),
          count: () => store.call({ holder, kind: 'range', key: prefix, writes: [] }, () => store.range(prefix).length),
          exec: () => store.call({ holder, kind: 'range', key: prefix, writes: [] }, () => ({
            header: { revision: String(store.revision) },
            kvs: store.range(prefix).map(([k, e]) => ({ key: Buffer.from(k), value: Buffer.from(e.value), mod_revision: String(e.modRevision), create_revision: String(e.createRevision), lease: e.lease ?? '0' })),
          })),
        }),
      }),
      put: (key: string) => new PutOp(key),
      delete: () => new DeleteOp(),
      if: (key: string, field: 'Value' | 'Create', cmp: '==', value: string | number) => {
        if (cmp !== '==' || (field !== 'Value' && field !== 'Create')) throw new Error(`MemEtcd: compare ${field} ${cmp} is not supported`)
        const holds = (): boolean => {
          const e = store.kv.get(key)
          if (field === 'Create') return (e?.createRevision ?? 0) === Number(value)
          return e !== undefined && e.value === String(value)
        }
        return {
          then: (...ops: unknown[]) => ({
            commit: () => {
              const writes = ops.map(toOp)
              return store.call({ holder, kind: 'txn', key, writes: opWrites(writes) }, () => {
                const succeeded = holds()
                if (succeeded) store.apply(writes)
                return { succeeded }
              })
            },
          }),
        }
      },
      lease: (ttlSec: number) => {
        let state: LeaseState | undefined
        const onLost: Array<(e: Error) => void> = []
        let granted: Promise<string> | undefined
        return {
          // one grant per lease object, as etcd3's (its grant() returns the same id every time)
          grant: () => {
            granted ??= store.call({ holder, kind: 'lease', key: '', writes: [] }, () => {
              state = { id: String(store.nextLease++), holder, ttlMs: ttlSec * 1000, deadAt: undefined, gone: false, onLost }
              store.leases.set(state.id, state)
              return state.id
            })
            return granted
          },
          // a lease here lives until its holder died() or loseLeases(): a keepalive only finds out which
          keepaliveOnce: async () => {
            if (state === undefined || !state.gone) return { TTL: String(ttlSec) }
            const e = new EtcdLeaseInvalidError(state.id)
            for (const f of onLost) f(e)
            throw e
          },
          release: () => undefined,
          on: (ev: string, f: (e: Error) => void) => {
            if (ev === 'lost') onLost.push(f)
          },
          revoke: () => store.call({ holder, kind: 'lease', key: state?.id ?? '', writes: [] }, () => {
            if (state !== undefined && !state.gone) store.dropLease(state)
          }),
        }
      },
    }
    return client as unknown as Etcd3
  }
}
