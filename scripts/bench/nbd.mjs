#!/usr/bin/env node
// NBD data-path benchmark (issue: vDisk data path). One run measures, on the same disk:
//   ours     - a Tessera vDisk (RF 1) on the embedded cluster, fio --ioengine=nbd
//   nbdkit   - `nbdkit file` serving a raw file, fio --ioengine=nbd
//   qemu-nbd - `qemu-nbd` serving a raw file, fio --ioengine=nbd
//   raw      - fio on the raw file itself (libaio, direct=1): the ceiling
// Jobs: 4k random read and write at QD16, 1M sequential read and write at QD4.
// Prints every figure and the ratio of ours to each peer, as a Markdown table.
// Usage: node scripts/bench/nbd.mjs [--size 1G] [--runtime 10] [--dir DIR]
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { dropCaches, fioJson, freePort, localCluster, opt, ratio, sh, startServer, waitPort } from './common.mjs'

const size = opt('size', '1G')
const runtime = Number(opt('runtime', '10'))
const base = opt('dir', '/var/tmp')
const root = fs.mkdtempSync(path.join(base, 'tess-bench-'))
const rawFile = path.join(root, 'raw.img')

const jobs = [
  { name: '4k randread QD16', rw: 'randread', bs: '4k', iodepth: 16, key: 'read', unit: 'iops' },
  { name: '4k randwrite QD16', rw: 'randwrite', bs: '4k', iodepth: 16, key: 'write', unit: 'iops' },
  { name: '1M read QD4', rw: 'read', bs: '1M', iodepth: 4, key: 'read', unit: 'MiB/s' },
  { name: '1M write QD4', rw: 'write', bs: '1M', iodepth: 4, key: 'write', unit: 'MiB/s' },
]

function fio(target, job) {
  const common = [`--name=${job.rw}`, `--rw=${job.rw}`, `--bs=${job.bs}`, `--iodepth=${job.iodepth}`, `--size=${size}`,
    `--runtime=${runtime}`, '--time_based=1', '--ramp_time=1', '--output-format=json', '--randrepeat=0', '--norandommap=1']
  const args = target.kind === 'nbd'
    ? ['--ioengine=nbd', `--uri=${target.uri}`, ...common]
    : ['--ioengine=libaio', '--direct=1', `--filename=${rawFile}`, ...common]
  if (job.rw.includes('read')) dropCaches()
  const r = sh('fio', args)
  const j = fioJson(r.stdout).jobs[0][job.key]
  return job.unit === 'iops' ? j.iops : j.bw_bytes / 1048576
}

function prefill(target) {
  // reads must hit written data: write the whole device once, sequentially
  const common = ['--name=prefill', '--rw=write', '--bs=1M', '--iodepth=8', `--size=${size}`, '--output-format=json']
  if (target.kind === 'nbd') sh('fio', ['--ioengine=nbd', `--uri=${target.uri}`, ...common])
  else sh('fio', ['--ioengine=libaio', '--direct=1', `--filename=${rawFile}`, ...common])
}

const results = {}
const stops = []
try {
  console.error(`bench dir ${root} (${size}, ${runtime}s per job) on ${os.cpus().length} cores`)
  fs.writeFileSync(rawFile, '')
  fs.truncateSync(rawFile, Number(sh('numfmt', ['--from=iec', size]).stdout.trim()))
  prefill({ kind: 'file' })

  const cluster = await localCluster(root)
  stops.push(async () => cluster.destroy())
  cluster.tess(['vdisk', 'create', 'bench', '--size', size])
  const nbdkitPort = await freePort()
  const nbdkit = startServer('nbdkit', ['-f', '-i', '127.0.0.1', '-p', String(nbdkitPort), 'file', rawFile])
  stops.push(nbdkit.stop)
  const qemuPort = await freePort()
  const qemu = startServer('qemu-nbd', ['-f', 'raw', '-b', '127.0.0.1', '-p', String(qemuPort), '-t', '--shared=16', '--aio=threads', rawFile])
  stops.push(qemu.stop)
  await waitPort(nbdkitPort)
  await waitPort(qemuPort)

  const targets = {
    ours: { kind: 'nbd', uri: cluster.uri('bench') },
    nbdkit: { kind: 'nbd', uri: `nbd://127.0.0.1:${nbdkitPort}/` },
    'qemu-nbd': { kind: 'nbd', uri: `nbd://127.0.0.1:${qemuPort}/` },
    raw: { kind: 'file' },
  }
  prefill(targets.ours)
  for (const job of jobs) {
    results[job.name] = {}
    for (const [name, t] of Object.entries(targets)) {
      results[job.name][name] = fio(t, job)
      console.error(`${job.name.padEnd(18)} ${name.padEnd(9)} ${results[job.name][name].toFixed(1)} ${job.unit}`)
    }
  }
  const cvm = cluster.cvmPid()
  const rss = fs.readFileSync(`/proc/${cvm}/status`, 'utf8').match(/VmHWM:\s+(\d+)/)?.[1]

  const lines = []
  lines.push(`| job | unit | ours | nbdkit | qemu-nbd | raw file (direct) | ours/nbdkit | ours/qemu-nbd | ours/raw |`)
  lines.push(`|---|---|---|---|---|---|---|---|---|`)
  for (const job of jobs) {
    const r = results[job.name]
    lines.push(`| ${job.name} | ${job.unit} | ${r.ours.toFixed(0)} | ${r.nbdkit.toFixed(0)} | ${r['qemu-nbd'].toFixed(0)} | ${r.raw.toFixed(0)} | ${ratio(r.ours, r.nbdkit)} | ${ratio(r.ours, r['qemu-nbd'])} | ${ratio(r.ours, r.raw)} |`)
  }
  lines.push('')
  lines.push(`CVM peak RSS during the run: ${rss ? (Number(rss) / 1024).toFixed(0) + ' MiB' : 'n/a'}`)
  console.log(lines.join('\n'))
} finally {
  for (const s of stops.reverse()) {
    try {
      await s()
    } catch (e) {
      console.error(`cleanup: ${e.message}`)
    }
  }
  fs.rmSync(root, { recursive: true, force: true })
}
