import { describe, expect, it } from 'vitest'
import { TessError } from '../../src/lib/errors.js'
import { checkName } from '../../src/lib/names.js'
import { formatBytes, parseDuration, parseSize } from '../../src/lib/units.js'

describe('parseSize', () => {
  it('accepts bytes and binary units', () => {
    expect(parseSize('4096')).toBe(4096)
    expect(parseSize('512M')).toBe(512 * 2 ** 20)
    expect(parseSize('10G')).toBe(10 * 2 ** 30)
    expect(parseSize('1T')).toBe(2 ** 40)
    expect(parseSize('1GiB')).toBe(2 ** 30)
    expect(parseSize('2gb')).toBe(2 * 2 ** 30)
    expect(parseSize('1.5G')).toBe(1.5 * 2 ** 30)
    expect(parseSize(' 7k ')).toBe(7 * 1024)
  })

  it('rejects what is not a size, with a code and a hint', () => {
    for (const bad of ['', 'G', 'lots', '-1G', '1X', '1.0000001K', '1e3', '0x10', '9999999999P']) {
      let err: unknown
      try {
        parseSize(bad)
      } catch (e) {
        err = e
      }
      expect(err, bad).toBeInstanceOf(TessError)
      expect((err as TessError).code).toBe('TESS_E_INVALID')
      expect((err as TessError).hint).not.toBe('')
      expect((err as TessError).exitCode).toBe(2)
    }
  })

  it('formats bytes for people', () => {
    expect(formatBytes(0)).toBe('0 B')
    expect(formatBytes(1023)).toBe('1023 B')
    expect(formatBytes(1024)).toBe('1 KiB')
    expect(formatBytes(1536)).toBe('1.5 KiB')
    expect(formatBytes(2 ** 30)).toBe('1 GiB')
  })

  it('parses durations', () => {
    expect(parseDuration('500ms')).toBe(500)
    expect(parseDuration('30s')).toBe(30_000)
    expect(parseDuration('5m')).toBe(300_000)
    expect(() => parseDuration('soon')).toThrow(TessError)
  })
})

describe('names', () => {
  it('accepts [a-z0-9][a-z0-9-]{0,62}', () => {
    for (const ok of ['a', 'v1', 'db-1', '0', 'a'.repeat(63)]) expect(checkName('vDisk', ok)).toBe(ok)
  })
  it('rejects everything else', () => {
    for (const bad of ['', '-a', 'A', 'a_b', 'a.b', 'a/b', 'a'.repeat(64), 'é', 'a b']) {
      expect(() => checkName('vDisk', bad), bad).toThrow(/invalid vDisk name/)
    }
  })
})
