import { spawn } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { run } from './run.js'

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
export const tessBin = path.join(repoRoot, 'bin', 'run.js')

let bundleChecked = false
/**
 * `tess` runs the CLI's bundle (dist/cli-bundle, made by `npm run build` after tsc): a test run
 * after `tsc` alone would test the old CLI. Throws when a file tsc wrote is newer than the bundle.
 */
export function assertCliBundleCurrent(root = repoRoot): void {
  const bundle = path.join(root, 'dist', 'cli-bundle', 'framework.js')
  const made = fs.statSync(bundle, { throwIfNoEntry: false })?.mtimeMs
  if (made === undefined) throw new Error(`${bundle} is missing: run npm run build`)
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name)
      if (e.isDirectory()) {
        if (p !== path.join(root, 'dist', 'cli-bundle')) walk(p)
      } else if (e.name.endsWith('.js') && fs.statSync(p).mtimeMs > made) {
        throw new Error(`${p} is newer than the CLI's bundle (${bundle}): run npm run build, not tsc alone`)
      }
    }
  }
  walk(path.join(root, 'dist'))
}

/** A free TCP port on loopback (bind to 0, read, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port
      s.close(() => resolve(port))
    })
  })
}

/** `n` distinct free ports: freePort() may hand out a port again once it was closed (a cluster create refuses one port for two services). */
export async function freePorts(n: number): Promise<number[]> {
  const out: number[] = []
  for (let tries = 0; out.length < n; tries++) {
    if (tries > 100 * n) throw new Error(`cannot find ${n} distinct free ports`)
    const p = await freePort()
    if (!out.includes(p)) out.push(p)
  }
  return out
}

export interface TessResult {
  code: number
  stdout: string
  stderr: string
  /** stdout parsed as JSON (undefined when it is not JSON) */
  json: any
}

/** Run the built CLI as a subprocess, with its own config dir. */
export function runTess(args: string[], env: Record<string, string>, opts: { input?: string, timeoutMs?: number, wrap?: string[], /** another tess's bin/run.js */ bin?: string } = {}): Promise<TessResult> {
  return new Promise((resolve, reject) => {
    // `wrap`: a command line the CLI runs under (e.g. unshare), with the node and tess after it
    if (!bundleChecked && opts.bin === undefined) {
      assertCliBundleCurrent()
      bundleChecked = true
    }
    const argv = [...(opts.wrap ?? []), process.execPath, opts.bin ?? tessBin, ...args]
    const child = spawn(argv[0]!, argv.slice(1), { env: { ...process.env, NO_COLOR: '1', ...env }, stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => { stdout += d })
    child.stderr.on('data', (d) => { stderr += d })
    const t = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 90_000)
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(t)
      let json: any
      try {
        json = JSON.parse(stdout)
      } catch { /* not JSON */ }
      resolve({ code: code ?? -1, stdout, stderr, json })
    })
    child.stdin.on('error', () => { /* the child may exit before reading its input */ })
    child.stdin.end(opts.input ?? '')
  })
}

/** Add --json to tess arguments, before a "--" (after it, it would be part of a container's command). */
/**
 * fn over every item, at most `limit` at a time; the results in the items' order. For independent
 * CLI calls whose order does not matter (each `tess` start costs a few hundred ms of CPU).
 */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length)
  let next = 0
  const worker = async () => {
    while (next < items.length) {
      const i = next++
      out[i] = await fn(items[i]!)
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  return out
}

export function withJson(args: string[]): string[] {
  const i = args.indexOf('--')
  return i < 0 ? [...args, '--json'] : [...args.slice(0, i), '--json', ...args.slice(i)]
}

export interface LocalClusterPorts { api: number, nbd: number, etcdClient: number, etcdPeer: number, data: number }

/** An embedded cluster in a temp dir, on free ports, with its own CLI config dir. */
export class TestCluster {
  readonly root: string
  readonly dataDir: string
  readonly configDir: string
  ports!: LocalClusterPorts

  constructor(readonly name = 'test') {
    this.root = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-test-'))
    this.dataDir = path.join(this.root, 'data')
    this.configDir = path.join(this.root, 'config')
  }

  get env(): Record<string, string> {
    return { TESS_CONFIG_DIR: this.configDir }
  }

  /** the node's NBD Unix socket (root only, no TLS: TCP requires TLS) */
  get nbdSocket(): string {
    return path.join(this.dataDir, 'run', 'nbd.sock')
  }

  /** an NBD URI of an export on the Unix socket; without a name, the server (for --list) */
  nbdUri(name = ''): string {
    return `nbd+unix:///${name}?socket=${this.nbdSocket}`
  }

  /** An export's whole content, read with nbdcopy over the Unix socket (throws when the copy fails). */
  async readExport(exportName: string): Promise<Buffer> {
    const out = path.join(this.root, `read-${crypto.randomBytes(4).toString('hex')}.bin`)
    const r = await run('nbdcopy', [this.nbdUri(exportName), out])
    if (r.code !== 0) throw new Error(`nbdcopy of ${exportName} failed (${r.code}): ${r.stderr}`)
    const b = fs.readFileSync(out)
    fs.rmSync(out)
    return b
  }

  /** qemu-io commands on an export, then a flush (throws when qemu-io fails or reports a failed command). */
  async qemuIo(exportName: string, ...cmds: string[]): Promise<void> {
    const q = await run('qemu-io', ['-f', 'raw', ...cmds.flatMap((x) => ['-c', x]), '-c', 'flush', this.nbdUri(exportName)])
    if (q.code !== 0 || /failed|error/i.test(q.stdout + q.stderr)) throw new Error(`qemu-io ${cmds.join('; ')} on ${exportName} (${q.code}): ${q.stderr}${q.stdout}`)
  }

  tess(args: string[], opts?: { input?: string, timeoutMs?: number, wrap?: string[] }): Promise<TessResult> {
    return runTess(args, this.env, opts)
  }

  /** `wrap`: run `cluster create` (and so every daemon it starts) under this command line */
  async create(extra: string[] = [], wrap?: string[]): Promise<TessResult> {
    const [api, nbd, etcdClient, etcdPeer, data] = await freePorts(5) as [number, number, number, number, number]
    this.ports = { api, nbd, etcdClient, etcdPeer, data }
    const r = await this.tess(['cluster', 'create', '--local', '--name', this.name, '--data-dir', this.dataDir,
      '--api-port', String(this.ports.api), '--nbd-port', String(this.ports.nbd),
      '--etcd-client-port', String(this.ports.etcdClient), '--etcd-peer-port', String(this.ports.etcdPeer), '--data-port', String(this.ports.data), '--json', ...extra],
    wrap !== undefined ? { wrap } : undefined)
    if (r.code !== 0) throw new Error(`cluster create failed (${r.code}): ${r.stdout} ${r.stderr}`)
    return r
  }

  pid(daemon: string): number | undefined {
    try {
      return Number(fs.readFileSync(path.join(this.dataDir, 'run', `${daemon}.pid`), 'utf8').trim())
    } catch {
      return undefined
    }
  }

  /** Every pid our pidfiles name (supervisor, etcd, cvm). */
  pids(): number[] {
    return ['supervisor', 'etcd', 'cvm'].map((d) => this.pid(d)).filter((p): p is number => p !== undefined)
  }

  async destroy(): Promise<void> {
    const pids = this.pids()
    if (fs.existsSync(this.dataDir)) await this.tess(['cluster', 'destroy', '--yes', '--cluster', this.name])
    // Belt and braces: end anything of ours still alive, by pid.
    for (const p of pids) {
      if (!ownedBy(p, this.root)) continue
      try {
        process.kill(p, 'SIGKILL')
      } catch { /* gone */ }
    }
    fs.rmSync(this.root, { recursive: true, force: true })
  }
}

/** Is `pid` a live process whose command line names a path under `root`? */
export function ownedBy(pid: number, root: string): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').some((a) => a.startsWith(root))
  } catch {
    return false
  }
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, timeoutMs = 30_000, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await fn()
    if (v !== undefined && v !== false) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, intervalMs))
  }
}
