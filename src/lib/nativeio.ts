/**
 * Reads that copy from the page cache on the calling thread and never wait for a disk: the addon
 * build/Release/tess_io.node (native/io.c, built by node-gyp during `npm ci`) wraps preadv2(2) with
 * RWF_NOWAIT. Without the addon, or where the kernel or file system has no RWF_NOWAIT, `readCached`
 * copies nothing and callers read through libuv's thread pool as they always could.
 *
 * The same addon holds the socket sender (native/sender.c, `SocketSender` below): NBD replies are
 * copied into the socket on a thread per connection instead of on the event loop.
 *
 * TESS_IO chooses, once, at load:
 *   unset   the addon if it loads, else the pool only (and replies written by the event loop), silently
 *   pool    the pool only, no sender (tests use it to exercise those paths)
 *   native  the addon, or this module throws at load naming the reason
 */
import { createRequire } from 'node:module'
import { TessError, errorMessage } from './errors.js'
import { nativeBuildFile } from './packageroot.js'

interface Binding {
  preadNowait(fd: number, buf: Uint8Array, offset: number, length: number, position: number): number
  alignedBuffer?(size: number): Buffer
  addressAlignment?(buf: Uint8Array): number
  cachedPages?(fd: number, offset: number, length: number): number
  xtsBlocks?(key: Uint8Array, src: Uint8Array, dst: Uint8Array, firstBlock: number, encrypt: boolean): void
}

const addonFile = nativeBuildFile('tess_io.node')
const EAGAIN = 11
const EINTR = 4

function choose(): Binding | undefined {
  const requested = process.env.TESS_IO ?? ''
  if (requested !== '' && requested !== 'pool' && requested !== 'native') {
    throw new TessError('TESS_E_INVALID', `TESS_IO="${requested}" is not one of pool, native`, 'unset it (native when built, else pool), or set it to pool or native')
  }
  if (requested === 'pool') return undefined
  try {
    return createRequire(import.meta.url)(addonFile) as Binding
  } catch (e) {
    if (requested === 'native') {
      throw new TessError('TESS_E_PRECONDITION', `cannot load the native I/O addon ${addonFile} (TESS_IO=native): ${errorMessage(e)}`,
        'build it with npm rebuild (or npm ci) in the repo root: needs g++, make and python3; or unset TESS_IO')
    }
    return undefined
  }
}

let binding = choose()

/** which path reads take: 'native' (page cache first) or 'pool' */
export const nativeIoEngine: 'native' | 'pool' = binding ? 'native' : 'pool'

/**
 * Copy into buf[offset, offset + n) what the page cache holds of the file at `position`, without
 * waiting for a disk; returns n (0 when nothing was cached, on any error, or without the addon:
 * the caller reads the rest, and reports real errors, through its ordinary read).
 */
export function readCached(fd: number, buf: Uint8Array, offset: number, length: number, position: number): number {
  if (binding === undefined) return 0
  const n = binding.preadNowait(fd, buf, offset, length, position)
  if (n >= 0) return n
  if (-n !== EAGAIN && -n !== EINTR) {
    // EOPNOTSUPP, ENOSYS or EINVAL: no RWF_NOWAIT here; other errors are the ordinary read's to report
    if (-n === 95 || -n === 38 || -n === 22) binding = undefined
  }
  return 0
}

/** what O_DIRECT asks of a write's memory, file offset and length on the disks we know */
export const directIoAlignBytes = 4096

/** a buffer whose memory starts on a 4096-byte boundary (the addon), or undefined without the addon */
export function alignedBuffer(size: number): Buffer | undefined {
  return binding?.alignedBuffer?.(size)
}

/** a block for a BufferPool: 4096-aligned memory where the addon can give it, else an ordinary buffer */
export function allocAligned(size: number): Buffer {
  return alignedBuffer(size) ?? Buffer.allocUnsafe(size)
}

/** whether buf's memory and length suit an O_DIRECT write (always false without the addon) */
export function directIoReady(buf: Uint8Array): boolean {
  const align = binding?.addressAlignment
  return align !== undefined && buf.length > 0 && buf.length % directIoAlignBytes === 0 && align(buf) >= directIoAlignBytes
}

/**
 * AES-256-XTS over whole 4 KiB blocks in one call (native/xts.c, with the OpenSSL inside Node), or
 * undefined without the addon: encrypted vDisks then use node:crypto block by block (the same bytes).
 */
export function nativeXts(): ((key: Uint8Array, src: Uint8Array, dst: Uint8Array, firstBlock: number, encrypt: boolean) => void) | undefined {
  return binding?.xtsBlocks
}

let cachestat = true

/**
 * How many pages of [offset, offset + length) of the file the page cache holds (cachestat(2), which
 * starts no read-ahead), or undefined without the addon or on a kernel older than 6.5.
 */
export function pagesCached(fd: number, offset: number, length: number): number | undefined {
  const f = binding?.cachedPages
  if (f === undefined || !cachestat) return undefined
  const r = f(fd, offset, length)
  if (r >= 0) return r
  // ENOSYS (old kernel), EOPNOTSUPP: never asked again; other errors: unknown this time
  if (r === -38 || r === -95) cachestat = false
  return undefined
}

interface SenderBinding {
  senderOpen(fd: number, onDone: (batchesDone: number, errno: number, finished: boolean) => void): unknown
  senderWrite(handle: unknown, buffers: Uint8Array[], inline: boolean): boolean
  senderClose(handle: unknown): void
}

interface Batch {
  buffers: Buffer[]
  bytes: number
  sent: ((err?: Error | null) => void)[]
}

/**
 * Writes to a socket on a thread of its own (native/sender.c): the copy into the socket leaves the
 * event loop. Batches are written in order; each batch's buffers are held here until it is out, and
 * its `sent` callbacks run then (with an error when the write failed or the sender was closed).
 * Nothing else may write to the socket while a sender is open on it.
 */
export class SocketSender {
  private readonly queue: Batch[] = []
  private written = 0
  private closed = false
  private failed: Error | undefined
  /** bytes queued and not yet written */
  queuedBytes = 0
  private idleWaiters: (() => void)[] = []

  private constructor(
    private readonly native: SenderBinding,
    private readonly handle: unknown,
    private readonly onProgress: () => void,
    private readonly onError: (err: Error) => void,
    /** small batches may be written on the calling thread while the sender is idle (sender.c) */
    private readonly inline: boolean,
  ) {}

  /**
   * A sender on the socket's descriptor, or undefined without the addon (or TESS_IO=pool), or when
   * the socket exposes no descriptor: the caller writes through the socket then.
   */
  static open(socket: { _handle?: { fd?: unknown } | null }, onProgress: () => void, onError: (err: Error) => void, opts: { inline: boolean } = { inline: true }): SocketSender | undefined {
    const native = binding as unknown as Partial<SenderBinding> | undefined
    if (native?.senderOpen === undefined || native.senderWrite === undefined || native.senderClose === undefined) return undefined
    const fd = socket._handle?.fd
    if (typeof fd !== 'number' || fd < 0) return undefined
    let sender: SocketSender | undefined
    const handle = native.senderOpen(fd, (done, errno, finished) => sender?.progress(done, errno, finished))
    sender = new SocketSender(native as SenderBinding, handle, onProgress, onError, opts.inline)
    return sender
  }

  /** queue one batch; `sent` callbacks run once it is written */
  write(buffers: Buffer[], sent: ((err?: Error | null) => void)[]): void {
    if (this.closed) {
      const err = new Error('socket sender closed')
      for (const cb of sent) cb(err)
      return
    }
    // A small batch while the thread is idle goes out at once on this thread (sender.c says why);
    // only when every earlier batch was reported too, so the callbacks still run in batch order.
    if (this.native.senderWrite(this.handle, buffers, this.inline && this.queue.length === 0) === true) {
      for (const cb of sent) cb(null)
      return
    }
    let bytes = 0
    for (const b of buffers) bytes += b.length
    this.queue.push({ buffers, bytes, sent })
    this.queuedBytes += bytes
  }

  get idle(): boolean {
    return this.queue.length === 0
  }

  /** cb runs once every queued batch is written (or failed) */
  whenIdle(cb: () => void): void {
    if (this.idle) cb()
    else this.idleWaiters.push(cb)
  }

  /**
   * stop: batches not written yet are dropped; their callbacks get an error once the thread has
   * ended (until then it may still be reading their buffers)
   */
  close(): void {
    if (this.closed) return
    this.closed = true
    this.native.senderClose(this.handle)
  }

  private progress(done: number, errno: number, finished: boolean): void {
    while (this.written < done) {
      const b = this.queue.shift()
      if (b === undefined) break
      this.written++
      this.queuedBytes -= b.bytes
      for (const cb of b.sent) cb(null)
    }
    if (errno !== 0 && !this.failed) {
      this.failed = new Error(`socket write failed: errno ${errno}`)
      this.closed = true
      this.onError(this.failed)
    }
    if (finished) {
      // the thread holds no buffer any more: what it did not write failed
      const err = this.failed ?? new Error('socket sender closed')
      const left = this.queue.splice(0)
      this.queuedBytes = 0
      for (const b of left) for (const cb of b.sent) cb(err)
    }
    if (this.idle || this.closed) this.wakeIdle()
    this.onProgress()
  }

  private wakeIdle(): void {
    const w = this.idleWaiters.splice(0)
    for (const cb of w) cb()
  }
}
