import fsp from 'node:fs/promises'
import path from 'node:path'
import { TessError, assert, errorMessage } from '../../lib/errors.js'
import { writeFileAtomic } from '../../lib/images/store.js'
import type { Rlimit } from '../../lib/container-spec.js'
import type { NetworkMode } from '../../lib/csm-types.js'
import { parseMountinfo } from './cgroups.js'
import { execCommand } from './exec.js'
import { mountAddon } from './mountaddon.js'
import { defaultSeccompProfile, type OciSeccomp } from './seccomp.js'
import {
  containerArgBytesMax, containerArgsMax, containerEnvMax, containerNofileDefault, cpuPeriodUs, cpuQuotaMinUs, hostnameLengthMax,
  mountOptionsMaxBytes, passwdFileSizeMaxBytes, symlinksFollowMax,
} from './limits.js'

/**
 * OCI bundles: the container's root filesystem and its config.json.
 *
 * rootfs: an overlay of the image's unpacked layers (read-only, shared by every container of the
 * image, top-most first in lowerdir) under a per-container upperdir and workdir, mounted by us in
 * the bundle directory with the `mount` binary. The kernel copies mount options into one page, so
 * lowerdir must stay under 4 KiB: when the absolute paths do not fit, a directory of short
 * symlinks (`l/0`, `l/1`, ...) pointing at the layers is made next to the rootfs and `mount` runs
 * in the container directory with relative paths (the kernel resolves them from the caller's
 * working directory), ~6 bytes per layer instead of ~90: room for hundreds of layers.
 *
 * config.json (OCI runtime spec 1.0): the image config's Env, Entrypoint/Cmd, WorkingDir and User
 * merged with the caller's overrides; pid, ipc, uts and mount namespaces always, a network
 * namespace with only loopback for network "none" (none for "host"); the container's cgroup below
 * its CSM's; CPU, memory and pids limits; rlimits clamped to the host's hard limits (a runtime
 * cannot raise a hard limit it does not hold); noNewPrivileges; Docker's default capabilities
 * without CAP_NET_RAW; a seccomp filter that blocks what Docker's default profile blocks (seccomp.ts);
 * masked and read-only paths; the standard /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys and
 * /sys/fs/cgroup mounts; hostname = container name; /etc/hosts, /etc/hostname and
 * /etc/resolv.conf bind-mounted from files in the container directory; with `userns`, a user
 * namespace whose uid and gid maps put the container's root on an unprivileged host id (userns.ts).
 */

// ---------------------------------------------------------------------------------------------
// OCI runtime spec (the subset we write)

export interface OciMount {
  destination: string
  type?: string
  source?: string
  options?: string[]
}

/** a process limit in config.json: the container spec's (lib/container-spec.ts) */
export type OciRlimit = Rlimit

export interface OciUser {
  uid: number
  gid: number
  additionalGids?: number[]
}

export interface OciCapabilities {
  bounding: string[]
  effective: string[]
  permitted: string[]
}

export interface OciResources {
  devices: Array<{ allow: boolean, access: string }>
  cpu?: { quota: number, period: number }
  memory?: { limit: number, swap?: number }
  pids: { limit: number }
}

export interface OciSpec {
  ociVersion: string
  process: {
    terminal: boolean
    user: OciUser
    args: string[]
    env: string[]
    cwd: string
    capabilities: OciCapabilities
    rlimits: OciRlimit[]
    noNewPrivileges: boolean
  }
  root: { path: string, readonly: boolean }
  hostname: string
  mounts: OciMount[]
  linux: {
    namespaces: Array<{ type: string }>
    cgroupsPath: string
    resources: OciResources
    maskedPaths: string[]
    readonlyPaths: string[]
    seccomp?: OciSeccomp
    uidMappings?: OciIdMapping[]
    gidMappings?: OciIdMapping[]
  }
  annotations?: Record<string, string>
}

/** OCI runtime spec `linux.uidMappings` / `gidMappings` entry */
export interface OciIdMapping { containerID: number, hostID: number, size: number }

export const ociVersion = '1.0.2'

/**
 * Docker's default capability set without CAP_NET_RAW (raw and packet sockets: forged packets and
 * sniffing on a shared network; `ping` works without it through ICMP datagram sockets where the
 * host's net.ipv4.ping_group_range allows).
 */
export const defaultCapabilities: readonly string[] = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FSETID', 'CAP_FOWNER', 'CAP_MKNOD', 'CAP_SETGID', 'CAP_SETUID',
  'CAP_SETFCAP', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_CHROOT', 'CAP_KILL', 'CAP_AUDIT_WRITE',
]

/** Docker's default masked paths (hidden: /dev/null or an empty read-only tmpfs over them). */
export const defaultMaskedPaths: readonly string[] = [
  '/proc/asound', '/proc/acpi', '/proc/interrupts', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list',
  '/proc/timer_stats', '/proc/sched_debug', '/proc/scsi', '/sys/firmware', '/sys/devices/virtual/powercap',
]

/** Docker's default read-only paths. */
export const defaultReadonlyPaths: readonly string[] = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger']

export const defaultPath = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

/** The standard mounts of a container, in mount order. */
export function standardMounts(): OciMount[] {
  return [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
    { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'] },
  ]
}

// ---------------------------------------------------------------------------------------------
// image config

/** The parts of an image config (`config` of the OCI image config) that shape the process. */
export interface ImageRuntimeConfig {
  env: string[]
  entrypoint: string[]
  cmd: string[]
  workingDir: string
  user: string
  stopSignal?: string
}

const stringList = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [])

/** Extract the runtime settings from a parsed image config document (ImageConfig.raw). */
export function imageRuntimeConfig(raw: Record<string, unknown>): ImageRuntimeConfig {
  const c = (raw.config !== null && typeof raw.config === 'object' ? raw.config : {}) as Record<string, unknown>
  const out: ImageRuntimeConfig = {
    env: stringList(c.Env),
    entrypoint: stringList(c.Entrypoint),
    cmd: stringList(c.Cmd),
    workingDir: typeof c.WorkingDir === 'string' && c.WorkingDir !== '' ? c.WorkingDir : '/',
    user: typeof c.User === 'string' ? c.User : '',
  }
  if (typeof c.StopSignal === 'string' && c.StopSignal !== '') out.stopSignal = c.StopSignal
  return out
}

export interface ProcessOverrides {
  /** replaces the image's Cmd */
  command?: string[]
  /** replaces the image's Entrypoint (and then the image's Cmd is not used) */
  entrypoint?: string[]
  /** `K=V`, replacing the image's value of K */
  env?: string[]
  workingDir?: string
  /** `uid[:gid]` or names from the image's /etc/passwd and /etc/group */
  user?: string
}

/** Docker's rule: Entrypoint + Cmd, where an overridden Entrypoint drops the image's Cmd. */
export function processArgs(image: ImageRuntimeConfig, o: ProcessOverrides, what: string): string[] {
  const entrypoint = o.entrypoint ?? image.entrypoint
  const cmd = o.command ?? (o.entrypoint !== undefined ? [] : image.cmd)
  const args = [...entrypoint, ...cmd]
  if (args.length === 0 || args[0] === '') {
    throw new TessError('TESS_E_INVALID', `cannot run ${what}: no command: the image has no Entrypoint or Cmd and none was given`, 'give a command to run')
  }
  if (args.length > containerArgsMax) throw new TessError('TESS_E_INVALID', `cannot run ${what}: ${args.length} arguments, more than ${containerArgsMax}`, 'pass fewer arguments')
  const bytes = args.reduce((n, a) => n + Buffer.byteLength(a) + 1, 0)
  if (bytes > containerArgBytesMax) throw new TessError('TESS_E_INVALID', `cannot run ${what}: the arguments take ${bytes} bytes, more than ${containerArgBytesMax}`, 'pass less on the command line (use a file in a volume)')
  return args
}

const envKey = (kv: string): string => {
  const i = kv.indexOf('=')
  return i < 0 ? kv : kv.slice(0, i)
}

/** Check `K=V` entries: a non-empty name without `=` or NUL. */
export function checkEnv(env: string[], what: string): void {
  if (env.length > containerEnvMax) throw new TessError('TESS_E_INVALID', `cannot run ${what}: ${env.length} environment variables, more than ${containerEnvMax}`, 'pass fewer variables')
  for (const kv of env) {
    if (!/^[^=\0]+=[^\0]*$/.test(kv)) {
      throw new TessError('TESS_E_INVALID', `cannot run ${what}: invalid environment entry "${kv}"`, 'write environment variables as NAME=value')
    }
  }
}

/** The image's env, then the overrides (same name replaces, in place), then defaults for PATH, HOSTNAME, HOME. */
export function mergeEnv(base: string[], overrides: string[], defaults: Record<string, string> = {}): string[] {
  const order: string[] = []
  const values = new Map<string, string>()
  for (const kv of [...base, ...overrides]) {
    const k = envKey(kv)
    if (!values.has(k)) order.push(k)
    values.set(k, kv)
  }
  for (const [k, v] of Object.entries(defaults)) {
    if (!values.has(k)) {
      order.push(k)
      values.set(k, `${k}=${v}`)
    }
  }
  return order.map((k) => values.get(k)!)
}

export function envValue(env: string[], key: string): string | undefined {
  for (let i = env.length - 1; i >= 0; i--) {
    const kv = env[i]!
    if (envKey(kv) === key) return kv.slice(key.length + 1)
  }
  return undefined
}

// ---------------------------------------------------------------------------------------------
// users

export interface PasswdEntry { name: string, uid: number, gid: number, home: string }
export interface GroupEntry { name: string, gid: number, members: string[] }

export function parsePasswd(text: string): PasswdEntry[] {
  const out: PasswdEntry[] = []
  for (const line of text.split('\n')) {
    const f = line.split(':')
    if (f.length < 7 || line.startsWith('#')) continue
    const uid = Number(f[2])
    const gid = Number(f[3])
    if (!Number.isSafeInteger(uid) || !Number.isSafeInteger(gid) || f[2] === '' || f[3] === '') continue
    out.push({ name: f[0]!, uid, gid, home: f[5]! })
  }
  return out
}

export function parseGroup(text: string): GroupEntry[] {
  const out: GroupEntry[] = []
  for (const line of text.split('\n')) {
    const f = line.split(':')
    if (f.length < 4 || line.startsWith('#') || f[2] === '') continue
    const gid = Number(f[2])
    if (!Number.isSafeInteger(gid)) continue
    out.push({ name: f[0]!, gid, members: f[3]!.split(',').map((m) => m.trim()).filter((m) => m !== '') })
  }
  return out
}

export interface ResolvedUser extends OciUser {
  home?: string
}

const idMax = 2 ** 32 - 2

/**
 * Resolve `user[:group]` (numbers or names) with the image's /etc/passwd and /etc/group texts
 * (undefined when the image has none). An empty spec is root.
 */
export function resolveUserSpec(spec: string, passwdText: string | undefined, groupText: string | undefined, what: string): ResolvedUser {
  const passwd = parsePasswd(passwdText ?? '')
  const groups = parseGroup(groupText ?? '')
  const [userPart = '', groupPart] = spec === '' ? ['0'] : spec.split(':', 2)
  const isNum = (s: string) => /^\d+$/.test(s) && Number(s) <= idMax
  let uid: number
  let gid: number | undefined
  let entry: PasswdEntry | undefined
  if (isNum(userPart)) {
    uid = Number(userPart)
    entry = passwd.find((p) => p.uid === uid)
  } else {
    entry = passwd.find((p) => p.name === userPart)
    if (entry === undefined) {
      throw new TessError('TESS_E_NOT_FOUND', `cannot run ${what}: user "${userPart}" is not in the image's /etc/passwd`, 'give a numeric uid[:gid] or a user the image defines')
    }
    uid = entry.uid
  }
  if (groupPart !== undefined && groupPart !== '') {
    if (isNum(groupPart)) {
      gid = Number(groupPart)
    } else {
      const g = groups.find((x) => x.name === groupPart)
      if (g === undefined) {
        throw new TessError('TESS_E_NOT_FOUND', `cannot run ${what}: group "${groupPart}" is not in the image's /etc/group`, 'give a numeric gid or a group the image defines')
      }
      gid = g.gid
    }
  }
  gid ??= entry?.gid ?? 0
  const out: ResolvedUser = { uid, gid }
  if (entry !== undefined) {
    const extra = groups.filter((g) => g.members.includes(entry.name) && g.gid !== gid).map((g) => g.gid)
    if (extra.length > 0) out.additionalGids = [...new Set(extra)]
    if (entry.home !== '') out.home = entry.home
  }
  return out
}

/** resolveUserSpec with the files read from the rootfs (symlinks resolved inside it). */
export async function resolveUser(rootfs: string, spec: string, what: string): Promise<ResolvedUser> {
  const read = async (p: string) => {
    const host = await resolveInRoot(rootfs, p)
    if (host === undefined) return undefined
    try {
      const st = await fsp.stat(host)
      if (!st.isFile() || st.size > passwdFileSizeMaxBytes) return undefined
      return await fsp.readFile(host, 'utf8')
    } catch {
      return undefined
    }
  }
  return resolveUserSpec(spec, await read('/etc/passwd'), await read('/etc/group'), what)
}

// ---------------------------------------------------------------------------------------------
// paths inside a rootfs

/**
 * The host path of `p` inside `root`, following symlinks as the container would see them
 * (absolute targets and `..` stay inside the root). undefined when a component does not exist,
 * is not a directory where one is needed, or there are too many links.
 */
export async function resolveInRoot(root: string, p: string): Promise<string | undefined> {
  const queue = p.split('/').filter((c) => c !== '' && c !== '.')
  const cur: string[] = []
  let links = 0
  while (queue.length > 0) {
    const c = queue.shift()!
    if (c === '.') continue
    if (c === '..') {
      cur.pop()
      continue
    }
    const host = path.join(root, ...cur, c)
    let st
    try {
      st = await fsp.lstat(host)
    } catch {
      return undefined
    }
    if (st.isSymbolicLink()) {
      if (++links > symlinksFollowMax) return undefined
      const target = await fsp.readlink(host)
      if (target.startsWith('/')) cur.length = 0
      queue.unshift(...target.split('/').filter((x) => x !== '' && x !== '.'))
      continue
    }
    if (queue.length > 0 && !st.isDirectory()) return undefined
    cur.push(c)
  }
  return path.join(root, ...cur)
}

/**
 * Find the executable the runtime would run for argv[0], as the container sees it: a path with a
 * slash is taken from the working directory, a bare name is searched in the container's PATH.
 * Returns the path inside the container, or undefined.
 */
export async function resolveExecutable(rootfs: string, argv0: string, env: string[], cwd: string): Promise<string | undefined> {
  const isExec = async (p: string) => {
    const host = await resolveInRoot(rootfs, p)
    if (host === undefined) return false
    try {
      const st = await fsp.stat(host)
      return st.isFile() && (st.mode & 0o111) !== 0
    } catch {
      return false
    }
  }
  if (argv0.includes('/')) {
    const p = path.posix.isAbsolute(argv0) ? argv0 : path.posix.join(cwd, argv0)
    return (await isExec(p)) ? p : undefined
  }
  const search = envValue(env, 'PATH') ?? defaultPath
  for (const dir of search.split(':')) {
    const d = dir === '' ? '.' : dir
    const p = path.posix.isAbsolute(d) ? path.posix.join(d, argv0) : path.posix.join(cwd, d, argv0)
    if (await isExec(p)) return p
  }
  return undefined
}

// ---------------------------------------------------------------------------------------------
// rlimits

const procLimitNames: Record<string, string> = {
  'Max cpu time': 'RLIMIT_CPU',
  'Max file size': 'RLIMIT_FSIZE',
  'Max data size': 'RLIMIT_DATA',
  'Max stack size': 'RLIMIT_STACK',
  'Max core file size': 'RLIMIT_CORE',
  'Max resident set': 'RLIMIT_RSS',
  'Max processes': 'RLIMIT_NPROC',
  'Max open files': 'RLIMIT_NOFILE',
  'Max locked memory': 'RLIMIT_MEMLOCK',
  'Max address space': 'RLIMIT_AS',
  'Max file locks': 'RLIMIT_LOCKS',
  'Max pending signals': 'RLIMIT_SIGPENDING',
  'Max msgqueue size': 'RLIMIT_MSGQUEUE',
  'Max nice priority': 'RLIMIT_NICE',
  'Max realtime priority': 'RLIMIT_RTPRIO',
  'Max realtime timeout': 'RLIMIT_RTTIME',
}

export const rlimitTypes: ReadonlySet<string> = new Set(Object.values(procLimitNames))

/** Soft and hard limits; Infinity is "unlimited". */
export type HostRlimits = Map<string, { soft: number, hard: number }>

/** Parse /proc/<pid>/limits. */
export function parseProcLimits(text: string): HostRlimits {
  const out: HostRlimits = new Map()
  for (const line of text.split('\n')) {
    const m = /^(Max [a-z ]+?)\s{2,}(\S+)\s+(\S+)/.exec(line)
    if (m === null) continue
    const type = procLimitNames[m[1]!]
    if (type === undefined) continue
    const v = (s: string) => (s === 'unlimited' ? Infinity : Number(s))
    const soft = v(m[2]!)
    const hard = v(m[3]!)
    if (Number.isNaN(soft) || Number.isNaN(hard)) continue
    out.set(type, { soft, hard })
  }
  return out
}

/** The limits the runtime will start with: ours (it inherits them). */
export async function readHostRlimits(file = '/proc/self/limits'): Promise<HostRlimits> {
  return parseProcLimits(await fsp.readFile(file, 'utf8'))
}

export const defaultRlimits: readonly OciRlimit[] = [{ type: 'RLIMIT_NOFILE', soft: containerNofileDefault, hard: containerNofileDefault }]

/**
 * Merge asked rlimits over the defaults and clamp every hard limit to the host's hard limit and
 * every soft limit to its hard limit. `clamped` names what was lowered (for a log line).
 */
export function clampRlimits(asked: readonly OciRlimit[], host: HostRlimits, what = 'the container'): { rlimits: OciRlimit[], clamped: string[] } {
  const byType = new Map<string, OciRlimit>()
  for (const r of [...defaultRlimits, ...asked]) {
    if (!rlimitTypes.has(r.type)) {
      throw new TessError('TESS_E_INVALID', `invalid rlimit for ${what}: unknown type "${r.type}"`, `use one of ${[...rlimitTypes].join(', ')}`)
    }
    if (!Number.isSafeInteger(r.soft) || !Number.isSafeInteger(r.hard) || r.soft < 0 || r.hard < 0 || r.soft > r.hard) {
      throw new TessError('TESS_E_INVALID', `invalid rlimit ${r.type} for ${what}: soft ${r.soft}, hard ${r.hard}`, 'give whole numbers with soft <= hard')
    }
    byType.set(r.type, { ...r })
  }
  const clamped: string[] = []
  const rlimits = [...byType.values()].map((r) => {
    const hostHard = host.get(r.type)?.hard ?? Infinity
    const hard = Math.min(r.hard, hostHard)
    const soft = Math.min(r.soft, hard)
    if (hard !== r.hard || soft !== r.soft) clamped.push(`${r.type} ${r.soft}/${r.hard} -> ${soft}/${hard}`)
    return { type: r.type, soft, hard }
  })
  return { rlimits, clamped }
}

// ---------------------------------------------------------------------------------------------
// config.json

export type { NetworkMode }

export interface SpecInput {
  /** container name: hostname and HOSTNAME */
  hostname: string
  image: ImageRuntimeConfig
  overrides: ProcessOverrides
  user: ResolvedUser
  network: NetworkMode
  /** the container's cgroup, below its CSM's */
  cgroupsPath: string
  cgroupVersion: 1 | 2
  cpus?: number
  memoryBytes?: number
  /** the host can limit memory+swap: the container then gets no swap beyond its memory limit */
  swapAccounting: boolean
  pidsMax: number
  /** already clamped (clampRlimits) */
  rlimits: OciRlimit[]
  /** host files bind-mounted over /etc/hosts, /etc/hostname, /etc/resolv.conf */
  etcFiles?: { hosts: string, hostname: string, resolvConf: string }
  /** more mounts after the standard ones (volumes) */
  extraMounts?: OciMount[]
  annotations?: Record<string, string>
  /** a user namespace: the container's ids 0..size-1 are the host's hostId.. (userns.ts) */
  userns?: { hostId: number, size: number }
}

/** The container's config.json (pure). */
export function buildOciSpec(input: SpecInput): OciSpec {
  const what = `container "${input.hostname}"`
  assert(input.cgroupsPath.startsWith('/'), 'cgroupsPath is absolute')
  if (input.hostname.length > hostnameLengthMax) {
    throw new TessError('TESS_E_INVALID', `cannot run ${what}: the name is longer than ${hostnameLengthMax} characters`, 'use a shorter name')
  }
  const overrideEnv = input.overrides.env ?? []
  checkEnv(input.image.env, `${what} (image env)`)
  checkEnv(overrideEnv, what)
  const env = mergeEnv(input.image.env, overrideEnv, { PATH: defaultPath, HOSTNAME: input.hostname, HOME: input.user.home ?? '/' })
  const args = processArgs(input.image, input.overrides, what)
  const cwd = input.overrides.workingDir ?? input.image.workingDir
  if (!cwd.startsWith('/')) throw new TessError('TESS_E_INVALID', `cannot run ${what}: working directory "${cwd}" is not absolute`, 'give an absolute path')
  const caps = [...defaultCapabilities]
  const namespaces = [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }]
  if (input.network === 'none') namespaces.push({ type: 'network' })
  if (input.cgroupVersion === 2) namespaces.push({ type: 'cgroup' })
  if (input.userns !== undefined) namespaces.push({ type: 'user' })
  const resources: OciResources = { devices: [{ allow: false, access: 'rwm' }], pids: { limit: input.pidsMax } }
  if (input.cpus !== undefined) resources.cpu = { quota: Math.max(cpuQuotaMinUs, Math.round(input.cpus * cpuPeriodUs)), period: cpuPeriodUs }
  if (input.memoryBytes !== undefined) {
    resources.memory = { limit: input.memoryBytes }
    if (input.swapAccounting) resources.memory.swap = input.memoryBytes
  }
  let mounts = standardMounts()
  if (input.userns !== undefined && input.network === 'host') {
    // sysfs can only be mounted by the user namespace that owns the network namespace: with the
    // host's network the container gets the host's /sys bound read-only instead (as Docker does)
    mounts = mounts.map((m) => (m.destination === '/sys' ? { destination: '/sys', type: 'bind', source: '/sys', options: ['rbind', 'nosuid', 'noexec', 'nodev', 'ro'] } : m))
  }
  if (input.etcFiles !== undefined) {
    const bind = (destination: string, source: string): OciMount => ({ destination, type: 'bind', source, options: ['rbind', 'rprivate'] })
    mounts.push(bind('/etc/hosts', input.etcFiles.hosts), bind('/etc/hostname', input.etcFiles.hostname), bind('/etc/resolv.conf', input.etcFiles.resolvConf))
  }
  for (const m of input.extraMounts ?? []) mounts.push({ ...m, ...(m.options !== undefined ? { options: [...m.options] } : {}) })
  const user: OciUser = { uid: input.user.uid, gid: input.user.gid }
  if (input.user.additionalGids !== undefined && input.user.additionalGids.length > 0) user.additionalGids = [...input.user.additionalGids]
  const spec: OciSpec = {
    ociVersion,
    process: {
      terminal: false,
      user,
      args,
      env,
      cwd,
      capabilities: { bounding: caps, effective: [...caps], permitted: [...caps] },
      rlimits: input.rlimits.map((r) => ({ ...r })),
      noNewPrivileges: true,
    },
    root: { path: 'rootfs', readonly: false },
    hostname: input.hostname,
    mounts,
    linux: {
      namespaces,
      cgroupsPath: input.cgroupsPath,
      resources,
      maskedPaths: [...defaultMaskedPaths],
      readonlyPaths: [...defaultReadonlyPaths],
      seccomp: defaultSeccompProfile(),
    },
  }
  if (input.annotations !== undefined) spec.annotations = { ...input.annotations }
  if (input.userns !== undefined) {
    assert(Number.isSafeInteger(input.userns.hostId) && input.userns.hostId > 0 && input.userns.size > 0, 'a user namespace maps to unprivileged host ids')
    spec.linux.uidMappings = [{ containerID: 0, hostID: input.userns.hostId, size: input.userns.size }]
    spec.linux.gidMappings = [{ containerID: 0, hostID: input.userns.hostId, size: input.userns.size }]
  }
  return spec
}

// ---------------------------------------------------------------------------------------------
// /etc files

/** /etc/hosts: loopback names and the container's own name; with host networking, the host's file plus the name. */
export function hostsFile(hostname: string, network: NetworkMode, hostHosts?: string): string {
  if (network === 'host' && hostHosts !== undefined) {
    const names = new Set(hostHosts.split('\n').filter((l) => !l.trimStart().startsWith('#')).flatMap((l) => l.trim().split(/\s+/).slice(1)))
    return names.has(hostname) ? hostHosts : `${hostHosts.replace(/\n?$/, '\n')}127.0.1.1\t${hostname}\n`
  }
  return `127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t${hostname}\n`
}

/** /etc/resolv.conf: none for a container without network (nothing to ask), the host's otherwise. */
export function resolvConf(network: NetworkMode, hostResolv?: string): string {
  if (network === 'host' && hostResolv !== undefined) return hostResolv
  return '# this container has no network (network "none"): no name servers\n'
}

// ---------------------------------------------------------------------------------------------
// overlay rootfs

export interface OverlayPlan {
  /** the -o argument of mount */
  options: string
  /** run mount here (relative paths in options) */
  cwd?: string
  /** short symlinks to create first: link (absolute) -> target */
  links: Array<{ link: string, target: string }>
}

/**
 * Overlay mount options for layers (top-most first) under upperdir/workdir. When the absolute
 * form does not fit in `maxBytes`, short symlinks `<dir>/l/<i>` and paths relative to `dir`
 * (the container directory that holds upperdir and workdir) are used.
 */
export function overlayMountPlan(lowerdirs: string[], upperdir: string, workdir: string, dir: string, maxBytes = mountOptionsMaxBytes): OverlayPlan {
  assert(lowerdirs.length > 0, 'an overlay has at least one lower layer')
  for (const p of [...lowerdirs, upperdir, workdir, dir]) {
    assert(path.isAbsolute(p) && !/[,:\\\n]/.test(p), `overlay path "${p}" is absolute without , : \\ or newline`)
  }
  const absolute = `lowerdir=${lowerdirs.join(':')},upperdir=${upperdir},workdir=${workdir}`
  if (Buffer.byteLength(absolute) <= maxBytes) return { options: absolute, links: [] }
  const links = lowerdirs.map((target, i) => ({ link: path.join(dir, 'l', String(i)), target }))
  const rel = (p: string) => path.relative(dir, p)
  const short = `lowerdir=${links.map((l) => rel(l.link)).join(':')},upperdir=${rel(upperdir)},workdir=${rel(workdir)}`
  if (Buffer.byteLength(short) > maxBytes) {
    throw new TessError('TESS_E_INVALID', `cannot mount a rootfs of ${lowerdirs.length} layers: even short overlay options take ${Buffer.byteLength(short)} bytes, more than ${maxBytes}`,
      'flatten the image into fewer layers')
  }
  return { options: short, cwd: dir, links }
}

/** Mount the overlay at `target` (created if missing). */
export async function mountOverlay(plan: OverlayPlan, target: string): Promise<void> {
  await fsp.mkdir(target, { recursive: true })
  for (const l of plan.links) {
    await fsp.mkdir(path.dirname(l.link), { recursive: true })
    await fsp.rm(l.link, { force: true })
    await fsp.symlink(l.target, l.link)
  }
  const native = mountAddon.binding
  // (an addon built before overlayMount existed lacks it: the command then)
  if (native?.overlayMount !== undefined && plan.cwd === undefined) {
    // the mount(2) call itself, no mount process to start (options with relative paths need that
    // process's cwd). Unmounts stay with the umount command: an overlay's unmount syncs its upper
    // file system, which may take long, and must not hold the daemon's thread
    try {
      native.overlayMount(target, plan.options)
      return
    } catch (e) {
      throw new TessError('TESS_E_IO', `cannot mount the rootfs overlay at ${target}: ${errorMessage(e)}`,
        'the daemon must run as root on a kernel with overlayfs; the layers must be unpacked')
    }
  }
  const r = await execCommand('mount', ['-t', 'overlay', 'overlay', '-o', plan.options, target], plan.cwd !== undefined ? { cwd: plan.cwd } : {})
  if (r.code !== 0) {
    throw new TessError('TESS_E_IO', `cannot mount the rootfs overlay at ${target}: ${(r.stderr || r.stdout).trim()}`,
      'the daemon must run as root on a kernel with overlayfs; the layers must be unpacked')
  }
}

/** Mount points in our mount namespace at or below `dir`. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8')
  const d = path.resolve(dir)
  return parseMountinfo(text).map((m) => m.mountPoint).filter((p) => p === d || p.startsWith(`${d}/`))
}

export async function isMountPoint(p: string): Promise<boolean> {
  const d = path.resolve(p)
  return (await mountsUnder(d)).includes(d)
}

/** Unmount `target` if mounted (lazily as a last resort when it stays busy). */
export async function unmount(target: string, retries = 10): Promise<void> {
  for (let attempt = 0; await isMountPoint(target); attempt++) {
    const lazy = attempt >= retries
    const r = await execCommand('umount', lazy ? ['-l', target] : [target])
    if (r.code === 0) continue
    if (lazy) throw new TessError('TESS_E_IO', `cannot unmount ${target}: ${(r.stderr || r.stdout).trim()}`, 'find what holds it (fuser -m) and unmount it by hand')
    await new Promise((res) => setTimeout(res, 50))
  }
}

/** Write config.json atomically. */
export async function writeSpec(bundleDir: string, spec: OciSpec): Promise<void> {
  try {
    await writeFileAtomic(path.join(bundleDir, 'config.json'), `${JSON.stringify(spec, null, 2)}\n`, 0o600)
  } catch (e) {
    if (e instanceof TessError) throw e
    throw new TessError('TESS_E_IO', `cannot write ${path.join(bundleDir, 'config.json')}: ${errorMessage(e)}`, 'check the disk of the CSM state directory')
  }
}
