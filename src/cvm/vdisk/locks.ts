/**
 * Per-key reader/writer locks (one key per vBlock). Entries exist only while held or awaited, so
 * memory stays bounded by the I/O in flight. Writers are not starved: a waiting writer blocks new
 * readers.
 */
interface LockState {
  readers: number
  writer: boolean
  queue: Array<{ write: boolean, resolve: () => void }>
}

export class KeyedRwLock {
  private readonly locks = new Map<number, LockState>()

  private state(key: number): LockState {
    let s = this.locks.get(key)
    if (!s) {
      s = { readers: 0, writer: false, queue: [] }
      this.locks.set(key, s)
    }
    return s
  }

  async read(key: number): Promise<() => void> {
    const s = this.state(key)
    if (!s.writer && s.queue.length === 0) {
      s.readers++
    } else {
      await new Promise<void>((resolve) => s.queue.push({ write: false, resolve }))
    }
    return () => this.release(key, false)
  }

  /**
   * Could a reader take the lock right now? Code that reads and finishes without yielding may
   * skip taking it when this is true: nothing can change what the lock protects meanwhile.
   */
  readable(key: number): boolean {
    const s = this.locks.get(key)
    return s === undefined || (!s.writer && s.queue.length === 0)
  }

  /** Is the lock neither held nor awaited? (A writer that finishes without yielding may then skip taking it.) */
  idle(key: number): boolean {
    return !this.locks.has(key)
  }

  async write(key: number): Promise<() => void> {
    const s = this.state(key)
    if (!s.writer && s.readers === 0 && s.queue.length === 0) {
      s.writer = true
    } else {
      await new Promise<void>((resolve) => s.queue.push({ write: true, resolve }))
    }
    return () => this.release(key, true)
  }

  private release(key: number, write: boolean): void {
    const s = this.locks.get(key)
    if (!s) throw new Error(`lock ${key} released but not held`)
    if (write) s.writer = false
    else s.readers--
    // Grant the queue head; if it is a reader, grant every reader up to the next writer.
    while (s.queue.length > 0 && !s.writer) {
      const head = s.queue[0]!
      if (head.write) {
        if (s.readers > 0) break
        s.queue.shift()
        s.writer = true
        head.resolve()
        break
      }
      s.queue.shift()
      s.readers++
      head.resolve()
    }
    if (!s.writer && s.readers === 0 && s.queue.length === 0) this.locks.delete(key)
  }

  get size(): number {
    return this.locks.size
  }
}
