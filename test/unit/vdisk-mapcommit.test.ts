import { describe, expect, it } from 'vitest'
import { pendingAllocationsMax } from '../../src/lib/limits.js'
import { KeyedRwLock } from '../../src/cvm/vdisk/locks.js'
import type { MapWriter } from '../../src/cvm/vdisk/mapwriter.js'
import type { Replica } from '../../src/cvm/vdisk/replica.js'
import { Vdisk, type LoadedEgroup } from '../../src/cvm/vdisk/vdisk.js'
import { memReplica } from '../helpers/memreplica.js'

const MiB = 1024 * 1024

/** A block map writer whose puts complete only when the test says so. */
function heldMapWriter() {
  const held: Array<{ key: string, resolve: () => void, reject: (e: unknown) => void }> = []
  const committed = new Map<string, string>()
  const writer = {
    put: (key: string, value: string) => new Promise<void>((resolve, reject) => {
      held.push({ key, resolve: () => { committed.set(key, value); resolve() }, reject })
    }),
    delete: async (key: string) => { committed.delete(key) },
  }
  return { writer: writer as unknown as MapWriter, held, committed }
}

/**
 * A block map writer over a map, applying changes in the order asked (as MapWriter's queue does),
 * whose next answers can be lost after the change applied (an etcd timeout), and whose changes can
 * be held and then applied together.
 */
function lossyMapWriter() {
  const committed = new Map<string, string>()
  let lose = 0
  let held: Array<() => void> | undefined
  const answer = (apply: () => void): Promise<void> => new Promise<void>((resolve, reject) => {
    const run = () => {
      apply()
      if (lose > 0) {
        lose--
        reject(new Error('etcd: request timed out (the change applied)'))
      } else {
        resolve()
      }
    }
    if (held !== undefined) held.push(run)
    else run()
  })
  const writer = {
    put: (key: string, value: string) => answer(() => committed.set(key, value)),
    delete: (key: string) => answer(() => committed.delete(key)),
  }
  return {
    writer: writer as unknown as MapWriter, committed,
    loseNext: (n: number) => { lose = n },
    hold: () => { held = [] },
    release: () => { const h = held ?? []; held = undefined; for (const f of h) f() },
  }
}

/** A replica that keeps nothing (for counting allocations only). */
function nullReplica(): Replica {
  return { ...memReplica(), write: async () => undefined }
}

function vdisk(mapWriter: MapWriter, opts: { sizeBytes?: number, keepNothing?: boolean } = {}): Vdisk {
  let nextEg = 1
  const egroup = (): LoadedEgroup => ({ id: String(nextEg++), replicas: [opts.keepNothing ? nullReplica() : memReplica()], usedSlots: new Set(), freeSlots: Array.from({ length: 32 }, (_, i) => i), lock: new KeyedRwLock() })
  const eg = egroup()
  const log = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined }
  return new Vdisk('7', 'v', opts.sizeBytes ?? 64 * MiB, new Map(), new Map([[eg.id, eg]]), {
    mapWriter,
    mapKey: (vb) => `map/${vb}`,
    newEgroups: async (count) => {
      if (!opts.keepNothing) throw new Error('no more extent groups in this test')
      return Array.from({ length: count }, egroup)
    },
    replaceFailed: async () => { throw new Error('no replacement in this test') },
    log: log as never,
  })
}

const tick = () => new Promise((r) => setImmediate(r))

describe('vDisk block map commit at FLUSH', () => {
  it('a first write stays in memory until a flush, which commits it after syncing', async () => {
    const m = heldMapWriter()
    const v = vdisk(m.writer)
    await v.write(0, Buffer.alloc(4096, 1), false)
    await v.write(3 * MiB, Buffer.alloc(4096, 2), false)
    expect(v.pendingAllocations).toBe(2)
    expect(m.held.length).toBe(0)
    const f = v.flush()
    await tick()
    expect(m.held.map((h) => h.key).sort()).toEqual(['map/0', 'map/3'])
    for (const h of m.held) h.resolve()
    await f
    expect(v.pendingAllocations).toBe(0)
    expect([...m.committed.keys()].sort()).toEqual(['map/0', 'map/3'])
    expect((await v.read(3 * MiB, 4096)).equals(Buffer.alloc(4096, 2))).toBe(true)
  })

  it('two flushes at once (multi-conn): neither is answered before the allocations are in etcd', async () => {
    const m = heldMapWriter()
    const v = vdisk(m.writer)
    await v.write(0, Buffer.alloc(4096, 1), false)
    let firstDone = false
    let secondDone = false
    const first = v.flush().then(() => { firstDone = true })
    const second = v.flush().then(() => { secondDone = true })
    await tick()
    await tick()
    // one put is on its way; the second flush found the entry already committing
    expect(m.held.length).toBe(1)
    expect(firstDone).toBe(false)
    expect(secondDone).toBe(false)
    m.held[0]!.resolve()
    await Promise.all([first, second])
    expect(m.committed.has('map/0')).toBe(true)
  })

  it('a failed commit fails every flush waiting for it and keeps the allocation pending for the next', async () => {
    const m = heldMapWriter()
    const v = vdisk(m.writer)
    await v.write(MiB, Buffer.alloc(4096, 5), false)
    const first = v.flush()
    const second = v.flush()
    await tick()
    await tick()
    m.held[0]!.reject(new Error('etcd unavailable'))
    await expect(first).rejects.toThrow(/cannot record/)
    await expect(second).rejects.toThrow(/cannot record/)
    expect(v.pendingAllocations).toBe(1)
    const third = v.flush()
    await tick()
    m.held[1]!.resolve()
    await third
    expect(v.pendingAllocations).toBe(0)
    expect(m.committed.has('map/1')).toBe(true)
  })

  it('trimming an allocation that never reached etcd needs no etcd operation; one being committed is deleted after the put', async () => {
    const m = heldMapWriter()
    const v = vdisk(m.writer)
    await v.write(2 * MiB, Buffer.alloc(MiB, 3), false)
    await v.trim(2 * MiB, MiB)
    expect(v.pendingAllocations).toBe(0)
    await v.flush()
    expect(m.held.length).toBe(0)
    // now one on its way to etcd when the trim comes
    await v.write(4 * MiB, Buffer.alloc(MiB, 4), false)
    const f = v.flush()
    await tick()
    expect(m.held.length).toBe(1)
    const t = v.trim(4 * MiB, MiB)
    m.held[0]!.resolve()
    await f
    await t
    expect(m.committed.has('map/4')).toBe(false)
    expect((await v.read(4 * MiB, 4096)).equals(Buffer.alloc(4096))).toBe(true)
  })

  it('a client that never flushes: at pendingAllocationsMax allocations a flush runs in the background', async () => {
    const m = heldMapWriter()
    const v = vdisk(m.writer, { sizeBytes: 8192 * MiB, keepNothing: true })
    const block = Buffer.alloc(4096, 9)
    for (let vb = 0; vb < pendingAllocationsMax - 1; vb++) await v.write(vb * MiB, block, false)
    await tick()
    expect(m.held.length).toBe(0)
    await v.write((pendingAllocationsMax - 1) * MiB, block, false)
    await tick()
    await tick()
    expect(m.held.length).toBe(pendingAllocationsMax)
    for (const h of m.held) h.resolve()
    await tick()
    await tick()
    expect(v.pendingAllocations).toBe(0)
  })
})

describe('vDisk block map when etcd applied a change but its answer was lost', () => {
  it('a commit that failed but applied: a trim deletes the entry in etcd (it is not only dropped from memory)', async () => {
    const m = lossyMapWriter()
    const v = vdisk(m.writer)
    await v.write(2 * MiB, Buffer.alloc(4096, 3), false)
    m.loseNext(1)
    await expect(v.flush()).rejects.toThrow(/cannot record/)
    expect(m.committed.has('map/2')).toBe(true)
    await v.trim(2 * MiB, MiB)
    // else etcd keeps naming a slot that is free now, and the next load maps the vBlock to it again
    expect(m.committed.has('map/2')).toBe(false)
    await v.flush()
    expect(m.committed.has('map/2')).toBe(false)
  })

  it('a delete that failed but applied: the extent stays mapped, and the next flush puts its entry back', async () => {
    const m = lossyMapWriter()
    const v = vdisk(m.writer)
    await v.write(3 * MiB, Buffer.alloc(4096, 4), false)
    await v.flush()
    expect(m.committed.has('map/3')).toBe(true)
    m.loseNext(1)
    await expect(v.trim(3 * MiB, MiB)).rejects.toThrow(/cannot free/)
    expect(m.committed.has('map/3')).toBe(false)
    // the trim failed: the data is still there and mapped in memory...
    expect((await v.read(3 * MiB, 4096)).equals(Buffer.alloc(4096, 4))).toBe(true)
    // ...and after a flush in etcd too (a load would otherwise find no extent for it)
    await v.flush()
    expect(m.committed.has('map/3')).toBe(true)
  })

  it('a trim of such an entry while a flush is on its way: the flush does not put back what the trim deletes', async () => {
    const m = lossyMapWriter()
    const v = vdisk(m.writer)
    await v.write(5 * MiB, Buffer.alloc(4096, 6), false)
    m.loseNext(1)
    await expect(v.flush()).rejects.toThrow(/cannot record/)
    m.hold()
    // the flush takes the pending entry; the trim deletes it in etcd before the flush commits
    const flushed = v.flush()
    const trimmed = v.trim(5 * MiB, MiB)
    for (let i = 0; i < 10; i++) await tick()
    m.release()
    await trimmed
    await flushed
    expect(m.committed.has('map/5')).toBe(false)
  })
})

describe('vDisk FLUSH syncs only changed extent groups', () => {
  /** replicas that count their syncs and can hold one until the test says so */
  function countingVdisk() {
    const syncs = new Map<string, number>()
    let hold: { release: () => void } | undefined
    let holdNext = false
    let nextEg = 1
    const egroup = (): LoadedEgroup => {
      const id = String(nextEg++)
      const r: Replica = {
        ...memReplica(),
        sync: async () => {
          syncs.set(id, (syncs.get(id) ?? 0) + 1)
          if (holdNext) {
            holdNext = false
            await new Promise<void>((resolve) => { hold = { release: resolve } })
          }
        },
      }
      return { id, replicas: [r], usedSlots: new Set(), freeSlots: Array.from({ length: 32 }, (_, i) => i), lock: new KeyedRwLock() }
    }
    const egs = [egroup(), egroup(), egroup()]
    // vBlocks 0..31 in egroup 1, 32..63 in egroup 2, 64..95 in egroup 3
    const map = new Map<number, { egroupId: string, slot: number }>()
    for (let vb = 0; vb < 96; vb++) {
      const eg = egs[Math.floor(vb / 32)]!
      map.set(vb, { egroupId: eg.id, slot: vb % 32 })
      eg.usedSlots.add(vb % 32)
    }
    for (const eg of egs) eg.freeSlots = []
    const log = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined }
    const v = new Vdisk('8', 'w', 96 * MiB, map, new Map(egs.map((e) => [e.id, e])), {
      mapWriter: heldMapWriter().writer,
      mapKey: (vb) => `map/${vb}`,
      newEgroups: async () => { throw new Error('no new extent groups in this test') },
      replaceFailed: async () => { throw new Error('no replacement in this test') },
      log: log as never,
    })
    return { v, syncs, holdNextSync: () => { holdNext = true }, release: () => hold?.release() }
  }

  it('a flush with nothing written syncs nothing; a write makes only its extent group synced', async () => {
    const t = countingVdisk()
    await t.v.flush()
    expect([...t.syncs.entries()]).toEqual([])
    await t.v.write(33 * MiB, Buffer.alloc(4096, 1), false)
    await t.v.flush()
    expect([...t.syncs.entries()]).toEqual([['2', 1]])
    // clean again: the next flush costs nothing
    await t.v.flush()
    expect([...t.syncs.entries()]).toEqual([['2', 1]])
    // a trim changes its extent group too
    await t.v.trim(65 * MiB, MiB)
    await t.v.flush()
    expect(t.syncs.get('3')).toBe(1)
  })

  it('a write still running when a flush took its extent group: the next flush syncs the group again', async () => {
    let syncs = 0
    let releaseWrite: (() => void) | undefined
    const r: Replica = {
      ...memReplica(),
      write: () => new Promise<void>((resolve) => { releaseWrite = resolve }),
      sync: async () => { syncs++ },
    }
    const eg: LoadedEgroup = { id: '1', replicas: [r], usedSlots: new Set([0]), freeSlots: [], lock: new KeyedRwLock() }
    const log = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined }
    const v = new Vdisk('8', 'w', 32 * MiB, new Map([[0, { egroupId: '1', slot: 0 }]]), new Map([['1', eg]]), {
      mapWriter: heldMapWriter().writer,
      mapKey: (vb) => `map/${vb}`,
      newEgroups: async () => { throw new Error('no new extent groups in this test') },
      replaceFailed: async () => { throw new Error('no replacement in this test') },
      log: log as never,
    })
    const w = v.write(0, Buffer.alloc(4096, 1), false)
    await tick()
    // another connection's flush: it takes the group (marked when the write began) and syncs it
    // before the write is in the file (it need not cover a write that had not completed)
    await v.flush()
    expect(syncs).toBe(1)
    releaseWrite!()
    await w
    // this flush covers the write: it must sync the group again
    await v.flush()
    expect(syncs).toBe(2)
  })

  it('a second flush waits for the sync the first one took over', async () => {
    const t = countingVdisk()
    await t.v.write(0, Buffer.alloc(4096, 1), false)
    t.holdNextSync()
    let firstDone = false
    let secondDone = false
    const first = t.v.flush().then(() => { firstDone = true })
    await tick()
    // the second flush (another connection) finds no changed group of its own, but the write it
    // covers is in the group the first flush is still syncing: it must not be answered before that
    const second = t.v.flush().then(() => { secondDone = true })
    for (let i = 0; i < 5; i++) await tick()
    expect(firstDone).toBe(false)
    expect(secondDone).toBe(false)
    t.release()
    await Promise.all([first, second])
    expect(t.syncs.get('1')).toBe(1)
  })
})

