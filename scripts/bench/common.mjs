// Shared helpers of the benchmark scripts: free ports, running programs, fio JSON, a local cluster,
// a local registry, OCI bundles for a bare `runc run`.
import { spawn, spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
export const tess = path.join(repoRoot, 'bin', 'run.js')

/** `--name VALUE` from the command line, or `def`. */
export function opt(name, def) {
  const argv = process.argv.slice(2)
  const i = argv.indexOf(`--${name}`)
  return i >= 0 ? argv[i + 1] : def
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
    uri: (v) => `nbd://127.0.0.1:${ports.nbd}/${v}`,
    cvmPid: () => Number(fs.readFileSync(path.join(root, 'data', 'run', 'cvm.pid'), 'utf8')),
    destroy: () => run(['cluster', 'destroy', '--yes']),
  }
}

export function ratio(a, b) {
  if (!b) return 'n/a'
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
