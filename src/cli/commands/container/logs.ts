import { Args, Flags } from '@oclif/core'
import { TessCommand, untilInterrupted } from '../../base.js'
import { logsPollIntervalMs, logsTailMax } from '../../csm-input.js'
import { TessError } from '../../../lib/errors.js'
import { checkName } from '../../../lib/names.js'
import { logQueryParams, type LogChunk } from '../../../lib/csm-types.js'
import { sinceToIso } from '../../since.js'

/** `--json` result: the log as UTF-8 text. */
export interface ContainerLogsResult {
  name: string
  logs: string
}

/** Reads that answer no new bytes end a read without --follow; bounded all the same. */
const logsReadsMax = 100_000
/** With --json the whole log is held in memory: at most this much. */
const logsJsonMaxBytes = 64 * 1024 * 1024

export default class ContainerLogs extends TessCommand<ContainerLogsResult> {
  static override summary = 'Print the output of a container'
  static override description = `Prints what the container wrote to stdout and stderr, byte for byte, to stdout. --tail N starts with the last N lines. --follow keeps printing new output until the container exits or Ctrl-C.

--timestamps puts the time each line was written in front of it (RFC 3339 in UTC with nanoseconds, then a space), and --since starts with the first line written at or after a time (a duration back from now such as 10m, or an ISO 8601 time); with --tail, the last N lines of those. The times are those at which the node read the container's output, recorded with the log since the container's last start by tess-logger, which npm ci builds where g++ and make are installed; a container started without it has no times, and these two flags are refused for it (TESS_E_PRECONDITION).

A container's log keeps its last 32 to 64 MiB (over all its runs): older output is given back to the node's disk, and what is printed starts at the first whole line kept. This needs tess-logger too; without it the log is kept whole.

With --json the result is {"name", "logs"} with the output as UTF-8 text (not together with --follow).`
  static override examples = [
    '<%= config.bin %> <%= command.id %> web1',
    '<%= config.bin %> <%= command.id %> web1 --follow --tail 20',
    '<%= config.bin %> <%= command.id %> web1 --json',
    '<%= config.bin %> <%= command.id %> web1 --since 10m --timestamps',
  ]

  static override args = {
    name: Args.string({ description: 'Container name.', required: true }),
  }

  static override flags = {
    follow: Flags.boolean({ char: 'f', description: 'Keep printing new output until the container exits (Ctrl-C stops).' }),
    tail: Flags.integer({ char: 'n', description: 'Start with the last N lines only.', min: 0, max: logsTailMax }),
    since: Flags.string({ description: 'Start with the first line written since then: a duration back from now (30s, 10m, 2h) or a time (ISO 8601).' }),
    timestamps: Flags.boolean({ char: 't', description: 'Put the time each line was written in front of it (RFC 3339, UTC, nanoseconds).' }),
  }

  protected async exec(): Promise<ContainerLogsResult> {
    const { flags, args } = await this.parseInput(ContainerLogs)
    checkName('container', args.name)
    if (flags.follow && this.jsonMode) {
      throw new TessError('TESS_E_USAGE', '--follow cannot be used with --json', 'drop --follow to get the log so far as JSON')
    }
    const client = this.client(this.context(flags.cluster))
    const base = `/v1/containers/${encodeURIComponent(args.name)}/logs`
    const sinceMs = flags.since !== undefined ? Date.parse(sinceToIso(flags.since)) : undefined
    const read = (offset: number, tail?: number): Promise<LogChunk> => client.get<LogChunk>(`${base}?${logQueryParams({
      offset, ...(tail !== undefined ? { tail } : {}), ...(sinceMs !== undefined ? { sinceMs } : {}), ...(flags.timestamps ? { timestamps: true } : {}),
    }).toString()}`)

    // Ctrl-C (a second one ends the process at once) or the reader gone (`| head`) stop it
    const loop = untilInterrupted()
    const json: Buffer[] = []
    let jsonBytes = 0
    let name = args.name
    try {
      let chunk = await read(0, flags.tail)
      const end = flags.follow ? undefined : chunk.sizeBytes
      for (let reads = 1; ; reads++) {
        name = chunk.name || name
        const bytes = Buffer.from(chunk.data, 'base64')
        if (this.jsonMode) {
          json.push(bytes)
          jsonBytes += bytes.length
          if (jsonBytes > logsJsonMaxBytes) {
            throw new TessError('TESS_E_PRECONDITION', `the log of container "${name}" is larger than ${logsJsonMaxBytes} bytes: too large for --json`, 'use --tail N, or read it without --json')
          }
        } else if (bytes.length > 0 && !(await writeOut(bytes))) {
          break
        }
        if (loop.stopped) break
        // Without --follow: read until caught up (a chunk may be capped) with what the log held at
        // the first read, however fast the container writes. With it: until the container has
        // exited and everything it wrote has been read.
        const more = (bytes.length > 0 && (end === undefined || chunk.offset < end)) || (flags.follow && chunk.running)
        if (!more || reads >= logsReadsMax) break
        if (bytes.length === 0) {
          await loop.pause(logsPollIntervalMs)
          if (loop.stopped) break
        }
        const next = chunk.offset
        chunk = await read(next)
        if (chunk.offset < next) break // the server went backwards: do not loop over the same bytes
      }
    } finally {
      loop.end()
      // The stdout error listener stays: an EPIPE may still be reported after we return.
    }
    return { name, logs: Buffer.concat(json).toString('utf8') }
  }

  /** The bytes are already on stdout (raw, in exec): nothing more to print. */
  protected render(): string {
    return ''
  }
}

/** Write raw bytes to stdout, waiting until they are handed over; false when stdout is gone. */
function writeOut(b: Buffer): Promise<boolean> {
  return new Promise((resolve) => {
    process.stdout.write(b, (err) => resolve(!err))
  })
}
