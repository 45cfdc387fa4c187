#!/usr/bin/env node
// Multi-node benchmark (issues: multi-node, 12, 22): on 3 test hosts (network namespaces with their
// own sshd, scripts/testhosts.sh), in one run:
//   - wall time of `tess cluster create --hosts` for 3 hosts (bundle install, etcd, CVMs, disks)
//   - overwrites: fio (nbd engine, run inside host 1 on its CVM's NBD Unix socket: NBD on TCP requires
//     TLS) sequential 1 MiB writes at QD4 and random 4 KiB writes at QD16,
//     time-based, to an RF 1 and an RF 2 vDisk through host 1 (each written once before, so
//     extents are allocated), and the raw file on the same disk (libaio, direct=1)
//   - first writes: the same two jobs into a FRESH RF 1 and RF 2 vDisk (created each round, deleted
//     afterwards) and a fresh sparse raw file, size-limited so that every write is a first write
//     (1M: --size, 4k: --rand-first-size, covered once: randrepeat, random map on); then the same
//     job again on the same range (overwrite): first-write / overwrite ratio, and the spare
//     extent groups ready on each host before our first writes (the script waits up to 30 s for
//     the reserves, refilled while a node is idle, to be full). etcd's counters
//     (/metrics of the 3 members, with a client certificate signed by the operator's cluster CA)
//     before and after each pass: Txn and Put calls, mvcc puts, raft proposals, WAL fsyncs (all
//     members), keys, db growth, per GiB written.
// Every host's disk is on this machine's one disk, so RF 2 writes every byte twice to it: half the
// raw write rate is the ceiling. Every job runs --rounds times, the targets taking turns (the order
// rotates each round). Prints every round's figure, the medians and the ratios of the medians as
// Markdown tables. fio runs with its cwd in the bench dir and --verify_state_save=0.
// Usage: node scripts/bench/cluster.mjs [--size 1G] [--runtime 10] [--rounds 3] [--rand-first-size 256M]
//          [--parts overwrite,first] [--prefix bench]   (root; --prefix names the test hosts, e.g.
//          bench1..bench3; --parts runs only the parts named, default both)
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import {
  apiClient, checkArgs, etcdCostColumns, etcdMetrics, fioFigure, fmt, median, metricsDelta, opt, partsArg, ratio, repoRoot, rotate,
  roundsCell, runFio, settledEtcd, sparesSettled, sh, sizeBytes, sleep, sparseFile, tess,
} from './common.mjs'

checkArgs('usage: node scripts/bench/cluster.mjs [--size 1G] [--runtime 10] [--rounds 3] [--rand-first-size 256M] [--parts overwrite,first] [--prefix bench]', ['size', 'runtime', 'rounds', 'rand-first-size', 'parts', 'prefix'], [])

const size = opt('size', '1G')
const runtime = Number(opt('runtime', '10'))
const rounds = Number(opt('rounds', '3'))
const prefix = opt('prefix', 'bench')
const bytes = sizeBytes(size)
const randFirstBytes = Math.min(bytes, sizeBytes(opt('rand-first-size', '256M')))
const parts = partsArg(['overwrite', 'first'])
const clusterName = 'bench'
const th = path.join(repoRoot, 'scripts', 'testhosts.sh')
const root = fs.mkdtempSync('/var/tmp/tess-bench-cluster-')
const work = path.join(root, 'fio') // fio's working directory
const configDir = path.join(root, 'config')
const env = { ...process.env, TESS_CONFIG_DIR: configDir, NO_COLOR: '1' }
const GiB = 2 ** 30
const mib = (b) => (b / 1048576).toFixed(0)
const run = (args) => {
  const r = spawnSync(process.execPath, [tess, ...args, '--json'], { encoding: 'utf8', env })
  if (r.status !== 0) throw new Error(`tess ${args.join(' ')}: ${r.stdout}${r.stderr}`)
  return JSON.parse(r.stdout)
}

const jobs = [
  { name: '1M write QD4', tag: 'seq', rw: 'write', bs: '1M', iodepth: 4, unit: 'MiB/s', bytes },
  { name: '4k randwrite QD16', tag: 'rand', rw: 'randwrite', bs: '4k', iodepth: 16, unit: 'iops', bytes: randFirstBytes },
]
const targetNames = ['RF 1', 'RF 2', 'raw file']
const nbdArgs = (uri) => ['--ioengine=nbd', `--uri=${uri}`]
const fileArgs = (file) => ['--ioengine=libaio', '--direct=1', `--filename=${file}`]
const timedArgs = (job) => [`--name=${job.rw}`, `--rw=${job.rw}`, `--bs=${job.bs}`, `--iodepth=${job.iodepth}`, `--size=${size}`, `--runtime=${runtime}`,
  '--time_based=1', '--ramp_time=1', '--randrepeat=0', '--norandommap=1']
const onceArgs = (job) => [`--name=first-${job.tag}`, `--rw=${job.rw}`, `--bs=${job.bs}`, `--iodepth=${job.iodepth}`, `--size=${job.bytes}`,
  '--randrepeat=1', '--norandommap=0']

let hostsUp = false
let clusterUp = false
const out = []
try {
  fs.mkdirSync(work)
  sh('bash', [th, 'up', '3', '--prefix', prefix])
  hostsUp = true
  const info = JSON.parse(sh('bash', [th, 'list', '--prefix', prefix, '--json']).stdout)
  const hosts = info.hosts.map((h) => h.address)
  const t0 = Date.now()
  clusterUp = true // a failed create cleans up after itself; destroy is harmless then
  run(['cluster', 'create', '--name', clusterName, '--hosts', hosts.join(','), '--ssh-key', info.keyFile, '--known-hosts', info.knownHostsFile])
  const bootstrapS = (Date.now() - t0) / 1000
  console.error(`bootstrap of 3 hosts: ${bootstrapS.toFixed(1)} s (${rounds} rounds, ${size}, ${runtime} s per timed job, random first writes over ${mib(randFirstBytes)} MiB)`)
  const api = await apiClient(configDir, clusterName)
  const { resolveContext } = await import('../../dist/lib/contexts.js')
  const ctx = resolveContext(clusterName)
  const etcdPort = ctx.remote?.ports?.etcdClient ?? 2379

  // etcd metrics: a client certificate from the operator's copy of the cluster CA
  const { createNodeCert } = await import('../../dist/bootstrap/pki.js')
  const caDir = path.join(configDir, 'clusters', clusterName)
  const certDir = path.join(root, 'metrics-cert')
  fs.mkdirSync(certDir, { mode: 0o700 })
  const cert = createNodeCert(certDir, { caCert: path.join(caDir, 'ca.crt'), caKey: path.join(caDir, 'ca.key') }, 'bench-metrics', [])
  const etcd = etcdMetrics(hosts.map((h) => `https://${h}:${etcdPort}`), {
    ca: fs.readFileSync(path.join(caDir, 'ca.crt')), cert: fs.readFileSync(cert.cert), key: fs.readFileSync(cert.key),
  })

  // fio runs inside host 1 on its CVM's NBD Unix socket (NBD on TCP requires TLS, which would
  // measure the cipher): the I/O still enters through host 1 and replicates over the data port
  const inHost1 = ['bash', th, 'exec', info.hosts[0].name]
  const vdisk = async (name, n, rf) => {
    await api.post('/v1/vdisks', { name, sizeBytes: n, rf })
    return [inHost1, ...nbdArgs(`nbd+unix:///${name}?socket=/var/lib/tess/run/nbd.sock`)]
  }
  const raw = sparseFile(path.join(root, 'raw.img'), bytes)
  const targets = { 'RF 1': await vdisk('rf1', bytes, 1), 'RF 2': await vdisk('rf2', bytes, 2), 'raw file': fileArgs(raw) }
  // write every target once first: the overwrite jobs then measure overwrites, not extent allocation
  if (parts.has('overwrite')) for (const t of Object.values(targets)) runFio([...t, '--name=prefill', '--rw=write', '--bs=1M', '--iodepth=8', `--size=${size}`], work)

  // ---- overwrites
  const over = {}
  for (const job of parts.has('overwrite') ? jobs : []) {
    over[job.name] = Object.fromEntries(targetNames.map((t) => [t, []]))
    for (let r = 0; r < rounds; r++) {
      for (const t of rotate(targetNames, r)) {
        spawnSync('sync')
        const v = fioFigure(runFio([...targets[t], ...timedArgs(job)], work), 'write', job.unit).value
        over[job.name][t][r] = v
        console.error(`${job.name} round ${r + 1} ${t}: ${v.toFixed(0)} ${job.unit}`)
      }
    }
  }

  // ---- first writes into fresh targets, then the same range again
  const idleS = 3
  const b0 = await etcd()
  await sleep(idleS * 1000)
  const background = metricsDelta(b0, await etcd())
  const fresh = async (t, tag, n) => {
    if (t === 'raw file') {
      const file = sparseFile(path.join(root, `fw-${tag}.img`), n)
      return { args: fileArgs(file), cleanup: async () => fs.rmSync(file, { force: true }) }
    }
    const name = `fw-${t === 'RF 1' ? 'rf1' : 'rf2'}-${tag}`
    return { args: await vdisk(name, n, t === 'RF 1' ? 1 : 2), cleanup: () => api.delete(`/v1/vdisks/${name}?force=true`) }
  }
  const first = {}
  const again = {}
  const cost = {} // job -> target -> { first: [{delta, bytes}], over: [...] }
  // spare extent groups (written ahead, src/cvm/vdisk/spares.ts) on each host's disks before our first writes
  const sparesReady = () => info.hosts.map((h) => Number(sh('bash', [th, 'exec', h.name, 'sh', '-c',
    'ls /var/lib/tess/disks/*/spares 2>/dev/null | grep -cE "^(spare|zero)-[0-9]+\\.eg$" || true']).stdout.trim() || 0))
  const sparesSeen = {} // job -> target -> [per round: spares per host]
  for (const job of parts.has('first') ? jobs : []) {
    sparesSeen[job.name] = { 'RF 1': [], 'RF 2': [] }
    first[job.name] = Object.fromEntries(targetNames.map((t) => [t, []]))
    again[job.name] = Object.fromEntries(targetNames.map((t) => [t, []]))
    cost[job.name] = { 'RF 1': { first: [], over: [] }, 'RF 2': { first: [], over: [] } }
    for (let r = 0; r < rounds; r++) {
      for (const t of rotate(targetNames, r)) {
        const target = await fresh(t, `${job.tag}-${r + 1}`, job.bytes)
        try {
          for (const [pass, res] of [['first', first], ['over', again]]) {
            if (pass === 'first' && sparesSeen[job.name][t]) sparesSeen[job.name][t][r] = await sparesSettled(sparesReady)
            spawnSync('sync')
            const m0 = cost[job.name][t] ? await etcd() : undefined
            const f = fioFigure(runFio([...target.args, ...onceArgs(job)], work), 'write', job.unit)
            if (m0) cost[job.name][t][pass].push({ delta: metricsDelta(m0, await settledEtcd(etcd)), bytes: f.bytes })
            if (f.bytes !== job.bytes) throw new Error(`${job.name} on ${t}: fio wrote ${f.bytes} bytes, not the ${job.bytes} of the range`)
            res[job.name][t][r] = f.value
            console.error(`${job.name} round ${r + 1} ${t} ${pass === 'first' ? 'first write' : 'overwrite'}: ${f.value.toFixed(0)} ${job.unit}`)
          }
        } finally {
          await target.cleanup()
        }
      }
    }
  }

  // ---- tables
  const md = median
  const rule = (n) => `|${'---|'.repeat(n)}`
  const table = (res, suffix) => {
    out.push(`| job | unit | RF 1 (${rounds} rounds) | RF 1 median | RF 2 (rounds) | RF 2 median | raw file (direct, rounds) | raw median | RF 2 / RF 1 | RF 2 / (raw / 2) |`, rule(10))
    for (const job of jobs) {
      const x = res[job.name]
      const [a, b, c] = targetNames.map((t) => md(x[t]))
      out.push(`| ${job.name}${suffix} | ${job.unit} | ${roundsCell(x['RF 1'])} | ${fmt(a)} | ${roundsCell(x['RF 2'])} | ${fmt(b)} | ${roundsCell(x['raw file'])} | ${fmt(c)} | ${ratio(b, a)} | ${ratio(b, c / 2)} |`)
    }
  }
  if (parts.has('overwrite')) {
    out.push(`Overwrites of a vDisk written once before (${size}, ${runtime} s per round after a 1 s ramp; medians of ${rounds} rounds, ratios of the medians):`, '')
    table(over, '')
    out.push('')
  }
  if (parts.has('first')) firstTables()
  out.push(`Bootstrap of 3 hosts (\`tess cluster create --hosts\`, bundle upload, etcd, CVMs, disks): ${bootstrapS.toFixed(1)} s`)
  console.log(out.join('\n'))

  function firstTables() {
    out.push(`First writes into a fresh vDisk (a new sparse file for raw), each range written once (1M: ${mib(bytes)} MiB, 4k: ${mib(randFirstBytes)} MiB):`, '')
    table(first, ' (first write)')
    out.push('', 'First write / overwrite of the same range right after (ratio of the medians):', '')
    out.push('| job | unit | RF 1 overwrite (rounds) | RF 2 overwrite (rounds) | RF 1 first/over | RF 2 first/over | raw first/over |', rule(7))
    for (const job of jobs) {
      const fo = (t) => ratio(md(first[job.name][t]), md(again[job.name][t]))
      out.push(`| ${job.name} | ${job.unit} | ${roundsCell(again[job.name]['RF 1'])} | ${roundsCell(again[job.name]['RF 2'])} | ${fo('RF 1')} | ${fo('RF 2')} | ${fo('raw file')} |`)
    }
    out.push('', `etcd cost per GiB written (/metrics of the 3 members before and after each pass; calls and WAL fsyncs summed over the members; medians of ${rounds} rounds). Included in the figures, the idle background (the CVMs' heartbeats): ${
      etcdCostColumns.slice(0, 5).map(([label, f]) => `${fmt(f(background, idleS))} ${label.replace(' / GiB', '')}`).join(', ')} per second.`, '')
    out.push(`| job | vDisk | pass | MiB written | ${etcdCostColumns.map(([label]) => label).join(' | ')} |`, rule(4 + etcdCostColumns.length))
    for (const job of jobs) {
      for (const t of ['RF 1', 'RF 2']) {
        for (const [pass, label] of [['first', 'first write'], ['over', 'overwrite']]) {
          const rs = cost[job.name][t][pass]
          const cells = etcdCostColumns.map(([, f]) => fmt(md(rs.map((x) => f(x.delta, x.bytes / GiB)))))
          out.push(`| ${job.name} | ${t} | ${label} | ${mib(rs[0].bytes)} | ${cells.join(' | ')} |`)
        }
      }
    }
    out.push('', `Spare extent groups (32 MiB each, written ahead) ready on hosts 1 / 2 / 3 before each round's first write (the script waits up to 30 s for the reserves, refilled while a node's data path is idle, to be full or steady; a first write larger than a node's reserve continues on sparse files): ${
      jobs.map((job) => ['RF 1', 'RF 2'].map((t) => `${job.name} ${t} ${sparesSeen[job.name][t].map((x) => x.join('+')).join(', ')}`).join('; ')).join('; ')}.`, '')
  }
} finally {
  if (clusterUp) {
    try {
      run(['cluster', 'destroy', '--yes'])
    } catch (e) {
      console.error(`cleanup: ${e.message}`)
    }
  }
  // only hosts this run brought up: `up` refuses a prefix that is already up, and someone else's must stay
  if (hostsUp) spawnSync('bash', [th, 'down', '--prefix', prefix], { stdio: 'ignore' })
  fs.rmSync(root, { recursive: true, force: true })
}
