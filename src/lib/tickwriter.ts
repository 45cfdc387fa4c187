import type net from 'node:net'
import { SocketSender } from './nativeio.js'

/** a socket as the writer needs it (a net.Socket, or a TLS socket over one) */
type Writable = Pick<net.Socket, 'cork' | 'uncork' | 'write' | 'destroy' | 'destroyed' | 'writableLength'>

/** the sender thread takes at most this many buffers per batch (native/sender.c) */
const senderBatchBuffersMax = 4096

/**
 * A batch leaves as soon as it holds this much, before the end of the tick: two 4 KiB writes.
 * Measured on RF 2 4k random writes at QD16 (3 test hosts): sending every frame at once cost a
 * system call each (about 19-22k IOPS); holding a whole tick's frames sent them as one convoy the
 * replica then worked through while the owner waited for it, and the other way round (about
 * 23-26k); sending every 8 KiB let both work at once (about 27-31k).
 */
export const tickWriterFlushBytes = 8 * 1024

/**
 * Writes made to a socket during one tick leave together, at the end of the tick (after every
 * promise continuation queued meanwhile) or once `tickWriterFlushBytes` are waiting: the frames
 * of requests that move in step go out in a few writev calls instead of one system call each.
 *
 * With `thread`, on a plain socket once nothing Node was sending is left in its buffer, the
 * batches go through a sender (nativeio.ts): a small batch while its thread is idle is written at
 * once on this thread, a large one (1 MiB frames) by the thread, off the event loop. Without the
 * addon, on TLS, or before the socket is clear, the socket is corked for the tick instead.
 * Nothing else may write to the socket once a sender is in use.
 */
export class TickWriter {
  private corked = false
  private batch: Buffer[] | undefined
  private batchBytes = 0
  private sender: SocketSender | undefined
  private senderTried: boolean

  constructor(private readonly socket: Writable, opts: { thread: boolean }) {
    this.senderTried = !opts.thread
  }

  /** the parts of one message, in order, after everything written before */
  write(parts: readonly Buffer[]): void {
    if (this.socket.destroyed) return
    const sender = this.senderFor()
    if (sender === undefined) {
      if (!this.corked) {
        this.corked = true
        this.socket.cork()
        process.nextTick(() => this.uncork())
      }
      let bytes = 0
      for (const p of parts) {
        this.socket.write(p)
        bytes += p.length
      }
      // the socket's own count includes what it holds from before: flush on what was corked
      this.batchBytes += bytes
      if (this.batchBytes >= tickWriterFlushBytes) this.uncork()
      return
    }
    let batch = this.batch
    if (batch === undefined) {
      batch = this.batch = []
      this.batchBytes = 0
      process.nextTick(() => this.flush())
    }
    for (const p of parts) {
      if (p.length === 0) continue
      batch.push(p)
      this.batchBytes += p.length
    }
    if (this.batchBytes >= tickWriterFlushBytes) this.flush()
  }

  /** stop the sender, if one was started (batches not written yet are dropped) */
  close(): void {
    this.batch = undefined
    this.sender?.close()
  }

  private uncork(): void {
    this.batchBytes = 0
    if (!this.corked) return
    this.corked = false
    if (!this.socket.destroyed) this.socket.uncork()
  }

  private senderFor(): SocketSender | undefined {
    if (this.sender !== undefined || this.senderTried) return this.sender
    // the sender writes on its own: only once Node has nothing of this socket's left to send
    if (this.corked || this.socket.writableLength > 0) return undefined
    this.senderTried = true
    this.sender = SocketSender.open(this.socket as unknown as { _handle?: { fd?: unknown } | null }, () => undefined, (err) => this.socket.destroy(err))
    return this.sender
  }

  private flush(): void {
    const batch = this.batch
    this.batch = undefined
    this.batchBytes = 0
    if (batch === undefined || batch.length === 0 || this.sender === undefined) return
    for (let i = 0; i < batch.length; i += senderBatchBuffersMax) this.sender.write(batch.slice(i, i + senderBatchBuffersMax), [])
  }
}
