import type { VolumeMount, VolumeSpec } from '../../lib/container-spec.js'
import type { VolumeInfo, VolumeSnapshotInfo } from '../../lib/csm-types.js'
import { TessError, errorMessage, isTessError } from '../../lib/errors.js'
import { etcdCall, getJson, keys } from '../../lib/etcd.js'
import { checkName } from '../../lib/names.js'
import { csmQuickCallTimeoutMs, volumeFreezeCallTimeoutMs, volumeFrozenMaxMs } from '../../lib/limits.js'
import type { SnapshotInfo, VdiskInfo } from '../../lib/types.js'
import { mib } from '../../lib/units.js'
import type { ControlContext } from './context.js'
import type { CsmRecord, VolumeRecord } from './records.js'

/** What the container control needs of the vDisk service (volumes are vDisks). */
export interface VdiskOps {
  create(name: string, sizeBytes: number, rf: number, encrypted?: boolean): Promise<VdiskInfo>
  list(): Promise<VdiskInfo[]>
  /**
   * `dryRun`: its checks only (NBD clients connected, snapshots, clones), nothing deleted;
   * `force`: its snapshots go with it (never while a clone reads from it)
   */
  delete(name: string, dryRun?: boolean, force?: boolean): Promise<VdiskInfo>
  snapshots(name: string): Promise<SnapshotInfo[]>
  createSnapshot(name: string, snapshot: string): Promise<SnapshotInfo>
  deleteSnapshot(name: string, snapshot: string): Promise<SnapshotInfo>
  /** refused while NBD clients have the vDisk open */
  restoreSnapshot(name: string, snapshot: string): Promise<SnapshotInfo>
  clone(source: string, snapshot: string, name: string, rf?: number): Promise<VdiskInfo>
}

/** a volume's vDisk is `vol-<name>`: the name leaves room for the prefix */
export const volumeNameLengthMax = 59
export const volumeSizeMinBytes = 16 * 1024 * 1024
export const vdiskOfVolume = (name: string): string => `vol-${name}`
/** compare-and-swap rounds on volume records before a change gives up */
const volumeCasRetriesMax = 10

/** the node operation that freezes a volume may take the freeze's time and a little more */
const freezeCallSlackMs = 5_000

function volumeInfo(r: VolumeRecord, vds: VdiskInfo[]): VolumeInfo {
  const vd = vds.find((v) => v.name === r.vdisk)
  return {
    name: r.name, vdisk: r.vdisk, sizeBytes: vd?.sizeBytes ?? r.sizeBytes, rf: r.rf, allocatedBytes: vd?.allocatedBytes ?? 0, encrypted: vd?.encrypted ?? false,
    formatted: r.formatted, attachments: r.attachments, createdAt: r.createdAt, ...(r.parent !== undefined ? { parent: `${r.parent.volume}@${r.parent.snapshot}` } : {}),
  }
}

function volumeSnapshotInfo(r: VolumeRecord, s: SnapshotInfo): VolumeSnapshotInfo {
  return { volume: r.name, name: s.name, vdisk: r.vdisk, createdAt: s.createdAt, epoch: s.epoch, ...(s.changedExtents !== undefined ? { changedExtents: s.changedExtents } : {}) }
}

/** A refusal of the volume's vDisk (in use, cloned), said of the volume. */
function volumeRefusal(e: unknown, name: string): unknown {
  if (!isTessError(e) || e.code !== 'TESS_E_CONFLICT') return e
  return new TessError(e.code, `cannot delete volume "${name}": ${e.message}`, e.hint)
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

  /** A new volume's name, refused when it is taken or too long. */
  private async newName(name: string, what: string): Promise<string> {
    checkName('volume', name)
    if (name.length > volumeNameLengthMax) throw new TessError('TESS_E_INVALID', `invalid volume name "${name}": at most ${volumeNameLengthMax} characters`, 'its vDisk is named vol-NAME')
    if (await etcdCall('read the volume', () => getJson<VolumeRecord>(this.ctx.etcd, keys.volume(name))) !== undefined) {
      throw new TessError('TESS_E_EXISTS', `cannot ${what} volume "${name}": a volume of that name exists`, 'choose another name, or delete it first')
    }
    return name
  }

  async create(req: { name: string, sizeBytes: number, rf: number, encrypted?: boolean }): Promise<VolumeInfo> {
    checkName('volume', req.name)
    if (req.sizeBytes < volumeSizeMinBytes) throw new TessError('TESS_E_INVALID', `cannot create volume "${req.name}" of ${req.sizeBytes} bytes: at least ${mib(volumeSizeMinBytes)}`, 'ext4 needs room for its journal: e.g. --size 1G')
    const name = await this.newName(req.name, 'create')
    const vd = await this.vdisks.create(vdiskOfVolume(name), req.sizeBytes, req.rf, req.encrypted === true)
    return this.recordNew({ name, vdisk: vd.name, sizeBytes: vd.sizeBytes, rf: vd.rf, formatted: false, attachments: [], createdAt: new Date().toISOString() }, vd)
  }

  /** Store a new volume's record for its vDisk `vd` (deleted again if the name was taken meanwhile). */
  private async recordNew(rec: VolumeRecord, vd: VdiskInfo): Promise<VolumeInfo> {
    const { etcd, log } = this.ctx
    const res = await etcdCall('create the volume record', () => etcd.if(keys.volume(rec.name), 'Create', '==', 0).then(etcd.put(keys.volume(rec.name)).value(JSON.stringify(rec))).commit())
    if (!res.succeeded) {
      await this.vdisks.delete(vd.name).catch((de: unknown) => log.warn(`volume ${rec.name}: its vDisk ${vd.name} stays: ${errorMessage(de)}`))
      throw new TessError('TESS_E_EXISTS', `cannot create volume "${rec.name}": a volume of that name was just created`, 'choose another name')
    }
    log.info(`volume ${rec.name} created (vDisk ${vd.name}, ${vd.sizeBytes} bytes, RF ${vd.rf}${rec.parent !== undefined ? `, a clone of ${rec.parent.volume}@${rec.parent.snapshot}` : ''})`)
    return volumeInfo(rec, [vd])
  }

  // ---- snapshots and clones (of the volume's vDisk; vdisk/history.ts)

  /** the snapshots of one volume, or of every volume; oldest first */
  async snapshots(name?: string): Promise<VolumeSnapshotInfo[]> {
    const recs = name !== undefined ? [await this.record(name)] : (await this.ctx.volumeRecords()).sort((a, b) => a.name.localeCompare(b.name))
    const lists = await Promise.all(recs.map(async (r) => (await this.vdisks.snapshots(r.vdisk)).map((s) => volumeSnapshotInfo(r, s))))
    return lists.flat()
  }

  /**
   * A consistent snapshot: when a container has the volume mounted read-write, the CSM freezes its
   * filesystem (everything written before is on the vDisk, new writes wait), the vDisk's snapshot is
   * taken, and the filesystem is thawed. Refused when the freeze cannot be made (the snapshot would
   * hold only what reached the vDisk): nothing is taken then.
   */
  async createSnapshot(name: string, snapshot: string): Promise<VolumeSnapshotInfo> {
    checkName('snapshot', snapshot)
    const r = await this.record(name)
    const rw = r.attachments.find((a) => !a.readOnly)
    // the CSM knows its containers by id: a container still being created has none, and nothing
    // mounted yet; one removed meanwhile has no record. Any other failure refuses the snapshot:
    // taking it unfrozen would not be what was asked
    const record = rw !== undefined ? await this.ctx.containerRecord(rw.container).catch((e: unknown) => {
      if (isTessError(e) && e.code === 'TESS_E_NOT_FOUND') return undefined
      throw e
    }) : undefined
    const id = record?.id ?? undefined
    const req = rw !== undefined && id !== undefined ? { csm: rw.csm, id, volume: r.name } : undefined
    let frozen: VolumeSnapshotInfo['frozen'] = null
    if (rw !== undefined && req !== undefined) {
      const a = await this.ctx.call(rw.node, 'container.freeze', { ...req, frozen: true }, volumeFreezeCallTimeoutMs + freezeCallSlackMs).catch((e: unknown) => {
        throw new TessError(isTessError(e) ? e.code : 'TESS_E_IO', `cannot snapshot volume "${name}": its filesystem in container "${rw.container}" on node ${rw.node} could not be frozen: ${errorMessage(e)}`,
          'no snapshot was taken; stop the container to snapshot its volume unmounted, or retry when its node answers')
      })
      if (a.frozen) frozen = { container: rw.container, node: rw.node }
    }
    try {
      return { ...volumeSnapshotInfo(r, await this.vdisks.createSnapshot(r.vdisk, snapshot)), frozen }
    } finally {
      if (frozen !== null && rw !== undefined && req !== undefined) {
        await this.ctx.call(rw.node, 'container.freeze', { ...req, frozen: false }, csmQuickCallTimeoutMs + freezeCallSlackMs)
          .catch((e: unknown) => this.ctx.log.warn(`volume ${name}: thaw in container ${rw.container} on ${rw.node} failed (its CSM thaws it within ${volumeFrozenMaxMs} ms): ${errorMessage(e)}`))
      }
    }
  }

  async deleteSnapshot(name: string, snapshot: string): Promise<VolumeSnapshotInfo> {
    checkName('snapshot', snapshot)
    const r = await this.record(name)
    try {
      return volumeSnapshotInfo(r, await this.vdisks.deleteSnapshot(r.vdisk, snapshot))
    } catch (e) {
      // a clone reads from it: its vDisk is named, and the volume it belongs to (vol-NAME)
      if (isTessError(e) && e.code === 'TESS_E_CONFLICT') throw new TessError(e.code, `cannot delete snapshot "${name}@${snapshot}" of volume "${name}": ${e.message}`, `${e.hint} (the vDisk of volume NAME is vol-NAME)`)
      throw e
    }
  }

  /** Roll a volume back: refused while a container has it mounted (its vDisk open over NBD). */
  async restoreSnapshot(name: string, snapshot: string): Promise<VolumeSnapshotInfo> {
    checkName('snapshot', snapshot)
    const r = await this.record(name)
    try {
      return volumeSnapshotInfo(r, await this.vdisks.restoreSnapshot(r.vdisk, snapshot))
    } catch (e) {
      const a = r.attachments[0]
      if (isTessError(e) && e.code === 'TESS_E_CONFLICT' && a !== undefined) {
        throw new TessError('TESS_E_CONFLICT', `cannot restore volume "${name}": it is mounted in container "${a.container}" on node ${a.node}`, `stop the container first (tess container stop ${a.container}), restore, then start it again`)
      }
      throw e
    }
  }

  /**
   * A new volume from a snapshot of another (`snapshot` undefined: one named after the clone is
   * taken first, frozen like any other): its vDisk is a clone, so it holds the snapshot's
   * filesystem at once and stores only what it writes.
   */
  async clone(source: string, snapshot: string | undefined, name: string, rf?: number): Promise<VolumeInfo> {
    if (snapshot !== undefined) checkName('snapshot', snapshot)
    const src = await this.record(source)
    await this.newName(name, 'create')
    const snap = snapshot ?? (await this.createSnapshot(source, name)).name
    const vd = await this.vdisks.clone(src.vdisk, snap, vdiskOfVolume(name), rf)
    // `formatted` comes from its first read-write attach: the CSM finds the snapshot's filesystem
    // (a snapshot taken before the first attach has none, and the clone is formatted then)
    return this.recordNew({ name, vdisk: vd.name, sizeBytes: vd.sizeBytes, rf: vd.rf, formatted: false, attachments: [], createdAt: new Date().toISOString(), parent: { volume: source, snapshot: snap } }, vd)
  }

  async list(): Promise<VolumeInfo[]> {
    const [recs, vds] = await Promise.all([this.ctx.volumeRecords(), this.vdisks.list()])
    return recs.map((r) => volumeInfo(r, vds))
  }

  async show(name: string): Promise<VolumeInfo> {
    const r = await this.record(name)
    return volumeInfo(r, await this.vdisks.list())
  }

  /**
   * `dryRun`: every check a delete makes (attachments, then its vDisk's), and the volume as it
   * would go; nothing changes. `force`: its snapshots go with it (never while a clone reads one).
   */
  async delete(name: string, dryRun = false, force = false): Promise<VolumeInfo> {
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
    if (!force) {
      // its snapshots are the volume's: said in the volume's words (the vDisk would refuse too)
      const snaps = await this.vdisks.snapshots(r.vdisk).catch((e: unknown) => {
        if (isTessError(e) && e.code === 'TESS_E_NOT_FOUND') return []
        throw e
      })
      if (snaps.length > 0) {
        throw new TessError('TESS_E_CONFLICT', `cannot delete volume "${name}": it has ${snaps.length} snapshot${snaps.length === 1 ? '' : 's'} (${snaps.map((x) => x.name).join(', ')})`,
          `delete them first (tess volume snapshot delete ${name} SNAPSHOT), or pass --force to delete the volume with its snapshots`)
      }
    }
    // the vDisk's checks (clients, clones) before the record goes: a refusal leaves both
    await this.vdisks.delete(r.vdisk, true, force).catch((e: unknown) => {
      if (!(isTessError(e) && e.code === 'TESS_E_NOT_FOUND')) throw volumeRefusal(e, name)
    })
    if (dryRun) return info
    const res = await etcdCall('delete the volume record', () => etcd.if(keys.volume(name), 'Mod', '==', kv.mod_revision).then(etcd.delete().key(keys.volume(name))).commit())
    if (!res.succeeded) throw new TessError('TESS_E_CONFLICT', `volume "${name}" changed while it was being deleted (attached?)`, 'look at it again: tess volume show')
    try {
      await this.vdisks.delete(r.vdisk, false, force)
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
