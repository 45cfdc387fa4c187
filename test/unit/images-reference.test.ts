import { describe, expect, it } from 'vitest'
import { TessError } from '../../src/lib/errors.js'
import { formatReference, parseReference, parseRegistryHost } from '../../src/lib/images/reference.js'

const hex = 'a'.repeat(64)

function fails(input: string, opts = {}): TessError {
  try {
    parseReference(input, opts)
  } catch (e) {
    expect(e).toBeInstanceOf(TessError)
    return e as TessError
  }
  throw new Error(`"${input}" parsed`)
}

describe('image references', () => {
  it('resolves a bare name against the configured default registry, tag latest, no library/ prefix', () => {
    expect(parseReference('busybox', { defaultRegistry: '127.0.0.1:5000' })).toEqual({ registry: '127.0.0.1:5000', repository: 'busybox', tag: 'latest' })
    expect(parseReference('library/busybox:1.36', { defaultRegistry: 'reg.local' })).toEqual({ registry: 'reg.local', repository: 'library/busybox', tag: '1.36' })
  })

  it('refuses a reference without registry when no default is configured', () => {
    const e = fails('busybox')
    expect(e.code).toBe('TESS_E_INVALID')
    expect(e.message).toContain('"busybox"')
    expect(e.message).toContain('no default registry')
    expect(e.hint).toMatch(/127\.0\.0\.1:5000\/test\/busybox/)
  })

  it('takes the first component as a host when it has a dot, a colon or is localhost', () => {
    expect(parseReference('127.0.0.1:5000/test/busybox:latest')).toEqual({ registry: '127.0.0.1:5000', repository: 'test/busybox', tag: 'latest' })
    expect(parseReference('localhost/a/b')).toEqual({ registry: 'localhost', repository: 'a/b', tag: 'latest' })
    expect(parseReference('registry.example.com/x')).toEqual({ registry: 'registry.example.com', repository: 'x', tag: 'latest' })
    expect(parseReference('[::1]:5000/x:1')).toEqual({ registry: '[::1]:5000', repository: 'x', tag: '1' })
    // not a host: no dot, colon or localhost
    expect(parseReference('test/busybox', { defaultRegistry: 'r.local' })).toEqual({ registry: 'r.local', repository: 'test/busybox', tag: 'latest' })
  })

  it('parses digests, with or without a tag', () => {
    expect(parseReference(`host.example/repo@sha256:${hex}`)).toEqual({ registry: 'host.example', repository: 'repo', digest: `sha256:${hex}` })
    expect(parseReference(`host.example/repo:v1@sha256:${hex}`)).toEqual({ registry: 'host.example', repository: 'repo', tag: 'v1', digest: `sha256:${hex}` })
    expect(formatReference(parseReference(`host.example/repo:v1@sha256:${hex}`))).toBe(`host.example/repo:v1@sha256:${hex}`)
    expect(formatReference(parseReference('busybox', { defaultRegistry: 'h:1' }))).toBe('h:1/busybox:latest')
  })

  it('refuses malformed references with the value and the reason', () => {
    const cases: Array<[string, RegExp]> = [
      ['', /empty/],
      ['h.example/Busybox', /lowercase/],
      ['h.example/busy box', /white space/],
      ['h.example/a//b', /empty path component/],
      ['h.example/a/', /empty path component/],
      ['h.example/a:', /empty tag/],
      ['h.example/a:-x', /tag "-x"/],
      [`h.example/a:${'x'.repeat(129)}`, /longer than 128/],
      ['h.example/a@sha256:abc', /64 lowercase hex/],
      [`h.example/a@md5:${hex}`, /not supported/],
      [`h.example/a@sha256:${'A'.repeat(64)}`, /lowercase hex/],
      ['h.example:99999/a', /port "99999"/],
      ['-bad.example/a', /host name component/],
      ['h.example/a__-b', /repository path component/],
      [`h.example/${'a'.repeat(256)}`, /longer than 255/],
    ]
    for (const [input, re] of cases) {
      const e = fails(input, {})
      expect(e.code, input).toBe('TESS_E_INVALID')
      expect(e.message, input).toMatch(re)
      expect(e.hint.length, input).toBeGreaterThan(0)
    }
  })

  it('accepts the separators of the grammar', () => {
    expect(parseReference('h.example/a.b_c__d-e--f/g:T_a.g-1').repository).toBe('a.b_c__d-e--f/g')
  })

  it('validates the default registry too', () => {
    expect(() => parseReference('busybox', { defaultRegistry: 'bad host' })).toThrow(/invalid default registry/)
    expect(parseRegistryHost('127.0.0.1:5000')).toBe('127.0.0.1:5000')
  })
})
