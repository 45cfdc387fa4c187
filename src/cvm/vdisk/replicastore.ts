import path from 'node:path'
import { TessError } from '../../lib/errors.js'
import { diskFreeReserveBytes, extentsPerEgroup, vBlockSizeBytes } from '../../lib/limits.js'
import type { Logger } from '../../lib/log.js'
import type { DiskRecord } from '../../lib/types.js'
import { egroupDirName } from '../pool/disks.js'
import { EgroupFile } from './egroup.js'
import { type FileLayer, realFiles } from './fileio.js'
import type { SpareEgroups } from './spares.js'

/** The error a replica reports when asked about an extent group it has not opened (e.g. after a restart). */
export class NotOpenError extends Error {
  constructor(egid: string) {
    super(`extent group ${egid} is not open on this node`)
    this.name = 'NotOpenError'
  }
}

/**
 * The extent group files of this node's disks, open by id. Both the local replicas of vDisks this
 * CVM owns and the replicas other owners write over the data port go through here, so the two
 * paths share one open file (and one checksum cache) per extent group.
 */
export class ReplicaStore {
  /** open extent group files by disk and id (a group may have a file on two disks of this node while the curator moves it between them) */
  private readonly open = new Map<string, Promise<EgroupFile>>()
  /** the files of `open` whose opening finished */
  private readonly ready = new Map<string, EgroupFile>()
  private readonly files: FileLayer

  constructor(private readonly opts: {
    localDisks: () => Promise<DiskRecord[]>
    log: Logger
    spares?: SpareEgroups
    /** the file system under the extent group files (default: the real one; test/sim passes a simulated disk) */
    files?: FileLayer
  }) {
    this.files = opts.files ?? realFiles
  }

  private async disk(diskId: string): Promise<DiskRecord> {
    const d = (await this.opts.localDisks()).find((x) => x.id === diskId)
    if (!d) throw new TessError('TESS_E_NOT_FOUND', `disk ${diskId} is not a disk of this node`, 'see tess disk list: the disk may have been removed, or the request went to the wrong node')
    return d
  }

  private async diskDir(diskId: string): Promise<string> {
    return path.join((await this.disk(diskId)).path, egroupDirName)
  }

  /** A new extent group file on a disk: from one of its spares when there is one. */
  private async createFile(diskId: string, egid: string, vdiskId: string): Promise<EgroupFile> {
    const d = await this.disk(diskId)
    const dir = path.join(d.path, egroupDirName)
    const spare = await this.opts.spares?.take(d.id, d.path)
    if (spare !== undefined) {
      try {
        return await EgroupFile.create(dir, egid, vdiskId, undefined, spare, this.files)
      } catch (e) {
        this.opts.log.warn(`extent group ${egid}: spare ${spare.file} could not be used (${String(e)}): creating a new file`)
        await this.files.remove(spare.file)
      }
    }
    return EgroupFile.create(dir, egid, vdiskId, undefined, undefined, this.files)
  }

  /**
   * The local disk with the most free space that fits a whole extent group and keeps
   * `diskFreeReserveBytes` free besides (never one being evacuated).
   */
  async pickDisk(): Promise<string> {
    let best: DiskRecord | undefined
    let bestFree = -1
    for (const d of await this.opts.localDisks()) {
      if (d.draining === true) continue
      try {
        const free = this.files.freeBytes(d.path) + (this.opts.spares?.bytes(d.id) ?? 0)
        if (free > bestFree) {
          best = d
          bestFree = free
        }
      } catch { /* offline disk */ }
    }
    // the reserve: room for the groups already made whose extents are not all written yet (sparse
    // files), and for etcd and the logs when they share the disk's filesystem
    if (!best || bestFree < (extentsPerEgroup + 1) * vBlockSizeBytes + diskFreeReserveBytes) {
      throw new TessError('TESS_E_CAPACITY', 'no disk of this node has room for a new extent group', 'add disks with `tess disk add`')
    }
    return best.id
  }

  async create(vdiskId: string, egid: string, diskId: string): Promise<void> {
    const dir = await this.diskDir(diskId)
    const key = egroupFileKey(diskId, egid)
    const existing = this.open.get(key)
    if (existing) return void (await existing)
    const p = (async () => {
      const file = EgroupFile.fileName(dir, egid)
      // Idempotent: a retried create finds the file made by the first attempt.
      if (this.files.exists(file)) return EgroupFile.open(dir, egid, new Set(), (m) => this.opts.log.warn(m), this.files)
      return this.createFile(diskId, egid, vdiskId)
    })().then((eg) => this.adopt(eg))
    this.track(key, p)
    await p
  }

  /**
   * Open (and recover) an extent group, given the slots the owner's block map uses. Recovery runs
   * once per process; re-opening an open group frees the slots that hold data but that the
   * owner's map does not use (EgroupFile.forgetSlots: a new owner after a crash, or a copy made
   * into a file that stayed open here).
   */
  async openEgroup(egid: string, diskId: string, inUse: number[], vdiskId: string, createIfMissing: boolean): Promise<void> {
    const key = egroupFileKey(diskId, egid)
    const existing = this.open.get(key)
    if (existing) return (await existing).forgetSlots(new Set(inUse), (m) => this.opts.log.warn(m))
    const dir = await this.diskDir(diskId)
    const p = (async () => {
      const file = EgroupFile.fileName(dir, egid)
      if (!this.files.exists(file)) {
        if (!createIfMissing) throw new TessError('TESS_E_IO', `extent group file ${file} is missing`, 'the disk lost a file: the replica is replaced from another copy when there is one; see cvm.log')
        return this.createFile(diskId, egid, vdiskId)
      }
      return EgroupFile.open(dir, egid, new Set(inUse), (m) => this.opts.log.warn(m), this.files)
    })().then((eg) => this.adopt(eg))
    this.track(key, p)
    await p
  }

  /** an opening file: in `open` at once, in `ready` once open (unless deleted meanwhile), out of both if it fails */
  private track(key: string, p: Promise<EgroupFile>): void {
    this.open.set(key, p)
    p.then(
      (eg) => {
        if (this.open.get(key) === p) this.ready.set(key, eg)
      },
      () => {
        if (this.open.get(key) === p) this.open.delete(key)
      },
    )
  }

  private adopt(eg: EgroupFile): EgroupFile {
    eg.warn = (m) => this.opts.log.warn(m)
    return eg
  }

  async get(egid: string, diskId: string): Promise<EgroupFile> {
    const p = this.open.get(egroupFileKey(diskId, egid))
    if (!p) throw new NotOpenError(egid)
    return p
  }

  /** the group's file on this disk if it is open and ready now, without waiting (the synchronous read and write paths) */
  peek(egid: string, diskId: string): EgroupFile | undefined {
    return this.ready.get(egroupFileKey(diskId, egid))
  }

  /** is the group's file on this disk open (being written, copied into or read)? */
  isOpen(egid: string, diskId: string): boolean {
    return this.open.has(egroupFileKey(diskId, egid))
  }

  /** Remove an extent group's file; `recycle`: it may become a spare as it is (an encrypted vDisk's: see Replica.delete). */
  async delete(egid: string, diskId: string, recycle = false): Promise<void> {
    const key = egroupFileKey(diskId, egid)
    const p = this.open.get(key)
    this.open.delete(key)
    this.ready.delete(key)
    if (p) {
      try {
        await (await p).discard()
      } catch { /* failed open */ }
    }
    let d: DiskRecord
    try {
      d = await this.disk(diskId)
    } catch {
      return
    }
    const file = EgroupFile.fileName(path.join(d.path, egroupDirName), egid)
    if (this.opts.spares && recycle) await this.opts.spares.recycle(d.id, d.path, file)
    else await this.files.remove(file)
    await this.files.remove(EgroupFile.markerName(file))
  }

  async closeAll(): Promise<void> {
    this.ready.clear()
    for (const p of this.open.values()) {
      try {
        await (await p).close()
      } catch { /* best effort on shutdown */ }
    }
    this.open.clear()
  }
}

/** the key of one extent group file: a group's files on two disks of this node are two files (also the garbage collector's key) */
export function egroupFileKey(diskId: string, egid: string): string {
  return `${diskId}/${egid}`
}
