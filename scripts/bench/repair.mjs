#!/usr/bin/env node
// Re-protection after a node loss (issue 15), on 4 test hosts (scripts/testhosts.sh), in one run:
//   - an RF 2 vDisk "data" of --size written once through host 1 (fio, 1 MiB), and a small RF 2
//     RF 1 vDisk "fg" on host 1 (256 MiB, written once) for the foreground job
//   - the foreground alone: fio 4k random writes QD16 on "fg" inside host 1, --runtime s
//   - a plain copy of the same bytes: on host 1, its extent group files read (page cache dropped)
//     and written to a new file with one fsync at the end (cat | head -c BYTES > file; sync), the
//     bytes being those the curator is to re-protect after the first loss
//   - --rounds rounds (default 2), the repair rate unlimited and --throttle in turn (`--throttle
//     unlimited`: every round unlimited): `tess cluster update --repair-rate`, host 4 or host 3 in
//     turn killed (quorum holds: host 4 runs no etcd member, hosts 1 and 2 do) with the node-down grace at 1 h, the foreground job once with the host down and no
//     repair (the round's baseline), then the grace set to 5 s (the curator scans at once) and, as
//     soon as `tess cluster health` shows it repairing, the same foreground job; the repair's rate
//     (bytes re-protected / time, as the curator measures its run) and the foreground's figure
//     during the repair against the round's baseline and against the one with every host up;
//     after the round the killed host powers on again (its boot entry point) and rejoins before
//     the next one (which kills the other: the repair moved the copies off the first)
// Every host's disk is this
// machine's one disk, so a repair copy reads and writes the same disk, as the plain copy does.
// Usage: node scripts/bench/repair.mjs [--size 8G] [--runtime 10] [--throttle 100M] [--rounds 2] [--prefix rep] [--no-foreground]   (root)
// --no-foreground: no foreground job in the rounds, the repair alone (its rate against the plain copy)
import { spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { apiClient, checkArgs, fioFigure, fioJson, flag, fmt, opt, ratio, repoRoot, runFio, sh, sizeBytes, sleep, tess } from './common.mjs'

checkArgs('usage: node scripts/bench/repair.mjs [--size 8G] [--runtime 10] [--throttle 100M] [--rounds 2] [--prefix rep] [--no-foreground]', ['size', 'runtime', 'throttle', 'rounds', 'prefix'], ['no-foreground'])

const size = opt('size', '8G')
const runtime = Number(opt('runtime', '10'))
/** the repair alone: no foreground job in the rounds (the repair's own rate against the plain copy) */
const noForeground = flag('no-foreground')
const throttle = opt('throttle', '100M')
const prefix = opt('prefix', 'rep')
const roundCount = Number(opt('rounds', '2'))
if (!Number.isInteger(roundCount) || roundCount < 1 || roundCount > 20) throw new Error('--rounds is 1 to 20')
const bytes = sizeBytes(size)
const clusterName = 'repair'
const th = path.join(repoRoot, 'scripts', 'testhosts.sh')
const root = fs.mkdtempSync('/var/tmp/tess-bench-repair-')
const work = path.join(root, 'fio')
const env = { ...process.env, TESS_CONFIG_DIR: path.join(root, 'config'), NO_COLOR: '1' }
const MiB = 2 ** 20
const run = (args) => {
  const r = spawnSync(process.execPath, [tess, ...args, '--json'], { encoding: 'utf8', env })
  if (r.status !== 0) throw new Error(`tess ${args.join(' ')}: ${r.stdout}${r.stderr}`)
  return JSON.parse(r.stdout)
}
const health = () => run(['cluster', 'health'])
/** a killed test host powers on: link up, sshd, and its boot entry point (the supervisor and its daemons) */
const powerOn = (host) => {
  sh('bash', [th, 'revive', host.name])
  sh('bash', [th, 'exec', host.name, 'node', '/var/lib/tess/bundle/current/dist/supervisor/boot.js', '--data-dir', '/var/lib/tess'])
}

let hostsUp = false
let clusterUp = false
/** the host killed by the last round, still down */
let dead
try {
  fs.mkdirSync(work)
  sh('bash', [th, 'up', '4', '--prefix', prefix])
  hostsUp = true
  const info = JSON.parse(sh('bash', [th, 'list', '--prefix', prefix, '--json']).stdout)
  clusterUp = true
  run(['cluster', 'create', '--name', clusterName, '--hosts', info.hosts.map((h) => h.address).join(','), '--ssh-key', info.keyFile, '--known-hosts', info.knownHostsFile])
  run(['cluster', 'update', '--node-down-grace', '5s'])
  // while the foreground job runs, the health is read through the API from this process: a CLI
  // process per poll (a Node start, about 0.3 s of CPU) would take a core from the job it measures;
  // through host 2's API, not host 1's (whose CVM serves the foreground job and runs the repair)
  const api = await apiClient(path.join(root, 'config'), clusterName, info.hosts[1].address)
  const quietHealth = () => api.get('/v1/cluster/health')
  const inHost1 = ['bash', th, 'exec', info.hosts[0].name]
  const nbd = (name) => [`--ioengine=nbd`, `--uri=nbd+unix:///${name}?socket=/var/lib/tess/run/nbd.sock`]
  run(['vdisk', 'create', 'data', '--size', size, '--rf', '2'])
  // the foreground's vDisk is RF 1 on host 1 (placement puts the first copy on the node asked):
  // no host killed holds a copy of it, so what it loses is what the repair's traffic takes
  run(['vdisk', 'create', 'fg', '--size', '256M', '--rf', '1'])
  console.error(`writing ${size} at RF 2 through host 1`)
  runFio([inHost1, ...nbd('data'), '--name=fill', '--rw=write', '--bs=1M', '--iodepth=8', `--size=${size}`], work)
  runFio([inHost1, ...nbd('fg'), '--name=fill', '--rw=write', '--bs=1M', '--iodepth=8', '--size=256M'], work)
  const fgArgs = [...nbd('fg'), '--name=fg', '--rw=randwrite', '--bs=4k', '--iodepth=16', '--size=256M', `--runtime=${runtime}`, '--time_based=1', '--randrepeat=0', '--norandommap=1']
  spawnSync('sync')
  const alone = fioFigure(runFio([inHost1, ...fgArgs], work), 'write', 'iops').value
  console.error(`foreground alone: ${alone.toFixed(0)} IOPS`)

  const rounds = []
  for (let i = 0; i < roundCount; i++) {
    const rate = i % 2 === 0 ? 'unlimited' : throttle
    const victim = info.hosts[3 - (i % 2)]
    run(['cluster', 'update', '--repair-rate', rate])
    const before = health().curator
    spawnSync('sync')
    // the grace is long while the host is dead and the foreground runs without a repair: that
    // figure is the baseline (a dead host costs the others something of its own: reconnects,
    // etcd with a member gone); then a grace of 5 s lets the curator start at once
    run(['cluster', 'update', '--node-down-grace', '1h'])
    console.error(`repair rate ${rate}: killing ${victim.name}`)
    sh('bash', [th, 'kill', victim.name])
    dead = victim
    for (const deadline = Date.now() + 120_000; !health().nodesDown.includes(victim.name);) {
      if (Date.now() > deadline) throw new Error(`${victim.name} not shown down`)
      await sleep(500)
    }
    spawnSync('sync')
    const aloneDown = noForeground ? NaN : fioFigure(runFio([inHost1, ...fgArgs], work), 'write', 'iops').value
    if (!noForeground) console.error(`repair rate ${rate}: foreground with ${victim.name} down, before the repair: ${aloneDown.toFixed(0)} IOPS`)
    run(['cluster', 'update', '--node-down-grace', '5s'])
    // wait for the repair to start (a settings change makes the curator scan), then the foreground job beside it
    let h = health()
    const deadline = Date.now() + 120_000
    while (!h.curator.repairing && h.curator.repairStartedAt === before.repairStartedAt) {
      if (Date.now() > deadline) throw new Error(`no repair started: ${JSON.stringify(h.curator)}`)
      await sleep(200)
      h = health()
    }
    const toReprotect = h.total.bytesToReprotect
    // the curator's start of the run (a master elected meanwhile may not have reported one yet: then now)
    const t0 = Date.parse(h.curator.repairStartedAt ?? '') || Date.now()
    const fio = spawn(noForeground ? 'true' : inHost1[0], noForeground ? [] : [...inHost1.slice(1), 'fio', '--verify_state_save=0', '--output-format=json', ...fgArgs], { cwd: work, stdio: ['ignore', 'pipe', 'pipe'] })
    let fioOut = ''
    fio.stdout.on('data', (d) => { fioOut += d })
    const fioDone = new Promise((resolve) => fio.once('exit', resolve))
    let repairS = 0
    for (;;) {
      h = await quietHealth()
      if (!h.curator.repairing && h.total.underReplicated === 0) break
      if (Date.now() - t0 > 30 * 60_000) throw new Error('the repair did not end within 30 min')
      await sleep(250)
    }
    repairS = (Date.now() - t0) / 1000 // from the curator's start of the run to the poll that saw it end
    await fioDone
    const during = noForeground ? NaN : fioFigure(fioJson(fioOut), 'write', 'iops').value
    const repaired = h.curator.repairedBytes - before.repairedBytes
    rounds.push({ rate, victim: victim.name, toReprotect, repaired, curatorRate: h.curator.repairBytesPerSec, wallS: repairS, aloneDown, during, overlap: Math.min(1, repairS / runtime) })
    console.error(`repair rate ${rate}: ${(repaired / MiB).toFixed(0)} MiB re-protected at ${(h.curator.repairBytesPerSec / MiB).toFixed(0)} MiB/s (curator), ${repairS.toFixed(1)} s seen; foreground ${during.toFixed(0)} IOPS`)
    if (i + 1 < roundCount) {
      // the host powers on again and rejoins: the next round starts with every host up
      powerOn(victim)
      dead = undefined
      for (const deadline = Date.now() + 180_000; ;) {
        const hb = health()
        if (hb.nodesDown.length === 0 && hb.total.underReplicated === 0 && !hb.curator.repairing) break
        if (Date.now() > deadline) throw new Error(`${victim.name} did not rejoin: ${JSON.stringify(hb.nodesDown)}`)
        await sleep(1000)
      }
      console.error(`${victim.name} is back`)
    }
  }

  // a plain copy of the bytes the first repair re-protected: host 1's extent group files, read
  // after dropping the page cache, into one new file, synced
  const copyBytes = rounds[0].repaired
  sh('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches'])
  const c0 = Date.now()
  sh('bash', [th, 'exec', info.hosts[0].name, 'sh', '-c', `cat /var/lib/tess/disks/d0/egroups/*.eg | head -c ${copyBytes} > /var/lib/tess/copy.bin && sync && rm -f /var/lib/tess/copy.bin`])
  const copyRate = copyBytes / ((Date.now() - c0) / 1000)

  const out = []
  out.push(`Re-protection after a node loss (RF 2, ${size} written; 4 test hosts, one killed per round; node-down grace 5 s; foreground: fio 4k random writes QD16 on an RF 1 vDisk of host 1, ${runtime} s):`, '')
  out.push('| repair rate setting | host killed | MiB re-protected | curator MiB/s | / plain copy | repair seen (s) | foreground IOPS, host down, no repair | foreground IOPS during | / host down, no repair | / alone | foreground overlap |', `|${'---|'.repeat(11)}`)
  for (const r of rounds) {
    out.push(`| ${r.rate} | ${r.victim} | ${fmt(r.repaired / MiB)} | ${fmt(r.curatorRate / MiB)} | ${ratio(r.curatorRate, copyRate)} | ${r.wallS.toFixed(1)} | ${fmt(r.aloneDown)} | ${fmt(r.during)} | ${ratio(r.during, r.aloneDown)} | ${ratio(r.during, alone)} | ${(r.overlap * 100).toFixed(0)} % |`)
  }
  out.push('', `Plain copy of ${fmt(copyBytes / MiB)} MiB (host 1's extent group files, page cache dropped, into one file, synced): ${fmt(copyRate / MiB)} MiB/s. Foreground alone: ${fmt(alone)} IOPS.`)
  out.push('"foreground overlap": the share of the foreground job that ran while the repair did (a repair shorter than the job leaves the rest of it unloaded).')
  out.push('"host down, no repair": the same job with the host already dead and its repair held back (a node-down grace of 1 h), right before the grace was set to 5 s.')
  console.log(out.join('\n'))
} finally {
  // the last round's host powers on again, so that the cluster's destroy reaches every host
  if (dead !== undefined) {
    try {
      powerOn(dead)
    } catch (e) {
      console.error(`cannot power ${dead.name} on again: ${e instanceof Error ? e.message : String(e)}`)
    }
  }
  if (clusterUp) spawnSync(process.execPath, [tess, 'cluster', 'destroy', '--cluster', clusterName, '--yes'], { env, stdio: 'inherit' })
  if (hostsUp) spawnSync('bash', [th, 'down', '--prefix', prefix], { stdio: 'inherit' })
  fs.rmSync(root, { recursive: true, force: true })
}
