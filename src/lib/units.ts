import { TessError } from './errors.js'

const unitShift: Record<string, number> = {
  '': 0, b: 0,
  k: 10, kb: 10, kib: 10,
  m: 20, mb: 20, mib: 20,
  g: 30, gb: 30, gib: 30,
  t: 40, tb: 40, tib: 40,
  p: 50, pb: 50, pib: 50,
}

/**
 * Parse a size: `512M`, `10G`, `1T`, `1GiB`, `4096`. Units are binary (1G = 1 GiB).
 * Returns bytes as a number (exact up to 2^53, far above any size we accept).
 */
export function parseSize(input: string, what = 'size'): number {
  const s = input.trim()
  const m = /^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$/.exec(s)
  if (!m) {
    throw new TessError('TESS_E_INVALID', `invalid ${what} "${input}": not a number with an optional unit`, 'use bytes or a binary unit, e.g. 4096, 512M, 10G, 1T, 1GiB')
  }
  const unit = (m[2] ?? '').toLowerCase()
  const shift = unitShift[unit]
  if (shift === undefined) {
    throw new TessError('TESS_E_INVALID', `invalid ${what} "${input}": unknown unit "${m[2]}"`, 'units are K, M, G, T, P (binary: 1G = 1 GiB), optionally followed by iB or B')
  }
  const value = Number(m[1]) * 2 ** shift
  if (!Number.isSafeInteger(value)) {
    throw new TessError('TESS_E_INVALID', `invalid ${what} "${input}": not a whole number of bytes or too large`, 'give a whole number of bytes, e.g. 1.5G is fine, 1.0000001K is not')
  }
  return value
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`
  const units = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB']
  let v = n
  let i = -1
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  const digits = v >= 100 || Number.isInteger(v) ? 0 : 1
  return `${v.toFixed(digits)} ${units[i]}`
}

const durationMs: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }

export function parseDuration(input: string, what = 'duration'): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(input.trim())
  if (!m) throw new TessError('TESS_E_INVALID', `invalid ${what} "${input}"`, 'use e.g. 500ms, 30s, 5m')
  return Math.round(Number(m[1]) * (durationMs[m[2] ?? 's'] ?? 1000))
}

/** for messages: a number to 2 decimals */
export const round2 = (n: number): number => Math.round(n * 100) / 100
/** for messages: bytes as MiB, to 2 decimals */
export const mib = (n: number): string => `${round2(n / 1024 / 1024)} MiB`
/** for messages: bytes as GiB, to 2 decimals */
export const gib = (n: number): string => `${round2(n / 2 ** 30)} GiB`
