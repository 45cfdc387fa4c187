import crypto from 'node:crypto'
import type { Etcd3 } from 'etcd3'
import { TessError, errorMessage } from '../../lib/errors.js'
import { IdAllocator, etcdCall, getJson, keys, listJson } from '../../lib/etcd.js'
import { rfMax, vBlockSizeBytes, vdiskSizeMaxBytes, vdiskSizeMinBytes } from '../../lib/limits.js'
import { checkName } from '../../lib/names.js'
import type { NodeCall } from '../../lib/rpc/node-ops.js'
import { formatBytes } from '../../lib/units.js'
import type { NodeRecord, PoolInfo, SnapshotInfo, SnapshotRecord, VdiskInfo, VdiskRecord } from '../../lib/types.js'
import { checkProvision, readPoolConfig, withProvisioning } from '../pool/provisioning.js'
import { dataKeyBytes, wrapDataKey } from './crypt.js'
import { parseHistValue, SnapshotHistory, type HistEntry } from './history.js'
import type { KeyKeeper } from './keykeeper.js'
import { parseMapValue, type ExtentRef } from './vdisk.js'

export const sectorSizeBytes = 512

/** A vDisk's block map and history entries as stored (VdiskService.storedLayout reads them). */
interface StoredLayout {
  live: Map<number, ExtentRef>
  history: Array<[number, HistEntry]>
}

/** the vBlock of a block map or history key (hex, after the vDisk's prefix) */
function vBlockOfKey(key: string, prefix: string): number {
  return parseInt(key.slice(prefix.length).split('/')[0]!, 16)
}

/** the extents only the vDisk's snapshots keep: named by history entries, not by the block map */
function snapshotExtents(own: StoredLayout): number {
  if (own.history.length === 0) return 0
  const slot = (r: ExtentRef) => `${r.egroupId}:${r.slot}`
  const live = new Set([...own.live.values()].map(slot))
  return new Set(own.history.map(([, h]) => slot(h.ref)).filter((k) => !live.has(k))).size
}

/** What the control plane needs from the data path (the vDisk engine). */
export interface VdiskDataHooks {
  /** free every extent and extent group of a vDisk that is being deleted */
  destroy(rec: VdiskRecord): Promise<void>
  /** the size of a vDisk changed (grow) */
  resized(rec: VdiskRecord): void
  /** open NBD connections to a vDisk on this CVM */
  connections(name: string): number
  /** take a snapshot (on the vDisk's owner) */
  snapshotCreate(rec: VdiskRecord, name: string): Promise<SnapshotRecord>
  /** delete a snapshot (on the vDisk's owner), freeing what only it kept */
  snapshotDelete(rec: VdiskRecord, name: string): Promise<SnapshotRecord>
  /** roll the vDisk back to a snapshot (on its owner) */
  snapshotRestore(rec: VdiskRecord, name: string): Promise<SnapshotRecord>
  /** copy into a clone what it reads from its parents and drop the reference (on its owner) */
  flatten(rec: VdiskRecord): Promise<SnapshotRecord>
}

export function checkSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < vdiskSizeMinBytes) {
    throw new TessError('TESS_E_INVALID', `invalid vDisk size ${sizeBytes} bytes: the minimum is ${vdiskSizeMinBytes} bytes`, 'give a size such as 512M, 10G or 1T')
  }
  if (sizeBytes > vdiskSizeMaxBytes) {
    throw new TessError('TESS_E_INVALID', `invalid vDisk size ${formatBytes(sizeBytes)}: the maximum is ${formatBytes(vdiskSizeMaxBytes)}`, 'create several vDisks')
  }
  if (sizeBytes % sectorSizeBytes !== 0) {
    throw new TessError('TESS_E_INVALID', `invalid vDisk size ${sizeBytes} bytes: not a multiple of ${sectorSizeBytes}`, `round it to a multiple of ${sectorSizeBytes} bytes`)
  }
}

/** how long a delete waits for another node's CVM to say how many NBD clients it has, or to shut the vDisk */
export const vdiskDeleteNodeCallMs = 5_000

/** vDisk control plane: records in etcd, names unique, ids from the etcd counter. */
export class VdiskService {
  private readonly ids: IdAllocator
  /**
   * The other CVMs, once node operations can be called (the CVM sets it when it starts its node
   * operations): a delete asks each node that is up for its NBD clients of the vDisk, and tells
   * them it is gone. Unset (tests of one node): this node only.
   */
  others: { upNodes: () => string[], call: NodeCall } | undefined

  constructor(private readonly etcd: Etcd3, private readonly opts: {
    nbdAddress: string
    nbdPort: number
    /** the cluster key, for encrypted vDisks */
    keys: Pick<KeyKeeper, 'current'>
    pool: () => Promise<PoolInfo>
    data: VdiskDataHooks
  }) {
    this.ids = new IdAllocator(etcd, 'vdisk')
  }

  async info(rec: VdiskRecord): Promise<VdiskInfo> {
    const [count, owner, parent, own] = await Promise.all([
      etcdCall('count vDisk extents', () => this.etcd.getAll().prefix(keys.vdiskMapPrefix(rec.id)).count()),
      etcdCall('read vDisk owner', () => this.etcd.get(keys.vdiskOwner(rec.id)).string()),
      this.parentName(rec),
      // its block map is read only when the space its snapshots keep, or shares with its parents, needs it
      this.storedLayout(rec.id, rec.parent !== undefined),
    ])
    const shared = rec.parent !== undefined ? await this.sharedExtents(rec, own.live) : 0
    return {
      id: rec.id,
      name: rec.name,
      sizeBytes: rec.sizeBytes,
      rf: rec.rf,
      allocatedBytes: count * vBlockSizeBytes,
      // the owner key's value is node/session: show the node
      owner: owner === null ? null : owner.split('/')[0] ?? null,
      nbdUri: `nbd://${this.opts.nbdAddress}:${this.opts.nbdPort}/${rec.name}`,
      createdAt: rec.createdAt,
      encrypted: rec.wrappedKey !== undefined,
      locked: rec.wrappedKey !== undefined && this.opts.keys.current === undefined,
      ...(parent !== undefined ? { parent } : {}),
      snapshotBytes: snapshotExtents(own) * vBlockSizeBytes,
      ...(rec.parent !== undefined ? { sharedBytes: shared * vBlockSizeBytes } : {}),
    }
  }

  /**
   * A vDisk's history entries and block map as stored in etcd. The map is read only when there are
   * history entries or `withMap` (it can be large; with neither, no one needs it).
   */
  private async storedLayout(id: string, withMap: boolean): Promise<StoredLayout> {
    const histPrefix = keys.vdiskHistPrefix(id)
    const hist = await etcdCall('read the snapshots\' extents', () => this.etcd.getAll().prefix(histPrefix).strings())
    const history = Object.entries(hist).map(([k, v]): [number, HistEntry] => [vBlockOfKey(k, histPrefix), parseHistValue(v)])
    if (history.length === 0 && !withMap) return { live: new Map(), history }
    const mapPrefix = keys.vdiskMapPrefix(id)
    const map = await etcdCall('read the block map', () => this.etcd.getAll().prefix(mapPrefix).strings())
    return { live: new Map(Object.entries(map).map(([k, v]) => [vBlockOfKey(k, mapPrefix), parseMapValue(v)])), history }
  }

  /**
   * A clone's vBlocks that it reads from its parents (the extents it shares with them): those it
   * has not written itself (`own`: its block map) where a parent's snapshot, or one further up the
   * chain, has an extent.
   */
  private async sharedExtents(rec: VdiskRecord, own: ReadonlyMap<number, ExtentRef>): Promise<number> {
    const blocks = Math.ceil(rec.sizeBytes / vBlockSizeBytes)
    // vBlocks answered by a level closer to the clone (its own map first)
    const answered = new Set(own.keys())
    let shared = 0
    const visited = new Set<string>([rec.id]) // a chain never loops; if a record said so, stop there
    for (let at: VdiskRecord['parent'] = rec.parent; at !== undefined && !visited.has(at.id);) {
      const { id, snapshot }: { id: string, snapshot: string } = at
      visited.add(id)
      const [p, snap, layout]: [VdiskRecord | undefined, SnapshotRecord | undefined, StoredLayout] = await Promise.all([
        etcdCall('read the parent vDisk', () => getJson<VdiskRecord>(this.etcd, keys.vdisk(id))),
        etcdCall('read the parent snapshot', () => getJson<SnapshotRecord>(this.etcd, keys.vdiskSnapshot(id, snapshot))),
        this.storedLayout(id, true),
      ])
      if (p === undefined || snap === undefined) break
      // what the snapshot sees, as its owner sees it
      for (const vb of new SnapshotHistory(0, [], layout.history).view(snap.epoch, layout.live).keys()) {
        if (vb >= blocks || answered.has(vb)) continue
        answered.add(vb)
        shared++
      }
      at = p.parent
    }
    return shared
  }

  /** a clone's parent as VDISK@SNAPSHOT */
  private async parentName(rec: VdiskRecord): Promise<string | undefined> {
    if (rec.parent === undefined) return undefined
    const p = await etcdCall('read the parent vDisk', () => getJson<VdiskRecord>(this.etcd, keys.vdisk(rec.parent!.id)))
    return `${p?.name ?? `(vDisk ${rec.parent.id})`}@${rec.parent.snapshot}`
  }

  /** the clones that read from vDisk `id` (from its snapshot `snapshot`, if given) */
  private async clonesOf(id: string, snapshot?: string): Promise<string[]> {
    return (await this.records()).filter((r) => r.state === 'ready' && r.parent?.id === id && (snapshot === undefined || r.parent.snapshot === snapshot)).map((r) => r.name).sort()
  }

  /**
   * A clone of `source`'s snapshot `snapshot` (taken first, named after the clone, when not given):
   * a new vDisk of the source's size that reads through to the snapshot where it has not written.
   */
  async clone(source: string, snapshot: string | undefined, name: string, rf?: number): Promise<VdiskInfo> {
    checkName('vDisk', name)
    const src = await this.get(source)
    if (await etcdCall('look up the vDisk', () => this.etcd.get(keys.vdiskName(name)).string()) !== null) {
      throw new TessError('TESS_E_EXISTS', `cannot create vDisk "${name}": a vDisk of that name exists`, 'pick another name, or delete the old one')
    }
    let snap = snapshot
    if (snap === undefined) {
      snap = name
      await this.createSnapshot(source, snap)
    } else {
      await this.snapshotOf(source, snap)
    }
    // a clone of an encrypted vDisk is encrypted too, with a data key of its own
    return this.create(name, src.sizeBytes, rf ?? src.rf, src.wrappedKey !== undefined, { id: src.id, snapshot: snap })
  }

  /** Make a clone stand alone (its owner copies what it reads from its parents). */
  async flatten(name: string): Promise<VdiskInfo> {
    const rec = await this.get(name)
    if (rec.parent === undefined) return this.info(rec)
    await this.opts.data.flatten(rec)
    return this.info(await this.get(name))
  }

  /** The storage pool with what the vDisks promise (thin provisioning: provisioning.ts). */
  async pool(): Promise<PoolInfo> {
    const [pool, recs, cfg] = await Promise.all([this.opts.pool(), this.records(), readPoolConfig(this.etcd)])
    return withProvisioning(pool, recs, cfg)
  }

  async records(): Promise<VdiskRecord[]> {
    return etcdCall('list vDisks', () => listJson<VdiskRecord>(this.etcd, keys.vdisksPrefix))
  }

  async list(): Promise<VdiskInfo[]> {
    const recs = (await this.records()).filter((r) => r.state === 'ready')
    const out = await Promise.all(recs.map((r) => this.info(r)))
    return out.sort((a, b) => a.name.localeCompare(b.name))
  }

  async get(name: string): Promise<VdiskRecord> {
    checkName('vDisk', name)
    const id = await etcdCall('look up the vDisk', () => this.etcd.get(keys.vdiskName(name)).string())
    const rec = id === null ? undefined : await etcdCall('read the vDisk', () => getJson<VdiskRecord>(this.etcd, keys.vdisk(id)))
    if (!rec || rec.state !== 'ready') {
      throw new TessError('TESS_E_NOT_FOUND', `vDisk "${name}" does not exist`, 'see `tess vdisk list`')
    }
    return rec
  }

  async show(name: string): Promise<VdiskInfo> {
    return this.info(await this.get(name))
  }

  async create(name: string, sizeBytes: number, rf: number, encrypted = false, parent?: VdiskRecord['parent']): Promise<VdiskInfo> {
    checkName('vDisk', name)
    const kek = this.opts.keys.current
    if (encrypted && kek === undefined) {
      throw new TessError('TESS_E_PRECONDITION', `cannot create encrypted vDisk "${name}": this CVM holds no cluster key`,
        'tess vdisk create --encrypted gives it the key it keeps for the cluster; or run tess cluster unlock')
    }
    checkSize(sizeBytes)
    if (!Number.isInteger(rf) || rf < 1 || rf > rfMax) {
      throw new TessError('TESS_E_INVALID', `cannot create vDisk "${name}": RF ${rf} is not between 1 and ${rfMax}`, 'use --rf 1, 2 or 3')
    }
    const nodes = await etcdCall('list nodes', () => listJson<NodeRecord>(this.etcd, keys.nodesPrefix))
    if (rf > nodes.length) {
      throw new TessError('TESS_E_TOO_FEW_NODES', `cannot create vDisk "${name}" with RF ${rf}: the cluster has ${nodes.length} node${nodes.length === 1 ? '' : 's'}`,
        `use --rf ${Math.max(1, Math.min(nodes.length, rfMax))} or add nodes with \`tess host add\``)
    }
    checkProvision(`cannot create vDisk "${name}" (${formatBytes(sizeBytes)} x RF ${rf})`, sizeBytes * rf, await this.pool())
    if (await etcdCall('look up the vDisk', () => this.etcd.get(keys.vdiskName(name)).string()) !== null) {
      throw new TessError('TESS_E_EXISTS', `cannot create vDisk "${name}": a vDisk of that name exists`, 'pick another name, or delete the old one')
    }
    const id = await etcdCall('allocate a vDisk id', () => this.ids.allocate())
    const rec: VdiskRecord = {
      id, name, sizeBytes, rf, createdAt: new Date().toISOString(), state: 'ready',
      ...(encrypted && kek !== undefined ? { wrappedKey: wrapDataKey(kek, crypto.randomBytes(dataKeyBytes), id) } : {}),
      ...(parent !== undefined ? { parent } : {}),
    }
    const res = await etcdCall('create the vDisk', () => this.etcd.if(keys.vdiskName(name), 'Create', '==', 0)
      .then(this.etcd.put(keys.vdiskName(name)).value(id), this.etcd.put(keys.vdisk(id)).value(JSON.stringify(rec)))
      .commit())
    if (!res.succeeded) {
      throw new TessError('TESS_E_EXISTS', `cannot create vDisk "${name}": a vDisk of that name exists`, 'pick another name, or delete the old one')
    }
    return this.info(rec)
  }

  async resize(name: string, sizeBytes: number): Promise<VdiskInfo> {
    checkSize(sizeBytes)
    const rec = await this.get(name)
    if (sizeBytes < rec.sizeBytes) {
      throw new TessError('TESS_E_INVALID', `cannot resize vDisk "${name}" to ${formatBytes(sizeBytes)}: it is ${formatBytes(rec.sizeBytes)} and vDisks only grow`,
        'give a size at least the current one; to shrink, copy the data to a new smaller vDisk')
    }
    if (sizeBytes === rec.sizeBytes) return this.info(rec)
    checkProvision(`cannot resize vDisk "${name}" to ${formatBytes(sizeBytes)}`, (sizeBytes - rec.sizeBytes) * rec.rf, await this.pool())
    const next: VdiskRecord = { ...rec, sizeBytes }
    const res = await etcdCall('resize the vDisk', () => this.etcd.if(keys.vdisk(rec.id), 'Value', '==', JSON.stringify(rec))
      .then(this.etcd.put(keys.vdisk(rec.id)).value(JSON.stringify(next))).commit())
    if (!res.succeeded) throw new TessError('TESS_E_CONFLICT', `cannot resize vDisk "${name}": it changed meanwhile`, 'retry the command')
    this.opts.data.resized(next)
    return this.info(next)
  }

  // ---- snapshots ----

  private snapshotInfo(rec: VdiskRecord, sr: SnapshotRecord): SnapshotInfo {
    return { vdisk: rec.name, name: sr.name, createdAt: sr.createdAt, epoch: sr.epoch, nbdUri: `nbd://${this.opts.nbdAddress}:${this.opts.nbdPort}/${rec.name}@${sr.name}` }
  }

  private async snapshotRecords(rec: VdiskRecord): Promise<SnapshotRecord[]> {
    const all = await etcdCall('list snapshots', () => listJson<SnapshotRecord>(this.etcd, keys.vdiskSnapshotsPrefix(rec.id)))
    return all.sort((a, b) => a.epoch - b.epoch)
  }

  /** the snapshots of one vDisk, or of every vDisk; oldest first */
  async snapshots(name?: string): Promise<SnapshotInfo[]> {
    const recs = name !== undefined ? [await this.get(name)] : (await this.records()).filter((r) => r.state === 'ready').sort((a, b) => a.name.localeCompare(b.name))
    const lists = await Promise.all(recs.map(async (r) => (await this.snapshotRecords(r)).map((sr) => this.snapshotInfo(r, sr))))
    return lists.flat()
  }

  async createSnapshot(name: string, snapshot: string): Promise<SnapshotInfo> {
    checkName('snapshot', snapshot)
    const rec = await this.get(name)
    if (await etcdCall('look up the snapshot', () => this.etcd.get(keys.vdiskSnapshot(rec.id, snapshot)).string()) !== null) {
      throw new TessError('TESS_E_EXISTS', `vDisk "${name}" has a snapshot "${snapshot}"`, 'pick another name, or delete the old snapshot')
    }
    return this.snapshotInfo(rec, await this.opts.data.snapshotCreate(rec, snapshot))
  }

  /** a vDisk and one of its snapshots (TESS_E_NOT_FOUND when either does not exist) */
  private async snapshotOf(name: string, snapshot: string): Promise<VdiskRecord> {
    checkName('snapshot', snapshot)
    const rec = await this.get(name)
    const sr = await etcdCall('read the snapshot', () => this.etcd.get(keys.vdiskSnapshot(rec.id, snapshot)).string())
    if (sr === null) throw new TessError('TESS_E_NOT_FOUND', `vDisk "${name}" has no snapshot "${snapshot}"`, `see \`tess vdisk snapshot list ${name}\``)
    return rec
  }

  /** Refused while NBD clients read the snapshot's export through any node (unless `force`). */
  async deleteSnapshot(name: string, snapshot: string, force: boolean): Promise<SnapshotInfo> {
    const rec = await this.snapshotOf(name, snapshot)
    await this.refuseWhileCloned(rec, `cannot delete snapshot "${name}@${snapshot}"`, snapshot)
    if (!force) await this.refuseWhileOpen(`${name}@${snapshot}`, 'snapshot')
    return this.snapshotInfo(rec, await this.opts.data.snapshotDelete(rec, snapshot))
  }

  /**
   * Roll a vDisk back to a snapshot. Refused while NBD clients have the vDisk open through any
   * node (a writer, or a volume attached to a container), unless `force`: their caches would no
   * longer match it.
   */
  async restoreSnapshot(name: string, snapshot: string, force: boolean): Promise<SnapshotInfo> {
    const rec = await this.snapshotOf(name, snapshot)
    if (!force) await this.refuseWhileOpen(name, 'vDisk', 'restore')
    const done = await this.opts.data.snapshotRestore(rec, snapshot)
    return { ...this.snapshotInfo(rec, done), changedExtents: done.changedExtents ?? 0 }
  }

  /** `dryRun`: every check a delete makes, and the vDisk as it would be deleted; nothing changes */
  async delete(name: string, force: boolean, dryRun = false): Promise<VdiskInfo> {
    const rec = await this.get(name)
    // never with --force: a clone's data is never lost by deleting its parent
    await this.refuseWhileCloned(rec, `cannot delete vDisk "${name}"`)
    if (!force) {
      const snaps = await this.snapshotRecords(rec)
      if (snaps.length > 0) {
        throw new TessError('TESS_E_CONFLICT', `cannot delete vDisk "${name}": it has ${snaps.length} snapshot${snaps.length === 1 ? '' : 's'} (${snaps.map((s) => s.name).join(', ')})`,
          `delete them first (tess vdisk snapshot delete ${name} SNAPSHOT), or pass --force to delete the vDisk with its snapshots`)
      }
      await this.refuseWhileOpen(name)
    }
    const info = await this.info(rec)
    if (dryRun) return info
    // Mark it deleting and free the name in one transaction; the data goes next. A crash in
    // between leaves a 'deleting' record that finishDeletes() completes on the next start.
    const dying: VdiskRecord = { ...rec, state: 'deleting' }
    const res = await etcdCall('delete the vDisk', () => this.etcd.if(keys.vdisk(rec.id), 'Value', '==', JSON.stringify(rec))
      .then(this.etcd.put(keys.vdisk(rec.id)).value(JSON.stringify(dying)), this.etcd.delete().key(keys.vdiskName(name))).commit())
    if (!res.succeeded) throw new TessError('TESS_E_CONFLICT', `cannot delete vDisk "${name}": it changed meanwhile`, 'retry the command')
    await this.tellOthersDeleted(dying)
    await this.finishDelete(dying)
    return info
  }

  /**
   * Refuse a delete while NBD clients have the vDisk open on any node: this one, and every other
   * node that is up (a client connected through another node is that node's). A node that is up
   * but does not answer refuses it too: its clients are not known.
   */
  private async refuseWhileOpen(name: string, what = 'vDisk', verb = 'delete'): Promise<void> {
    const open: Array<{ node: string | undefined, n: number }> = [{ node: undefined, n: this.opts.data.connections(name) }]
    const others = this.others
    if (others) {
      await Promise.all(others.upNodes().map(async (node) => {
        try {
          open.push({ node, n: (await others.call(node, 'vdisk.clients', { name }, vdiskDeleteNodeCallMs)).connections })
        } catch (e) {
          throw new TessError('TESS_E_UNREACHABLE', `cannot ${verb} ${what} "${name}": node ${node} did not say whether NBD clients have it open: ${errorMessage(e)}`,
            'retry when the node answers, or pass --force (its clients of this vDisk then get errors)')
        }
      }))
    }
    const total = open.reduce((a, o) => a + o.n, 0)
    if (total === 0) return
    const where = open.filter((o) => o.n > 0 && o.node !== undefined).map((o) => `${o.n} through node ${o.node}`)
    throw new TessError('TESS_E_CONFLICT', `cannot ${verb} ${what} "${name}": ${total} NBD connection${total === 1 ? ' is' : 's are'} open${where.length > 0 ? ` (${where.join(', ')})` : ''}`,
      'disconnect the clients, or pass --force')
  }

  private async refuseWhileCloned(rec: VdiskRecord, what: string, snapshot?: string): Promise<void> {
    const clones = await this.clonesOf(rec.id, snapshot)
    if (clones.length === 0) return
    throw new TessError('TESS_E_CONFLICT', `${what}: clone${clones.length === 1 ? '' : 's'} ${clones.join(', ')} read${clones.length === 1 ? 's' : ''} from it`,
      `flatten ${clones.length === 1 ? 'it' : 'them'} first (tess vdisk flatten ${clones[0]}), or delete ${clones.length === 1 ? 'it' : 'them'}`)
  }

  /** Tell the other nodes that are up that the vDisk is gone: its owner, if another node, shuts it (best effort). */
  private async tellOthersDeleted(rec: VdiskRecord): Promise<void> {
    const others = this.others
    if (!others) return
    // best effort: a node not told keeps its loaded copy until it restarts or loses the owner key,
    // and its clients get I/O errors once the files are gone (the delete itself must go on)
    await Promise.all(others.upNodes().map((node) => others.call(node, 'vdisk.deleted', { id: rec.id }, vdiskDeleteNodeCallMs).catch(() => undefined)))
  }

  private async finishDelete(rec: VdiskRecord): Promise<void> {
    await this.opts.data.destroy(rec)
    await etcdCall('delete the vDisk record', () => this.etcd.delete().key(keys.vdisk(rec.id)))
  }

  /** Complete deletes that a crash interrupted. */
  async finishDeletes(): Promise<number> {
    const dying = (await this.records()).filter((r) => r.state === 'deleting')
    for (const r of dying) await this.finishDelete(r)
    return dying.length
  }
}
