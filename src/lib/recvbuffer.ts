import net from 'node:net'
import { assert } from './errors.js'

/**
 * Receive into one buffer per connection instead of a fresh one per read.
 *
 * A stream socket in Node allocates a new buffer (64 KiB) for every read. At a gigabyte per second
 * that is tens of thousands of external allocations a second, and V8 answers the external memory
 * they add with a full garbage collection every few tens of milliseconds: the largest single cost
 * of receiving bulk writes in the profile. Node can instead read into a buffer the caller owns
 * (the `onread` socket option): `onData` gets a view of it that is valid only until it returns, so
 * whatever must outlive the call is copied out (into pooled memory) by the caller.
 *
 * Node offers `onread` only when it creates a socket, not for a server's accepted ones, so the
 * accepted socket (created paused by a server with `pauseOnConnect`) gives its handle to a new
 * socket made with `onread`. When the handle is not what this expects (another Node version, a
 * TLS socket), the socket is resumed unchanged and `undefined` is returned: the caller reads 'data'.
 *
 * `nextInto`, asked after every read, may name memory for the next read instead of the buffer: the
 * rest of a large payload being assembled (the kernel then copies it from the socket straight to
 * where it goes, one copy less). It must be non-empty, and no longer than the bytes that belong
 * there, since a read fills what it can. `onData` is told which one a read went into.
 */
export function withReceiveBuffer(
  accepted: net.Socket,
  buffer: Buffer,
  onData: (view: Buffer, into: 'buffer' | 'nextInto') => void,
  opts: { allowHalfOpen: boolean, nextInto?: () => Buffer | undefined },
): net.Socket | undefined {
  const nextInto = opts.nextInto
  const internal = accepted as unknown as { _handle?: { useUserBuffer?: unknown } | null }
  const handle = internal._handle
  if (handle === null || handle === undefined || typeof handle.useUserBuffer !== 'function' || accepted.readableFlowing === true) {
    accepted.resume()
    return undefined
  }
  // the old socket lets go of the handle (destroying it then closes nothing) and is done
  internal._handle = null
  accepted.destroy()
  const options = {
    handle,
    allowHalfOpen: opts.allowHalfOpen,
    readable: true,
    writable: true,
    onread: {
      buffer: nextInto === undefined ? buffer : (): Buffer => {
        const into = nextInto()
        assert(into === undefined || into.length > 0, 'a read into an empty buffer fails with ENOBUFS')
        return into ?? buffer
      },
      callback: (nread: number, buf: Uint8Array): boolean => {
        onData((buf as Buffer).subarray(0, nread), buf === buffer ? 'buffer' : 'nextInto')
        return true
      },
    },
  }
  const socket = new net.Socket(options as unknown as net.SocketConstructorOpts)
  // a socket made around a handle starts paused until asked to read
  socket.resume()
  return socket
}
