import { TessError } from '../errors.js'
import { parseDigest } from './digest.js'
import { referenceLengthMax, repositoryNameLengthMax, tagLengthMax } from './limits.js'

/**
 * Image references, per the grammar of the distribution project (the one `docker pull` uses):
 *
 *   reference := name [ ":" tag ] [ "@" digest ]
 *   name      := [ domain "/" ] path-component [ "/" path-component ]*
 *   domain    := host [ ":" port ]        host: domain-name | IPv4 | "[" IPv6 "]"
 *
 * The first component is a registry host only when the name has a "/" and that component has a
 * "." or a ":", is "localhost", or is a bracketed IPv6 address: `test/busybox` is a repository,
 * `127.0.0.1:5000/test/busybox` is a repository on a registry.
 *
 * There is no implicit Docker Hub: a reference without a registry host resolves against the
 * default registry the caller configured (`defaultRegistry`), and nothing is added to the
 * repository (no `library/` prefix). Without a default registry such a reference is an error.
 * A reference without a tag or digest gets the tag `latest`.
 */
export interface ImageReference {
  /** `host[:port]`, e.g. `127.0.0.1:5000`, `registry.example.com`, `[::1]:5000` */
  registry: string
  /** e.g. `test/busybox` */
  repository: string
  tag?: string
  /** when present, the pull uses it and verifies the manifest against it; the tag is only a label */
  digest?: string
}

export interface ParseReferenceOptions {
  /** registry host for references that name none; required to resolve `busybox` */
  defaultRegistry?: string
  /** tag for references that give neither tag nor digest (default `latest`) */
  defaultTag?: string
}

export const defaultTag = 'latest'

const pathComponentRe = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/
const tagRe = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/
const domainComponentRe = /^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])$/
const ipv6Re = /^\[[0-9A-Fa-f:.]+(?:%[A-Za-z0-9]+)?\]$/

const formatHint = 'write it as [HOST[:PORT]/]REPOSITORY[:TAG][@sha256:DIGEST], e.g. 127.0.0.1:5000/test/busybox:1.36'

function invalid(input: string, why: string, hint = formatHint): TessError {
  const shown = input.length > 300 ? `${input.slice(0, 300)}...` : input
  return new TessError('TESS_E_INVALID', `invalid image reference "${shown}": ${why}`, hint)
}

/** Validate a registry host `host[:port]`; returns it unchanged or throws. */
export function parseRegistryHost(host: string, what = 'registry host'): string {
  const bad = (why: string) => new TessError('TESS_E_INVALID', `invalid ${what} "${host}": ${why}`,
    'give a host name or address with an optional port, e.g. 127.0.0.1:5000 or registry.example.com')
  let name = host
  let port: string | undefined
  if (host.startsWith('[')) {
    const end = host.indexOf(']')
    if (end < 0) throw bad('unclosed "[" of an IPv6 address')
    name = host.slice(0, end + 1)
    const rest = host.slice(end + 1)
    if (rest !== '') {
      if (!rest.startsWith(':')) throw bad('unexpected text after the IPv6 address')
      port = rest.slice(1)
    }
    if (!ipv6Re.test(name)) throw bad('not a valid IPv6 address')
  } else {
    const i = host.lastIndexOf(':')
    if (i >= 0) {
      name = host.slice(0, i)
      port = host.slice(i + 1)
    }
    if (name === '') throw bad('empty host name')
    for (const c of name.split('.')) {
      if (!domainComponentRe.test(c)) throw bad(`"${c}" is not a valid host name component (letters, digits and inner "-")`)
    }
  }
  if (port !== undefined) {
    if (!/^[0-9]{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535) throw bad(`port "${port}" is not a number from 1 to 65535`)
  }
  return host
}

function looksLikeHost(component: string): boolean {
  return component.includes('.') || component.includes(':') || component === 'localhost' || component.startsWith('[')
}

export function parseReference(input: string, opts: ParseReferenceOptions = {}): ImageReference {
  if (input.length === 0) throw invalid(input, 'empty')
  if (input.length > referenceLengthMax) throw invalid(input, `longer than ${referenceLengthMax} characters`)
  if (/\s/.test(input)) throw invalid(input, 'contains white space')

  let rest = input
  let digest: string | undefined
  const at = rest.indexOf('@')
  if (at >= 0) {
    digest = rest.slice(at + 1)
    rest = rest.slice(0, at)
    try {
      parseDigest(digest, 'digest')
    } catch (e) {
      throw invalid(input, e instanceof TessError ? e.message.replace(/^invalid /, 'bad ') : String(e), 'a digest is sha256: followed by 64 lowercase hex digits')
    }
  }

  let tag: string | undefined
  const lastSlash = rest.lastIndexOf('/')
  const colon = rest.indexOf(':', lastSlash + 1)
  if (colon >= 0) {
    tag = rest.slice(colon + 1)
    rest = rest.slice(0, colon)
    if (tag.length === 0) throw invalid(input, 'empty tag after ":"')
    if (tag.length > tagLengthMax) throw invalid(input, `tag is longer than ${tagLengthMax} characters`)
    if (!tagRe.test(tag)) throw invalid(input, `tag "${tag}" may only hold letters, digits, "_", "." and "-", and not start with "." or "-"`)
  }

  let registry: string | undefined
  let repository = rest
  const slash = rest.indexOf('/')
  if (slash >= 0) {
    const first = rest.slice(0, slash)
    if (looksLikeHost(first)) {
      try {
        registry = parseRegistryHost(first)
      } catch (e) {
        throw invalid(input, e instanceof TessError ? e.message : String(e))
      }
      repository = rest.slice(slash + 1)
    }
  }

  if (repository.length === 0) throw invalid(input, 'no repository name')
  if (repository.length > repositoryNameLengthMax) throw invalid(input, `repository name is longer than ${repositoryNameLengthMax} characters`)
  for (const c of repository.split('/')) {
    if (c.length === 0) throw invalid(input, 'empty path component in the repository name ("//" or a trailing "/")')
    if (!pathComponentRe.test(c)) {
      throw invalid(input, `repository path component "${c}" must be lowercase letters and digits, separated by ".", "_", "__" or "-"`)
    }
  }

  if (registry === undefined) {
    if (opts.defaultRegistry === undefined || opts.defaultRegistry === '') {
      throw invalid(input, 'it names no registry host and no default registry is configured',
        'prefix the registry host, e.g. 127.0.0.1:5000/test/busybox, or configure a default registry')
    }
    registry = parseRegistryHost(opts.defaultRegistry, 'default registry')
  }

  if (tag === undefined && digest === undefined) tag = opts.defaultTag ?? defaultTag
  const ref: ImageReference = { registry, repository }
  if (tag !== undefined) ref.tag = tag
  if (digest !== undefined) ref.digest = digest
  return ref
}

/** Canonical text: `registry/repository[:tag][@digest]`; the key of images.json. */
export function formatReference(ref: ImageReference): string {
  return `${ref.registry}/${ref.repository}${ref.tag !== undefined ? `:${ref.tag}` : ''}${ref.digest !== undefined ? `@${ref.digest}` : ''}`
}

/** `registry/repository` without tag or digest. */
export function formatRepository(ref: ImageReference): string {
  return `${ref.registry}/${ref.repository}`
}
