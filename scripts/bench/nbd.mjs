#!/usr/bin/env node
// NBD data-path benchmark (issues: vDisk data path, 12, 22). One run measures, on the same disk:
//   ours     - a Tessera vDisk (RF 1) on the embedded cluster, fio --ioengine=nbd on the CVM's NBD
//              Unix socket (on TCP our NBD requires TLS)
//   nbdkit   - `nbdkit file` serving a raw file on a Unix socket, fio --ioengine=nbd
//   qemu-nbd - `qemu-nbd` serving a raw file on a Unix socket, fio --ioengine=nbd
//   raw      - fio on the raw file itself (libaio, direct=1): the ceiling
// 1. Overwrites: 4k random read and write at QD16, 1M sequential read and write at QD4, time-based,
//    on a vDisk and a raw file written once before.
// 2. First writes: 1M sequential write at QD4 (--size) and 4k random write at QD16
//    (--rand-first-size) into a FRESH target each round (a new vDisk, deleted afterwards; a new
//    sparse file behind a new nbdkit / qemu-nbd; a new sparse file for raw). Size-limited, not
//    time-based: every write is a first write (the random job covers its range once: randrepeat,
//    random map on). The same job again right after is the overwrite of the same range:
//    first-write / overwrite ratio per target, and how many spare extent groups (written ahead,
//    src/cvm/vdisk/spares.ts) ours had ready before each of its first writes (it waits up to
//    30 s for the reserve, refilled while the data path is idle, to be full). For ours, etcd's
//    counters (/metrics of the embedded etcd: gRPC Txn and Put calls, mvcc puts, raft proposals, WAL fsyncs, keys, db size)
//    before and after each pass, per GiB written.
// 3. Control plane: latency of --probes sequential `GET /v1/vdisks` (as the CLI calls it: a new TLS
//    connection each) idle and during a 1M write QD4 job on ours; median, p90, ratio.
// 4. Unless --no-pull (or docker-registry, umoci or skopeo is missing): 4k randwrite QD16 IOPS on
//    ours without and with image pulls running (POST /v1/images of a 5-layer image from a
//    docker-registry on 127.0.0.1, deleted and pulled again until the job ends).
// Every job runs --rounds times; within a round the targets take turns (the order rotates by one
// each round). Prints every round's figure, the median per target and the ratios of the medians,
// as Markdown tables. fio runs with its cwd in the bench dir and --verify_state_save=0.
// Usage: node scripts/bench/nbd.mjs [--size 1G] [--runtime 10] [--rounds 3] [--rand-first-size 256M]
//          [--probes 20] [--no-pull] [--layer-mib 8] [--parts overwrite,first,api,pull] [--dir DIR]
//        (root: drops the page cache; --parts runs only the numbered parts named, default all five)
// 5. Encrypted against plain: the four jobs of part 1 on an encrypted vDisk (tess vdisk create
//    --encrypted: AES-256-XTS per 4 KiB block) and on the plain one, rounds alternating; ratio.
import { spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {
  apiClient, buildBenchImages, checkArgs, dropCaches, etcdCostColumns, etcdMetrics, fioFigure, flag, fmt, localCluster, median,
  metricsDelta, opt, partsArg, ratio, rotate, roundsCell, runFio, settledEtcd, sh, sizeBytes, sleep, sparesSettled, sparseFile, startFio,
  startRegistry, startServer, stats, timeCalls, waitSocket,
} from './common.mjs'

checkArgs('usage: node scripts/bench/nbd.mjs [--size 1G] [--runtime 10] [--rounds 3] [--rand-first-size 256M] [--probes 20] [--no-pull] [--layer-mib 8] [--parts overwrite,first,api,pull,encrypted] [--dir DIR]', ['size', 'runtime', 'rounds', 'rand-first-size', 'probes', 'layer-mib', 'parts', 'dir'], ['no-pull'])

const size = opt('size', '1G')
const runtime = Number(opt('runtime', '10'))
const rounds = Number(opt('rounds', '3'))
const probes = Number(opt('probes', '20'))
const layerMiB = Number(opt('layer-mib', '8'))
const base = opt('dir', '/var/tmp')
const bytes = sizeBytes(size)
const parts = partsArg(['overwrite', 'first', 'api', 'pull', 'encrypted'])
const randFirstBytes = Math.min(bytes, sizeBytes(opt('rand-first-size', '256M')))
const root = fs.mkdtempSync(path.join(base, 'tess-bench-'))
const work = path.join(root, 'fio') // fio's working directory
const rawFile = path.join(root, 'raw.img')
const clusterName = 'bench'
const GiB = 2 ** 30

const jobs = [
  { name: '4k randread QD16', rw: 'randread', bs: '4k', iodepth: 16, key: 'read', unit: 'iops' },
  { name: '4k randwrite QD16', rw: 'randwrite', bs: '4k', iodepth: 16, key: 'write', unit: 'iops' },
  { name: '1M read QD4', rw: 'read', bs: '1M', iodepth: 4, key: 'read', unit: 'MiB/s' },
  { name: '1M write QD4', rw: 'write', bs: '1M', iodepth: 4, key: 'write', unit: 'MiB/s' },
]
const firstJobs = [
  { name: '1M seq write QD4', tag: 'seq', rw: 'write', bs: '1M', iodepth: 4, key: 'write', unit: 'MiB/s', bytes },
  { name: '4k rand write QD16', tag: 'rand', rw: 'randwrite', bs: '4k', iodepth: 16, key: 'write', unit: 'iops', bytes: randFirstBytes },
]
const targetNames = ['ours', 'nbdkit', 'qemu-nbd', 'raw']
const nbdArgs = (uri) => ['--ioengine=nbd', `--uri=${uri}`]
const fileArgs = (file) => ['--ioengine=libaio', '--direct=1', `--filename=${file}`]
const mib = (b) => (b / 1048576).toFixed(0)

/** A time-based job on a target written before (overwrites; reads hit written data). */
const timedArgs = (job, jobSize = size) => [`--name=${job.rw}`, `--rw=${job.rw}`, `--bs=${job.bs}`, `--iodepth=${job.iodepth}`, `--size=${jobSize}`,
  `--runtime=${runtime}`, '--time_based=1', '--ramp_time=1', '--randrepeat=0', '--norandommap=1']
/** A size-limited job that writes its range exactly once (the random one: random map, repeatable seed). */
const onceArgs = (job) => [`--name=first-${job.tag}`, `--rw=${job.rw}`, `--bs=${job.bs}`, `--iodepth=${job.iodepth}`, `--size=${job.bytes}`,
  '--randrepeat=1', '--norandommap=0']

/** Before a job: reads start from a cold page cache; writes do not pay for the previous job's dirty pages. */
function settle(job) {
  if (job.key === 'read') dropCaches()
  else spawnSync('sync')
}

function prefill(targetArgs) {
  runFio([...targetArgs, '--name=prefill', '--rw=write', '--bs=1M', '--iodepth=8', `--size=${size}`], work)
}

const stops = []
const out = []
try {
  fs.mkdirSync(work)
  console.error(`bench dir ${root} (${size}, ${runtime}s per timed job, ${rounds} rounds, random first writes over ${mib(randFirstBytes)} MiB) on ${os.cpus().length} cores`)
  sparseFile(rawFile, bytes)
  prefill(fileArgs(rawFile))

  const cluster = await localCluster(root, clusterName)
  stops.push(async () => cluster.destroy())
  const api = await apiClient(path.join(root, 'config'), clusterName)
  await api.post('/v1/vdisks', { name: 'bench', sizeBytes: bytes, rf: 1 })
  const pki = path.join(root, 'data', 'pki')
  const etcd = etcdMetrics([`https://127.0.0.1:${cluster.ports.ec}`], {
    ca: fs.readFileSync(path.join(pki, 'ca.crt')), cert: fs.readFileSync(path.join(pki, 'node.crt')), key: fs.readFileSync(path.join(pki, 'node.key')),
  })

  /**
   * `nbdkit file` or `qemu-nbd` serving `file` on a Unix socket, as ours is reached (NBD on TCP
   * requires TLS in ours; plain TCP for the peers would compare different transports)
   */
  let sockets = 0
  const serve = async (kind, file) => {
    const sock = path.join(root, `${kind}-${++sockets}.sock`)
    const srv = kind === 'nbdkit'
      ? startServer('nbdkit', ['-f', '-U', sock, 'file', file])
      : startServer('qemu-nbd', ['-f', 'raw', '-k', sock, '-t', '--shared=16', '--aio=threads', file])
    await waitSocket(sock)
    return { uri: `nbd+unix:///?socket=${sock}`, stop: srv.stop }
  }
  const nbdkit = await serve('nbdkit', rawFile)
  stops.push(nbdkit.stop)
  const qemu = await serve('qemu-nbd', rawFile)
  stops.push(qemu.stop)
  const targets = { ours: nbdArgs(cluster.uri('bench')), nbdkit: nbdArgs(nbdkit.uri), 'qemu-nbd': nbdArgs(qemu.uri), raw: fileArgs(rawFile) }
  prefill(targets.ours)

  // ---- 1. overwrites (and reads of written data)
  const over = {} // job -> target -> [round]
  for (const job of parts.has('overwrite') ? jobs : []) {
    over[job.name] = Object.fromEntries(targetNames.map((t) => [t, []]))
    for (let r = 0; r < rounds; r++) {
      for (const t of rotate(targetNames, r)) {
        settle(job)
        const v = fioFigure(runFio([...targets[t], ...timedArgs(job)], work), job.key, job.unit).value
        over[job.name][t][r] = v
        console.error(`${job.name.padEnd(18)} round ${r + 1} ${t.padEnd(9)} ${v.toFixed(1)} ${job.unit}`)
      }
    }
  }

  // ---- 2. first writes into fresh targets, then the same range again
  // etcd's background: the CVM's heartbeat (a put every 3 s) and lease keep-alives
  const idleS = 3
  const b0 = await etcd()
  await sleep(idleS * 1000)
  const background = metricsDelta(b0, await etcd())
  const fresh = {
    ours: async (tag, n) => {
      const name = `fw-${tag}`
      await api.post('/v1/vdisks', { name, sizeBytes: n, rf: 1 })
      return { args: nbdArgs(cluster.uri(name)), cleanup: () => api.delete(`/v1/vdisks/${name}?force=true`) }
    },
    nbdkit: async (tag, n) => {
      const file = sparseFile(path.join(root, `fw-${tag}.img`), n)
      const s = await serve('nbdkit', file)
      return { args: nbdArgs(s.uri), cleanup: async () => { await s.stop(); fs.rmSync(file, { force: true }) } }
    },
    'qemu-nbd': async (tag, n) => {
      const file = sparseFile(path.join(root, `fw-${tag}.img`), n)
      const s = await serve('qemu-nbd', file)
      return { args: nbdArgs(s.uri), cleanup: async () => { await s.stop(); fs.rmSync(file, { force: true }) } }
    },
    raw: async (tag, n) => {
      const file = sparseFile(path.join(root, `fw-${tag}.img`), n)
      return { args: fileArgs(file), cleanup: async () => fs.rmSync(file, { force: true }) }
    },
  }
  // spare extent groups (written ahead; src/cvm/vdisk/spares.ts) on the cluster's disks: printed
  // before each of our first writes, which take them (a burst larger than the reserve continues on
  // sparse files)
  const disksDir = path.join(root, 'data', 'disks')
  const sparesReady = () => {
    let n = 0
    for (const d of fs.existsSync(disksDir) ? fs.readdirSync(disksDir) : []) {
      const dir = path.join(disksDir, d, 'spares')
      if (fs.existsSync(dir)) n += fs.readdirSync(dir).filter((f) => f.endsWith('.eg')).length
    }
    return n
  }
  const sparesSeen = {} // job -> [spares ready before our first write, per round]
  const first = {} // job -> target -> [round]
  const again = {}
  const cost = {} // job -> { first: [{delta, bytes}], over: [...] } (ours)
  for (const job of parts.has('first') ? firstJobs : []) {
    first[job.name] = Object.fromEntries(targetNames.map((t) => [t, []]))
    again[job.name] = Object.fromEntries(targetNames.map((t) => [t, []]))
    cost[job.name] = { first: [], over: [] }
    sparesSeen[job.name] = []
    for (let r = 0; r < rounds; r++) {
      for (const t of rotate(targetNames, r)) {
        const target = await fresh[t](`${job.tag}-${r + 1}`, job.bytes)
        try {
          for (const [pass, res] of [['first', first], ['over', again]]) {
            if (t === 'ours' && pass === 'first') sparesSeen[job.name][r] = (await sparesSettled(() => [sparesReady()])).join('+')
            settle(job)
            const m0 = t === 'ours' ? await etcd() : undefined
            const f = fioFigure(runFio([...target.args, ...onceArgs(job)], work), job.key, job.unit)
            if (m0) cost[job.name][pass].push({ delta: metricsDelta(m0, await settledEtcd(etcd)), bytes: f.bytes })
            if (f.bytes !== job.bytes) throw new Error(`${job.name} on ${t}: fio wrote ${f.bytes} bytes, not the ${job.bytes} of the range`)
            res[job.name][t][r] = f.value
            console.error(`${job.name.padEnd(18)} round ${r + 1} ${t.padEnd(9)} ${pass === 'first' ? 'first write' : 'overwrite  '} ${f.value.toFixed(1)} ${job.unit}`)
          }
        } finally {
          await target.cleanup()
        }
      }
    }
  }

  // ---- 3. control plane: GET /v1/vdisks idle and during a 1M write QD4 job on ours
  const listVdisks = () => api.get('/v1/vdisks', { retryMs: 0 })
  await listVdisks() // warm-up, untimed
  const writeJob = jobs.find((j) => j.name === '1M write QD4')
  const lat = { idle: [], busy: [], idleMedians: [], busyMedians: [], busyMiBs: [] }
  for (let r = 0; r < (parts.has('api') ? rounds : 0); r++) {
    spawnSync('sync')
    const idle = await timeCalls(listVdisks, probes)
    const fio = startFio([...targets.ours, ...timedArgs(writeJob).map((a) => (a.startsWith('--runtime=') ? '--runtime=600' : a))], work)
    let busy
    let stillRunning
    try {
      await sleep(1500) // past fio's 1 s ramp
      if (!fio.running()) throw new Error('the 1M write job ended before the probes')
      busy = await timeCalls(listVdisks, probes)
      stillRunning = fio.running()
    } finally {
      fio.interrupt() // fio ends the job on SIGINT and still prints its results
    }
    const mibs = fioFigure(await fio.done, 'write', 'MiB/s').value
    if (!stillRunning) throw new Error('the 1M write job ended during the probes')
    lat.idle.push(...idle)
    lat.busy.push(...busy)
    lat.idleMedians.push(median(idle))
    lat.busyMedians.push(median(busy))
    lat.busyMiBs.push(mibs)
    console.error(`GET /v1/vdisks round ${r + 1}: idle median ${median(idle).toFixed(1)} ms, during 1M writes (${mibs.toFixed(0)} MiB/s) median ${median(busy).toFixed(1)} ms`)
  }

  // ---- 4. 4k random writes with and without image pulls
  let pull
  const missing = ['docker-registry', 'umoci', 'skopeo'].filter((b) => spawnSync('sh', ['-c', `command -v ${b}`]).status !== 0)
  if (flag('no-pull') || !parts.has('pull')) console.error('image pulls: skipped (--no-pull)')
  else if (missing.length > 0) console.error(`image pulls: skipped (${missing.join(', ')} not installed)`)
  else {
    const reg = await startRegistry(root)
    stops.push(reg.stop)
    const layout = path.join(root, 'oci')
    buildBenchImages(layout, root, layerMiB)
    const ref = `${reg.host}/bench/multi:1`
    sh('skopeo', ['copy', '--insecure-policy', '--dest-tls-verify=false', `oci:${layout}:multi`, `docker://${ref}`])
    await api.post('/v1/registries', { name: 'local', url: `http://${reg.host}`, insecure: true })
    const randJob = jobs.find((j) => j.name === '4k randwrite QD16')
    pull = { without: [], with: [], pulls: [], downloaded: [] }
    for (let r = 0; r < rounds; r++) {
      for (const withPull of rotate([false, true], r)) {
        spawnSync('sync')
        const fio = startFio([...targets.ours, ...timedArgs(randJob)], work)
        let pulls = 0
        let downloaded = 0
        if (withPull) {
          while (fio.running()) {
            const res = await api.post('/v1/images', { ref }, { timeoutMs: 600_000 })
            downloaded += res.nodes.reduce((a, n) => a + n.downloadedBytes, 0)
            await api.delete(`/v1/images?ref=${encodeURIComponent(ref)}`)
            pulls++
          }
        }
        const iops = fioFigure(await fio.done, 'write', 'iops').value
        if (withPull) {
          pull.with[r] = iops
          pull.pulls[r] = pulls
          pull.downloaded[r] = downloaded
        } else pull.without[r] = iops
        console.error(`4k randwrite QD16 round ${r + 1} ${withPull ? `with image pulls (${pulls} pulls, ${mib(downloaded)} MiB)` : 'without pulls'}: ${iops.toFixed(0)} IOPS`)
      }
    }
  }

  // ---- 5. encrypted against plain vDisk (ours), the jobs of part 1
  let enc
  if (parts.has('encrypted')) {
    await api.post('/v1/keys/unlock', { key: crypto.randomBytes(32).toString('base64') })
    await api.post('/v1/vdisks', { name: 'bench-enc', sizeBytes: bytes, rf: 1, encrypted: true })
    const encArgs = nbdArgs(cluster.uri('bench-enc'))
    prefill(encArgs)
    enc = {}
    for (const job of jobs) {
      enc[job.name] = { plain: [], encrypted: [] }
      for (let r = 0; r < rounds; r++) {
        for (const t of rotate(['plain', 'encrypted'], r)) {
          settle(job)
          const v = fioFigure(runFio([...(t === 'plain' ? targets.ours : encArgs), ...timedArgs(job)], work), job.key, job.unit).value
          enc[job.name][t][r] = v
          console.error(`${job.name.padEnd(18)} round ${r + 1} ${t.padEnd(9)} ${v.toFixed(1)} ${job.unit}`)
        }
      }
    }
  }

  const rss = fs.readFileSync(`/proc/${cluster.cvmPid()}/status`, 'utf8').match(/VmHWM:\s+(\d+)/)?.[1]

  // ---- tables
  const md = (t) => median(t)
  const perTarget = (res) => targetNames.map((t) => `${roundsCell(res[t])} | ${fmt(md(res[t]))}`).join(' | ')
  const ratios = (res) => ['nbdkit', 'qemu-nbd', 'raw'].map((t) => ratio(md(res.ours), md(res[t]))).join(' | ')
  const header = `| ours (${rounds} rounds) | ours median | nbdkit (rounds) | nbdkit median | qemu-nbd (rounds) | qemu-nbd median | raw file (rounds) | raw median | ours/nbdkit | ours/qemu-nbd | ours/raw |`
  const rule = (n) => `|${'---|'.repeat(n)}`

  if (parts.has('overwrite')) {
    out.push(`Overwrites and reads of written data (${size}, ${runtime} s per round after a 1 s ramp; medians of ${rounds} rounds, ratios of the medians):`, '')
    out.push(`| job | unit ${header}`, rule(13))
    for (const job of jobs) out.push(`| ${job.name} | ${job.unit} | ${perTarget(over[job.name])} | ${ratios(over[job.name])} |`)
  }
  if (parts.has('first')) {
    out.push(...(out.length > 0 ? [''] : []), `First writes into a fresh target (a new vDisk; a new sparse file for the peers and raw), each range written once (1M: ${mib(bytes)} MiB, 4k: ${mib(randFirstBytes)} MiB):`, '')
    out.push(`| job | unit ${header}`, rule(13))
    for (const job of firstJobs) out.push(`| ${job.name} (first write) | ${job.unit} | ${perTarget(first[job.name])} | ${ratios(first[job.name])} |`)

    out.push('', 'First write / overwrite of the same range right after (ratio of the medians; below 1: first writes are slower):', '')
    out.push('| job | unit | ours first write (rounds) | ours overwrite (rounds) | ours first/over | nbdkit first/over | qemu-nbd first/over | raw first/over |', rule(8))
    for (const job of firstJobs) {
      const fo = (t) => ratio(md(first[job.name][t]), md(again[job.name][t]))
      out.push(`| ${job.name} | ${job.unit} | ${roundsCell(first[job.name].ours)} | ${roundsCell(again[job.name].ours)} | ${fo('ours')} | ${fo('nbdkit')} | ${fo('qemu-nbd')} | ${fo('raw')} |`)
    }
    out.push('', `Spare extent groups (32 MiB each, written ahead) ready on ours before each round's first write (the script waits up to 30 s for the reserve, refilled while the data path is idle, to be full or steady): ${
      firstJobs.map((job) => `${job.name} ${sparesSeen[job.name].join(' / ')}`).join('; ')} (a first write larger than the spares continues on sparse files).`)

    out.push('', `etcd cost of ours per GiB written (embedded etcd's /metrics before and after each pass; medians of ${rounds} rounds). Included in the figures, the idle background (the CVM's heartbeat): ${
      etcdCostColumns.slice(0, 5).map(([label, f]) => `${fmt(f(background, idleS))} ${label.replace(' / GiB', '')}`).join(', ')} per second.`, '')
    out.push(`| job | pass | MiB written | ${etcdCostColumns.map(([label]) => label).join(' | ')} |`, rule(3 + etcdCostColumns.length))
    for (const job of firstJobs) {
      for (const [pass, label] of [['first', 'first write'], ['over', 'overwrite']]) {
        const rs = cost[job.name][pass]
        const cells = etcdCostColumns.map(([, f]) => fmt(md(rs.map((x) => f(x.delta, x.bytes / GiB)))))
        out.push(`| ${job.name} | ${label} | ${mib(rs[0].bytes)} | ${cells.join(' | ')} |`)
      }
    }
  }

  if (parts.has('api')) {
    const ms1 = (v) => v.toFixed(1)
    const si = stats(lat.idle)
    const sb = stats(lat.busy)
    out.push('', `Control plane: \`GET /v1/vdisks\` (a new TLS connection each, as the CLI), ${probes} sequential requests per round, ${rounds} rounds, idle and during a 1M write QD4 job on ours:`, '')
    out.push('| GET /v1/vdisks | requests | median ms | p90 ms | round medians ms | 1M write MiB/s meanwhile (rounds) |', rule(6))
    out.push(`| idle | ${lat.idle.length} | ${si.median.toFixed(1)} | ${si.p90.toFixed(1)} | ${roundsCell(lat.idleMedians, ms1)} | - |`)
    out.push(`| during 1M write QD4 | ${lat.busy.length} | ${sb.median.toFixed(1)} | ${sb.p90.toFixed(1)} | ${roundsCell(lat.busyMedians, ms1)} | ${roundsCell(lat.busyMiBs)} |`)
    out.push(`| during / idle | | ${ratio(sb.median, si.median)} | ${ratio(sb.p90, si.p90)} | | |`)
  }

  if (pull) {
    out.push('', `4k randwrite QD16 on ours (${runtime} s) with image pulls running (5 layers, ${layerMiB} MiB of random data in 4 of them, pulled, deleted and pulled again until the job ends):`, '')
    out.push('| 4k randwrite QD16 | IOPS (rounds) | median | / without |', rule(4))
    out.push(`| without pulls | ${roundsCell(pull.without)} | ${fmt(md(pull.without))} | 1.00 |`)
    out.push(`| with image pulls (pulls started during the job: ${pull.pulls.join(' / ')}; MiB downloaded: ${pull.downloaded.map(mib).join(' / ')}) | ${roundsCell(pull.with)} | ${fmt(md(pull.with))} | ${ratio(md(pull.with), md(pull.without))} |`)
  }

  if (enc) {
    out.push('', `Encrypted vDisk (AES-256-XTS per 4 KiB block) against the plain one, both ours, ${size}, ${runtime} s per round; medians of ${rounds} rounds:`, '')
    out.push('| job | unit | plain (rounds) | plain median | encrypted (rounds) | encrypted median | encrypted / plain |', rule(7))
    for (const job of jobs) {
      const e = enc[job.name]
      out.push(`| ${job.name} | ${job.unit} | ${roundsCell(e.plain)} | ${fmt(md(e.plain))} | ${roundsCell(e.encrypted)} | ${fmt(md(e.encrypted))} | ${ratio(md(e.encrypted), md(e.plain))} |`)
    }
  }

  out.push('', `CVM peak RSS during the run: ${rss ? (Number(rss) / 1024).toFixed(0) + ' MiB' : 'n/a'}`)
  console.log(out.join('\n'))
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
