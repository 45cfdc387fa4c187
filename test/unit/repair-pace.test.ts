import { describe, expect, it } from 'vitest'
import { repairPacer } from '../../src/cvm/vdisk/engine.js'
import { IoActivity } from '../../src/cvm/vdisk/vdisk.js'
import { fakeClock } from '../helpers/clock.js'

const MiB = 1024 * 1024

/** The curator's repair yields to client I/O on its node (engine.ts repairPacer, vdisk.ts IoActivity), by a fake clock. */
describe('the repair\'s pace', () => {
  it('copies at full speed while the node is idle, and at the busy rate while clients do I/O, the copy time included', async () => {
    const clock = fakeClock()
    let busy = false
    const pace = repairPacer(clock, { busyBytesPerSec: 32 * MiB, busy: () => busy })
    // idle: no pause
    await pace(64 * MiB)
    expect(clock.sleeps).toEqual([])
    // busy: a 64 MiB group takes 2 s at 32 MiB/s; 500 ms went by copying it, 1.5 s of pause in 100 ms steps
    busy = true
    const t0 = clock.now()
    await clock.sleep(500)
    clock.sleeps.length = 0
    await pace(64 * MiB)
    expect(clock.now() - t0).toBe(2000)
    expect(clock.sleeps).toHaveLength(15)
    expect(Math.max(...clock.sleeps)).toBeLessThanOrEqual(100)
  })

  it('a pause ends when the clients stop; a limit of its own still applies', async () => {
    let steps = 0
    const clock = fakeClock(() => { steps++ })
    const pace = repairPacer(clock, { busyBytesPerSec: 32 * MiB, busy: () => steps < 3 })
    const t0 = clock.now()
    await pace(64 * MiB)
    expect(clock.now() - t0).toBe(300) // three 100 ms steps, then idle: on at once
    const limited = repairPacer(clock, { limitBytesPerSec: 64 * MiB, busy: () => false })
    const t1 = clock.now()
    await limited(128 * MiB)
    expect(clock.now() - t1).toBe(2000)
  })

  it('groups copied at once take their busy pauses one after the other: the busy rate holds for all of them', async () => {
    const clock = fakeClock()
    const pace = repairPacer(clock, { busyBytesPerSec: 32 * MiB, busy: () => true })
    const t0 = clock.now()
    await Promise.all([pace(32 * MiB), pace(32 * MiB), pace(32 * MiB)])
    expect(clock.now() - t0).toBe(3000)
  })

  it('client requests make a node busy for the window after the last one', () => {
    const a = new IoActivity()
    expect(a.busy(1000, 500)).toBe(false)
    a.ops++
    expect(a.busy(1000, 500)).toBe(true)
    expect(a.busy(1400, 500)).toBe(true)
    expect(a.busy(1500, 500)).toBe(false)
    a.ops += 3
    expect(a.busy(2000, 500)).toBe(true)
  })
})
