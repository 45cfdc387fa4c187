import { describe, expect, it } from 'vitest'
import { KeyedRwLock } from '../../src/cvm/vdisk/locks.js'

const tick = () => new Promise((r) => setImmediate(r))

describe('KeyedRwLock', () => {
  it('lets readers share and writers exclude', async () => {
    const l = new KeyedRwLock()
    const r1 = await l.read(1)
    const r2 = await l.read(1)
    let wrote = false
    const w = l.write(1).then((rel) => { wrote = true; return rel })
    await tick()
    expect(wrote).toBe(false)
    r1()
    await tick()
    expect(wrote).toBe(false)
    r2()
    const relW = await w
    expect(wrote).toBe(true)
    // a reader waits for the writer
    let read = false
    const r3 = l.read(1).then((rel) => { read = true; return rel })
    await tick()
    expect(read).toBe(false)
    relW()
    ;(await r3)()
    expect(l.size).toBe(0)
  })

  it('does not starve a waiting writer', async () => {
    const l = new KeyedRwLock()
    const r1 = await l.read(7)
    const order: string[] = []
    const w = l.write(7).then((rel) => { order.push('w'); return rel })
    const r2 = l.read(7).then((rel) => { order.push('r2'); return rel })
    await tick()
    r1()
    ;(await w)()
    ;(await r2)()
    expect(order).toEqual(['w', 'r2'])
  })

  it('keeps keys independent', async () => {
    const l = new KeyedRwLock()
    const a = await l.write(1)
    const b = await l.write(2)
    a()
    b()
    expect(l.size).toBe(0)
  })
})
