import type YAMLModule from 'yaml'
import { TessError } from '../lib/errors.js'
import { keyValue, table } from './output.js'

/** what `-o/--output` takes; text (no flag) is the command's own rendering */
export const outputFormats = ['json', 'yaml', 'wide', 'name'] as const
export type OutputFormat = (typeof outputFormats)[number]

/**
 * The `-o/--output` value in a command's own arguments (before any `--`): `-o F`, `-oF`,
 * `--output F`, `--output=F`; the last one wins. Undefined when not given. An unknown value is a
 * usage error here, before the command does anything.
 */
export function outputFormatOf(argv: readonly string[]): OutputFormat | undefined {
  let value: string | undefined
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    if (a === '-o' || a === '--output') value = argv[++i] ?? ''
    else if (a.startsWith('--output=')) value = a.slice('--output='.length)
    else if (a.startsWith('-o') && !a.startsWith('--') && a.length > 2) value = a.slice(2)
  }
  if (value === undefined) return undefined
  if ((outputFormats as readonly string[]).includes(value)) return value as OutputFormat
  throw new TessError('TESS_E_USAGE', `invalid --output "${value}": not one of ${outputFormats.join(', ')}`, 'use -o json, -o yaml, -o wide or -o name (or --json)')
}

type Item = Record<string, unknown>
const isItem = (v: unknown): v is Item => typeof v === 'object' && v !== null && !Array.isArray(v)

/** a value in one table cell or key: value line: scalars as they are, the rest as compact JSON */
function cell(v: unknown): string {
  if (v === null || v === undefined) return '-'
  if (typeof v === 'object') return JSON.stringify(v)
  return String(v)
}

/** what names an item: its name, else its id */
function nameOf(v: unknown): string | undefined {
  if (!isItem(v)) return typeof v === 'string' ? v : undefined
  const n = v.name ?? v.id
  return typeof n === 'string' || typeof n === 'number' ? String(n) : undefined
}

/**
 * One name per line: a list's items, or the one thing a command acted on. A result without names
 * (a status, a figure) is a usage error: there is nothing to print.
 */
export function names(result: unknown): string {
  const items = Array.isArray(result) ? result : [result]
  const out = items.map(nameOf)
  if (out.some((n) => n === undefined)) {
    throw new TessError('TESS_E_USAGE', 'this command\'s result has no names to print', 'use -o json, -o yaml or -o wide')
  }
  return out.join('\n')
}

/**
 * Every field as a column (lists) or a line (one object), nested values as compact JSON: what a
 * command's own table leaves out for width.
 */
export function wide(result: unknown): string {
  if (Array.isArray(result)) {
    if (result.length === 0) return ''
    if (!result.every(isItem)) return result.map(cell).join('\n')
    const keys: string[] = []
    for (const it of result) for (const k of Object.keys(it)) if (!keys.includes(k)) keys.push(k)
    return table(keys, result.map((it) => keys.map((k) => cell(it[k]))))
  }
  if (isItem(result)) return keyValue(Object.entries(result).map(([k, v]) => [k, cell(v)]))
  return cell(result)
}

let yaml: typeof YAMLModule | undefined

/** Load what `format` needs before formatResult runs (the YAML library only for -o yaml: commands start faster without it). */
export async function loadFormat(format: OutputFormat | undefined): Promise<void> {
  if (format === 'yaml') yaml ??= (await import('yaml')).default
}

/** the result in a format of `-o` (json is printed by the command itself, as with --json); loadFormat first */
export function formatResult(result: unknown, format: Exclude<OutputFormat, 'json'>): string {
  switch (format) {
    case 'yaml':
      if (yaml === undefined) throw new TessError('TESS_E_INTERNAL', 'the YAML output was not loaded', 'this is a bug: loadFormat runs before formatResult')
      return result === undefined ? '' : yaml.stringify(result)
    case 'name':
      return names(result)
    case 'wide':
      return wide(result)
  }
}
