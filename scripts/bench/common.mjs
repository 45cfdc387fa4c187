// Shared helpers of the benchmark scripts: free ports, running programs, fio (always with its cwd in a
// temp dir), rounds and their formatting, etcd metrics, API latency, a local cluster, a local
// registry, bench images, OCI bundles for a bare `runc run`.
import { spawn, spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import https from 'node:https'
import net from 'node:net'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
export const tess = path.join(repoRoot, 'bin', 'run.js')

/**
 * Check the command line before a benchmark starts (a misspelt option must not run a long
 * benchmark with the defaults): every argument is one of `valued` (`--name VALUE`) or `flags`
 * (`--name`). `--help` or `-h` prints `usage` and exits 0; anything else unknown, or an option
 * without its value, prints the error and `usage` to stderr and exits 2.
 */
export function checkArgs(usage, valued, flags = []) {
  const argv = process.argv.slice(2)
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(usage)
    process.exit(0)
  }
  const fail = (why) => {
    console.error(`${why}\n${usage}`)
    process.exit(2)
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const name = a.startsWith('--') ? a.slice(2) : undefined
    if (name !== undefined && flags.includes(name)) continue
    if (name === undefined || !valued.includes(name)) fail(`unknown argument "${a}"`)
    if (i + 1 >= argv.length || argv[i + 1].startsWith('--')) fail(`--${name} needs a value`)
    i++
  }
}

/**
 * Wait for the spare extent groups (src/cvm/vdisk/spares.ts: written ahead while the node's data
 * path is idle) to be refilled before a first write: `read()` gives the counts, per disk; returns
 * them once each is at `full`, or once they have not changed for 5 s (a disk whose reserve is
 * smaller), or after 30 s.
 */
export async function sparesSettled(read, full = 32) {
  const t0 = Date.now()
  let last = read()
  let since = Date.now()
  while (!last.every((n) => n >= full) && Date.now() - since < 5000 && Date.now() - t0 < 30000) {
    await sleep(500)
    const now = read()
    if (now.join() !== last.join()) since = Date.now()
    last = now
  }
  return last
}

/** `--parts a,b` from the command line, as a set of the names given (default: every one); an unknown name throws. */
export function partsArg(names) {
  const parts = new Set(opt('parts', names.join(',')).split(',').map((p) => p.trim()).filter((p) => p !== ''))
  for (const p of parts) if (!names.includes(p)) throw new Error(`--parts: unknown part "${p}" (parts: ${names.join(', ')})`)
  return parts
}

/** `--name VALUE` from the command line, or `def`. */
export function opt(name, def) {
  const argv = process.argv.slice(2)
  const i = argv.indexOf(`--${name}`)
  return i >= 0 ? argv[i + 1] : def
}

/** Is `--name` on the command line (a flag without a value)? */
export function flag(name) {
  return process.argv.slice(2).includes(`--${name}`)
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

export function sh(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, ...opts })
  if (r.status !== 0 && !opts.allowFail) {
    throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}${r.stdout}`)
  }
  return r
}

export function fioJson(out) {
  return JSON.parse(out.slice(out.indexOf('{')))
}

export function dropCaches() {
  spawnSync('sync')
  try {
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3')
    return true
  } catch {
    return false
  }
}

/** Start a background server; returns {pid, stop()} (stops by pid). */
export function startServer(cmd, args) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] })
  let err = ''
  child.stderr.on('data', (d) => { err += d })
  return {
    pid: child.pid,
    stderr: () => err,
    stop: () => new Promise((resolve) => {
      if (child.exitCode !== null) return resolve()
      child.once('exit', () => resolve())
      child.kill('SIGTERM')
      setTimeout(() => child.kill('SIGKILL'), 5000).unref()
    }),
  }
}

/** wait until a Unix socket accepts connections */
export async function waitSocket(file, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    const ok = await new Promise((resolve) => {
      const s = net.connect({ path: file }, () => { s.destroy(); resolve(true) })
      s.on('error', () => resolve(false))
    })
    if (ok) return
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`socket ${file} did not open`)
}

export async function waitPort(port, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true) })
      s.on('error', () => resolve(false))
    })
    if (ok) return
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`port ${port} did not open`)
}

/** An embedded Tessera cluster in `root`, on free ports; `tess(args)` runs the CLI against it. */
export async function localCluster(root, name = 'bench') {
  const env = { ...process.env, TESS_CONFIG_DIR: path.join(root, 'config'), NO_COLOR: '1' }
  const ports = { api: await freePort(), nbd: await freePort(), ec: await freePort(), ep: await freePort(), data: await freePort() }
  const run = (args) => {
    const r = spawnSync(process.execPath, [tess, ...args, '--json'], { encoding: 'utf8', env })
    if (r.status !== 0) throw new Error(`tess ${args.join(' ')}: ${r.stdout}${r.stderr}`)
    return JSON.parse(r.stdout)
  }
  run(['cluster', 'create', '--local', '--name', name, '--data-dir', path.join(root, 'data'), '--api-port', String(ports.api),
    '--nbd-port', String(ports.nbd), '--etcd-client-port', String(ports.ec), '--etcd-peer-port', String(ports.ep), '--data-port', String(ports.data)])
  return {
    ports,
    tess: run,
    // the node's NBD Unix socket: on TCP, NBD requires TLS (the peers are served on Unix sockets too)
    socket: path.join(root, 'data', 'run', 'nbd.sock'),
    uri: (v) => `nbd+unix:///${v}?socket=${path.join(root, 'data', 'run', 'nbd.sock')}`,
    cvmPid: () => Number(fs.readFileSync(path.join(root, 'data', 'run', 'cvm.pid'), 'utf8')),
    destroy: () => run(['cluster', 'destroy', '--yes']),
  }
}

export function ratio(a, b) {
  if (!b || Number.isNaN(a)) return 'n/a'
  return (a / b).toFixed(2)
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** median, p90, min and max of a list of numbers */
export function stats(xs) {
  const s = [...xs].sort((a, b) => a - b)
  const median = s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
  const p90 = s[Math.max(0, Math.ceil(0.9 * s.length) - 1)]
  return { median, p90, min: s[0], max: s[s.length - 1] }
}

/** Start Debian's docker-registry with a config file under `root`, on 127.0.0.1 and a free port. */
export async function startRegistry(root) {
  const dir = path.join(root, 'registry')
  const storage = path.join(dir, 'storage')
  fs.mkdirSync(storage, { recursive: true })
  const port = await freePort()
  const config = path.join(dir, 'config.yml')
  fs.writeFileSync(config, [
    'version: 0.1',
    'log:',
    '  level: warn',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${storage}`,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: 127.0.0.1:${port}`,
    `  secret: ${crypto.randomBytes(16).toString('hex')}`,
    '',
  ].join('\n'))
  const srv = startServer('docker-registry', ['serve', config])
  const deadline = Date.now() + 20_000
  for (;;) {
    const ok = await fetch(`http://127.0.0.1:${port}/v2/`).then((r) => r.status === 200, () => false)
    if (ok) break
    if (Date.now() > deadline) {
      await srv.stop()
      throw new Error(`docker-registry did not come up on 127.0.0.1:${port}: ${srv.stderr().slice(-2000)}`)
    }
    await sleep(100)
  }
  return { ...srv, host: `127.0.0.1:${port}`, port }
}

/**
 * Build in one OCI layout, with umoci (scratch directories under `workDir`): `busybox` (one layer:
 * busybox-static and its applet symlinks) and `multi` (that layer plus 4 layers of `layerMiB` MiB
 * of random data each).
 */
export function buildBenchImages(layout, workDir, layerMiB) {
  const bundle = (n) => path.join(workDir, `build-${n}`)
  const busybox = fs.existsSync('/bin/busybox') ? '/bin/busybox' : '/usr/bin/busybox'
  sh('umoci', ['init', '--layout', layout])
  sh('umoci', ['new', '--image', `${layout}:base`])
  sh('umoci', ['unpack', '--image', `${layout}:base`, bundle(0)])
  const r0 = path.join(bundle(0), 'rootfs')
  for (const d of ['bin', 'etc', 'tmp']) fs.mkdirSync(path.join(r0, d), { recursive: true })
  fs.copyFileSync(busybox, path.join(r0, 'bin/busybox'))
  fs.chmodSync(path.join(r0, 'bin/busybox'), 0o755)
  for (const c of ['sh', 'true', 'false', 'ls', 'cat', 'echo', 'sleep', 'test']) fs.symlinkSync('busybox', path.join(r0, 'bin', c))
  sh('umoci', ['repack', '--image', `${layout}:busybox`, bundle(0)])
  sh('umoci', ['config', '--image', `${layout}:busybox`, '--config.cmd', '/bin/sh'])
  let from = 'busybox'
  for (let i = 1; i <= 4; i++) {
    sh('umoci', ['unpack', '--image', `${layout}:${from}`, bundle(i)])
    const data = path.join(bundle(i), 'rootfs', 'data')
    fs.mkdirSync(data, { recursive: true })
    fs.writeFileSync(path.join(data, `random-${i}`), crypto.randomBytes(layerMiB * 1048576))
    const tag = i === 4 ? 'multi' : `multi-l${i + 1}`
    sh('umoci', ['repack', '--image', `${layout}:${tag}`, bundle(i)])
    from = tag
  }
  for (let i = 0; i <= 4; i++) fs.rmSync(bundle(i), { recursive: true, force: true })
}

/**
 * An OCI bundle for a bare `runc run`: the rootfs of image `layout:tag` (`umoci unpack`, as the
 * node unpacks it) and a config.json from `runc spec` with `args`, no terminal, then `edit(spec)`.
 */
export function runcBundle(layout, tag, bundleDir, args, edit = () => {}) {
  sh('umoci', ['unpack', '--image', `${layout}:${tag}`, bundleDir])
  for (const f of fs.readdirSync(bundleDir)) if (f !== 'rootfs') fs.rmSync(path.join(bundleDir, f), { recursive: true })
  sh('runc', ['spec', '--bundle', bundleDir])
  const spec = JSON.parse(fs.readFileSync(path.join(bundleDir, 'config.json'), 'utf8'))
  spec.process.args = args
  spec.process.terminal = false
  edit(spec)
  fs.writeFileSync(path.join(bundleDir, 'config.json'), JSON.stringify(spec, null, 2))
  return bundleDir
}

// ---- fio: never in the repo's directory

/**
 * Arguments every fio run gets: no verify state files (fio writes `local-*-verify.state` into its
 * working directory when a write job ends early), JSON output.
 */
const fioBaseArgs = ['--verify_state_save=0', '--output-format=json']

/** Run fio synchronously with its working directory in `cwd` (a temp dir, never the repo); returns the parsed JSON. */
export function runFio(args, cwd) {
  // a leading array: the command that runs fio (e.g. testhosts.sh exec HOST, to reach a host's NBD Unix socket)
  const [via, rest] = Array.isArray(args[0]) ? [args[0], args.slice(1)] : [[], args]
  const cmd = [...via, 'fio', ...fioBaseArgs, ...rest]
  return fioJson(sh(cmd[0], cmd.slice(1), { cwd }).stdout)
}

/**
 * Start fio in the background (cwd a temp dir). `done` resolves to the parsed JSON; `interrupt()`
 * sends SIGINT, on which fio ends the job and still prints its results.
 */
export function startFio(args, cwd) {
  const child = spawn('fio', [...fioBaseArgs, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  let interrupted = false
  child.stdout.on('data', (d) => { out += d })
  child.stderr.on('data', (d) => { err += d })
  const done = new Promise((resolve, reject) => {
    child.once('error', reject)
    child.once('exit', (code) => {
      if (code !== 0 && !interrupted) return reject(new Error(`fio ${args.join(' ')} failed (${code}): ${err}`))
      try {
        resolve(fioJson(out))
      } catch (e) {
        reject(new Error(`fio ${args.join(' ')}: no JSON (${code}): ${err}${out.slice(0, 500)}`))
      }
    })
  })
  done.catch(() => {}) // a caller that stops waiting after an error of its own must not crash the process
  return {
    done,
    running: () => child.exitCode === null && child.signalCode === null,
    interrupt: () => {
      interrupted = true
      if (child.exitCode === null) child.kill('SIGINT')
    },
  }
}

/** The figure of one fio job: IOPS, or MiB/s when `unit` is 'MiB/s'; `bytes` is what it moved. */
export function fioFigure(json, key, unit) {
  const j = json.jobs[0][key]
  return { value: unit === 'iops' ? j.iops : j.bw_bytes / 1048576, bytes: j.io_bytes }
}

/** Bytes from a size like 256M or 1G (IEC, as fio and `tess vdisk create` read it). */
export function sizeBytes(s) {
  return Number(sh('numfmt', ['--from=iec', s]).stdout.trim())
}

/** A new sparse file of `bytes` (nothing written: every write to it is a first write). */
export function sparseFile(file, bytes) {
  fs.rmSync(file, { force: true })
  fs.writeFileSync(file, '')
  fs.truncateSync(file, bytes)
  return file
}

// ---- rounds

export const median = (xs) => stats(xs).median

/** `xs` rotated left by `r`: round r starts with a different target, so none always goes first. */
export function rotate(xs, r) {
  const k = r % xs.length
  return [...xs.slice(k), ...xs.slice(0, k)]
}

/** A figure for a table: integers for IOPS and MiB/s, more digits for small numbers. */
export function fmt(v) {
  if (v === undefined || Number.isNaN(v)) return 'n/a'
  const a = Math.abs(v)
  return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(2)
}

/** Every round's figure, "a / b / c" (`f` formats one). */
export const roundsCell = (xs, f = fmt) => xs.map(f).join(' / ')

// ---- etcd metrics (Prometheus text from each member's client URL, mutual TLS)

/** Sum of every sample of metric `name` whose labels include all of `labels`. */
function metricSum(text, name, labels = {}) {
  let sum = 0
  for (const line of text.split('\n')) {
    if (!line.startsWith(name) || line.startsWith('#')) continue
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/)
    if (!m || m[1] !== name) continue
    const ls = m[2] ?? ''
    if (Object.entries(labels).every(([k, v]) => ls.includes(`${k}="${v}"`))) sum += Number(m[3])
  }
  return sum
}

/**
 * Reads the counters of every etcd member that tell what the cluster's writes cost. `endpoints`
 * are client URLs (https://HOST:PORT); `tls` is {ca, cert, key} (PEM) of a certificate the
 * cluster CA signed (etcd runs with --client-cert-auth, /metrics included).
 * A snapshot: gRPC calls handled summed over members (each call reaches one member); WAL fsyncs
 * summed over members (every member writes its log); the state machine (mvcc puts, raft proposals
 * committed, keys, db size) from the member with the largest figures (all apply the same log).
 */
export function etcdMetrics(endpoints, tls) {
  const fetchText = (url) => new Promise((resolve, reject) => {
    const req = https.get(`${url}/metrics`, { ...tls, timeout: 5000 }, (res) => {
      let b = ''
      res.setEncoding('utf8')
      res.on('data', (d) => { b += d })
      res.on('end', () => (res.statusCode === 200 ? resolve(b) : reject(new Error(`${url}/metrics answered ${res.statusCode}`))))
    })
    req.on('timeout', () => req.destroy(new Error(`${url}/metrics timed out`)))
    req.on('error', reject)
  })
  return async () => {
    const texts = await Promise.all(endpoints.map(fetchText))
    const sum = (f) => texts.map(f).reduce((a, b) => a + b, 0)
    const max = (f) => Math.max(...texts.map(f))
    const rpc = (method) => (t) => metricSum(t, 'grpc_server_handled_total', { grpc_service: 'etcdserverpb.KV', grpc_method: method })
    return {
      txnRpcs: sum(rpc('Txn')),
      putRpcs: sum(rpc('Put')),
      walFsyncs: sum((t) => metricSum(t, 'etcd_disk_wal_fsync_duration_seconds_count')),
      puts: max((t) => metricSum(t, 'etcd_mvcc_put_total')),
      proposals: max((t) => metricSum(t, 'etcd_server_proposals_committed_total')),
      keys: max((t) => metricSum(t, 'etcd_debugging_mvcc_keys_total')),
      dbBytes: max((t) => metricSum(t, 'etcd_mvcc_db_total_size_in_bytes')),
      dbInUseBytes: max((t) => metricSum(t, 'etcd_mvcc_db_total_size_in_use_in_bytes')),
    }
  }
}

/** after - before, per field */
export function metricsDelta(before, after) {
  return Object.fromEntries(Object.keys(after).map((k) => [k, after[k] - before[k]]))
}

/**
 * etcd's counters once they stop moving: read until the Txn and mvcc put counts are unchanged over
 * `quietMs` (at most `maxMs`). A client's last block map commit happens at its FLUSH or when it
 * disconnects, which may be just after fio has exited; the write's cost must include it.
 */
export async function settledEtcd(read, quietMs = 500, maxMs = 10_000) {
  const deadline = Date.now() + maxMs
  let m = await read()
  for (;;) {
    await sleep(quietMs)
    const next = await read()
    if ((next.txnRpcs === m.txnRpcs && next.puts === m.puts) || Date.now() > deadline) return next
    m = next
  }
}

/** The columns of an etcd cost table: a label and how to get the figure per GiB written from a delta. */
export const etcdCostColumns = [
  ['Txn calls / GiB', (d, gib) => d.txnRpcs / gib],
  ['Put calls / GiB', (d, gib) => d.putRpcs / gib],
  ['mvcc puts / GiB', (d, gib) => d.puts / gib],
  ['raft proposals / GiB', (d, gib) => d.proposals / gib],
  ['WAL fsyncs / GiB', (d, gib) => d.walFsyncs / gib],
  ['new keys / GiB', (d, gib) => d.keys / gib],
  ['db growth MiB / GiB', (d, gib) => d.dbBytes / 1048576 / gib],
  ['db in-use growth MiB / GiB', (d, gib) => d.dbInUseBytes / 1048576 / gib],
]

// ---- API latency

/** `n` sequential calls of `fn` (one API request each); the milliseconds of each. */
export async function timeCalls(fn, n) {
  const ms = []
  for (let i = 0; i < n; i++) {
    const t0 = performance.now()
    await fn()
    ms.push(performance.now() - t0)
  }
  return ms
}

/** An API client for cluster context `name` saved in `configDir` (as the CLI makes it: CA pinned, token, a new TLS connection per request). */
export async function apiClient(configDir, name, firstAddress) {
  process.env.TESS_CONFIG_DIR = configDir
  const { ApiClient } = await import('../../dist/lib/apiclient.js')
  const { resolveContext } = await import('../../dist/lib/contexts.js')
  const ctx = resolveContext(name)
  // `firstAddress`: ask that node's API first (a node the measured job does not run on)
  if (firstAddress !== undefined) ctx.endpoints = [...ctx.endpoints].sort((a, b) => Number(b.includes(`//${firstAddress}:`)) - Number(a.includes(`//${firstAddress}:`)))
  return new ApiClient(ctx)
}
