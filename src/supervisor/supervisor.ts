/**
 * The per-node supervisor: started detached (setsid) by bootstrap, it starts the node's daemons in
 * order, writes a pidfile for each, restarts any that exits (with bounded backoff) and, on SIGTERM,
 * stops them all (SIGTERM, then SIGKILL after a timeout) and exits. Its state is in
 * run/supervisor.json for `tess cluster status`.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import { nodePaths, readNodeConfig, writeFileAtomic } from '../lib/nodeconfig.js'
import { supervisorRestartBackoffMaxMs, supervisorRestartBackoffMinMs, supervisorStopTimeoutMs } from '../lib/limits.js'
import { csmService, servicesFor, type ServiceSpec } from './services.js'
import { runningSupervisor } from './running.js'
import type { DaemonState, SupervisorState } from '../lib/supervisor-state.js'
import { argValue } from '../lib/process.js'

const dataDir = argValue('--data-dir')
if (!dataDir) {
  console.error('usage: supervisor --data-dir DIR')
  process.exit(2)
}
const cfg = readNodeConfig(dataDir)
const paths = nodePaths(dataDir)
fs.mkdirSync(paths.run, { recursive: true, mode: 0o700 })
fs.mkdirSync(paths.logs, { recursive: true, mode: 0o700 })

function log(msg: string): void {
  process.stderr.write(`${new Date().toISOString()} supervisor[${process.pid}] ${msg}\n`)
}

interface Managed {
  spec: ServiceSpec
  /** a CSM daemon: runs while its csms/NAME/csm.json exists */
  csm?: string
  child: ChildProcess | null
  state: DaemonState
  backoffMs: number
  timer: NodeJS.Timeout | null
  stableTimer: NodeJS.Timeout | null
  /** being stopped for good (its CSM was deleted) */
  retiring?: boolean
}

const newManaged = (spec: ServiceSpec, csm?: string): Managed => ({
  spec,
  ...(csm !== undefined ? { csm } : {}),
  child: null,
  state: { name: spec.name, pid: null, restarts: 0, startedAt: null, lastExit: null },
  backoffMs: supervisorRestartBackoffMinMs,
  timer: null,
  stableTimer: null,
})
const managed: Managed[] = servicesFor(cfg).map((spec) => newManaged(spec))
let stopping = false
const startedAt = new Date().toISOString()

function saveState(): void {
  const state: SupervisorState = { pid: process.pid, startedAt, daemons: managed.map((m) => m.state) }
  writeFileAtomic(paths.supervisorState, JSON.stringify(state, null, 2) + '\n', 0o600)
}

function start(m: Managed): void {
  if (stopping) return
  const out = fs.openSync(paths.logFile(m.spec.name), 'a', 0o600)
  const child = spawn(m.spec.command, m.spec.args, {
    stdio: ['ignore', out, out],
    env: { ...process.env, ...m.spec.env, TESS_DATA_DIR: dataDir },
  })
  fs.closeSync(out)
  m.child = child
  child.on('error', (e) => log(`${m.spec.name}: cannot start: ${e.message}`))
  if (child.pid === undefined) {
    scheduleRestart(m)
    return
  }
  m.state.pid = child.pid
  m.state.startedAt = new Date().toISOString()
  writeFileAtomic(paths.pidFile(m.spec.name), `${child.pid}\n`, 0o644)
  saveState()
  log(`${m.spec.name}: started pid ${child.pid}`)
  // A daemon that stays up 30 s has its backoff reset.
  m.stableTimer = setTimeout(() => { m.backoffMs = supervisorRestartBackoffMinMs }, 30_000)
  child.on('exit', (code, signal) => {
    if (m.stableTimer) clearTimeout(m.stableTimer)
    m.child = null
    m.state.pid = null
    m.state.lastExit = { code, signal, at: new Date().toISOString() }
    fs.rmSync(paths.pidFile(m.spec.name), { force: true })
    log(`${m.spec.name}: exited code=${code} signal=${signal}`)
    if (!stopping && !m.retiring) scheduleRestart(m)
    saveState()
  })
}

function scheduleRestart(m: Managed): void {
  if (stopping) return
  const delay = m.backoffMs
  m.backoffMs = Math.min(m.backoffMs * 2, supervisorRestartBackoffMaxMs)
  m.state.restarts++
  log(`${m.spec.name}: restarting in ${delay} ms`)
  m.timer = setTimeout(() => {
    m.timer = null
    start(m)
  }, delay)
}

/** SIGTERM, then SIGKILL after the stop timeout; resolves when it has exited. */
async function stopOne(m: Managed): Promise<void> {
  if (m.timer) clearTimeout(m.timer)
  if (m.stableTimer) clearTimeout(m.stableTimer)
  const child = m.child
  if (!child || child.exitCode !== null) return
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  child.kill('SIGTERM')
  const t = setTimeout(() => { log(`${m.spec.name}: did not stop in time, SIGKILL`); child.kill('SIGKILL') }, supervisorStopTimeoutMs)
  await exited
  clearTimeout(t)
}

/**
 * CSM daemons follow the csms/ directory: a csm.json that appears starts one, one that goes
 * away stops it. Checked every second (and so after a supervisor restart).
 */
let reconciling = false
async function reconcileCsms(): Promise<void> {
  if (stopping || reconciling) return
  reconciling = true
  try {
    let names: string[] = []
    try {
      names = fs.readdirSync(paths.csms).filter((n) => fs.existsSync(paths.csmSpec(n))).sort()
    } catch { /* no CSM yet */ }
    const want = new Set(names)
    for (const name of names) {
      if (managed.some((m) => m.csm === name)) continue
      const m = newManaged(csmService(cfg, name), name)
      managed.push(m)
      start(m)
    }
    for (const m of managed.filter((x) => x.csm !== undefined && !want.has(x.csm))) {
      m.retiring = true
      log(`${m.spec.name}: its CSM was deleted; stopping it`)
      await stopOne(m)
      managed.splice(managed.indexOf(m), 1)
      fs.rmSync(paths.pidFile(m.spec.name), { force: true })
      saveState()
    }
  } finally {
    reconciling = false
  }
}

async function stopAll(signal: string): Promise<void> {
  if (stopping) return
  stopping = true
  log(`stopping on ${signal}`)
  // Stop in reverse start order: CVM before etcd, so the CVM can release its leases.
  // CSM daemons first (their containers keep running; the CSM adopts them when it is back).
  clearInterval(csmTimer)
  await Promise.all(managed.filter((m) => m.csm !== undefined).map((m) => stopOne(m)))
  for (const m of managed.filter((x) => x.csm === undefined).reverse()) await stopOne(m)
  saveState()
  fs.rmSync(paths.supervisorPid, { force: true })
  log('stopped')
  process.exit(0)
}

process.on('SIGTERM', () => void stopAll('SIGTERM'))
process.on('SIGINT', () => void stopAll('SIGINT'))
process.on('SIGHUP', () => { /* detached: ignore */ })

/**
 * One supervisor per data dir (two boots at once, a manual start beside the unit): the pidfile is
 * claimed with a hard link, which fails when it exists; one whose process is gone is replaced.
 */
function claimPidfile(): number | undefined {
  const tmp = `${paths.supervisorPid}.${process.pid}`
  fs.writeFileSync(tmp, `${process.pid}\n`, { mode: 0o644 })
  try {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        fs.linkSync(tmp, paths.supervisorPid)
        return undefined
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e
        const other = runningSupervisor(dataDir!)
        if (other !== undefined) return other
        fs.rmSync(paths.supervisorPid, { force: true }) // left by a power loss or a kill -9
      }
    }
    return runningSupervisor(dataDir!) ?? -1
  } finally {
    fs.rmSync(tmp, { force: true })
  }
}

const other = claimPidfile()
if (other !== undefined) {
  log(`the supervisor of ${dataDir} is already running (pid ${other}); this one exits`)
  process.exit(1)
}
log(`supervising ${managed.map((m) => m.spec.name).join(', ')} for node ${cfg.nodeName}`)
for (const m of managed) start(m)
saveState()
void reconcileCsms()
const csmTimer = setInterval(() => void reconcileCsms().catch((e: unknown) => log(`csm reconcile: ${String(e)}`)), 1000)
