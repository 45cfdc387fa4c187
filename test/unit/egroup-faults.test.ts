import { describe, expect, it } from 'vitest'
import { ChecksumError, EgroupFile } from '../../src/cvm/vdisk/egroup.js'
import { ReplicaStore } from '../../src/cvm/vdisk/replicastore.js'
import type { DiskRecord } from '../../src/lib/types.js'
import { MemFiles } from '../helpers/memfiles.js'

/**
 * The extent group file under faults the simulator (test/sim) found it mishandled, on in-memory
 * files (test/helpers/memfiles.ts) whose unsynced writes a crash drops.
 */
const dir = '/mem/disk/egroups'
const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined }
const block = (v: number) => Buffer.alloc(4096, v)
const tick = () => new Promise((r) => setImmediate(r))

async function readBlock(eg: EgroupFile, slot: number, b: number): Promise<Buffer> {
  const out = Buffer.alloc(4096)
  await eg.read(slot, b * 4096, 4096, out, 0)
  return out
}

describe('extent group files under faults', () => {
  it('after an fsync failed, every later sync fails: the kernel dropped pages that a later sync would vouch for', async () => {
    const m = new MemFiles()
    const eg = await EgroupFile.create(dir, '1', '3', undefined, undefined, m)
    await eg.write(0, 0, block(1))
    await eg.sync()
    await eg.write(0, 4096, block(2))
    m.failDatasyncs = 1
    await expect(eg.sync()).rejects.toThrow(/EIO/)
    await eg.write(0, 8192, block(3))
    // a sync that succeeded here would answer a FLUSH for the write the failed fsync dropped
    await expect(eg.sync()).rejects.toThrow(/an earlier fsync failed/)
    m.crash()
    const again = await EgroupFile.open(dir, '1', new Set([0]), () => undefined, m)
    expect((await readBlock(again, 0, 1)).equals(block(2))).toBe(false)
  })

  it('a sync running when the fsync of another failed fails too: its own fsync may succeed after the pages were dropped', async () => {
    const m = new MemFiles()
    const eg = await EgroupFile.create(dir, '4', '3', undefined, undefined, m)
    await eg.write(0, 0, block(1))
    await eg.sync()
    await eg.write(0, 4096, block(2))
    m.failDatasyncs = 1
    // two connections flush at once (or a FUA write and a FLUSH): the first fsync fails
    const first = eg.sync()
    const second = eg.sync()
    await expect(first).rejects.toThrow(/EIO/)
    await expect(second).rejects.toThrow(/an earlier fsync failed/)
  })

  it('a trim racing the checksum entries a sync writes is not undone by them (the two writes may land in either order)', async () => {
    const m = new MemFiles()
    const eg = await EgroupFile.create(dir, '2', '3', undefined, undefined, m)
    await eg.write(0, 0, block(1))
    await eg.write(0, 4096, block(2))
    await eg.sync()
    // block 0 again: its entry is in the span the next sync writes
    await eg.write(0, 0, block(3))
    m.hold = true
    const synced = eg.sync()
    await tick()
    const cleared = eg.clear(0, 0, 4096)
    await tick()
    m.hold = false
    // the trim's write (if it makes one) lands first, the sync's older copy of the entries after it
    for (const h of m.held.splice(0).reverse()) h.release()
    await cleared
    await synced
    await eg.sync()
    m.crash()
    const again = await EgroupFile.open(dir, '2', new Set([0]), () => undefined, m)
    expect((await readBlock(again, 0, 0)).equals(block(0))).toBe(true)
    expect((await readBlock(again, 0, 1)).equals(block(2))).toBe(true)
  })

  it('a checksum entry whose "written" flag rotted is reported, not read as a block of zeros', async () => {
    const m = new MemFiles()
    const eg = await EgroupFile.create(dir, '3', '3', undefined, undefined, m)
    await eg.write(2, 7 * 4096, block(5))
    await eg.sync()
    await eg.close()
    const flags = 4096 + (2 * 256 + 7) * 8 + 4
    const disk = m.durable(EgroupFile.fileName(dir, '3'))
    disk[flags] = disk[flags]! ^ 1
    m.crash()
    const again = await EgroupFile.open(dir, '3', new Set([2]), () => undefined, m)
    await expect(readBlock(again, 2, 7)).rejects.toBeInstanceOf(ChecksumError)
    await expect(readBlock(again, 2, 7)).rejects.toThrow(/corrupt checksum entry/)
    // its neighbours still read
    expect((await readBlock(again, 2, 6)).equals(block(0))).toBe(true)
  })

  it('opened again by a new owner whose block map does not use a slot: the slot is freed, as a fresh open frees it', async () => {
    const m = new MemFiles()
    const disk: DiskRecord = { id: 'd1', node: 'n1', path: '/mem/disk', addedAt: '' }
    const store = new ReplicaStore({ localDisks: async () => [disk], log: quiet, files: m })
    await store.openEgroup('9', 'd1', [], '7', true)
    const eg = await store.get('9')
    // the owner before allocated slot 3 and died before its map entry reached etcd
    await eg.write(3, 0, block(6))
    await eg.write(1, 0, block(7))
    await eg.sync()
    await store.openEgroup('9', 'd1', [1], '7', false)
    expect(eg.writtenBlocks(3)).toBe(0)
    expect(eg.writtenBlocks(1)).toBe(1)
    // durably
    m.crash()
    const again = await EgroupFile.open(dir, '9', new Set([1, 3]), () => undefined, m)
    expect(again.writtenBlocks(3)).toBe(0)
  })
})
