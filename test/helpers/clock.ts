import type { Clock } from '../../src/lib/clock.js'

/** A clock whose sleep advances time at once (and lets the test act at each sleep). */
export function fakeClock(onSleep?: (n: number, now: number) => void): Clock & { sleeps: number[] } {
  let t = 1_000_000
  const sleeps: number[] = []
  return {
    sleeps,
    now: () => t,
    sleep: async (ms) => {
      sleeps.push(ms)
      t += ms
      onSleep?.(sleeps.length, t)
    },
  }
}
