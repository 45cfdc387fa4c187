import { describe, expect, it } from 'vitest'
import {
  formatRestartPolicy, parseContainerSpec, parseCsmCreateRequest, parseCsmQuota, parseCsmSpec, parseCsmUpdateRequest, parseRestartPolicy, parseRunRequest, parseVolumeMounts, parseVolumeSpecs,
} from '../../src/lib/container-spec.js'
import { TessError } from '../../src/lib/errors.js'
import {
  containerArgBytesMax, containerArgsMax, containerEnvMax, cpusMax, cpusMin, memoryLimitMinBytes, pidsMaxLimit, volumesPerContainerMax,
} from '../../src/lib/limits.js'

/**
 * The one container spec and its validators (lib/container-spec.ts): what every boundary (the
 * public API, the node operations, the CSM daemon) checks a body with. A body from any client
 * is either the typed value or a TessError with a 400-class code, a message naming the field and
 * the value, and a hint; never another exception.
 */

const nbd = { host: '10.0.0.1', port: 10809, export: 'vol-data' }
const badRequestCodes = ['TESS_E_BAD_REQUEST', 'TESS_E_INVALID']

/** The coded error `f` throws (the test fails when it throws anything else, or nothing). */
function refusal(f: () => unknown): TessError {
  try {
    f()
  } catch (e) {
    expect(e, String(e)).toBeInstanceOf(TessError)
    const t = e as TessError
    expect(badRequestCodes).toContain(t.code)
    expect(t.hint.length).toBeGreaterThan(0)
    return t
  }
  throw new Error('expected a refusal, got a value')
}

describe('parseContainerSpec: the spec a CSM runs', () => {
  it('answers the typed spec of a good body, dropping unknown fields and empty volumes', () => {
    const spec = parseContainerSpec({
      name: 'web', image: 'docker.io/library/busybox:1.36', command: ['sh', '-c', 'echo hi'], entrypoint: ['/bin/init'],
      env: ['A=1', 'EMPTY=', 'URL=http://x/?a=b'], workingDir: '/srv', user: '1000:1000', cpus: 0.5, memoryBytes: 64 * 2 ** 20, pidsMax: 100,
      network: 'host', rlimits: [{ type: 'RLIMIT_NOFILE', soft: 1024, hard: 4096 }], userns: true, extra: 'ignored',
      volumes: [{ name: 'data', target: '/data/', readOnly: true, nbd, formatted: true }],
    }, 'test')
    expect(spec).toEqual({
      name: 'web', image: 'docker.io/library/busybox:1.36', command: ['sh', '-c', 'echo hi'], entrypoint: ['/bin/init'],
      env: ['A=1', 'EMPTY=', 'URL=http://x/?a=b'], workingDir: '/srv', user: '1000:1000', cpus: 0.5, memoryBytes: 64 * 2 ** 20, pidsMax: 100,
      network: 'host', rlimits: [{ type: 'RLIMIT_NOFILE', soft: 1024, hard: 4096 }], userns: true,
      volumes: [{ name: 'data', target: '/data', readOnly: true, nbd, formatted: true }],
    })
    expect(parseContainerSpec({ image: 'busybox', volumes: [], userns: false }, 'test')).toEqual({ image: 'busybox' })
  })

  it('refuses wrong types, with the field and the value in the message', () => {
    const cases: Array<[unknown, RegExp]> = [
      [null, /body must be a JSON object, got null/],
      [[], /body must be a JSON object, got an array of 0/],
      ['spec', /body must be a JSON object, got "spec"/],
      [{}, /field "image" is required/],
      [{ image: 5 }, /field "image" must be a string, got 5/],
      [{ image: '' }, /field "image" is empty/],
      [{ image: 'x', name: 'Bad_Name' }, /invalid container name "Bad_Name"/],
      [{ image: 'x', cpus: 'many' }, /field "cpus" must be a number, got "many"/],
      [{ image: 'x', memoryBytes: 1.5 }, /field "memoryBytes" must be a whole number, got 1.5/],
      [{ image: 'x', command: 'sh -c x' }, /field "command" must be an array of strings, got "sh -c x"/],
      [{ image: 'x', command: ['ok', 7] }, /entry 1 of field "command" must be a string, got 7/],
      [{ image: 'x', env: ['NOEQUALS'] }, /entry 0 of field "env" is not KEY=VALUE: no "="/],
      [{ image: 'x', env: ['1BAD=x'] }, /entry 0 of field "env" is not KEY=VALUE: bad key "1BAD"/],
      [{ image: 'x', env: ['OK=a\0b'] }, /entry 0 of field "env" \(OK\) holds a NUL byte/],
      [{ image: 'x', network: 'bridge' }, /field "network" = "bridge" is not one of none, host/],
      [{ image: 'x', userns: 'yes' }, /field "userns" must be true or false, got "yes"/],
      [{ image: 'x', workingDir: 'srv' }, /field "workingDir" = "srv" is not an absolute path/],
      [{ image: 'x', rlimits: [{ type: 'RLIMIT_NOFILE', soft: -1, hard: 1 }] }, /entry 0 of field "rlimits": field "soft" = -1 is out of range/],
      [{ image: 'x', volumes: {} }, /field "volumes" must be an array of objects/],
      [{ image: 'x', volumes: [null] }, /entry 0 of field "volumes" must be an object, got null/],
      [{ image: 'x', volumes: [{ name: 'a', target: '/a', readOnly: false }] }, /entry 0 of field "volumes": field "nbd" is required/],
      [{ image: 'x', volumes: [{ name: 'a', target: '/a', readOnly: false, nbd: { ...nbd, port: 70000 } }] }, /field "nbd": field "port" = 70000 is out of range 1..65535/],
      [{ image: 'x', volumes: [{ name: 'a', target: '/a', readOnly: false, nbd: { ...nbd, export: '../etc' } }] }, /invalid vDisk name "..\/etc"/],
    ]
    for (const [body, message] of cases) {
      const e = refusal(() => parseContainerSpec(body, 'the CSM "web"'))
      expect(e.message, JSON.stringify(body)).toMatch(/^the CSM "web": /)
      expect(e.message, JSON.stringify(body)).toMatch(message)
    }
  })

  it('never repeats an environment value: values are often credentials', () => {
    const e = refusal(() => parseContainerSpec({ image: 'x', env: ['OK=1', 'TOKEN secret-value-123'] }, 't'))
    expect(e.message).not.toContain('secret-value-123')
    const nul = refusal(() => parseContainerSpec({ image: 'x', env: ['TOKEN=secret-value-123\0'] }, 't'))
    expect(nul.message).not.toContain('secret-value-123')
  })

  it('bounds: the limits of lib/limits.ts, at and just past each edge', () => {
    const ok = (o: Record<string, unknown>) => parseContainerSpec({ image: 'x', ...o }, 't')
    expect(ok({ cpus: cpusMin, memoryBytes: memoryLimitMinBytes }).cpus).toBe(cpusMin)
    expect(ok({ cpus: cpusMax, pidsMax: pidsMaxLimit }).cpus).toBe(cpusMax)
    expect(refusal(() => ok({ cpus: cpusMin / 2 })).message).toMatch(/field "cpus" = 0.005 is out of range 0.01..4096/)
    expect(refusal(() => ok({ cpus: cpusMax + 1 })).code).toBe('TESS_E_INVALID')
    expect(refusal(() => ok({ cpus: Number.POSITIVE_INFINITY })).message).toMatch(/field "cpus" must be a number, got Infinity/)
    expect(refusal(() => ok({ cpus: Number.NaN })).message).toMatch(/field "cpus" must be a number, got NaN/)
    expect(refusal(() => ok({ memoryBytes: memoryLimitMinBytes - 1 })).message).toMatch(/field "memoryBytes" = 4194303 is out of range/)
    expect(refusal(() => ok({ pidsMax: 0 })).code).toBe('TESS_E_INVALID')
    expect(ok({ command: Array.from({ length: containerArgsMax }, () => 'a') }).command).toHaveLength(containerArgsMax)
    expect(refusal(() => ok({ command: Array.from({ length: containerArgsMax + 1 }, () => 'a') })).message).toMatch(/field "command" has 4097 entries, at most 4096/)
    expect(refusal(() => ok({ env: Array.from({ length: containerEnvMax + 1 }, (_, i) => `K${i}=v`) })).message).toMatch(/field "env" has 4097 entries/)
    expect(ok({ env: [`BIG=${'x'.repeat(containerArgBytesMax - 4)}`] }).env).toHaveLength(1)
    expect(refusal(() => ok({ env: [`BIG=${'x'.repeat(containerArgBytesMax)}`] })).message).toMatch(/entry 0 of field "env" is 131076 characters long, at most 131072/)
    const vols = (n: number) => Array.from({ length: n }, (_, i) => ({ name: `v${i}`, target: `/v${i}`, readOnly: false, nbd, formatted: false }))
    expect(ok({ volumes: vols(volumesPerContainerMax) }).volumes).toHaveLength(volumesPerContainerMax)
    expect(refusal(() => ok({ volumes: vols(volumesPerContainerMax + 1) })).message).toMatch(/field "volumes" has 17 entries, at most 16/)
  })

  it('a huge value is cut short in the message', () => {
    const e = refusal(() => parseContainerSpec({ image: 'x', cpus: 'y'.repeat(500_000) }, 't'))
    expect(e.message.length).toBeLessThan(200)
    const big = refusal(() => parseContainerSpec({ image: 'x', command: Array.from({ length: 100_000 }, () => 'a') }, 't'))
    expect(big.message.length).toBeLessThan(200)
  })
})

describe('parseRunRequest: the public API run', () => {
  it('answers the request with volume mounts (no NBD export yet) and where it may go', () => {
    expect(parseRunRequest({ name: 'web', image: 'busybox', csm: 'c1', cpus: 1, volumes: [{ name: 'data', target: '/d', readOnly: true }] }, 't'))
      .toEqual({ name: 'web', image: 'busybox', csm: 'c1', cpus: 1, volumes: [{ name: 'data', target: '/d', readOnly: true }] })
    expect(parseRunRequest({ name: 'web', image: 'busybox', pool: 'p', userns: true, network: 'none' }, 't')).toEqual({ name: 'web', image: 'busybox', pool: 'p', userns: true, network: 'none' })
  })

  it('checks the spec fields with the same bounds as the CSM', () => {
    const both = (o: Record<string, unknown>) => [
      refusal(() => parseRunRequest({ name: 'web', image: 'x', ...o }, 't')),
      refusal(() => parseContainerSpec({ name: 'web', image: 'x', ...o }, 't')),
    ].map((e) => `${e.code} ${e.message}`)
    for (const o of [{ cpus: 0 }, { cpus: 5000 }, { memoryBytes: 1 }, { env: ['x'] }, { network: 'bridge' }, { command: [1] }]) {
      const [a, b] = both(o)
      expect(a, JSON.stringify(o)).toBe(b)
    }
  })

  it('refuses a missing or bad name, CSM or pool, and bad volume mounts', () => {
    expect(refusal(() => parseRunRequest({ image: 'x' }, 't')).code).toBe('TESS_E_BAD_REQUEST')
    expect(refusal(() => parseRunRequest({ name: 5, image: 'x' }, 't')).code).toBe('TESS_E_BAD_REQUEST')
    expect(refusal(() => parseRunRequest({ name: 'a'.repeat(64), image: 'x' }, 't')).message).toMatch(/field "name" is 64 characters long/)
    expect(refusal(() => parseRunRequest({ name: 'web', image: 'x', csm: '../x' }, 't')).message).toMatch(/invalid CSM name/)
    expect(refusal(() => parseRunRequest({ name: 'web', image: 'x', pool: 'P' }, 't')).message).toMatch(/invalid CSM pool name/)
    expect(refusal(() => parseRunRequest({ name: 'web', image: 'x', volumes: [{ name: 'd', target: '/proc/x' }] }, 't')).message).toMatch(/a volume cannot be mounted at \/proc\/x/)
    expect(refusal(() => parseRunRequest({ name: 'web', image: 'x', volumes: [{ name: 'd', target: '/a' }, { name: 'e', target: '/a/b' }] }, 't')).message).toMatch(/volume targets overlap at \/a\/b/)
    expect(refusal(() => parseRunRequest({ name: 'web', image: 'x', volumes: [{ name: 'd', target: '/a' }, { name: 'd', target: '/b' }] }, 't')).message).toMatch(/volume "d" is given twice/)
  })

  it('a restart policy: no, always, on-failure with an optional retry count; anything else is refused with the field named', () => {
    expect(parseRunRequest({ name: 'w', image: 'x', restart: { policy: 'always' } }, 't').restart).toEqual({ policy: 'always' })
    expect(parseRunRequest({ name: 'w', image: 'x', restart: { policy: 'on-failure', maxRetries: 3 } }, 't').restart).toEqual({ policy: 'on-failure', maxRetries: 3 })
    expect(parseContainerSpec({ image: 'x', restart: { policy: 'on-failure' } }, 't').restart).toEqual({ policy: 'on-failure' })
    expect(parseRunRequest({ name: 'w', image: 'x' }, 't').restart).toBeUndefined()
    expect(refusal(() => parseRunRequest({ name: 'w', image: 'x', restart: { policy: 'sometimes' } }, 't')).message).toMatch(/field "restart".*policy/)
    expect(refusal(() => parseRunRequest({ name: 'w', image: 'x', restart: { policy: 'always', maxRetries: 2 } }, 't')).message).toMatch(/maxRetries is for policy on-failure/)
    expect(refusal(() => parseRunRequest({ name: 'w', image: 'x', restart: { policy: 'on-failure', maxRetries: 0 } }, 't')).message).toMatch(/maxRetries/)
    expect(refusal(() => parseRunRequest({ name: 'w', image: 'x', restart: 'always' }, 't')).code).toBe('TESS_E_BAD_REQUEST')
  })

  it('--restart values: parsed and printed back the same', () => {
    for (const v of ['no', 'always', 'on-failure', 'on-failure:5']) expect(formatRestartPolicy(parseRestartPolicy(v))).toBe(v)
    for (const v of ['', 'yes', 'always:3', 'on-failure:0', 'on-failure:x', 'on-failure:12345678', 'no:1']) {
      expect(refusal(() => parseRestartPolicy(v)).code, v).toBe('TESS_E_INVALID')
    }
  })
})

describe('volume mounts and specs', () => {
  it('checks names, targets, the count and the NBD export', () => {
    expect(parseVolumeMounts([{ name: 'a', target: '/a/', readOnly: false }], 't')).toEqual([{ name: 'a', target: '/a', readOnly: false }])
    expect(parseVolumeMounts(undefined, 't')).toEqual([])
    expect(refusal(() => parseVolumeMounts([{ name: 'a', target: '/a/../b' }], 't')).message).toMatch(/is not a normalised path/)
    expect(refusal(() => parseVolumeMounts([{ name: 'a', target: 'x'.repeat(2000) }], 't')).message.length).toBeLessThan(300)
    expect(parseVolumeSpecs([{ name: 'a', target: '/a', nbd }], 't')).toEqual([{ name: 'a', target: '/a', readOnly: false, nbd, formatted: false }])
    expect(refusal(() => parseVolumeSpecs([{ name: 'a', target: '/a', nbd: { ...nbd, host: 'h'.repeat(300) } }], 't')).message).toMatch(/field "host" is 300 characters long/)
  })
})

describe('CSM quotas and specs', () => {
  it('every CSM shape has the bounds of a container', () => {
    expect(parseCsmQuota({ cpus: cpusMin, memoryBytes: memoryLimitMinBytes }, 't')).toEqual({ cpus: cpusMin, memoryBytes: memoryLimitMinBytes })
    for (const f of [
      (o: Record<string, unknown>) => parseCsmQuota({ cpus: 1, memoryBytes: 2 ** 30, ...o }, 't'),
      (o: Record<string, unknown>) => parseCsmCreateRequest({ name: 'c', cpus: 1, memoryBytes: 2 ** 30, ...o }, 't'),
      (o: Record<string, unknown>) => parseCsmUpdateRequest({ cpus: 1, memoryBytes: 2 ** 30, ...o }, 't'),
      (o: Record<string, unknown>) => parseCsmSpec({ version: 1, name: 'c', id: '1', runtime: 'runc', cgroupParent: '/tess-abc', cpus: 1, memoryBytes: 2 ** 30, ...o }, 't'),
    ]) {
      expect(refusal(() => f({ cpus: 0 })).message).toMatch(/field "cpus" = 0 is out of range 0.01..4096/)
      expect(refusal(() => f({ cpus: 4097 })).code).toBe('TESS_E_INVALID')
      expect(refusal(() => f({ memoryBytes: 1 })).message).toMatch(/field "memoryBytes" = 1 is out of range/)
      expect(refusal(() => f({ memoryBytes: 'lots' })).code).toBe('TESS_E_INVALID')
    }
  })

  it('create: name, node and runtime; update: at least one field', () => {
    expect(parseCsmCreateRequest({ name: 'c', cpus: 1, memoryBytes: 2 ** 30, node: 'n1', runtime: 'crun' }, 't')).toEqual({ name: 'c', cpus: 1, memoryBytes: 2 ** 30, node: 'n1', runtime: 'crun' })
    expect(refusal(() => parseCsmCreateRequest({ name: 'c', cpus: 1, memoryBytes: 2 ** 30, runtime: 'kata' }, 't')).message).toMatch(/field "runtime" = "kata" is not one of runc, crun/)
    expect(refusal(() => parseCsmCreateRequest({ name: 'x', cpus: 'many', memoryBytes: 1 }, 't')).code).toBe('TESS_E_INVALID')
    expect(parseCsmUpdateRequest({ cpus: 2 }, 't')).toEqual({ cpus: 2 })
    expect(refusal(() => parseCsmUpdateRequest({}, 't')).message).toBe('t: nothing to update')
  })

  it('csm.json: version, runtime and a cgroup parent of the form the CVM writes', () => {
    const spec = { version: 1, name: 'c', id: '7', runtime: 'runc', cgroupParent: '/tess-abc123', cpus: 1, memoryBytes: 2 ** 30 }
    expect(parseCsmSpec(spec, 't')).toEqual(spec)
    expect(refusal(() => parseCsmSpec({ ...spec, version: 2 }, 't')).message).toMatch(/unknown version 2/)
    expect(refusal(() => parseCsmSpec({ ...spec, cgroupParent: '/../../sys' }, 't')).message).toMatch(/field "cgroupParent"/)
  })
})

describe('random bodies: a coded refusal or a value, never a crash', () => {
  /** mulberry32: replayable from one integer */
  function rng(seed: number): () => number {
    let s = seed
    return () => {
      s = (s + 0x6d2b79f5) | 0
      let t = s
      t = Math.imul(t ^ (t >>> 15), t | 1)
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296
    }
  }
  const r = rng(20240611)
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!
  const atoms: unknown[] = [null, true, false, 0, -1, 0.01, 1e308, -0, 4096, 4097, '', 'x', '/a', 'A=1', '..', 'none', 'host', 'runc', 'a'.repeat(70), '\0']
  function value(depth: number): unknown {
    const k = r()
    if (depth > 2 || k < 0.5) return pick(atoms)
    if (k < 0.75) return Array.from({ length: Math.floor(r() * 4) }, () => value(depth + 1))
    return body(depth + 1)
  }
  const fields = ['name', 'image', 'command', 'entrypoint', 'env', 'workingDir', 'user', 'cpus', 'memoryBytes', 'pidsMax', 'network', 'rlimits', 'volumes', 'userns', 'csm', 'pool',
    'target', 'readOnly', 'nbd', 'host', 'port', 'export', 'formatted', 'version', 'id', 'runtime', 'cgroupParent', 'type', 'soft', 'hard']
  function body(depth: number): Record<string, unknown> {
    const o: Record<string, unknown> = {}
    for (let i = Math.floor(r() * 8); i > 0; i--) o[pick(fields)] = value(depth)
    return o
  }

  it('for every validator', () => {
    const parsers = [parseContainerSpec, parseRunRequest, parseVolumeMounts, parseVolumeSpecs, parseCsmQuota, parseCsmCreateRequest, parseCsmUpdateRequest, parseCsmSpec]
    let accepted = 0
    for (let i = 0; i < 3000; i++) {
      const b = r() < 0.1 ? value(0) : { image: 'x', name: 'n', ...body(0) }
      for (const p of parsers) {
        try {
          p(b, 't')
          accepted++
        } catch (e) {
          if (!(e instanceof TessError) || !badRequestCodes.includes(e.code) || e.hint === '') throw new Error(`${p.name}(${JSON.stringify(b)}) threw ${String(e)}`)
        }
      }
    }
    expect(accepted).toBeGreaterThan(0)
  })
})
