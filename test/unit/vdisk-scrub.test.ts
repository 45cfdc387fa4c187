import { describe, expect, it } from 'vitest'
import { ChecksumError } from '../../src/cvm/vdisk/egroup.js'
import { KeyedRwLock } from '../../src/cvm/vdisk/locks.js'
import type { MapWriter } from '../../src/cvm/vdisk/mapwriter.js'
import { Vdisk, type LoadedEgroup, type VdiskBackend } from '../../src/cvm/vdisk/vdisk.js'
import { memReplica, type MemReplica } from '../helpers/memreplica.js'

/**
 * The scrub (Vdisk.scrub): every extent in use read from every replica, a block whose checksum
 * fails on one replica rewritten from a good copy, and only that block; a replica that is down is
 * counted, not touched; the pace is asked for every extent's bytes.
 */
const MiB = 1024 * 1024
const KiB4 = 4096
const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined }

/** a replica whose reads fail with a checksum error on the blocks in `bad` (slot/block), until they are written again */
function rotting(node: string, bad: Set<string>, down = false): MemReplica {
  const r = memReplica({ node, diskId: `${node}-d`, local: node === 'n1' })
  const read = r.read
  const write = r.write
  r.read = async (slot, off, len, out, outOff) => {
    if (down) throw new Error(`${node}: unreachable`)
    for (let b = off / KiB4; b < (off + len) / KiB4; b++) if (bad.has(`${slot}/${b}`)) throw new ChecksumError('1', `${node}.eg`, slot, b, 1, 2)
    return read(slot, off, len, out, outOff)
  }
  r.write = async (slot, off, data) => {
    for (let b = off / KiB4; b < (off + data.length) / KiB4; b++) bad.delete(`${slot}/${b}`)
    return write(slot, off, data)
  }
  return r
}

function vdisk(replicas: MemReplica[]): { v: Vdisk, eg: LoadedEgroup } {
  const eg: LoadedEgroup = { id: '1', replicas, usedSlots: new Set([0, 1]), freeSlots: [], lock: new KeyedRwLock() }
  const backend: VdiskBackend = {
    mapWriter: { put: async () => undefined, delete: async () => undefined } as unknown as MapWriter,
    mapKey: (vb) => `map/${vb}`,
    newEgroups: async () => { throw new Error('no allocation in this test') },
    replaceFailed: async () => { throw new Error('no replacement in this test') },
    rf: replicas.length,
    log: quiet,
  }
  return { v: new Vdisk('7', 'v', 4 * MiB, new Map([[0, { egroupId: '1', slot: 0 }], [2, { egroupId: '1', slot: 1 }]]), new Map([['1', eg]]), backend), eg }
}

describe('scrub', () => {
  it('finds a bad block on one replica and rewrites that block only, from a good copy', async () => {
    const bad2 = new Set<string>()
    const r1 = rotting('n1', new Set())
    const r2 = rotting('n2', bad2)
    const { v } = vdisk([r1, r2])
    await v.write(2 * MiB, Buffer.alloc(MiB, 0x5a), false)
    // n2's copy of block 5 of slot 1 rots: its bytes differ and its checksum fails
    r2.slots.get(1)!.fill(0x00, 5 * KiB4, 6 * KiB4)
    bad2.add('1/5')
    const writes: Array<[number, number, number]> = []
    const w = r2.write
    r2.write = async (slot, off, data) => { writes.push([slot, off, data.length]); return w(slot, off, data) }
    const paced: number[] = []
    const res = await v.scrub(async (b) => { paced.push(b) })
    expect(res).toEqual({ extents: 2, bytesChecked: 4 * MiB, badBlocks: 1, repairedBlocks: 1, unreadable: 0 })
    expect(writes).toEqual([[1, 5 * KiB4, KiB4]])
    expect(r2.slots.get(1)!.equals(Buffer.alloc(MiB, 0x5a))).toBe(true)
    expect(paced).toEqual([2 * MiB, 2 * MiB])
    // a second pass finds nothing
    expect((await v.scrub()).badBlocks).toBe(0)
  })

  it('a block bad on every replica is reported, not rewritten; a replica that is down is counted and left alone', async () => {
    const r1 = rotting('n1', new Set(['0/3']))
    const r2 = rotting('n2', new Set(['0/3']))
    const r3 = rotting('n3', new Set(), true)
    const { v } = vdisk([r1, r2, r3])
    const res = await v.scrub()
    expect(res).toMatchObject({ extents: 2, badBlocks: 2, repairedBlocks: 0, unreadable: 2 })
  })

  it('a shut vDisk refuses a scrub', async () => {
    const { v } = vdisk([rotting('n1', new Set())])
    v.shut('deleted')
    await expect(v.scrub()).rejects.toThrow(/deleted/)
  })
})
