/**
 * Test hosts for multi-node tests: a thin driver of scripts/testhosts.sh, which is the single source
 * of truth (namespaces, bridge, sshd, teardown). See docs/testhosts.md. Needs root.
 *
 *   const th = await createTestHosts(3)
 *   try { await th.exec(th.hosts[0]!, ['hostname']) } finally { await th.destroy() }
 */
import { spawn } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')

/** The harness script every function here drives. */
export const testHostsScript = path.join(repoRoot, 'scripts', 'testhosts.sh')

const scriptTimeoutMs = 60_000
const execTimeoutMsDefault = 60_000

export interface TestHost {
  /** `<prefix><i>`, resolvable inside every host of the same prefix (their /etc/hosts) */
  name: string
  /** IPv4 address on the hosts' private /24 (host i has .(10+i)) */
  address: string
  sshPort: number
  /** network namespace (`ip netns`) of the host */
  netns: string
  /** veth end in the machine's namespace, attached to the bridge; down after kill() */
  link: string
}

export interface ExecResult { code: number, stdout: string, stderr: string }

export interface ExecOptions { timeoutMs?: number, input?: string, env?: Record<string, string> }

/** What `testhosts.sh list --prefix P --json` reports (fresh process state). */
export interface TestHostsInfo {
  prefix: string
  stateDir: string
  subnet: string
  bridge: string
  bridgeAddress: string
  keyFile: string
  knownHostsFile: string
  hosts: Array<TestHost & { linkState: string, holderPid: number | null, sshdPid: number | null, stateDir: string }>
}

export type HostRef = string | { name: string }

export interface TestHosts {
  prefix: string
  /** e.g. 10.77.0.0/24 */
  subnet: string
  /** the bridge's address: the machine, as the hosts reach it */
  bridgeAddress: string
  /** per-prefix state dir (keys, known_hosts, per-host dirs); removed by destroy() */
  stateDir: string
  hosts: TestHost[]
  /** private key (0600) authorized for root in every host */
  keyFile: string
  /** known_hosts pinning every host's ed25519 key, by address and by name */
  knownHostsFile: string
  /** ssh argv (options and destination, no command) for `ssh` to reach `host` as root, keys pinned */
  sshArgs(host: HostRef): string[]
  /** Run `cmd` inside the host's network, mount and UTS namespaces (never throws on exit code). */
  exec(host: HostRef, cmd: string[], opts?: ExecOptions): Promise<ExecResult>
  /** Run a remote command through the host's sshd with the `ssh` binary. */
  ssh(host: HostRef, command: string, opts?: ExecOptions): Promise<ExecResult>
  /** Pids of every process in the host (namespace membership and descendants), holder excluded. */
  pids(host: HostRef): Promise<number[]>
  /** Node loss: SIGKILL every process in the host and take its link down. */
  kill(host: HostRef): Promise<void>
  /** Undo kill(): link up, sshd restarted (the host's /var/lib/tess etc. are kept). */
  revive(host: HostRef): Promise<void>
  /** Network partition: the host's link down, its processes untouched. */
  partition(host: HostRef): Promise<void>
  /** End a partition: link up. */
  heal(host: HostRef): Promise<void>
  /** Fresh state from the script (pids, link states). */
  info(): Promise<TestHostsInfo>
  /** Remove everything (processes, namespaces, links, bridge, state dir). Idempotent. */
  destroy(): Promise<void>
}

/** Run the harness script; never throws on exit code. */
export function runTestHostsScript(args: string[], opts: ExecOptions = {}): Promise<ExecResult> {
  return runProgram('bash', [testHostsScript, ...args], { timeoutMs: scriptTimeoutMs, ...opts })
}

async function script(args: string[], opts?: ExecOptions): Promise<ExecResult> {
  const r = await runTestHostsScript(args, opts)
  if (r.code !== 0) throw new Error(`testhosts.sh ${args.join(' ')} failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`)
  return r
}

/**
 * A prefix no other live process uses: 't' and this process's pid in letters (host names must be
 * `<prefix><number>` with a prefix of at most 8 characters ending in a letter).
 */
export function uniquePrefix(): string {
  let n = process.pid
  let s = ''
  do {
    s = String.fromCharCode(97 + (n % 26)) + s
    n = Math.floor(n / 26)
  } while (n > 0)
  return `t${s}`
}

/** Tear down every trace of `prefix` (safe to call when nothing is up). */
export async function destroyTestHosts(prefix: string): Promise<void> {
  await script(['down', '--prefix', prefix])
}

/** Create `n` test hosts `<prefix>1..n` (default prefix: uniquePrefix()). */
export async function createTestHosts(n: number, opts: { prefix?: string, subnet?: string } = {}): Promise<TestHosts> {
  const prefix = opts.prefix ?? uniquePrefix()
  const env: Record<string, string> = opts.subnet ? { TESS_TESTHOSTS_SUBNET: opts.subnet } : {}
  // `up` removes its partial state itself when it fails
  await script(['up', String(n), '--prefix', prefix], { env })
  const info = await readInfo(prefix)
  const hosts: TestHost[] = info.hosts.map((h) => ({ name: h.name, address: h.address, sshPort: h.sshPort, netns: h.netns, link: h.link }))

  const find = (ref: HostRef): TestHost => {
    const name = typeof ref === 'string' ? ref : ref.name
    const h = hosts.find((x) => x.name === name)
    if (!h) throw new Error(`no test host "${name}" in prefix ${prefix} (hosts: ${hosts.map((x) => x.name).join(', ')})`)
    return h
  }
  const sshArgs = (ref: HostRef): string[] => {
    const h = find(ref)
    return ['-F', '/dev/null', '-i', info.keyFile, '-o', 'IdentitiesOnly=yes', '-o', 'BatchMode=yes',
      '-o', 'StrictHostKeyChecking=yes', '-o', `UserKnownHostsFile=${info.knownHostsFile}`, '-o', 'GlobalKnownHostsFile=/dev/null',
      '-o', 'ConnectTimeout=5', '-o', 'LogLevel=ERROR', '-p', String(h.sshPort), `root@${h.address}`]
  }

  return {
    prefix,
    subnet: info.subnet,
    bridgeAddress: info.bridgeAddress,
    stateDir: info.stateDir,
    hosts,
    keyFile: info.keyFile,
    knownHostsFile: info.knownHostsFile,
    sshArgs,
    exec: (host, cmd, o) => {
      if (cmd.length === 0) throw new Error('exec: empty command')
      return runTestHostsScript(['exec', find(host).name, ...cmd], { timeoutMs: execTimeoutMsDefault, ...o })
    },
    ssh: (host, command, o) => runProgram('ssh', [...sshArgs(host), command], { timeoutMs: execTimeoutMsDefault, ...o }),
    pids: async (host) => {
      const r = await script(['pids', find(host).name])
      return r.stdout.split('\n').filter((l) => l.trim() !== '').map(Number)
    },
    kill: async (host) => { await script(['kill', find(host).name]) },
    revive: async (host) => { await script(['revive', find(host).name]) },
    partition: async (host) => { await script(['partition', find(host).name]) },
    heal: async (host) => { await script(['heal', find(host).name]) },
    info: () => readInfo(prefix),
    destroy: () => destroyTestHosts(prefix),
  }
}

async function readInfo(prefix: string): Promise<TestHostsInfo> {
  const r = await script(['list', '--prefix', prefix, '--json'])
  return JSON.parse(r.stdout) as TestHostsInfo
}

/** Run a program and collect its output; never throws on exit code. A timeout SIGKILLs it. */
function runProgram(cmd: string, args: string[], opts: ExecOptions): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? execTimeoutMsDefault)
    child.on('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code: code ?? (signal ? 128 : -1), stdout, stderr })
    })
    child.stdin.on('error', () => { /* the child may exit before reading its input */ })
    child.stdin.end(opts.input ?? '')
  })
}

/**
 * 64 NBD writes in flight through `host`'s CVM at once, from inside the host on its NBD Unix socket
 * (no TLS needed): `file` copied into the export by nbdcopy on one connection, then a flush. Any
 * failed write fails the copy.
 */
export function nbdBurstInHost(th: TestHosts, host: HostRef, file: string, exportName: string): Promise<ExecResult> {
  return th.exec(host, ['nbdcopy', '--connections=1', '--requests=64', `--request-size=${64 * 1024}`, '--flush', file,
    `nbd+unix:///${exportName}?socket=/var/lib/tess/run/nbd.sock`], { timeoutMs: 120_000 })
}
