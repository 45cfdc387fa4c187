import { describe, expect, it } from 'vitest'
import { egroupCreatesAheadMax, extentsPerEgroup } from '../../src/lib/limits.js'
import { KeyedRwLock } from '../../src/cvm/vdisk/locks.js'
import type { MapWriter } from '../../src/cvm/vdisk/mapwriter.js'
import { Vdisk, type LoadedEgroup } from '../../src/cvm/vdisk/vdisk.js'
import { memReplica } from '../helpers/memreplica.js'

const MiB = 1024 * 1024

const ticks = async (n: number) => { for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r)) }

/**
 * A vDisk whose backend makes extent groups slowly (each batch takes `batchTicks` turns of the
 * event loop, whatever its size, as one etcd transaction does) and records every batch asked.
 */
function slowBackendVdisk(sizeBytes: number, batchTicks: number) {
  const batches: number[] = []
  let nextEg = 1
  const log = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined }
  const v = new Vdisk('9', 's', sizeBytes, new Map(), new Map(), {
    mapWriter: { put: async () => undefined, delete: async () => undefined } as unknown as MapWriter,
    mapKey: (vb) => `map/${vb}`,
    newEgroups: async (count) => {
      batches.push(count)
      await ticks(batchTicks)
      return Array.from({ length: count }, (): LoadedEgroup => ({
        id: String(nextEg++), replicas: [memReplica()], usedSlots: new Set(),
        freeSlots: Array.from({ length: extentsPerEgroup }, (_, i) => i), lock: new KeyedRwLock(),
      }))
    },
    replaceFailed: async () => { throw new Error('no replacement in this test') },
    log: log as never,
  })
  return { v, batches }
}

/** sequential 1 MiB writes at queue depth 4 over the whole vDisk; each vBlock's bytes name it */
async function stream(v: Vdisk, vblocks: number): Promise<void> {
  let next = 0
  const worker = async () => {
    while (next < vblocks) {
      const vb = next++
      await v.write(vb * MiB, Buffer.alloc(MiB, vb % 251 + 1), false)
    }
  }
  await Promise.all([worker(), worker(), worker(), worker()])
}

describe('extent groups made ahead of a stream of first writes', () => {
  it('a stream that outruns group creation gets groups in batches (one backend call for several), never more than aheadDepth, never more than the vDisk can fill', async () => {
    const vblocks = 20 * extentsPerEgroup
    const { v, batches } = slowBackendVdisk(vblocks * MiB, 40)
    await stream(v, vblocks)
    for (const c of batches) {
      expect(c).toBeGreaterThanOrEqual(1)
      expect(c).toBeLessThanOrEqual(egroupCreatesAheadMax)
    }
    // the stream waited for groups, so batches grew to the most allowed
    expect(Math.max(...batches)).toBe(egroupCreatesAheadMax)
    // fewer backend calls (etcd transactions) than groups
    const groups = batches.reduce((a, b) => a + b, 0)
    expect(batches.length).toBeLessThan(groups)
    // no group beyond what the vDisk's vBlocks can fill
    expect(groups).toBe(vblocks / extentsPerEgroup)
    expect(v.allocatedExtents).toBe(vblocks)
    await ticks(50)
    expect(batches.reduce((a, b) => a + b, 0)).toBe(groups)
    // every vBlock holds its own bytes
    for (const vb of [0, 31, 32, 333, vblocks - 1]) {
      const out = await v.read(vb * MiB, MiB)
      expect(out.every((b) => b === vb % 251 + 1)).toBe(true)
    }
  })

  it('a small vDisk, or one written slowly, makes one group at a time', async () => {
    const { v, batches } = slowBackendVdisk(8 * MiB, 40)
    await stream(v, 8)
    expect(batches).toEqual([1])
    const slow = slowBackendVdisk(3 * extentsPerEgroup * MiB, 2)
    for (let vb = 0; vb < 3 * extentsPerEgroup; vb++) {
      await slow.v.write(vb * MiB, Buffer.alloc(4096, 1), false)
      await ticks(3)
    }
    expect(slow.batches).toEqual([1, 1, 1])
  })
})
