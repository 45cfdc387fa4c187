import { EventEmitter } from 'node:events'
import type { Etcd3 } from 'etcd3'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { Curator } from '../../src/cvm/curator/curator.js'
import { curatorCampaignRetryMs } from '../../src/lib/limits.js'

/** A campaign of the fake election: the test makes it fail, as etcd3's does while its lease keeps failing. */
class FakeCampaign extends EventEmitter {
  resigned = false
  async resign(): Promise<void> {
    this.resigned = true
  }
}

describe('the curator election while etcd is out of reach', () => {
  afterEach(() => { vi.useRealTimers() })

  it('a campaign that reports its lost lease again and again is replaced once, after the retry delay, not once per error', async () => {
    vi.useFakeTimers()
    const campaigns: FakeCampaign[] = []
    const election = { campaign: () => { const c = new FakeCampaign(); campaigns.push(c); return c }, leader: async () => undefined }
    const etcd = { namespace: () => ({ election: () => election }) } as unknown as Etcd3
    const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined }
    const c = new Curator(etcd, {
      nodeName: 'n1', log: quiet, repair: async () => ({ egroups: 0, bytes: 0 }), nodesChanged: () => new Promise(() => undefined), nodesUp: () => [],
    })
    c.start()
    expect(campaigns).toHaveLength(1)
    // the lease keeps failing: the campaign reports it many times a second
    for (let round = 0; round < 5; round++) {
      const current = campaigns[campaigns.length - 1]!
      for (let i = 0; i < 20; i++) current.emit('error', new Error('Execution prevented because the circuit breaker is open'))
      // older campaigns go on reporting too
      for (const old of campaigns.slice(0, -1)) old.emit('error', new Error('Lease is expired or revoked'))
      await vi.advanceTimersByTimeAsync(curatorCampaignRetryMs)
    }
    // one new campaign per failed one: 1 + 5, each failed one resigned (its keep-alives stopped)
    expect(campaigns).toHaveLength(6)
    expect(campaigns.slice(0, -1).every((x) => x.resigned)).toBe(true)
    expect(campaigns[5]!.resigned).toBe(false)
    await c.stop()
  })
})
