import { spawn } from 'node:child_process'
import fs from 'node:fs'
import { TessError } from './errors.js'

/**
 * Run a command to its end and give its stdout. A command that cannot start is
 * TESS_E_PRECONDITION (not installed); one that exits non-zero (or is killed after `timeoutMs`)
 * is TESS_E_IO with the end of its stderr, unless `tolerateExit` and it wrote something.
 */
export function runCommand(cmd: string, args: string[], o: { timeoutMs: number, cwd?: string, env?: NodeJS.ProcessEnv, tolerateExit?: boolean }): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(o.cwd !== undefined ? { cwd: o.cwd } : {}), ...(o.env !== undefined ? { env: o.env } : {}) })
    let out = ''
    let err = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d })
    child.stderr.setEncoding('utf8').on('data', (d: string) => { err += d })
    const t = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs)
    child.on('error', (e) => {
      clearTimeout(t)
      reject(new TessError('TESS_E_PRECONDITION', `cannot run ${cmd}: ${e.message}`, `is ${cmd} installed?`))
    })
    child.on('close', (code) => {
      clearTimeout(t)
      if (code === 0 || (o.tolerateExit === true && out !== '')) resolve(out)
      else reject(new TessError('TESS_E_IO', `${cmd} ${args.join(' ')} failed (exit ${String(code)}): ${err.trim().split('\n').slice(-5).join('\n')}`, 'see the message'))
    })
  })
}

/** Is `pid` alive? */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'
  }
}

export function cmdline(pid: number): string[] {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean)
  } catch {
    return []
  }
}

export function readPid(file: string): number | undefined {
  try {
    const n = Number(fs.readFileSync(file, 'utf8').trim())
    return Number.isInteger(n) && n > 1 ? n : undefined
  } catch {
    return undefined
  }
}

/**
 * A pid from our pidfile is ours only if its command line still names our data dir (etcd's
 * --data-dir lies inside it, the supervisor and CVM get --data-dir DIR): a recycled pid is never
 * signalled.
 */
export function pidIsOurs(pid: number, dataDir: string): boolean {
  if (!pidAlive(pid)) return false
  const args = cmdline(pid)
  return args.some((a) => a === dataDir || a.startsWith(dataDir + '/'))
}

export async function waitForExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (!pidAlive(pid) || isZombie(pid)) return true
    await new Promise((r) => setTimeout(r, 50))
  }
  return !pidAlive(pid)
}

/** Has `pid` exited, waiting for its parent to reap it? */
export function isZombie(pid: number): boolean {
  try {
    return / Z /.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\)/, ''))
  } catch {
    return false
  }
}

/**
 * The last `lines` lines of a log file ('' when it cannot be read), for an error message; with
 * `maxBytes`, of its last maxBytes bytes only (a long log is not read whole).
 */
export function logTail(file: string, lines: number, maxBytes = Infinity): string {
  try {
    let text: string
    if (maxBytes === Infinity) {
      text = fs.readFileSync(file, 'utf8')
    } else {
      const fd = fs.openSync(file, 'r')
      try {
        const size = fs.fstatSync(fd).size
        const buf = Buffer.alloc(Math.min(size, maxBytes))
        fs.readSync(fd, buf, 0, buf.length, size - buf.length)
        text = buf.toString('utf8')
      } finally {
        fs.closeSync(fd)
      }
    }
    return text.trimEnd().split('\n').slice(-lines).join('\n')
  } catch {
    return ''
  }
}

/** The value after `name` on this process's command line (`--data-dir DIR`), if it is there: the daemons' one way of reading their flags. */
export function argValue(name: string): string | undefined {
  const i = process.argv.indexOf(name)
  return i >= 0 ? process.argv[i + 1] : undefined
}
