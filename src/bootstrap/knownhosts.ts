/**
 * OpenSSH known_hosts files: parse, match, hash, append.
 *
 * Format (sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT"): one key per line,
 *   [@revoked|@cert-authority] hostpatterns keytype base64-key [comment]
 * hostpatterns is a comma list of names (`host`, `[host]:port`, wildcards `*` `?`, negation `!`) or a
 * single hashed name `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`. A host on port 22 is looked up as
 * `host`, on another port as `[host]:port`; names are compared lowercased, as ssh does.
 *
 * `@cert-authority` lines are ignored (tess does not use host certificates); a key on a matching
 * `@revoked` line is refused whatever else the files say.
 *
 * tess keeps its own file (`<config dir>/known_hosts`, mode 0600); entries are appended atomically
 * (temp file + fsync + rename) under a lock, so concurrent connects never lose an entry.
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import { configDir } from '../lib/contexts.js'
import { TessError, errorMessage } from '../lib/errors.js'

/** What a lookup found for (host, port, key). */
export type HostKeyStatus = 'match' | 'mismatch' | 'unknown' | 'revoked'

export type KnownHostMarker = 'revoked' | 'cert-authority'

export interface KnownHostEntry {
  /** file the line came from ('<string>' when parsed from text) */
  source: string
  /** 1-based line number in `source` */
  line: number
  marker: KnownHostMarker | undefined
  /** plain patterns (lowercased), when the line is not hashed */
  patterns: string[] | undefined
  /** salt and HMAC-SHA1 of a hashed name */
  hashed: { salt: Buffer, hash: Buffer } | undefined
  keyType: string
  keyBlob: Buffer
  comment: string
}

export interface InvalidKnownHostLine { source: string, line: number, reason: string }

/** A known key of a host, for messages (which line says what). */
export interface KnownKey { keyType: string, keyBlob: Buffer, fingerprint: string, source: string, line: number }

/** Bound on one known_hosts file we read: a runaway file is an error, not an OOM. */
export const knownHostsFileMaxBytes = 16 * 1024 * 1024
/** How long an append waits for another process's lock before failing. */
export const knownHostsLockTimeoutMs = 10_000
/** A lock file older than this is left over from a crashed process and is removed. */
export const knownHostsLockStaleMs = 30_000
const lockPollMs = 25
const hashMagic = '|1|'
const saltBytes = 20

/** tess's own known_hosts: `<config dir>/known_hosts`. */
export function defaultKnownHostsFile(): string {
  return path.join(configDir(), 'known_hosts')
}

/** The name a host is stored under: `host` on port 22, `[host]:port` otherwise (lowercased). */
export function hostKeyName(host: string, port = 22): string {
  const h = host.toLowerCase()
  return port === 22 ? h : `[${h}]:${port}`
}

/** SHA256 fingerprint of a public key blob, formatted as OpenSSH prints it (`SHA256:` + unpadded base64). */
export function fingerprintSha256(keyBlob: Buffer): string {
  return 'SHA256:' + crypto.createHash('sha256').update(keyBlob).digest('base64').replace(/=+$/, '')
}

/** The key type named inside an SSH public key blob (its first string), e.g. `ssh-ed25519`. */
export function keyTypeOfBlob(keyBlob: Buffer): string {
  if (keyBlob.length < 4) throw new TessError('TESS_E_INVALID', 'SSH public key blob is shorter than 4 bytes', 'the key is corrupt')
  const n = keyBlob.readUInt32BE(0)
  if (n < 1 || n > 64 || 4 + n > keyBlob.length) throw new TessError('TESS_E_INVALID', `SSH public key blob has a bad type length (${n})`, 'the key is corrupt')
  const t = keyBlob.subarray(4, 4 + n).toString('latin1')
  if (!/^[\x21-\x7e]+$/.test(t)) throw new TessError('TESS_E_INVALID', 'SSH public key blob has a non-printable key type', 'the key is corrupt')
  return t
}

/** `|1|salt|hash` for `name` (already in known_hosts form: see hostKeyName); a random salt unless given. */
export function hashHostName(name: string, salt: Buffer = crypto.randomBytes(saltBytes)): string {
  const hash = crypto.createHmac('sha1', salt).update(name).digest()
  return `${hashMagic}${salt.toString('base64')}|${hash.toString('base64')}`
}

/** OpenSSH wildcard match: `*` any run, `?` one character; whole string. */
export function matchWildcard(pattern: string, s: string): boolean {
  // iterative glob with backtracking on the last `*`
  let p = 0
  let i = 0
  let star = -1
  let mark = 0
  while (i < s.length) {
    const pc = pattern[p]
    if (pc === '?' || (pc !== undefined && pc !== '*' && pc === s[i])) {
      p++
      i++
    } else if (pc === '*') {
      star = p++
      mark = i
    } else if (star >= 0) {
      p = star + 1
      i = ++mark
    } else {
      return false
    }
  }
  while (pattern[p] === '*') p++
  return p === pattern.length
}

/**
 * A comma pattern list against a name, as OpenSSH's match_hostname: a negated pattern (`!p`) that
 * matches wins (no match); otherwise any positive match is a match.
 */
export function matchHostPatterns(patterns: readonly string[], name: string): boolean {
  const n = name.toLowerCase()
  let positive = false
  for (const raw of patterns) {
    const neg = raw.startsWith('!')
    const p = (neg ? raw.slice(1) : raw).toLowerCase()
    if (p === '') continue
    if (matchWildcard(p, n)) {
      if (neg) return false
      positive = true
    }
  }
  return positive
}

/** Does this entry name `name` (a hostKeyName)? */
export function entryMatchesName(e: KnownHostEntry, name: string): boolean {
  if (e.hashed) {
    const h = crypto.createHmac('sha1', e.hashed.salt).update(name.toLowerCase()).digest()
    return h.length === e.hashed.hash.length && crypto.timingSafeEqual(h, e.hashed.hash)
  }
  return e.patterns !== undefined && matchHostPatterns(e.patterns, name)
}

function parseHashed(field: string): { salt: Buffer, hash: Buffer } | undefined {
  const parts = field.slice(hashMagic.length).split('|')
  if (parts.length !== 2) return undefined
  const [s, h] = parts as [string, string]
  const b64 = /^[A-Za-z0-9+/]+={0,2}$/
  if (!b64.test(s) || !b64.test(h)) return undefined
  const salt = Buffer.from(s, 'base64')
  const hash = Buffer.from(h, 'base64')
  if (salt.length !== saltBytes || hash.length !== 20) return undefined
  return { salt, hash }
}

/** Parse known_hosts text. Lines that cannot be parsed are returned in `invalid` and otherwise ignored (as ssh does). */
export function parseKnownHosts(text: string, source = '<string>'): { entries: KnownHostEntry[], invalid: InvalidKnownHostLine[] } {
  const entries: KnownHostEntry[] = []
  const invalid: InvalidKnownHostLine[] = []
  const lines = text.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const lineNo = i + 1
    const raw = (lines[i] ?? '').replace(/\r$/, '').trim()
    if (raw === '' || raw.startsWith('#')) continue
    const bad = (reason: string): void => { invalid.push({ source, line: lineNo, reason }) }
    const fields = raw.split(/[ \t]+/)
    let marker: KnownHostMarker | undefined
    if (fields[0]?.startsWith('@')) {
      const m = fields.shift()
      if (m === '@revoked') marker = 'revoked'
      else if (m === '@cert-authority') marker = 'cert-authority'
      else {
        bad(`unknown marker ${m ?? ''}`)
        continue
      }
    }
    const [hostField, keyType, keyB64, ...rest] = fields
    if (hostField === undefined || keyType === undefined || keyB64 === undefined) {
      bad('expected: hostpatterns keytype base64-key [comment]')
      continue
    }
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(keyB64)) {
      bad('the key is not base64')
      continue
    }
    const keyBlob = Buffer.from(keyB64, 'base64')
    let blobType: string
    try {
      blobType = keyTypeOfBlob(keyBlob)
    } catch (e) {
      bad(errorMessage(e))
      continue
    }
    if (blobType !== keyType) {
      bad(`key type ${keyType} does not match the key's own type ${blobType}`)
      continue
    }
    let patterns: string[] | undefined
    let hashed: { salt: Buffer, hash: Buffer } | undefined
    if (hostField.startsWith(hashMagic)) {
      hashed = parseHashed(hostField)
      if (!hashed) {
        bad('malformed hashed host name')
        continue
      }
    } else {
      patterns = hostField.split(',').filter((p) => p !== '').map((p) => p.toLowerCase())
      if (patterns.length === 0) {
        bad('no host pattern')
        continue
      }
    }
    entries.push({ source, line: lineNo, marker, patterns, hashed, keyType, keyBlob, comment: rest.join(' ') })
  }
  return { entries, invalid }
}

function readBounded(file: string): string | undefined {
  let st: fs.Stats
  try {
    st = fs.statSync(file)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw new TessError('TESS_E_IO', `cannot read known_hosts file "${file}": ${errorMessage(e)}`, 'check the path and its permissions')
  }
  if (!st.isFile()) throw new TessError('TESS_E_INVALID', `known_hosts file "${file}" is not a regular file`, 'pass a known_hosts file')
  if (st.size > knownHostsFileMaxBytes) {
    throw new TessError('TESS_E_INVALID', `known_hosts file "${file}" is ${st.size} bytes, more than the ${knownHostsFileMaxBytes} read`, 'is this a known_hosts file?')
  }
  try {
    return fs.readFileSync(file, 'utf8')
  } catch (e) {
    throw new TessError('TESS_E_IO', `cannot read known_hosts file "${file}": ${errorMessage(e)}`, 'check the path and its permissions')
  }
}

/** The entries of one or more known_hosts files, queried together (a match in any file counts). */
export class KnownHosts {
  constructor(readonly entries: readonly KnownHostEntry[], readonly invalid: readonly InvalidKnownHostLine[] = []) {}

  /** Read files; a missing file is empty. */
  static load(files: string | readonly string[]): KnownHosts {
    const list = typeof files === 'string' ? [files] : files
    const entries: KnownHostEntry[] = []
    const invalid: InvalidKnownHostLine[] = []
    for (const f of list) {
      const text = readBounded(f)
      if (text === undefined) continue
      const r = parseKnownHosts(text, f)
      entries.push(...r.entries)
      invalid.push(...r.invalid)
    }
    return new KnownHosts(entries, invalid)
  }

  static parse(text: string, source?: string): KnownHosts {
    const r = parseKnownHosts(text, source)
    return new KnownHosts(r.entries, r.invalid)
  }

  /** Host-key entries (no marker) naming host:port. */
  private hostEntries(host: string, port: number): KnownHostEntry[] {
    const name = hostKeyName(host, port)
    return this.entries.filter((e) => e.marker === undefined && entryMatchesName(e, name))
  }

  /**
   * What the files say about `keyBlob` offered by host:port:
   * revoked — a matching `@revoked` line holds this key (refuse, whatever else matches);
   * match — a line for this host holds exactly this key;
   * mismatch — the host is known, but with other key(s): the key CHANGED (refuse);
   * unknown — no line names this host.
   */
  lookup(host: string, port: number, keyType: string, keyBlob: Buffer): HostKeyStatus {
    const name = hostKeyName(host, port)
    for (const e of this.entries) {
      if (e.marker === 'revoked' && e.keyBlob.equals(keyBlob) && entryMatchesName(e, name)) return 'revoked'
    }
    const known = this.hostEntries(host, port)
    if (known.length === 0) return 'unknown'
    return known.some((e) => e.keyType === keyType && e.keyBlob.equals(keyBlob)) ? 'match' : 'mismatch'
  }

  /** The keys recorded for host:port (not revoked/CA lines), in file order. */
  knownKeys(host: string, port: number): KnownKey[] {
    return this.hostEntries(host, port).map((e) => ({ keyType: e.keyType, keyBlob: e.keyBlob, fingerprint: fingerprintSha256(e.keyBlob), source: e.source, line: e.line }))
  }

  /** The revoked entry holding this key for host:port, if any. */
  revokedEntry(host: string, port: number, keyBlob: Buffer): KnownHostEntry | undefined {
    const name = hostKeyName(host, port)
    return this.entries.find((e) => e.marker === 'revoked' && e.keyBlob.equals(keyBlob) && entryMatchesName(e, name))
  }
}

/** Convenience: look a key up in files (missing files are empty). */
export function lookupKnownHost(files: string | readonly string[], host: string, port: number, keyType: string, keyBlob: Buffer): HostKeyStatus {
  return KnownHosts.load(files).lookup(host, port, keyType, keyBlob)
}

export interface KnownHostLineOptions {
  /** store the name hashed (`|1|salt|hash`), as `HashKnownHosts yes` does */
  hash?: boolean
  comment?: string
}

/** One known_hosts line (no newline) for host:port and a key blob. */
export function formatKnownHostLine(host: string, port: number, keyBlob: Buffer, opts: KnownHostLineOptions = {}): string {
  const keyType = keyTypeOfBlob(keyBlob)
  const name = hostKeyName(host, port)
  if (/[\s,]/.test(name) || name === '' || name.startsWith('!') || name.startsWith('@') || name.startsWith('|')) {
    throw new TessError('TESS_E_INVALID', `cannot record a host key for "${host}": not a host name`, 'use a host name or address')
  }
  const comment = opts.comment ? ` ${opts.comment.replace(/[\r\n]/g, ' ')}` : ''
  return `${opts.hash ? hashHostName(name) : name} ${keyType} ${keyBlob.toString('base64')}${comment}`
}

// ----------------------------------------------------------------------------------- appending

const inProcessLocks = new Map<string, Promise<unknown>>()

/** Serialize `fn` per file: in this process with a promise chain, across processes with `<file>.lock` (O_EXCL). */
async function withFileLock<T>(file: string, fn: () => Promise<T>): Promise<T> {
  const key = path.resolve(file)
  const prev = inProcessLocks.get(key) ?? Promise.resolve()
  const run = prev.catch(() => undefined).then(async () => { // the chain only orders the callers; each gets its own result
    const lock = `${key}.lock`
    const deadline = Date.now() + knownHostsLockTimeoutMs
    let fh: fsp.FileHandle | undefined
    for (;;) {
      try {
        fh = await fsp.open(lock, 'wx', 0o600)
        break
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw new TessError('TESS_E_IO', `cannot lock known_hosts file "${file}": ${errorMessage(e)}`, `check that ${path.dirname(key)} is writable`)
        }
        try {
          const st = await fsp.stat(lock)
          if (Date.now() - st.mtimeMs > knownHostsLockStaleMs) await fsp.rm(lock, { force: true })
        } catch { /* gone meanwhile */ }
        if (Date.now() > deadline) {
          throw new TessError('TESS_E_TIMEOUT', `cannot lock known_hosts file "${file}": ${lock} is held by another process for more than ${knownHostsLockTimeoutMs} ms`,
            `if no other tess is running, remove ${lock}`)
        }
        await new Promise((r) => setTimeout(r, lockPollMs))
      }
    }
    try {
      await fh.writeFile(String(process.pid))
      return await fn()
    } finally {
      await fh.close().catch(() => undefined) // closing a lock file cannot lose anything: fn() already ran
      await fsp.rm(lock, { force: true }).catch(() => undefined) // a lock file left behind is taken over after its timeout
    }
  })
  inProcessLocks.set(key, run)
  try {
    return await run
  } finally {
    if (inProcessLocks.get(key) === run) inProcessLocks.delete(key)
  }
}

/** Replace `file` with `data` atomically: temp file (mode) + fsync + rename + fsync of the directory. */
async function replaceFileAtomic(file: string, data: string, mode: number): Promise<void> {
  const dir = path.dirname(file)
  const tmp = path.join(dir, `.${path.basename(file)}.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`)
  const fh = await fsp.open(tmp, 'wx', mode)
  try {
    await fh.writeFile(data)
    await fh.chmod(mode) // the umask applied at open
    await fh.sync()
  } catch (e) {
    await fh.close().catch(() => undefined) // cleanup after the error thrown below
    await fsp.rm(tmp, { force: true })
    throw e
  }
  await fh.close()
  try {
    await fsp.rename(tmp, file)
  } catch (e) {
    await fsp.rm(tmp, { force: true })
    throw e
  }
  const dh = await fsp.open(dir, 'r')
  try {
    await dh.sync()
  } finally {
    await dh.close()
  }
}

/**
 * Record host:port's key in `file` (created 0600 with a 0700 directory if missing). Returns false
 * when the file already holds exactly this key for this host. Refuses (TESS_E_AUTH) to add a key for
 * a host the file knows with another key, or a revoked key: a changed key is never recorded silently.
 */
export async function appendKnownHost(file: string, host: string, port: number, keyBlob: Buffer, opts: KnownHostLineOptions = {}): Promise<boolean> {
  const line = formatKnownHostLine(host, port, keyBlob, opts)
  const keyType = keyTypeOfBlob(keyBlob)
  try {
    await fsp.mkdir(path.dirname(path.resolve(file)), { recursive: true, mode: 0o700 })
  } catch (e) {
    throw new TessError('TESS_E_IO', `cannot create the directory of known_hosts file "${file}": ${errorMessage(e)}`, 'check the path and its permissions')
  }
  return withFileLock(file, async () => {
    const text = readBounded(file) ?? ''
    const status = KnownHosts.parse(text, file).lookup(host, port, keyType, keyBlob)
    if (status === 'match') return false
    if (status === 'mismatch' || status === 'revoked') {
      throw new TessError('TESS_E_AUTH', `will not record the ${keyType} key ${fingerprintSha256(keyBlob)} for ${hostKeyName(host, port)} in "${file}": the file ${status === 'revoked' ? 'revokes it' : 'holds another key for that host'}`,
        `remove the old entry first: ssh-keygen -R '${hostKeyName(host, port)}' -f ${file}`)
    }
    const sep = text === '' || text.endsWith('\n') ? '' : '\n'
    try {
      await replaceFileAtomic(file, `${text}${sep}${line}\n`, 0o600)
    } catch (e) {
      throw new TessError('TESS_E_IO', `cannot write known_hosts file "${file}": ${errorMessage(e)}`, 'check the path and its permissions')
    }
    return true
  })
}
