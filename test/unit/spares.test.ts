import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import type { Clock } from '../../src/lib/clock.js'
import { spareEgroupFillIdleMs } from '../../src/lib/limits.js'
import { egroupDirName, spareBytes, spareDirName, statDisk } from '../../src/cvm/pool/disks.js'
import { EgroupFile, egroupFileBytes, egroupZeroPrefixBytes } from '../../src/cvm/vdisk/egroup.js'
import { ReplicaStore } from '../../src/cvm/vdisk/replicastore.js'
import { SpareEgroups, spareEgroupsPerDisk } from '../../src/cvm/vdisk/spares.js'
import type { DiskRecord } from '../../src/lib/types.js'

const MiB = 1024 * 1024
const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined }

class FakeClock implements Clock {
  t = 1_000_000
  now(): number { return this.t }
  sleep(ms: number): Promise<void> {
    this.t += ms
    return Promise.resolve()
  }
}

describe('spare extent groups (real files)', () => {
  let root: string
  let clock: FakeClock
  let io: number
  const disk = () => ({ id: 'd1', path: root })
  const make = (perDisk = 2) => new SpareEgroups({ disks: () => Promise.resolve([disk()]), log: quiet, perDisk, clock })
  /** fill until the clock says the data path was idle long enough */
  const fillIdle = async (sp: SpareEgroups) => {
    await sp.fillOnce(() => io)
    clock.t += spareEgroupFillIdleMs
    return sp.fillOnce(() => io)
  }

  beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-spares-'))
    fs.mkdirSync(path.join(root, egroupDirName))
    clock = new FakeClock()
    io = 0
  })
  afterEach(() => fs.rmSync(root, { recursive: true, force: true }))

  it('fills only after extent group I/O was still for the idle time, then stops at the target', async () => {
    const sp = make(2)
    expect(await sp.fillOnce(() => io)).toBe(false) // first look: the I/O count is new
    clock.t += spareEgroupFillIdleMs - 1
    expect(await sp.fillOnce(() => io)).toBe(false) // not idle long enough
    io++
    clock.t += spareEgroupFillIdleMs
    expect(await sp.fillOnce(() => io)).toBe(false) // I/O moved: the idle time starts again
    clock.t += spareEgroupFillIdleMs
    expect(await sp.fillOnce(() => io)).toBe(true)
    expect(await sp.fillOnce(() => io)).toBe(true)
    expect(await sp.fillOnce(() => io)).toBe(false) // target reached
    expect(sp.count('d1')).toBe(2)
    const files = fs.readdirSync(path.join(root, spareDirName)).sort()
    expect(files).toEqual(['zero-0.eg', 'zero-1.eg'])
    for (const f of files) {
      const st = fs.statSync(path.join(root, spareDirName, f))
      expect(st.size).toBe(egroupFileBytes)
      // every block written: the file system holds all of it (no holes left for a first write)
      expect(st.blocks * 512).toBeGreaterThanOrEqual(egroupFileBytes)
      expect(fs.readFileSync(path.join(root, spareDirName, f)).every((b) => b === 0)).toBe(true)
    }
    // spares count as free space of the disk (statDisk adds them to the file system's), not as used
    expect(spareBytes(root)).toBe(2 * egroupFileBytes)
    expect(statDisk(root).usedBytes).toBe(0)
  })

  it('a new extent group takes a spare: whole from the start, reads zeros, keeps what is written', async () => {
    const sp = make(1)
    expect(await fillIdle(sp)).toBe(true)
    const store = new ReplicaStore({ localDisks: () => Promise.resolve([disk() as DiskRecord]), log: quiet, spares: sp })
    await store.create('3', '77', 'd1')
    expect(sp.count('d1')).toBe(0)
    expect(fs.readdirSync(path.join(root, spareDirName))).toEqual([])
    const file = EgroupFile.fileName(path.join(root, egroupDirName), '77')
    expect(fs.statSync(file).blocks * 512).toBeGreaterThanOrEqual(egroupFileBytes)
    const eg = await store.get('77', 'd1')
    const out = Buffer.alloc(MiB, 0xff)
    await eg.read(4, 0, MiB, out, 0)
    expect(out.equals(Buffer.alloc(MiB))).toBe(true)
    const data = crypto.randomBytes(MiB)
    await eg.write(4, 0, data)
    await eg.sync()
    await store.closeAll()
    // opened again (as after a restart): the header names this group, the data is there
    const again = await EgroupFile.open(path.join(root, egroupDirName), '77', new Set([4]), () => undefined)
    const back = Buffer.alloc(MiB)
    await again.read(4, 0, MiB, back, 0)
    expect(back.equals(data)).toBe(true)
    await again.close()
  })

  it('a deleted whole extent group of an encrypted vDisk becomes a spare that shows none of its old data; a plain one goes', async () => {
    const sp = make(1)
    expect(await fillIdle(sp)).toBe(true)
    const store = new ReplicaStore({ localDisks: () => Promise.resolve([disk() as DiskRecord]), log: quiet, spares: sp })
    await store.create('3', '5', 'd1')
    const eg = await store.get('5', 'd1')
    const secret = Buffer.alloc(MiB, 0x5a)
    await eg.write(0, 0, secret)
    await eg.sync()
    await store.delete('5', 'd1', true)
    expect(sp.count('d1')).toBe(1)
    const [spare] = fs.readdirSync(path.join(root, spareDirName))
    const head = Buffer.alloc(egroupZeroPrefixBytes)
    const fd = fs.openSync(path.join(root, spareDirName, spare!), 'r')
    fs.readSync(fd, head, 0, head.length, 0)
    fs.closeSync(fd)
    expect(head.every((b) => b === 0)).toBe(true)
    // the next extent group takes it; the old extent's bytes are still in the file but read as zeros
    await store.create('4', '6', 'd1')
    const eg2 = await store.get('6', 'd1')
    const out = Buffer.alloc(MiB, 1)
    await eg2.read(0, 0, MiB, out, 0)
    expect(out.equals(Buffer.alloc(MiB))).toBe(true)
    // a plain vDisk's group (deleted without recycle) goes, its data with it, even with room in the reserve
    await eg2.write(0, 0, secret)
    await eg2.sync()
    await store.delete('6', 'd1')
    expect(sp.count('d1')).toBe(0)
    expect(fs.readdirSync(path.join(root, spareDirName))).toEqual([])
    expect(fs.existsSync(EgroupFile.fileName(path.join(root, egroupDirName), '6'))).toBe(false)
    await store.closeAll()
  })

  it('a sparse extent group is removed on delete, not kept; a full reserve removes too', async () => {
    const sp = make(1)
    const store = new ReplicaStore({ localDisks: () => Promise.resolve([disk() as DiskRecord]), log: quiet, spares: sp })
    await store.create('3', '9', 'd1') // no spare yet: a sparse file
    await store.delete('9', 'd1', true)
    expect(sp.count('d1')).toBe(0)
    expect(fs.existsSync(EgroupFile.fileName(path.join(root, egroupDirName), '9'))).toBe(false)
  })

  it('at start, drops fills cut short and spares that are not blank', async () => {
    const dir = path.join(root, spareDirName)
    fs.mkdirSync(dir)
    fs.writeFileSync(path.join(dir, 'spare-3.eg.tmp'), Buffer.alloc(4096))
    const blank = path.join(dir, 'spare-4.eg')
    fs.writeFileSync(blank, Buffer.alloc(egroupFileBytes))
    const named = path.join(dir, 'spare-5.eg') // as a crash between link and unlink of a take leaves it
    const b = Buffer.alloc(egroupFileBytes)
    b.write('TESSEG01')
    fs.writeFileSync(named, b)
    const sp = make(4)
    await sp.load()
    expect(sp.count('d1')).toBe(1)
    expect(fs.readdirSync(dir)).toEqual(['spare-4.eg'])
    // the next spare gets a new number
    expect(await fillIdle(sp)).toBe(true)
    expect(fs.readdirSync(dir).sort()).toEqual(['spare-4.eg', 'zero-6.eg'])
    // a recycled spare (spare-N) is taken as not known zeros, a filled one (zero-N) as zeros
    expect(await sp.take('d1', root)).toEqual({ file: path.join(dir, 'zero-6.eg'), zeroData: true })
    expect(await sp.take('d1', root)).toEqual({ file: blank, zeroData: false })
  })

  it('gives space back when the file system runs low, and does not fill again until there is room for the reserve', async () => {
    let freeBytes = 100 * egroupFileBytes
    const statfs = () => Promise.resolve({ freeBytes, totalBytes: 1000 * egroupFileBytes })
    const sp = new SpareEgroups({ disks: () => Promise.resolve([disk()]), log: quiet, perDisk: 2, clock, statfs })
    expect(await fillIdle(sp)).toBe(true)
    expect(await sp.fillOnce(() => io)).toBe(true)
    expect(sp.count('d1')).toBe(2)
    expect(await sp.releaseIfLow()).toBe(0) // plenty free
    freeBytes = egroupFileBytes // sparse groups grew: one group of room left
    expect(await sp.releaseIfLow()).toBe(1)
    expect(await sp.releaseIfLow()).toBe(1)
    expect(await sp.releaseIfLow()).toBe(0) // none left to give
    expect(sp.count('d1')).toBe(0)
    expect(fs.readdirSync(path.join(root, spareDirName))).toEqual([])
    freeBytes = 5 * egroupFileBytes // room for a few groups, not for the reserve and 4 more
    expect(await sp.fillOnce(() => io)).toBe(false)
    freeBytes = 6 * egroupFileBytes
    expect(await sp.fillOnce(() => io)).toBe(true)
  })

  it('reads its setting from node.json or TESS_SPARE_EGROUPS, refusing bad values with a code', () => {
    expect(spareEgroupsPerDisk(undefined, undefined)).toBeUndefined()
    expect(spareEgroupsPerDisk(4, undefined)).toBe(4)
    expect(spareEgroupsPerDisk(4, '0')).toBe(0)
    expect(() => spareEgroupsPerDisk(undefined, '-1')).toThrow(/TESS_SPARE_EGROUPS/)
    expect(() => spareEgroupsPerDisk(undefined, '1e3')).toThrow(/whole number/)
    expect(() => spareEgroupsPerDisk(2.5, undefined)).toThrow(/pool.spareEgroupsPerDisk/)
    expect(() => spareEgroupsPerDisk(100_000, undefined)).toThrow(/TESS_E_INVALID|whole number/)
    // the default: a share of the disk, bounded
    const sp = new SpareEgroups({ disks: () => Promise.resolve([]), log: quiet })
    expect(sp.target(10 * 1024 * MiB)).toBe(3)
    expect(sp.target(10 * 1024 * 1024 * MiB)).toBe(32)
  })
})
