import crypto from 'node:crypto'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import { fsyncDir } from '../fsutil.js'
import { KeyedMutex } from '../mutex.js'
import { TessError, assert, errorMessage } from '../errors.js'
import { Digester, parseDigest, type DigestAlgorithm } from './digest.js'
import { imageIndexRecordsMax, storeReadBufferBytes } from './limits.js'

/**
 * The content store of one node: blobs keyed by digest, verified before they are stored
 * (containerd's habit). Layout under `root`:
 *
 *   blobs/sha256/<hex>      verified blobs (layers, configs, manifests), read-only files
 *   ingest/sha256-<hex>     a download in progress, kept after an interruption so the next try resumes
 *   images.json             reference -> manifest, config and layer digests (written atomically)
 *
 * A blob is written to ingest/, hashed as it is written, compared with the expected digest (and
 * size when known), fsynced and renamed into blobs/. Bytes that do not match are never stored.
 * One process writes a store root: the node's image worker (a child of the CVM) writes blobs, the CVM
 * alone writes images.json, CSM daemons only read; inside it, ingests of the same digest are serialised.
 */

export interface BlobInfo {
  digest: string
  size: number
}

export interface ExpectedBlob {
  digest: string
  /** when known (from a descriptor), more bytes are refused as they arrive and fewer at commit */
  size?: number
}

export interface ImageLayerRecord {
  digest: string
  diffId: string
  size: number
  mediaType: string
}

export interface ImageRecord {
  /** canonical reference, `registry/repository:tag` or `registry/repository@digest` */
  ref: string
  /** digest of the image manifest (for a multi-platform image: the platform's manifest) */
  digest: string
  /** digest of the index the tag pointed at, when it was an index */
  indexDigest?: string
  mediaType: string
  configDigest: string
  layers: ImageLayerRecord[]
  /** compressed size: manifest + config + layers */
  sizeBytes: number
  platform: string
  pulledAt: string
}

interface ImagesFile {
  version: 1
  images: Record<string, ImageRecord>
}

/** A download in progress; `offset` is how many bytes it already holds (the resume point). */
export interface Ingest {
  readonly expected: ExpectedBlob
  readonly offset: number
  write(chunk: Uint8Array): Promise<void>
  /** drop what was written (the source could not resume) */
  reset(): Promise<void>
}

export class ContentStore {
  readonly root: string
  private readonly locks = new KeyedMutex()
  private imagesChain: Promise<unknown> = Promise.resolve()

  constructor(root: string) {
    this.root = path.resolve(root)
  }

  /** Create the directories; call once before use. */
  async init(): Promise<this> {
    for (const d of ['blobs/sha256', 'blobs/sha512', 'ingest']) await fsp.mkdir(path.join(this.root, d), { recursive: true, mode: 0o700 })
    return this
  }

  /** Path of a stored blob (whether or not it exists). */
  path(digest: string): string {
    const { algorithm, hex } = parseDigest(digest, 'blob digest')
    return path.join(this.root, 'blobs', algorithm, hex)
  }

  private ingestPath(digest: string): string {
    const { algorithm, hex } = parseDigest(digest, 'blob digest')
    return path.join(this.root, 'ingest', `${algorithm}-${hex}`)
  }

  async has(digest: string): Promise<boolean> {
    return (await this.stat(digest)) !== undefined
  }

  async stat(digest: string): Promise<BlobInfo | undefined> {
    try {
      const st = await fsp.stat(this.path(digest))
      return { digest, size: st.size }
    } catch (e) {
      if (code(e) === 'ENOENT') return undefined
      throw ioError(`cannot read blob ${digest}`, e)
    }
  }

  /** Read a whole (small) blob and verify it again: manifests and configs. */
  async readBlob(digest: string, sizeMaxBytes: number): Promise<Buffer> {
    const info = await this.stat(digest)
    if (info === undefined) throw new TessError('TESS_E_NOT_FOUND', `cannot read blob ${digest}: not in the content store ${this.root}`, 'pull the image again')
    if (info.size > sizeMaxBytes) throw new TessError('TESS_E_INVALID', `cannot read blob ${digest}: ${info.size} bytes, more than ${sizeMaxBytes}`, 'this blob is not a manifest or config')
    const bytes = await fsp.readFile(this.path(digest))
    const d = new Digester(parseDigest(digest).algorithm)
    d.update(bytes)
    if (d.digest() !== digest) {
      throw new TessError('TESS_E_IO', `blob ${digest} in the content store is corrupt: it hashes to ${d.digest()}`, `delete ${this.path(digest)} and pull the image again`)
    }
    return bytes
  }

  /** Store bytes held in memory (a manifest or config), verified against `expected` when given. */
  async putBytes(bytes: Uint8Array, expected?: ExpectedBlob, source?: string): Promise<BlobInfo> {
    let exp = expected
    if (exp === undefined) {
      const d = new Digester()
      d.update(bytes)
      exp = { digest: d.digest(), size: bytes.length }
    }
    return this.ingest(exp, async (ing) => {
      if (ing.offset > 0) await ing.reset()
      await ing.write(bytes)
    }, source)
  }

  /**
   * Ingest one blob: `fill` writes its bytes (from `ing.offset` on, when a partial download is
   * kept; it may call `ing.reset()` to start over). Then the bytes are verified, fsynced and
   * renamed into place. If the blob is already stored, `fill` is not called. If `fill` throws,
   * the partial download stays in ingest/ for the next try; if the bytes do not match the
   * digest, the partial is deleted and TESS_E_INVALID names the expected and actual digests.
   * `source` names where the bytes came from, for messages.
   */
  async ingest(expected: ExpectedBlob, fill: (ing: Ingest) => Promise<void>, source?: string): Promise<BlobInfo> {
    const { algorithm } = parseDigest(expected.digest, 'blob digest')
    return this.locks.run(expected.digest, async () => {
      const existing = await this.stat(expected.digest)
      if (existing !== undefined) return existing
      const file = this.ingestPath(expected.digest)
      const fh = await fsp.open(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600).catch((e: unknown) => { throw ioError(`cannot open ingest file ${file}`, e) })
      let closed = false
      const closeFh = async () => {
        if (!closed) {
          closed = true
          await fh.close()
        }
      }
      try {
        const what = `blob ${expected.digest}${source !== undefined ? ` from ${source}` : ''}`
        const state = await resumeState(fh, algorithm, expected)
        const ing = new IngestImpl(fh, expected, state.digester, what, () => fh.truncate(0))
        await fill(ing)
        const actual = ing.digester.digest()
        const size = ing.digester.bytes
        if (actual !== expected.digest || (expected.size !== undefined && size !== expected.size)) {
          await closeFh()
          await fsp.rm(file, { force: true })
          const sizeNote = expected.size !== undefined && size !== expected.size ? ` (${size} bytes, ${expected.size} expected)` : ''
          throw new TessError('TESS_E_INVALID',
            `cannot store ${what}: its content does not match its digest: expected ${expected.digest}, actual ${actual}${sizeNote}`,
            'the registry served corrupted or tampered content; nothing was stored. Check the registry storage, then pull again')
        }
        await fh.sync()
        await fh.chmod(0o444)
        await closeFh()
        const dest = this.path(expected.digest)
        await fsp.rename(file, dest)
        await fsyncDir(path.dirname(dest))
        return { digest: expected.digest, size }
      } finally {
        await closeFh()
      }
    })
  }

  /** Partial downloads waiting in ingest/: digest and bytes held. */
  async listIngests(): Promise<BlobInfo[]> {
    const out: BlobInfo[] = []
    for (const name of await readdirOrEmpty(path.join(this.root, 'ingest'))) {
      const m = /^(sha256|sha512)-([a-f0-9]+)$/.exec(name)
      if (m === null) continue
      const st = await fsp.stat(path.join(this.root, 'ingest', name)).catch(() => undefined) // removed meanwhile: nothing to clean
      if (st !== undefined) out.push({ digest: `${m[1]}:${m[2]}`, size: st.size })
    }
    return out
  }

  /** Delete a blob (and any partial download of it); true if the blob existed. */
  async delete(digest: string): Promise<boolean> {
    return this.locks.run(digest, async () => {
      await fsp.rm(this.ingestPath(digest), { force: true })
      try {
        await fsp.unlink(this.path(digest))
        await fsyncDir(path.dirname(this.path(digest)))
        return true
      } catch (e) {
        if (code(e) === 'ENOENT') return false
        throw ioError(`cannot delete blob ${digest}`, e)
      }
    })
  }

  async list(): Promise<BlobInfo[]> {
    const out: BlobInfo[] = []
    for (const algorithm of ['sha256', 'sha512'] as const) {
      const dir = path.join(this.root, 'blobs', algorithm)
      for (const hex of await readdirOrEmpty(dir)) {
        const st = await fsp.stat(path.join(dir, hex)).catch(() => undefined) // removed meanwhile: nothing to count
        if (st?.isFile() === true) out.push({ digest: `${algorithm}:${hex}`, size: st.size })
      }
    }
    return out.sort((a, b) => a.digest.localeCompare(b.digest))
  }

  async totalSizeBytes(): Promise<number> {
    return (await this.list()).reduce((n, b) => n + b.size, 0)
  }

  // ---- images.json ----

  get imagesFile(): string {
    return path.join(this.root, 'images.json')
  }

  async listImages(): Promise<ImageRecord[]> {
    const f = await this.readImages()
    return Object.values(f.images).sort((a, b) => a.ref.localeCompare(b.ref))
  }

  async getImage(ref: string): Promise<ImageRecord | undefined> {
    return (await this.readImages()).images[ref]
  }

  async putImage(rec: ImageRecord): Promise<void> {
    await this.updateImages((f) => {
      if (!(rec.ref in f.images) && Object.keys(f.images).length >= imageIndexRecordsMax) {
        throw new TessError('TESS_E_CAPACITY', `cannot record image ${rec.ref}: the image index holds ${imageIndexRecordsMax} images already`, 'remove unused images first')
      }
      f.images[rec.ref] = rec
    })
  }

  async removeImage(ref: string): Promise<boolean> {
    let found = false
    await this.updateImages((f) => {
      found = ref in f.images
      delete f.images[ref]
    })
    return found
  }

  private async readImages(): Promise<ImagesFile> {
    let text: string
    try {
      text = await fsp.readFile(this.imagesFile, 'utf8')
    } catch (e) {
      if (code(e) === 'ENOENT') return { version: 1, images: {} }
      throw ioError(`cannot read the image index ${this.imagesFile}`, e)
    }
    try {
      const f = JSON.parse(text) as ImagesFile
      assert(f.version === 1 && typeof f.images === 'object' && f.images !== null, 'images.json version 1')
      return f
    } catch (e) {
      throw new TessError('TESS_E_IO', `cannot read the image index ${this.imagesFile}: ${errorMessage(e)}`, 'the file is damaged; move it away and pull the images again')
    }
  }

  /** Read-modify-write of images.json, serialised in this process; the write is atomic. */
  private async updateImages(mutate: (f: ImagesFile) => void): Promise<void> {
    const run = this.imagesChain.then(async () => {
      const f = await this.readImages()
      mutate(f)
      await writeFileAtomic(this.imagesFile, `${JSON.stringify(f, null, 2)}\n`)
    })
    this.imagesChain = run.catch(() => undefined) // the chain only orders the writes; each caller gets its own result
    await run
  }
}

class IngestImpl implements Ingest {
  constructor(
    private readonly fh: fsp.FileHandle,
    readonly expected: ExpectedBlob,
    public digester: Digester,
    private readonly what: string,
    private readonly truncate: () => Promise<void>,
  ) {}

  get offset(): number {
    return this.digester.bytes
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.expected.size !== undefined && this.digester.bytes + chunk.length > this.expected.size) {
      await this.truncate()
      throw new TessError('TESS_E_INVALID', `cannot store ${this.what}: the source sent more than the ${this.expected.size} bytes its descriptor gives`,
        'the registry served content that does not match the manifest; nothing was stored')
    }
    let done = 0
    try {
      while (done < chunk.length) {
        const { bytesWritten } = await this.fh.write(chunk, done, chunk.length - done, this.digester.bytes + done)
        done += bytesWritten
      }
    } catch (e) {
      // what was written stays: the next pull hashes it again and resumes after it
      throw ioError(`cannot store ${this.what}`, e)
    }
    this.digester.update(chunk)
  }

  async reset(): Promise<void> {
    await this.truncate()
    this.digester = new Digester(this.digester.algorithm)
  }
}

/** Hash what a kept partial download holds, so the download resumes after it. */
async function resumeState(fh: fsp.FileHandle, algorithm: DigestAlgorithm, expected: ExpectedBlob): Promise<{ digester: Digester }> {
  const digester = new Digester(algorithm)
  const st = await fh.stat()
  if (st.size === 0) return { digester }
  if (expected.size !== undefined && st.size > expected.size) {
    await fh.truncate(0)
    return { digester }
  }
  const buf = Buffer.allocUnsafe(storeReadBufferBytes)
  let pos = 0
  while (pos < st.size) {
    const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, st.size - pos), pos)
    if (bytesRead === 0) break
    digester.update(buf.subarray(0, bytesRead))
    pos += bytesRead
  }
  if (pos !== st.size) {
    await fh.truncate(0)
    return { digester: new Digester(algorithm) }
  }
  return { digester }
}

/** Write a file atomically: temp file in the same directory, fsync, rename, fsync the directory. */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`
  const fh = await fsp.open(tmp, 'w', mode)
  try {
    await fh.writeFile(data)
    await fh.sync()
  } finally {
    await fh.close()
  }
  try {
    await fsp.rename(tmp, file)
  } catch (e) {
    await fsp.rm(tmp, { force: true })
    throw ioError(`cannot write ${file}`, e)
  }
  await fsyncDir(path.dirname(file))
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return await fsp.readdir(dir)
  } catch (e) {
    if (code(e) === 'ENOENT') return []
    throw ioError(`cannot list ${dir}`, e)
  }
}

function code(e: unknown): string | undefined {
  return e !== null && typeof e === 'object' && 'code' in e ? String((e as { code: unknown }).code) : undefined
}

function ioError(action: string, e: unknown): TessError {
  if (e instanceof TessError) return e
  const c = code(e)
  if (c === 'ENOSPC' || c === 'EDQUOT') return new TessError('TESS_E_CAPACITY', `${action}: the disk is full`, 'free space on the disk that holds the image store')
  return new TessError('TESS_E_IO', `${action}: ${errorMessage(e)}`, 'check the disk and permissions of the image store')
}
