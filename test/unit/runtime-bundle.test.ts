import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { blockedSyscalls } from '../../src/csm/runtime/seccomp.js'
import { TessError } from '../../src/lib/errors.js'
import {
  buildOciSpec, clampRlimits, defaultCapabilities, defaultMaskedPaths, defaultReadonlyPaths, hostsFile, imageRuntimeConfig, mergeEnv,
  overlayMountPlan, parseProcLimits, processArgs, resolvConf, resolveExecutable, resolveInRoot, resolveUserSpec, type ImageRuntimeConfig,
  type SpecInput,
} from '../../src/csm/runtime/bundle.js'

const procLimits = `Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max file size             unlimited            unlimited            bytes     
Max stack size            8388608              unlimited            bytes     
Max core file size        0                    unlimited            bytes     
Max processes             96365                96365                processes 
Max open files            20000                20000                files     
Max locked memory         8388608              8388608              bytes     
Max nice priority         0                    0                    
Max realtime timeout      unlimited            unlimited            us        
`

const image: ImageRuntimeConfig = {
  env: ['PATH=/opt/bin:/bin', 'LANG=C.UTF-8', 'MODE=image'],
  entrypoint: ['/docker-entrypoint.sh'],
  cmd: ['nginx', '-g', 'daemon off;'],
  workingDir: '/srv',
  user: '',
  stopSignal: 'SIGQUIT',
}

const input = (over: Partial<SpecInput> = {}): SpecInput => ({
  hostname: 'web-1',
  image,
  overrides: {},
  user: { uid: 0, gid: 0, home: '/root' },
  network: 'none',
  cgroupsPath: '/tess/csm-a/0123456789ab',
  cgroupVersion: 1,
  swapAccounting: true,
  pidsMax: 4096,
  rlimits: [{ type: 'RLIMIT_NOFILE', soft: 20000, hard: 20000 }],
  ...over,
})

describe('config.json generation', () => {
  it('builds a spec from the image config and the container settings', () => {
    const s = buildOciSpec(input({
      cpus: 0.25,
      memoryBytes: 64 * 1024 * 1024,
      etcFiles: { hosts: '/state/c/hosts', hostname: '/state/c/hostname', resolvConf: '/state/c/resolv.conf' },
      annotations: { 'io.tessera.csm': 'a' },
    }))
    expect(s.ociVersion).toBe('1.0.2')
    expect(s.root).toEqual({ path: 'rootfs', readonly: false })
    expect(s.hostname).toBe('web-1')
    expect(s.process.terminal).toBe(false)
    expect(s.process.args).toEqual(['/docker-entrypoint.sh', 'nginx', '-g', 'daemon off;'])
    expect(s.process.cwd).toBe('/srv')
    expect(s.process.user).toEqual({ uid: 0, gid: 0 })
    expect(s.process.env).toEqual(['PATH=/opt/bin:/bin', 'LANG=C.UTF-8', 'MODE=image', 'HOSTNAME=web-1', 'HOME=/root'])
    expect(s.process.noNewPrivileges).toBe(true)
    expect(s.process.rlimits).toEqual([{ type: 'RLIMIT_NOFILE', soft: 20000, hard: 20000 }])
    expect(s.process.capabilities.bounding).toEqual([...defaultCapabilities])
    expect(s.process.capabilities.effective).toEqual([...defaultCapabilities])
    expect(s.process.capabilities.permitted).toEqual([...defaultCapabilities])
    expect(s.process.capabilities).not.toHaveProperty('inheritable')
    expect(s.process.capabilities).not.toHaveProperty('ambient')
    // Docker's 14 defaults without CAP_NET_RAW
    expect(defaultCapabilities).toHaveLength(13)
    expect(defaultCapabilities).not.toContain('CAP_NET_RAW')
    // the default seccomp filter: a list of allowed syscalls (as Docker's), everything else EPERM
    const sc = s.linux.seccomp!
    expect(sc.defaultAction).toBe('SCMP_ACT_ERRNO')
    expect(sc.defaultErrnoRet).toBe(1)
    expect(sc.architectures.length).toBeGreaterThan(0)
    const allowed = sc.syscalls.filter((r) => r.action === 'SCMP_ACT_ALLOW' && r.args === undefined).flatMap((r) => r.names)
    for (const name of ['unshare', 'setns', 'mount', 'umount2', 'keyctl', 'add_key', 'bpf', 'ptrace', 'init_module', 'kexec_load', 'reboot', 'perf_event_open', 'userfaultfd', 'io_uring_setup', 'clone', 'clone3', 'personality']) {
      expect(allowed, name).not.toContain(name)
    }
    for (const name of blockedSyscalls) expect(allowed, name).not.toContain(name)
    for (const name of ['read', 'write', 'openat', 'execve', 'socket', 'futex', 'rseq', 'statx', 'io_submit', 'epoll_pwait', 'exit_group']) expect(allowed, name).toContain(name)
    expect(new Set(allowed).size).toBe(allowed.length)
    // clone only without a namespace flag: (flags & every CLONE_NEW* bit) == 0
    const cloneRules = sc.syscalls.filter((r) => r.names.includes('clone'))
    expect(cloneRules).toEqual([{ names: ['clone'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 0x7e020000, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }] }])
    expect(sc.syscalls.find((r) => r.names.includes('clone3'))).toMatchObject({ action: 'SCMP_ACT_ERRNO', errnoRet: 38 })
    expect(sc.syscalls.filter((r) => r.names.includes('personality')).map((r) => r.args![0]!.value)).toEqual([0, 8, 0x20000, 0x20008, 0xffffffff])
    expect(defaultCapabilities).not.toContain('CAP_SYS_ADMIN')
    expect(s.linux.namespaces.map((n) => n.type)).toEqual(['pid', 'ipc', 'uts', 'mount', 'network'])
    expect(s.linux.cgroupsPath).toBe('/tess/csm-a/0123456789ab')
    expect(s.linux.resources).toEqual({
      devices: [{ allow: false, access: 'rwm' }],
      pids: { limit: 4096 },
      cpu: { quota: 25_000, period: 100_000 },
      memory: { limit: 64 * 1024 * 1024, swap: 64 * 1024 * 1024 },
    })
    expect(s.linux.maskedPaths).toEqual([...defaultMaskedPaths])
    expect(s.linux.maskedPaths).toContain('/proc/kcore')
    expect(s.linux.readonlyPaths).toEqual([...defaultReadonlyPaths])
    expect(s.linux.readonlyPaths).toContain('/proc/sys')
    expect(s.mounts.map((m) => m.destination)).toEqual([
      '/proc', '/dev', '/dev/pts', '/dev/shm', '/dev/mqueue', '/sys', '/sys/fs/cgroup', '/etc/hosts', '/etc/hostname', '/etc/resolv.conf',
    ])
    expect(s.mounts.find((m) => m.destination === '/sys')!.options).toContain('ro')
    expect(s.mounts.find((m) => m.destination === '/etc/hosts')).toEqual({ destination: '/etc/hosts', type: 'bind', source: '/state/c/hosts', options: ['rbind', 'rprivate'] })
    expect(s.annotations).toEqual({ 'io.tessera.csm': 'a' })
    // it is plain JSON
    expect(JSON.parse(JSON.stringify(s))).toEqual(s)
  })

  it('host networking has no network namespace; v2 adds a cgroup namespace; no limits when none are asked', () => {
    const s = buildOciSpec(input({ network: 'host', cgroupVersion: 2, swapAccounting: false }))
    expect(s.linux.namespaces.map((n) => n.type)).toEqual(['pid', 'ipc', 'uts', 'mount', 'cgroup'])
    expect(s.linux.resources.cpu).toBeUndefined()
    expect(s.linux.resources.memory).toBeUndefined()
    expect(s.mounts.some((m) => m.destination === '/etc/hosts')).toBe(false)
    const m = buildOciSpec(input({ memoryBytes: 32 * 1024 * 1024, swapAccounting: false, cpus: 0.001 }))
    expect(m.linux.resources.memory).toEqual({ limit: 32 * 1024 * 1024 })
    expect(m.linux.resources.cpu).toEqual({ quota: 1000, period: 100_000 }) // the kernel's minimum quota
  })

  it('a user namespace: the user namespace type and one uid and gid mapping; with the host network /sys is bound, not mounted', () => {
    const plain = buildOciSpec(input({}))
    expect(plain.linux.uidMappings).toBeUndefined()
    expect(plain.linux.namespaces.map((n) => n.type)).not.toContain('user')
    const s = buildOciSpec(input({ userns: { hostId: 100_000, size: 65_536 } }))
    expect(s.linux.namespaces.map((n) => n.type)).toContain('user')
    expect(s.linux.uidMappings).toEqual([{ containerID: 0, hostID: 100_000, size: 65_536 }])
    expect(s.linux.gidMappings).toEqual([{ containerID: 0, hostID: 100_000, size: 65_536 }])
    expect(s.mounts.find((m) => m.destination === '/sys')!.type).toBe('sysfs') // its own network namespace: sysfs mounts
    const h = buildOciSpec(input({ network: 'host', userns: { hostId: 100_000, size: 65_536 } }))
    expect(h.mounts.find((m) => m.destination === '/sys')).toEqual({ destination: '/sys', type: 'bind', source: '/sys', options: ['rbind', 'nosuid', 'noexec', 'nodev', 'ro'] })
    // never onto the host's root
    expect(() => buildOciSpec(input({ userns: { hostId: 0, size: 65_536 } }))).toThrow(/unprivileged/)
  })

  it('overrides: command replaces Cmd, entrypoint drops Cmd, env replaces by name, user, workdir', () => {
    const s = buildOciSpec(input({
      overrides: { command: ['sh', '-c', 'echo hi'], env: ['MODE=override', 'EXTRA=1', 'PATH=/bin'], workingDir: '/tmp' },
      user: { uid: 1000, gid: 1000, additionalGids: [27, 100], home: '/home/app' },
    }))
    expect(s.process.args).toEqual(['/docker-entrypoint.sh', 'sh', '-c', 'echo hi'])
    expect(s.process.env).toEqual(['PATH=/bin', 'LANG=C.UTF-8', 'MODE=override', 'EXTRA=1', 'HOSTNAME=web-1', 'HOME=/home/app'])
    expect(s.process.cwd).toBe('/tmp')
    expect(s.process.user).toEqual({ uid: 1000, gid: 1000, additionalGids: [27, 100] })
    expect(processArgs(image, { entrypoint: ['/bin/sh'] }, 'x')).toEqual(['/bin/sh'])
    expect(processArgs(image, { entrypoint: [], command: ['ls'] }, 'x')).toEqual(['ls'])
    expect(processArgs({ ...image, entrypoint: [] }, {}, 'x')).toEqual(['nginx', '-g', 'daemon off;'])
  })

  it('refuses a spec without a command, with bad env, a relative workdir or a long name', () => {
    const none = { ...image, entrypoint: [], cmd: [] }
    expect(() => buildOciSpec(input({ image: none }))).toThrow(/no command/)
    expect(() => buildOciSpec(input({ overrides: { env: ['NOVALUE'] } }))).toThrow(/invalid environment entry "NOVALUE"/)
    expect(() => buildOciSpec(input({ overrides: { env: ['=x'] } }))).toThrow(TessError)
    expect(() => buildOciSpec(input({ overrides: { workingDir: 'srv' } }))).toThrow(/not absolute/)
    expect(() => buildOciSpec(input({ hostname: 'x'.repeat(64) }))).toThrow(/longer than 63/)
    expect(() => buildOciSpec(input({ overrides: { command: Array.from({ length: 5000 }, () => 'a') } }))).toThrow(/more than 4096/)
  })

  it('mergeEnv keeps order, replaces in place and adds defaults only when missing', () => {
    expect(mergeEnv(['A=1', 'B=2'], ['B=3', 'C=4'], { A: 'x', D: 'y' })).toEqual(['A=1', 'B=3', 'C=4', 'D=y'])
    expect(mergeEnv([], [], {})).toEqual([])
  })

  it('reads Env, Cmd, Entrypoint, WorkingDir, User and StopSignal from an image config', () => {
    expect(imageRuntimeConfig({ config: { Env: ['A=1'], Cmd: ['/bin/sh'], WorkingDir: '', User: '1000:1000', StopSignal: 'SIGINT' } })).toEqual({
      env: ['A=1'], entrypoint: [], cmd: ['/bin/sh'], workingDir: '/', user: '1000:1000', stopSignal: 'SIGINT',
    })
    expect(imageRuntimeConfig({})).toEqual({ env: [], entrypoint: [], cmd: [], workingDir: '/', user: '' })
  })
})

describe('rlimits', () => {
  it('parses /proc/self/limits', () => {
    const l = parseProcLimits(procLimits)
    expect(l.get('RLIMIT_NOFILE')).toEqual({ soft: 20000, hard: 20000 })
    expect(l.get('RLIMIT_STACK')).toEqual({ soft: 8388608, hard: Infinity })
    expect(l.get('RLIMIT_NICE')).toEqual({ soft: 0, hard: 0 })
    expect(l.get('RLIMIT_RTTIME')).toEqual({ soft: Infinity, hard: Infinity })
    expect(l.has('RLIMIT_AS')).toBe(false)
  })

  it('clamps to the host hard limits; the default nofile is asked and lowered', () => {
    const host = parseProcLimits(procLimits)
    expect(clampRlimits([], host)).toEqual({
      rlimits: [{ type: 'RLIMIT_NOFILE', soft: 20000, hard: 20000 }],
      clamped: ['RLIMIT_NOFILE 1048576/1048576 -> 20000/20000'],
    })
    const r = clampRlimits([
      { type: 'RLIMIT_NOFILE', soft: 1024, hard: 65536 },
      { type: 'RLIMIT_CORE', soft: 0, hard: 1 << 30 },
      { type: 'RLIMIT_MEMLOCK', soft: 1 << 20, hard: 1 << 30 },
      { type: 'RLIMIT_NPROC', soft: 1000, hard: 2000 },
    ], host)
    expect(r.rlimits).toEqual([
      { type: 'RLIMIT_NOFILE', soft: 1024, hard: 20000 },
      { type: 'RLIMIT_CORE', soft: 0, hard: 1 << 30 },
      { type: 'RLIMIT_MEMLOCK', soft: 1 << 20, hard: 8388608 },
      { type: 'RLIMIT_NPROC', soft: 1000, hard: 2000 },
    ])
    expect(r.clamped).toEqual(['RLIMIT_NOFILE 1024/65536 -> 1024/20000', 'RLIMIT_MEMLOCK 1048576/1073741824 -> 1048576/8388608'])
    // a soft limit above the clamped hard one comes down with it
    expect(clampRlimits([{ type: 'RLIMIT_NOFILE', soft: 50000, hard: 50000 }], host).rlimits).toEqual([{ type: 'RLIMIT_NOFILE', soft: 20000, hard: 20000 }])
    // an unknown host limit does not clamp
    expect(clampRlimits([], new Map()).rlimits).toEqual([{ type: 'RLIMIT_NOFILE', soft: 1048576, hard: 1048576 }])
    expect(() => clampRlimits([{ type: 'RLIMIT_BOGUS', soft: 1, hard: 1 }], host)).toThrow(/unknown type "RLIMIT_BOGUS"/)
    expect(() => clampRlimits([{ type: 'RLIMIT_NOFILE', soft: 2, hard: 1 }], host)).toThrow(/soft 2, hard 1/)
    expect(() => clampRlimits([{ type: 'RLIMIT_NOFILE', soft: -1, hard: 1 }], host)).toThrow(TessError)
  })
})

describe('users', () => {
  const passwd = 'root:x:0:0:root:/root:/bin/sh\n# comment\napp:x:1000:1001:App:/home/app:/bin/sh\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n'
  const group = 'root:x:0:\nwheel:x:10:app,other\napp:x:1001:\ndocker:x:999:app\n'

  it('resolves numbers and names with the image files', () => {
    expect(resolveUserSpec('', passwd, group, 'c')).toEqual({ uid: 0, gid: 0, home: '/root' })
    expect(resolveUserSpec('1000', passwd, group, 'c')).toEqual({ uid: 1000, gid: 1001, additionalGids: [10, 999], home: '/home/app' })
    expect(resolveUserSpec('app', passwd, group, 'c')).toEqual({ uid: 1000, gid: 1001, additionalGids: [10, 999], home: '/home/app' })
    expect(resolveUserSpec('app:wheel', passwd, group, 'c')).toEqual({ uid: 1000, gid: 10, additionalGids: [999], home: '/home/app' })
    expect(resolveUserSpec('4242:4343', passwd, group, 'c')).toEqual({ uid: 4242, gid: 4343 })
    expect(resolveUserSpec('4242', undefined, undefined, 'c')).toEqual({ uid: 4242, gid: 0 })
    expect(() => resolveUserSpec('ghost', passwd, group, 'container "c"')).toThrow(/user "ghost" is not in the image's \/etc\/passwd/)
    expect(() => resolveUserSpec('app:ghosts', passwd, group, 'c')).toThrow(/group "ghosts"/)
  })
})

describe('paths inside a rootfs', () => {
  let root: string
  beforeAll(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-rootfs-'))
    for (const d of ['bin', 'usr/bin', 'usr/local/bin', 'etc', 'app']) fs.mkdirSync(path.join(root, d), { recursive: true })
    fs.writeFileSync(path.join(root, 'bin/busybox'), '#!/bin/true\n', { mode: 0o755 })
    fs.symlinkSync('busybox', path.join(root, 'bin/sh'))
    fs.symlinkSync('/bin/busybox', path.join(root, 'usr/bin/env'))
    fs.symlinkSync('../../../../../bin/busybox', path.join(root, 'usr/local/bin/climb'))
    fs.writeFileSync(path.join(root, 'usr/bin/data'), 'not executable', { mode: 0o644 })
    fs.writeFileSync(path.join(root, 'app/run'), '#!/bin/sh\n', { mode: 0o700 })
    // a link that points at the host's /etc/passwd must resolve inside the root
    fs.symlinkSync('/etc/shadow-of-host', path.join(root, 'etc/passwd'))
    fs.symlinkSync('loop2', path.join(root, 'etc/loop1'))
    fs.symlinkSync('loop1', path.join(root, 'etc/loop2'))
  })
  afterAll(() => fs.rmSync(root, { recursive: true, force: true }))

  it('follows symlinks without leaving the root', async () => {
    expect(await resolveInRoot(root, '/bin/sh')).toBe(path.join(root, 'bin/busybox'))
    expect(await resolveInRoot(root, '/usr/bin/env')).toBe(path.join(root, 'bin/busybox'))
    expect(await resolveInRoot(root, '/usr/local/bin/climb')).toBe(path.join(root, 'bin/busybox'))
    expect(await resolveInRoot(root, '/../../bin/./sh')).toBe(path.join(root, 'bin/busybox'))
    expect(await resolveInRoot(root, '/etc/passwd')).toBeUndefined()
    expect(await resolveInRoot(root, '/etc/loop1')).toBeUndefined()
    expect(await resolveInRoot(root, '/bin/busybox/x')).toBeUndefined()
  })

  it('finds the executable the runtime would run', async () => {
    const env = ['PATH=/usr/local/bin:/usr/bin:/bin']
    expect(await resolveExecutable(root, 'sh', env, '/')).toBe('/bin/sh')
    expect(await resolveExecutable(root, 'env', env, '/')).toBe('/usr/bin/env')
    expect(await resolveExecutable(root, 'data', env, '/')).toBeUndefined()
    expect(await resolveExecutable(root, 'nope', env, '/')).toBeUndefined()
    expect(await resolveExecutable(root, '/app/run', env, '/')).toBe('/app/run')
    expect(await resolveExecutable(root, './run', env, '/app')).toBe('/app/run')
    expect(await resolveExecutable(root, '/app', env, '/')).toBeUndefined()
    // no PATH in the env: the default one
    expect(await resolveExecutable(root, 'sh', [], '/')).toBe('/bin/sh')
    expect(await resolveExecutable(root, 'sh', ['PATH=/nowhere'], '/')).toBeUndefined()
  })
})

describe('overlay mount options', () => {
  it('uses absolute lowerdirs (top-most first) when they fit in a page', () => {
    const p = overlayMountPlan(['/layers/c/fs', '/layers/b/fs', '/layers/a/fs'], '/ctr/upper', '/ctr/work', '/ctr')
    expect(p).toEqual({ options: 'lowerdir=/layers/c/fs:/layers/b/fs:/layers/a/fs,upperdir=/ctr/upper,workdir=/ctr/work', links: [] })
  })

  it('falls back to short symlinks and relative paths for many layers', () => {
    const lowers = Array.from({ length: 256 }, (_, i) => `/var/lib/tess/layers/sha256/${i.toString(16).padStart(64, '0')}/fs`)
    const p = overlayMountPlan(lowers, '/var/lib/tess/csm/c/upper', '/var/lib/tess/csm/c/work', '/var/lib/tess/csm/c')
    expect(p.cwd).toBe('/var/lib/tess/csm/c')
    expect(p.links).toHaveLength(256)
    expect(p.links[0]).toEqual({ link: '/var/lib/tess/csm/c/l/0', target: lowers[0] })
    expect(p.options.startsWith('lowerdir=l/0:l/1:l/2:')).toBe(true)
    expect(p.options.endsWith(':l/255,upperdir=upper,workdir=work')).toBe(true)
    expect(Buffer.byteLength(p.options)).toBeLessThan(4096)
    expect(() => overlayMountPlan(lowers, '/u', '/w', '/c', 100)).toThrow(/flatten the image|short overlay options/)
    expect(() => overlayMountPlan(['/a,b'], '/u', '/w', '/c')).toThrow(/assertion failed/)
  })
})

describe('/etc files', () => {
  it('network none: loopback and the name; no name servers', () => {
    expect(hostsFile('web-1', 'none')).toBe('127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tweb-1\n')
    expect(resolvConf('none', 'nameserver 10.0.0.1\n')).not.toContain('nameserver')
  })

  it('network host: the host files, plus the name when the host does not know it', () => {
    expect(hostsFile('web-1', 'host', '127.0.0.1 localhost\n')).toBe('127.0.0.1 localhost\n127.0.1.1\tweb-1\n')
    expect(hostsFile('web-1', 'host', '10.0.0.5 web-1\n')).toBe('10.0.0.5 web-1\n')
    expect(resolvConf('host', 'nameserver 10.0.0.1\n')).toBe('nameserver 10.0.0.1\n')
  })
})
