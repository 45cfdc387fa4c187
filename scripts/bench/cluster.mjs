#!/usr/bin/env node
// Multi-node benchmark (issue: multi-node): on 3 test hosts (network namespaces with their own
// sshd, scripts/testhosts.sh), in one run:
//   - wall time of `tess cluster create --hosts` for 3 hosts (bundle install, etcd, CVMs, disks)
//   - fio (nbd engine) sequential 1 MiB writes at QD4 and random 4 KiB writes at QD16 to an RF 1
//     and an RF 2 vDisk through host 1 (each written once before, so extents are allocated), and
//     the raw file on the same disk (libaio, direct=1).
// Every host's disk is on this machine's one disk, so RF 2 writes every byte twice to it: half the
// raw write rate is the ceiling. Prints a Markdown table with the ratios.
// Usage: node scripts/bench/cluster.mjs [--size 1G] [--runtime 10]   (root)
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { fioJson, opt, repoRoot, sh, tess } from './common.mjs'

const size = opt('size', '1G')
const runtime = Number(opt('runtime', '10'))
const prefix = 'bench'
const th = path.join(repoRoot, 'scripts', 'testhosts.sh')
const root = fs.mkdtempSync('/var/tmp/tess-bench-cluster-')
const env = { ...process.env, TESS_CONFIG_DIR: path.join(root, 'config'), NO_COLOR: '1' }
const run = (args) => {
  const r = spawnSync(process.execPath, [tess, ...args, '--json'], { encoding: 'utf8', env })
  if (r.status !== 0) throw new Error(`tess ${args.join(' ')}: ${r.stdout}${r.stderr}`)
  return JSON.parse(r.stdout)
}

function fio(target, rw, bs, iodepth) {
  const common = [`--name=${rw}`, `--rw=${rw}`, `--bs=${bs}`, `--iodepth=${iodepth}`, `--size=${size}`, `--runtime=${runtime}`, '--time_based=1', '--ramp_time=1', '--output-format=json', '--norandommap=1']
  const args = target.startsWith('nbd://') ? ['--ioengine=nbd', `--uri=${target}`, ...common] : ['--ioengine=libaio', '--direct=1', `--filename=${target}`, ...common]
  const j = fioJson(sh('fio', args).stdout).jobs[0].write
  return bs === '4k' ? j.iops : j.bw_bytes / 1048576
}

try {
  sh('bash', [th, 'up', '3', '--prefix', prefix])
  const info = JSON.parse(sh('bash', [th, 'list', '--prefix', prefix, '--json']).stdout)
  const hosts = info.hosts.map((h) => h.address)
  const t0 = Date.now()
  run(['cluster', 'create', '--name', 'bench', '--hosts', hosts.join(','), '--ssh-key', info.keyFile, '--known-hosts', info.knownHostsFile])
  const bootstrapS = (Date.now() - t0) / 1000
  console.error(`bootstrap of 3 hosts: ${bootstrapS.toFixed(1)} s`)
  run(['vdisk', 'create', 'rf1', '--size', size, '--rf', '1'])
  run(['vdisk', 'create', 'rf2', '--size', size, '--rf', '2'])
  const raw = path.join(root, 'raw.img')
  fs.writeFileSync(raw, '')
  fs.truncateSync(raw, Number(sh('numfmt', ['--from=iec', size]).stdout.trim()))
  const targets = { 'RF 1': `nbd://${hosts[0]}:10809/rf1`, 'RF 2': `nbd://${hosts[0]}:10809/rf2`, 'raw file': raw }
  // write every target once first: the jobs then measure overwrites, not extent allocation
  for (const t of Object.values(targets)) {
    const common = ['--name=prefill', '--rw=write', '--bs=1M', '--iodepth=8', `--size=${size}`, '--output-format=json']
    sh('fio', t.startsWith('nbd://') ? ['--ioengine=nbd', `--uri=${t}`, ...common] : ['--ioengine=libaio', '--direct=1', `--filename=${t}`, ...common])
  }
  const jobs = [['write', '1M', 4, 'MiB/s'], ['randwrite', '4k', 16, 'iops']]
  const res = {}
  for (const [rw, bs, qd, unit] of jobs) {
    for (const [name, t] of Object.entries(targets)) {
      res[`${rw}/${name}`] = fio(t, rw, bs, qd)
      console.error(`${rw} ${bs} QD${qd} ${name}: ${res[`${rw}/${name}`].toFixed(0)} ${unit}`)
    }
  }
  const lines = ['| job | unit | RF 1 | RF 2 | raw file (direct) | RF 2 / RF 1 | RF 2 / (raw / 2) |', '|---|---|---|---|---|---|---|']
  for (const [rw, bs, qd, unit] of jobs) {
    const a = res[`${rw}/RF 1`]; const b = res[`${rw}/RF 2`]; const r = res[`${rw}/raw file`]
    lines.push(`| ${bs} ${rw} QD${qd} | ${unit} | ${a.toFixed(0)} | ${b.toFixed(0)} | ${r.toFixed(0)} | ${(b / a).toFixed(2)} | ${(b / (r / 2)).toFixed(2)} |`)
  }
  lines.push('', `Bootstrap of 3 hosts (\`tess cluster create --hosts\`, bundle upload, etcd, CVMs, disks): ${bootstrapS.toFixed(1)} s`)
  console.log(lines.join('\n'))
} finally {
  try {
    run(['cluster', 'destroy', '--yes'])
  } catch (e) {
    console.error(`cleanup: ${e.message}`)
  }
  spawnSync('bash', [th, 'down', '--prefix', prefix], { stdio: 'ignore' })
  fs.rmSync(root, { recursive: true, force: true })
}
