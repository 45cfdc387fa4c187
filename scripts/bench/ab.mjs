#!/usr/bin/env node
// Two commits' data paths in one run: is a change faster or slower, told apart from the machine?
//
// The checkout this script lives in ("this") and another commit ("base", default HEAD~1) each run
// an embedded cluster (RF 1) side by side on free ports; fio's nbd engine runs the NBD overwrite
// jobs of nbd.mjs on a 1 GiB vDisk of each (written once before), on the node's NBD Unix socket.
// Every job runs --rounds times, the two clusters taking turns (the order alternates each round),
// the page cache dropped before reads and `sync` before writes. Prints every round, the medians
// and this/base per job as a Markdown table.
//
// The base commit is checked out in a git worktree in a temp dir and built there (tsc, and the
// native addons by the package's install script); its node_modules is this checkout's (the script refuses a base
// whose package-lock.json differs). This checkout must be built (`npm run build`).
//
// Usage: node scripts/bench/ab.mjs [--base REV] [--size 1G] [--runtime 10] [--rounds 3]
//          [--jobs randread4k,randwrite4k,read1m,write1m] [--base-first] [--dir DIR]
//        (root: drops the page cache; --base-first: the base's cluster is made and written first)
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { checkArgs, dropCaches, fioFigure, flag, fmt, median, opt, ratio, repoRoot, roundsCell, runFio, sh } from './common.mjs'

checkArgs('usage: node scripts/bench/ab.mjs [--base REV] [--size 1G] [--runtime 10] [--rounds 3] [--jobs randread4k,randwrite4k,read1m,write1m] [--base-first] [--dir DIR]',
  ['base', 'size', 'runtime', 'rounds', 'jobs', 'dir'], ['base-first'])
const base = opt('base', 'HEAD~1')
const size = opt('size', '1G')
const runtime = Number(opt('runtime', '10'))
const rounds = Number(opt('rounds', '3'))
const allJobs = {
  randread4k: { name: '4k randread QD16', rw: 'randread', bs: '4k', iodepth: 16, key: 'read', unit: 'iops' },
  randwrite4k: { name: '4k randwrite QD16', rw: 'randwrite', bs: '4k', iodepth: 16, key: 'write', unit: 'iops' },
  read1m: { name: '1M read QD4', rw: 'read', bs: '1M', iodepth: 4, key: 'read', unit: 'MiB/s' },
  write1m: { name: '1M write QD4', rw: 'write', bs: '1M', iodepth: 4, key: 'write', unit: 'MiB/s' },
}
const jobNames = opt('jobs', Object.keys(allJobs).join(',')).split(',')
for (const j of jobNames) if (!(j in allJobs)) { console.error(`unknown job "${j}": one of ${Object.keys(allJobs).join(', ')}`); process.exit(2) }

const git = (...args) => sh('git', ['-C', repoRoot, ...args]).stdout.trim()
const baseRev = git('rev-parse', '--verify', `${base}^{commit}`)
const thisRev = git('rev-parse', 'HEAD') + (git('status', '--porcelain', '--untracked-files=no') ? ' (with uncommitted changes)' : '')
if (spawnSync('git', ['-C', repoRoot, 'diff', '--quiet', baseRev, '--', 'package-lock.json']).status !== 0) {
  console.error(`ab.mjs: package-lock.json differs between ${base} and this checkout: build the base by hand`)
  process.exit(2)
}
const root = fs.mkdtempSync(path.join(opt('dir', '/var/tmp'), 'tess-ab-'))
const work = path.join(root, 'fio')
fs.mkdirSync(work)
const baseTree = path.join(root, 'base')
const stops = []

/** The base commit, built in a worktree of its own. */
function buildBase() {
  git('worktree', 'add', '--detach', baseTree, baseRev)
  stops.push(async () => git('worktree', 'remove', '--force', baseTree))
  fs.symlinkSync(path.join(repoRoot, 'node_modules'), path.join(baseTree, 'node_modules'))
  sh('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: baseTree })
  // the package's install script (node-gyp from npm); it falls back to JS when the addons do not
  // build, which would compare unlike with like: the same addons as this checkout's must be there
  sh('npm', ['run', 'install'], { cwd: baseTree })
  const addons = (dir) => fs.readdirSync(path.join(dir, 'build', 'Release')).filter((f) => f.endsWith('.node')).sort().join(',')
  if (addons(baseTree) !== addons(repoRoot)) throw new Error(`the base's native addons (${addons(baseTree)}) are not this checkout's (${addons(repoRoot)})`)
}

const nbdArgs = (uri) => ['--ioengine=nbd', `--uri=${uri}`]
const timedArgs = (job) => [`--name=${job.rw}`, `--rw=${job.rw}`, `--bs=${job.bs}`, `--iodepth=${job.iodepth}`, `--size=${size}`,
  `--runtime=${runtime}`, '--time_based=1', '--ramp_time=1', '--randrepeat=0', '--norandommap=1']

try {
  console.error(`ab: this ${thisRev} against base ${baseRev} (${base}); ${size}, ${runtime} s per job, ${rounds} rounds; in ${root}`)
  buildBase()
  const targets = {}
  // the cluster made first was slower on 1M writes in an A/A run (the same commit as both): --base-first swaps the order
  const order = flag('base-first') ? [['base', baseTree], ['this', repoRoot]] : [['this', repoRoot], ['base', baseTree]]
  for (const [name, tree] of order) {
    // each tree's own bench helpers: its CLI (bin/run.js) creates its cluster
    const { localCluster } = await import(path.join(tree, 'scripts', 'bench', 'common.mjs'))
    const c = await localCluster(path.join(root, name), `ab-${name}`)
    stops.push(async () => c.destroy())
    c.tess(['vdisk', 'create', 'bench', '--size', size, '--rf', '1'])
    runFio([...nbdArgs(c.uri('bench')), '--name=prefill', '--rw=write', '--bs=1M', '--iodepth=8', `--size=${size}`], work)
    targets[name] = nbdArgs(c.uri('bench'))
  }
  const rows = []
  for (const jn of jobNames) {
    const job = allJobs[jn]
    const got = { this: [], base: [] }
    for (let r = 0; r < rounds; r++) {
      for (const t of r % 2 === 0 ? ['this', 'base'] : ['base', 'this']) {
        if (job.key === 'read') dropCaches()
        else spawnSync('sync')
        const v = fioFigure(runFio([...targets[t], ...timedArgs(job)], work), job.key, job.unit).value
        got[t].push(v)
        console.error(`${job.name.padEnd(18)} round ${r + 1} ${t.padEnd(4)} ${v.toFixed(1)} ${job.unit}`)
      }
    }
    rows.push(`| ${job.name} | ${job.unit} | ${roundsCell(got.this)} | ${fmt(median(got.this))} | ${roundsCell(got.base)} | ${fmt(median(got.base))} | ${ratio(median(got.this), median(got.base))} |`)
  }
  console.log(`this: ${thisRev}; base: ${baseRev} (${base}); made first: ${order[0][0]}; ${os.cpus().length} cores\n`)
  console.log('| job | unit | this (rounds) | this median | base (rounds) | base median | this/base |')
  console.log('|---|---|---|---|---|---|---|')
  for (const r of rows) console.log(r)
} finally {
  for (const s of stops.reverse()) await s().catch((e) => console.error(`cleanup: ${e.message}`))
  fs.rmSync(root, { recursive: true, force: true })
}
