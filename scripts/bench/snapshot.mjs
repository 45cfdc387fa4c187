#!/usr/bin/env node
// vDisk snapshots (issue 14) on the embedded cluster, in one run:
//   1. the time to take a snapshot of a --size vDisk with --written bytes written (fio 1 MiB
//      sequential, then --churn of 1 MiB random writes before each snapshot so every one has
//      something to flush and freeze): `POST /v1/vdisks/NAME/snapshots` through the CLI's API
//      client (CA pinned, token, a new TLS connection), --rounds snapshots, each timed; and the
//      whole `tess vdisk snapshot create` command once (a Node start included)
//   2. reading a snapshot: fio 1M sequential reads QD4 of the written range from the oldest
//      snapshot's export and from the vDisk (page cache dropped before each), 3 rounds alternating;
//      MiB/s and the ratio of the medians
//   3. deleting the snapshots (freeing what only each kept), each timed
//   4. the cost of copy-on-write: fio 4k random writes QD16 and 1M random writes QD4 for --runtime s
//      over the written range with no snapshot (in place), then right after one (the first write
//      to each 1 MiB extent copies it; a whole-extent write needs no read of the old one)
// The pool's overcommit limit is set to 4 first, so the vDisk may be larger than the pool.
// Prints Markdown tables. Usage: node scripts/bench/snapshot.mjs [--size 100G] [--written 4G]
//   [--churn 256M] [--rounds 5] [--runtime 10] [--dir DIR]   (root: drops the page cache)
import fs from 'node:fs'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import { apiClient, checkArgs, dropCaches, fioFigure, fmt, localCluster, opt, runFio, sizeBytes, stats, tess } from './common.mjs'

checkArgs('usage: node scripts/bench/snapshot.mjs [--size 100G] [--written 4G] [--churn 256M] [--rounds 5] [--runtime 10] [--dir DIR]', ['size', 'written', 'churn', 'rounds', 'runtime', 'dir'])
const size = opt('size', '100G')
const written = opt('written', '4G')
const churn = opt('churn', '256M')
const rounds = Number(opt('rounds', '5'))
const runtime = Number(opt('runtime', '10'))
const root = fs.mkdtempSync(path.join(opt('dir', '/var/tmp'), 'tess-bench-snap-'))
const work = path.join(root, 'work')
const name = 'bench-snap'
const ms = (t0) => Number(process.hrtime.bigint() - t0) / 1e6

let cluster
try {
  fs.mkdirSync(work)
  console.error(`bench dir ${root}: a ${size} vDisk, ${written} written, ${rounds} snapshots with ${churn} written before each`)
  cluster = await localCluster(root, name)
  const api = await apiClient(path.join(root, 'config'), name)
  // thin provisioning: a vDisk larger than the pool's usable space needs overcommit (a throwaway cluster)
  await api.patch('/v1/storage-pool', { overcommitMax: 4 })
  await api.post('/v1/vdisks', { name: 'vd', sizeBytes: sizeBytes(size), rf: 1 })
  const target = ['--ioengine=nbd', `--uri=${cluster.uri('vd')}`]
  runFio([...target, '--name=fill', '--rw=write', '--bs=1M', '--iodepth=8', `--size=${written}`], work)

  // ---- 1. taking snapshots
  const took = []
  for (let r = 1; r <= rounds; r++) {
    runFio([...target, '--name=churn', '--rw=randwrite', '--bs=1M', '--iodepth=8', `--size=${written}`, `--io_size=${churn}`, '--randrepeat=0'], work)
    const t0 = process.hrtime.bigint()
    await api.post('/v1/vdisks/vd/snapshots', { name: `s${r}` })
    took.push(ms(t0))
    console.error(`snapshot s${r}: ${took.at(-1).toFixed(1)} ms`)
  }
  const t0 = process.hrtime.bigint()
  const cli = spawnSync(process.execPath, [tess, 'vdisk', 'snapshot', 'create', 'vd', 'by-cli', '--json'], { encoding: 'utf8', env: { ...process.env, TESS_CONFIG_DIR: path.join(root, 'config') } })
  const cliMs = ms(t0)
  if (cli.status !== 0) throw new Error(`tess vdisk snapshot create: ${cli.stdout}${cli.stderr}`)
  const st = stats(took)

  // ---- 2. reading a snapshot (the oldest: about a quarter of its extents are no longer the vDisk's), rounds alternating
  const seq = (uri) => ['--ioengine=nbd', `--uri=${uri}`, '--name=seq', '--rw=read', '--bs=1M', '--iodepth=4', `--size=${written}`]
  const snapRead = []
  const liveRead = []
  for (let r = 0; r < 3; r++) {
    for (const [uri, into] of r % 2 === 0 ? [['vd@s1', snapRead], ['vd', liveRead]] : [['vd', liveRead], ['vd@s1', snapRead]]) {
      dropCaches()
      into.push(fioFigure(runFio(seq(cluster.uri(uri)), work), 'read', 'MiB/s').value)
    }
  }

  // ---- 3. deleting them
  const del = []
  for (const s of [...Array.from({ length: rounds }, (_, i) => `s${i + 1}`), 'by-cli']) {
    const d0 = process.hrtime.bigint()
    await api.delete(`/v1/vdisks/vd/snapshots/${s}`)
    del.push(ms(d0))
  }
  const ds = stats(del)

  // ---- 4. copy-on-write: the same jobs with no snapshot (in place), then right after one
  const jobs = [
    { name: `4k randwrite QD16 over ${written}`, unit: 'IOPS', key: 'iops', args: ['--rw=randwrite', '--bs=4k', '--iodepth=16', '--norandommap=1'] },
    { name: `1M randwrite QD4 over ${written}`, unit: 'MiB/s', key: 'MiB/s', args: ['--rw=randwrite', '--bs=1M', '--iodepth=4', '--norandommap=1'] },
  ]
  const cow = []
  for (const job of jobs) {
    const args = [...target, '--name=cow', ...job.args, `--size=${written}`, `--runtime=${runtime}`, '--time_based=1', '--randrepeat=0']
    spawnSync('sync')
    const inPlace = fioFigure(runFio(args, work), 'write', job.key === 'iops' ? 'iops' : 'MiB/s').value
    await api.post('/v1/vdisks/vd/snapshots', { name: 'cow' })
    spawnSync('sync')
    const afterSnap = fioFigure(runFio(args, work), 'write', job.key === 'iops' ? 'iops' : 'MiB/s').value
    await api.delete('/v1/vdisks/vd/snapshots/cow')
    cow.push({ job, inPlace, afterSnap })
  }

  const out = []
  out.push(`A ${size} vDisk with ${written} written, ${churn} of 1 MiB random writes before each snapshot:`, '')
  out.push('| what | rounds (ms) | median ms | max ms |', '|---|---|---|---|')
  out.push(`| take a snapshot (API) | ${took.map((x) => x.toFixed(1)).join(' / ')} | ${st.median.toFixed(1)} | ${st.max.toFixed(1)} |`)
  out.push(`| \`tess vdisk snapshot create\` (whole command) | ${cliMs.toFixed(0)} | | |`)
  out.push(`| delete a snapshot (API) | ${del.map((x) => x.toFixed(1)).join(' / ')} | ${ds.median.toFixed(1)} | ${ds.max.toFixed(1)} |`)
  out.push('', `| job (${runtime} s) | unit | no snapshot (in place) | right after a snapshot (copy-on-write) | ratio |`, '|---|---|---|---|---|')
  for (const c of cow) out.push(`| ${c.job.name} | ${c.job.unit} | ${fmt(c.inPlace)} | ${fmt(c.afterSnap)} | ${(c.afterSnap / c.inPlace).toFixed(2)} |`)
  const sm = stats(snapRead).median
  const lm = stats(liveRead).median
  out.push('', '| job | unit | snapshot export (3 rounds) | median | vDisk (3 rounds) | median | ratio |', '|---|---|---|---|---|---|---|')
  out.push(`| 1M read QD4 of ${written} (cold) | MiB/s | ${snapRead.map(fmt).join(' / ')} | ${fmt(sm)} | ${liveRead.map(fmt).join(' / ')} | ${fmt(lm)} | ${(sm / lm).toFixed(2)} |`)
  console.log(out.join('\n'))
} finally {
  try {
    cluster?.destroy()
  } finally {
    fs.rmSync(root, { recursive: true, force: true })
  }
}
