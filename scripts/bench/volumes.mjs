#!/usr/bin/env node
// Volume benchmark (issue 6: fio inside a container on a volume). fio runs INSIDE A CONTAINER and
// writes to /data, which is, for each target:
//   ours    a volume (RF 1) attached by the product (nbdfuse reaches the CVM on its NBD Unix socket): POST /v1/volumes, then POST /v1/containers with
//           volumes [{name, target: '/data'}] in a CSM of the embedded cluster. The chain the CSM
//           makes: CVM NBD export -> nbdfuse (the export as a file) -> loop device, direct I/O ->
//           ext4 (made on the first attach) -> bind mount into the container (runc)
//   nbdkit  the same chain made by hand here, with `nbdkit file FILE` (a raw file of the volume's
//           size on the same disk, on a Unix socket like our CVM's for the CSM) in place of our
//           CVM: nbdfuse -> losetup --direct-io=on -> mkfs.ext4
//           (the CSM's options) -> mount -> bind mount into a bare `runc run` of an OCI bundle
//   plain   a plain directory on the node (same filesystem as the cluster's data dir), bind-mounted
//           the same way into a bare `runc run`
// The container runtime is not on the I/O path: it only sets up the bind mount. ours goes through
// the product's API, the peers through `runc run` (config.json from `runc spec`, one bind mount).
// The image: /usr/bin/fio of the host with every library `ldd` lists (same paths, the loader too)
// and busybox-static, built with umoci, pushed with skopeo to Debian's docker-registry on 127.0.0.1;
// the node pulls it (POST /v1/images), the bare runs use `umoci unpack` of the same image.
// Jobs, each its own container run, on one file of --size written once before them (untimed):
// 4k random write and read at QD16, 1M sequential write and read at QD4, libaio with direct=1
// (psync with 4 jobs if libaio fails in a container), --runtime s after a 1 s ramp, time_based,
// end_fsync=1 for writes. The page cache is dropped before every read job. Every job runs
// --rounds times; within a round the targets take turns, the order rotating by one each round.
// Prints every round's IOPS (4k) or MiB/s (1M), the medians and the ratios of ours' median to
// each peer's, as a Markdown table, and what it saw of the machine's load.
// Usage: node scripts/bench/volumes.mjs [--size 512M] [--volume-size 1G] [--runtime 10] [--rounds 3]
//        [--dir DIR] [--max-load 1] [--max-wait 240]   (root)
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {
  checkArgs, dropCaches, fmt, median, roundsCell, rotate, fioJson, freePort, localCluster, opt, ratio, runcBundle, sh, sleep, startRegistry, startServer, waitPort,
} from './common.mjs'

checkArgs('usage: node scripts/bench/volumes.mjs [--size 512M] [--volume-size 1G] [--runtime 10] [--rounds 3] [--dir DIR] [--max-load 1] [--max-wait 240]', ['size', 'volume-size', 'runtime', 'rounds', 'dir', 'max-load', 'max-wait'], [])

const size = opt('size', '512M')
const volumeSize = opt('volume-size', '1G')
const runtime = Number(opt('runtime', '10'))
const rounds = Number(opt('rounds', '3'))
if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds ${opt('rounds', '3')}: a whole number of at least 1`)
const base = opt('dir', '/var/tmp')
const maxLoad = Number(opt('max-load', '1'))
const maxWaitS = Number(opt('max-wait', '240'))
const clusterName = 'benchv'
const csm = 'bench'
const volume = 'bench'
const bytes = (s) => Number(sh('numfmt', ['--from=iec', s]).stdout.trim())

const jobs = [
  { name: '4k randwrite QD16', rw: 'randwrite', bs: '4k', iodepth: 16, key: 'write', unit: 'IOPS' },
  { name: '4k randread QD16', rw: 'randread', bs: '4k', iodepth: 16, key: 'read', unit: 'IOPS' },
  { name: '1M write QD4', rw: 'write', bs: '1M', iodepth: 4, key: 'write', unit: 'MiB/s' },
  { name: '1M read QD4', rw: 'read', bs: '1M', iodepth: 4, key: 'read', unit: 'MiB/s' },
]

const mounted = (dir) => spawnSync('mountpoint', ['-q', dir]).status === 0
const lexists = (p) => {
  try {
    fs.lstatSync(p)
    return true
  } catch {
    return false
  }
}

/** Copy host file `p` into `rootfs` at the same path, recreating the symlinks met on the way (bin -> usr/bin, lib64, libfoo.so.1 -> ...). */
function placeHostFile(rootfs, p) {
  const parts = p.split('/').filter(Boolean)
  let cur = '/'
  for (let i = 0; i < parts.length; i++) {
    const hp = path.join(cur, parts[i])
    const rp = path.join(rootfs, hp)
    const st = fs.lstatSync(hp)
    if (st.isSymbolicLink()) {
      const t = fs.readlinkSync(hp)
      if (!lexists(rp)) fs.symlinkSync(t, rp)
      return placeHostFile(rootfs, path.join(path.resolve(cur, t), ...parts.slice(i + 1)))
    }
    if (i === parts.length - 1) {
      if (!lexists(rp)) {
        fs.copyFileSync(hp, rp)
        fs.chmodSync(rp, st.mode & 0o7777)
      }
    } else if (!lexists(rp)) {
      fs.mkdirSync(rp, { mode: 0o755 })
    }
    cur = hp
  }
}

/** One-layer image `layout:fio`: /usr/bin/fio, the libraries ldd lists, busybox-static with sh. */
function buildFioImage(root, layout) {
  const bundle = path.join(root, 'build-fio')
  sh('umoci', ['init', '--layout', layout])
  sh('umoci', ['new', '--image', `${layout}:base`])
  sh('umoci', ['unpack', '--image', `${layout}:base`, bundle])
  const rootfs = path.join(bundle, 'rootfs')
  const libs = sh('ldd', ['/usr/bin/fio']).stdout.split('\n').map((l) => l.match(/(\/\S+) \(0x/)?.[1]).filter(Boolean)
  const busybox = fs.existsSync('/bin/busybox') ? '/bin/busybox' : '/usr/bin/busybox'
  for (const p of ['/usr/bin/fio', busybox, ...libs]) placeHostFile(rootfs, p)
  fs.symlinkSync('busybox', path.join(rootfs, fs.realpathSync(path.dirname(busybox)), 'sh'))
  for (const d of ['etc', 'tmp', 'data']) fs.mkdirSync(path.join(rootfs, d), { recursive: true })
  sh('umoci', ['repack', '--image', `${layout}:fio`, bundle])
  sh('umoci', ['config', '--image', `${layout}:fio`, '--config.cmd', '/usr/bin/fio'])
  fs.rmSync(bundle, { recursive: true, force: true })
  return libs.length
}

/** fio's arguments for a job on /data/fio.dat (prefill: one sequential pass over the whole file). */
function fioArgs(job, engine) {
  const io = engine === 'libaio' ? ['--ioengine=libaio', '--direct=1'] : ['--ioengine=psync', '--direct=1', '--numjobs=4']
  const common = ['--filename=/data/fio.dat', `--size=${size}`, '--output-format=json', '--group_reporting=1', ...io]
  if (job === 'prefill') return ['--name=prefill', '--rw=write', '--bs=1M', '--iodepth=8', '--end_fsync=1', ...common]
  return [`--name=${job.rw}`, `--rw=${job.rw}`, `--bs=${job.bs}`, `--iodepth=${job.iodepth}`, `--runtime=${runtime}`, '--time_based=1',
    '--ramp_time=1', '--randrepeat=0', '--norandommap=1', ...(job.key === 'write' ? ['--end_fsync=1'] : []), ...common]
}

function figure(job, out) {
  const j = fioJson(out).jobs[0][job.key]
  return job.unit === 'IOPS' ? j.iops : j.bw_bytes / 1048576
}

/** Loop devices (name, back file, direct I/O) whose back file is under `dir`. */
function loopsUnder(dir) {
  const r = sh('losetup', ['-l', '-J', '-O', 'NAME,BACK-FILE,DIO'], { allowFail: true })
  if (r.status !== 0 || r.stdout.trim() === '') return []
  return JSON.parse(r.stdout).loopdevices.filter((l) => (l['back-file'] ?? '').startsWith(dir))
}

/** Tessera CVMs of other clusters (test runs, other benchmarks) running now: a sign of contention. */
function otherCvms(root) {
  let n = 0
  for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    let cmd
    try {
      cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
    } catch {
      continue
    }
    if (cmd.some((a) => a.endsWith('/cvm/main.js')) && !cmd.some((a) => a.startsWith(root))) n++
  }
  return n
}

async function waitForQuiet() {
  const t0 = Date.now()
  let load = os.loadavg()[0]
  while (load >= maxLoad && Date.now() - t0 < maxWaitS * 1000) {
    console.error(`load average ${load.toFixed(2)} >= ${maxLoad}: waiting (${Math.round((Date.now() - t0) / 1000)} s of ${maxWaitS})`)
    await sleep(10_000)
    load = os.loadavg()[0]
  }
  return { load, waitedS: Math.round((Date.now() - t0) / 1000) }
}

const root = fs.mkdtempSync(path.join(base, 'tess-bench-vol-'))
const configDir = path.join(root, 'config')
const stops = []
try {
  const quiet = await waitForQuiet()
  const othersAtStart = otherCvms(root)
  const t0 = Date.now()
  console.error(`bench dir ${root} (file ${size} on a ${volumeSize} volume, ${runtime}s per job) on ${os.cpus().length} cores, load ${quiet.load.toFixed(2)} after waiting ${quiet.waitedS} s`)

  // ---- registry and the fio image
  const reg = await startRegistry(root)
  stops.push(reg.stop)
  const layout = path.join(root, 'oci')
  const nLibs = buildFioImage(root, layout)
  const ref = `${reg.host}/bench/fio:1`
  sh('skopeo', ['copy', '--insecure-policy', '--dest-tls-verify=false', `oci:${layout}:fio`, `docker://${ref}`])
  console.error(`image pushed: ${ref} (fio + ${nLibs} libraries + busybox)`)

  // ---- peers: bare runc, one bundle, config.json rewritten for each run
  const runcRoot = path.join(root, 'runc-state')
  fs.mkdirSync(runcRoot)
  stops.push(async () => {
    for (const c of JSON.parse(sh('runc', ['--root', runcRoot, 'list', '-f', 'json'], { allowFail: true }).stdout || 'null') ?? []) {
      sh('runc', ['--root', runcRoot, 'delete', '--force', c.id], { allowFail: true })
    }
  })
  const bundle = runcBundle(layout, 'fio', path.join(root, 'runc-bundle'), ['/usr/bin/fio', '--version'])
  let runcRuns = 0
  const runcFio = (dataDir, args) => {
    const spec = JSON.parse(fs.readFileSync(path.join(bundle, 'config.json'), 'utf8'))
    spec.process.args = ['/usr/bin/fio', ...args]
    spec.mounts = spec.mounts.filter((m) => m.destination !== '/data')
    spec.mounts.push({ destination: '/data', type: 'bind', source: dataDir, options: ['rbind', 'rw'] })
    fs.writeFileSync(path.join(bundle, 'config.json'), JSON.stringify(spec, null, 2))
    const r = spawnSync('runc', ['--root', runcRoot, 'run', '-b', bundle, `fio-${runcRuns++}`], { encoding: 'utf8', maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'pipe'] })
    if (r.status !== 0) throw new Error(`runc run of fio ${args.join(' ')} failed (${r.status}): ${r.stderr}${r.stdout}`)
    return r.stdout
  }

  // ---- (b) the chain over nbdkit file
  const img = path.join(root, 'nbdkit.img')
  fs.writeFileSync(img, '')
  fs.truncateSync(img, bytes(volumeSize))
  // a Unix socket, as the CSM uses to reach its node's CVM
  const nbdkitSock = path.join(root, 'nbdkit.sock')
  const nbdkit = startServer('nbdkit', ['-f', '-U', nbdkitSock, '--pidfile', path.join(root, 'nbdkit.pid'), 'file', img])
  stops.push(nbdkit.stop)
  for (const deadline = Date.now() + 15_000; !fs.existsSync(nbdkitSock);) {
    if (Date.now() > deadline) throw new Error(`nbdkit did not listen on ${nbdkitSock}: ${nbdkit.stderr()}`)
    await sleep(50)
  }
  const nbdkitUri = `nbd+unix:///?socket=${nbdkitSock}`
  const fuseDir = path.join(root, 'nbdkit-fuse')
  const fuseFile = path.join(fuseDir, 'disk')
  const mnt = path.join(root, 'nbdkit-mnt')
  fs.mkdirSync(fuseDir)
  fs.mkdirSync(mnt)
  const nbdfusePid = path.join(root, 'nbdfuse.pid')
  const nbdfuse = startServer('nbdfuse', ['-P', nbdfusePid, fuseFile, nbdkitUri])
  stops.push(async () => {
    if (mounted(fuseDir)) sh('umount', [fuseDir], { allowFail: true })
    await nbdfuse.stop()
  })
  for (const deadline = Date.now() + 15_000; !(mounted(fuseDir) && fs.existsSync(nbdfusePid));) {
    if (Date.now() > deadline) throw new Error(`nbdfuse did not mount ${fuseDir}: ${nbdfuse.stderr()}`)
    await sleep(50)
  }
  const loop = sh('losetup', ['--find', '--show', '--direct-io=on', fuseFile]).stdout.trim()
  stops.push(async () => {
    if (loopsUnder(root).some((l) => l.name === loop)) sh('losetup', ['-d', loop])
  })
  sh('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', '-L', volume, loop]) // the CSM's options
  sh('mount', ['-t', 'ext4', '-o', 'rw,errors=remount-ro', loop, mnt])
  stops.push(async () => {
    if (mounted(mnt)) sh('umount', [mnt])
  })

  // ---- (c) a plain directory on the same filesystem as the cluster's data dir
  const plain = path.join(root, 'plain')
  fs.mkdirSync(plain)

  // libaio inside a container, on ext4 over a loop device? else psync with 4 jobs
  let engine = 'libaio'
  try {
    runcFio(mnt, ['--name=probe', '--filename=/data/probe', '--size=4M', '--bs=4k', '--rw=randwrite', '--ioengine=libaio', '--direct=1', '--iodepth=16', '--output-format=json'])
  } catch (e) {
    console.error(`libaio probe: ${e.message}`)
    engine = 'psync'
  }
  fs.rmSync(path.join(mnt, 'probe'), { force: true })
  console.error(`ioengine ${engine}`)

  // ---- (a) ours: cluster, CSM, image on the node, volume
  process.env.TESS_CONFIG_DIR = configDir // the contexts file lives there: set it before the import
  const cluster = await localCluster(root, clusterName)
  stops.push(async () => cluster.tess(['cluster', 'destroy', '--yes', '--cluster', clusterName]))
  const { ApiClient } = await import('../../dist/lib/apiclient.js')
  const { resolveContext } = await import('../../dist/lib/contexts.js')
  const client = new ApiClient(resolveContext(clusterName))
  const api = (method, p, body) => client.request(method, p, body, { timeoutMs: 600_000 })
  await api('POST', '/v1/registries', { name: 'local', url: `http://${reg.host}`, insecure: true })
  await api('POST', '/v1/csms', { name: csm, cpus: os.cpus().length, memoryBytes: 2 ** 30 })
  await api('POST', '/v1/images', { ref })
  await api('POST', '/v1/volumes', { name: volume, sizeBytes: bytes(volumeSize), rf: 1 })
  let current // the container of ours that may still exist
  stops.push(async () => {
    if (current !== undefined) await api('DELETE', `/v1/containers/${current}?force=true`)
  })
  let ourRuns = 0
  let ourLoops = []
  const ourFio = async (args) => {
    const name = `fio-${ourRuns++}`
    current = name
    let c = await api('POST', '/v1/containers', { name, image: ref, csm, command: ['/usr/bin/fio', ...args], volumes: [{ name: volume, target: '/data', readOnly: false }] })
    const deadline = Date.now() + (runtime + 120) * 1000
    while (c.status !== 'exited') {
      if (ourLoops.length === 0) ourLoops = loopsUnder(path.join(root, 'data'))
      await sleep(200)
      c = await api('GET', `/v1/containers/${name}`)
      if (Date.now() > deadline) throw new Error(`container ${name} still ${c.status}`)
    }
    const out = []
    for (let offset = 0; ;) {
      const r = await api('GET', `/v1/containers/${name}/logs?offset=${offset}`)
      const b = Buffer.from(r.data, 'base64')
      out.push(b)
      offset = r.offset
      if (b.length === 0) {
        if (!r.running) break
        await sleep(100)
      }
    }
    await api('DELETE', `/v1/containers/${name}?force=true`)
    current = undefined
    const text = Buffer.concat(out).toString('utf8')
    if (c.exitCode !== 0) throw new Error(`container ${name} (fio ${args.join(' ')}) exited with ${c.exitCode}: ${text.slice(-2000)}`)
    return text
  }

  const targets = {
    ours: (args) => ourFio(args),
    nbdkit: async (args) => runcFio(mnt, args),
    plain: async (args) => runcFio(plain, args),
  }
  const multiConn = (uri) => {
    const r = sh('nbdinfo', ['--json', uri], { allowFail: true })
    return r.status === 0 ? JSON.parse(r.stdout).exports[0].can_multi_conn : 'n/a'
  }
  const mc = { ours: multiConn(cluster.uri(`vol-${volume}`)), nbdkit: multiConn(nbdkitUri) }
  const setupS = (Date.now() - t0) / 1000
  const tp = Date.now()
  for (const [name, run] of Object.entries(targets)) {
    await run(fioArgs('prefill', engine))
    console.error(`prefill ${name} done`)
  }
  const prefillS = (Date.now() - tp) / 1000

  const results = {}
  const loads = []
  const others = []
  for (const job of jobs) {
    results[job.name] = Object.fromEntries(Object.keys(targets).map((name) => [name, []]))
    for (let r = 0; r < rounds; r++) {
      for (const name of rotate(Object.keys(targets), r)) {
        if (job.key === 'read') dropCaches()
        loads.push(os.loadavg()[0])
        others.push(otherCvms(root))
        const v = figure(job, await targets[name](fioArgs(job, engine)))
        results[job.name][name].push(v)
        console.error(`${job.name.padEnd(18)} round ${r + 1} ${name.padEnd(7)} ${v.toFixed(1)} ${job.unit}`)
      }
    }
  }

  const lines = []
  lines.push(`| job (fio in a container, ${size} file) | unit | ours (volume, ${rounds} rounds) | ours median | nbdkit chain (rounds) | nbdkit median | plain dir (rounds) | plain median | ours/nbdkit | ours/plain |`)
  lines.push('|---|---|---|---|---|---|---|---|---|---|')
  for (const job of jobs) {
    const r = results[job.name]
    const m = Object.fromEntries(Object.entries(r).map(([name, xs]) => [name, median(xs)]))
    lines.push(`| ${job.name} | ${job.unit} | ${roundsCell(r.ours)} | ${fmt(m.ours)} | ${roundsCell(r.nbdkit)} | ${fmt(m.nbdkit)} | ${roundsCell(r.plain)} | ${fmt(m.plain)} | ${ratio(m.ours, m.nbdkit)} | ${ratio(m.ours, m.plain)} |`)
  }
  lines.push('')
  lines.push(`ioengine ${engine}${engine === 'libaio' ? ', direct=1' : ', direct=1, 4 jobs'}; loop devices, direct I/O: ours ${ourLoops.map((l) => `${l.name} dio=${l.dio}`).join(', ') || 'not seen'}, `
    + `nbdkit chain ${loopsUnder(root).filter((l) => l.name === loop).map((l) => `${l.name} dio=${l.dio}`).join(', ')}; `
    + `NBD multi-conn offered (nbdfuse opens several connections if so): ours ${mc.ours}, nbdkit ${mc.nbdkit}`)
  lines.push(`load average (1 min): ${quiet.load.toFixed(2)} at the start (after waiting ${quiet.waitedS} s), ${Math.min(...loads).toFixed(2)}-${Math.max(...loads).toFixed(2)} before the jobs (fio's own load included); `
    + `CVMs of other clusters running: ${othersAtStart} at the start, at most ${Math.max(...others)} before the jobs (${others.filter((n) => n > 0).length} of ${others.length} jobs)`)
  lines.push(`time: setup ${setupS.toFixed(0)} s, prefill ${prefillS.toFixed(0)} s, total ${((Date.now() - t0) / 1000).toFixed(0)} s`)
  console.log(lines.join('\n'))
} finally {
  for (const s of stops.reverse()) {
    try {
      await s()
    } catch (e) {
      console.error(`cleanup: ${e.message}`)
    }
  }
  const left = fs.readFileSync('/proc/mounts', 'utf8').split('\n').filter((l) => l.includes(root))
  if (left.length > 0) console.error(`cleanup: still mounted: ${left.join(' | ')}`)
  else fs.rmSync(root, { recursive: true, force: true })
}
