import type { Etcd3 } from 'etcd3'
import { retryTransientEtcd } from '../../lib/etcd.js'
import { etcdTxnOpsMax } from '../../lib/limits.js'

interface Op {
  kind: 'put' | 'delete'
  key: string
  value: string
  resolve: () => void
  reject: (e: unknown) => void
}

export class FencedError extends Error {
  constructor(what: string) {
    super(`${what}: this CVM no longer owns the vDisk`)
    this.name = 'FencedError'
  }
}

/**
 * Persists block map changes to etcd in batches: every put/delete queued while one transaction is
 * in flight goes out in the next one (at most `etcdTxnOpsMax` ops each). Each transaction is fenced
 * on the owner key: it applies only while this CVM still owns the vDisk, so a CVM that lost
 * ownership can never change the map behind the new owner's back. A put resolves once etcd has
 * committed it (etcd fsyncs its log before answering).
 */
export class MapWriter {
  private queue: Op[] = []
  private running = false

  constructor(private readonly etcd: Etcd3, private readonly ownerKey: string, private readonly ownerValue: () => string) {}

  put(key: string, value: string): Promise<void> {
    return this.enqueue('put', key, value)
  }

  delete(key: string): Promise<void> {
    return this.enqueue('delete', key, '')
  }

  private enqueue(kind: Op['kind'], key: string, value: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ kind, key, value, resolve, reject })
      if (!this.running) void this.drain()
    })
  }

  private async drain(): Promise<void> {
    this.running = true
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, etcdTxnOpsMax)
        // The same key twice in one etcd transaction is refused: keep only the last op per key.
        const last = new Map<string, Op>()
        for (const op of batch) last.set(op.key, op)
        try {
          const ops = () => [...last.values()].map((op) => (op.kind === 'put' ? this.etcd.put(op.key).value(op.value) : this.etcd.delete().key(op.key)))
          // a transient failure (no etcd leader for a moment) is tried again: the same fenced puts and deletes
          const res = await retryTransientEtcd(() => this.etcd.if(this.ownerKey, 'Value', '==', this.ownerValue()).then(...ops()).commit())
          if (!res.succeeded) {
            const e = new FencedError('block map update refused')
            for (const op of batch) op.reject(e)
          } else {
            for (const op of batch) op.resolve()
          }
        } catch (e) {
          for (const op of batch) op.reject(e)
        }
      }
    } finally {
      this.running = false
    }
  }
}
