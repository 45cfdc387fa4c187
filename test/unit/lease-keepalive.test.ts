import { EventEmitter } from 'node:events'
import { EtcdLeaseInvalidError, GRPCDeadlineExceededError, type Lease } from 'etcd3'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { keepLeaseAlive } from '../../src/lib/etcd.js'
import { leaseGiveUpMarginMs, leaseKeepaliveRetryMs, leaseKeepaliveTimeoutMs, leaseKeepalivesPerTtl } from '../../src/lib/limits.js'

/**
 * A lease whose keepalives the test answers: `members` says, per keepalive, whether the member
 * the pool picked answers (true), stays silent until the deadline (false), or says the lease
 * expired ('expired').
 */
class FakeLease extends EventEmitter {
  sent = 0
  released = false
  constructor(private readonly members: Array<boolean | 'expired'>) { super() }
  async grant(): Promise<string> { return '42' }
  release(): void { this.released = true }
  async keepaliveOnce(opts: { deadline: number }): Promise<unknown> {
    const answer = this.members[this.sent++] ?? true
    if (answer === 'expired') {
      const e = new EtcdLeaseInvalidError('42')
      this.emit('lost', e) // etcd3 does both: the event, then the rejection
      throw e
    }
    if (answer) return { TTL: '10' }
    await new Promise((r) => setTimeout(r, opts.deadline - Date.now()))
    throw new GRPCDeadlineExceededError('deadline exceeded')
  }
}

const ttlSec = 10
const interval = (ttlSec * 1000) / leaseKeepalivesPerTtl

describe('keepLeaseAlive', () => {
  afterEach(() => { vi.useRealTimers() })

  it('a silent member (a partition) costs a retry, not the lease: the next keepalive goes out at once and the lease lives on', async () => {
    vi.useFakeTimers()
    // the 2nd and 3rd keepalives go to a member that no longer answers; the 4th reaches another
    const lease = new FakeLease([true, false, false, true])
    const lost = vi.fn()
    const stop = keepLeaseAlive(lease as unknown as Lease, ttlSec, lost)
    await vi.advanceTimersByTimeAsync(interval) // 1st: answered
    expect(lease.sent).toBe(1)
    await vi.advanceTimersByTimeAsync(interval) // 2nd: silent
    await vi.advanceTimersByTimeAsync(leaseKeepaliveTimeoutMs + leaseKeepaliveRetryMs) // 3rd goes out at once
    expect(lease.sent).toBe(3)
    await vi.advanceTimersByTimeAsync(leaseKeepaliveTimeoutMs + leaseKeepaliveRetryMs) // 4th: answered
    expect(lease.sent).toBe(4)
    // well past the TTL since the silence began, and the lease still lives: keepalives go on at the normal pace
    await vi.advanceTimersByTimeAsync(3 * ttlSec * 1000)
    expect(lost).not.toHaveBeenCalled()
    expect(lease.sent).toBe(4 + 3 * leaseKeepalivesPerTtl)
    stop()
    const sent = lease.sent
    await vi.advanceTimersByTimeAsync(3 * ttlSec * 1000)
    expect(lease.sent).toBe(sent) // stopped: nothing more is sent
    expect(lease.released).toBe(false)
  })

  it('no answer gives the lease up once, the margin before etcd could let it go, although etcd never said it expired', async () => {
    vi.useFakeTimers()
    const lease = new FakeLease([true, ...Array<boolean>(50).fill(false)])
    const lost = vi.fn()
    keepLeaseAlive(lease as unknown as Lease, ttlSec, lost)
    await vi.advanceTimersByTimeAsync(interval) // answered, sent at t = interval: etcd keeps it until interval + TTL at least
    await vi.advanceTimersByTimeAsync(ttlSec * 1000 - leaseGiveUpMarginMs - 100)
    expect(lost).not.toHaveBeenCalled()
    expect(lease.sent).toBeGreaterThan(4) // unanswered keepalives were sent again and again
    await vi.advanceTimersByTimeAsync(200)
    expect(lost).toHaveBeenCalledTimes(1)
    expect(String(lost.mock.calls[0]![0])).toMatch(/no keepalive of the lease was answered for 9 s of its 10 s \(the last error: deadline exceeded\)/)
    expect(lease.released).toBe(true)
    const sent = lease.sent
    await vi.advanceTimersByTimeAsync(3 * ttlSec * 1000)
    expect(lease.sent).toBeLessThanOrEqual(sent + 1) // at most the one in flight when it was given up
    expect(lost).toHaveBeenCalledTimes(1)
  })

  it('etcd saying the lease expired gives it up at once, once', async () => {
    vi.useFakeTimers()
    const lease = new FakeLease([true, 'expired'])
    const lost = vi.fn()
    keepLeaseAlive(lease as unknown as Lease, ttlSec, lost)
    await vi.advanceTimersByTimeAsync(2 * interval)
    expect(lost).toHaveBeenCalledTimes(1)
    expect(lost.mock.calls[0]![0]).toBeInstanceOf(EtcdLeaseInvalidError)
    await vi.advanceTimersByTimeAsync(3 * ttlSec * 1000)
    expect(lease.sent).toBe(2)
  })
})
