import fs from 'node:fs'
import path from 'node:path'
import type { Etcd3 } from 'etcd3'
import { TessError, errorMessage } from '../../lib/errors.js'
import { IdAllocator, etcdCall, keys, listJson } from '../../lib/etcd.js'
import { localDiskRecordsCacheMs } from '../../lib/limits.js'
import type { DiskInfo, DiskRecord, NodeStatusRecord, PoolInfo } from '../../lib/types.js'

/** The marker a disk directory carries once it belongs to a cluster. */
export const diskMarkerFile = 'tess-disk.json'
export const egroupDirName = 'egroups'
/** spare extent group files of a disk (vdisk/spares.ts) */
export const spareDirName = 'spares'

export interface DiskStat { capacityBytes: number, freeBytes: number, usedBytes: number, dev: number, reservedBytes?: number }

/** Capacity and free space of the filesystem under a disk; used = bytes held by our extent groups. */
export function statDisk(diskPath: string): DiskStat {
  const s = fs.statfsSync(diskPath)
  const st = fs.statSync(diskPath)
  let used = 0
  const egDir = path.join(diskPath, egroupDirName)
  let names: string[] = []
  try {
    names = fs.readdirSync(egDir)
  } catch { /* no egroups yet */ }
  for (const n of names) {
    try {
      used += fs.statSync(path.join(egDir, n)).blocks * 512
    } catch { /* removed meanwhile */ }
  }
  return { capacityBytes: s.blocks * s.bsize, freeBytes: s.bavail * s.bsize + spareBytes(diskPath), usedBytes: used, dev: st.dev, reservedBytes: (s.bfree - s.bavail) * s.bsize }
}

/**
 * What a filesystem holds besides the pool's extent groups, its free space and its reserved
 * blocks: other files, and the filesystem's own metadata. Never below 0 (used is counted in
 * allocated blocks, which can exceed what statfs saw a moment earlier).
 */
export function otherBytesOf(capacityBytes: number, usedBytes: number, freeBytes: number, reservedBytes: number): number {
  return Math.max(0, capacityBytes - usedBytes - freeBytes - reservedBytes)
}

/** Bytes of a disk's spare extent group files (vdisk/spares.ts): free space the pool has already written. */
export function spareBytes(diskPath: string): number {
  let bytes = 0
  let names: string[] = []
  try {
    names = fs.readdirSync(path.join(diskPath, spareDirName))
  } catch { /* no spares */ }
  for (const n of names) {
    if (!n.endsWith('.eg')) continue
    try {
      bytes += fs.statSync(path.join(diskPath, spareDirName, n)).size
    } catch { /* taken meanwhile */ }
  }
  return bytes
}

/**
 * Disks of the storage pool. Records live in etcd (`/tess/disks/<id>`); the CVM of a disk's node
 * checks the path and reports its capacity in the node's status record.
 */
export class DiskService {
  private readonly ids: IdAllocator
  /** this node's disk records as last read, and when (performance.now()): see localRecords */
  private localCache: { atMs: number, records: Promise<DiskRecord[]> } | undefined

  constructor(private readonly etcd: Etcd3, private readonly nodeName: string, private readonly clusterId: string,
    private readonly holdsData: (diskId: string) => Promise<boolean>) {
    this.ids = new IdAllocator(etcd, 'disk')
  }

  async records(): Promise<DiskRecord[]> {
    return etcdCall('list disks', () => listJson<DiskRecord>(this.etcd, keys.disksPrefix))
  }

  /**
   * This node's disks. The data path asks for them at every extent group it makes or opens, so
   * they are read from etcd at most every localDiskRecordsCacheMs (an add or remove through this
   * CVM reads again at once; one through another node's CVM shows within that time).
   */
  async localRecords(): Promise<DiskRecord[]> {
    const now = performance.now()
    if (this.localCache === undefined || now - this.localCache.atMs >= localDiskRecordsCacheMs) {
      const records = this.records().then((all) => all.filter((d) => d.node === this.nodeName))
      this.localCache = { atMs: now, records }
      records.catch(() => { if (this.localCache?.records === records) this.localCache = undefined })
    }
    return [...await this.localCache.records]
  }

  /** Stats of this node's disks, for the node status record. */
  async localStats(): Promise<Record<string, DiskStat>> {
    const out: Record<string, DiskStat> = {}
    for (const d of await this.localRecords()) {
      try {
        out[d.id] = statDisk(d.path)
      } catch { /* disk gone: reported offline */ }
    }
    return out
  }

  async add(diskPath: string, node: string): Promise<DiskInfo> {
    if (node !== this.nodeName) {
      throw new TessError('TESS_E_NOT_FOUND', `cannot add disk "${diskPath}": node "${node}" is not this node (${this.nodeName})`, 'send the request to the CVM of that node, or leave --node out')
    }
    if (!path.isAbsolute(diskPath)) {
      throw new TessError('TESS_E_INVALID', `cannot add disk "${diskPath}": the path is not absolute`, 'give the absolute path of the directory')
    }
    let real: string
    let st: fs.Stats
    try {
      real = fs.realpathSync(diskPath)
      st = fs.statSync(real)
    } catch {
      throw new TessError('TESS_E_NOT_FOUND', `cannot add disk "${diskPath}": the path does not exist on node ${node}`, 'create the directory (or mount the disk) first')
    }
    if (!st.isDirectory()) {
      throw new TessError('TESS_E_INVALID', `cannot add disk "${diskPath}": not a directory`, 'a disk is the directory where a disk is mounted, or a folder')
    }
    const probe = path.join(real, `.tess-probe-${process.pid}`)
    try {
      fs.writeFileSync(probe, 'x')
      fs.rmSync(probe)
    } catch (e) {
      throw new TessError('TESS_E_PRECONDITION', `cannot add disk "${diskPath}": not writable: ${errorMessage(e)}`, 'check permissions and that the filesystem is not read-only')
    }
    const existing = (await this.records()).find((d) => d.node === node && (d.path === real || real.startsWith(d.path + '/') || d.path.startsWith(real + '/')))
    if (existing) {
      const how = existing.path === real ? 'is already in the pool' : `overlaps disk ${existing.path} already in the pool`
      throw new TessError('TESS_E_EXISTS', `cannot add disk "${diskPath}": it ${how} (disk ${existing.id})`, 'see `tess disk list`')
    }
    const marker = path.join(real, diskMarkerFile)
    if (fs.existsSync(marker)) {
      let other = 'another cluster'
      try {
        const m = JSON.parse(fs.readFileSync(marker, 'utf8')) as { clusterId?: string }
        if (m.clusterId === this.clusterId) other = 'this cluster (a disk removed while its record stayed)'
      } catch { /* unreadable marker */ }
      throw new TessError('TESS_E_CONFLICT', `cannot add disk "${diskPath}": it holds a Tessera disk marker of ${other}`, `if its data is no longer needed, remove ${marker} and the egroups directory`)
    }
    const id = await etcdCall('allocate a disk id', () => this.ids.allocate())
    const rec: DiskRecord = { id, node, path: real, addedAt: new Date().toISOString() }
    fs.mkdirSync(path.join(real, egroupDirName), { recursive: true, mode: 0o700 })
    fs.writeFileSync(marker, JSON.stringify({ clusterId: this.clusterId, diskId: id, node }) + '\n', { mode: 0o600 })
    await etcdCall('register the disk', () => this.etcd.put(keys.disk(id)).value(JSON.stringify(rec)))
    this.localCache = undefined
    const info = await this.list()
    const d = info.find((x) => x.id === id)
    if (!d) throw new TessError('TESS_E_INTERNAL', `disk ${id} vanished after being added`, 'another command removed it meanwhile; see tess disk list')
    return d
  }

  async find(diskPath: string, node: string | undefined): Promise<DiskRecord> {
    const all = await this.records()
    let real = diskPath
    try {
      real = fs.realpathSync(diskPath)
    } catch { /* a removed directory can still be named */ }
    const matches = all.filter((d) => (d.path === real || d.path === diskPath || d.id === diskPath) && (node === undefined || d.node === node))
    if (matches.length === 0) throw new TessError('TESS_E_NOT_FOUND', `disk "${diskPath}" is not in the pool`, 'see `tess disk list`')
    if (matches.length > 1) throw new TessError('TESS_E_INVALID', `disk "${diskPath}" exists on several nodes`, 'name the node with --node')
    return matches[0] as DiskRecord
  }

  /** Mark a disk draining (`disk remove --evacuate`): placement picks it no more; answers its record. */
  async drain(diskPath: string, node: string | undefined): Promise<DiskRecord> {
    const d = await this.find(diskPath, node)
    if (d.draining === true) return d
    const next: DiskRecord = { ...d, draining: true }
    await etcdCall('mark the disk draining', () => this.etcd.put(keys.disk(d.id)).value(JSON.stringify(next)))
    this.localCache = undefined
    return next
  }

  async remove(diskPath: string, node: string | undefined): Promise<DiskInfo> {
    const d = await this.find(diskPath, node)
    if (await this.holdsData(d.id)) {
      throw new TessError('TESS_E_CONFLICT', `cannot remove disk "${d.path}" on ${d.node}: it holds extent groups`, 'move its data to the node\'s other disks first: `tess disk remove PATH --evacuate`')
    }
    const info = (await this.list()).find((x) => x.id === d.id)
    await etcdCall('remove the disk', () => this.etcd.delete().key(keys.disk(d.id)))
    this.localCache = undefined
    if (d.node === this.nodeName) {
      fs.rmSync(path.join(d.path, diskMarkerFile), { force: true })
      // spare extent groups hold no data (vdisk/spares.ts): they go with the disk
      fs.rmSync(path.join(d.path, spareDirName), { recursive: true, force: true })
      try {
        fs.rmdirSync(path.join(d.path, egroupDirName))
      } catch { /* not empty or gone: leave it */ }
    }
    return info ?? { ...d, state: 'offline', capacityBytes: 0, usedBytes: 0, freeBytes: 0, reservedBytes: 0, otherBytes: 0 }
  }

  /** Disks with capacity: this node's measured now, other nodes' from their status records. */
  async list(): Promise<DiskInfo[]> {
    const recs = await this.records()
    const statuses = await etcdCall('read node status', () => listJson<NodeStatusRecord>(this.etcd, keys.nodeStatusPrefix))
    const byNode = new Map(statuses.map((s) => [s.name, s]))
    return recs.map((r) => {
      let st: DiskStat | undefined
      if (r.node === this.nodeName) {
        try {
          st = statDisk(r.path)
        } catch { /* offline */ }
      } else {
        st = byNode.get(r.node)?.disks[r.id]
      }
      return {
        id: r.id,
        node: r.node,
        path: r.path,
        state: st ? 'online' : 'offline',
        capacityBytes: st?.capacityBytes ?? 0,
        usedBytes: st?.usedBytes ?? 0,
        freeBytes: st?.freeBytes ?? 0,
        reservedBytes: st?.reservedBytes ?? 0,
        otherBytes: st ? otherBytesOf(st.capacityBytes, st.usedBytes, st.freeBytes, st.reservedBytes ?? 0) : 0,
        addedAt: r.addedAt,
        ...(r.draining === true ? { draining: true } : {}),
      }
    })
  }

  /**
   * The pool: the sum over disks. Several disks on one filesystem (folders in tests) share its
   * capacity and free space, so those are counted once per (node, filesystem).
   */
  async pool(): Promise<PoolInfo> {
    const disks = await this.list()
    const statuses = await etcdCall('read node status', () => listJson<NodeStatusRecord>(this.etcd, keys.nodeStatusPrefix))
    const devOf = new Map<string, number>()
    for (const s of statuses) for (const [id, d] of Object.entries(s.disks)) devOf.set(id, d.dev)
    for (const d of disks) {
      if (d.node === this.nodeName) {
        try {
          devOf.set(d.id, fs.statSync(d.path).dev)
        } catch { /* offline */ }
      }
    }
    // per (node, filesystem): its capacity, free and reserved space once, the groups of all its disks
    const filesystems = new Map<string, { capacityBytes: number, freeBytes: number, reservedBytes: number, usedBytes: number }>()
    let usedBytes = 0
    for (const d of disks) {
      usedBytes += d.usedBytes
      if (d.state !== 'online') continue
      const fsKey = `${d.node}:${devOf.get(d.id) ?? d.id}`
      const f = filesystems.get(fsKey)
      if (f === undefined) filesystems.set(fsKey, { capacityBytes: d.capacityBytes, freeBytes: d.freeBytes, reservedBytes: d.reservedBytes, usedBytes: d.usedBytes })
      else f.usedBytes += d.usedBytes
    }
    let capacityBytes = 0
    let freeBytes = 0
    let reservedBytes = 0
    let otherBytes = 0
    for (const f of filesystems.values()) {
      capacityBytes += f.capacityBytes
      freeBytes += f.freeBytes
      reservedBytes += f.reservedBytes
      otherBytes += otherBytesOf(f.capacityBytes, f.usedBytes, f.freeBytes, f.reservedBytes)
    }
    return { capacityBytes, usedBytes, freeBytes, reservedBytes, otherBytes, disks }
  }
}
