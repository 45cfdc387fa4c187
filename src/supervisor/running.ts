/**
 * Is a node's supervisor running, and starting one detached: shared by the supervisor (which
 * refuses to run twice for one data dir), the boot entry point (boot.ts) and the embedded
 * cluster's create. Only lib/ below (the supervisor imports nothing else).
 */
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { nodePaths } from '../lib/nodeconfig.js'
import { isZombie, pidIsOurs, readPid } from '../lib/process.js'
import { distDir } from '../lib/packageroot.js'

/** dist/supervisor/supervisor.js */
export function supervisorScript(): string {
  return path.join(distDir, 'supervisor', 'supervisor.js')
}

function mountNamespace(pid: number | 'self'): string | undefined {
  try {
    return fs.readlinkSync(`/proc/${pid}/ns/mnt`)
  } catch {
    return undefined
  }
}

/**
 * Is `pid` a live process of this node's data dir? Ours by its command line (pidIsOurs), not a
 * zombie, and it must see the same mounts as we do: a daemon of another node on this machine with
 * the same data dir path in its own mount namespace (test hosts) is not ours.
 */
export function isNodeProcess(pid: number, dataDir: string): boolean {
  if (!pidIsOurs(pid, dataDir) || isZombie(pid)) return false
  const mine = mountNamespace('self')
  return mine === undefined || mountNamespace(pid) === mine
}

/** The pid of the supervisor running for `dataDir` (other than this process), if there is one. */
export function runningSupervisor(dataDir: string): number | undefined {
  const pid = readPid(nodePaths(dataDir).supervisorPid)
  return pid !== undefined && pid !== process.pid && isNodeProcess(pid, dataDir) ? pid : undefined
}

/**
 * Pidfiles in run/ whose process is gone or is not ours (left by a power loss or a kill -9): they
 * are removed so that nothing later signals a pid that was recycled.
 */
export function removeStalePidfiles(dataDir: string): string[] {
  const run = nodePaths(dataDir).run
  const removed: string[] = []
  let names: string[] = []
  try {
    names = fs.readdirSync(run).filter((n) => n.endsWith('.pid'))
  } catch {
    return removed
  }
  for (const n of names) {
    const pid = readPid(path.join(run, n))
    if (pid !== undefined && isNodeProcess(pid, dataDir)) continue
    fs.rmSync(path.join(run, n), { force: true })
    removed.push(n)
  }
  return removed
}

/**
 * Start the supervisor of `dataDir` detached: in a session of its own (setsid), cwd /, output
 * appended to logs/supervisor.log, not waited for. Returns its pid.
 */
export function spawnSupervisor(dataDir: string): number {
  const p = nodePaths(dataDir)
  fs.mkdirSync(p.logs, { recursive: true, mode: 0o700 })
  const out = fs.openSync(p.logFile('supervisor'), 'a', 0o600)
  try {
    const child = spawn(process.execPath, [supervisorScript(), '--data-dir', dataDir], { detached: true, cwd: '/', stdio: ['ignore', out, out] })
    child.on('error', () => undefined) // an exec failure shows as a missing pid below
    child.unref()
    if (child.pid === undefined) throw new Error(`cannot start ${process.execPath} ${supervisorScript()}`)
    return child.pid
  } finally {
    fs.closeSync(out)
  }
}
