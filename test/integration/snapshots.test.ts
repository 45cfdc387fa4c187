import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { TestCluster, alive, waitFor } from '../helpers/cluster.js'
import { holdingNbdClient, run } from '../helpers/run.js'

const MiB = 1024 * 1024

/**
 * vDisk snapshots on an embedded cluster with real NBD clients (nbdcopy, qemu-io, nbdinfo): a
 * snapshot reads what the vDisk held when it was taken, whatever is written, trimmed or zeroed
 * later, is a read-only export, survives kill -9 of the CVM, and its delete leaves the vDisk and
 * the other snapshots as they are.
 */
describe('vDisk snapshots', () => {
  const c = new TestCluster('snap')

  beforeAll(async () => {
    await c.create()
  }, 120_000)

  afterAll(async () => {
    await c.destroy()
  })

  it('keeps what the vDisk held, through overwrites, trims, zeroes and a CVM crash', async () => {
    expect((await c.tess(['vdisk', 'create', 'db', '--size', '16M', '--json'])).code).toBe(0)
    const a = crypto.randomBytes(16 * MiB)
    const src = path.join(c.root, 'a.bin')
    fs.writeFileSync(src, a)
    const w = await run('nbdcopy', ['--flush', src, c.nbdUri('db')])
    expect(w.code, w.stderr).toBe(0)

    const s1 = await c.tess(['vdisk', 'snapshot', 'create', 'db', 's1', '--json'])
    expect(s1.code, s1.stdout + s1.stderr).toBe(0)
    expect(s1.json).toMatchObject({ vdisk: 'db', name: 's1' })
    expect(s1.json.nbdUri).toMatch(/\/db@s1$/)

    // the vDisk changes: an unaligned write over block edges, a 4 KiB write, a trim of a whole
    // extent and part of another, zeroes, and a write past what was written before
    const b = Buffer.from(a)
    const patch = crypto.randomBytes(10_000)
    const patchFile = path.join(c.root, 'patch.bin')
    fs.writeFileSync(patchFile, patch)
    await c.qemuIo('db', `write -s ${patchFile} 1000 ${patch.length}`, 'write -P 0x5a 2M 4k', 'discard 4M 1536k', 'write -z 8M 64k', 'write -P 0x33 15M 1M')
    patch.copy(b, 1000)
    b.fill(0x5a, 2 * MiB, 2 * MiB + 4096)
    b.fill(0, 4 * MiB, 5.5 * MiB)
    b.fill(0, 8 * MiB, 8 * MiB + 65536)
    b.fill(0x33, 15 * MiB, 16 * MiB)
    expect((await c.readExport('db')).equals(b)).toBe(true)
    expect((await c.readExport('db@s1')).equals(a)).toBe(true)
    // the extents only s1 keeps: the 6 changed since (0, 2, 4, 5, 8 and 15)
    expect((await c.tess(['vdisk', 'show', 'db', '--json'])).json).toMatchObject({ allocatedBytes: 15 * MiB, snapshotBytes: 6 * MiB })

    // read-only: advertised so, and writes are refused
    const info = await run('nbdinfo', ['--json', c.nbdUri('db@s1')])
    expect(info.code, info.stderr).toBe(0)
    expect(JSON.parse(info.stdout).exports[0]).toMatchObject({ 'export-name': 'db@s1', is_read_only: true })
    const denied = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 4k', c.nbdUri('db@s1')])
    expect(denied.code !== 0 || /fail|denied|read-only|not permitted/i.test(denied.stdout + denied.stderr), denied.stdout + denied.stderr).toBe(true)
    expect((await c.readExport('db@s1')).equals(a)).toBe(true)
    const listed = await run('nbdinfo', ['--list', '--json', c.nbdUri()])
    expect(JSON.parse(listed.stdout).exports.map((e: { 'export-name': string }) => e['export-name'])).toEqual(expect.arrayContaining(['db', 'db@s1']))

    const unknown = await c.tess(['vdisk', 'restore', 'db', 'nope', '--yes', '--json'])
    expect([unknown.code, unknown.json.error.code]).toEqual([3, 'TESS_E_NOT_FOUND'])
    // a vDisk with snapshots is not deleted by accident
    const del = await c.tess(['vdisk', 'delete', 'db', '--yes', '--json'])
    expect(del.code).toBe(4)
    expect(del.json.error).toMatchObject({ code: 'TESS_E_CONFLICT' })
    expect(del.json.error.message).toContain('s1')

    // kill -9 of the CVM: the snapshot and the vDisk read the same after the restart
    const pid = c.pid('cvm')!
    process.kill(pid, 'SIGKILL')
    await waitFor('a new CVM', () => {
      const p = c.pid('cvm')
      return p !== undefined && p !== pid && alive(p) ? p : undefined
    })
    await waitFor('the API', async () => (await c.tess(['vdisk', 'list', '--json'])).code === 0 || undefined, 30_000, 200)
    expect((await c.readExport('db@s1')).equals(a)).toBe(true)
    expect((await c.readExport('db')).equals(b)).toBe(true)

    // a second snapshot, more writes, then the first goes: the second and the vDisk keep theirs
    expect((await c.tess(['vdisk', 'snapshot', 'create', 'db', 's2', '--json'])).code).toBe(0)
    await c.qemuIo('db', 'write -P 0x77 0 3M')
    const c3 = Buffer.from(b)
    c3.fill(0x77, 0, 3 * MiB)
    const list = await c.tess(['vdisk', 'snapshot', 'list', 'db', '--json'])
    expect(list.json.map((s: { name: string }) => s.name)).toEqual(['s1', 's2'])
    expect((await c.readExport('db')).equals(c3)).toBe(true)

    // a rollback is refused while a client has the vDisk open, then done: the vDisk reads as s1
    await holdingNbdClient(c.nbdUri('db'), async () => {
      const busy = await c.tess(['vdisk', 'restore', 'db', 's1', '--yes', '--json'])
      expect([busy.code, busy.json.error.code], busy.stdout).toEqual([4, 'TESS_E_CONFLICT'])
      expect(busy.json.error.message).toMatch(/cannot restore vDisk "db": 1 NBD connection is open/)
    })
    const back = await c.tess(['vdisk', 'restore', 'db', 's1', '--yes', '--json'])
    expect(back.code, back.stdout + back.stderr).toBe(0)
    expect(back.json).toMatchObject({ vdisk: 'db', name: 's1' })
    // the extents written since s1: 0, 1 and 2 (the patch, the 4 KiB write, s2's 3 MiB), 4 and 5
    // (the discard), 8 (the zeroes) and 15
    expect(back.json.changedExtents).toBe(7)
    expect((await c.readExport('db')).equals(a)).toBe(true)
    expect((await c.readExport('db@s2')).equals(b)).toBe(true)
    // the snapshot it came from goes: the vDisk keeps the extents it names again
    expect((await c.tess(['vdisk', 'snapshot', 'delete', 'db', 's1', '--yes', '--json'])).code).toBe(0)
    expect((await c.readExport('db@s2')).equals(b)).toBe(true)
    expect((await c.readExport('db')).equals(a)).toBe(true)
    const gone = await run('nbdinfo', [c.nbdUri('db@s1')])
    expect(gone.code).not.toBe(0)
    // and a write after the rollback does not reach s2
    await c.qemuIo('db', 'write -P 0x66 4M 1M')
    const a2 = Buffer.from(a)
    a2.fill(0x66, 4 * MiB, 5 * MiB)
    expect((await c.readExport('db')).equals(a2)).toBe(true)
    expect((await c.readExport('db@s2')).equals(b)).toBe(true)
    expect((await c.tess(['vdisk', 'snapshot', 'delete', 'db', 's2', '--yes', '--json'])).code).toBe(0)
    expect((await c.tess(['vdisk', 'snapshot', 'list', '--json'])).json).toEqual([])
    expect((await c.readExport('db')).equals(a2)).toBe(true)
    // with no snapshot left the vDisk is deleted as before
    expect((await c.tess(['vdisk', 'delete', 'db', '--yes', '--json'])).code).toBe(0)
  }, 180_000)

  it('refuses bad names, unknown vDisks and duplicate snapshots with coded errors', async () => {
    expect((await c.tess(['vdisk', 'create', 'small', '--size', '8M', '--json'])).code).toBe(0)
    const missing = await c.tess(['vdisk', 'snapshot', 'create', 'nosuch', 's1', '--json'])
    expect([missing.code, missing.json.error.code]).toEqual([3, 'TESS_E_NOT_FOUND'])
    const bad = await c.tess(['vdisk', 'snapshot', 'create', 'small', 'Bad@Name', '--json'])
    expect([bad.code, bad.json.error.code]).toEqual([2, 'TESS_E_INVALID'])
    expect((await c.tess(['vdisk', 'snapshot', 'create', 'small', 'one', '--json'])).code).toBe(0)
    const dup = await c.tess(['vdisk', 'snapshot', 'create', 'small', 'one', '--json'])
    expect([dup.code, dup.json.error.code]).toEqual([4, 'TESS_E_EXISTS'])
    const none = await c.tess(['vdisk', 'snapshot', 'delete', 'small', 'two', '--yes', '--json'])
    expect([none.code, none.json.error.code]).toEqual([3, 'TESS_E_NOT_FOUND'])
    // --force deletes a vDisk with its snapshots
    expect((await c.tess(['vdisk', 'delete', 'small', '--yes', '--force', '--json'])).code).toBe(0)
    expect((await c.tess(['vdisk', 'snapshot', 'list', '--json'])).json).toEqual([])
  }, 120_000)
})
