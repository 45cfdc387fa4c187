import { describe, expect, it } from 'vitest'
import { parseHistValue, SnapshotHistory, type HistEntry } from '../../src/cvm/vdisk/history.js'
import { ChecksumError } from '../../src/cvm/vdisk/egroup.js'
import { KeyedRwLock } from '../../src/cvm/vdisk/locks.js'
import type { MapWriter } from '../../src/cvm/vdisk/mapwriter.js'
import { Vdisk, type ExtentRef, type LoadedEgroup, type VdiskBackend } from '../../src/cvm/vdisk/vdisk.js'
import { memReplica, type MemReplica } from '../helpers/memreplica.js'

/**
 * Snapshots in metadata (history.ts, Vdisk.snapshot): after a snapshot, the first write to an
 * extent it sees copies the extent (copy-on-write) and the old one becomes a history entry, in
 * the store before the live entry can name the copy; the snapshot reads what the vDisk held when
 * it was taken, whatever is written, trimmed or zeroed later; deleting it frees what only it kept;
 * a vDisk loaded again from the stored entries reads the same.
 */
const MiB = 1024 * 1024
const KiB4 = 4096
const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined }

/** the etcd of these tests: key -> value, and the order of the changes */
class Store {
  readonly kv = new Map<string, string>()
  readonly log: string[] = []
  writer(): MapWriter {
    return {
      put: async (k: string, v: string) => { this.kv.set(k, v); this.log.push(`put ${k}`) },
      delete: async (k: string) => { this.kv.delete(k); this.log.push(`delete ${k}`) },
    } as unknown as MapWriter
  }

  /** the block map and history entries as a load finds them */
  loaded(): { map: Map<number, ExtentRef>, hist: Array<[number, HistEntry]> } {
    const map = new Map<number, ExtentRef>()
    const hist: Array<[number, HistEntry]> = []
    for (const [k, v] of this.kv) {
      const [kind, vb] = k.split('/')
      if (kind === 'map') {
        const mv = JSON.parse(v) as { eg: string, s: number, e?: number }
        map.set(Number(vb), { egroupId: mv.eg, slot: mv.s, ...(mv.e !== undefined ? { e: mv.e } : {}) })
      } else if (kind === 'hist') {
        hist.push([Number(vb), parseHistValue(v)])
      }
    }
    return { map, hist }
  }
}

function setup(opts: { store?: Store, replica?: MemReplica, second?: MemReplica, map?: Map<number, ExtentRef>, history?: SnapshotHistory, snaps?: Map<string, number> } = {}) {
  const store = opts.store ?? new Store()
  const replica = opts.replica ?? memReplica({ node: 'n1' })
  const replicas = opts.second !== undefined ? [replica, opts.second] : [replica]
  const map = opts.map ?? new Map<number, ExtentRef>()
  const used = new Set<number>([...map.values()].map((r) => r.slot))
  for (const list of opts.history?.entries.values() ?? []) for (const h of list) used.add(h.ref.slot)
  const eg: LoadedEgroup = { id: '1', replicas, usedSlots: used, freeSlots: Array.from({ length: 32 }, (_, i) => i).filter((i) => !used.has(i)), lock: new KeyedRwLock() }
  const backend: VdiskBackend = {
    mapWriter: store.writer(),
    mapKey: (vb) => `map/${vb}`,
    histKey: (vb, e) => `hist/${vb}/${e}`,
    newEgroups: async () => { throw new Error('one extent group is enough here') },
    replaceFailed: async () => { throw new Error('no replacement in this test') },
    rf: replicas.length,
    log: quiet,
  }
  const v = new Vdisk('7', 'v', 8 * MiB, map, new Map([['1', eg]]), backend, undefined, opts.history ?? new SnapshotHistory(), opts.snaps ?? new Map())
  const snapshot = (name: string) => v.snapshot(name, async (e) => { store.kv.set(`snap/${name}`, String(e)) })
  const remove = (name: string) => v.deleteSnapshot(name, async () => { store.kv.delete(`snap/${name}`) })
  return { v, eg, store, replica, snapshot, remove }
}

const filled = (n: number, byte: number) => Buffer.alloc(n, byte)

async function readSnap(v: Vdisk, name: string, offset: number, length: number): Promise<Buffer> {
  const out = Buffer.alloc(length)
  await v.readSnapshotInto(name, offset, out)
  return out
}

describe('SnapshotHistory', () => {
  it('sees, per snapshot, the entry whose epochs hold it, or the live one written before it', () => {
    const h = new SnapshotHistory(3, [0, 2], [[5, { ref: { egroupId: '1', slot: 0 }, e: 0, u: 1 }], [5, { ref: { egroupId: '1', slot: 1, e: 1 }, e: 1, u: 3 }]])
    const live = new Map<number, ExtentRef>([[5, { egroupId: '1', slot: 2, e: 3 }], [6, { egroupId: '1', slot: 3 }]])
    expect(h.view(0, live)).toEqual(new Map([[5, { egroupId: '1', slot: 0 }], [6, { egroupId: '1', slot: 3 }]]))
    expect(h.view(2, live).get(5)).toEqual({ egroupId: '1', slot: 1, e: 1 })
    expect(h.snapEpoch).toBe(2)
    expect(h.frozen({ egroupId: '1', slot: 3 })).toBe(true)
    expect(h.frozen({ egroupId: '1', slot: 2, e: 3 })).toBe(false)
    // without snapshot 0, the first entry is seen by none; the second still by snapshot 2
    h.removeSnapshot(0)
    expect(h.unneeded().map(([, x]) => x.e)).toEqual([0])
    expect(h.epoch).toBe(3)
  })
})

describe('vDisk snapshots', () => {
  it('an overwrite after a snapshot goes to a copy; the snapshot keeps the old bytes', async () => {
    const { v, eg, store, replica, snapshot } = setup()
    await v.write(0, filled(MiB, 0xaa), false)
    await snapshot('s1')
    const slotBefore = [...eg.usedSlots]
    await v.write(0, filled(MiB, 0xbb), false)
    expect((await v.read(0, MiB)).equals(filled(MiB, 0xbb))).toBe(true)
    expect((await readSnap(v, 's1', 0, MiB)).equals(filled(MiB, 0xaa))).toBe(true)
    // the old extent was never written again, and stays in use
    expect(replica.slots.get(slotBefore[0]!)!.equals(filled(MiB, 0xaa))).toBe(true)
    expect(eg.usedSlots.size).toBe(2)
    // its history entry reached the store before the live entry could name the copy
    await v.flush()
    expect(store.log.findIndex((l) => l.startsWith('put hist/0/'))).toBeLessThan(store.log.lastIndexOf('put map/0'))
    // later writes to the copy go in place
    await v.write(0, filled(KiB4, 0xcc), false)
    expect(eg.usedSlots.size).toBe(2)
  })

  it('a small write after a snapshot copies the rest of the extent', async () => {
    const { v, snapshot } = setup()
    await v.write(MiB, filled(MiB, 0x11), false)
    await snapshot('s1')
    await v.write(MiB + 8 * KiB4, filled(KiB4, 0x22), false)
    const now = await v.read(MiB, MiB)
    expect(now.subarray(0, 8 * KiB4).equals(filled(8 * KiB4, 0x11))).toBe(true)
    expect(now.subarray(8 * KiB4, 9 * KiB4).equals(filled(KiB4, 0x22))).toBe(true)
    expect(now.subarray(9 * KiB4).equals(filled(MiB - 9 * KiB4, 0x11))).toBe(true)
    expect((await readSnap(v, 's1', MiB, MiB)).equals(filled(MiB, 0x11))).toBe(true)
    // the fast path never writes in place into an extent a snapshot sees
    await v.write(2 * MiB, filled(MiB, 0x33), false)
    await snapshot('s2')
    expect(v.writeIfQuick(2 * MiB, filled(KiB4, 0x44))).toBe(false)
  })

  it('trims and zeroes after a snapshot leave its extents alone', async () => {
    const { v, eg, snapshot } = setup()
    await v.write(0, filled(2 * MiB, 0x55), false)
    await snapshot('s1')
    await v.trim(0, MiB)
    await v.writeZeroes(MiB + KiB4, 4 * KiB4, false, false)
    expect((await v.read(0, MiB)).equals(filled(MiB, 0))).toBe(true)
    const second = await v.read(MiB, MiB)
    expect(second.subarray(KiB4, 5 * KiB4).equals(filled(4 * KiB4, 0))).toBe(true)
    expect(second.subarray(0, KiB4).equals(filled(KiB4, 0x55))).toBe(true)
    expect((await readSnap(v, 's1', 0, 2 * MiB)).equals(filled(2 * MiB, 0x55))).toBe(true)
    expect(eg.usedSlots.size).toBe(3) // two kept for the snapshot, one copy
  })

  it('deleting snapshots frees only what no other snapshot sees', async () => {
    const { v, eg, store, snapshot, remove } = setup()
    await v.write(0, filled(MiB, 1), false)
    await snapshot('s1')
    await v.write(0, filled(MiB, 2), false)
    await snapshot('s2')
    await v.write(0, filled(MiB, 3), false)
    expect(eg.usedSlots.size).toBe(3)
    expect((await readSnap(v, 's1', 0, MiB))[0]).toBe(1)
    expect((await readSnap(v, 's2', 0, MiB))[0]).toBe(2)
    expect((await remove('s1')).extentsFreed).toBe(1)
    expect((await readSnap(v, 's2', 0, MiB))[0]).toBe(2)
    await expect(readSnap(v, 's1', 0, MiB)).rejects.toThrow(/deleted/)
    expect((await remove('s2')).extentsFreed).toBe(1)
    expect(eg.usedSlots.size).toBe(1)
    expect([...store.kv.keys()].filter((k) => k.startsWith('hist/'))).toEqual([])
    expect((await v.read(0, MiB))[0]).toBe(3)
    // with no snapshot left, writes go in place again
    await v.write(0, filled(MiB, 4), false)
    expect(eg.usedSlots.size).toBe(1)
  })

  it('a vDisk loaded again from the stored entries reads the same, and its snapshot too', async () => {
    const replica = memReplica({ node: 'n1' })
    const first = setup({ replica })
    await first.v.write(0, filled(3 * MiB, 0x61), false)
    await first.snapshot('s1')
    await first.v.write(MiB, filled(MiB, 0x62), false)
    await first.v.trim(2 * MiB, MiB)
    await first.v.flush()
    const { map, hist } = first.store.loaded()
    const history = new SnapshotHistory(0, [Number(first.store.kv.get('snap/s1'))], hist)
    const again = setup({ store: first.store, replica, map, history, snaps: new Map([['s1', Number(first.store.kv.get('snap/s1'))]]) })
    expect((await readSnap(again.v, 's1', 0, 3 * MiB)).equals(filled(3 * MiB, 0x61))).toBe(true)
    const live = await again.v.read(0, 3 * MiB)
    expect(live.subarray(0, MiB).equals(filled(MiB, 0x61))).toBe(true)
    expect(live.subarray(MiB, 2 * MiB).equals(filled(MiB, 0x62))).toBe(true)
    expect(live.subarray(2 * MiB).equals(filled(MiB, 0))).toBe(true)
    // the epoch moved past the snapshot's: the unchanged first extent is still copied on write
    await again.v.write(0, filled(KiB4, 0x63), false)
    expect((await readSnap(again.v, 's1', 0, KiB4)).equals(filled(KiB4, 0x61))).toBe(true)
  })

  it('waits for writes in progress, and writes wait while it is taken', async () => {
    const replica = memReplica({ node: 'n1' })
    const { v, snapshot } = setup({ replica })
    await v.write(0, filled(MiB, 7), false)
    let finish = (): void => undefined
    const write = replica.write
    replica.write = async (s, off, data) => {
      await new Promise<void>((resolve) => { finish = resolve })
      replica.write = write
      return write(s, off, data)
    }
    const slow = v.write(0, filled(MiB, 8), false)
    await new Promise((r) => setTimeout(r, 10))
    let taken = false
    const snap = snapshot('s1').then(() => { taken = true })
    await new Promise((r) => setTimeout(r, 10))
    expect(taken).toBe(false)
    finish()
    await slow
    await snap
    // the write completed before the snapshot is in it
    expect((await readSnap(v, 's1', 0, MiB))[0]).toBe(8)
  })

  it('a snapshot whose record cannot be written is not taken', async () => {
    const { v, eg } = setup()
    await v.write(0, filled(MiB, 9), false)
    await expect(v.snapshot('s1', async () => { throw new Error('etcd: no leader') })).rejects.toThrow(/no leader/)
    expect(v.snapshots.size).toBe(0)
    await v.write(0, filled(MiB, 10), false)
    expect(eg.usedSlots.size).toBe(1)
  })

  it('the scrub checks the extents only a snapshot sees, and rewrites a bad copy from a good one', async () => {
    const second = memReplica({ node: 'n2', local: false })
    const { v, eg, snapshot } = setup({ second })
    await v.write(0, filled(MiB, 0x41), false)
    const [oldSlot] = [...eg.usedSlots]
    await snapshot('s1')
    await v.write(0, filled(MiB, 0x42), false)
    // n2's copy of block 3 of the snapshot's extent rots
    second.slots.get(oldSlot!)!.fill(0, 3 * KiB4, 4 * KiB4)
    const read = second.read
    let rotten = true
    second.read = async (slot, off, len, out, outOff) => {
      if (rotten && slot === oldSlot && off <= 3 * KiB4 && off + len > 3 * KiB4) throw new ChecksumError('1', 'n2.eg', slot, 3, 1, 2)
      return read(slot, off, len, out, outOff)
    }
    const write = second.write
    second.write = async (slot, off, data) => {
      if (slot === oldSlot && off === 3 * KiB4) rotten = false
      return write(slot, off, data)
    }
    const found = await v.scrub()
    expect(found).toMatchObject({ extents: 2, badBlocks: 1, repairedBlocks: 1 })
    expect(second.slots.get(oldSlot!)!.equals(filled(MiB, 0x41))).toBe(true)
  })

  it('a restore gives every vBlock the snapshot\'s extent back, frees what nothing sees, and the snapshot stays whole', async () => {
    const replica = memReplica({ node: 'n1' })
    const { v, eg, store, snapshot } = setup({ replica })
    await v.write(0, filled(3 * MiB, 0x10), false)
    await snapshot('s1')
    await v.write(0, filled(MiB, 0x20), false) // a copy
    await v.trim(MiB, MiB) // kept for s1
    await v.write(3 * MiB, filled(MiB, 0x30), false) // new since s1
    expect(eg.usedSlots.size).toBe(5)
    expect((await v.restore('s1')).changedExtents).toBe(3)
    const back = await v.read(0, 4 * MiB)
    expect(back.subarray(0, 3 * MiB).equals(filled(3 * MiB, 0x10))).toBe(true)
    expect(back.subarray(3 * MiB).equals(filled(MiB, 0))).toBe(true)
    // the copy and the new extent went; the snapshot's three stay
    expect(eg.usedSlots.size).toBe(3)
    // restored extents are shared with the snapshot: a write copies them again
    await v.write(0, filled(KiB4, 0x40), false)
    expect((await readSnap(v, 's1', 0, 3 * MiB)).equals(filled(3 * MiB, 0x10))).toBe(true)
    expect(eg.usedSlots.size).toBe(4)
    // a vDisk loaded from what is stored reads the same
    await v.flush()
    const { map, hist } = store.loaded()
    const e1 = Number(store.kv.get('snap/s1'))
    const again = setup({ store, replica, map, history: new SnapshotHistory(0, [e1], hist), snaps: new Map([['s1', e1]]) })
    const reread = await again.v.read(0, 3 * MiB)
    expect(reread.subarray(0, KiB4).equals(filled(KiB4, 0x40))).toBe(true)
    expect(reread.subarray(KiB4).equals(filled(3 * MiB - KiB4, 0x10))).toBe(true)
    expect((await readSnap(again.v, 's1', 0, 3 * MiB)).equals(filled(3 * MiB, 0x10))).toBe(true)
    // the snapshot goes: the extents the vDisk still names stay, the old first one is freed
    expect((await again.remove('s1')).extentsFreed).toBe(1)
    expect((await again.v.read(0, 3 * MiB)).equals(reread)).toBe(true)
    // with no snapshot and no history left, writes go in place
    const used = again.eg.usedSlots.size
    await again.v.write(MiB, filled(KiB4, 0x50), false)
    expect(again.eg.usedSlots.size).toBe(used)
  })
})
