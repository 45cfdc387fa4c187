/**
 * Reusable blocks (powers of two) for received payloads. A fresh large Buffer costs a page fault on
 * each of its pages at first touch, and every one adds external memory that V8 answers with garbage
 * collection; reusing blocks removes both. The owner of a block gives it back only when nothing
 * holds it any more (for a write: after the store's write resolved); a block never given back is
 * simply left to the garbage collector.
 */
export class BufferPool {
  private readonly idle = new Map<number, Buffer[]>()
  private idleBytes = 0

  constructor(
    /** idle blocks kept; beyond this, blocks given back are left to the garbage collector */
    private readonly idleMaxBytes: number,
    /** the smallest block handed out */
    private readonly blockMinBytes = 4096,
    /** how new blocks are made (the NBD server and the data port ask for 4096-aligned memory) */
    private readonly alloc: (size: number) => Buffer = (size) => Buffer.allocUnsafe(size),
  ) {}

  /** a block of at least `length` bytes (length <= 2^30) */
  take(length: number): Buffer {
    const size = Math.max(this.blockMinBytes, 2 ** (32 - Math.clz32(Math.max(1, length) - 1)))
    const block = this.idle.get(size)?.pop()
    if (block === undefined) return this.alloc(size)
    this.idleBytes -= size
    return block
  }

  give(block: Buffer): void {
    if (this.idleBytes + block.length > this.idleMaxBytes) return
    this.idleBytes += block.length
    const list = this.idle.get(block.length)
    if (list) list.push(block)
    else this.idle.set(block.length, [block])
  }
}
