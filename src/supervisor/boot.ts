/**
 * The node's boot entry point: `node dist/supervisor/boot.js --data-dir DIR`.
 *
 * Starts the node's supervisor (which starts its etcd member, CVM and CSM daemons) detached, unless
 * one is already running for DIR; removes pidfiles left by a power loss first; waits until the
 * supervisor has written its pidfile. Idempotent: run it at boot (rc.local, cron `@reboot`, an init
 * script) where systemd is not PID 1, and bootstrap runs it over SSH to start a node. Where systemd
 * is PID 1, bootstrap installs the unit `tess-node.service` instead (src/bootstrap/remote.ts).
 *
 * Exit codes: 0 started or already running; 1 the supervisor did not start (its log's tail is
 * printed); 2 usage; 3 DIR holds no node (no node.json).
 */
import { nodePaths, readNodeConfig } from '../lib/nodeconfig.js'
import { argValue, logTail } from '../lib/process.js'
import { isNodeProcess, removeStalePidfiles, runningSupervisor, spawnSupervisor } from './running.js'

/** how long the supervisor has to write its pidfile */
const bootStartTimeoutMs = 10_000

async function main(): Promise<number> {
  const dataDir = argValue('--data-dir')
  if (dataDir === undefined || !dataDir.startsWith('/')) {
    process.stderr.write('usage: node boot.js --data-dir /ABSOLUTE/DATA/DIR\n')
    return 2
  }
  try {
    readNodeConfig(dataDir)
  } catch (e) {
    process.stderr.write(`boot: ${dataDir} holds no node: ${e instanceof Error ? e.message : String(e)}\n`)
    return 3
  }
  const running = runningSupervisor(dataDir)
  if (running !== undefined) {
    process.stdout.write(`the supervisor of ${dataDir} is already running (pid ${running})\n`)
    return 0
  }
  const stale = removeStalePidfiles(dataDir)
  if (stale.length > 0) process.stdout.write(`removed stale pidfiles: ${stale.join(', ')}\n`)
  const pid = spawnSupervisor(dataDir)
  const p = nodePaths(dataDir)
  const deadline = Date.now() + bootStartTimeoutMs
  while (Date.now() < deadline) {
    // (a boot run at the same moment may have won: then its supervisor is the one running)
    const now = runningSupervisor(dataDir)
    if (now !== undefined) {
      process.stdout.write(`started the supervisor of ${dataDir} (pid ${now}); its log: ${p.logFile('supervisor')}\n`)
      return 0
    }
    if (!isNodeProcess(pid, dataDir)) break
    await new Promise((r) => setTimeout(r, 50))
  }
  process.stderr.write(`boot: the supervisor of ${dataDir} did not start; the end of ${p.logFile('supervisor')}:\n${logTail(p.logFile('supervisor'), 20) || '(no log)'}\n`)
  return 1
}

process.exitCode = await main()
