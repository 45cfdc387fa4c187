/**
 * Reads that copy from the page cache on the calling thread and never wait for a disk: the addon
 * build/Release/tess_io.node (native/io.c, built by node-gyp during `npm ci`) wraps preadv2(2) with
 * RWF_NOWAIT. Without the addon, or where the kernel or file system has no RWF_NOWAIT, `readCached`
 * copies nothing and callers read through libuv's thread pool as they always could.
 *
 * TESS_IO chooses, once, at load:
 *   unset   the addon if it loads, else the pool only, silently
 *   pool    the pool only (tests use it to exercise that path)
 *   native  the addon, or this module throws at load naming the reason
 */
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import { TessError, errorMessage } from './errors.js'

interface Binding {
  preadNowait(fd: number, buf: Uint8Array, offset: number, length: number, position: number): number
}

const addonFile = fileURLToPath(new URL('../../build/Release/tess_io.node', import.meta.url))
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
