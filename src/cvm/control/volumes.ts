import type { VolumeMount, VolumeSpec } from '../../lib/container-spec.js'
import type { VolumeInfo } from '../../lib/csm-types.js'
import { TessError, errorMessage, isTessError } from '../../lib/errors.js'
import { etcdCall, getJson, keys } from '../../lib/etcd.js'
import { checkName } from '../../lib/names.js'
import type { VdiskInfo } from '../../lib/types.js'
import { mib } from '../../lib/units.js'
import type { ControlContext } from './context.js'
import type { CsmRecord, VolumeRecord } from './records.js'

/** What the container control needs of the vDisk service (volumes are vDisks). */
export interface VdiskOps {
  create(name: string, sizeBytes: number, rf: number, encrypted?: boolean): Promise<VdiskInfo>
  list(): Promise<VdiskInfo[]>
  /** `dryRun`: its checks only (NBD clients connected), nothing deleted */
  delete(name: string, dryRun?: boolean): Promise<VdiskInfo>
}

/** a volume's vDisk is `vol-<name>`: the name leaves room for the prefix */
export const volumeNameLengthMax = 59
export const volumeSizeMinBytes = 16 * 1024 * 1024
export const vdiskOfVolume = (name: string): string => `vol-${name}`
/** compare-and-swap rounds on volume records before a change gives up */
const volumeCasRetriesMax = 10

function volumeInfo(r: VolumeRecord, vds: VdiskInfo[]): VolumeInfo {
  const vd = vds.find((v) => v.name === r.vdisk)
  return { name: r.name, vdisk: r.vdisk, sizeBytes: vd?.sizeBytes ?? r.sizeBytes, rf: r.rf, allocatedBytes: vd?.allocatedBytes ?? 0, encrypted: vd?.encrypted ?? false, formatted: r.formatted, attachments: r.attachments, createdAt: r.createdAt }
}

/**
 * Volumes: vDisks with an ext4 filesystem (made by the CSM on the first read-write attach), and
 * their attachments to containers, recorded in etcd before the CSM attaches them.
 */
export class Volumes {
  constructor(private readonly ctx: ControlContext, private readonly vdisks: VdiskOps) {}

  private async record(name: string): Promise<VolumeRecord> {
    checkName('volume', name)
    const r = await etcdCall('read the volume', () => getJson<VolumeRecord>(this.ctx.etcd, keys.volume(name)))
    if (r === undefined) throw new TessError('TESS_E_NOT_FOUND', `no volume named "${name}"`, 'see `tess volume list`, or create it: tess volume create NAME --size SIZE')
    return r
  }

  async create(req: { name: string, sizeBytes: number, rf: number, encrypted?: boolean }): Promise<VolumeInfo> {
    const { etcd, log } = this.ctx
    const name = checkName('volume', req.name)
    if (name.length > volumeNameLengthMax) throw new TessError('TESS_E_INVALID', `invalid volume name "${name}": at most ${volumeNameLengthMax} characters`, 'its vDisk is named vol-NAME')
    if (req.sizeBytes < volumeSizeMinBytes) throw new TessError('TESS_E_INVALID', `cannot create volume "${name}" of ${req.sizeBytes} bytes: at least ${mib(volumeSizeMinBytes)}`, 'ext4 needs room for its journal: e.g. --size 1G')
    if (await etcdCall('read the volume', () => getJson<VolumeRecord>(etcd, keys.volume(name))) !== undefined) {
      throw new TessError('TESS_E_EXISTS', `cannot create volume "${name}": a volume of that name exists`, 'choose another name, or delete it first')
    }
    const vd = await this.vdisks.create(vdiskOfVolume(name), req.sizeBytes, req.rf, req.encrypted === true)
    const rec: VolumeRecord = { name, vdisk: vd.name, sizeBytes: vd.sizeBytes, rf: vd.rf, formatted: false, attachments: [], createdAt: new Date().toISOString() }
    const res = await etcdCall('create the volume record', () => etcd.if(keys.volume(name), 'Create', '==', 0).then(etcd.put(keys.volume(name)).value(JSON.stringify(rec))).commit())
    if (!res.succeeded) {
      await this.vdisks.delete(vd.name).catch((de: unknown) => log.warn(`volume ${name}: its vDisk ${vd.name} stays: ${errorMessage(de)}`))
      throw new TessError('TESS_E_EXISTS', `cannot create volume "${name}": a volume of that name was just created`, 'choose another name')
    }
    log.info(`volume ${name} created (vDisk ${vd.name}, ${vd.sizeBytes} bytes, RF ${vd.rf})`)
    return volumeInfo(rec, [vd])
  }

  async list(): Promise<VolumeInfo[]> {
    const [recs, vds] = await Promise.all([this.ctx.volumeRecords(), this.vdisks.list()])
    return recs.map((r) => volumeInfo(r, vds))
  }

  async show(name: string): Promise<VolumeInfo> {
    const r = await this.record(name)
    return volumeInfo(r, await this.vdisks.list())
  }

  /** `dryRun`: every check a delete makes (attachments, then its vDisk's), and the volume as it would go; nothing changes */
  async delete(name: string, dryRun = false): Promise<VolumeInfo> {
    const { etcd } = this.ctx
    checkName('volume', name)
    const got = await etcdCall('read the volume', () => etcd.get(keys.volume(name)).exec())
    const kv = got.kvs[0]
    if (kv === undefined) throw new TessError('TESS_E_NOT_FOUND', `no volume named "${name}"`, 'see `tess volume list`')
    const r = JSON.parse(kv.value.toString()) as VolumeRecord
    if (r.attachments.length > 0) {
      const a = r.attachments[0]!
      throw new TessError('TESS_E_CONFLICT', `cannot delete volume "${name}": it is attached to container "${a.container}" on node ${a.node}${r.attachments.length > 1 ? ` and ${r.attachments.length - 1} more` : ''}`, `remove the container first: tess container remove ${a.container}`)
    }
    const info = volumeInfo(r, await this.vdisks.list())
    if (dryRun) {
      await this.vdisks.delete(r.vdisk, true).catch((e: unknown) => {
        if (!(isTessError(e) && e.code === 'TESS_E_NOT_FOUND')) throw e
      })
      return info
    }
    const res = await etcdCall('delete the volume record', () => etcd.if(keys.volume(name), 'Mod', '==', kv.mod_revision).then(etcd.delete().key(keys.volume(name))).commit())
    if (!res.succeeded) throw new TessError('TESS_E_CONFLICT', `volume "${name}" changed while it was being deleted (attached?)`, 'look at it again: tess volume show')
    try {
      await this.vdisks.delete(r.vdisk)
    } catch (e) {
      if (!(isTessError(e) && e.code === 'TESS_E_NOT_FOUND')) {
        throw new TessError(isTessError(e) ? e.code : 'TESS_E_IO', `volume "${name}" is gone but its vDisk ${r.vdisk} was not deleted: ${errorMessage(e)}`, `delete it: tess vdisk delete ${r.vdisk} --yes`)
      }
    }
    return info
  }

  /**
   * Record a container's attachments, all at once (one etcd transaction over every volume it
   * asks for): read-write excludes any other attachment, read-only excludes a read-write one.
   * Answers what the CSM needs to attach them (their NBD exports, on the CSM's node).
   */
  async attach(container: string, csm: CsmRecord, mounts: VolumeMount[]): Promise<VolumeSpec[]> {
    const { etcd } = this.ctx
    const node = await this.ctx.nodeRecord(csm.node)
    for (let attempt = 0; attempt < volumeCasRetriesMax; attempt++) {
      const recs = await this.readForAttach(container, mounts)
      const at = new Date().toISOString()
      let txn = etcd.if(keys.volume(mounts[0]!.name), 'Mod', '==', recs[0]!.mod)
      for (let i = 1; i < recs.length; i++) txn = txn.and(keys.volume(mounts[i]!.name), 'Mod', '==', recs[i]!.mod)
      const puts = recs.map(({ rec }, i) => {
        const m = mounts[i]!
        const next: VolumeRecord = { ...rec, attachments: [...rec.attachments.filter((a) => a.container !== container), { container, csm: csm.name, node: csm.node, readOnly: m.readOnly, target: m.target, at }] }
        return etcd.put(keys.volume(m.name)).value(JSON.stringify(next))
      })
      const res = await etcdCall('attach the volumes', () => txn.then(...puts).commit())
      if (res.succeeded) {
        return recs.map(({ rec }, i) => ({
          name: rec.name, target: mounts[i]!.target, readOnly: mounts[i]!.readOnly, formatted: rec.formatted,
          nbd: { host: node.address, port: node.nbdPort, export: rec.vdisk },
        }))
      }
    }
    throw new TessError('TESS_E_CONFLICT', `cannot attach the volumes of container "${container}": they kept changing`, 'retry')
  }

  /** The records of the volumes a container asks for, refused when another container holds one. */
  private async readForAttach(container: string, mounts: VolumeMount[]): Promise<Array<{ rec: VolumeRecord, mod: string }>> {
    const got = await Promise.all(mounts.map((m) => etcdCall('read the volume', () => this.ctx.etcd.get(keys.volume(m.name)).exec())))
    const recs = got.map((g, i) => {
      const kv = g.kvs[0]
      if (kv === undefined) throw new TessError('TESS_E_NOT_FOUND', `cannot run container "${container}": no volume named "${mounts[i]!.name}"`, 'create it: tess volume create NAME --size SIZE')
      return { rec: JSON.parse(kv.value.toString()) as VolumeRecord, mod: kv.mod_revision }
    })
    recs.forEach(({ rec }, i) => {
      const m = mounts[i]!
      const others = rec.attachments.filter((a) => a.container !== container)
      const holder = m.readOnly ? others.find((a) => !a.readOnly) : others[0]
      if (holder !== undefined) {
        throw new TessError('TESS_E_CONFLICT', `cannot attach volume "${m.name}"${m.readOnly ? ' read-only' : ''} to container "${container}": it is attached ${holder.readOnly ? 'read-only' : 'read-write'} to container "${holder.container}" on node ${holder.node}`,
          m.readOnly ? 'a read-only attach may share a volume only with other read-only ones' : `a volume is attached read-write to one container at a time: remove "${holder.container}" first, or attach it read-only (:ro)`)
      }
    })
    return recs
  }

  /** Drop every attachment of a container (after it is removed, or when its run failed). */
  async release(container: string): Promise<void> {
    const { etcd } = this.ctx
    for (let attempt = 0; attempt < volumeCasRetriesMax; attempt++) {
      const got = await etcdCall('list volumes', () => etcd.getAll().prefix(keys.volumesPrefix).exec())
      let conflicts = 0
      for (const kv of got.kvs) {
        const rec = JSON.parse(kv.value.toString()) as VolumeRecord
        if (!rec.attachments.some((a) => a.container === container)) continue
        const next = { ...rec, attachments: rec.attachments.filter((a) => a.container !== container) }
        const res = await etcdCall('detach the volume', () => etcd.if(kv.key.toString(), 'Mod', '==', kv.mod_revision).then(etcd.put(kv.key.toString()).value(JSON.stringify(next))).commit())
        if (!res.succeeded) conflicts++
      }
      if (conflicts === 0) return
    }
    throw new TessError('TESS_E_CONFLICT', `cannot release the volumes of container "${container}": they kept changing`, 'retry')
  }

  /** Attachments of containers that no longer exist (a remove cut short) are released. */
  async releaseOrphans(containers: Set<string>): Promise<void> {
    for (const v of await this.ctx.volumeRecords()) {
      for (const a of v.attachments) {
        if (!containers.has(a.container)) await this.release(a.container).catch((e: unknown) => this.ctx.log.warn(`release ${a.container}: ${errorMessage(e)}`))
      }
    }
  }

  /** After a container's first read-write attach: its volumes hold a filesystem now. */
  async markFormatted(names: string[]): Promise<void> {
    const { etcd } = this.ctx
    for (const n of names) {
      for (let attempt = 0; attempt < volumeCasRetriesMax; attempt++) {
        const kv = (await etcdCall('read the volume', () => etcd.get(keys.volume(n)).exec())).kvs[0]
        if (kv === undefined) break
        const rec = JSON.parse(kv.value.toString()) as VolumeRecord
        if (rec.formatted) break
        const res = await etcdCall('mark the volume formatted', () => etcd.if(keys.volume(n), 'Mod', '==', kv.mod_revision).then(etcd.put(keys.volume(n)).value(JSON.stringify({ ...rec, formatted: true }))).commit())
        if (res.succeeded) break
      }
    }
  }
}
