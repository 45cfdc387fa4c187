import fs from 'node:fs'

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

/** The last `lines` lines of a log file ('' when it cannot be read), for an error message. */
export function logTail(file: string, lines: number): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
  } catch {
    return ''
  }
}

/** The value after `name` on this process's command line (`--data-dir DIR`), if it is there: the daemons' one way of reading their flags. */
export function argValue(name: string): string | undefined {
  const i = process.argv.indexOf(name)
  return i >= 0 ? process.argv[i + 1] : undefined
}
