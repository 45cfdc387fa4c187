import { describe, expect, it } from 'vitest'
import { ChecksumError, EgroupFile, dataRegionOffset } from '../../src/cvm/vdisk/egroup.js'
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
    const eg = await store.get('9', 'd1')
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

/**
 * A block whose checksum entry reaches the disk without its data (an fsync that fails half way, a
 * power loss during one) is accepted by the scrub after the crash as whatever its data region held:
 * that must be a value the block may read as (its own earlier data, or zeros where it was
 * unwritten), never the bytes of the extent that had a freed slot before, or its own from before a
 * trim. The simulator's open finding stale-block-after-crash (seeds 123, 308).
 */
describe('extent group files: a checksum entry never reaches the disk ahead of the data under it', () => {
  /** every datasync from now on fails after writing the checksum entries' pages and none of the data's */
  function failEntriesOnly(m: MemFiles): void {
    m.failDatasyncs = 10
    m.tornDatasync = (position) => position < dataRegionOffset
  }

  async function reopen(m: MemFiles, id: string, inUse: number[]): Promise<EgroupFile> {
    m.crash()
    m.failDatasyncs = 0
    m.tornDatasync = undefined
    return EgroupFile.open(dir, id, new Set(inUse), () => undefined, m)
  }

  it('a slot freed and used again: a write into it cut short reads as zeros, not as the old extent', async () => {
    const m = new MemFiles()
    const eg = await EgroupFile.create(dir, '20', '3', undefined, undefined, m)
    await eg.write(0, 0, Buffer.alloc(4 * 4096, 0xaa))
    await eg.sync()
    // the vBlock is trimmed whole: its slot is freed, and a new vBlock gets it
    await eg.freeSlot(0)
    await eg.write(0, 0, block(0x55))
    failEntriesOnly(m)
    await expect(eg.sync()).rejects.toThrow(/EIO/)
    const again = await reopen(m, '20', [0])
    expect((await readBlock(again, 0, 0)).equals(block(0))).toBe(true)
    expect((await readBlock(again, 0, 1)).equals(block(0))).toBe(true)
  })

  it('a slot freed by the open after a crash (an allocation the block map never got) and used again', async () => {
    const m = new MemFiles()
    const eg = await EgroupFile.create(dir, '21', '3', undefined, undefined, m)
    await eg.write(2, 0, block(0xbb))
    await eg.sync()
    // the crash came before the map entry of slot 2 reached etcd: the open frees it
    const opened = await reopen(m, '21', [])
    expect(opened.writtenBlocks(2)).toBe(0)
    await opened.write(2, 0, block(0x66))
    failEntriesOnly(m)
    await expect(opened.sync()).rejects.toThrow(/EIO/)
    const again = await reopen(m, '21', [2])
    expect((await readBlock(again, 2, 0)).equals(block(0))).toBe(true)
  })

  it('a block trimmed in a slot still in use, then written again: cut short, it reads as trimmed', async () => {
    const m = new MemFiles()
    const eg = await EgroupFile.create(dir, '22', '3', undefined, undefined, m)
    await eg.write(1, 0, Buffer.alloc(2 * 4096, 0x11))
    await eg.sync()
    await eg.clear(1, 0, 4096)
    await eg.sync()
    await eg.write(1, 0, block(0x22))
    failEntriesOnly(m)
    await expect(eg.sync()).rejects.toThrow(/EIO/)
    const again = await reopen(m, '22', [1])
    expect((await readBlock(again, 1, 0)).equals(block(0))).toBe(true)
    expect((await readBlock(again, 1, 1)).equals(block(0x11))).toBe(true)
  })

  it('a group made from a spare whose data region holds a deleted group\'s bytes (a recycled spare)', async () => {
    const m = new MemFiles()
    const spare = '/mem/disk/spares/spare-0.eg'
    const fh = await m.open(spare, 'wx+')
    // header and entries zero, the old ciphertext under them
    await fh.writeAll(Buffer.alloc(4 * 4096, 0xcc), dataRegionOffset)
    await fh.datasync()
    await m.syncDir('/mem/disk/spares')
    const eg = await EgroupFile.create(dir, '23', '3', undefined, { file: spare, zeroData: false }, m)
    await eg.write(0, 0, block(0x77))
    failEntriesOnly(m)
    await expect(eg.sync()).rejects.toThrow(/EIO/)
    const again = await reopen(m, '23', [0])
    expect((await readBlock(again, 0, 0)).equals(block(0))).toBe(true)
  })

  it('a group made from a spare the fill wrote with zeros: one fdatasync per sync, and a first write cut short reads as zeros', async () => {
    const m = new MemFiles()
    const spare = '/mem/disk/spares/zero-0.eg'
    const fh = await m.open(spare, 'wx+')
    await fh.writeAll(Buffer.alloc(dataRegionOffset + 8 * 4096), 0)
    await fh.datasync()
    await m.syncDir('/mem/disk/spares')
    const eg = await EgroupFile.create(dir, '26', '3', undefined, { file: spare, zeroData: true }, m)
    const before = m.datasyncs
    await eg.write(0, 0, block(0x55))
    await eg.sync()
    expect(m.datasyncs - before).toBe(1)
    await eg.write(0, 4096, block(0x66))
    failEntriesOnly(m)
    await expect(eg.sync()).rejects.toThrow(/EIO/)
    const again = await reopen(m, '26', [0])
    expect((await readBlock(again, 0, 0)).equals(block(0x55))).toBe(true)
    expect((await readBlock(again, 0, 1)).equals(block(0))).toBe(true)
  })

  it('a first write into a new sparse file cut short reads as zeros (its data region is zeros)', async () => {
    const m = new MemFiles()
    const eg = await EgroupFile.create(dir, '24', '3', undefined, undefined, m)
    await eg.write(5, 0, block(0x44))
    failEntriesOnly(m)
    await expect(eg.sync()).rejects.toThrow(/EIO/)
    const again = await reopen(m, '24', [5])
    expect((await readBlock(again, 5, 0)).equals(block(0))).toBe(true)
  })

  it('costs a second fdatasync only for syncs that make blocks written over unknown bytes', async () => {
    const m = new MemFiles()
    const eg = await EgroupFile.create(dir, '25', '3', undefined, undefined, m)
    const datasyncsOf = async (fn: () => Promise<void>): Promise<number> => {
      const before = m.datasyncs
      await fn()
      return m.datasyncs - before
    }
    const writeAndSync = (slot: number, b: number, v: number) => datasyncsOf(async () => {
      await eg.write(slot, b * 4096, block(v))
      await eg.sync()
    })
    // a new sparse file: first writes and overwrites
    expect(await writeAndSync(0, 0, 1)).toBe(1)
    expect(await writeAndSync(0, 0, 2)).toBe(1)
    expect(await writeAndSync(0, 1, 3)).toBe(1)
    expect(await writeAndSync(1, 0, 4)).toBe(1)
    // freeing a slot; then the slot used again: once, then overwrites as before
    expect(await datasyncsOf(() => eg.freeSlot(0))).toBe(1)
    expect(await writeAndSync(0, 0, 5)).toBe(2)
    expect(await writeAndSync(0, 0, 6)).toBe(1)
    // a sync with nothing written costs nothing
    expect(await datasyncsOf(() => eg.sync())).toBe(0)
    // opened again (after a restart): the data under unwritten blocks is not known
    await eg.close()
    const again = await EgroupFile.open(dir, '25', new Set([0, 1]), () => undefined, m)
    const writeAgain = (slot: number, b: number, v: number) => datasyncsOf(async () => {
      await again.write(slot, b * 4096, block(v))
      await again.sync()
    })
    expect(await writeAgain(1, 0, 7)).toBe(1)
    expect(await writeAgain(1, 1, 8)).toBe(2)
    expect(await writeAgain(1, 1, 9)).toBe(1)
    expect((await readBlock(again, 0, 0)).equals(block(6))).toBe(true)
  })
})
