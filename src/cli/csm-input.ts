import type { Readable } from 'node:stream'
import { TessError } from '../lib/errors.js'
import {
  containerArgBytesMax, containerEnvMax, containerStopTimeoutMsMax, cpusMax, cpusMin, logTailLinesMax, memoryLimitMinBytes,
  policyPatternLengthMax, registryPasswordLengthMax, registryUsernameLengthMax,
} from '../lib/limits.js'
import { namePattern } from '../lib/names.js'
import { parseDuration, parseSize } from '../lib/units.js'
import { parseReference, parseRegistryHost } from '../lib/images/reference.js'

/**
 * Client-side checks and limits of the container commands (csm, csm-pool, registry, image,
 * container): pure functions, so every bad value is refused with a code and a hint before any
 * API call is made. The bounds are the server's own (lib/limits.ts): a value the CLI lets through
 * is not refused later by the API for being too large, and the other way round.
 */

/** `csm create` waits for the CSM daemon to start on its node. */
export const csmCreateTimeoutMs = 120_000
/** `image pull` and `container run` (which may pull) may take long on a slow registry. */
export const imagePullTimeoutMs = 30 * 60_000
/** `container stop`: the client waits this much longer than the stop timeout it asks for. */
export const containerStopSlackMs = 60_000
export const containerStopTimeoutDefault = '10s'
export const containerStopTimeoutMaxMs = containerStopTimeoutMsMax
/** `container logs --follow` asks for more this often. */
export const logsPollIntervalMs = 300
export const logsTailMax = logTailLinesMax
/** A registry password read with --password-stdin. */
export const passwordMaxBytes = registryPasswordLengthMax
export const usernameMaxLength = registryUsernameLengthMax
export const envEntriesMax = containerEnvMax
export const envEntryMaxBytes = containerArgBytesMax

const shown = (s: string, max = 80): string => (s.length > max ? `${s.slice(0, max)}...` : s)

/** A CPU count: a positive number, fractions allowed (`0.5`, `2`, `1.25`). */
export function parseCpus(input: string, what = '--cpus'): number {
  const s = input.trim()
  if (!/^(?:\d+(?:\.\d*)?|\.\d+)$/.test(s)) {
    throw new TessError('TESS_E_INVALID', `invalid ${what} "${shown(input)}": not a number`, 'give a number of CPUs, fractions allowed, e.g. 0.5, 1 or 2.5')
  }
  const n = Number(s)
  if (!Number.isFinite(n) || n <= 0) {
    throw new TessError('TESS_E_INVALID', `invalid ${what} "${input}": must be more than 0`, 'give a number of CPUs, fractions allowed, e.g. 0.5, 1 or 2.5')
  }
  if (n < cpusMin) {
    throw new TessError('TESS_E_INVALID', `invalid ${what} "${input}": less than ${cpusMin} CPU`, `give at least ${cpusMin} (the kernel cannot enforce a smaller share)`)
  }
  if (n > cpusMax) {
    throw new TessError('TESS_E_INVALID', `invalid ${what} "${input}": more than ${cpusMax} CPUs`, `give at most ${cpusMax}`)
  }
  return n
}

/** A memory size (parseSize units), more than 0 bytes. */
export function parseMemory(input: string, what = '--memory'): number {
  const n = parseSize(input, what)
  if (n <= 0) throw new TessError('TESS_E_INVALID', `invalid ${what} "${input}": must be more than 0`, 'give a size such as 256M or 2G (1G = 1 GiB)')
  if (n < memoryLimitMinBytes) {
    throw new TessError('TESS_E_INVALID', `invalid ${what} "${input}": less than ${memoryLimitMinBytes / 2 ** 20} MiB`, `give at least ${memoryLimitMinBytes / 2 ** 20}M (a smaller limit cannot start a shell)`)
  }
  return n
}

/** A node name as `tess host list` shows it (for --node). */
export function checkNodeName(name: string, what = '--node'): string {
  if (!namePattern.test(name)) {
    throw new TessError('TESS_E_INVALID', `invalid ${what} "${shown(name)}": not a node name`, 'give the node name as `tess host list` shows it (lowercase letters, digits and "-")')
  }
  return name
}

/**
 * Names given with a repeatable, comma-separating flag (`--csm a,b --csm c`): split, trimmed,
 * empty items dropped, duplicates removed in order, each checked as a name.
 */
export function splitNames(values: readonly string[] | undefined, kind: string, flag: string): string[] {
  const out: string[] = []
  for (const v of values ?? []) {
    for (const raw of v.split(',')) {
      const n = raw.trim()
      if (n === '') continue
      if (!namePattern.test(n)) {
        throw new TessError('TESS_E_INVALID', `invalid ${kind} name "${shown(n)}" in ${flag}`, 'names are 1-63 characters: lowercase letters, digits and "-", starting with a letter or digit; separate several with "," or repeat the flag')
      }
      if (!out.includes(n)) out.push(n)
    }
  }
  return out
}

const envKeyPattern = /^[A-Za-z_][A-Za-z0-9_]*$/

/**
 * `--env KEY=VALUE` entries, returned as given (`KEY=VALUE`). The value may be empty and may
 * hold "="; a key appears once. Error messages name the key only: values may be secrets.
 */
export function parseEnv(values: readonly string[] | undefined): string[] {
  const list = values ?? []
  if (list.length > envEntriesMax) {
    throw new TessError('TESS_E_INVALID', `too many --env entries: ${list.length}`, `give at most ${envEntriesMax}`)
  }
  const seen = new Set<string>()
  const out: string[] = []
  for (const e of list) {
    const eq = e.indexOf('=')
    if (eq < 0) {
      throw new TessError('TESS_E_INVALID', `invalid --env "${shown(e, 40)}": no "="`, 'write each variable as KEY=VALUE, e.g. --env LOG_LEVEL=debug (an empty value is KEY=)')
    }
    const key = e.slice(0, eq)
    if (key === '') throw new TessError('TESS_E_INVALID', 'invalid --env: empty variable name before "="', 'write each variable as KEY=VALUE, e.g. --env LOG_LEVEL=debug')
    if (!envKeyPattern.test(key)) {
      throw new TessError('TESS_E_INVALID', `invalid --env name "${shown(key, 40)}": must be letters, digits and "_", not starting with a digit`, 'e.g. --env LOG_LEVEL=debug')
    }
    if (seen.has(key)) throw new TessError('TESS_E_INVALID', `--env ${key} is given more than once`, 'give each variable once')
    if (Buffer.byteLength(e) > envEntryMaxBytes) {
      throw new TessError('TESS_E_INVALID', `--env ${key}: the value is longer than ${envEntryMaxBytes} bytes`, 'pass large data in a volume or the image instead')
    }
    if (e.includes('\0')) throw new TessError('TESS_E_INVALID', `--env ${key}: the value contains a NUL byte`, 'environment values cannot hold NUL bytes')
    seen.add(key)
    out.push(e)
  }
  return out
}

/**
 * A registry URL: `http://` or `https://`, a host with an optional port, nothing else (an
 * optional trailing "/" is dropped). Plain http needs `insecure`. Credentials in the URL are
 * refused and never repeated in the message.
 */
export function parseRegistryUrl(input: string, insecure: boolean): { url: string, host: string } {
  const hint = 'give the scheme and host with an optional port only, e.g. https://registry.example.com or http://127.0.0.1:5000 (with --insecure)'
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)(.*)$/s.exec(input)
  if (!m) {
    // Never echo something that may hold credentials (user:password@host without a scheme).
    const echo = input.includes('@') ? '' : ` "${shown(input)}"`
    throw new TessError('TESS_E_INVALID', `invalid registry URL${echo}: not http(s)://host[:port]`, hint)
  }
  const scheme = (m[1] ?? '').toLowerCase()
  const authority = m[2] ?? ''
  const rest = m[3] ?? ''
  if (authority.includes('@')) {
    throw new TessError('TESS_E_INVALID', 'invalid registry URL: it holds credentials (user@ or user:password@)', 'remove them from the URL and pass --username NAME --password-stdin instead')
  }
  // The path or query is not repeated: it may hold a token.
  const safe = shown(`${m[1]}://${authority}${rest !== '' ? '/...' : ''}`)
  if (scheme !== 'http' && scheme !== 'https') throw new TessError('TESS_E_INVALID', `invalid registry URL "${safe}": scheme "${m[1]}" is not http or https`, hint)
  if (rest !== '' && rest !== '/') {
    throw new TessError('TESS_E_INVALID', `invalid registry URL "${safe}": it has a path, query or fragment`, hint)
  }
  if (authority === '') throw new TessError('TESS_E_INVALID', `invalid registry URL "${safe}": no host`, hint)
  try {
    parseRegistryHost(authority, 'registry host')
  } catch (e) {
    if (e instanceof TessError) throw new TessError('TESS_E_INVALID', `invalid registry URL "${safe}": ${e.message}`, hint)
    throw e
  }
  if (scheme === 'http' && !insecure) {
    throw new TessError('TESS_E_INVALID', `registry URL "${safe}" is plain http: images and credentials would travel unencrypted`, 'pass --insecure to allow it, or use an https:// URL')
  }
  return { url: `${scheme}://${authority}`, host: authority }
}

/** A registry user name: printable, no ":" (HTTP Basic auth cannot carry it), not empty. */
export function checkUsername(u: string): string {
  if (u === '') throw new TessError('TESS_E_INVALID', 'invalid --username: empty', 'give the registry user name')
  if (u.length > usernameMaxLength) throw new TessError('TESS_E_INVALID', `invalid --username: longer than ${usernameMaxLength} characters`, 'give the registry user name')
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f:]/.test(u)) {
    throw new TessError('TESS_E_INVALID', 'invalid --username: it contains ":" or a control character', 'HTTP Basic auth cannot carry a user name with ":"')
  }
  return u
}

/**
 * A password from --password-stdin: everything read, one trailing newline (LF or CRLF) removed.
 * Never put any part of it in an error message.
 */
export async function readPassword(stream: Readable): Promise<string> {
  const chunks: Buffer[] = []
  let total = 0
  for await (const c of stream) {
    const b = typeof c === 'string' ? Buffer.from(c) : (c as Buffer)
    total += b.length
    if (total > passwordMaxBytes) {
      throw new TessError('TESS_E_INVALID', `the password read from stdin is longer than ${passwordMaxBytes} bytes`, 'pipe only the password, e.g. `cat pw.txt | tess registry add ... --password-stdin`')
    }
    chunks.push(b)
  }
  const pw = stripOneNewline(Buffer.concat(chunks).toString('utf8'))
  if (pw === '') {
    throw new TessError('TESS_E_INVALID', 'the password read from stdin is empty', 'pipe the password in, e.g. `printf %s "$PW" | tess registry add NAME URL --username U --password-stdin`')
  }
  return pw
}

export function stripOneNewline(s: string): string {
  if (s.endsWith('\r\n')) return s.slice(0, -2)
  if (s.endsWith('\n')) return s.slice(0, -1)
  return s
}

const digestPatternRe = /^@sha256:[a-f0-9]{64}$/
const hostGlobRe = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.*-]+)(?::[0-9*]{1,5})?$/
const repoSegmentRe = /^[a-z0-9._*-]+$/
const tagGlobRe = /^[A-Za-z0-9_.*-]{1,128}$/

export const policyPatternHelp = `PATTERN is either a glob over image references, host[:port]/repository, where "*" matches within one path segment and "**" across segments, optionally followed by :tag (e.g. 127.0.0.1:5000/team/*, registry.example.com/**, registry.example.com/base/alpine:3.20); or @sha256:<64 hex digits>, which matches an image by its manifest digest.

Deny rules are checked first: an image matching one is refused. When any allow rule exists, an image must match one of them. A refused pull names the rule that refused it.`

/**
 * A registry policy pattern: `host[:port]/repository[:tag]` with `*` / `**` globs, or
 * `@sha256:<64 hex>`. The server has the final word on matching; this refuses what can never
 * be a pattern.
 */
export function checkPolicyPattern(p: string): string {
  const bad = (why: string, hint = 'write host[:port]/repository[:tag] with * and ** globs, e.g. 127.0.0.1:5000/team/**, or @sha256:<64 hex digits>') =>
    new TessError('TESS_E_INVALID', `invalid pattern "${shown(p)}": ${why}`, hint)
  if (p === '') throw bad('empty')
  if (p.length > policyPatternLengthMax) throw bad(`longer than ${policyPatternLengthMax} characters`)
  if (/\s/.test(p)) throw bad('contains white space')
  if (p.startsWith('@')) {
    if (!digestPatternRe.test(p)) throw bad('a digest pattern is "@sha256:" followed by 64 lowercase hex digits', 'copy the digest from `tess image list --json`, e.g. @sha256:0123...')
    return p
  }
  if (p.includes('@')) throw bad('"@" may only start a digest pattern (@sha256:...)')
  const slash = p.indexOf('/')
  if (slash < 0) throw bad('no repository: a pattern starts with the registry host, then "/"')
  const host = p.slice(0, slash)
  let repo = p.slice(slash + 1)
  if (host === '') throw bad('empty registry host before "/"')
  if (!hostGlobRe.test(host)) throw bad(`registry host "${shown(host, 40)}" may only hold letters, digits, ".", "-", "*" and a ":port"`)
  const colon = repo.lastIndexOf(':')
  if (colon >= 0) {
    const tag = repo.slice(colon + 1)
    repo = repo.slice(0, colon)
    if (tag.includes('/')) throw bad('":" in the repository part')
    if (!tagGlobRe.test(tag)) throw bad(`tag "${shown(tag, 40)}" may only hold letters, digits, "_", ".", "-" and "*" (1-128 characters)`)
  }
  if (repo === '') throw bad('empty repository after the registry host')
  for (const seg of repo.split('/')) {
    if (seg === '') throw bad('empty path segment ("//" or a trailing "/")')
    if (!repoSegmentRe.test(seg)) throw bad(`repository segment "${shown(seg, 40)}" may only hold lowercase letters, digits, ".", "_", "-" and "*"`)
    if (seg.includes('**') && seg !== '**') throw bad(`"**" must be a whole path segment ("${shown(seg, 40)}")`)
  }
  return p
}

/**
 * Check an image reference's syntax (`[host[:port]/]repository[:tag][@digest]`). A reference
 * without a registry host is left for the server to resolve against its default registry.
 */
export function checkImageRef(ref: string): string {
  parseReference(ref, { defaultRegistry: 'localhost' })
  return ref
}

/** `sha256:` and the first 12 hex digits (19 characters). */
export function shortDigest(d: string): string {
  return d.slice(0, 19)
}

/** How long ago an ISO 8601 time was, for tables: `42s ago`, `5m ago`, `3h ago`, `12d ago`. */
export function formatAge(iso: string | null | undefined, now: number = Date.now()): string {
  if (!iso) return '-'
  const t = Date.parse(iso)
  if (Number.isNaN(t)) return iso
  const s = Math.max(0, Math.floor((now - t) / 1000))
  if (s < 60) return `${s}s ago`
  if (s < 3600) return `${Math.floor(s / 60)}m ago`
  if (s < 86_400) return `${Math.floor(s / 3600)}h ago`
  return `${Math.floor(s / 86_400)}d ago`
}

/** A duration for people: `500ms`, `10s`, `1.5s`, `2m`, `1h`. */
/** A container stop's `--timeout` (SIGTERM, then SIGKILL after it): a duration of at most containerStopTimeoutMaxMs. */
export function parseStopTimeout(input: string): number {
  const ms = parseDuration(input, '--timeout')
  if (ms > containerStopTimeoutMaxMs) {
    throw new TessError('TESS_E_INVALID', `invalid --timeout "${input}": more than ${formatMs(containerStopTimeoutMaxMs)}`, `give at most ${formatMs(containerStopTimeoutMaxMs)}`)
  }
  return ms
}

export function formatMs(ms: number): string {
  if (ms < 1000) return `${ms}ms`
  if (ms < 60_000) return `${Number((ms / 1000).toFixed(1))}s`
  if (ms < 3_600_000) return `${Number((ms / 60_000).toFixed(1))}m`
  return `${Number((ms / 3_600_000).toFixed(1))}h`
}

/** `NAME:/path[:ro|:rw]` of `container run --volume`. */
export function parseVolumeFlag(input: string): { name: string, target: string, readOnly: boolean } {
  const bad = (why: string) => new TessError('TESS_E_INVALID', `invalid --volume "${input.slice(0, 200)}": ${why}`, 'write NAME:/path, or NAME:/path:ro for read-only, e.g. --volume data:/var/lib/data')
  const first = input.indexOf(':')
  if (first <= 0) throw bad('no ":" between the volume name and the path')
  const name = input.slice(0, first)
  let rest = input.slice(first + 1)
  let readOnly = false
  const mode = /:(ro|rw)$/.exec(rest)
  if (mode) {
    readOnly = mode[1] === 'ro'
    rest = rest.slice(0, -3)
  }
  if (!/^[a-z0-9][a-z0-9-]{0,62}$/.test(name)) throw bad(`"${name}" is not a volume name`)
  if (!rest.startsWith('/')) throw bad('the path inside the container must be absolute')
  if (rest.includes(':')) throw bad('the path may not contain ":" (the mode is ro or rw)')
  return { name, target: rest, readOnly }
}
