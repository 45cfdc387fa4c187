import { spawn } from 'node:child_process'

export interface RunResult { code: number, stdout: string, stderr: string }

/** Run a program (a real NBD client, fio, ...) and collect its output; never throws on exit code. */
export function run(cmd: string, args: string[], opts: { timeoutMs?: number, env?: Record<string, string>, input?: string } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, PATH: `/usr/bin:/bin:/usr/sbin:/sbin:${process.env.PATH ?? ''}`, ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => { stdout += d })
    child.stderr.on('data', (d) => { stderr += d })
    const t = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000)
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(t)
      resolve({ code: code ?? (signal ? 128 : -1), stdout, stderr })
    })
    child.stdin.on('error', () => { /* the child may exit before reading its input */ })
    child.stdin.end(opts.input ?? '')
  })
}

/** fio prints a line before its JSON: parse from the first '{'. */
export function parseFioJson(out: string): any {
  return JSON.parse(out.slice(out.indexOf('{')))
}

/**
 * A burst of writes through one NBD connection: `file` copied to `uri` by nbdcopy with `inFlight`
 * requests of `requestBytes` in flight at once, then a flush. Any failed write fails the copy.
 */
export function nbdWriteBurst(file: string, uri: string, opts: { inFlight?: number, requestBytes?: number, timeoutMs?: number } = {}): Promise<RunResult> {
  return run('nbdcopy', ['--connections=1', `--requests=${opts.inFlight ?? 64}`, `--request-size=${opts.requestBytes ?? 64 * 1024}`, '--flush', file, uri], { timeoutMs: opts.timeoutMs ?? 120_000 })
}
