import { spawn } from 'node:child_process'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { TessError, errorMessage } from '../../lib/errors.js'
import type { RuntimeName } from '../../lib/csm-types.js'
import type { CgroupHost, CgroupMode } from './cgroups.js'
import { execCommand, helperPath, type ExecResult } from './exec.js'
import { containerLogMaxBytes, runtimeCommandTimeoutMs, stateFileSizeMaxBytes } from './limits.js'

/**
 * Driver of an OCI runtime CLI: runc (default) or crun, each CSM with its own state root
 * (`--root <csm state dir>/runc`) so CSMs never see each other's containers.
 *
 * Exit status: a detached container (`run -d`, `create` + `start`) is re-parented away from the
 * runtime, and its exit status is lost unless a subreaper waits for it. Node cannot become a
 * subreaper, so a container runs under a tiny shim of ours instead: `/bin/sh` started in its own
 * session (setsid), with stdout and stderr on the container's log file (O_APPEND) and no pipe to
 * the daemon, running the runtime in the FOREGROUND (`runc run --keep`). The foreground runtime
 * is the container's parent (and a subreaper): it waits for it and exits with its status (code,
 * or 128 + signal). The shim then writes that number to the exit file (write + rename, so the
 * file is whole or absent). The container's stdio ARE the log file descriptors, so the container
 * never writes through us. Nothing of this depends on the daemon: the daemon can exit and start
 * again; it finds its containers with `<runtime> --root ... state/list`, and the exit files of
 * those that ended meanwhile.
 *
 * OOM kills: `run --keep` leaves a stopped container (and its cgroup) until `delete`, so the
 * manager reads the container's own OOM-kill counter (v1 memory.oom_control, v2 memory.events)
 * after the exit and before deleting it. crun 1.8 has no `--keep` (it deletes the cgroup when the
 * container exits), so under crun an OOM kill is reported only through the exit status 137.
 *
 * crun on a cgroup v1 hybrid host refuses to run while any controller is available on the
 * cgroup2 hierarchy (on these machines: hugetlb, which is not mounted as v1): check() names
 * the controllers and how to mount them.
 */

export type { RuntimeName }

export type RuntimeStatus = 'creating' | 'created' | 'running' | 'paused' | 'stopped'

export interface RuntimeState {
  id: string
  /** the container's init process on the host (0 when stopped) */
  pid: number
  status: RuntimeStatus
  bundle: string
  created?: string
}

/** Files of one container run. */
export interface ShimFiles {
  /** the container directory: the shim's working directory */
  dir: string
  /** the container's stdout and stderr (appended) */
  log: string
  /** written by the shim when the runtime exits: the exit status, one decimal number */
  exit: string
  /** written by the runtime once the container process exists */
  pid: string
  /** the runtime's own log (JSON lines) */
  runtimeLog: string
  /** the times of the log's chunks, written by tess-logger when there is one (logindex.ts) */
  logIndex: string
}

export interface ShimInfo {
  pid: number
  /** field 22 of /proc/<pid>/stat: tells a recycled pid from ours */
  startTime?: string
}

export interface ExitStatus {
  /** as the runtime reports it: the exit code, or 128 + signal number */
  status: number
  /** when the shim wrote it */
  at: Date
}

export interface OciRuntimeOptions {
  name?: RuntimeName
  /** the binary (default: the name, found on PATH) */
  bin?: string
  /** the runtime's state root for this CSM */
  root: string
  /** for crun's hybrid-mode check */
  cgroups?: CgroupHost
  /** the shell the shim runs in (default /bin/sh) */
  shell?: string
  /** tess-logger, which writes the log with the times of its chunks (logindex.ts); without it the container writes its log directly */
  logger?: string
  /** with tess-logger: the log keeps about this many of its last bytes (0: all; default containerLogMaxBytes) */
  logMaxBytes?: number
  commandTimeoutMs?: number
}

const signalNames = new Set(Object.keys(os.constants.signals))

/** `TERM`, `SIGTERM` or `15` -> `SIGTERM`. */
export function normaliseSignal(sig: string | number): string {
  if (typeof sig === 'number' || /^\d+$/.test(sig)) {
    const n = Number(sig)
    const name = Object.entries(os.constants.signals).find(([, v]) => v === n)?.[0]
    if (name === undefined) throw new TessError('TESS_E_INVALID', `invalid signal ${sig}`, 'use a signal name such as SIGTERM or a number such as 15')
    return name
  }
  const s = sig.toUpperCase()
  const name = s.startsWith('SIG') ? s : `SIG${s}`
  if (!signalNames.has(name)) throw new TessError('TESS_E_INVALID', `invalid signal "${sig}"`, 'use a signal name such as SIGTERM, SIGINT, SIGKILL')
  return name
}

/** The problem crun would have with this host's cgroups, or undefined. */
export function crunCgroupProblem(mode: CgroupMode, unifiedControllers: string[]): string | undefined {
  if (mode !== 'hybrid' || unifiedControllers.length === 0) return undefined
  return `crun refuses cgroup v1 hybrid mode while controllers are available on the cgroup2 hierarchy: ${unifiedControllers.join(', ')}`
}

/** The shim: run the runtime in the foreground, then record its exit status atomically. */
export const shimScript = [
  'exit_file=$1',
  'shift',
  '"$@"',
  'status=$?',
  'printf \'%s\\n\' "$status" > "$exit_file.tmp" && mv -f "$exit_file.tmp" "$exit_file"',
].join('\n')

/**
 * The shim with tess-logger: the same, with the runtime's (and so the container's) stdout and
 * stderr on a pipe to tess-logger, which appends to the log and its index. The left side of the
 * pipe keeps the exit status aside; the exit file appears once tess-logger has written everything
 * (a reader that sees the exit file finds the whole log). tess-logger keeps about the last
 * `log_max` bytes of the log (0: all), punching out the head (native/logger.c).
 */
export const loggedShimScript = [
  'exit_file=$1',
  'logger=$2',
  'log=$3',
  'index=$4',
  'log_max=$5',
  'shift 5',
  '{ "$@"; printf \'%s\\n\' "$?" > "$exit_file.tmp"; } 2>&1 | "$logger" "$log" "$index" "$log_max"',
  'mv -f "$exit_file.tmp" "$exit_file"',
].join('\n')

/** Read a shim's exit file; undefined while it is absent. */
export async function readExitStatus(file: string): Promise<ExitStatus | undefined> {
  try {
    const [text, st] = await Promise.all([fsp.readFile(file, 'utf8'), fsp.stat(file)])
    const t = text.trim()
    if (!/^\d{1,3}$/.test(t)) return undefined
    return { status: Number(t), at: st.mtime }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw e
  }
}

/** Field 22 (start time in clock ticks since boot) of /proc/<pid>/stat. */
export function parseProcStat(text: string): { state: string, startTime: string } | undefined {
  const close = text.lastIndexOf(')')
  if (close < 0) return undefined
  const f = text.slice(close + 2).split(' ')
  // f[0] is field 3 (state); field 22 is f[19]
  if (f.length < 20) return undefined
  return { state: f[0]!, startTime: f[19]! }
}

export async function processStartTime(pid: number): Promise<string | undefined> {
  try {
    return parseProcStat(await fsp.readFile(`/proc/${pid}/stat`, 'utf8'))?.startTime
  } catch {
    return undefined
  }
}

/** Whether the process exists, is not a zombie, and (when given) started at `startTime`. */
export async function isProcessAlive(pid: number, startTime?: string): Promise<boolean> {
  let st
  try {
    st = parseProcStat(await fsp.readFile(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return false
  }
  if (st === undefined || st.state === 'Z' || st.state === 'X') return false
  return startTime === undefined || st.startTime === startTime
}

/** The error lines of a runtime's JSON log (or its plain text lines), last first. */
export async function runtimeErrors(file: string): Promise<string[]> {
  let text: string
  try {
    const st = await fsp.stat(file)
    const fh = await fsp.open(file, 'r')
    try {
      const len = Math.min(st.size, 64 * 1024)
      const buf = Buffer.alloc(len)
      await fh.read(buf, 0, len, st.size - len)
      text = buf.toString('utf8')
    } finally {
      await fh.close()
    }
  } catch {
    return []
  }
  const out: string[] = []
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue
    try {
      const j = JSON.parse(line) as { level?: unknown, msg?: unknown }
      if ((j.level === 'error' || j.level === 'fatal') && typeof j.msg === 'string') out.push(j.msg)
    } catch {
      out.push(line.trim())
    }
  }
  return out.reverse()
}

export class OciRuntime {
  readonly name: RuntimeName
  readonly bin: string
  readonly root: string
  private readonly cgroups: CgroupHost | undefined
  private readonly shell: string
  private readonly logger: string | undefined
  private readonly logMaxBytes: number
  private readonly timeoutMs: number
  private checked: Promise<string> | undefined

  constructor(opts: OciRuntimeOptions) {
    this.name = opts.name ?? 'runc'
    this.bin = opts.bin ?? this.name
    this.root = opts.root
    this.cgroups = opts.cgroups
    this.shell = opts.shell ?? '/bin/sh'
    this.logger = opts.logger
    this.logMaxBytes = opts.logMaxBytes ?? containerLogMaxBytes
    this.timeoutMs = opts.commandTimeoutMs ?? runtimeCommandTimeoutMs
  }

  /** Check once that the runtime is installed and can work on this host; returns its version line. */
  check(): Promise<string> {
    this.checked ??= this.doCheck().catch((e: unknown) => {
      this.checked = undefined
      throw e
    })
    return this.checked
  }

  private async doCheck(): Promise<string> {
    const r = await execCommand(this.bin, ['--version'], { timeoutMs: this.timeoutMs })
    if (r.code !== 0) throw new TessError('TESS_E_PRECONDITION', `cannot use ${this.name}: "${this.bin} --version" failed: ${(r.stderr || r.stdout).trim()}`, `reinstall it (apt-get install -y ${this.name})`)
    if (this.name === 'crun' && this.cgroups !== undefined) {
      const controllers = await this.cgroups.hybridUnifiedControllers()
      const problem = crunCgroupProblem(this.cgroups.mode, controllers)
      if (problem !== undefined) {
        throw new TessError('TESS_E_PRECONDITION', `cannot use crun on this host: ${problem}`,
          `mount each as a v1 hierarchy (${controllers.map((c) => `mkdir -p /sys/fs/cgroup/${c} && mount -t cgroup -o ${c} cgroup /sys/fs/cgroup/${c}`).join('; ')}), or use runc`)
      }
    }
    await fsp.mkdir(this.root, { recursive: true, mode: 0o700 })
    return r.stdout.split('\n')[0]?.trim() ?? ''
  }

  private globalArgs(): string[] {
    return ['--root', this.root]
  }

  private exec(args: string[]): Promise<ExecResult> {
    return execCommand(this.bin, [...this.globalArgs(), ...args], { timeoutMs: this.timeoutMs })
  }

  private fail(action: string, id: string, r: ExecResult): TessError {
    return new TessError('TESS_E_IO', `cannot ${action} container ${id}: ${this.name}: ${cleanRuntimeMessage(r.stderr || r.stdout)}`,
      `see "${this.bin} --root ${this.root} state ${id}"`)
  }

  /**
   * Start a container in the background under a shim (see the module comment). Returns once the
   * shim is spawned; the caller watches the pid and exit files to learn whether it started.
   */
  async runDetached(id: string, bundle: string, files: ShimFiles): Promise<ShimInfo> {
    await this.check()
    const runArgs = ['--log', files.runtimeLog, '--log-format', 'json', 'run', ...(this.name === 'runc' ? ['--keep'] : []),
      '--bundle', bundle, '--pid-file', files.pid, id]
    const logFd = fs.openSync(files.log, fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT, 0o640)
    try {
      const shim = this.logger !== undefined
        ? ['-c', loggedShimScript, 'tess-shim', files.exit, this.logger, files.log, files.logIndex, String(this.logMaxBytes)]
        : ['-c', shimScript, 'tess-shim', files.exit]
      // a run without tess-logger leaves no index: an older one would give this run's lines wrong times
      if (this.logger === undefined) await fsp.rm(files.logIndex, { force: true })
      const child = spawn(this.shell, [...shim, this.bin, ...this.globalArgs(), ...runArgs], {
        cwd: files.dir,
        detached: true,
        stdio: ['ignore', logFd, logFd],
        env: { PATH: helperPath },
      })
      const pid = await new Promise<number>((resolve, reject) => {
        child.once('error', (e) => reject(new TessError('TESS_E_IO', `cannot start the shim of container ${id}: ${errorMessage(e)}`, `is ${this.shell} installed?`)))
        child.once('spawn', () => resolve(child.pid!))
      })
      child.unref()
      const startTime = await processStartTime(pid)
      return startTime !== undefined ? { pid, startTime } : { pid }
    } finally {
      fs.closeSync(logFd)
    }
  }

  /** The runtime's view of a container; undefined when it does not know it. */
  async state(id: string): Promise<RuntimeState | undefined> {
    const r = await this.exec(['state', id])
    if (r.code !== 0) {
      if (isNotFound(r)) return undefined
      throw this.fail('read the state of', id, r)
    }
    return parseState(r.stdout, `${this.name} state ${id}`)
  }

  async list(): Promise<RuntimeState[]> {
    const r = await this.exec(['list', '--format', 'json'])
    if (r.code !== 0) throw new TessError('TESS_E_IO', `cannot list the containers of ${this.root}: ${this.name}: ${cleanRuntimeMessage(r.stderr || r.stdout)}`, 'check the runtime state directory')
    if (r.stdout.length > stateFileSizeMaxBytes) throw new TessError('TESS_E_IO', `${this.name} list printed more than ${stateFileSizeMaxBytes} bytes`, 'too many containers')
    const v = JSON.parse(r.stdout.trim() === '' ? 'null' : r.stdout) as unknown
    if (v === null) return []
    if (!Array.isArray(v)) throw new TessError('TESS_E_IO', `${this.name} list printed something that is not a list`, 'check the runtime version')
    return v.map((x) => parseState(JSON.stringify(x), `${this.name} list`))
  }

  /** Send a signal to the container's init (or every process with `all`); false when it is not running. */
  async kill(id: string, signal: string | number = 'SIGTERM', opts: { all?: boolean } = {}): Promise<boolean> {
    const sig = normaliseSignal(signal)
    const st = await this.state(id)
    if (st === undefined || st.status === 'stopped') return false
    const r = await this.exec(['kill', ...(opts.all === true ? ['--all'] : []), id, sig.slice(3)])
    if (r.code !== 0) {
      const after = await this.state(id)
      if (after === undefined || after.status === 'stopped') return false
      throw this.fail(`send ${sig} to`, id, r)
    }
    return true
  }

  async pause(id: string): Promise<void> {
    const r = await this.exec(['pause', id])
    if (r.code !== 0) throw this.fail('pause', id, r)
  }

  async resume(id: string): Promise<void> {
    const r = await this.exec(['resume', id])
    if (r.code !== 0) throw this.fail('resume', id, r)
  }

  /** Has the runtime a state directory for this container? (true when that cannot be told) */
  private async knows(id: string): Promise<boolean> {
    try {
      await fsp.stat(path.join(this.root, id))
      return true
    } catch (e) {
      // only a missing directory says no: anything else is asked of the runtime as before
      return (e as NodeJS.ErrnoException).code !== 'ENOENT'
    }
  }

  /** Delete the runtime's state (and cgroup) of a container; `force` kills it first. A missing one is fine. */
  async delete(id: string, opts: { force?: boolean } = {}): Promise<void> {
    // runc and crun keep a container's state in ROOT/ID: without it the runtime knows no such
    // container (a new one), so there is nothing to delete and no process to start for it
    if (!await this.knows(id)) return
    const r = await this.exec(['delete', ...(opts.force === true ? ['--force'] : []), id])
    if (r.code !== 0 && !isNotFound(r)) throw this.fail('delete', id, r)
  }
}

function isNotFound(r: ExecResult): boolean {
  return /does not exist|no such file or directory|not found/i.test(r.stderr + r.stdout)
}

/** `time="..." level=error msg="x"` -> `x` */
function cleanRuntimeMessage(text: string): string {
  const lines = text.trim().split('\n').map((l) => {
    const m = /msg="((?:[^"\\]|\\.)*)"/.exec(l)
    return m !== null ? m[1]!.replace(/\\"/g, '"') : l
  })
  return lines.join('; ').slice(0, 2000)
}

const runtimeStatuses: ReadonlySet<string> = new Set(['creating', 'created', 'running', 'paused', 'stopped'])

function parseState(text: string, what: string): RuntimeState {
  let v: unknown
  try {
    v = JSON.parse(text)
  } catch (e) {
    throw new TessError('TESS_E_IO', `cannot parse the output of ${what}: ${errorMessage(e)}`, 'check the runtime version')
  }
  const o = (v ?? {}) as Record<string, unknown>
  if (typeof o.id !== 'string' || typeof o.status !== 'string' || !runtimeStatuses.has(o.status)) {
    throw new TessError('TESS_E_IO', `unexpected output of ${what}: ${text.slice(0, 200)}`, 'check the runtime version')
  }
  const st: RuntimeState = {
    id: o.id,
    pid: typeof o.pid === 'number' ? o.pid : 0,
    status: o.status as RuntimeStatus,
    bundle: typeof o.bundle === 'string' ? o.bundle : '',
  }
  if (typeof o.created === 'string') st.created = o.created
  return st
}
