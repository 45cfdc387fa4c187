import { describe, expect, it } from 'vitest'
import { restartDecision } from '../../src/csm/runtime/containers.js'
import type { ContainerInfo, RestartPolicy } from '../../src/lib/container-spec.js'

/** When a CSM starts an exited container again (restartDecision): the policy, the user's stop, the backoff. */
const t0 = Date.parse('2026-01-01T00:00:00Z')
const iso = (ms: number) => new Date(ms).toISOString()
function rec(restart: RestartPolicy | undefined, o: Partial<ContainerInfo> = {}): ContainerInfo {
  return {
    id: '0123456789ab', name: 'c', csm: 'm', image: 'i', imageDigest: 'd', runtime: 'runc', status: 'exited', createdAt: iso(t0), stopSignal: 'SIGTERM', layers: [],
    startedAt: iso(t0), finishedAt: iso(t0 + 50), exitCode: 1,
    spec: { image: 'i', env: [], pidsMax: 10, network: 'none', rlimits: [], ...(restart !== undefined ? { restart } : {}) },
    ...o,
  }
}
const now = t0 + 1000

describe('restart decisions', () => {
  it('nothing without a policy, while running, after a user\'s stop, after a clean exit under on-failure, or once the retries are used', () => {
    expect(restartDecision(rec(undefined), now)).toEqual({ action: 'none' })
    expect(restartDecision(rec({ policy: 'no' }), now)).toEqual({ action: 'none' })
    expect(restartDecision(rec({ policy: 'always' }, { status: 'running' }), now)).toEqual({ action: 'none' })
    expect(restartDecision(rec({ policy: 'always' }, { stoppedByUser: true }), now)).toEqual({ action: 'none' })
    expect(restartDecision(rec({ policy: 'on-failure' }, { exitCode: 0 }), now)).toEqual({ action: 'none' })
    expect(restartDecision(rec({ policy: 'on-failure', maxRetries: 2 }, { restartCount: 2 }), now)).toEqual({ action: 'none' })
    // an exit whose status is unknown counts as a failure
    const { exitCode: _, ...unknown } = rec({ policy: 'on-failure' })
    expect(restartDecision(unknown, now).action).toBe('schedule')
  })

  it('backoff: 100 ms after the first exit, doubling with each short run in a row up to 30 s, back to 100 ms after a run of 10 s', () => {
    const wait = (o: Partial<ContainerInfo>) => {
      const d = restartDecision(rec({ policy: 'always' }, o), now)
      if (d.action !== 'schedule') throw new Error(d.action)
      return [d.at - now, d.streak]
    }
    expect(wait({})).toEqual([100, 1])
    expect(wait({ restartStreak: 1 })).toEqual([200, 2])
    expect(wait({ restartStreak: 4 })).toEqual([1600, 5])
    expect(wait({ restartStreak: 30 })).toEqual([30_000, 31])
    expect(wait({ restartStreak: 30, finishedAt: iso(t0 + 10_000) })).toEqual([100, 1])
  })

  it('a scheduled restart starts once its time has come', () => {
    expect(restartDecision(rec({ policy: 'always' }, { nextRestartAt: iso(now + 1) }), now)).toEqual({ action: 'none' })
    expect(restartDecision(rec({ policy: 'always' }, { nextRestartAt: iso(now) }), now)).toEqual({ action: 'start' })
  })
})
