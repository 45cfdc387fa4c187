import { Readable } from 'node:stream'
import { describe, expect, it } from 'vitest'
import {
  checkImageRef, checkNodeName, checkPolicyPattern, checkUsername, formatAge, formatMs, parseCpus, parseEnv, parseMemory,
  parseRegistryUrl, readPassword, shortDigest, splitNames, stripOneNewline,
} from '../../src/cli/csm-input.js'
import { TessError } from '../../src/lib/errors.js'
import { cpusField, memoryField } from '../../src/lib/container-spec.js'
import { cpusMax, cpusMin, memoryLimitMinBytes } from '../../src/lib/limits.js'

function errorOf(fn: () => unknown): TessError {
  try {
    fn()
  } catch (e) {
    expect(e).toBeInstanceOf(TessError)
    return e as TessError
  }
  throw new Error('expected an error')
}

async function asyncErrorOf(p: Promise<unknown>): Promise<TessError> {
  try {
    await p
  } catch (e) {
    expect(e).toBeInstanceOf(TessError)
    return e as TessError
  }
  throw new Error('expected an error')
}

describe('parseCpus', () => {
  it('accepts positive numbers, fractions included', () => {
    expect(parseCpus('2')).toBe(2)
    expect(parseCpus('0.5')).toBe(0.5)
    expect(parseCpus('.25')).toBe(0.25)
    expect(parseCpus('1.')).toBe(1)
    expect(parseCpus(' 3 ')).toBe(3)
  })
  it('refuses zero, negatives and what is not a number', () => {
    for (const bad of ['0', '0.0', '-1', '', 'two', '1e2', '0x2', 'Infinity', 'NaN', '1,5', '99999']) {
      const e = errorOf(() => parseCpus(bad))
      expect(e.code, bad).toBe('TESS_E_INVALID')
      expect(e.hint).not.toBe('')
    }
  })
})

describe('parseMemory', () => {
  it('parses sizes and refuses 0', () => {
    expect(parseMemory('256M')).toBe(256 * 2 ** 20)
    expect(errorOf(() => parseMemory('0')).code).toBe('TESS_E_INVALID')
    expect(errorOf(() => parseMemory('lots')).message).toContain('--memory')
  })
})

describe('the CLI takes what the server takes (the bounds of lib/limits.ts)', () => {
  it('CPUs: the least and the most the server allows pass, one step beyond each is refused on both sides', () => {
    for (const n of [cpusMin, cpusMax]) {
      expect(parseCpus(String(n))).toBe(n)
      expect(cpusField({ cpus: n }, true)).toBe(n)
    }
    for (const n of [cpusMin / 2, cpusMax + 1]) expect(() => cpusField({ cpus: n }, true)).toThrow(TessError)
    expect(errorOf(() => parseCpus(String(cpusMin / 2))).hint).toContain(String(cpusMin))
    expect(errorOf(() => parseCpus(String(cpusMax + 1))).hint).toContain(String(cpusMax))
  })
  it("memory: the server's least limit passes, one byte under is refused with the least in the hint", () => {
    expect(parseMemory(`${memoryLimitMinBytes}`)).toBe(memoryLimitMinBytes)
    expect(memoryField({ memoryBytes: memoryLimitMinBytes }, true)).toBe(memoryLimitMinBytes)
    expect(() => memoryField({ memoryBytes: memoryLimitMinBytes - 1 }, true)).toThrow(TessError)
    expect(errorOf(() => parseMemory(`${memoryLimitMinBytes - 1}`)).hint).toContain('4M')
  })
})

describe('checkNodeName', () => {
  it('accepts node names, refuses others', () => {
    expect(checkNodeName('node2')).toBe('node2')
    expect(errorOf(() => checkNodeName('Node 2')).hint).toContain('tess host list')
  })
})

describe('splitNames', () => {
  it('splits on commas across repeated flags, trims, drops empties and duplicates', () => {
    expect(splitNames(['a,b', 'c', ' d , a', ''], 'CSM', '--csm')).toEqual(['a', 'b', 'c', 'd'])
    expect(splitNames(undefined, 'CSM', '--csm')).toEqual([])
    expect(splitNames([',,'], 'CSM', '--csm')).toEqual([])
  })
  it('checks every name', () => {
    const e = errorOf(() => splitNames(['ok,Bad_Name'], 'CSM', '--csm'))
    expect(e.code).toBe('TESS_E_INVALID')
    expect(e.message).toContain('Bad_Name')
    expect(e.message).toContain('--csm')
  })
})

describe('parseEnv', () => {
  it('keeps KEY=VALUE entries as given; values may be empty or hold "="', () => {
    expect(parseEnv(['A=1', '_B=', 'C_2=x=y', 'PATH=/bin:/usr/bin'])).toEqual(['A=1', '_B=', 'C_2=x=y', 'PATH=/bin:/usr/bin'])
    expect(parseEnv(undefined)).toEqual([])
  })
  it('refuses entries without "=", bad keys and duplicates', () => {
    for (const bad of [['NOEQUALS'], ['=v'], ['1A=x'], ['A-B=x'], ['A B=x'], ['é=x'], ['A=1', 'A=2']]) {
      const e = errorOf(() => parseEnv(bad))
      expect(e.code, bad.join(' ')).toBe('TESS_E_INVALID')
      expect(e.hint, bad.join(' ')).not.toBe('')
    }
  })
  it('never puts a value in an error message', () => {
    expect(errorOf(() => parseEnv(['BAD-KEY=s3cret'])).message).not.toContain('s3cret')
    expect(errorOf(() => parseEnv(['A=s3cret', 'A=other'])).message).not.toContain('s3cret')
    expect(errorOf(() => parseEnv(['A=s3cret\0'])).message).not.toContain('s3cret')
  })
})

describe('parseRegistryUrl', () => {
  it('accepts https and (with insecure) http, host and optional port', () => {
    expect(parseRegistryUrl('https://registry.example.com', false)).toEqual({ url: 'https://registry.example.com', host: 'registry.example.com' })
    expect(parseRegistryUrl('https://registry.example.com/', false)).toEqual({ url: 'https://registry.example.com', host: 'registry.example.com' })
    expect(parseRegistryUrl('http://127.0.0.1:5000', true)).toEqual({ url: 'http://127.0.0.1:5000', host: '127.0.0.1:5000' })
    expect(parseRegistryUrl('HTTPS://localhost:443', false)).toEqual({ url: 'https://localhost:443', host: 'localhost:443' })
    expect(parseRegistryUrl('https://[::1]:5000', false)).toEqual({ url: 'https://[::1]:5000', host: '[::1]:5000' })
    expect(parseRegistryUrl('https://registry.example.com', true).host).toBe('registry.example.com')
  })
  it('refuses plain http without insecure, with a hint', () => {
    const e = errorOf(() => parseRegistryUrl('http://127.0.0.1:5000', false))
    expect(e.code).toBe('TESS_E_INVALID')
    expect(e.hint).toContain('--insecure')
  })
  it('refuses other schemes, paths, queries, fragments, bad hosts and ports', () => {
    for (const bad of ['ftp://host', 'registry.example.com', '//host', 'https://', 'https://host/v2', 'https://host?x=1', 'https://host#f',
      'https://host:0', 'https://host:70000', 'https://host:abc', 'https://ho_st', 'https://-host', 'https://a..b']) {
      const e = errorOf(() => parseRegistryUrl(bad, true))
      expect(e.code, bad).toBe('TESS_E_INVALID')
      expect(e.hint, bad).not.toBe('')
    }
  })
  it('refuses credentials in the URL without repeating them', () => {
    for (const bad of ['https://alice:s3cret@registry.example.com', 'http://alice:s3cret@host:5000/x', 'alice:s3cret@host:5000', 'https://host/?token=s3cret']) {
      const e = errorOf(() => parseRegistryUrl(bad, true))
      expect(e.message, bad).not.toContain('s3cret')
      expect(e.hint, bad).not.toContain('s3cret')
    }
    expect(errorOf(() => parseRegistryUrl('https://alice:s3cret@host', true)).hint).toContain('--password-stdin')
  })
})

describe('checkUsername', () => {
  it('accepts ordinary names and refuses empty, ":" and control characters', () => {
    expect(checkUsername('ci-bot@example.com')).toBe('ci-bot@example.com')
    for (const bad of ['', 'a:b', 'a\nb', 'x'.repeat(300)]) expect(errorOf(() => checkUsername(bad)).code).toBe('TESS_E_INVALID')
  })
})

describe('readPassword', () => {
  it('reads everything and removes one trailing newline only', async () => {
    expect(await readPassword(Readable.from([Buffer.from('s3cret\n')]))).toBe('s3cret')
    expect(await readPassword(Readable.from([Buffer.from('s3cret\r\n')]))).toBe('s3cret')
    expect(await readPassword(Readable.from([Buffer.from('s3cret\n\n')]))).toBe('s3cret\n')
    expect(await readPassword(Readable.from([Buffer.from(' pa'), Buffer.from('ss ')]))).toBe(' pass ')
  })
  it('refuses an empty or oversized password without showing it', async () => {
    for (const input of ['', '\n', '\r\n']) {
      const e = await asyncErrorOf(readPassword(Readable.from([Buffer.from(input)])))
      expect(e.code).toBe('TESS_E_INVALID')
    }
    const big = 's3cret'.repeat(1000)
    const e = await asyncErrorOf(readPassword(Readable.from([Buffer.from(big)])))
    expect(e.message).not.toContain('s3cret')
    expect(e.hint).not.toContain('s3cret')
  })
  it('stripOneNewline', () => {
    expect(stripOneNewline('a')).toBe('a')
    expect(stripOneNewline('a\n')).toBe('a')
    expect(stripOneNewline('a\r\n')).toBe('a')
    expect(stripOneNewline('a\n\n')).toBe('a\n')
  })
})

describe('checkPolicyPattern', () => {
  const digest = `@sha256:${'ab'.repeat(32)}`
  it('accepts host/repository globs, tags, ports and digests', () => {
    for (const ok of ['127.0.0.1:5000/team/*', 'registry.example.com/**', '*.corp.example/app:v*', 'registry.example.com/library/busybox:1.36',
      'localhost:5000/a/**/b', '*/**', '[::1]:5000/x', 'host:*/x', digest]) {
      expect(checkPolicyPattern(ok), ok).toBe(ok)
    }
  })
  it('refuses what can never be a pattern', () => {
    for (const bad of ['', 'busybox', 'host:5000', '/repo', 'host/', 'host//repo', 'host/Repo', 'host/a b', 'host/***', 'host/a**',
      'host/repo:', 'host/repo:t@g', '@sha256:abc', `@sha512:${'ab'.repeat(64)}`, `host/repo${digest}`, `@sha256:${'AB'.repeat(32)}`, 'ho_st/repo', 'x'.repeat(2000)]) {
      const e = errorOf(() => checkPolicyPattern(bad))
      expect(e.code, bad).toBe('TESS_E_INVALID')
      expect(e.hint, bad).not.toBe('')
    }
  })
})

describe('checkImageRef', () => {
  it('accepts references with or without a registry host', () => {
    for (const ok of ['127.0.0.1:5000/test/busybox:1.36', 'busybox', 'team/app', `registry.example.com/app@sha256:${'0'.repeat(64)}`]) {
      expect(checkImageRef(ok)).toBe(ok)
    }
  })
  it('refuses malformed references', () => {
    for (const bad of ['', 'Busybox', 'host/app:', 'host/app@sha256:xyz', 'a b', 'host//app']) {
      expect(errorOf(() => checkImageRef(bad)).code, bad).toBe('TESS_E_INVALID')
    }
  })
})

describe('formatting helpers', () => {
  it('shortDigest keeps sha256: and 12 hex digits', () => {
    expect(shortDigest(`sha256:${'0123456789abcdef'.repeat(4)}`)).toBe('sha256:0123456789ab')
    expect(shortDigest('sha256:0123456789ab')).toHaveLength(19)
  })
  it('formatAge', () => {
    const now = Date.parse('2025-01-02T00:00:00Z')
    expect(formatAge('2025-01-01T23:59:30Z', now)).toBe('30s ago')
    expect(formatAge('2025-01-01T23:55:00Z', now)).toBe('5m ago')
    expect(formatAge('2025-01-01T21:00:00Z', now)).toBe('3h ago')
    expect(formatAge('2024-12-20T00:00:00Z', now)).toBe('13d ago')
    expect(formatAge('2025-01-03T00:00:00Z', now)).toBe('0s ago')
    expect(formatAge(null, now)).toBe('-')
    expect(formatAge('not a date', now)).toBe('not a date')
  })
  it('formatMs', () => {
    expect(formatMs(500)).toBe('500ms')
    expect(formatMs(10_000)).toBe('10s')
    expect(formatMs(1500)).toBe('1.5s')
    expect(formatMs(90_000)).toBe('1.5m')
    expect(formatMs(3_600_000)).toBe('1h')
  })
})

describe('usageMessage (oclif parse errors)', () => {
  it('keeps the first line, or the listed errors of the list form', async () => {
    const { usageMessage } = await import('../../src/cli/base.js')
    expect(usageMessage('Nonexistent flag: --bogus\nSee more help with --help')).toBe('Nonexistent flag: --bogus')
    expect(usageMessage('The following errors occurred:\n  --csm=a cannot also be provided when using --pool\n  Missing required flag name\nSee more help with --help'))
      .toBe('--csm=a cannot also be provided when using --pool; Missing required flag name')
    expect(usageMessage('Missing 2 required args:\nname  The name.\nurl   The URL.\nSee more help with --help')).toBe('Missing 2 required args: name: The name.; url: The URL.')
    expect(usageMessage('Parsing --tail \n\tExpected an integer but received: abc\nSee more help with --help')).toBe('invalid --tail: expected an integer but received: abc')
    expect(usageMessage('')).toBe('bad usage')
  })
})
