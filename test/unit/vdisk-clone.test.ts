import { describe, expect, it } from 'vitest'
import { SnapshotHistory } from '../../src/cvm/vdisk/history.js'
import { KeyedRwLock } from '../../src/cvm/vdisk/locks.js'
import type { MapWriter } from '../../src/cvm/vdisk/mapwriter.js'
import { Vdisk, type LoadedEgroup, type VdiskBackend } from '../../src/cvm/vdisk/vdisk.js'
import { memReplica } from '../helpers/memreplica.js'

/**
 * Clones (Vdisk.parentReader): a clone reads through to its parent snapshot where it has not
 * written; its first write to a vBlock copies the parent's extent and changes the clone only; a
 * trim or zeroing gives it zeros of its own (never the parent's bytes); chains read through every
 * level; a flatten copies what it still reads from its parents (not the zeros) and it then stands
 * alone.
 */
const MiB = 1024 * 1024
const KiB4 = 4096
const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined }

function vdisk(name: string): { v: Vdisk, eg: LoadedEgroup } {
  const eg: LoadedEgroup = { id: `${name}-1`, replicas: [memReplica({ node: 'n1' })], usedSlots: new Set(), freeSlots: Array.from({ length: 32 }, (_, i) => i), lock: new KeyedRwLock() }
  const backend: VdiskBackend = {
    mapWriter: { put: async () => undefined, delete: async () => undefined } as unknown as MapWriter,
    mapKey: (vb) => `map/${vb}`,
    histKey: (vb, e) => `hist/${vb}/${e}`,
    newEgroups: async () => { throw new Error('one extent group is enough here') },
    replaceFailed: async () => { throw new Error('no replacement in this test') },
    rf: 1,
    log: quiet,
  }
  return { v: new Vdisk(name, name, 8 * MiB, new Map(), new Map([[eg.id, eg]]), backend, undefined, new SnapshotHistory(), new Map()), eg }
}

/** a clone of `parent`'s snapshot `snap` */
function cloneOf(parent: Vdisk, snap: string, name: string): { v: Vdisk, eg: LoadedEgroup } {
  const c = vdisk(name)
  c.v.parentReader = (offset, out) => parent.readSnapshotInto(snap, offset, out)
  return c
}

const filled = (n: number, byte: number) => Buffer.alloc(n, byte)

describe('vDisk clones', () => {
  it('reads through to the parent snapshot, and writes change the clone only', async () => {
    const { v: parent } = vdisk('p')
    await parent.write(0, filled(2 * MiB, 0x11), false)
    await parent.snapshot('s', async () => undefined)
    await parent.write(0, filled(MiB, 0x99), false) // after the snapshot: the clone never sees it
    const { v: clone, eg } = cloneOf(parent, 's', 'c')
    expect((await clone.read(0, 3 * MiB)).equals(Buffer.concat([filled(2 * MiB, 0x11), filled(MiB, 0)]))).toBe(true)
    expect(clone.readIfCached(0, Buffer.alloc(KiB4))).toBe(false)
    // a 4 KiB write: the clone's extent starts as the parent's
    await clone.write(MiB + 5 * KiB4, filled(KiB4, 0x22), false)
    const second = await clone.read(MiB, MiB)
    expect(second.subarray(0, 5 * KiB4).equals(filled(5 * KiB4, 0x11))).toBe(true)
    expect(second.subarray(5 * KiB4, 6 * KiB4).equals(filled(KiB4, 0x22))).toBe(true)
    expect(second.subarray(6 * KiB4).equals(filled(MiB - 6 * KiB4, 0x11))).toBe(true)
    expect(eg.usedSlots.size).toBe(1)
    // the parent and its snapshot did not change
    expect((await parent.read(MiB, MiB)).equals(filled(MiB, 0x11))).toBe(true)
    const snap = Buffer.alloc(2 * MiB)
    await parent.readSnapshotInto('s', 0, snap)
    expect(snap.equals(filled(2 * MiB, 0x11))).toBe(true)
  })

  it('trims and zeroes give the clone zeros of its own', async () => {
    const { v: parent } = vdisk('p')
    await parent.write(0, filled(3 * MiB, 0x33), false)
    await parent.snapshot('s', async () => undefined)
    const { v: clone } = cloneOf(parent, 's', 'c')
    await clone.trim(0, MiB)
    await clone.writeZeroes(MiB + KiB4, 2 * KiB4, false, false)
    await clone.writeZeroes(2 * MiB, 100, true, false)
    const got = await clone.read(0, 3 * MiB)
    expect(got.subarray(0, MiB).equals(filled(MiB, 0))).toBe(true)
    expect(got.subarray(MiB, MiB + KiB4).equals(filled(KiB4, 0x33))).toBe(true)
    expect(got.subarray(MiB + KiB4, MiB + 3 * KiB4).equals(filled(2 * KiB4, 0))).toBe(true)
    expect(got.subarray(MiB + 3 * KiB4, 2 * MiB).equals(filled(MiB - 3 * KiB4, 0x33))).toBe(true)
    expect(got.subarray(2 * MiB, 2 * MiB + 100).equals(filled(100, 0))).toBe(true)
    expect(got.subarray(2 * MiB + 100).equals(filled(MiB - 100, 0x33))).toBe(true)
  })

  it('chains read through every level; a flatten copies what the clone reads and it stands alone', async () => {
    const { v: a } = vdisk('a')
    await a.write(0, filled(MiB, 0x41), false)
    await a.snapshot('s', async () => undefined)
    const { v: b } = cloneOf(a, 's', 'b')
    await b.write(MiB, filled(MiB, 0x42), false)
    await b.snapshot('s', async () => undefined)
    const { v: c, eg } = cloneOf(b, 's', 'c')
    await c.write(2 * MiB, filled(KiB4, 0x43), false)
    const want = Buffer.concat([filled(MiB, 0x41), filled(MiB, 0x42), filled(KiB4, 0x43), filled(MiB - KiB4, 0)])
    expect((await c.read(0, 3 * MiB)).equals(want)).toBe(true)
    await c.snapshot('before', async () => undefined)
    await c.write(MiB, filled(KiB4, 0x44), false)
    const seen = Buffer.alloc(3 * MiB)
    await c.readSnapshotInto('before', 0, seen) // (its view is made now, before the flatten)
    expect(seen.equals(want)).toBe(true)
    expect((await c.flatten()).copiedExtents).toBe(2) // vBlock 0, and 1 as the snapshot saw it; the rest reads zeros
    // vBlock 2, vBlock 1 (written after the snapshot), vBlock 0 (copied) and a copy of the
    // parent's vBlock 1 for the snapshot, which read it through the parent
    expect(eg.usedSlots.size).toBe(4)
    c.parentReader = undefined
    const now = Buffer.from(want)
    now.fill(0x44, MiB, MiB + KiB4)
    expect((await c.read(0, 3 * MiB)).equals(now)).toBe(true)
    expect((await c.read(3 * MiB, MiB)).equals(filled(MiB, 0))).toBe(true)
    // the snapshot taken before the flatten reads what it read through the parents
    const before = Buffer.alloc(3 * MiB)
    await c.readSnapshotInto('before', 0, before)
    expect(before.equals(want)).toBe(true)
    // and the copy is shared with it: a write copies it again
    await c.write(0, filled(KiB4, 0x45), false)
    await c.readSnapshotInto('before', 0, before)
    expect(before.equals(want)).toBe(true)
  })

  it('a snapshot of a clone sees the parent\'s bytes where the clone had not written', async () => {
    const { v: parent } = vdisk('p')
    await parent.write(0, filled(2 * MiB, 0x51), false)
    await parent.snapshot('s', async () => undefined)
    const { v: clone } = cloneOf(parent, 's', 'c')
    await clone.write(0, filled(KiB4, 0x52), false)
    await clone.snapshot('t', async () => undefined)
    await clone.write(MiB, filled(MiB, 0x53), false)
    await clone.write(0, filled(MiB, 0x54), false)
    const t = Buffer.alloc(2 * MiB)
    await clone.readSnapshotInto('t', 0, t)
    expect(t.subarray(0, KiB4).equals(filled(KiB4, 0x52))).toBe(true)
    expect(t.subarray(KiB4).equals(filled(2 * MiB - KiB4, 0x51))).toBe(true)
    // a restore of the clone to t: vBlock 1 reads its parent again
    await clone.restore('t')
    expect((await clone.read(0, 2 * MiB)).equals(t)).toBe(true)
  })
})
