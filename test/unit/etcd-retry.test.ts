import { GRPCDeadlineExceededError, GRPCUnavailableError, EtcdLeaseInvalidError } from 'etcd3'
import { describe, expect, it } from 'vitest'
import { isTransientEtcdError, retryTransientEtcd } from '../../src/lib/etcd.js'
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
