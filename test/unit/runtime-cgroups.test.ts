import { describe, expect, it } from 'vitest'
import { TessError } from '../../src/lib/errors.js'
import {
  CgroupHost, cgroupLayoutFromMountinfo, checkLimitsAgainst, parseCpuList, parseFlatKeyed, parseLimitValue, parseMemTotal, parseMountinfo,
  statsFromV1, statsFromV2, unescapeMountPath,
} from '../../src/csm/runtime/cgroups.js'

// /proc/self/mountinfo of these machines: cgroup v1 hierarchies, cgroup2 at /sys/fs/cgroup/unified (hybrid)
const hybridMountinfo = `22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`

// a systemd host of the v1 era: cpu and cpuacct co-mounted, no cgroup2
const legacyMountinfo = `25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
26 25 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
27 26 0:23 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd
30 26 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
31 26 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
32 26 0:28 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,pids
`

// a current systemd host: only cgroup2
const unifiedMountinfo = `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`

describe('cgroup detection', () => {
  it('parses mountinfo, optional fields and escapes included', () => {
    const m = parseMountinfo('50 22 0:44 / /mnt/with\\040space rw,relatime shared:7 master:2 - overlay overlay rw,lowerdir=/a:/b,upperdir=/u,workdir=/w\n')
    expect(m).toEqual([{
      id: 50, parentId: 22, device: '0:44', root: '/', mountPoint: '/mnt/with space', mountOptions: ['rw', 'relatime'],
      fsType: 'overlay', source: 'overlay', superOptions: ['rw', 'lowerdir=/a:/b', 'upperdir=/u', 'workdir=/w'],
    }])
    expect(unescapeMountPath('a\\011b\\134c')).toBe('a\tb\\c')
  })

  it('tells hybrid, legacy v1 and unified v2 apart', () => {
    const hybrid = cgroupLayoutFromMountinfo(parseMountinfo(hybridMountinfo))
    expect(hybrid.mode).toBe('hybrid')
    expect(hybrid.unified).toBe('/sys/fs/cgroup/unified')
    expect(hybrid.v1).toMatchObject({ cpu: '/sys/fs/cgroup/cpu', cpuacct: '/sys/fs/cgroup/cpuacct', memory: '/sys/fs/cgroup/memory', pids: '/sys/fs/cgroup/pids', 'name=systemd': '/sys/fs/cgroup/systemd' })

    const legacy = cgroupLayoutFromMountinfo(parseMountinfo(legacyMountinfo))
    expect(legacy.mode).toBe('v1')
    expect(legacy.v1.cpu).toBe('/sys/fs/cgroup/cpu,cpuacct')
    expect(legacy.v1.cpuacct).toBe('/sys/fs/cgroup/cpu,cpuacct')
    expect(legacy.unified).toBeUndefined()

    const unified = cgroupLayoutFromMountinfo(parseMountinfo(unifiedMountinfo))
    expect(unified).toEqual({ mode: 'v2', v1: {}, unified: '/sys/fs/cgroup' })

    expect(() => cgroupLayoutFromMountinfo(parseMountinfo('22 1 8:1 / / rw - ext4 /dev/sda1 rw\n'))).toThrow(TessError)
  })

  it('maps cgroup paths to directories as runc does, one per hierarchy', async () => {
    const v1 = await CgroupHost.detect({ mountinfo: legacyMountinfo, parent: '/tess' })
    expect(v1.version).toBe(1)
    expect(v1.csmPath('a')).toBe('/tess/csm-a')
    expect(v1.dir('cpu', '/tess/csm-a/0123')).toBe('/sys/fs/cgroup/cpu,cpuacct/tess/csm-a/0123')
    expect(v1.dir('cpuacct', '/tess/csm-a')).toBe('/sys/fs/cgroup/cpu,cpuacct/tess/csm-a')
    expect(v1.dir('freezer', '/tess/csm-a')).toBeUndefined()
    // every mounted hierarchy, co-mounted ones once: what removal walks
    expect(v1.allDirs('/tess/csm-a')).toEqual([
      '/sys/fs/cgroup/cpu,cpuacct/tess/csm-a', '/sys/fs/cgroup/memory/tess/csm-a', '/sys/fs/cgroup/pids/tess/csm-a', '/sys/fs/cgroup/systemd/tess/csm-a',
    ])
    const hybrid = await CgroupHost.detect({ mountinfo: hybridMountinfo })
    expect(hybrid.allDirs('/tess')).toContain('/sys/fs/cgroup/unified/tess')
    expect(hybrid.csm('db').containerPath('0123456789ab')).toBe('/tess/csm-db/0123456789ab')
    const v2 = await CgroupHost.detect({ mountinfo: unifiedMountinfo })
    expect(v2.version).toBe(2)
    expect(v2.dir('memory', '/tess/csm-a')).toBe('/sys/fs/cgroup/tess/csm-a')
    expect(v2.allDirs('/tess/csm-a')).toEqual(['/sys/fs/cgroup/tess/csm-a'])
    // paths are checked: a programmer error, not user input
    expect(() => v2.dir('cpu', '/tess/../etc')).toThrow(/assertion failed/)
    expect(() => v2.dir('cpu', 'relative')).toThrow(/assertion failed/)
    expect(() => hybrid.csm('Bad_Name')).toThrow(TessError)
  })
})

describe('cgroup stat parsing', () => {
  it('reads v1 files: cpuacct, cpu.stat, memory, oom_control, pids', () => {
    const s = statsFromV1({
      'cpuacct.usage': '2345678901\n',
      'cpuacct.usage_user': '2000000000\n',
      'cpuacct.usage_sys': '345678901\n',
      'cpuacct.stat': 'user 200\nsystem 34\n',
      'cpu.stat': 'nr_periods 42\nnr_throttled 17\nthrottled_time 1234567890\nnr_bursts 0\nburst_time 0\n',
      'cpu.cfs_quota_us': '20000\n',
      'cpu.cfs_period_us': '100000\n',
      'memory.usage_in_bytes': '33554432\n',
      'memory.limit_in_bytes': '33554432\n',
      'memory.max_usage_in_bytes': '33554432\n',
      'memory.oom_control': 'oom_kill_disable 0\nunder_oom 0\noom_kill 1\n',
      'memory.stat': 'cache 4096\nrss 28672\ntotal_cache 8192\ntotal_inactive_file 1048576\n',
      'pids.current': '3\n',
      'pids.max': 'max\n',
    })
    expect(s).toEqual({
      cpuUsageNs: 2345678901,
      cpuUserNs: 2000000000,
      cpuSystemNs: 345678901,
      cpuPeriods: 42,
      cpuThrottledPeriods: 17,
      cpuThrottledNs: 1234567890,
      cpuLimitCpus: 0.2,
      memoryUsageBytes: 33554432,
      memoryWorkingSetBytes: 33554432 - 1048576,
      memoryLimitBytes: 33554432,
      memoryMaxUsageBytes: 33554432,
      oomKills: 1,
      pidsCurrent: 3,
    })
  })

  it('v1: unlimited values, ticks when usage_user is missing, missing controllers', () => {
    const s = statsFromV1({
      'cpuacct.usage': '10\n',
      'cpuacct.stat': 'user 150\nsystem 30\n',
      'cpu.cfs_quota_us': '-1\n',
      'cpu.cfs_period_us': '100000\n',
      'memory.usage_in_bytes': '4096\n',
      'memory.limit_in_bytes': '9223372036854771712\n',
      'memory.oom_control': 'oom_kill_disable 0\nunder_oom 0\n',
      'pids.max': '512\n',
    })
    expect(s.cpuUserNs).toBe(1_500_000_000)
    expect(s.cpuSystemNs).toBe(300_000_000)
    expect(s.cpuLimitCpus).toBeUndefined()
    expect(s.memoryLimitBytes).toBeUndefined()
    expect(s.oomKills).toBe(0)
    expect(s.pidsLimit).toBe(512)
    expect(s.pidsCurrent).toBe(0)
    expect(s.cpuThrottledPeriods).toBe(0)
    expect(statsFromV1({})).toEqual({ cpuUsageNs: 0, cpuPeriods: 0, cpuThrottledPeriods: 0, cpuThrottledNs: 0, memoryUsageBytes: 0, oomKills: 0, pidsCurrent: 0 })
  })

  it('reads v2 files: cpu.stat in microseconds, cpu.max, memory.events', () => {
    const s = statsFromV2({
      'cpu.stat': 'usage_usec 2000000\nuser_usec 1500000\nsystem_usec 500000\ncore_sched.force_idle_usec 0\nnr_periods 20\nnr_throttled 5\nthrottled_usec 800000\nnr_bursts 0\nburst_usec 0\n',
      'cpu.max': '50000 100000\n',
      'memory.current': '1048576\n',
      'memory.max': 'max\n',
      'memory.peak': '2097152\n',
      'memory.events': 'low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n',
      'memory.stat': 'anon 524288\nfile 524288\ninactive_file 262144\n',
      'pids.current': '2\n',
      'pids.max': '4096\n',
    })
    expect(s).toEqual({
      cpuUsageNs: 2_000_000_000,
      cpuUserNs: 1_500_000_000,
      cpuSystemNs: 500_000_000,
      cpuPeriods: 20,
      cpuThrottledPeriods: 5,
      cpuThrottledNs: 800_000_000,
      cpuLimitCpus: 0.5,
      memoryUsageBytes: 1048576,
      memoryWorkingSetBytes: 1048576 - 262144,
      memoryMaxUsageBytes: 2097152,
      oomKills: 1,
      pidsCurrent: 2,
      pidsLimit: 4096,
    })
    expect(statsFromV2({ 'cpu.max': 'max 100000\n', 'memory.max': '67108864\n' })).toMatchObject({ memoryLimitBytes: 67108864 })
    expect(statsFromV2({ 'cpu.max': 'max 100000\n' }).cpuLimitCpus).toBeUndefined()
  })

  it('small parsers', () => {
    expect(parseFlatKeyed('a 1\nb -1\nbad line here\n\nc 18446744073709551615\n')).toEqual(new Map([['a', 1], ['b', -1], ['c', 18446744073709551615]]))
    expect(parseLimitValue('max')).toBeUndefined()
    expect(parseLimitValue('-1\n')).toBeUndefined()
    expect(parseLimitValue('9223372036854771712')).toBeUndefined()
    expect(parseLimitValue('1024\n')).toBe(1024)
    expect(parseLimitValue(undefined)).toBeUndefined()
    expect(parseCpuList('0-1\n')).toBe(2)
    expect(parseCpuList('0-3,8,10-11')).toBe(7)
    expect(parseCpuList('5')).toBe(1)
    expect(() => parseCpuList('3-1')).toThrow(TessError)
    expect(parseMemTotal('MemTotal:       24684096 kB\nMemFree:        23932076 kB\n')).toBe(24684096 * 1024)
    expect(() => parseMemTotal('nothing')).toThrow(TessError)
  })
})

describe('limit checks', () => {
  it('refuses what exceeds the container, and bad values', () => {
    const cap = { cpus: 0.5, memoryBytes: 256 * 1024 * 1024, pidsMax: 100 }
    expect(() => checkLimitsAgainst({ cpus: 0.5, memoryBytes: 256 * 1024 * 1024, pidsMax: 100 }, cap, 'container "x"', 'CSM "a"')).not.toThrow()
    const e = (() => {
      try {
        checkLimitsAgainst({ cpus: 1 }, cap, 'container "x"', 'CSM "a"')
      } catch (x) {
        return x as TessError
      }
      return undefined
    })()
    expect(e?.code).toBe('TESS_E_CAPACITY')
    expect(e?.message).toBe('cannot give container "x" 1 cpus: CSM "a" has 0.5')
    expect(() => checkLimitsAgainst({ memoryBytes: 512 * 1024 * 1024 }, cap, 'x', 'y')).toThrow(/512 MiB of memory: y has 256 MiB/)
    expect(() => checkLimitsAgainst({ pidsMax: 101 }, cap, 'x', 'y')).toThrow(TessError)
    expect(() => checkLimitsAgainst({ cpus: 0 }, {}, 'x', 'y')).toThrow(/invalid CPU limit/)
    expect(() => checkLimitsAgainst({ memoryBytes: 1000 }, {}, 'x', 'y')).toThrow(/invalid memory limit/)
    expect(() => checkLimitsAgainst({ memoryBytes: 1.5 * 1024 * 1024 * 1024 + 0.5 }, {}, 'x', 'y')).toThrow(/invalid memory limit/)
    expect(() => checkLimitsAgainst({ cpus: null, memoryBytes: null, pidsMax: null }, cap, 'x', 'y')).not.toThrow()
  })
})
