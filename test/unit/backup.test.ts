import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { backupHeader, checkPassphrase, openSecrets, readBackupFile, sealSecrets, type BackupManifest } from '../../src/lib/backup.js'
import { checkMembership, initialClusterOf, mergeIdMaxima, scanNodeIds } from '../../src/bootstrap/restore-node.js'
import { egroupMagic } from '../../src/cvm/vdisk/egroup.js'
import type { NodeConfig } from '../../src/lib/nodeconfig.js'
import { cvmRefusal } from '../../src/cli/base.js'

let dir: string
beforeEach(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-backup-')) })
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }))

function manifest(snapshot: Buffer, over: Partial<BackupManifest> = {}): BackupManifest {
  return {
    format: 1, clusterId: 'c-1', clusterName: 'prod', takenAt: '2026-12-07T00:00:00.000Z', takenFrom: 'n1', revision: '42', tessVersion: '0.1.0',
    snapshotBytes: snapshot.length, snapshotSha256: crypto.createHash('sha256').update(snapshot).digest('hex'),
    members: [{ name: 'n1', peerUrls: ['https://10.0.0.1:2380'] }], nodes: [{ name: 'n1', address: '10.0.0.1' }], disks: [], caCert: 'PEM',
    counts: { vdisks: 1, volumes: 0, containers: 0, snapshots: 0 }, ...over,
  }
}

function writeBackup(snapshot: Buffer, m: BackupManifest = manifest(snapshot)): string {
  const f = path.join(dir, 'b.tbk')
  fs.writeFileSync(f, Buffer.concat([backupHeader(m), snapshot]))
  return f
}

describe('backup file', () => {
  it('reads back a whole file and finds its snapshot', async () => {
    const snap = crypto.randomBytes(3 * 1024 * 1024 + 17)
    const f = writeBackup(snap)
    const b = await readBackupFile(f)
    expect(b.manifest.clusterName).toBe('prod')
    expect(fs.readFileSync(f).subarray(b.snapshotOffset).equals(snap)).toBe(true)
  })

  it('refuses a file cut short, altered, of another kind or with a manifest that lacks a field', async () => {
    const snap = crypto.randomBytes(4096)
    const whole = fs.readFileSync(writeBackup(snap))
    const f = path.join(dir, 'x.tbk')
    const refused = async (data: Buffer, why: RegExp) => {
      fs.writeFileSync(f, data)
      await expect(readBackupFile(f)).rejects.toMatchObject({ code: 'TESS_E_INVALID', message: expect.stringMatching(why) })
    }
    await refused(whole.subarray(0, whole.length - 1), /cut short/)
    const flipped = Buffer.from(whole)
    flipped[flipped.length - 1]! ^= 1
    await refused(flipped, /SHA-256/)
    await refused(Buffer.from('GIF89a\n{}\n'), /does not start with/)
    await refused(Buffer.concat([Buffer.from('TESS-BACKUP 1\n{not json\n'), snap]), /not JSON/)
    const { members: _m, ...noMembers } = manifest(snap)
    await refused(Buffer.concat([Buffer.from(`TESS-BACKUP 1\n${JSON.stringify(noMembers)}\n`), snap]), /no etcd members/)
    await refused(Buffer.concat([backupHeader(manifest(snap, { format: 2 })), snap]), /format 2/)
    await expect(readBackupFile(path.join(dir, 'none'))).rejects.toMatchObject({ code: 'TESS_E_NOT_FOUND' })
  })

  it('seals secrets under a passphrase and the cluster id, and opens them only with both', () => {
    const s = sealSecrets({ 'ca.key': 'KEY', 'api-token': 'TOKEN' }, 'correct horse battery', 'c-1')
    expect(JSON.stringify(s)).not.toContain('TOKEN')
    expect(openSecrets(s, 'correct horse battery', 'c-1')).toEqual({ 'ca.key': 'KEY', 'api-token': 'TOKEN' })
    expect(() => openSecrets(s, 'wrong horse battery', 'c-1')).toThrow(expect.objectContaining({ code: 'TESS_E_AUTH' }))
    expect(() => openSecrets(s, 'correct horse battery', 'c-2')).toThrow(expect.objectContaining({ code: 'TESS_E_AUTH' }))
    expect(() => checkPassphrase('short\n', 'p')).toThrow(expect.objectContaining({ code: 'TESS_E_INVALID' }))
    expect(checkPassphrase('twelve chars\n', 'p')).toBe('twelve chars')
  })
})

describe('restore on a node', () => {
  function node(member: boolean): string {
    const d = path.join(dir, 'data')
    fs.mkdirSync(path.join(d, 'disks'), { recursive: true })
    const cfg = { version: 1, clusterName: 'prod', clusterId: 'c-1', nodeName: 'n1', address: '10.0.0.1', dataDir: d, etcd: { member } }
    fs.writeFileSync(path.join(d, 'node.json'), JSON.stringify(cfg))
    return d
  }
  function disk(at: string, clusterId: string, diskId: string, egroups: Array<[string, bigint]>): void {
    fs.mkdirSync(path.join(at, 'egroups'), { recursive: true })
    fs.writeFileSync(path.join(at, 'tess-disk.json'), JSON.stringify({ clusterId, diskId, node: 'n1' }))
    for (const [name, vdisk] of egroups) {
      const h = Buffer.alloc(4096)
      egroupMagic.copy(h, 0)
      h.writeBigUInt64LE(vdisk, 32)
      fs.writeFileSync(path.join(at, 'egroups', name), h)
    }
  }

  it('finds the highest ids on the cluster\'s disks and CSMs, and leaves other clusters\' disks out', () => {
    const d = node(true)
    disk(path.join(d, 'disks', 'd0'), 'c-1', '1', [['7.eg', 3n], ['130.eg', 9n], ['131.eg.dirty', 0n], ['spare-4.eg', 0n]])
    const outside = path.join(dir, 'ssd')
    disk(outside, 'c-1', '5', [['200.eg', 2n]])
    disk(path.join(dir, 'other'), 'c-2', '99', [['9999.eg', 999n]])
    fs.mkdirSync(path.join(d, 'csms', 'web'), { recursive: true })
    fs.writeFileSync(path.join(d, 'csms', 'web', 'csm.json'), JSON.stringify({ id: '12' }))
    const found = scanNodeIds(d, [outside, path.join(dir, 'other'), path.join(dir, 'gone')])
    expect(found).toEqual({ egroup: '200', vdisk: '9', disk: '5', csm: '12' })
    expect(mergeIdMaxima([found, { egroup: '3', vdisk: '40', disk: '1', csm: '0' }])).toEqual({ egroup: '200', vdisk: '40', disk: '5', csm: '12' })
  })

  it('rebuilds the same etcd members, and refuses a node whose membership changed since', () => {
    const members = [{ name: 'n1', peerUrls: ['https://10.0.0.1:2380'] }, { name: 'n2', peerUrls: ['https://10.0.0.2:2380'] }]
    expect(initialClusterOf(members)).toBe('n1=https://10.0.0.1:2380,n2=https://10.0.0.2:2380')
    const cfg = (name: string, member: boolean) => ({ nodeName: name, etcd: { member } }) as unknown as NodeConfig
    expect(checkMembership(cfg('n1', true), members)).toBe(true)
    expect(checkMembership(cfg('n3', false), members)).toBe(false)
    expect(() => checkMembership(cfg('n3', true), members)).toThrow(expect.objectContaining({ code: 'TESS_E_CONFLICT' }))
    expect(() => checkMembership(cfg('n2', false), members)).toThrow(/was one/)
  })
})

describe('an embedded cluster whose CVM refuses to start', () => {
  it('is explained by the last fatal line of its log, when it is recent', () => {
    fs.mkdirSync(path.join(dir, 'logs'))
    const log = path.join(dir, 'logs', 'cvm.log')
    const now = Date.parse('2026-12-07T10:00:00.000Z')
    expect(cvmRefusal(dir, now)).toBeUndefined()
    fs.writeFileSync(log, [
      '2026-12-07T09:50:00.000Z ERROR cvm[1] fatal: an old one',
      '2026-12-07T09:59:30.000Z INFO cvm[2] starting',
      '2026-12-07T09:59:31.000Z ERROR cvm[2] fatal: etcd holds no record of cluster "c" [TESS_E_PRECONDITION]; restore it',
      '2026-12-07T09:59:32.000Z INFO supervisor restarting',
    ].join('\n') + '\n')
    expect(cvmRefusal(dir, now)).toBe('etcd holds no record of cluster "c" [TESS_E_PRECONDITION]; restore it')
    expect(cvmRefusal(dir, now + 10 * 60_000)).toBeUndefined()
  })
})
