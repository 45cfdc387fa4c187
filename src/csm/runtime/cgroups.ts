import fsp from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { TessError, assert, errorMessage } from '../../lib/errors.js'
import { checkName } from '../../lib/names.js'
import type { HostCapacity } from '../../lib/csm-types.js'
import { mib, round2 } from '../../lib/units.js'
import {
  cgroupFileSizeMaxBytes, cgroupRmdirRetriesMax, cgroupRmdirRetryMs, cgroupTreeDepthMax, cpuPeriodUs, cpuQuotaMinUs, cpusMin,
  memoryLimitMinBytes, pidsMaxLimit,
} from './limits.js'

/**
 * Control groups of a CSM and its containers, on cgroup v1 (including the hybrid layout these
 * machines use: v1 controllers plus an empty cgroup2 at /sys/fs/cgroup/unified) and v2.
 *
 * A CSM owns the subtree `<parent>/csm-<name>` (parent `/tess` by default): v1 directories in the
 * cpu, cpuacct, memory and pids hierarchies, or one v2 directory with the controllers enabled in
 * cgroup.subtree_control. Its CPU quota, memory limit and pids limit cap ALL its containers
 * together, because each container's cgroup is a child (`<parent>/csm-<name>/<container id>`,
 * the cgroupsPath the OCI runtime gets; the runtime creates it, and also creates the ancestors in
 * every other v1 hierarchy it joins: devices, freezer, blkio, ...). Removal therefore walks every
 * mounted hierarchy.
 *
 * Paths given to this module are cgroup paths (absolute, from the hierarchy root, like an OCI
 * cgroupsPath); a hierarchy's directory for one is its mount point joined with it, as runc does.
 */

export type CgroupMode = 'v1' | 'hybrid' | 'v2'

export interface MountInfoEntry {
  id: number
  parentId: number
  /** "major:minor" of the file system's device (st_dev of its files) */
  device: string
  /** root of the mount inside its filesystem */
  root: string
  mountPoint: string
  mountOptions: string[]
  fsType: string
  source: string
  superOptions: string[]
}

/** The v1 controllers of Linux (a `name=...` hierarchy has none). */
export const v1ControllerNames: ReadonlySet<string> = new Set([
  'cpu', 'cpuacct', 'cpuset', 'memory', 'devices', 'freezer', 'net_cls', 'net_prio', 'blkio', 'perf_event', 'hugetlb', 'pids', 'rdma', 'misc',
])

export interface CgroupLayout {
  mode: CgroupMode
  /** v1: controller (or `name=systemd`) -> mount point; co-mounted controllers share one */
  v1: Record<string, string>
  /** the cgroup2 mount: the only hierarchy in v2, `/sys/fs/cgroup/unified` (usually) in hybrid */
  unified?: string
}

/** Resource limits of a cgroup. undefined: leave as it is; null: no limit. */
export interface CgroupLimits {
  cpus?: number | null
  memoryBytes?: number | null
  pidsMax?: number | null
}

/** Limits as read back; a missing field is "no limit". */
export interface CgroupLimitsRead {
  cpus?: number
  memoryBytes?: number
  pidsMax?: number
}

export interface CgroupStats {
  /** total CPU time of the cgroup and its descendants */
  cpuUsageNs: number
  cpuUserNs?: number
  cpuSystemNs?: number
  /** CFS enforcement periods, and how many of them throttled this cgroup */
  cpuPeriods: number
  cpuThrottledPeriods: number
  cpuThrottledNs: number
  /** quota / period; undefined: no CPU limit */
  cpuLimitCpus?: number
  memoryUsageBytes: number
  /** usage minus inactive file cache (what the OOM killer looks at, roughly) */
  memoryWorkingSetBytes?: number
  /** undefined: no limit */
  memoryLimitBytes?: number
  /** high-water mark (v1 max_usage_in_bytes, v2 memory.peak when the kernel has it) */
  memoryMaxUsageBytes?: number
  /** processes the OOM killer killed in this cgroup */
  oomKills: number
  pidsCurrent: number
  /** undefined: no limit */
  pidsLimit?: number
}

export type { HostCapacity }

// ---------------------------------------------------------------------------------------------
// parsing (pure)

/** Undo the octal escapes of /proc/self/mountinfo (space, tab, newline, backslash). */
export function unescapeMountPath(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)))
}

export function parseMountinfo(text: string): MountInfoEntry[] {
  const out: MountInfoEntry[] = []
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue
    const sep = line.indexOf(' - ')
    if (sep < 0) continue
    const left = line.slice(0, sep).split(' ')
    const right = line.slice(sep + 3).split(' ')
    if (left.length < 6 || right.length < 3) continue
    out.push({
      id: Number(left[0]),
      parentId: Number(left[1]),
      device: left[2]!,
      root: unescapeMountPath(left[3]!),
      mountPoint: unescapeMountPath(left[4]!),
      mountOptions: left[5]!.split(','),
      fsType: right[0]!,
      source: unescapeMountPath(right[1]!),
      superOptions: right.slice(2).join(' ').split(','),
    })
  }
  return out
}

/**
 * Tell v1, hybrid and v2 apart from the mount table, the way runc does: the host is v2 only when
 * no v1 controller hierarchy is mounted and a cgroup2 filesystem is.
 */
export function cgroupLayoutFromMountinfo(entries: MountInfoEntry[]): CgroupLayout {
  const v1: Record<string, string> = {}
  let unified: string | undefined
  for (const e of entries) {
    if (e.fsType === 'cgroup') {
      for (const opt of e.superOptions) {
        if ((v1ControllerNames.has(opt) || opt.startsWith('name=')) && v1[opt] === undefined) v1[opt] = e.mountPoint
      }
    } else if (e.fsType === 'cgroup2') {
      // prefer the canonical mount point when cgroup2 is mounted more than once
      if (unified === undefined || e.mountPoint === '/sys/fs/cgroup') unified = e.mountPoint
    }
  }
  const hasV1Controllers = Object.keys(v1).some((k) => v1ControllerNames.has(k))
  if (hasV1Controllers) return { mode: unified !== undefined ? 'hybrid' : 'v1', v1, ...(unified !== undefined ? { unified } : {}) }
  if (unified !== undefined) return { mode: 'v2', v1: {}, unified }
  throw new TessError('TESS_E_PRECONDITION', 'cannot use cgroups: no cgroup or cgroup2 filesystem is mounted',
    'mount cgroup2 at /sys/fs/cgroup (or the v1 hierarchies under it), as the init system usually does')
}

/** `key value` lines (cpu.stat, memory.stat, memory.events, memory.oom_control) -> numbers. */
export function parseFlatKeyed(text: string): Map<string, number> {
  const out = new Map<string, number>()
  for (const line of text.split('\n')) {
    const m = /^(\S+)\s+(-?\d+)\s*$/.exec(line)
    if (m !== null) out.set(m[1]!, Number(m[2]))
  }
  return out
}

/** A single number; undefined for "max", -1, and the v1 "unlimited" values (>= 2^62). */
export function parseLimitValue(text: string | undefined): number | undefined {
  if (text === undefined) return undefined
  const t = text.trim()
  if (t === '' || t === 'max' || t === '-1') return undefined
  const n = Number(t)
  if (!Number.isFinite(n) || n < 0 || n >= 2 ** 62) return undefined
  return n
}

function parseNumber(text: string | undefined): number | undefined {
  if (text === undefined) return undefined
  const t = text.trim()
  if (!/^\d+$/.test(t)) return undefined
  return Number(t)
}

/** Files read for v1 stats, by hierarchy. */
export const v1StatFiles = [
  'cpuacct.usage', 'cpuacct.usage_user', 'cpuacct.usage_sys', 'cpuacct.stat',
  'cpu.stat', 'cpu.cfs_quota_us', 'cpu.cfs_period_us',
  'memory.usage_in_bytes', 'memory.limit_in_bytes', 'memory.max_usage_in_bytes', 'memory.oom_control', 'memory.stat',
  'pids.current', 'pids.max',
] as const
export type V1StatFile = typeof v1StatFiles[number]

export const v2StatFiles = ['cpu.stat', 'cpu.max', 'memory.current', 'memory.max', 'memory.peak', 'memory.events', 'memory.stat', 'pids.current', 'pids.max'] as const
export type V2StatFile = typeof v2StatFiles[number]

/** USER_HZ of cpuacct.stat (100 on every Linux architecture we run on) */
const userHz = 100

/** Stats from the v1 files' contents (a missing file is a missing controller). */
export function statsFromV1(files: Partial<Record<V1StatFile, string>>): CgroupStats {
  const cpuStat = parseFlatKeyed(files['cpu.stat'] ?? '')
  const acct = parseFlatKeyed(files['cpuacct.stat'] ?? '')
  const mem = parseFlatKeyed(files['memory.stat'] ?? '')
  const oom = parseFlatKeyed(files['memory.oom_control'] ?? '')
  const quota = parseLimitValue(files['cpu.cfs_quota_us'])
  const period = parseNumber(files['cpu.cfs_period_us'])
  const usage = parseNumber(files['memory.usage_in_bytes']) ?? 0
  const inactiveFile = mem.get('total_inactive_file') ?? mem.get('inactive_file')
  const user = parseNumber(files['cpuacct.usage_user']) ?? (acct.has('user') ? acct.get('user')! * (1e9 / userHz) : undefined)
  const sys = parseNumber(files['cpuacct.usage_sys']) ?? (acct.has('system') ? acct.get('system')! * (1e9 / userHz) : undefined)
  const s: CgroupStats = {
    cpuUsageNs: parseNumber(files['cpuacct.usage']) ?? 0,
    cpuPeriods: cpuStat.get('nr_periods') ?? 0,
    cpuThrottledPeriods: cpuStat.get('nr_throttled') ?? 0,
    cpuThrottledNs: cpuStat.get('throttled_time') ?? 0,
    memoryUsageBytes: usage,
    oomKills: oom.get('oom_kill') ?? 0,
    pidsCurrent: parseNumber(files['pids.current']) ?? 0,
  }
  if (user !== undefined) s.cpuUserNs = user
  if (sys !== undefined) s.cpuSystemNs = sys
  if (quota !== undefined && period !== undefined && period > 0) s.cpuLimitCpus = quota / period
  if (inactiveFile !== undefined) s.memoryWorkingSetBytes = Math.max(0, usage - inactiveFile)
  const limit = parseLimitValue(files['memory.limit_in_bytes'])
  if (limit !== undefined) s.memoryLimitBytes = limit
  const max = parseNumber(files['memory.max_usage_in_bytes'])
  if (max !== undefined) s.memoryMaxUsageBytes = max
  const pidsLimit = parseLimitValue(files['pids.max'])
  if (pidsLimit !== undefined) s.pidsLimit = pidsLimit
  return s
}

/** Stats from the v2 files' contents. */
export function statsFromV2(files: Partial<Record<V2StatFile, string>>): CgroupStats {
  const cpuStat = parseFlatKeyed(files['cpu.stat'] ?? '')
  const mem = parseFlatKeyed(files['memory.stat'] ?? '')
  const events = parseFlatKeyed(files['memory.events'] ?? '')
  const usage = parseNumber(files['memory.current']) ?? 0
  const us = (k: string) => (cpuStat.has(k) ? cpuStat.get(k)! * 1000 : undefined)
  const s: CgroupStats = {
    cpuUsageNs: us('usage_usec') ?? 0,
    cpuPeriods: cpuStat.get('nr_periods') ?? 0,
    cpuThrottledPeriods: cpuStat.get('nr_throttled') ?? 0,
    cpuThrottledNs: us('throttled_usec') ?? 0,
    memoryUsageBytes: usage,
    oomKills: events.get('oom_kill') ?? 0,
    pidsCurrent: parseNumber(files['pids.current']) ?? 0,
  }
  const user = us('user_usec')
  const sys = us('system_usec')
  if (user !== undefined) s.cpuUserNs = user
  if (sys !== undefined) s.cpuSystemNs = sys
  const cpuMax = (files['cpu.max'] ?? '').trim().split(/\s+/)
  const quota = parseLimitValue(cpuMax[0])
  const period = parseNumber(cpuMax[1])
  if (quota !== undefined && period !== undefined && period > 0) s.cpuLimitCpus = quota / period
  const inactiveFile = mem.get('inactive_file')
  if (inactiveFile !== undefined) s.memoryWorkingSetBytes = Math.max(0, usage - inactiveFile)
  const limit = parseLimitValue(files['memory.max'])
  if (limit !== undefined) s.memoryLimitBytes = limit
  const peak = parseNumber(files['memory.peak'])
  if (peak !== undefined) s.memoryMaxUsageBytes = peak
  const pidsLimit = parseLimitValue(files['pids.max'])
  if (pidsLimit !== undefined) s.pidsLimit = pidsLimit
  return s
}

/** Number of CPUs in a cpuset list such as `0-3,8,10-11`. */
export function parseCpuList(text: string): number {
  let n = 0
  for (const part of text.trim().split(',')) {
    if (part === '') continue
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim())
    if (m === null) throw new TessError('TESS_E_INVALID', `cannot parse the CPU list "${text.trim()}"`, 'expected a list such as 0-3,8')
    const a = Number(m[1])
    const b = m[2] !== undefined ? Number(m[2]) : a
    if (b < a) throw new TessError('TESS_E_INVALID', `cannot parse the CPU list "${text.trim()}": range ${part} is backwards`, 'expected a list such as 0-3,8')
    n += b - a + 1
  }
  return n
}

/** MemTotal of /proc/meminfo in bytes. */
export function parseMemTotal(meminfo: string): number {
  const m = /^MemTotal:\s+(\d+)\s*kB/m.exec(meminfo)
  if (m === null) throw new TessError('TESS_E_IO', 'cannot read MemTotal from /proc/meminfo', 'is /proc mounted?')
  return Number(m[1]) * 1024
}

/** The controllers crun would find on the cgroup2 hierarchy in hybrid mode (it refuses any). */
export function parseControllers(text: string): string[] {
  return text.trim().split(/\s+/).filter((c) => c !== '')
}

// ---------------------------------------------------------------------------------------------
// the host's cgroups

export interface CgroupHostOptions {
  /** text of /proc/self/mountinfo (default: read it) */
  mountinfo?: string
  /** cgroup path under which CSM cgroups are made (default `/tess`) */
  parent?: string
}

const cgroupPathPattern = /^(\/[A-Za-z0-9_.][A-Za-z0-9_.-]*)+$/

function checkCgroupPath(p: string): void {
  assert(cgroupPathPattern.test(p) && !p.split('/').includes('..') && !p.split('/').includes('.'), `cgroup path "${p}" is absolute and normalised`)
}

/** Controllers whose files we read and write (v1 hierarchies, or v2 controllers). */
type Managed = 'cpu' | 'cpuacct' | 'memory' | 'pids' | 'freezer'

export class CgroupHost {
  readonly layout: CgroupLayout
  readonly parent: string

  constructor(layout: CgroupLayout, opts: { parent?: string } = {}) {
    this.layout = layout
    this.parent = opts.parent ?? '/tess'
    checkCgroupPath(this.parent)
  }

  static async detect(opts: CgroupHostOptions = {}): Promise<CgroupHost> {
    const text = opts.mountinfo ?? await fsp.readFile('/proc/self/mountinfo', 'utf8')
    return new CgroupHost(cgroupLayoutFromMountinfo(parseMountinfo(text)), opts.parent !== undefined ? { parent: opts.parent } : {})
  }

  get mode(): CgroupMode {
    return this.layout.mode
  }

  /** the cgroup version the OCI runtime uses for resources */
  get version(): 1 | 2 {
    return this.layout.mode === 'v2' ? 2 : 1
  }

  /** Directory of a controller's files for a cgroup path; undefined when the controller is not mounted. */
  dir(controller: Managed, cgPath: string): string | undefined {
    checkCgroupPath(cgPath)
    if (this.version === 2) return path.join(this.layout.unified!, cgPath)
    const mount = this.layout.v1[controller]
    return mount === undefined ? undefined : path.join(mount, cgPath)
  }

  /** Every directory this cgroup path has in any mounted hierarchy (v1 and cgroup2), deduplicated. */
  allDirs(cgPath: string): string[] {
    checkCgroupPath(cgPath)
    const mounts = new Set<string>(Object.values(this.layout.v1))
    if (this.layout.unified !== undefined) mounts.add(this.layout.unified)
    return [...mounts].sort().map((m) => path.join(m, cgPath))
  }

  /** Directories in which a CSM's cgroup is created and limited. */
  private managedDirs(cgPath: string): string[] {
    if (this.version === 2) return [this.dir('cpu', cgPath)!]
    const out = new Set<string>()
    for (const c of ['cpu', 'cpuacct', 'memory', 'pids'] as const) {
      const d = this.dir(c, cgPath)
      if (d !== undefined) out.add(d)
    }
    return [...out]
  }

  csmPath(name: string): string {
    return `${this.parent}/csm-${name}`
  }

  /** A handle on the cgroup of an existing CSM (after a daemon restart); nothing is created. */
  csm(name: string): CsmCgroup {
    checkName('CSM', name)
    return new CsmCgroup(this, name, this.csmPath(name))
  }

  /**
   * Create (or take over, after a restart) a CSM's cgroup subtree and set its limits. A limit
   * larger than the host is refused with TESS_E_CAPACITY.
   */
  async createCsm(name: string, limits: CgroupLimits = {}): Promise<CsmCgroup> {
    checkName('CSM', name)
    const cgPath = this.csmPath(name)
    if (this.version === 1) {
      for (const c of ['cpu', 'memory'] as const) {
        if (this.layout.v1[c] === undefined) {
          throw new TessError('TESS_E_PRECONDITION', `cannot create the cgroup of CSM "${name}": the v1 ${c} controller is not mounted`,
            `mount it: mkdir -p /sys/fs/cgroup/${c} && mount -t cgroup -o ${c} cgroup /sys/fs/cgroup/${c}`)
        }
      }
    }
    const cap = await this.hostCapacity()
    checkLimitsAgainst(limits, cap, `CSM "${name}"`, 'the host')
    const existed = await this.exists(cgPath)
    try {
      if (this.version === 2) await this.enableV2Controllers(cgPath)
      for (const d of this.managedDirs(cgPath)) await fsp.mkdir(d, { recursive: true })
      await this.setLimits(cgPath, limits)
    } catch (e) {
      // a cgroup made here is not left behind half configured
      if (!existed) {
        await this.removeTree(cgPath).catch(() => undefined) // cleanup after the error thrown below
        await this.removeEmptyAncestors(cgPath)
      }
      if (e instanceof TessError) throw e
      throw new TessError('TESS_E_IO', `cannot create the cgroup ${cgPath} of CSM "${name}": ${errorMessage(e)}`, 'the daemon must run as root with the cgroup filesystems writable')
    }
    return new CsmCgroup(this, name, cgPath)
  }

  /** v2: enable cpu, memory and pids for the children of every cgroup from the root down to cgPath. */
  private async enableV2Controllers(cgPath: string): Promise<void> {
    const root = this.layout.unified!
    const parts = cgPath.split('/').filter((p) => p !== '')
    let dir = root
    for (let i = 0; i <= parts.length; i++) {
      if (i > 0) {
        dir = path.join(dir, parts[i - 1]!)
        await fsp.mkdir(dir, { recursive: true })
      }
      const available = new Set(parseControllers(await readSmall(path.join(dir, 'cgroup.controllers')) ?? ''))
      const enabled = new Set(parseControllers(await readSmall(path.join(dir, 'cgroup.subtree_control')) ?? ''))
      for (const c of ['cpu', 'memory', 'pids']) {
        if (!enabled.has(c) && available.has(c)) await fsp.writeFile(path.join(dir, 'cgroup.subtree_control'), `+${c}`)
      }
    }
  }

  async exists(cgPath: string): Promise<boolean> {
    for (const d of this.managedDirs(cgPath)) {
      if (await isDir(d)) return true
    }
    return false
  }

  /**
   * Set limits (undefined: unchanged, null: no limit). On v1 a CPU quota above a child's
   * parent's quota, or a memory limit below what is in use, is refused by the kernel: reported
   * as TESS_E_CONFLICT.
   */
  async setLimits(cgPath: string, limits: CgroupLimits): Promise<void> {
    checkLimitValues(limits, cgPath)
    const fail = (what: string, e: unknown, why: string): TessError => new TessError('TESS_E_CONFLICT',
      `cannot set the ${what} of cgroup ${cgPath}: ${code(e) === 'EINVAL' || code(e) === 'EBUSY' ? why : errorMessage(e)}`,
      code(e) === 'ENOENT' ? 'the cgroup does not exist (was the CSM removed?)' : 'lower the limits of its containers first, or give a larger limit')
    if (limits.cpus !== undefined) {
      const quota = limits.cpus === null ? -1 : Math.max(cpuQuotaMinUs, Math.round(limits.cpus * cpuPeriodUs))
      try {
        if (this.version === 2) {
          await fsp.writeFile(path.join(this.dir('cpu', cgPath)!, 'cpu.max'), `${quota < 0 ? 'max' : quota} ${cpuPeriodUs}`)
        } else {
          const d = this.dir('cpu', cgPath)!
          const period = parseNumber(await readSmall(path.join(d, 'cpu.cfs_period_us')))
          if (period !== cpuPeriodUs) {
            await fsp.writeFile(path.join(d, 'cpu.cfs_quota_us'), '-1')
            await fsp.writeFile(path.join(d, 'cpu.cfs_period_us'), String(cpuPeriodUs))
          }
          await fsp.writeFile(path.join(d, 'cpu.cfs_quota_us'), String(quota))
        }
      } catch (e) {
        throw fail('CPU limit', e, `the kernel refused ${limits.cpus} cpus (a cgroup below it has a larger CPU limit, or the one above a smaller one)`)
      }
    }
    if (limits.memoryBytes !== undefined) {
      try {
        if (this.version === 2) {
          const d = this.dir('memory', cgPath)!
          await fsp.writeFile(path.join(d, 'memory.max'), limits.memoryBytes === null ? 'max' : String(limits.memoryBytes))
          // no swapping around the limit: a CSM's limit is its memory
          if (await exists(path.join(d, 'memory.swap.max'))) await fsp.writeFile(path.join(d, 'memory.swap.max'), limits.memoryBytes === null ? 'max' : '0')
        } else {
          const d = this.dir('memory', cgPath)!
          const limitFile = path.join(d, 'memory.limit_in_bytes')
          const swFile = path.join(d, 'memory.memsw.limit_in_bytes')
          const hasSw = await exists(swFile)
          const current = parseLimitValue(await readSmall(limitFile))
          const next = limits.memoryBytes === null ? '-1' : String(limits.memoryBytes)
          // memory.limit_in_bytes must stay <= memory.memsw.limit_in_bytes at every step
          const growing = limits.memoryBytes === null || (current !== undefined && limits.memoryBytes > current)
          if (growing) {
            if (hasSw) await fsp.writeFile(swFile, next)
            await fsp.writeFile(limitFile, next)
          } else {
            await fsp.writeFile(limitFile, next)
            if (hasSw) await fsp.writeFile(swFile, next)
          }
        }
      } catch (e) {
        throw fail('memory limit', e, `the kernel refused ${limits.memoryBytes} bytes (more memory than that is in use and could not be reclaimed)`)
      }
    }
    if (limits.pidsMax !== undefined) {
      const d = this.dir('pids', cgPath)
      if (d !== undefined) {
        try {
          await fsp.writeFile(path.join(d, 'pids.max'), limits.pidsMax === null ? 'max' : String(limits.pidsMax))
        } catch (e) {
          throw fail('pids limit', e, `the kernel refused ${limits.pidsMax}`)
        }
      }
    }
  }

  async readLimits(cgPath: string): Promise<CgroupLimitsRead> {
    const s = await this.stats(cgPath)
    const out: CgroupLimitsRead = {}
    if (s.cpuLimitCpus !== undefined) out.cpus = s.cpuLimitCpus
    if (s.memoryLimitBytes !== undefined) out.memoryBytes = s.memoryLimitBytes
    if (s.pidsLimit !== undefined) out.pidsMax = s.pidsLimit
    return out
  }

  /** Usage and limits of a cgroup (its descendants included); TESS_E_NOT_FOUND when it does not exist. */
  async stats(cgPath: string): Promise<CgroupStats> {
    if (!await this.exists(cgPath)) {
      throw new TessError('TESS_E_NOT_FOUND', `cannot read the stats of cgroup ${cgPath}: it does not exist`, 'the container or CSM is gone')
    }
    if (this.version === 2) {
      const d = this.dir('cpu', cgPath)!
      const files: Partial<Record<V2StatFile, string>> = {}
      await Promise.all(v2StatFiles.map(async (f) => {
        const t = await readSmall(path.join(d, f))
        if (t !== undefined) files[f] = t
      }))
      return statsFromV2(files)
    }
    const files: Partial<Record<V1StatFile, string>> = {}
    await Promise.all(v1StatFiles.map(async (f) => {
      const d = this.dir(f.slice(0, f.indexOf('.')) as Managed, cgPath)
      if (d === undefined) return
      const t = await readSmall(path.join(d, f))
      if (t !== undefined) files[f] = t
    }))
    return statsFromV1(files)
  }

  /** OOM kills recorded in this cgroup itself; undefined when it does not exist. */
  async oomKills(cgPath: string): Promise<number | undefined> {
    const d = this.dir('memory', cgPath)
    if (d === undefined) return undefined
    const text = await readSmall(path.join(d, this.version === 2 ? 'memory.events' : 'memory.oom_control'))
    if (text === undefined) return undefined
    return parseFlatKeyed(text).get('oom_kill') ?? 0
  }

  /** Processes in a cgroup and (recursive) its descendants, in any hierarchy. */
  async processes(cgPath: string): Promise<number[]> {
    const pids = new Set<number>()
    for (const d of this.allDirs(cgPath)) await collectProcs(d, pids, 0)
    return [...pids].sort((a, b) => a - b)
  }

  /**
   * Remove a cgroup and its (empty) descendants from every hierarchy. Refused with
   * TESS_E_CONFLICT while a process is in it; a missing cgroup is not an error.
   */
  async removeTree(cgPath: string): Promise<void> {
    const pids = await this.processes(cgPath)
    if (pids.length > 0) {
      throw new TessError('TESS_E_CONFLICT', `cannot remove cgroup ${cgPath}: ${pids.length} process(es) still in it (${pids.slice(0, 10).join(', ')})`,
        'stop its containers first')
    }
    for (const d of this.allDirs(cgPath)) {
      try {
        await rmdirTree(d, 0)
      } catch (e) {
        if (e instanceof TessError) throw e
        throw new TessError('TESS_E_IO', `cannot remove cgroup directory ${d}: ${errorMessage(e)}`, 'a process may have entered it; try again')
      }
    }
  }

  /** Remove the ancestors of cgPath (up to the hierarchy root) that are empty; best effort. */
  async removeEmptyAncestors(cgPath: string): Promise<void> {
    checkCgroupPath(cgPath)
    let p = path.posix.dirname(cgPath)
    while (p !== '/' && p !== '') {
      for (const d of this.allDirs(p)) {
        try {
          await fsp.rmdir(d)
        } catch {
          // not empty (another CSM), busy or gone: leave it
        }
      }
      p = path.posix.dirname(p)
    }
  }

  /** Whether memory+swap limits exist (v1 memsw accounting; v2 memory.swap.max in a non-root cgroup such as a CSM's). */
  async swapAccounting(cgPath: string = this.parent): Promise<boolean> {
    if (this.version === 2) return exists(path.join(this.dir('memory', cgPath)!, 'memory.swap.max'))
    const m = this.layout.v1.memory
    return m !== undefined && exists(path.join(m, 'memory.memsw.limit_in_bytes'))
  }

  /** Controllers available on the cgroup2 hierarchy of a hybrid host (crun refuses any). */
  async hybridUnifiedControllers(): Promise<string[]> {
    if (this.layout.mode !== 'hybrid') return []
    return parseControllers(await readSmall(path.join(this.layout.unified!, 'cgroup.controllers')) ?? '')
  }

  /** CPUs (of the root cpuset) and MemTotal of the host. */
  async hostCapacity(): Promise<HostCapacity> {
    let cpus: number | undefined
    const cpusetFile = this.version === 2
      ? path.join(this.layout.unified!, 'cpuset.cpus.effective')
      : (this.layout.v1.cpuset !== undefined ? path.join(this.layout.v1.cpuset, 'cpuset.effective_cpus') : undefined)
    if (cpusetFile !== undefined) {
      const t = await readSmall(cpusetFile)
      if (t !== undefined && t.trim() !== '') cpus = parseCpuList(t)
    }
    cpus ??= os.availableParallelism()
    const memoryBytes = parseMemTotal(await fsp.readFile('/proc/meminfo', 'utf8'))
    return { cpus, memoryBytes }
  }
}

/** The cgroup subtree of one CSM. */
export class CsmCgroup {
  constructor(readonly host: CgroupHost, readonly name: string, readonly path: string) {}

  /** cgroupsPath of a container of this CSM */
  containerPath(id: string): string {
    const p = `${this.path}/${id}`
    checkCgroupPath(p)
    return p
  }

  exists(): Promise<boolean> {
    return this.host.exists(this.path)
  }

  setLimits(limits: CgroupLimits): Promise<void> {
    return this.host.setLimits(this.path, limits)
  }

  limits(): Promise<CgroupLimitsRead> {
    return this.host.readLimits(this.path)
  }

  /** totals of all the CSM's containers */
  stats(): Promise<CgroupStats> {
    return this.host.stats(this.path)
  }

  processes(): Promise<number[]> {
    return this.host.processes(this.path)
  }

  /** Remove the subtree (refused while any process is in it) and the parent when it is left empty. */
  async remove(): Promise<void> {
    await this.host.removeTree(this.path)
    await this.host.removeEmptyAncestors(this.path)
  }
}

/** Refuse limits larger than what contains them (the host for a CSM, the CSM for a container). */
export function checkLimitsAgainst(limits: CgroupLimits, cap: { cpus?: number, memoryBytes?: number, pidsMax?: number }, who: string, container: string): void {
  checkLimitValues(limits, who)
  if (typeof limits.cpus === 'number' && cap.cpus !== undefined && limits.cpus > cap.cpus + 1e-9) {
    throw new TessError('TESS_E_CAPACITY', `cannot give ${who} ${limits.cpus} cpus: ${container} has ${round2(cap.cpus)}`, `ask for at most ${round2(cap.cpus)} cpus`)
  }
  if (typeof limits.memoryBytes === 'number' && cap.memoryBytes !== undefined && limits.memoryBytes > cap.memoryBytes) {
    throw new TessError('TESS_E_CAPACITY', `cannot give ${who} ${mib(limits.memoryBytes)} of memory: ${container} has ${mib(cap.memoryBytes)}`,
      `ask for at most ${mib(cap.memoryBytes)}`)
  }
  if (typeof limits.pidsMax === 'number' && cap.pidsMax !== undefined && limits.pidsMax > cap.pidsMax) {
    throw new TessError('TESS_E_CAPACITY', `cannot give ${who} ${limits.pidsMax} processes: ${container} allows ${cap.pidsMax}`, `ask for at most ${cap.pidsMax}`)
  }
}

function checkLimitValues(limits: CgroupLimits, who: string): void {
  const { cpus, memoryBytes, pidsMax } = limits
  if (typeof cpus === 'number' && !(Number.isFinite(cpus) && cpus >= cpusMin)) {
    throw new TessError('TESS_E_INVALID', `invalid CPU limit ${cpus} for ${who}`, `give at least ${cpusMin} cpus`)
  }
  if (typeof memoryBytes === 'number' && !(Number.isSafeInteger(memoryBytes) && memoryBytes >= memoryLimitMinBytes)) {
    throw new TessError('TESS_E_INVALID', `invalid memory limit ${memoryBytes} for ${who}`, `give a whole number of bytes, at least ${mib(memoryLimitMinBytes)}`)
  }
  if (typeof pidsMax === 'number' && !(Number.isSafeInteger(pidsMax) && pidsMax >= 1 && pidsMax <= pidsMaxLimit)) {
    throw new TessError('TESS_E_INVALID', `invalid pids limit ${pidsMax} for ${who}`, `give 1 to ${pidsMaxLimit}`)
  }
}


// ---------------------------------------------------------------------------------------------
// file helpers

function code(e: unknown): string | undefined {
  return e !== null && typeof e === 'object' && 'code' in e ? String((e as { code: unknown }).code) : undefined
}

/** A small file's text; undefined when it (or its cgroup) does not exist. */
async function readSmall(file: string): Promise<string | undefined> {
  let fh: fsp.FileHandle
  try {
    fh = await fsp.open(file, 'r')
  } catch (e) {
    if (code(e) === 'ENOENT' || code(e) === 'ENODEV') return undefined
    throw e
  }
  try {
    const buf = Buffer.allocUnsafe(cgroupFileSizeMaxBytes)
    let n = 0
    for (;;) {
      const { bytesRead } = await fh.read(buf, n, buf.length - n, null)
      if (bytesRead === 0) break
      n += bytesRead
      if (n >= buf.length) throw new TessError('TESS_E_IO', `cannot read ${file}: larger than ${cgroupFileSizeMaxBytes} bytes`, 'this is not a cgroup file')
    }
    return buf.subarray(0, n).toString('utf8')
  } catch (e) {
    if (code(e) === 'ENODEV' || code(e) === 'ENOENT') return undefined
    throw e
  } finally {
    await fh.close()
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await fsp.access(p)
    return true
  } catch {
    return false
  }
}

async function isDir(p: string): Promise<boolean> {
  try {
    return (await fsp.stat(p)).isDirectory()
  } catch {
    return false
  }
}

async function subdirs(dir: string): Promise<string[]> {
  try {
    return (await fsp.readdir(dir, { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => path.join(dir, d.name))
  } catch (e) {
    if (code(e) === 'ENOENT') return []
    throw e
  }
}

async function collectProcs(dir: string, into: Set<number>, depth: number): Promise<void> {
  const text = await readSmall(path.join(dir, 'cgroup.procs'))
  if (text === undefined) return
  for (const l of text.split('\n')) if (/^\d+$/.test(l.trim())) into.add(Number(l.trim()))
  if (depth >= cgroupTreeDepthMax) return
  for (const d of await subdirs(dir)) await collectProcs(d, into, depth + 1)
}

/** rmdir children first; a cgroup directory is removed with rmdir even though it holds files. */
async function rmdirTree(dir: string, depth: number): Promise<void> {
  if (depth > cgroupTreeDepthMax) {
    throw new TessError('TESS_E_IO', `cannot remove cgroup directory ${dir}: nested deeper than ${cgroupTreeDepthMax} levels`, 'remove its children by hand')
  }
  for (const d of await subdirs(dir)) await rmdirTree(d, depth + 1)
  for (let attempt = 0; ; attempt++) {
    try {
      await fsp.rmdir(dir)
      return
    } catch (e) {
      if (code(e) === 'ENOENT') return
      if (code(e) === 'EBUSY' && attempt < cgroupRmdirRetriesMax) {
        await new Promise((r) => setTimeout(r, cgroupRmdirRetryMs))
        continue
      }
      throw e
    }
  }
}
