import { TessError } from '../lib/errors.js'
import { parseDuration } from '../lib/units.js'

/** `--since`: a duration back from now (10m, 2h) or a time (ISO 8601); the ISO time it stands for. */
export function sinceToIso(since: string, now = Date.now()): string {
  const invalid = () => new TessError('TESS_E_USAGE', `invalid --since "${since}"`, 'a duration back from now (30s, 10m, 2h) or a time in ISO 8601 (2026-12-06T10:00:00Z)')
  if (/^\d{4}-\d{2}-\d{2}/.test(since)) {
    const t = Date.parse(since)
    if (Number.isNaN(t)) throw invalid()
    return new Date(t).toISOString()
  }
  try {
    return new Date(now - parseDuration(since, '--since')).toISOString()
  } catch {
    throw invalid()
  }
}
