import Table from 'cli-table3'
import type { Ora } from 'ora'
import { TessError } from '../lib/errors.js'
import type { EvacuationProgress } from '../lib/types.js'

const useColor = (): boolean => !process.env.NO_COLOR && process.stdout.isTTY === true

/** `--no-headers` was given (TessCommand sets it before the command runs): tables print their rows only. */
let headersOff = false
export function setHeadersOff(off: boolean): void {
  headersOff = off
}

/** cli-table3 characters for a table without borders: columns apart by two spaces */
const noBorders = {
  'top': '', 'top-mid': '', 'top-left': '', 'top-right': '', 'bottom': '', 'bottom-mid': '', 'bottom-left': '', 'bottom-right': '',
  'left': '', 'left-mid': '', 'mid': '', 'mid-mid': '', 'right': '', 'right-mid': '', 'middle': '  ',
}

/**
 * A table for `list` commands (cli-table3). On a terminal: boxed, coloured unless NO_COLOR. When
 * stdout is not a terminal (a pipe, a file): plain columns aligned with spaces, a header line and
 * one line per row, no box characters, so `awk`, `cut` and `grep` can use them.
 */
export function table(head: string[], rows: Array<Array<string | number>>, tty = process.stdout.isTTY === true): string {
  if (headersOff) head = []
  if (!tty) {
    const t = new Table({ head, chars: noBorders, style: { 'head': [], 'border': [], 'padding-left': 0, 'padding-right': 0 } })
    for (const r of rows) t.push(r.map((c) => String(c)))
    return t.toString().split('\n').map((l) => l.trimEnd()).join('\n')
  }
  const t = new Table({ head, style: { head: useColor() ? ['cyan'] : [], border: useColor() ? ['grey'] : [] } })
  for (const r of rows) t.push(r.map((c) => String(c)))
  return t.toString()
}

/** `key: value` lines for `show` commands, keys aligned. */
export function keyValue(pairs: Array<[string, string | number | boolean | null | undefined]>): string {
  const w = Math.max(...pairs.map(([k]) => k.length))
  return pairs.map(([k, v]) => `${(k + ':').padEnd(w + 1)} ${v === null || v === undefined ? '-' : String(v)}`).join('\n')
}

/** A spinner needs a terminal this wide: at 0 columns (some CI runners, serial consoles) ora's redraw never ends. */
export const spinnerColumnsMin = 20
/** how often a running evacuation's progress is read */
const evacuationPollMs = 1000

/** `--no-progress` was given (TessCommand sets it before the command runs). */
let progressOff = false
export function setProgressOff(off: boolean): void {
  progressOff = off
}

/**
 * Whether progress is turned off by the environment: `TERM=dumb` (no cursor movement), or `CI`
 * set to anything but "false" or "0" (CI logs keep every redraw as a line).
 */
export function progressOffByEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  const ci = env.CI
  return env.TERM === 'dumb' || (ci !== undefined && ci !== '' && ci !== 'false' && ci !== '0')
}

/**
 * Whether a spinner may draw: enabled, not turned off (`--no-progress`, `TERM=dumb`, `CI`), both
 * stdout and stderr are terminals, stderr reports a usable width.
 */
export function spinnerAllowed(enabled: boolean, out: { isTTY?: boolean } = process.stdout, err: { isTTY?: boolean, columns?: number } = process.stderr, env: NodeJS.ProcessEnv = process.env): boolean {
  return enabled && !progressOff && !progressOffByEnv(env) && out.isTTY === true && err.isTTY === true && (err.columns ?? 0) >= spinnerColumnsMin
}

/**
 * Run `fn` under a spinner on stderr. The spinner shows only on a terminal of a usable width and
 * never in --json mode, so scripts see nothing but the result on stdout. Where progress is turned
 * off (`--no-progress`, `TERM=dumb`, `CI`) but stdout and stderr are terminals, nothing is redrawn:
 * only the outcome is printed, one line (✔ or ✖ and the last text), as the spinner would end.
 */
export async function withSpinner<T>(enabled: boolean, text: string, fn: (s: { text: (t: string) => void }) => Promise<T>): Promise<T> {
  const show = spinnerAllowed(enabled)
  const outcomeOnly = !show && enabled && process.stdout.isTTY === true && process.stderr.isTTY === true
  let spinner: Ora | undefined
  let last = text
  if (show) {
    // loaded only when a spinner is drawn: most commands (and every one in a script) never draw one
    const { default: ora } = await import('ora')
    spinner = ora({ text, stream: process.stderr, color: useColor() ? 'cyan' : undefined }).start()
  }
  try {
    const r = await fn({ text: (t) => { last = t; if (spinner) spinner.text = t } })
    spinner?.succeed()
    if (outcomeOnly) process.stderr.write(`✔ ${last}\n`)
    return r
  } catch (e) {
    spinner?.fail()
    if (outcomeOnly) process.stderr.write(`✖ ${last}\n`)
    throw e
  }
}

/**
 * Follow an evacuation that runs on the CVM (a host's or a disk's): `start` begins it, `poll` reads
 * its progress once a second, shown on a spinner as "<what>: moved/total extent groups"; returns
 * the finished job, or throws its error when it failed.
 */
export async function followEvacuation(enabled: boolean, what: string, start: () => Promise<EvacuationProgress>, poll: () => Promise<EvacuationProgress>): Promise<EvacuationProgress> {
  const job = await withSpinner(enabled, what, async (s) => {
    let j = await start()
    for (;;) {
      s.text(`${what}: ${j.egroupsMoved}/${j.egroupsTotal} extent groups${j.vdisk ? ` (vDisk ${j.vdisk})` : ''}`)
      if (j.state !== 'running') return j
      await new Promise((r) => setTimeout(r, evacuationPollMs))
      j = await poll()
    }
  })
  if (job.state === 'failed') throw TessError.fromBody({ error: job.error }, `${what} failed`)
  return job
}
