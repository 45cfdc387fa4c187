import { describe, expect, it } from 'vitest'
import { sinceToIso } from '../../src/cli/since.js'

describe('tess events --since', () => {
  const now = Date.parse('2026-12-06T12:00:00Z')
  it('takes a duration back from now or a time', () => {
    expect(sinceToIso('10m', now)).toBe('2026-12-06T11:50:00.000Z')
    expect(sinceToIso('2h', now)).toBe('2026-12-06T10:00:00.000Z')
    expect(sinceToIso('90s', now)).toBe('2026-12-06T11:58:30.000Z')
    expect(sinceToIso('2026-12-06T10:00:00+01:00', now)).toBe('2026-12-06T09:00:00.000Z')
  })
  it('refuses anything else as a usage error with a hint', () => {
    for (const bad of ['yesterday', '10 minutes', '-5m', '2026-13-45T99:00:00Z', '']) {
      expect(() => sinceToIso(bad, now), bad).toThrow(expect.objectContaining({ code: 'TESS_E_USAGE', hint: expect.stringContaining('ISO 8601') }))
    }
  })
})
