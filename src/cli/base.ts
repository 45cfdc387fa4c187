import path from 'node:path'
import { Command, Flags, Errors, type Interfaces } from '@oclif/core'
import { TessError, errorMessage, isTessError } from '../lib/errors.js'
import { ApiClient } from '../lib/apiclient.js'
import { logTail } from '../lib/process.js'
import { resolveContext, type ClusterContext } from '../lib/contexts.js'
import { setHeadersOff, setProgressOff } from './output.js'
import { formatResult, loadFormat, names, outputFormatOf, outputFormats } from './format.js'

/** how often `--watch` prints a list, stats or status again */
export const watchIntervalMs = 2000

/** `--watch` of the list, stats and status commands (those with `static watchable = true`); the base command runs the loop */
export const watchFlag = Flags.boolean({ char: 'w', description: `Print the result again every ${watchIntervalMs / 1000} s until Ctrl-C (with --json: one JSON document per line).` })

/**
 * A loop that Ctrl-C ends (a --watch): `stopped` turns true on SIGINT or when stdout goes away
 * (`| head`: quietly; another stdout error sets exit code 1), and `pause` returns at once then.
 * `end()` takes the SIGINT handler away.
 */
export function untilInterrupted(): { readonly stopped: boolean, pause(ms: number): Promise<void>, end(): void } {
  let stopped = false
  let wake: (() => void) | undefined
  const stop = () => {
    stopped = true
    wake?.()
  }
  // a second Ctrl-C while a request is still in flight ends the process at once
  const onSigint = () => {
    if (stopped) process.exit(130)
    stop()
  }
  const onStdoutError = (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') process.exitCode = 1
    stop()
  }
  process.on('SIGINT', onSigint)
  process.stdout.on('error', onStdoutError)
  return {
    get stopped() { return stopped },
    pause: (ms) => new Promise<void>((resolve) => {
      if (stopped) return resolve()
      const t = setTimeout(resolve, ms)
      wake = () => { clearTimeout(t); resolve() }
    }),
    // the stdout error listener stays: an EPIPE may still be reported after the loop
    end: () => { process.off('SIGINT', onSigint) },
  }
}

export type BaseFlags<T extends typeof Command> = Interfaces.InferredFlags<(typeof TessCommand)['baseFlags'] & T['flags']>

/**
 * Every command: `--json` prints the typed result and nothing else on stdout; without it the
 * result is rendered as a table or key: value lines. Errors become TESS_E_* codes with a hint and
 * the documented exit code (stdout JSON with --json, stderr text without).
 */
export abstract class TessCommand<R> extends Command {
  static override baseFlags = {
    json: Flags.boolean({ description: 'Print the result as JSON on stdout (errors too, as {"error": {...}}).', helpGroup: 'GLOBAL' }),
    cluster: Flags.string({ description: 'Cluster context to use (default: the last created).', env: 'TESS_CLUSTER', helpGroup: 'GLOBAL' }),
    'no-headers': Flags.boolean({ description: 'Print tables without their header line (for scripts; text output only).', helpGroup: 'GLOBAL' }),
    'no-progress': Flags.boolean({ description: 'Draw no spinner or progress on stderr (also off with TERM=dumb, CI set, or stderr not a terminal).', helpGroup: 'GLOBAL' }),
    output: Flags.string({ char: 'o', description: 'Print the result as json (same as --json), yaml, wide (every field, nested ones as JSON) or name (one name per line).', options: [...outputFormats], helpGroup: 'GLOBAL' }),
    quiet: Flags.boolean({ char: 'q', description: 'Print only the names of a list, one per line; other commands print nothing but errors.', helpGroup: 'GLOBAL' }),
  }

  /** the command takes --watch (watchFlag): the base command prints its result again every watchIntervalMs */
  static watchable = false

  protected jsonMode = false
  /** set by a command that printed its result as it came (a --watch): nothing more is printed */
  protected streamed = false

  /** Do the work; return the result that --json prints. */
  protected abstract exec(): Promise<R>

  /** Render the result for people. */
  protected abstract render(result: R): string

  async run(): Promise<void> {
    // Only a --json before "--": what follows "--" belongs to the command (e.g. `container run ... -- CMD`).
    const dashdash = this.argv.indexOf('--')
    const own = dashdash < 0 ? this.argv : this.argv.slice(0, dashdash)
    this.jsonMode = own.includes('--json')
    const format = outputFormatOf(own) // an unknown format is refused before anything is done
    await loadFormat(format)
    if (format === 'json') this.jsonMode = true
    const quiet = own.includes('-q') || own.includes('--quiet')
    setProgressOff(own.includes('--no-progress'))
    setHeadersOff(own.includes('--no-headers'))
    if ((this.constructor as typeof TessCommand).watchable && (own.includes('--watch') || own.includes('-w'))) return this.watch(format, quiet)
    const result = await this.exec()
    if (this.streamed) return
    if (this.jsonMode || format === 'json') {
      process.stdout.write(JSON.stringify(result, null, 2) + '\n')
    } else {
      const text = this.textOf(result, format, quiet)
      if (text) process.stdout.write(text.endsWith('\n') ? text : text + '\n')
    }
  }

  private textOf(result: R, format: Exclude<ReturnType<typeof outputFormatOf>, 'json'>, quiet: boolean): string {
    return format !== undefined ? formatResult(result, format) : quiet ? (Array.isArray(result) ? names(result) : '') : this.render(result)
  }

  /**
   * `--watch`: the command's work and output again every watchIntervalMs until Ctrl-C (exit 0)
   * or an error (its code). On a terminal each print replaces the last, under a line with the
   * time; otherwise prints follow each other, a blank line between them, and with --json each is
   * one line of JSON.
   */
  private async watch(format: ReturnType<typeof outputFormatOf>, quiet: boolean): Promise<void> {
    const loop = untilInterrupted()
    const redraw = !this.jsonMode && process.stdout.isTTY === true
    try {
      for (let n = 0; !loop.stopped; n++) {
        const result = await this.exec()
        if (loop.stopped) break
        if (this.jsonMode || format === 'json') {
          process.stdout.write(JSON.stringify(result) + '\n')
        } else {
          const text = this.textOf(result, format, quiet).replace(/\n?$/, '\n')
          process.stdout.write(redraw ? `\x1b[H\x1b[2J${new Date().toISOString()}  every ${watchIntervalMs / 1000} s, Ctrl-C stops\n\n${text}` : `${n > 0 ? '\n' : ''}${text}`)
        }
        await loop.pause(watchIntervalMs)
      }
    } finally {
      loop.end()
    }
  }

  /**
   * Parse flags and args, turning oclif's parse failures into usage errors. `argv` (default: the
   * command's argv) lets a command parse only part of it; `argv` in the result holds every
   * positional argument, the declared ones included (extras only with `static strict = false`).
   */
  protected async parseInput<T extends typeof Command>(cmd: T, argv?: string[]): Promise<{ flags: BaseFlags<T>, args: Interfaces.InferredArgs<T['args']>, argv: string[] }> {
    try {
      const r = await this.parse(cmd as unknown as typeof TessCommand, argv ?? this.argv)
      return { flags: r.flags as BaseFlags<T>, args: r.args as Interfaces.InferredArgs<T['args']>, argv: r.argv.map(String) }
    } catch (e) {
      if (isTessError(e)) throw e
      throw new TessError('TESS_E_USAGE', usageMessage(errorMessage(e)), `see \`tess ${this.id?.replace(/:/g, ' ') ?? ''} --help\``)
    }
  }

  protected context(name: string | undefined): ClusterContext {
    const ctx = resolveContext(name)
    this.usedContext = ctx
    return ctx
  }

  /** the context this command talks to (for the hint of an unreachable embedded cluster) */
  private usedContext: ClusterContext | undefined

  /** The API client of a context; TESS_TOKEN, when set, is the token it sends (a user's, from `tess user create`). */
  protected client(ctx: ClusterContext): ApiClient {
    const token = process.env.TESS_TOKEN?.trim()
    return new ApiClient(token !== undefined && token !== '' ? { ...ctx, token } : ctx)
  }

  protected get interactive(): boolean {
    return !this.jsonMode && process.stdin.isTTY === true && process.stdout.isTTY === true
  }

  /** Ask before a destructive step; `--yes` skips; without a terminal, refuse with a usage error. */
  protected async confirm(question: string, yes: boolean, what: string): Promise<void> {
    if (yes) return
    if (!this.interactive) {
      throw new TessError('TESS_E_USAGE', `refusing to ${what} without --yes: there is no terminal to ask on`, 'pass --yes to confirm')
    }
    const { confirm } = await import('@inquirer/prompts')
    const ok = await confirm({ message: question, default: false }, { output: process.stderr })
    if (!ok) throw new TessError('TESS_E_USAGE', `${what}: cancelled`, 'nothing was changed')
  }

  protected override async catch(err: Error & { exitCode?: number }): Promise<void> {
    if (err instanceof Errors.ExitError) throw err
    let te: TessError
    if (isTessError(err)) te = err
    else if (err.name === 'ExitPromptError') te = new TessError('TESS_E_USAGE', 'cancelled at the prompt', 'nothing was changed')
    else if (err instanceof Errors.CLIError && /flag|argument|Missing|Unexpected|Nonexistent|Expected/i.test(err.message)) te = new TessError('TESS_E_USAGE', err.message.split('\n')[0] ?? 'bad usage', `see \`tess ${this.id?.replace(/:/g, ' ') ?? ''} --help\``)
    else te = new TessError('TESS_E_INTERNAL', `unexpected error: ${errorMessage(err)}`, 'this is a bug; run with DEBUG=* for details')
    // an embedded cluster whose CVM refuses to start: say why, from its log on this machine
    const refusal = te.code === 'TESS_E_UNREACHABLE' && this.usedContext?.local !== undefined ? cvmRefusal(this.usedContext.local.dataDir) : undefined
    if (refusal !== undefined) te = new TessError(te.code, te.message, `the CVM does not start: ${refusal}`)
    if (this.jsonMode) {
      process.stdout.write(JSON.stringify({ error: te.toBody() }, null, 2) + '\n')
    } else {
      process.stderr.write(`Error: ${te.message} [${te.code}]\n`)
      if (te.hint) process.stderr.write(`Hint: ${te.hint}\n`)
    }
    if (process.env.DEBUG && !isTessError(err)) process.stderr.write(`${err.stack ?? ''}\n`)
    process.exitCode = te.exitCode
  }
}

/** how recent the CVM's last fatal line must be to explain an unreachable API */
const cvmRefusalRecentMs = 2 * 60_000
/** the end of cvm.log that is read for it */
const cvmLogTailBytes = 64 * 1024

/**
 * Why the embedded cluster's CVM exits at start, from its log: the last `fatal:` line of
 * `<data-dir>/logs/cvm.log` if it was written in the last two minutes (the supervisor restarts a
 * CVM that exits, so a refusal repeats), else undefined.
 */
export function cvmRefusal(dataDir: string, nowMs = Date.now()): string | undefined {
  // '' when there is no log (yet): nothing to add to the hint
  const text = logTail(path.join(dataDir, 'logs', 'cvm.log'), Infinity, cvmLogTailBytes)
  const line = text.split('\n').reverse().find((l) => / fatal: /.test(l))
  if (line === undefined) return undefined
  const at = Date.parse(line.split(' ')[0] ?? '')
  if (!Number.isFinite(at) || nowMs - at > cvmRefusalRecentMs) return undefined
  return line.slice(line.indexOf(' fatal: ') + ' fatal: '.length)
}

/**
 * The useful part of an oclif parse error on one line: its first line, or, when that ends with
 * ":" ("The following errors occurred:", "Missing 1 required arg:"), the lines it introduces.
 */
export function usageMessage(message: string): string {
  const lines = message.split('\n').map((l) => l.trim().replace(/\s{2,}/g, ': ')).filter((l) => l !== '' && !/^See more help/i.test(l))
  const first = lines[0]
  if (first === undefined) return 'bad usage'
  // "Parsing --tail" over "Expected an integer but received: abc": the flag and why, on one line
  const parsing = /^Parsing (--\S+)$/.exec(first)
  if (parsing !== null && lines[1] !== undefined) return `invalid ${parsing[1]}: ${lines[1].charAt(0).toLowerCase()}${lines[1].slice(1)}`
  if (lines.length === 1 || !first.endsWith(':')) return first
  const rest = lines.slice(1).join('; ')
  return /errors occurred:$/i.test(first) ? rest : `${first} ${rest}`
}
