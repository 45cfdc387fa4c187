import { spawn } from 'node:child_process'
import { TessError } from '../../lib/errors.js'
import { runtimeCommandTimeoutMs, runtimeOutputMaxBytes } from './limits.js'

/** Result of a helper program (mount, umount, the OCI runtime CLI). */
export interface ExecResult {
  code: number
  stdout: string
  stderr: string
}

export interface ExecOptions {
  cwd?: string
  timeoutMs?: number
  env?: NodeJS.ProcessEnv
}

/** PATH for helper programs: the system directories first, whatever the daemon was started with. */
export const helperPath = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

/**
 * Run a program to completion with no stdin, output bounded and a deadline (SIGKILL after it).
 * Never throws on a non-zero exit; throws TESS_E_PRECONDITION when the program is not installed
 * and TESS_E_TIMEOUT when it overran.
 */
export function execCommand(cmd: string, args: string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const timeoutMs = opts.timeoutMs ?? runtimeCommandTimeoutMs
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      cwd: opts.cwd,
      env: opts.env ?? { ...process.env, PATH: `${helperPath}:${process.env.PATH ?? ''}` },
    })
    const out: Buffer[] = []
    const err: Buffer[] = []
    let outBytes = 0
    let errBytes = 0
    child.stdout.on('data', (d: Buffer) => {
      if (outBytes < runtimeOutputMaxBytes) out.push(d)
      outBytes += d.length
    })
    child.stderr.on('data', (d: Buffer) => {
      if (errBytes < runtimeOutputMaxBytes) err.push(d)
      errBytes += d.length
    })
    let timedOut = false
    const t = setTimeout(() => {
      timedOut = true
      child.kill('SIGKILL')
    }, timeoutMs)
    child.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(t)
      if (e.code === 'ENOENT') {
        reject(new TessError('TESS_E_PRECONDITION', `cannot run ${cmd}: it is not installed`, `install it (Debian: apt-get install -y ${debianPackageOf(cmd)})`))
      } else {
        reject(new TessError('TESS_E_IO', `cannot run ${cmd}: ${e.message}`, 'check the program and the permissions of the daemon'))
      }
    })
    child.on('close', (code, signal) => {
      clearTimeout(t)
      if (timedOut) {
        reject(new TessError('TESS_E_TIMEOUT', `${cmd} ${args.join(' ')} did not finish in ${timeoutMs} ms`, 'the host may be overloaded or a mount is hanging'))
        return
      }
      resolve({ code: code ?? (signal !== null ? 128 : -1), stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') })
    })
  })
}

function debianPackageOf(cmd: string): string {
  const base = cmd.split('/').pop() ?? cmd
  if (base === 'mount' || base === 'umount') return 'mount'
  return base
}
