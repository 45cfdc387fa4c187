import { execFileSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import { createRequire } from 'node:module'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, describe, expect, it } from 'vitest'
import { nativeIoEngine, readCached } from '../../src/common/nativeio.js'
import { RawFile } from '../../src/cvm/vdisk/rawfile.js'

/**
 * Reads from the page cache on the calling thread (native/io.c: preadv2 with RWF_NOWAIT) and the
 * pool fallback. The addon is required unless TESS_IO=pool (scripts/test.sh runs this file both
 * ways): a build that silently lost it would make every read take the pool again.
 */

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
const addonFile = path.join(repoRoot, 'build', 'Release', 'tess_io.node')
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-nativeio-'))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

/** write, sync, and drop the file's pages from the page cache (POSIX_FADV_DONTNEED on clean pages) */
function uncachedFile(name: string, data: Buffer): string {
  const file = path.join(dir, name)
  fs.writeFileSync(file, data)
  const fd = fs.openSync(file, 'r+')
  fs.fsyncSync(fd)
  fs.closeSync(fd)
  execFileSync('python3', ['-c', 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)', file])
  return file
}

describe('native page cache reads', () => {
  it('uses the addon unless TESS_IO=pool', () => {
    expect(nativeIoEngine).toBe(process.env.TESS_IO === 'pool' ? 'pool' : 'native')
  })

  it('copies cached bytes exactly, short at the end of the file, nothing past it', () => {
    const data = crypto.randomBytes(3 * 4096 + 100)
    const file = path.join(dir, 'cached')
    fs.writeFileSync(file, data)
    const fd = fs.openSync(file, 'r')
    try {
      const out = Buffer.alloc(8192, 0xee)
      const n = readCached(fd, out, 1000, 4096, 4096)
      if (nativeIoEngine === 'pool') {
        expect(n).toBe(0)
        return
      }
      expect(n).toBe(4096)
      expect(out.subarray(1000, 5096).equals(data.subarray(4096, 8192))).toBe(true)
      expect(out[999]).toBe(0xee)
      expect(out[5096]).toBe(0xee)
      expect(readCached(fd, out, 0, 4096, 3 * 4096)).toBe(100)
      expect(readCached(fd, out, 0, 4096, 1 << 20)).toBe(0)
    } finally {
      fs.closeSync(fd)
    }
  })

  it('copies nothing from a file whose pages are not cached; readFullCached reads them through the pool', async () => {
    const data = crypto.randomBytes(64 * 1024)
    const file = uncachedFile('cold', data)
    const fh = await RawFile.open(file, 'r')
    try {
      const probe = Buffer.alloc(4096)
      expect(readCached(fh.fd, probe, 0, 4096, 32 * 1024)).toBe(0)
      const out = Buffer.alloc(data.length)
      expect(await fh.readFullCached(out, 0, data.length, 0)).toBe(data.length)
      expect(out.equals(data)).toBe(true)
      // now cached: the same read is served on this thread
      if (nativeIoEngine === 'native') expect(readCached(fh.fd, probe, 0, 4096, 32 * 1024)).toBe(4096)
    } finally {
      await fh.close()
    }
  })

  it('the addon refuses bad arguments instead of touching memory out of bounds', () => {
    if (!fs.existsSync(addonFile)) {
      expect(process.env.TESS_IO).toBe('pool')
      return
    }
    const b = createRequire(import.meta.url)(addonFile) as { preadNowait: (...a: unknown[]) => number }
    const buf = Buffer.alloc(16)
    expect(() => b.preadNowait(0, buf, 0, 17, 0)).toThrow(/length out of range/)
    expect(() => b.preadNowait(0, buf, 17, 0, 0)).toThrow(/offset out of range/)
    expect(() => b.preadNowait(0, buf, 8, 9, 0)).toThrow(/length out of range/)
    expect(() => b.preadNowait(0, 'x', 0, 1, 0)).toThrow(/Uint8Array/)
    expect(() => b.preadNowait(-1, buf, 0, 1, 0)).toThrow(/fd/)
    expect(() => b.preadNowait(0, buf, 0, 1, -1)).toThrow(/position/)
    expect(() => b.preadNowait(0, buf, 0.5, 1, 0)).toThrow(/offset/)
    expect(() => b.preadNowait(0, buf)).toThrow(/5 arguments/)
    // a bad descriptor is an errno, not a crash
    expect(b.preadNowait(1 << 30, buf, 0, 1, 0)).toBe(-9)
  })
})
