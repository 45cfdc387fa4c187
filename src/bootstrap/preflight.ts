/**
 * Pre-flight checks for bootstrapping nodes over SSH. Every host is checked in parallel (the checks
 * of one host run one after another: sshd limits sessions per connection); every problem is collected
 * and returned, so the caller prints all of them at once before it changes anything. The one
 * exception is `installDeps`: then missing Debian packages are installed (apt-get) and checked again.
 *
 * Checks per host, in this order: reachable, os, node, binary (one per binary; packages installed with
 * installDeps), port (one per planned port, from `ss -ltnH`), disk (one per disk path), data-dir, clock,
 * containers (cgroups, an OCI runtime, FUSE and loop devices for volumes: warnings by default, since
 * a node without them still serves storage; failures when the plan asks for containers).
 */
import { apiPortDefault, etcdClientPortDefault, etcdPeerPortDefault, nbdPortDefault } from '../lib/limits.js'
import { errorMessage, isTessError, TessError } from '../lib/errors.js'
import { shellQuote, type ClockSample, type RemoteExec, type SshExecResult } from './ssh.js'

// ----------------------------------------------------------------------------------- constants

/** The replication (data) port between CVMs. */
export const dataPortDefault = 10810
export const nodeVersionMinDefault = '20.15.0'
export const dataDirDefault = '/var/lib/tess'
export const diskFreeMinBytesDefault = 1024 * 1024 * 1024
export const clockWarnMsDefault = 500
export const clockFailMsDefault = 5_000
/** Samples of the remote clock; the one with the shortest round trip is used. */
export const clockSamples = 5
export const preflightCheckTimeoutMs = 30_000
export const aptInstallTimeoutMs = 10 * 60_000
/** Bytes of a marker or node.json read back from a host. */
const remoteJsonMaxBytes = 64 * 1024
/** Entries of a non-empty data dir named in the message. */
const dataDirEntriesShown = 5

// --------------------------------------------------------------------------------------- types

export interface PreflightPort { name: string, port: number }

export interface PreflightBinary {
  binary: string
  /** the Debian package that provides it */
  package: string
}

export interface PreflightPlan {
  clusterName: string
  /** set when resuming: disks and data dirs holding this cluster's marker / node.json are fine */
  clusterId?: string
  /** every port the node's daemons will listen on (see preflightPorts) */
  ports: PreflightPort[]
  /** disk paths: the same on every host, or per host name */
  disks: readonly string[] | Record<string, readonly string[]>
  /** default /var/lib/tess */
  dataDir?: string
  /** entries of the data dir tess writes before node.json (default: ['bundle']) */
  dataDirAllowedEntries?: readonly string[]
  /** install missing packages with apt-get */
  installDeps: boolean
  /** default 20.15.0; Node is reported, never installed */
  nodeVersionMin?: string
  /** required besides the defaults (defaultPreflightBinaries) */
  binaries?: readonly PreflightBinary[]
  /** per disk path; default 1 GiB */
  diskFreeMinBytes?: number
  /** the address each host's daemons bind (by host name); default: the address SSH connected to */
  bindAddresses?: Record<string, string>
  /** this machine's clock (ms since the epoch); default Date.now */
  localClock?: () => number
  clockWarnMs?: number
  clockFailMs?: number
  /** what a node that cannot run containers is: 'warn' (default: it serves storage only) or 'fail' */
  containers?: 'warn' | 'fail'
}

export type PreflightLevel = 'ok' | 'warn' | 'fail'

export interface PreflightCheck {
  /** stable name: reachable, os, node, binary, install, port, disk, data-dir, clock, containers */
  check: string
  /** what was checked, when the check runs several times (binary name, port, disk path) */
  subject?: string
  /** false only for level 'fail' (a warning is ok) */
  ok: boolean
  level: PreflightLevel
  message: string
  hint: string
}

export interface HostPreflight {
  host: string
  ok: boolean
  checks: PreflightCheck[]
  /** packages installed by installDeps */
  installed: string[]
}

export interface PreflightResult {
  ok: boolean
  hosts: HostPreflight[]
}

/** Binaries every node needs, with their Debian packages. Node itself is checked by version (never installed). */
export const defaultPreflightBinaries: readonly PreflightBinary[] = [
  { binary: 'etcd', package: 'etcd-server' },
  { binary: 'etcdctl', package: 'etcd-client' },
  { binary: 'openssl', package: 'openssl' },
  { binary: 'tar', package: 'tar' },
  { binary: 'sha256sum', package: 'coreutils' },
  { binary: 'ss', package: 'iproute2' },
]

/** The ports of a node, named as messages show them. */
export function preflightPorts(p: { apiPort?: number, nbdPort?: number, etcdClientPort?: number, etcdPeerPort?: number, dataPort?: number } = {}): PreflightPort[] {
  return [
    { name: 'API', port: p.apiPort ?? apiPortDefault },
    { name: 'NBD', port: p.nbdPort ?? nbdPortDefault },
    { name: 'etcd client', port: p.etcdClientPort ?? etcdClientPortDefault },
    { name: 'etcd peer', port: p.etcdPeerPort ?? etcdPeerPortDefault },
    { name: 'replication', port: p.dataPort ?? dataPortDefault },
  ]
}

// ------------------------------------------------------------------------------------- helpers

const ok = (check: string, message: string, subject?: string): PreflightCheck => ({ check, subject, ok: true, level: 'ok', message, hint: '' })
const warn = (check: string, message: string, hint: string, subject?: string): PreflightCheck => ({ check, subject, ok: true, level: 'warn', message, hint })
const fail = (check: string, message: string, hint: string, subject?: string): PreflightCheck => ({ check, subject, ok: false, level: 'fail', message, hint })

/** `v20.15.1` / `20.15` → [20, 15, 1]; undefined when unparsable. */
export function parseVersion(v: string): [number, number, number] | undefined {
  const m = /^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?/.exec(v.trim())
  if (!m) return undefined
  return [Number(m[1]), Number(m[2] ?? 0), Number(m[3] ?? 0)]
}

export function versionAtLeast(have: [number, number, number], want: [number, number, number]): boolean {
  for (let i = 0; i < 3; i++) {
    if (have[i]! !== want[i]!) return have[i]! > want[i]!
  }
  return true
}

export interface Listener { address: string, port: number, process: string }

/** Parse `ss -ltnH` (optionally -p) output into listeners; addresses without brackets or %iface. */
export function parseSsListeners(out: string): Listener[] {
  const res: Listener[] = []
  for (const line of out.split('\n')) {
    const f = line.trim().split(/\s+/)
    if (f.length < 4) continue
    // State Recv-Q Send-Q Local:Port Peer:Port [Process]
    const local = f[0] === 'LISTEN' || /^[A-Z-]+$/.test(f[0] ?? '') ? f[3] : f[2]
    if (!local) continue
    const i = local.lastIndexOf(':')
    if (i <= 0) continue
    const port = Number(local.slice(i + 1))
    if (!Number.isInteger(port)) continue
    let address = local.slice(0, i)
    if (address.startsWith('[') && address.endsWith(']')) address = address.slice(1, -1)
    address = address.replace(/%.*$/, '')
    const procs = /users:\(\((.*)\)\)/.exec(line)
    const process = procs ? procs[1]!.split('),(').map((p) => p.replace(/^"([^"]*)",pid=(\d+).*$/, '$1 (pid $2)')).join(', ') : ''
    res.push({ address, port, process })
  }
  return res
}

const wildcard = new Set(['*', '0.0.0.0', '::', '::ffff:0.0.0.0'])
const isLoopback = (a: string): boolean => a === '::1' || a.startsWith('127.') || a.startsWith('::ffff:127.')
const isIpLiteral = (a: string): boolean => /^\d+\.\d+\.\d+\.\d+$/.test(a) || a.includes(':')

/**
 * Does a listener block a daemon that will bind `bind`:port? Wildcard and loopback listeners always
 * do (etcd also listens on 127.0.0.1); a listener on another specific address does not. With a bind
 * address that is not an IP literal, every listener on the port counts.
 */
export function listenerConflicts(l: Listener, bind: string): boolean {
  if (wildcard.has(l.address) || isLoopback(l.address)) return true
  if (!isIpLiteral(bind) || wildcard.has(bind)) return true
  const norm = (a: string): string => a.replace(/^::ffff:/, '').toLowerCase()
  return norm(l.address) === norm(bind)
}

function gib(bytes: number): string {
  return `${(bytes / 1024 ** 3).toFixed(1)} GiB`
}

function parseKv(out: string): Map<string, string> {
  const m = new Map<string, string>()
  for (const line of out.split('\n')) {
    const i = line.indexOf('=')
    if (i > 0) m.set(line.slice(0, i), line.slice(i + 1))
  }
  return m
}

function parseJsonB64(b64: string | undefined): Record<string, unknown> | undefined {
  if (!b64) return undefined
  try {
    const v = JSON.parse(Buffer.from(b64, 'base64').toString('utf8')) as unknown
    return v && typeof v === 'object' ? v as Record<string, unknown> : undefined
  } catch {
    return undefined
  }
}

function stderrTail(r: SshExecResult, lines = 5): string {
  return (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-lines).join('\n')
}

// ------------------------------------------------------------------------------------- checks

async function checkOs(t: RemoteExec): Promise<PreflightCheck> {
  const r = await t.exec('uname -s; uname -r; uname -m', { timeoutMs: preflightCheckTimeoutMs })
  const [os, release, arch] = r.stdout.trim().split('\n')
  if (r.code !== 0 || os !== 'Linux') {
    return fail('os', `the operating system is ${os ?? 'unknown'}${r.code !== 0 ? ` (uname failed: ${stderrTail(r)})` : ''}, not Linux`, 'Tessera nodes run Linux')
  }
  return ok('os', `Linux ${release ?? ''} ${arch ?? ''}`.trim())
}

async function checkNode(t: RemoteExec, min: string): Promise<PreflightCheck> {
  const want = parseVersion(min)
  if (!want) throw new TessError('TESS_E_INVALID', `bad minimum Node version "${min}"`, 'give it as MAJOR.MINOR[.PATCH]')
  const r = await t.exec('command -v node >/dev/null 2>&1 || exit 127; node --version', { timeoutMs: preflightCheckTimeoutMs })
  const hint = `install Node.js ${min} or newer on the host (Debian bookworm's nodejs package is 18: use NodeSource's or the official binaries); tess does not install Node`
  if (r.code === 127) return fail('node', 'node is not installed (Debian package nodejs)', hint)
  const have = parseVersion(r.stdout)
  if (r.code !== 0 || !have) return fail('node', `node --version failed: ${stderrTail(r) || r.stdout.trim()}`, hint)
  if (!versionAtLeast(have, want)) return fail('node', `node is ${r.stdout.trim()}, older than the ${min} needed`, hint)
  return ok('node', `node ${r.stdout.trim()} (>= ${min})`)
}

async function whichBinaries(t: RemoteExec, names: string[]): Promise<Map<string, string | undefined>> {
  const script = 'for b in "$@"; do if p=$(command -v "$b" 2>/dev/null); then echo "ok $b $p"; else echo "missing $b"; fi; done'
  const r = await t.exec(`sh -c ${shellQuote(script)} sh ${names.map(shellQuote).join(' ')}`, { timeoutMs: preflightCheckTimeoutMs })
  if (r.code !== 0) throw new TessError('TESS_E_IO', `cannot look up binaries on ${t.host}: ${stderrTail(r)}`, 'is /bin/sh there?')
  const found = new Map<string, string | undefined>()
  for (const line of r.stdout.split('\n')) {
    const [state, name, ...p] = line.split(' ')
    if (name === undefined) continue
    found.set(name, state === 'ok' ? p.join(' ') : undefined)
  }
  return found
}

async function aptInstall(t: RemoteExec, packages: string[]): Promise<{ ok: boolean, detail: string }> {
  const install = `DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=120 ${packages.map(shellQuote).join(' ')}`
  const has = await t.exec('command -v apt-get >/dev/null 2>&1', { timeoutMs: preflightCheckTimeoutMs })
  if (has.code !== 0) return { ok: false, detail: 'apt-get is not available (not a Debian-like system)' }
  let r = await t.exec(install, { timeoutMs: aptInstallTimeoutMs })
  if (r.code !== 0 && /Unable to locate package|no installation candidate|Failed to fetch|404/i.test(r.stderr + r.stdout)) {
    // a stale or missing package index: refresh it once and retry
    await t.exec('DEBIAN_FRONTEND=noninteractive apt-get update -q -o DPkg::Lock::Timeout=120', { timeoutMs: aptInstallTimeoutMs })
    r = await t.exec(install, { timeoutMs: aptInstallTimeoutMs })
  }
  return { ok: r.code === 0, detail: r.code === 0 ? '' : stderrTail(r) }
}

async function checkBinaries(t: RemoteExec, plan: PreflightPlan, installed: string[]): Promise<PreflightCheck[]> {
  const bins: PreflightBinary[] = []
  for (const b of [...defaultPreflightBinaries, ...(plan.binaries ?? [])]) {
    if (b.binary === 'node') continue // the node check reports it (with its version)
    if (!bins.some((x) => x.binary === b.binary)) bins.push(b)
  }
  let found = await whichBinaries(t, bins.map((b) => b.binary))
  const missing = () => bins.filter((b) => found.get(b.binary) === undefined)
  const out: PreflightCheck[] = []
  let installFailure: string | undefined
  const before = missing()
  const pkgs = [...new Set(before.map((b) => b.package))]
  if (pkgs.length > 0 && plan.installDeps) {
    const r = await aptInstall(t, pkgs)
    if (!r.ok) installFailure = r.detail
    found = await whichBinaries(t, bins.map((b) => b.binary))
    for (const p of pkgs) if (before.some((b) => b.package === p && found.get(b.binary) !== undefined)) installed.push(p)
  }
  const stillMissing = missing()
  const stillPkgs = [...new Set(stillMissing.map((b) => b.package))]
  for (const b of bins) {
    const p = found.get(b.binary)
    if (p !== undefined) {
      out.push(ok('binary', before.includes(b) ? `${b.binary} installed from package ${b.package} (${p})` : `${b.binary} is ${p}`, b.binary))
      continue
    }
    if (plan.installDeps) {
      out.push(fail('binary', `${b.binary} is missing and installing package ${b.package} failed${installFailure ? `: ${installFailure}` : ''}`,
        `install it by hand on the host: apt-get update && apt-get install -y ${stillPkgs.join(' ')}`, b.binary))
    } else {
      out.push(fail('binary', `${b.binary} is not installed (Debian package ${b.package})`,
        `pass --install-deps to install it, or run on the host: apt-get install -y ${stillPkgs.join(' ')}`, b.binary))
    }
  }
  return out
}

async function checkPorts(t: RemoteExec, plan: PreflightPlan, bind: string): Promise<PreflightCheck[]> {
  const out: PreflightCheck[] = []
  const seen = new Map<number, string>()
  for (const p of plan.ports) {
    const other = seen.get(p.port)
    if (other !== undefined) out.push(fail('port', `port ${p.port} is planned for both ${other} and ${p.name}`, 'give every service its own port', `${p.name} ${p.port}`))
    seen.set(p.port, p.name)
  }
  const r = await t.exec('ss -ltnpH 2>/dev/null || ss -ltnH', { timeoutMs: preflightCheckTimeoutMs })
  if (r.code !== 0) {
    return [...out, fail('port', `cannot list listening ports with ss: ${stderrTail(r)}`, 'install iproute2 (apt-get install -y iproute2)')]
  }
  const listeners = parseSsListeners(r.stdout)
  for (const p of plan.ports) {
    if (out.some((c) => c.subject === `${p.name} ${p.port}`)) continue
    const busy = listeners.filter((l) => l.port === p.port && listenerConflicts(l, bind))
    if (busy.length > 0) {
      const who = busy.map((l) => `${l.address.includes(':') ? `[${l.address}]` : l.address}:${l.port}${l.process ? ` by ${l.process}` : ''}`).join(', ')
      out.push(fail('port', `${p.name} port ${p.port} is in use (listening: ${who})`,
        `stop what listens on port ${p.port} on ${t.host}, or choose another ${p.name} port`, `${p.name} ${p.port}`))
    } else {
      out.push(ok('port', `${p.name} port ${p.port} is free on ${bind}`, `${p.name} ${p.port}`))
    }
  }
  return out
}

const diskScript = `
p=$1
if [ -d "$p" ]; then echo kind=dir; d=$p
elif [ -e "$p" ] || [ -L "$p" ]; then echo kind=notdir; d=
else
  echo kind=missing
  a=$(dirname "$p")
  while [ ! -e "$a" ] && [ "$a" != / ]; do a=$(dirname "$a"); done
  echo ancestor=$a
  if [ -d "$a" ]; then d=$a; else echo ancestorkind=notdir; d=; fi
fi
if [ -n "$d" ]; then
  t="$d/.tess-preflight-$$"
  if ( : > "$t" ) 2>/dev/null; then rm -f "$t"; echo writable=1; else echo writable=0; fi
  df -Pk "$d" 2>/dev/null | awk 'NR==2 { print "availkb=" $4; print "mount=" $6 }'
fi
if [ -f "$p/tess-disk.json" ]; then echo marker=$(head -c ${remoteJsonMaxBytes} "$p/tess-disk.json" | base64 | tr -d '\\n'); fi
`

async function checkDisk(t: RemoteExec, plan: PreflightPlan, diskPath: string): Promise<PreflightCheck> {
  const c = 'disk'
  if (!diskPath.startsWith('/') || /[\n\0]/.test(diskPath)) return fail(c, `disk path "${diskPath}" is not an absolute path`, 'give disk paths as absolute paths', diskPath)
  const r = await t.exec(`sh -c ${shellQuote(diskScript)} sh ${shellQuote(diskPath)}`, { timeoutMs: preflightCheckTimeoutMs })
  if (r.code !== 0) return fail(c, `cannot check disk path ${diskPath}: ${stderrTail(r)}`, 'check the path on the host', diskPath)
  const kv = parseKv(r.stdout)
  const kind = kv.get('kind')
  if (kind === 'notdir') return fail(c, `disk path ${diskPath} exists and is not a directory`, `give a directory (a disk's mount point), or remove ${diskPath}`, diskPath)
  if (kind === 'missing' && kv.get('ancestorkind') === 'notdir') {
    return fail(c, `disk path ${diskPath} cannot be created: ${kv.get('ancestor') ?? 'a parent'} is not a directory`, 'give a path under an existing directory', diskPath)
  }
  if (kv.get('writable') !== '1') {
    return fail(c, `disk path ${diskPath} ${kind === 'missing' ? `cannot be created (${kv.get('ancestor') ?? 'its parent'} is not writable)` : 'is not writable'}`,
      'check the permissions and that the filesystem is not mounted read-only', diskPath)
  }
  const marker = parseJsonB64(kv.get('marker'))
  if (kv.has('marker')) {
    const id = marker?.clusterId
    if (plan.clusterId === undefined || id !== plan.clusterId) {
      return fail(c, `disk path ${diskPath} already belongs to ${typeof id === 'string' ? `another cluster (${id})` : 'a cluster (unreadable marker)'}: it holds tess-disk.json`,
        `if its data is no longer needed, remove ${diskPath}/tess-disk.json and ${diskPath}/egroups on the host; otherwise use another path`, diskPath)
    }
  }
  const availKb = Number(kv.get('availkb'))
  const min = plan.diskFreeMinBytes ?? diskFreeMinBytesDefault
  if (!Number.isFinite(availKb)) return fail(c, `cannot read the free space of ${diskPath} (df failed)`, 'check the filesystem', diskPath)
  const free = availKb * 1024
  if (free < min) {
    return fail(c, `disk path ${diskPath} has ${gib(free)} free on ${kv.get('mount') ?? '?'}, less than the ${gib(min)} needed`, 'free space or give another disk', diskPath)
  }
  const state = kind === 'missing' ? 'will be created' : marker ? 'holds this cluster\'s marker (resume)' : 'is a writable directory'
  return ok(c, `${diskPath} ${state}; ${gib(free)} free on ${kv.get('mount') ?? '?'}`, diskPath)
}

const dataDirScript = `
p=$1
if [ -d "$p" ]; then echo kind=dir
  t="$p/.tess-preflight-$$"
  if ( : > "$t" ) 2>/dev/null; then rm -f "$t"; echo writable=1; else echo writable=0; fi
  for e in "$p"/* "$p"/.[!.]* "$p"/..?*; do [ -e "$e" ] || [ -L "$e" ] || continue; echo "entry=\${e##*/}"; done
  if [ -f "$p/node.json" ]; then echo nodejson=$(head -c ${remoteJsonMaxBytes} "$p/node.json" | base64 | tr -d '\\n'); fi
elif [ -e "$p" ] || [ -L "$p" ]; then echo kind=notdir
else echo kind=missing
fi
`

async function checkDataDir(t: RemoteExec, plan: PreflightPlan): Promise<PreflightCheck> {
  const c = 'data-dir'
  const dir = plan.dataDir ?? dataDirDefault
  const r = await t.exec(`sh -c ${shellQuote(dataDirScript)} sh ${shellQuote(dir)}`, { timeoutMs: preflightCheckTimeoutMs })
  if (r.code !== 0) return fail(c, `cannot check data dir ${dir}: ${stderrTail(r)}`, 'check the path on the host', dir)
  const entries: string[] = []
  let kind: string | undefined
  let writable = false
  let nodeJson: string | undefined
  for (const line of r.stdout.split('\n')) {
    if (line.startsWith('kind=')) kind = line.slice(5)
    else if (line === 'writable=1') writable = true
    else if (line.startsWith('entry=')) entries.push(line.slice(6))
    else if (line.startsWith('nodejson=')) nodeJson = line.slice(9)
  }
  if (kind === 'missing') return ok(c, `data dir ${dir} will be created`, dir)
  if (kind === 'notdir') return fail(c, `data dir ${dir} exists and is not a directory`, `remove ${dir} on the host`, dir)
  if (!writable) return fail(c, `data dir ${dir} is not writable`, 'check the permissions and that the filesystem is not mounted read-only', dir)
  if (entries.includes('node.json')) {
    const cfg = parseJsonB64(nodeJson)
    const id = cfg?.clusterId
    const name = cfg?.clusterName
    const same = plan.clusterId !== undefined ? id === plan.clusterId : name === plan.clusterName
    if (same) return ok(c, `data dir ${dir} holds this cluster's node.json (node "${String(cfg?.nodeName ?? '?')}"): resuming`, dir)
    return fail(c, `data dir ${dir} holds node.json of ${typeof name === 'string' ? `cluster "${name}"` : 'another cluster'}${typeof id === 'string' ? ` (${id})` : ''}`,
      `this host is a node of another cluster: destroy that cluster first${typeof name === 'string' ? ` (tess cluster destroy --cluster ${name} --yes)` : ''}, or use another host`, dir)
  }
  const allowed = new Set(plan.dataDirAllowedEntries ?? ['bundle'])
  const foreign = entries.filter((e) => !allowed.has(e))
  if (foreign.length > 0) {
    const shown = foreign.slice(0, dataDirEntriesShown).join(', ') + (foreign.length > dataDirEntriesShown ? `, … (${foreign.length} entries)` : '')
    return fail(c, `data dir ${dir} is not empty and holds no node.json: ${shown}`, `on the host, move what is in ${dir} elsewhere (or delete it if it is not needed), or use another data dir`, dir)
  }
  return ok(c, entries.length === 0 ? `data dir ${dir} is empty` : `data dir ${dir} holds only ${entries.join(', ')} (from an earlier bootstrap)`, dir)
}

/**
 * Measure the host's clock against ours: offset = remote − midpoint of the round trip, from the sample
 * with the shortest round trip. Uses the transport's clockSamples (one channel, no process start in
 * the round trip) when it has it, else one `date` command per sample.
 */
export async function measureClockOffset(t: RemoteExec, localClock: () => number, samples = clockSamples): Promise<{ offsetMs: number, rttMs: number }> {
  let readings: ClockSample[]
  if (t.clockSamples) {
    readings = await t.clockSamples(samples, localClock)
  } else {
    readings = []
    for (let i = 0; i < samples; i++) {
      const sentAtMs = localClock()
      const r = await t.exec('date +%s%N', { timeoutMs: preflightCheckTimeoutMs })
      const receivedAtMs = localClock()
      const ns = r.stdout.trim()
      if (r.code !== 0 || !/^\d{10,}$/.test(ns)) {
        throw new TessError('TESS_E_IO', `cannot read the clock of ${t.host}: date +%s%N printed "${ns.slice(0, 40)}"${r.code !== 0 ? ` (${stderrTail(r)})` : ''}`, 'is GNU date there (coreutils)?')
      }
      readings.push({ sentAtMs, remoteMs: Number(BigInt(ns) / 1_000_000n) + Number(BigInt(ns) % 1_000_000n) / 1e6, receivedAtMs })
    }
  }
  let best: { offsetMs: number, rttMs: number } | undefined
  for (const s of readings) {
    const rtt = s.receivedAtMs - s.sentAtMs
    const offset = s.remoteMs - (s.sentAtMs + s.receivedAtMs) / 2
    if (!best || rtt < best.rttMs) best = { offsetMs: offset, rttMs: rtt }
  }
  if (!best) throw new TessError('TESS_E_IO', `cannot read the clock of ${t.host}: no sample`, 'see the other checks')
  return best
}

async function checkClock(t: RemoteExec, plan: PreflightPlan): Promise<PreflightCheck> {
  const warnMs = plan.clockWarnMs ?? clockWarnMsDefault
  const failMs = plan.clockFailMs ?? clockFailMsDefault
  const m = await measureClockOffset(t, plan.localClock ?? Date.now)
  const off = Math.round(m.offsetMs)
  const pm = Math.ceil(m.rttMs / 2)
  const text = `clock offset ${off >= 0 ? '+' : ''}${off} ms vs this machine (±${pm} ms, round trip ${Math.round(m.rttMs)} ms)`
  const hint = 'synchronize the clocks with NTP (e.g. apt-get install -y chrony, or systemd-timesyncd) on this machine and the host'
  if (Math.abs(m.offsetMs) > failMs) return fail('clock', `${text}: more than the ${failMs} ms allowed`, hint)
  if (Math.abs(m.offsetMs) > warnMs) return warn('clock', `${text}: more than ${warnMs} ms (leases and certificates need close clocks)`, hint)
  return ok('clock', text)
}

/** A check that threw (connection lost, timeout) becomes a failed check, so every problem is reported. */
/** What containers and volumes need on a node, probed in one remote script: `key yes|no` lines. */
const containerNeeds: Array<{ key: string, probe: string, what: string, hint: string }> = [
  { key: 'cgroup', probe: "grep -qE ' - cgroup2? ' /proc/self/mountinfo", what: 'no cgroup or cgroup2 filesystem is mounted', hint: 'mount cgroup2 at /sys/fs/cgroup (the init system usually does)' },
  { key: 'runtime', probe: 'command -v runc >/dev/null || command -v crun >/dev/null', what: 'no OCI runtime (runc or crun)', hint: 'apt-get install runc' },
  { key: 'fuse', probe: 'test -c /dev/fuse', what: '/dev/fuse is missing (volumes attach through nbdfuse)', hint: 'modprobe fuse, or give the host /dev/fuse' },
  { key: 'nbdfuse', probe: 'command -v nbdfuse >/dev/null', what: 'nbdfuse is not installed (volumes)', hint: 'apt-get install libnbd-bin fuse3' },
  { key: 'loop', probe: 'test -c /dev/loop-control && command -v losetup >/dev/null', what: 'no loop devices (/dev/loop-control) or losetup (volumes)', hint: 'modprobe loop; apt-get install mount' },
]

/** Parse the `key yes|no` lines of the containers probe. */
export function parseContainerProbe(out: string): Map<string, boolean> {
  const m = new Map<string, boolean>()
  for (const line of out.split('\n')) {
    const [k, v] = line.trim().split(' ')
    if (k !== undefined && (v === 'yes' || v === 'no')) m.set(k, v === 'yes')
  }
  return m
}

export async function checkContainers(t: RemoteExec, plan: PreflightPlan): Promise<PreflightCheck[]> {
  const script = containerNeeds.map((n) => `if ${n.probe}; then echo '${n.key} yes'; else echo '${n.key} no'; fi`).join('; ')
  const r = await t.exec(`sh -c ${shellQuote(script)}`, { timeoutMs: preflightCheckTimeoutMs })
  if (r.code !== 0) throw new TessError('TESS_E_IO', `cannot probe what containers need on ${t.host}: ${stderrTail(r)}`, 'is /bin/sh there?')
  const got = parseContainerProbe(r.stdout)
  const missing = containerNeeds.filter((n) => got.get(n.key) !== true)
  if (missing.length === 0) return [ok('containers', 'cgroups, an OCI runtime, FUSE, nbdfuse and loop devices are there')]
  const level = plan.containers === 'fail' ? fail : warn
  const storageOnly = plan.containers === 'fail' ? '' : ' (the node serves storage; containers will not run on it)'
  return missing.map((n) => level('containers', `${n.what}${storageOnly}`, n.hint, n.key))
}

async function guard(check: string, subject: string | undefined, fn: () => Promise<PreflightCheck | PreflightCheck[]>): Promise<PreflightCheck[]> {
  try {
    const r = await fn()
    return Array.isArray(r) ? r : [r]
  } catch (e) {
    return [fail(check, errorMessage(e), isTessError(e) ? e.hint : 'see the message', subject)]
  }
}

async function preflightHost(name: string, t: RemoteExec | Error, plan: PreflightPlan): Promise<HostPreflight> {
  const checks: PreflightCheck[] = []
  const installed: string[] = []
  const done = (): HostPreflight => ({ host: name, ok: checks.every((c) => c.ok), checks, installed })
  if (t instanceof Error) {
    checks.push(fail('reachable', errorMessage(t), isTessError(t) ? t.hint : `is ${name} up and sshd running?`))
    return done()
  }
  checks.push(ok('reachable', `connected over SSH to ${t.host}`))
  const os = await guard('os', undefined, () => checkOs(t))
  checks.push(...os)
  if (!os.every((c) => c.ok)) return done()
  checks.push(...await guard('node', undefined, () => checkNode(t, plan.nodeVersionMin ?? nodeVersionMinDefault)))
  checks.push(...await guard('binary', undefined, () => checkBinaries(t, plan, installed)))
  checks.push(...await guard('port', undefined, () => checkPorts(t, plan, plan.bindAddresses?.[name] ?? t.host)))
  const disks = Array.isArray(plan.disks) ? plan.disks as readonly string[] : (plan.disks as Record<string, readonly string[]>)[name] ?? []
  const seen = new Set<string>()
  for (const d of disks) {
    const norm = d.replace(/\/+$/, '') || '/'
    if (seen.has(norm)) {
      checks.push(fail('disk', `disk path ${d} is given twice`, 'give each disk once', d))
      continue
    }
    seen.add(norm)
    checks.push(...await guard('disk', d, () => checkDisk(t, plan, norm)))
  }
  checks.push(...await guard('data-dir', plan.dataDir ?? dataDirDefault, () => checkDataDir(t, plan)))
  checks.push(...await guard('clock', undefined, () => checkClock(t, plan)))
  checks.push(...await guard('containers', undefined, () => checkContainers(t, plan)))
  return done()
}

/**
 * Check every host in parallel. `transports` maps each host name to its connected transport, or to
 * the error connecting it failed with (reported as the failed `reachable` check).
 */
export async function runPreflight(transports: ReadonlyMap<string, RemoteExec | Error>, plan: PreflightPlan): Promise<PreflightResult> {
  const hosts = await Promise.all([...transports].map(([name, t]) => preflightHost(name, t, plan)))
  return { ok: hosts.every((h) => h.ok), hosts }
}

/** Every failed check, with its host. */
export function preflightFailures(result: PreflightResult): Array<PreflightCheck & { host: string }> {
  return result.hosts.flatMap((h) => h.checks.filter((c) => !c.ok).map((c) => ({ ...c, host: h.host })))
}

/** The error to throw when pre-flight failed (exit 5); print formatPreflight(result) first. */
export function preflightError(result: PreflightResult): TessError {
  const bad = result.hosts.filter((h) => !h.ok).map((h) => `${h.host} (${h.checks.filter((c) => !c.ok).length})`)
  return new TessError('TESS_E_PRECONDITION', `pre-flight checks failed on ${bad.length} host(s): ${bad.join(', ')}`,
    'fix the problems listed above (nothing was changed on the hosts' + (result.hosts.some((h) => h.installed.length > 0) ? ' except the packages installed' : '') + ') and run the command again')
}

/** A per-host human report: every check with ok / WARN / FAIL, hints under warnings and failures. */
export function formatPreflight(result: PreflightResult, opts: { onlyProblems?: boolean } = {}): string {
  const lines: string[] = []
  for (const h of result.hosts) {
    const failed = h.checks.filter((c) => c.level === 'fail').length
    const warned = h.checks.filter((c) => c.level === 'warn').length
    const summary = failed > 0 ? `${failed} failed` : 'ready'
    lines.push(`${h.host}: ${summary}${warned > 0 ? `, ${warned} warning(s)` : ''} (${h.checks.length} checks)${h.installed.length > 0 ? `; installed: ${h.installed.join(' ')}` : ''}`)
    for (const c of h.checks) {
      if (opts.onlyProblems && c.level === 'ok') continue
      const mark = c.level === 'ok' ? 'ok  ' : c.level === 'warn' ? 'WARN' : 'FAIL'
      lines.push(`  ${mark} ${c.check.padEnd(9)} ${c.message}`)
      if (c.level !== 'ok' && c.hint) lines.push(`       ${' '.repeat(9)} hint: ${c.hint}`)
    }
  }
  return lines.join('\n')
}
