import { Etcd3, GRPCDeadlineExceededError, GRPCUnavailableError, EtcdLeaseInvalidError } from 'etcd3'
import net from 'node:net'
import { describe, expect, it } from 'vitest'
import { faultHandlingFor, isTransientEtcdError, retryTransientEtcd } from '../../src/lib/etcd.js'
import { TessError } from '../../src/lib/errors.js'

describe('transient etcd failures on the data path', () => {
  it('tells a passing failure (no leader, no answer in time, a resting member) from one that stays', () => {
    expect(isTransientEtcdError(new GRPCUnavailableError('14 UNAVAILABLE: no connection'))).toBe(true)
    expect(isTransientEtcdError(new GRPCDeadlineExceededError('4 DEADLINE_EXCEEDED: Deadline exceeded after 2.000s'))).toBe(true)
    expect(isTransientEtcdError(new Error('Execution prevented because the circuit breaker is open'))).toBe(true)
    expect(isTransientEtcdError(new TessError('TESS_E_UNREACHABLE', 'cannot list disks: etcd: 4 DEADLINE_EXCEEDED: Deadline exceeded after 2.001s', 'h'))).toBe(true)
    expect(isTransientEtcdError(new TessError('TESS_E_UNREACHABLE', 'cannot reach node n2: connect ECONNREFUSED', 'h'))).toBe(false)
    expect(isTransientEtcdError(new TessError('TESS_E_CONFLICT', 'etcd: 4 DEADLINE_EXCEEDED', 'h'))).toBe(false)
    expect(isTransientEtcdError(new EtcdLeaseInvalidError('lease 1'))).toBe(false)
    expect(isTransientEtcdError(new Error('etcd: request timed out'))).toBe(false)
    expect(isTransientEtcdError('DEADLINE_EXCEEDED')).toBe(false)
  })

  it('tries again through a leader change, never past its wait, and never for other failures', async () => {
    let calls = 0
    await expect(retryTransientEtcd(async () => {
      if (++calls < 3) throw new GRPCUnavailableError('14 UNAVAILABLE')
      return 'done'
    })).resolves.toBe('done')
    expect(calls).toBe(3)

    calls = 0
    const refused = new Error('compare failed')
    await expect(retryTransientEtcd(async () => { calls++; throw refused })).rejects.toBe(refused)
    expect(calls).toBe(1)

    calls = 0
    const t0 = Date.now()
    await expect(retryTransientEtcd(async () => { calls++; throw new GRPCDeadlineExceededError(`4 DEADLINE_EXCEEDED (${calls})`) }, 600)).rejects.toThrow(/DEADLINE_EXCEEDED \(\d\)/)
    expect(calls).toBeGreaterThanOrEqual(2)
    expect(calls).toBeLessThanOrEqual(3)
    expect(Date.now() - t0).toBeLessThan(600 + 5000) // bounded by its wait (a margin for a busy machine)
  })
})

describe('etcd3\'s circuit breaker', () => {
  /** the errors of `n` calls in a row to an etcd endpoint where nothing listens */
  const failures = async (opts: object, n: number): Promise<string[]> => {
    const port = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port
        s.close(() => resolve(p))
      })
    })
    const etcd = new Etcd3({ hosts: `http://127.0.0.1:${port}`, dialTimeout: 300, defaultCallOptions: () => ({ deadline: Date.now() + 300 }), ...opts })
    const out: string[] = []
    try {
      for (let i = 0; i < n; i++) out.push(await etcd.get('k').string().then(() => 'answered', (e: unknown) => String(e)))
    } finally {
      etcd.close()
    }
    return out
  }

  it('with one endpoint, a member that failed a few calls is not rested: every call tries it', async () => {
    expect(faultHandlingFor(['https://a:2379', 'https://b:2379'])).toEqual({})
    // the default (several members): after 3 failures the breaker opens and calls fail without trying
    expect((await failures({}, 6)).some((e) => /circuit breaker is open/.test(e))).toBe(true)
    const one = await failures(faultHandlingFor(['https://a:2379']), 6)
    expect(one).toHaveLength(6)
    for (const e of one) expect(e).not.toMatch(/circuit breaker/)
  }, 60_000)
})
