/**
 * Per-key async mutual exclusion: calls with the same key run one after another, in call order;
 * a failed call does not fail the ones queued behind it. Keys are forgotten when idle.
 */
export class KeyedMutex {
  private readonly tails = new Map<string, Promise<unknown>>()

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve()
    const mine = prev.catch(() => undefined).then(fn) // the chain only orders the callers; each gets its own result
    this.tails.set(key, mine)
    try {
      return await mine
    } finally {
      if (this.tails.get(key) === mine) this.tails.delete(key)
    }
  }
}
