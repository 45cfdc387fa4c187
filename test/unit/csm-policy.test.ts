import { describe, expect, it } from 'vitest'
import { checkPattern, patternMatches, refusingRule } from '../../src/cvm/control/policy.js'
import type { PolicyInput } from '../../src/cvm/images/puller.js'

const d1 = `sha256:${'a'.repeat(64)}`
const d2 = `sha256:${'b'.repeat(64)}`
const img = (registry: string, repository: string, tag?: string, digest = d1, indexDigest?: string): PolicyInput => ({
  ref: `${registry}/${repository}${tag !== undefined ? `:${tag}` : ''}`, registry, repository, digest,
  ...(tag !== undefined ? { tag } : {}), ...(indexDigest !== undefined ? { indexDigest } : {}),
})

describe('registry policy patterns', () => {
  it('accepts repository globs and digests, refuses the rest with a hint', () => {
    for (const p of ['[::1]:5000/x', '127.0.0.1:5000/test/*', 'docker.io/**', 'reg.example.com/a/b:v1', `@${d1}`, '*/library/*']) expect(checkPattern(p)).toBe(p)
    for (const p of ['', 'docker.io', 'a//b', 'a/b/', '@sha256:xyz', `@sha512:${'a'.repeat(128)}`, 'a b/c', 'x'.repeat(600)]) {
      expect(() => checkPattern(p), p).toThrow(/pattern/)
    }
  })

  it('* stays within a path segment, ** crosses them', () => {
    expect(patternMatches('r:5000/test/*', img('r:5000', 'test/busybox'))).toBe(true)
    expect(patternMatches('r:5000/test/*', img('r:5000', 'test/deep/busybox'))).toBe(false)
    expect(patternMatches('r:5000/test/**', img('r:5000', 'test/deep/busybox'))).toBe(true)
    expect(patternMatches('r:5000/test/*', img('r:6000', 'test/busybox'))).toBe(false)
    expect(patternMatches('r:5000/test/busy.ox', img('r:5000', 'test/busybox'))).toBe(false) // "." is literal
  })

  it('a tag in the pattern must match the tag', () => {
    expect(patternMatches('r/test/app:v1', img('r', 'test/app', 'v1'))).toBe(true)
    expect(patternMatches('r/test/app:v1', img('r', 'test/app', 'v2'))).toBe(false)
    expect(patternMatches('r/test/app:v*', img('r', 'test/app', 'v2'))).toBe(true)
    expect(patternMatches('r/test/app:v1', img('r', 'test/app'))).toBe(false)
    expect(patternMatches('r:5000/test/app', img('r:5000', 'test/app', 'v9'))).toBe(true) // a registry port is not a tag
  })

  it('a digest rule matches the manifest or the index it came from', () => {
    expect(patternMatches(`@${d1}`, img('r', 'x', 'v1', d1))).toBe(true)
    expect(patternMatches(`@${d2}`, img('r', 'x', 'v1', d1, d2))).toBe(true)
    expect(patternMatches(`@${d2}`, img('r', 'x', 'v1', d1))).toBe(false)
  })

  it('deny wins over allow; with allow rules, everything else is refused; the rule is named', () => {
    expect(refusingRule({ allow: [], deny: [] }, img('r', 'a/b'))).toBeUndefined()
    expect(refusingRule({ allow: ['r/a/*'], deny: ['r/a/bad'] }, img('r', 'a/bad'))).toBe('deny r/a/bad')
    expect(refusingRule({ allow: ['r/a/*'], deny: [] }, img('r', 'a/good'))).toBeUndefined()
    expect(refusingRule({ allow: ['r/a/*'], deny: [] }, img('q', 'a/good'))).toMatch(/^allow list \(1 rule, none matches q\/a\/good\)$/)
    expect(refusingRule({ allow: [], deny: [`@${d1}`] }, img('r', 'a/b', 'v1', d1))).toBe(`deny @${d1}`)
  })
})
