import { spawn } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import { pipeline } from 'node:stream/promises'
import { PassThrough, Readable, Writable } from 'node:stream'
import zlib from 'node:zlib'
import { KeyedMutex } from '../mutex.js'
import { TessError, errorMessage } from '../errors.js'
import { Digester, parseDigest } from './digest.js'
import { layerCompressionRatioMax, layerFreeSpaceMarginBytes, layerRatioCheckAfterBytes, layerSyncConcurrency, layerUncompressedMaxBytes, tarEntriesMax, tarExtractTimeoutMs, tarWhiteoutsMax, unpackToolTimeoutMs } from './limits.js'
import { fsyncDir, fsyncTree } from '../fsutil.js'
import { writeFileAtomic } from './store.js'
import { TarReader, archiveEnd, entryHeaders, entryPadding, writeTar, type TarEntry, type TarWriteEntry } from './tar.js'

/**
 * The layer store of one node: every layer unpacked ONCE into a directory usable as an overlayfs
 * lowerdir, keyed by its diff_id (the digest of the uncompressed tar). Layout under `root`:
 *
 *   sha256/<hex>/fs/          the layer's tree (the lowerdir)
 *   sha256/<hex>/layer.json   marker: diffId, blob digest, counts; written before the rename
 *   tmp/<random>/             an unpack in progress; renamed to sha256/<hex> when complete
 *
 * A layer directory exists under sha256/ only complete (rename is atomic); leftovers in tmp/ are
 * removed by init(). A layer's tree does not depend on the layers under it, so the diff_id is
 * key enough: the same layer under different parents is unpacked once.
 *
 * How (npm `tar` is not a dependency of this repo): two passes over the blob, one parser.
 *  1. Node reads the decompressed stream, hashes it (diff_id) and reads every tar header with our
 *     own reader (tar.ts), and refuses: absolute names (except the root itself, `/`), `..`,
 *     entries under a symlink or non-directory of the same layer, a non-directory whose name ends
 *     in `/`, hard links to anything outside the layer, relative symlinks that climb above the
 *     layer root, device nodes, sparse and multi-volume entries, more than the limits, more
 *     uncompressed bytes than `layerUncompressedMaxBytes` or a compression ratio above
 *     `layerCompressionRatioMax` (a decompression bomb stops early). The diff_id must equal the
 *     image config's rootfs.diff_ids entry. Nothing touches the disk before this; then the layer
 *     store's file system must have room for the layer's files (plus a margin).
 *  2. The same reader reads the stream again (hashed again), and every entry it reports is
 *     written anew by our tar writer, as a canonical archive (pax and ustar headers we make,
 *     normalised names, whiteout markers left out), which GNU tar extracts into tmp/. GNU tar
 *     never reads a byte of the layer: two parsers cannot disagree about what it holds. Owners,
 *     modes, mtimes, symlinks, hard links, FIFOs and user.* / security.capability xattrs are kept
 *     (`--same-owner --same-permissions --numeric-owner --no-overwrite-dir --xattrs`); other
 *     xattrs of the layer (trusted.* among them) are not written, so a layer cannot smuggle overlay
 *     metadata in.
 *
 * Whiteouts become what overlayfs honours in a lowerdir (verified with a real mount on this
 * kernel): `.wh.<name>` becomes a character device 0/0 named <name>, and `.wh..wh..opq` becomes
 * the xattr trusted.overlay.opaque="y" on its directory. Node can neither mknod nor set xattrs,
 * so these are written as a small generated tar that GNU tar extracts (one process, no extra
 * package). A whiteout of a name the same layer also holds is dropped (the OCI rule: a whiteout
 * only hides lower layers). Other `.wh..wh.*` names (aufs metadata) are removed.
 */

export interface UnpackedLayer {
  diffId: string
  /** the directory to use as a lowerdir */
  path: string
  blobDigest?: string
  /** sum of regular file sizes */
  sizeBytes: number
  entries: number
  whiteouts: number
  opaqueDirs: number
  unpackedAt: string
}

export interface LayerStoreOptions {
  /** GNU tar binary (default `tar` on PATH) */
  tarBin?: string
  /** bounds of one layer (defaults in limits.ts; tests pass small ones) */
  limits?: Partial<LayerLimits>
  /** free bytes of the file system holding `dir` (default: statfs) */
  freeBytes?: (dir: string) => Promise<number>
}

export interface LayerLimits {
  uncompressedMaxBytes: number
  compressionRatioMax: number
  /** the ratio is checked once this many uncompressed bytes were read (small layers compress well) */
  ratioCheckAfterBytes: number
  freeSpaceMarginBytes: number
}

const defaultLayerLimits: LayerLimits = {
  uncompressedMaxBytes: layerUncompressedMaxBytes,
  compressionRatioMax: layerCompressionRatioMax,
  ratioCheckAfterBytes: layerRatioCheckAfterBytes,
  freeSpaceMarginBytes: layerFreeSpaceMarginBytes,
}

async function statfsFreeBytes(dir: string): Promise<number> {
  const st = await fsp.statfs(dir)
  return Number(st.bavail) * Number(st.bsize)
}

/** xattrs of a layer that are written; everything else (trusted.*, security.selinux, ...) is dropped */
function keptXattr(name: string): boolean {
  return name.startsWith('user.') || name === 'security.capability'
}

export interface UnpackOptions {
  /** digest of the compressed blob, recorded in the marker and named in messages */
  blobDigest?: string
  signal?: AbortSignal
}

interface LayerPlan {
  entries: number
  sizeBytes: number
  /** paths (relative, normalised) -> type after the last entry of each path */
  types: Map<string, TarEntry['type']>
  whiteouts: Array<{ dir: string, name: string }>
  opaques: Set<string>
  /** `.wh.*` files to delete after extraction */
  markers: string[]
}

const opaqueMarker = '.wh..wh..opq'
/** canonical archive bytes buffered for GNU tar before the reader waits */
const canonicalBufferBytes = 1024 * 1024
const whiteoutPrefix = '.wh.'

export class LayerStore {
  readonly root: string
  private readonly tarBin: string
  private readonly locks = new KeyedMutex()
  private readonly limits: LayerLimits
  private readonly freeBytes: (dir: string) => Promise<number>

  constructor(root: string, opts: LayerStoreOptions = {}) {
    this.root = path.resolve(root)
    this.tarBin = opts.tarBin ?? 'tar'
    this.limits = { ...defaultLayerLimits, ...opts.limits }
    this.freeBytes = opts.freeBytes ?? statfsFreeBytes
  }

  /** Create the directories and remove unpacks a crash left in tmp/. */
  async init(): Promise<this> {
    await fsp.mkdir(path.join(this.root, 'sha256'), { recursive: true, mode: 0o700 })
    await fsp.mkdir(path.join(this.root, 'sha512'), { recursive: true, mode: 0o700 })
    await fsp.rm(path.join(this.root, 'tmp'), { recursive: true, force: true })
    await fsp.mkdir(path.join(this.root, 'tmp'), { mode: 0o700 })
    return this
  }

  private layerDir(diffId: string): string {
    const { algorithm, hex } = parseDigest(diffId, 'layer diff_id')
    return path.join(this.root, algorithm, hex)
  }

  /** The lowerdir of a layer (whether or not it is unpacked). */
  path(diffId: string): string {
    return path.join(this.layerDir(diffId), 'fs')
  }

  async get(diffId: string): Promise<UnpackedLayer | undefined> {
    let text: string
    try {
      text = await fsp.readFile(path.join(this.layerDir(diffId), 'layer.json'), 'utf8')
    } catch {
      return undefined
    }
    try {
      const m = JSON.parse(text) as UnpackedLayer
      if (m.diffId !== diffId) return undefined
      return { ...m, path: this.path(diffId) }
    } catch {
      return undefined
    }
  }

  async has(diffId: string): Promise<boolean> {
    return (await this.get(diffId)) !== undefined
  }

  async list(): Promise<UnpackedLayer[]> {
    const out: UnpackedLayer[] = []
    for (const algorithm of ['sha256', 'sha512']) {
      const names = await fsp.readdir(path.join(this.root, algorithm)).catch(() => [] as string[]) // no layers of that algorithm yet
      for (const hex of names) {
        const l = await this.get(`${algorithm}:${hex}`).catch(() => undefined) // a layer that is not whole is not listed (pull again unpacks it)
        if (l !== undefined) out.push(l)
      }
    }
    return out
  }

  /** Remove a layer: renamed into tmp/ first, so a half-removed layer never looks complete. */
  async remove(diffId: string): Promise<boolean> {
    return this.locks.run(diffId, async () => {
      const dir = this.layerDir(diffId)
      const trash = path.join(this.root, 'tmp', `rm-${crypto.randomBytes(6).toString('hex')}`)
      try {
        await fsp.rename(dir, trash)
      } catch (e) {
        if ((e as { code?: string }).code === 'ENOENT') return false
        throw new TessError('TESS_E_IO', `cannot remove layer ${diffId}: ${errorMessage(e)}`, 'check the layer store directory')
      }
      await fsyncDir(path.dirname(dir))
      await fsp.rm(trash, { recursive: true, force: true })
      return true
    })
  }

  /**
   * Unpack the layer blob at `blobPath` (gzip or plain tar) whose uncompressed digest must be
   * `diffId`. Returns at once if the layer is unpacked already.
   */
  async unpack(blobPath: string, diffId: string, opts: UnpackOptions = {}): Promise<UnpackedLayer & { cached: boolean }> {
    parseDigest(diffId, 'layer diff_id')
    return this.locks.run(diffId, async () => {
      const existing = await this.get(diffId)
      if (existing !== undefined) return { ...existing, cached: true }
      const what = `layer ${opts.blobDigest ?? diffId}`
      const plan = await scanLayer(blobPath, diffId, what, this.limits)
      const free = await this.freeBytes(this.root)
      if (free < plan.sizeBytes + this.limits.freeSpaceMarginBytes) {
        throw new TessError('TESS_E_CAPACITY', `cannot unpack ${what}: its files take ${plan.sizeBytes} bytes and the layer store has ${free} bytes free (${this.limits.freeSpaceMarginBytes} are kept free)`,
          'free space on the disk that holds the layer store (remove unused images: tess image remove)')
      }
      const tmp = await fsp.mkdtemp(path.join(this.root, 'tmp', 'unpack-'))
      try {
        const fsDir = path.join(tmp, 'fs')
        await fsp.mkdir(fsDir, { mode: 0o755 })
        await this.extract(blobPath, fsDir, diffId, what, opts.signal)
        await this.convertWhiteouts(fsDir, plan, what)
        const marker: UnpackedLayer = {
          diffId,
          path: '',
          ...(opts.blobDigest !== undefined ? { blobDigest: opts.blobDigest } : {}),
          sizeBytes: plan.sizeBytes,
          entries: plan.entries,
          whiteouts: plan.whiteouts.length,
          opaqueDirs: plan.opaques.size,
          unpackedAt: new Date().toISOString(),
        }
        await writeFileAtomic(path.join(tmp, 'layer.json'), `${JSON.stringify(marker, null, 2)}\n`, 0o644)
        // the tree's own files, not syncfs: that would write back the whole file system, the CVM's
        // dirty extent groups with it (measured: 4k writes kept 0.53x of their rate beside pulls
        // with syncfs, 0.67x without it)
        try {
          await fsyncTree(tmp, layerSyncConcurrency)
        } catch (e) {
          throw new TessError('TESS_E_IO', `cannot sync ${what}: ${errorMessage(e)}`, 'check the disk that holds the layer store')
        }
        const dest = this.layerDir(diffId)
        try {
          await fsp.rename(tmp, dest)
        } catch (e) {
          const c = (e as { code?: string }).code
          if ((c === 'ENOTEMPTY' || c === 'EEXIST') && (await this.get(diffId)) !== undefined) {
            // another process finished the same layer first
            await fsp.rm(tmp, { recursive: true, force: true })
            return { ...(await this.get(diffId))!, cached: true }
          }
          throw e
        }
        await fsyncDir(path.dirname(dest))
        return { ...marker, path: this.path(diffId), cached: false }
      } catch (e) {
        await fsp.rm(tmp, { recursive: true, force: true }).catch(() => undefined) // cleanup after the error thrown below
        if (e instanceof TessError) throw e
        throw new TessError('TESS_E_IO', `cannot unpack ${what}: ${errorMessage(e)}`, 'check the disk that holds the layer store')
      }
    })
  }

  /**
   * Pass 2: our reader reads the decompressed stream again (hashed again) and every entry is
   * written anew as a canonical archive that GNU tar extracts; whiteout markers and the root
   * entry are left out (convertWhiteouts makes the whiteouts).
   */
  private async extract(blobPath: string, dir: string, diffId: string, what: string, signal: AbortSignal | undefined): Promise<void> {
    const args = [
      '--extract', '--file=-', `--directory=${dir}`,
      '--numeric-owner', '--same-owner', '--same-permissions', '--no-overwrite-dir',
      '--xattrs', '--xattrs-include=user.*', '--xattrs-include=security.capability',
      '--no-acls', '--no-selinux',
    ]
    const digester = new Digester(parseDigest(diffId).algorithm)
    const source = await openDecompressed(blobPath, what)
    const canonical = new PassThrough({ highWaterMark: canonicalBufferBytes })
    const reader = canonicalRewriter(canonical, what)
    const feeding = pipeline(source, new Writable({
      write(chunk: Buffer, _enc, cb) {
        try {
          digester.update(chunk)
          reader.push(chunk)
        } catch (e) {
          cb(e as Error)
          return
        }
        // bounded memory: wait while GNU tar has not taken what was written
        if (canonical.writableNeedDrain) canonical.once('drain', () => cb())
        else cb()
      },
      final(cb) {
        try {
          reader.end()
          canonical.end(archiveEnd())
          cb()
        } catch (e) {
          cb(e as Error)
        }
      },
    })).catch((e: unknown) => {
      canonical.destroy(e instanceof Error ? e : new Error(errorMessage(e)))
      throw e
    })
    const extracting = this.run(this.tarBin, args, canonical, tarExtractTimeoutMs, `cannot unpack ${what}`, signal)
    // GNU tar gone (failed, killed): stop reading the blob too
    extracting.catch(() => source.destroy())
    await Promise.all([extracting, feeding])
    if (digester.digest() !== diffId) {
      throw new TessError('TESS_E_INVALID', `cannot unpack ${what}: its content changed while it was unpacked: expected ${diffId}, actual ${digester.digest()}`,
        'the blob in the content store was modified; delete it and pull again')
    }
  }

  /** Turn OCI whiteouts into overlayfs whiteouts (char 0/0) and opaque directories (xattr). */
  private async convertWhiteouts(fsDir: string, plan: LayerPlan, what: string): Promise<void> {
    if (plan.markers.length === 0) return
    const touched = new Set<string>()
    for (const m of plan.markers) touched.add(path.posix.dirname(m) === '.' ? '' : path.posix.dirname(m))
    const times = new Map<string, fs.Stats>()
    for (const d of touched) {
      // the markers were not extracted: a directory the layer names only through them is made here
      // (as GNU tar makes the missing parents of an entry)
      await fsp.mkdir(path.join(fsDir, d), { recursive: true, mode: 0o755 })
      times.set(d, await fsp.lstat(path.join(fsDir, d)))
    }
    const gen: TarWriteEntry[] = []
    for (const d of plan.opaques) {
      const st = await fsp.lstat(path.join(fsDir, d))
      gen.push({ name: d === '' ? './' : `${d}/`, type: 'dir', mode: st.mode, uid: st.uid, gid: st.gid, mtime: Math.floor(st.mtimeMs / 1000), xattrs: { 'trusted.overlay.opaque': 'y' } })
    }
    for (const w of plan.whiteouts) {
      const rel = w.dir === '' ? w.name : `${w.dir}/${w.name}`
      if (plan.types.has(rel)) continue // the same layer holds the name: the whiteout only hid lower layers
      gen.push({ name: rel, type: 'char', mode: 0, uid: 0, gid: 0, mtime: Math.floor((times.get(w.dir)?.mtimeMs ?? 0) / 1000), devmajor: 0, devminor: 0 })
    }
    if (gen.length > 0) {
      await this.run(this.tarBin, ['--extract', '--file=-', `--directory=${fsDir}`, '--numeric-owner', '--same-owner', '--same-permissions',
        '--no-overwrite-dir', '--xattrs', '--xattrs-include=trusted.overlay.opaque'], Readable.from([writeTar(gen)]), unpackToolTimeoutMs, `cannot write the whiteouts of ${what}`)
    }
    for (const [d, st] of times) await fsp.utimes(path.join(fsDir, d), st.atime, st.mtime)
  }

  private run(bin: string, args: string[], input: Readable | undefined, timeoutMs: number, action: string, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const child = spawn(bin, args, {
        stdio: [input === undefined ? 'ignore' : 'pipe', 'ignore', 'pipe'],
        env: { ...process.env, LC_ALL: 'C.UTF-8' },
        ...(signal !== undefined ? { signal } : {}),
      })
      let stderr = ''
      child.stderr?.on('data', (d: Buffer) => { if (stderr.length < 4096) stderr += d.toString() })
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
      let inputError: unknown
      if (input !== undefined && child.stdin !== null) {
        pipeline(input, child.stdin).catch((e: unknown) => {
          inputError = e
          child.kill('SIGKILL')
        })
      }
      child.on('error', (e) => {
        clearTimeout(timer)
        const missing = (e as { code?: string }).code === 'ENOENT'
        reject(new TessError(missing ? 'TESS_E_PRECONDITION' : 'TESS_E_IO', `${action}: ${missing ? `${bin} is not installed` : errorMessage(e)}`,
          missing ? 'install GNU tar and coreutils (Debian packages tar, coreutils)' : 'check the layer store directory'))
      })
      child.on('close', (code, sig) => {
        clearTimeout(timer)
        if (code === 0 && inputError === undefined) return resolve()
        if (inputError instanceof TessError) return reject(inputError)
        const why = inputError !== undefined ? errorMessage(inputError) : stderr.trim().split('\n').slice(-3).join('; ') || `exit ${code ?? sig}`
        if (/No space left on device|Disk quota exceeded/.test(why)) {
          return reject(new TessError('TESS_E_CAPACITY', `${action}: the disk is full (${why})`, 'free space on the disk that holds the layer store'))
        }
        reject(new TessError('TESS_E_IO', `${action}: ${bin} failed: ${why}`, 'check the disk that holds the layer store'))
      })
    })
  }
}

/**
 * A tar reader that writes every entry it reads anew to `canonical` (our headers, normalised
 * names, the kept xattrs only, the file data and its padding); the root entry and whiteout
 * markers are left out. The caller ends `canonical` (archiveEnd) after the reader.
 */
function canonicalRewriter(canonical: Writable, what: string): TarReader {
  // the file entry whose data is being copied out: its size (for the padding) and what is left
  let copying: { size: number, left: number } | undefined
  return new TarReader((e) => {
    copying = undefined
    const p = normaliseEntryName(e.name, what)
    const base = p.split('/').pop() ?? ''
    // the root entry carries nothing to extract; whiteout markers become whiteouts later
    if (p === '' || (e.type === 'file' && base.startsWith(whiteoutPrefix))) return
    const xattrs: Record<string, Buffer> = {}
    for (const [k, v] of e.xattrValues) if (keptXattr(k)) xattrs[k] = v
    const out: Omit<TarWriteEntry, 'data'> = {
      name: e.type === 'dir' ? `${p}/` : p, type: e.type, mode: e.mode, uid: e.uid, gid: e.gid, mtime: e.mtime, xattrs,
      ...(e.type === 'hardlink' ? { linkname: normaliseEntryName(e.linkname, what) } : e.type === 'symlink' ? { linkname: e.linkname } : {}),
    }
    const size = e.type === 'file' ? e.size : 0
    canonical.write(entryHeaders(out, size))
    if (size > 0) copying = { size, left: size }
  }, (chunk) => {
    if (copying === undefined) return
    canonical.write(Buffer.from(chunk)) // the reader lends views of its input
    copying.left -= chunk.length
    if (copying.left === 0) {
      canonical.write(entryPadding(copying.size))
      copying = undefined
    }
  })
}

/** Open a layer blob as its uncompressed tar stream (gzip or plain; other compressions refused). */
export async function openDecompressed(blobPath: string, what: string): Promise<Readable> {
  const fh = await fsp.open(blobPath, 'r')
  const head = Buffer.alloc(6)
  try {
    await fh.read(head, 0, 6, 0)
  } finally {
    await fh.close()
  }
  const raw = fs.createReadStream(blobPath)
  if (head[0] === 0x1f && head[1] === 0x8b) {
    const gunzip = zlib.createGunzip()
    raw.on('error', (e) => gunzip.destroy(e))
    return raw.pipe(gunzip)
  }
  const compressed = head.readUInt32LE(0) === 0xfd2fb528 ? 'zstd' : head[0] === 0x42 && head[1] === 0x5a && head[2] === 0x68 ? 'bzip2'
    : head[0] === 0xfd && head.toString('latin1', 1, 6) === '7zXZ\0' ? 'xz' : undefined
  if (compressed !== undefined) {
    raw.destroy()
    throw new TessError('TESS_E_INVALID', `cannot unpack ${what}: it is ${compressed}-compressed`, 'only gzip-compressed and uncompressed tar layers are supported')
  }
  return raw
}

/** Normalise a tar entry name to a relative path ('' for the root); refuse absolute and `..`. */
export function normaliseEntryName(name: string, what: string): string {
  const refuse = (why: string) => new TessError('TESS_E_INVALID', `cannot unpack ${what}: entry "${name}" ${why}`,
    'the image is malformed or malicious; nothing of this layer was unpacked')
  const parts = name.split('/').filter((p) => p !== '' && p !== '.')
  // `/` itself is the layer root (as `umoci insert ... /` writes it); other absolute names are refused
  if (name.startsWith('/') && parts.length > 0) throw refuse('is an absolute path')
  if (parts.includes('..')) throw refuse('contains ".." and would leave the layer directory')
  if (name.includes('\0')) throw refuse('contains a NUL byte')
  return parts.join('/')
}

/**
 * Pass 1: read the layer's tar headers, hash the uncompressed stream and check it against
 * `diffId`; refuse what must not be extracted. Exported for tests.
 */
export async function scanLayer(blobPath: string, diffId: string, what: string, limits: LayerLimits = defaultLayerLimits): Promise<LayerPlan> {
  const plan: LayerPlan = { entries: 0, sizeBytes: 0, types: new Map(), whiteouts: [], opaques: new Set(), markers: [] }
  await readLayer(blobPath, diffId, what, limits, layerEntryCheck(plan, what))
  return plan
}

/**
 * The check of one tar entry of a layer, in order: refuses what must not be extracted (devices,
 * escapes through `..`, symlinks or hard links, a directory replaced by a file) and records the
 * entry in `plan` (its type by path, whiteouts and opaque markers, the bytes to extract).
 */
function layerEntryCheck(plan: LayerPlan, what: string): (e: TarEntry) => void {
  const refuse: EntryRefusal = (e, why) => new TessError('TESS_E_INVALID', `cannot unpack ${what}: entry "${e.name}" ${why}`,
    'the image is malformed or malicious; nothing of this layer was unpacked')
  /** no entry may be written through a symlink (or a non-directory) of the same layer */
  const checkParents = (e: TarEntry, p: string) => {
    const parts = p.split('/')
    for (let i = 1; i < parts.length; i++) {
      const parent = parts.slice(0, i).join('/')
      const t = plan.types.get(parent)
      if (t === 'symlink') throw refuse(e, `lies under the symlink "${parent}" and could be written outside the layer directory`)
      if (t !== undefined && t !== 'dir') throw refuse(e, `lies under "${parent}", which is not a directory`)
    }
  }
  return (e: TarEntry) => {
    plan.entries++
    if (plan.entries > tarEntriesMax) throw new TessError('TESS_E_INVALID', `cannot unpack ${what}: more than ${tarEntriesMax} entries`, 'the layer is too large to unpack')
    const p = normaliseEntryName(e.name, what)
    if (p === '') {
      if (e.type !== 'dir') throw refuse(e, 'names the layer root but is not a directory')
      return
    }
    // GNU tar would make a directory of it; what it is must not depend on who reads it
    if (e.type !== 'dir' && e.name.endsWith('/')) throw refuse(e, `is a ${e.type} whose name ends in "/"`)
    const parts = p.split('/')
    checkParents(e, p)
    if (plan.types.get(p) === 'dir' && e.type !== 'dir') throw refuse(e, `replaces the directory "${p}" of the same layer with a ${e.type}`)
    switch (e.type) {
      case 'char':
      case 'block':
        throw refuse(e, `is a ${e.type === 'char' ? 'character' : 'block'} device (${e.devmajor}:${e.devminor}); layers may not create device nodes`)
      case 'hardlink': {
        const target = normaliseEntryName(e.linkname, what)
        const t = plan.types.get(target)
        if (target === '' || t === undefined) throw refuse(e, `is a hard link to "${e.linkname}", which is not an earlier entry of the layer`)
        if (t === 'dir') throw refuse(e, `is a hard link to the directory "${e.linkname}"`)
        checkParents(e, target)
        break
      }
      case 'symlink':
        checkSymlinkTarget(e, parts, refuse)
        break
      case 'file':
        plan.sizeBytes += e.size
        if (recordWhiteoutMarker(plan, e, p, parts, refuse)) return // markers are not content: not recorded as paths of the layer
        break
      default:
        break
    }
    plan.types.set(p, e.type)
  }
}

/** How a layer entry is refused: the error, naming the layer (`what`) and the entry. */
type EntryRefusal = (e: TarEntry, why: string) => TessError

/** A symlink's target must not be empty, and a relative one must not climb above the layer root (`parts`: the link's path). */
function checkSymlinkTarget(e: TarEntry, parts: string[], refuse: EntryRefusal): void {
  if (e.linkname === '') throw refuse(e, 'is a symlink with an empty target')
  if (!e.linkname.startsWith('/')) {
    // relative targets resolve from the link's directory and must stay inside the layer root;
    // absolute targets resolve against the container's root, which is the overlay itself
    let depth = parts.length - 1
    for (const c of e.linkname.split('/')) {
      if (c === '..') depth--
      else if (c !== '' && c !== '.') depth++
      if (depth < 0) throw refuse(e, `is a symlink to "${e.linkname}", which leaves the layer directory`)
    }
  }
}

/**
 * A file entry at `p` (`parts`: its components) named `.wh.*` is a whiteout marker: it is counted
 * against tarWhiteoutsMax and recorded in `plan` (an opaque directory, a whiteout of a name, or
 * aufs metadata that is only removed); returns whether it was one.
 */
function recordWhiteoutMarker(plan: LayerPlan, e: TarEntry, p: string, parts: string[], refuse: EntryRefusal): boolean {
  const base = parts[parts.length - 1] ?? ''
  if (!base.startsWith(whiteoutPrefix)) return false
  const dir = parts.slice(0, -1).join('/')
  if (plan.markers.length >= tarWhiteoutsMax) throw refuse(e, `is whiteout number ${tarWhiteoutsMax + 1}: too many whiteouts`)
  plan.markers.push(p)
  if (base === opaqueMarker) {
    plan.opaques.add(dir)
  } else if (!base.startsWith(`${whiteoutPrefix}${whiteoutPrefix}`)) {
    const name = base.slice(whiteoutPrefix.length)
    if (name === '' || name === '.' || name === '..') throw refuse(e, 'is a whiteout of its own directory or parent')
    plan.whiteouts.push({ dir, name })
  }
  return true
}

/**
 * Stream a layer blob through decompression, its tar reader (`onEntry` for each header) and its
 * digest; refuses decompression bombs and a digest other than `diffId`.
 */
async function readLayer(blobPath: string, diffId: string, what: string, limits: LayerLimits, onEntry: (e: TarEntry) => void): Promise<void> {
  const reader = new TarReader(onEntry)
  const digester = new Digester(parseDigest(diffId, 'layer diff_id').algorithm)
  const compressedBytes = (await fsp.stat(blobPath)).size
  const source = await openDecompressed(blobPath, what)
  let uncompressed = 0
  try {
    await pipeline(source, new Writable({
      write(chunk: Buffer, _enc, cb) {
        try {
          uncompressed += chunk.length
          if (uncompressed > limits.uncompressedMaxBytes) {
            throw new TessError('TESS_E_INVALID', `cannot unpack ${what}: more than ${limits.uncompressedMaxBytes} bytes uncompressed`,
              'the layer is too large, or a decompression bomb; nothing was unpacked')
          }
          if (uncompressed > limits.ratioCheckAfterBytes && uncompressed > compressedBytes * limits.compressionRatioMax) {
            throw new TessError('TESS_E_INVALID', `cannot unpack ${what}: ${uncompressed} bytes uncompressed from ${compressedBytes} compressed, more than ${limits.compressionRatioMax} times`,
              'a decompression bomb, or a layer of mostly zeros; nothing was unpacked')
          }
          digester.update(chunk)
          reader.push(chunk)
          cb()
        } catch (e) {
          cb(e as Error)
        }
      },
    }))
    reader.end()
  } catch (e) {
    if (e instanceof TessError) {
      if (e.message.startsWith('malformed tar')) throw new TessError('TESS_E_INVALID', `cannot unpack ${what}: ${e.message}`, e.hint)
      throw e
    }
    throw new TessError('TESS_E_INVALID', `cannot unpack ${what}: ${errorMessage(e)}`, 'the layer blob is damaged (bad gzip data?)')
  }
  const actual = digester.digest()
  if (actual !== diffId) {
    throw new TessError('TESS_E_INVALID', `cannot unpack ${what}: its uncompressed content does not match the image config's diff_id: expected ${diffId}, actual ${actual}`,
      'the image is inconsistent (its config lists other layers); nothing was unpacked')
  }
}

/** OCI ChainID of a stack of layers (bottom first), for callers that key stacks. */
export function chainId(diffIds: string[]): string {
  let chain = ''
  for (const d of diffIds) chain = chain === '' ? d : `sha256:${crypto.createHash('sha256').update(`${chain} ${d}`).digest('hex')}`
  return chain
}
