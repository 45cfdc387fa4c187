import { TessError } from '../errors.js'
import { tarPathLengthMaxBytes, tarPaxHeaderSizeMaxBytes } from './limits.js'

/**
 * A streaming reader of tar archives (ustar, GNU long names, pax), and a writer. The reader is the
 * one parser of a layer's bytes: unpack.ts checks every entry it reports, then writes what it
 * checked as a canonical archive of its own (this writer) for GNU tar to extract, so GNU tar
 * never reads a byte of the layer itself.
 */

export type TarEntryType = 'file' | 'hardlink' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo'

export interface TarEntry {
  /** the name as stored (pax path, GNU long name or ustar prefix/name) */
  name: string
  type: TarEntryType
  linkname: string
  size: number
  mode: number
  uid: number
  gid: number
  mtime: number
  devmajor: number
  devminor: number
  /** SCHILY.xattr.* names carried by a pax header */
  xattrs: string[]
  /** their values, as raw bytes (capabilities are binary) */
  xattrValues: Map<string, Buffer>
}

const blockBytes = 512

const typeFlags: Record<string, TarEntryType> = {
  '0': 'file', '\0': 'file', '7': 'file', '1': 'hardlink', '2': 'symlink', '3': 'char', '4': 'block', '5': 'dir', '6': 'fifo',
}

function bad(why: string): TessError {
  return new TessError('TESS_E_INVALID', `malformed tar archive: ${why}`, 'the layer is damaged or not a tar archive')
}

function readString(b: Buffer, off: number, len: number): string {
  let end = off
  while (end < off + len && b[end] !== 0) end++
  return b.toString('utf8', off, end)
}

function readNumber(b: Buffer, off: number, len: number, field: string): number {
  const first = b[off] ?? 0
  if ((first & 0x80) !== 0) {
    // base-256 (GNU): big-endian two's complement, first byte's top bit set
    if (first === 0xff) throw bad(`negative ${field}`)
    let v = first & 0x7f
    for (let i = 1; i < len; i++) {
      v = v * 256 + (b[off + i] ?? 0)
      if (!Number.isSafeInteger(v)) throw bad(`${field} too large`)
    }
    return v
  }
  const s = b.toString('latin1', off, off + len).replace(/[\0 ]+$/g, '').replace(/^[ \0]+/, '')
  if (s === '') return 0
  if (!/^[0-7]+$/.test(s)) throw bad(`${field} "${s}" is not octal`)
  const v = parseInt(s, 8)
  if (!Number.isSafeInteger(v)) throw bad(`${field} too large`)
  return v
}

function checksumOk(h: Buffer): boolean {
  const stored = readNumber(h, 148, 8, 'checksum')
  let unsigned = 0
  let signed = 0
  for (let i = 0; i < blockBytes; i++) {
    const byte = i >= 148 && i < 156 ? 0x20 : h[i] ?? 0
    unsigned += byte
    signed += byte > 127 ? byte - 256 : byte
  }
  return stored === unsigned || stored === signed
}

/** Parse pax records `"<len> <key>=<value>\n"`. */
export function parsePax(data: Buffer): Map<string, string> {
  const out = new Map<string, string>()
  for (const [k, v] of parsePaxRaw(data)) out.set(k, v.toString('utf8'))
  return out
}

/** Parse pax records, values as raw bytes. */
export function parsePaxRaw(data: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>()
  let pos = 0
  while (pos < data.length) {
    const sp = data.indexOf(0x20, pos)
    if (sp < 0) throw bad('pax record without a length')
    const len = Number(data.toString('latin1', pos, sp))
    if (!Number.isSafeInteger(len) || len <= sp - pos || pos + len > data.length) throw bad('pax record length out of range')
    const rec = data.subarray(sp + 1, pos + len - 1) // without the trailing newline
    const eq = rec.indexOf(0x3d)
    if (eq < 0) throw bad('pax record without "="')
    out.set(rec.toString('utf8', 0, eq), Buffer.from(rec.subarray(eq + 1)))
    pos += len
  }
  return out
}

type State =
  | { kind: 'header' }
  | { kind: 'meta', meta: 'pax' | 'global' | 'longname' | 'longlink', remaining: number, padding: number, chunks: Buffer[] }
  /** `content`: how many of the remaining bytes are the entry's data (the rest is padding) */
  | { kind: 'data', remaining: number, content: number }
  | { kind: 'end' }

/**
 * Feed it the uncompressed archive in chunks; it calls `onEntry` for every entry, in order.
 * Throws TESS_E_INVALID on anything malformed. `end()` checks the archive was complete.
 */
export class TarReader {
  private state: State = { kind: 'header' }
  private pending: Buffer = Buffer.alloc(0)
  private pax = new Map<string, string>()
  private paxRaw = new Map<string, Buffer>()
  private longName: string | undefined
  private longLink: string | undefined
  private zeroBlocks = 0
  entries = 0

  /** `onData`: the data of the last reported file entry, in order, as it arrives (views: copy to keep) */
  constructor(private readonly onEntry: (e: TarEntry) => void, private readonly onData?: (chunk: Buffer) => void) {}

  push(chunk: Buffer): void {
    let buf = this.pending.length > 0 ? Buffer.concat([this.pending, chunk]) : chunk
    this.pending = Buffer.alloc(0)
    while (buf.length > 0) {
      const st = this.state
      if (st.kind === 'end') return // trailing zeros (or garbage) after the end marker: ignored like tar does
      if (st.kind === 'data') {
        const n = Math.min(st.remaining, buf.length)
        const c = Math.min(st.content, n)
        if (c > 0 && this.onData) this.onData(buf.subarray(0, c))
        st.content -= c
        st.remaining -= n
        buf = buf.subarray(n)
        if (st.remaining === 0) this.state = { kind: 'header' }
        continue
      }
      if (st.kind === 'meta') {
        const n = Math.min(st.remaining, buf.length)
        st.chunks.push(Buffer.from(buf.subarray(0, n)))
        st.remaining -= n
        buf = buf.subarray(n)
        if (st.remaining === 0) {
          this.finishMeta(st.meta, Buffer.concat(st.chunks))
          this.state = st.padding > 0 ? { kind: 'data', remaining: st.padding, content: 0 } : { kind: 'header' }
        }
        continue
      }
      if (buf.length < blockBytes) {
        this.pending = Buffer.from(buf)
        return
      }
      const h = buf.subarray(0, blockBytes)
      buf = buf.subarray(blockBytes)
      this.header(h)
    }
  }

  /**
   * The input is complete. An archive may end at an entry boundary without its two zero blocks
   * (GNU tar, containerd and podman accept that; `umoci insert` writes it); one that ends inside
   * an entry, or inside a pax or long-name header, is refused.
   */
  end(): void {
    if (this.state.kind === 'end') return
    if (this.state.kind === 'header' && (this.pending.length === 0 || this.pending.every((b) => b === 0))) return
    throw bad('the archive ends in the middle of an entry')
  }

  private header(h: Buffer): void {
    if (h.every((b) => b === 0)) {
      this.zeroBlocks++
      if (this.zeroBlocks >= 2) this.state = { kind: 'end' }
      return
    }
    if (this.zeroBlocks > 0) throw bad('a zero block inside the archive')
    if (!checksumOk(h)) throw bad(`header checksum mismatch after ${this.entries} entries`)
    const flag = String.fromCharCode(h[156] ?? 0)
    const size = readNumber(h, 124, 12, 'size')
    const padding = (blockBytes - (size % blockBytes)) % blockBytes
    const metaKind = flag === 'x' ? 'pax' : flag === 'g' ? 'global' : flag === 'L' ? 'longname' : flag === 'K' ? 'longlink' : undefined
    if (metaKind !== undefined) {
      const max = metaKind === 'pax' || metaKind === 'global' ? tarPaxHeaderSizeMaxBytes : tarPathLengthMaxBytes
      if (size > max) throw bad(`${metaKind} header of ${size} bytes, more than ${max}`)
      if (size === 0) {
        this.finishMeta(metaKind, Buffer.alloc(0))
        return
      }
      this.state = { kind: 'meta', meta: metaKind, remaining: size, padding, chunks: [] }
      return
    }
    const type = typeFlags[flag]
    if (type === undefined) {
      const what = flag === 'S' ? 'a GNU sparse file' : flag === 'M' || flag === 'V' ? 'a multi-volume entry' : `type flag "${flag.replace(/[^\x20-\x7e]/g, '?')}"`
      throw bad(`unsupported entry: ${what}`)
    }
    const { entry, dataSize } = this.entryOf(h, type, size)
    if (Buffer.byteLength(entry.name) > tarPathLengthMaxBytes) throw bad(`an entry name longer than ${tarPathLengthMaxBytes} bytes`)
    this.pax = new Map()
    this.paxRaw = new Map()
    this.longName = undefined
    this.longLink = undefined
    this.entries++
    this.onEntry(entry)
    // hard links, directories and devices carry no data even when a size is written
    const skip = type === 'file' ? dataSize : 0
    const skipPadded = skip + ((blockBytes - (skip % blockBytes)) % blockBytes)
    if (skipPadded > 0) this.state = { kind: 'data', remaining: skipPadded, content: skip }
  }

  /**
   * The entry a header describes, with what earlier meta headers (pax, GNU long name and link)
   * say in place of its own fields; `dataSize` is the size of its data in the archive.
   */
  private entryOf(h: Buffer, type: TarEntry['type'], size: number): { entry: TarEntry, dataSize: number } {
    const magic = h.toString('latin1', 257, 263)
    let name = readString(h, 0, 100)
    if (magic === 'ustar\0') {
      const prefix = readString(h, 345, 155)
      if (prefix !== '') name = `${prefix}/${name}`
    }
    let linkname = readString(h, 157, 100)
    if (this.longName !== undefined) name = this.longName
    if (this.longLink !== undefined) linkname = this.longLink
    const pax = this.pax
    const paxPath = pax.get('path')
    if (paxPath !== undefined) name = paxPath
    const paxLink = pax.get('linkpath')
    if (paxLink !== undefined) linkname = paxLink
    let dataSize = size
    const paxSize = pax.get('size')
    if (paxSize !== undefined) {
      dataSize = Number(paxSize)
      if (!Number.isSafeInteger(dataSize) || dataSize < 0) throw bad(`pax size "${paxSize}"`)
    }
    if ([...pax.keys()].some((k) => k.startsWith('GNU.sparse.'))) throw bad(`unsupported entry: "${name}" is a GNU sparse file`)
    const num = (key: string, off: number, len: number, field: string): number => {
      const v = pax.get(key)
      if (v !== undefined) {
        const n = Math.floor(Number(v))
        if (!Number.isFinite(n)) throw bad(`pax ${key} "${v}"`)
        return n
      }
      return readNumber(h, off, len, field)
    }
    const entry: TarEntry = {
      name,
      type,
      linkname,
      size: type === 'file' ? dataSize : 0,
      mode: readNumber(h, 100, 8, 'mode'),
      uid: num('uid', 108, 8, 'uid'),
      gid: num('gid', 116, 8, 'gid'),
      mtime: num('mtime', 136, 12, 'mtime'),
      devmajor: type === 'char' || type === 'block' ? readNumber(h, 329, 8, 'devmajor') : 0,
      devminor: type === 'char' || type === 'block' ? readNumber(h, 337, 8, 'devminor') : 0,
      xattrs: [...pax.keys()].filter((k) => k.startsWith('SCHILY.xattr.')).map((k) => k.slice('SCHILY.xattr.'.length)),
      xattrValues: new Map([...this.paxRaw].filter(([k]) => k.startsWith('SCHILY.xattr.')).map(([k, v]) => [k.slice('SCHILY.xattr.'.length), v])),
    }
    return { entry, dataSize }
  }

  private finishMeta(kind: 'pax' | 'global' | 'longname' | 'longlink', data: Buffer): void {
    if (kind === 'pax') {
      for (const [k, v] of parsePaxRaw(data)) {
        this.pax.set(k, v.toString('utf8'))
        this.paxRaw.set(k, v)
      }
    } else if (kind === 'global') {
      // validated, then ignored: global path, size or owner make no sense in a layer. This reader
      // is the only one that reads the layer, so ignoring them is the layer's one meaning.
      parsePaxRaw(data)
    } else {
      const end = data.indexOf(0)
      const s = data.toString('utf8', 0, end < 0 ? data.length : end)
      if (kind === 'longname') this.longName = s
      else this.longLink = s
    }
  }
}

// ---- writer ----

export interface TarWriteEntry {
  name: string
  type: TarEntryType
  mode: number
  uid: number
  gid: number
  mtime: number
  /** target of a symlink or hard link */
  linkname?: string
  /** content of a regular file */
  data?: Buffer
  devmajor?: number
  devminor?: number
  xattrs?: Record<string, string | Buffer>
}

const writeFlags: Record<TarEntryType, string> = { file: '0', hardlink: '1', symlink: '2', char: '3', block: '4', dir: '5', fifo: '6' }

function writeOctal(h: Buffer, off: number, len: number, v: number): void {
  h.write(`${Math.max(0, Math.floor(v)).toString(8).padStart(len - 1, '0')}\0`, off, len, 'latin1')
}

function header(name: string, flag: string, size: number, e: { mode: number, uid: number, gid: number, mtime: number, devmajor?: number, devminor?: number }): Buffer {
  const h = Buffer.alloc(blockBytes)
  const short = Buffer.from(name, 'utf8').subarray(0, 99)
  short.copy(h, 0)
  writeOctal(h, 100, 8, e.mode & 0o7777)
  writeOctal(h, 108, 8, Math.min(e.uid, 0o7777777))
  writeOctal(h, 116, 8, Math.min(e.gid, 0o7777777))
  writeOctal(h, 124, 12, size)
  writeOctal(h, 136, 12, e.mtime)
  h.write(flag, 156, 1, 'latin1')
  h.write('ustar\0', 257, 6, 'latin1')
  h.write('00', 263, 2, 'latin1')
  writeOctal(h, 329, 8, e.devmajor ?? 0)
  writeOctal(h, 337, 8, e.devminor ?? 0)
  h.fill(0x20, 148, 156)
  let sum = 0
  for (const b of h) sum += b
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1')
  return h
}

function paxRecord(key: string, value: string | Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'utf8'), typeof value === 'string' ? Buffer.from(value, 'utf8') : value, Buffer.from('\n')])
  let len = body.length + 1
  while (String(len).length + body.length !== len) len = String(len).length + body.length
  return Buffer.concat([Buffer.from(String(len), 'latin1'), body])
}

function pad(b: Buffer): Buffer {
  const p = (blockBytes - (b.length % blockBytes)) % blockBytes
  return p === 0 ? b : Buffer.concat([b, Buffer.alloc(p)])
}

/**
 * A complete archive (names, link targets and xattrs in pax records, so any length works). Used
 * for the whiteouts we generate, and by tests to build layers.
 */
export function writeTar(entries: TarWriteEntry[]): Buffer {
  const parts: Buffer[] = []
  for (const e of entries) {
    const data = e.type === 'file' ? e.data ?? Buffer.alloc(0) : Buffer.alloc(0)
    parts.push(entryHeaders(e, data.length), data, entryPadding(data.length))
  }
  parts.push(archiveEnd())
  return Buffer.concat(parts)
}

/**
 * The headers of one entry whose data (`size` bytes, files only) follows: a pax header with its
 * name, link target, size and xattrs, then a ustar header. Stream an archive as headers, data,
 * entryPadding(size) per entry, then archiveEnd().
 */
export function entryHeaders(e: Omit<TarWriteEntry, 'data'>, size: number): Buffer {
  const recs = [paxRecord('path', e.name), paxRecord('size', String(size))]
  if (e.linkname !== undefined) recs.push(paxRecord('linkpath', e.linkname))
  if (e.uid > 0o7777777) recs.push(paxRecord('uid', String(e.uid)))
  if (e.gid > 0o7777777) recs.push(paxRecord('gid', String(e.gid)))
  for (const [k, v] of Object.entries(e.xattrs ?? {})) recs.push(paxRecord(`SCHILY.xattr.${k}`, v))
  const pax = Buffer.concat(recs)
  return Buffer.concat([header('PaxHeader', 'x', pax.length, { mode: 0o644, uid: 0, gid: 0, mtime: e.mtime }), pad(pax),
    header(e.name, writeFlags[e.type], Math.min(size, 0o77777777777), e)])
}

/** zeros after `size` bytes of entry data, up to the next 512-byte block */
export function entryPadding(size: number): Buffer {
  return Buffer.alloc((blockBytes - (size % blockBytes)) % blockBytes)
}

/** the end of an archive: two zero blocks */
export function archiveEnd(): Buffer {
  return Buffer.alloc(blockBytes * 2)
}
