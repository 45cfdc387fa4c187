/**
 * npm run sim -- --seed N [--steps S] [--verbose] [--no-moves]
 * npm run sim -- --seeds A-B [--steps S] [--no-moves]   (a range of seeds, one line each)
 * --no-moves: without the curator's replica moves between disks (as the fixed seeds were recorded)
 *
 * Runs the storage simulator (test/sim/run.ts) and prints the seed, the configuration it chose and
 * the result; on a failure, the step, the invariant broken, the tail of the operation trace and of
 * the storage code's log, and exits with 1. The same seed replays the same run.
 */
import { formatFailure, runSim } from './run.js'

function usage(msg: string): never {
  process.stderr.write(`${msg}\nusage: npm run sim -- --seed N [--steps S] [--verbose] [--no-moves] | --seeds A-B [--steps S] [--no-moves]\n`)
  process.exit(2)
}

const args = process.argv.slice(2).filter((a) => a !== '--')
let seeds: number[] = []
let steps: number | undefined
let verbose = false
let replicaMoves = true
for (let i = 0; i < args.length; i++) {
  const a = args[i]!
  const val = () => {
    const v = args[++i]
    if (v === undefined) usage(`${a} needs a value`)
    return v
  }
  if (a === '--seed') {
    const n = Number(val())
    if (!Number.isInteger(n) || n < 0) usage('--seed takes a non-negative integer')
    seeds = [n]
  } else if (a === '--seeds') {
    const m = /^(\d+)-(\d+)$/.exec(val())
    if (!m) usage('--seeds takes A-B')
    for (let s = Number(m[1]); s <= Number(m[2]); s++) seeds.push(s)
  } else if (a === '--steps') {
    steps = Number(val())
    if (!Number.isInteger(steps) || steps < 1) usage('--steps takes a positive integer')
  } else if (a === '--verbose') {
    verbose = true
  } else if (a === '--no-moves') {
    replicaMoves = false
  } else {
    usage(`unknown argument ${a}`)
  }
}
if (seeds.length === 0) seeds = [Math.floor(Math.random() * 2 ** 31)]

let failed = 0
let known = 0
let finished = false
process.on('exit', () => {
  if (finished) return
  // the event loop ran dry while the run awaited something no scheduler event will settle
  process.stderr.write('the simulation stalled: it awaited a promise that nothing settles (a bug of the simulator)\n')
  process.exitCode = 3
})
for (const seed of seeds) {
  process.stdout.write(`seed ${seed}\n`)
  const r = await runSim({ seed, ...(steps !== undefined ? { steps } : {}), verbose, replicaMoves })
  const c = r.config
  process.stdout.write(`  RF ${c.rf} on ${c.nodes.length} nodes, ${c.sizeBytes / 1048576} MiB, ${c.faulty ? 'faults' : 'no faults'}; ${r.steps} steps, ${r.events} events, ${(r.simMs / 1000).toFixed(1)} s simulated, ${(r.wallMs / 1000).toFixed(1)} s\n`)
  if (verbose || !r.ok) process.stdout.write(`  ${Object.entries(r.stats).map(([k, v]) => `${k}: ${v}`).join(', ')}\n`)
  const hits = Object.entries(r.known).map(([k, n]) => `${k} ${n}x`).join(', ')
  if (hits !== '') {
    known++
    process.stdout.write(`  open findings met (see README, Simulator): ${hits}\n`)
  }
  if (!r.ok) {
    failed++
    process.stdout.write(`${formatFailure(r)}\n`)
  } else {
    process.stdout.write('  ok\n')
  }
}
finished = true
if (seeds.length > 1) process.stdout.write(`${seeds.length} seeds: ${seeds.length - failed} ok, ${failed} failed; ${known} met an open finding\n`)
process.exit(failed > 0 ? 1 : 0)
