import crypto from 'node:crypto'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import type { Etcd3, Lease } from 'etcd3'
import { TessError, errorMessage } from '../../common/errors.js'
import { IdAllocator, etcdCall, getJson, keys, listJson } from '../../common/etcd.js'
import { extentsPerEgroup, nodeHeartbeatTtlSec, vBlockSizeBytes } from '../../common/limits.js'
import type { Logger } from '../../common/log.js'
import type { DiskRecord, VdiskRecord } from '../../common/types.js'
import { DeviceError, nbdErrno, type BlockDevice, type ExportInfo, type ExportProvider } from '../nbd/device.js'
import { egroupDirName } from '../pool/disks.js'
import type { VdiskDataHooks } from './service.js'
import { EgroupFile } from './egroup.js'
import { MapWriter } from './mapwriter.js'
import { Vdisk, type ExtentRef, type LoadedEgroup } from './vdisk.js'

export interface EgroupRecord {
  id: string
  vdiskId: string
  replicas: Array<{ node: string, diskId: string }>
  createdAt: string
}

interface MapValue { eg: string, s: number }

/**
 * The vDisk data engine of one CVM: loads vDisks it owns (ownership is a key bound to this CVM's
 * lease in etcd), serves them to the NBD server, and frees their storage on delete.
 */
export class VdiskEngine implements ExportProvider, VdiskDataHooks {
  private readonly loaded = new Map<string, Promise<Vdisk>>()
  private readonly egroupIds: IdAllocator
  private lease: Lease | undefined
  private leaseId = ''
  private readonly session = crypto.randomBytes(8).toString('hex')
  connectionsOf: (name: string) => number = () => 0

  constructor(private readonly etcd: Etcd3, private readonly opts: {
    nodeName: string
    log: Logger
    localDisks: () => Promise<DiskRecord[]>
  }) {
    this.egroupIds = new IdAllocator(etcd, 'egroup', 64)
  }

  private get ownerValue(): string {
    return `${this.opts.nodeName}/${this.session}`
  }

  async start(): Promise<void> {
    this.lease = this.etcd.lease(nodeHeartbeatTtlSec, { autoKeepAlive: true })
    this.leaseId = await this.lease.grant()
    this.lease.on('lost', (e) => {
      this.opts.log.error(`ownership lease lost (${errorMessage(e)}): stopping I/O to owned vDisks`)
      for (const p of this.loaded.values()) void p.then((v) => v.shut('no longer owned by this CVM')).catch(() => undefined)
      this.loaded.clear()
    })
    await this.removeOrphanFiles()
  }

  async stop(): Promise<void> {
    for (const p of this.loaded.values()) {
      try {
        const v = await p
        v.shut('stopping')
        await v.closeFiles(true)
      } catch { /* load failed */ }
    }
    this.loaded.clear()
    try {
      await this.lease?.revoke()
    } catch { /* etcd may be gone */ }
  }

  // ---- ExportProvider (NBD) ----

  async list(): Promise<ExportInfo[]> {
    const recs = await listJson<VdiskRecord>(this.etcd, keys.vdisksPrefix)
    return recs.filter((r) => r.state === 'ready').map((r) => ({ name: r.name, description: `Tessera vDisk ${r.name} (id ${r.id}, RF ${r.rf})` }))
  }

  async open(name: string): Promise<BlockDevice | undefined> {
    const id = await this.etcd.get(keys.vdiskName(name)).string()
    if (id === null) return undefined
    const v = await this.load(id)
    v.connections++
    let closed = false
    return {
      name,
      get sizeBytes() { return v.sizeBytes },
      read: (o, l) => v.read(o, l),
      write: (o, d, f) => v.write(o, d, f),
      flush: () => v.flush(),
      trim: (o, l) => v.trim(o, l),
      writeZeroes: (o, l, n, f) => v.writeZeroes(o, l, n, f),
      close: async () => {
        if (closed) return
        closed = true
        v.connections--
      },
    }
  }

  // ---- VdiskDataHooks (control plane) ----

  connections(name: string): number {
    return this.connectionsOf(name)
  }

  resized(rec: VdiskRecord): void {
    const p = this.loaded.get(rec.id)
    if (p) void p.then((v) => { v.sizeBytes = rec.sizeBytes }).catch(() => undefined)
  }

  async destroy(rec: VdiskRecord): Promise<void> {
    const p = this.loaded.get(rec.id)
    this.loaded.delete(rec.id)
    if (p) {
      try {
        const v = await p
        v.shut('deleted')
        await v.closeFiles(false)
      } catch { /* load had failed */ }
    }
    const egroups = await etcdCall('list extent groups', () => listJson<EgroupRecord>(this.etcd, keys.egroupsOf(rec.id)))
    const disks = new Map((await this.opts.localDisks()).map((d) => [d.id, d]))
    // Files first, records after: a crash in between leaves records whose files are gone, which
    // the next delete attempt (the vDisk stays 'deleting') tolerates.
    for (const eg of egroups) {
      for (const r of eg.replicas) {
        const d = disks.get(r.diskId)
        if (r.node !== this.opts.nodeName || !d) continue
        const file = EgroupFile.fileName(path.join(d.path, egroupDirName), eg.id)
        await fsp.rm(file, { force: true })
        await fsp.rm(EgroupFile.markerName(file), { force: true })
      }
    }
    await etcdCall('delete the block map', () => this.etcd.delete().prefix(keys.vdiskMapPrefix(rec.id)))
    await etcdCall('delete extent group records', () => this.etcd.delete().prefix(keys.egroupsOf(rec.id)))
    await etcdCall('delete the owner record', () => this.etcd.delete().key(keys.vdiskOwner(rec.id)))
  }

  /** Does any extent group have a replica on this disk? */
  async diskHoldsData(diskId: string): Promise<boolean> {
    const all = await etcdCall('list extent groups', () => listJson<EgroupRecord>(this.etcd, keys.egroupsPrefix))
    return all.some((eg) => eg.replicas.some((r) => r.diskId === diskId))
  }

  allocatedExtents(id: string): Promise<number> | undefined {
    const p = this.loaded.get(id)
    return p?.then((v) => v.allocatedExtents)
  }

  // ---- loading ----

  private load(id: string): Promise<Vdisk> {
    let p = this.loaded.get(id)
    if (!p) {
      p = this.doLoad(id)
      this.loaded.set(id, p)
      p.catch(() => this.loaded.delete(id))
    }
    return p
  }

  private async acquireOwnership(rec: VdiskRecord): Promise<void> {
    const key = keys.vdiskOwner(rec.id)
    const mine = this.ownerValue
    const created = await this.etcd.if(key, 'Create', '==', 0).then(this.etcd.put(key).value(mine).lease(this.leaseId)).commit()
    if (created.succeeded) return
    const cur = await this.etcd.get(key).string()
    if (cur === mine) return
    if (cur !== null && cur.startsWith(`${this.opts.nodeName}/`)) {
      // An earlier incarnation of this node's CVM (it died; the supervisor started us): take over.
      const res = await this.etcd.if(key, 'Value', '==', cur).then(this.etcd.put(key).value(mine).lease(this.leaseId)).commit()
      if (res.succeeded) {
        this.opts.log.info(`vDisk ${rec.name}: took ownership over from an earlier CVM of this node (${cur})`)
        return
      }
    }
    const owner = cur?.split('/')[0] ?? 'another CVM'
    throw new DeviceError(nbdErrno.EPERM, `vDisk ${rec.name} is owned by ${owner}; connect to that node`)
  }

  private async doLoad(id: string): Promise<Vdisk> {
    const rec = await getJson<VdiskRecord>(this.etcd, keys.vdisk(id))
    if (!rec || rec.state !== 'ready') throw new DeviceError(nbdErrno.EINVAL, `vDisk ${id} does not exist`)
    await this.acquireOwnership(rec)
    const [egRecs, mapAll, disks] = await Promise.all([
      listJson<EgroupRecord>(this.etcd, keys.egroupsOf(id)),
      this.etcd.getAll().prefix(keys.vdiskMapPrefix(id)).strings(),
      this.opts.localDisks(),
    ])
    const diskById = new Map(disks.map((d) => [d.id, d]))
    const map = new Map<number, ExtentRef>()
    const inUse = new Map<string, Set<number>>()
    const prefix = keys.vdiskMapPrefix(id)
    for (const [k, v] of Object.entries(mapAll)) {
      const vb = parseInt(k.slice(prefix.length), 16)
      const mv = JSON.parse(v) as MapValue
      map.set(vb, { egroupId: mv.eg, slot: mv.s })
      let s = inUse.get(mv.eg)
      if (!s) inUse.set(mv.eg, s = new Set())
      s.add(mv.s)
    }
    const egroups = new Map<string, LoadedEgroup>()
    const log = (m: string) => this.opts.log.warn(`vDisk ${rec.name}: ${m}`)
    for (const er of egRecs) {
      const replica = er.replicas.find((r) => r.node === this.opts.nodeName && diskById.has(r.diskId))
      const used = inUse.get(er.id) ?? new Set<number>()
      const d = replica ? diskById.get(replica.diskId) : undefined
      const eg: LoadedEgroup = { id: er.id, diskId: replica?.diskId ?? '', diskPath: d?.path ?? '', file: undefined, usedSlots: used, freeSlots: [] }
      if (d) {
        const dir = path.join(d.path, egroupDirName)
        const file = EgroupFile.fileName(dir, er.id)
        if (fs.existsSync(file)) {
          eg.file = await EgroupFile.open(dir, er.id, used, log)
        } else if (used.size === 0) {
          // The record was committed but the file never made it (crash): make it now.
          eg.file = await EgroupFile.create(dir, er.id, id)
        } else {
          this.opts.log.error(`vDisk ${rec.name}: extent group ${er.id} file ${file} is missing; its ${used.size} extent(s) will read as errors`)
        }
      } else {
        this.opts.log.error(`vDisk ${rec.name}: extent group ${er.id} has no replica on a disk of this node`)
      }
      for (let s = 0; s < extentsPerEgroup; s++) if (!used.has(s)) eg.freeSlots.push(s)
      egroups.set(er.id, eg)
    }
    for (const ref of map.values()) {
      if (!egroups.has(ref.egroupId)) this.opts.log.error(`vDisk ${rec.name}: block map names extent group ${ref.egroupId} which has no record`)
    }
    const mapWriter = new MapWriter(this.etcd, keys.vdiskOwner(id), () => this.ownerValue)
    const v = new Vdisk(id, rec.name, rec.sizeBytes, map, egroups, {
      mapWriter,
      mapKey: (vb) => keys.vdiskMap(id, vb),
      newEgroup: () => this.newEgroup(rec),
      log: this.opts.log,
    })
    this.opts.log.info(`vDisk ${rec.name} (${id}) loaded: ${map.size} extent(s) in ${egroups.size} extent group(s)`)
    return v
  }

  private async pickDisk(): Promise<DiskRecord> {
    const disks = await this.opts.localDisks()
    let best: DiskRecord | undefined
    let bestFree = -1
    for (const d of disks) {
      try {
        const s = fs.statfsSync(d.path)
        const free = s.bavail * s.bsize
        if (free > bestFree) {
          best = d
          bestFree = free
        }
      } catch { /* offline */ }
    }
    if (!best || bestFree < (extentsPerEgroup + 1) * vBlockSizeBytes) {
      throw new TessError('TESS_E_CAPACITY', 'no disk of this node has room for a new extent group', 'add disks')
    }
    return best
  }

  private async newEgroup(rec: VdiskRecord): Promise<LoadedEgroup> {
    const disk = await this.pickDisk()
    const egid = await this.egroupIds.allocate()
    const er: EgroupRecord = { id: egid, vdiskId: rec.id, replicas: [{ node: this.opts.nodeName, diskId: disk.id }], createdAt: new Date().toISOString() }
    // Record first (fenced on ownership), then the file: a crash in between leaves a record
    // without a file, which the next load creates.
    const res = await this.etcd.if(keys.vdiskOwner(rec.id), 'Value', '==', this.ownerValue)
      .then(this.etcd.put(keys.egroup(rec.id, egid)).value(JSON.stringify(er))).commit()
    if (!res.succeeded) throw new DeviceError(nbdErrno.EIO, `vDisk ${rec.name} is no longer owned by this CVM`)
    const file = await EgroupFile.create(path.join(disk.path, egroupDirName), egid, rec.id)
    const free: number[] = []
    for (let s = 0; s < extentsPerEgroup; s++) free.push(s)
    return { id: egid, diskId: disk.id, diskPath: disk.path, file, usedSlots: new Set(), freeSlots: free }
  }

  /** Extent group files on this node's disks that no record names (a crash mid-delete): remove. */
  private async removeOrphanFiles(): Promise<void> {
    const recs = await listJson<EgroupRecord>(this.etcd, keys.egroupsPrefix)
    const known = new Set(recs.map((r) => r.id))
    for (const d of await this.opts.localDisks()) {
      const dir = path.join(d.path, egroupDirName)
      let names: string[] = []
      try {
        names = await fsp.readdir(dir)
      } catch { continue }
      for (const n of names) {
        const m = /^(\d+)\.eg(\.dirty)?$/.exec(n)
        if (!m || known.has(m[1]!)) continue
        this.opts.log.warn(`removing orphan extent group file ${path.join(dir, n)}`)
        await fsp.rm(path.join(dir, n), { force: true })
      }
    }
  }
}
