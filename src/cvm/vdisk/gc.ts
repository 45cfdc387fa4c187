import path from 'node:path'
import type { Etcd3 } from 'etcd3'
import { errorMessage } from '../../lib/errors.js'
import { etcdCall, keys } from '../../lib/etcd.js'
import type { Logger } from '../../lib/log.js'
import type { DiskRecord, GcFound } from '../../lib/types.js'
import { egroupDirName } from '../pool/disks.js'
import { EgroupFile } from './egroup.js'
import type { FileLayer } from './fileio.js'
import type { EgroupRecord } from './owner.js'
import { egroupFileKey } from './replicastore.js'

/** an extent group file name: `<id>.eg`, and its dirty marker `<id>.eg.dirty` */
const egroupFilePattern = /^(\d+)\.eg(\.dirty)?$/

export interface GcEnv {
  etcd: Etcd3
  nodeName: string
  log: Logger
  localDisks: () => Promise<DiskRecord[]>
  files: FileLayer
  /** is the extent group's file on this disk open in this CVM's replica store (being written, copied into or read)? */
  isOpen: (egid: string, diskId: string) => boolean
  /** remove an extent group's file on a disk of this node, closing it when it is open */
  remove: (egid: string, diskId: string) => Promise<void>
  /** wall-clock time in ms (the files' change times are wall-clock) */
  now: () => number
}

/**
 * The garbage of one node's disks, removed: (1) the files of replicas recorded as stale (replaced
 * after a failure or an evacuation) on this node, and their entries in the group's record; (2)
 * extent group files no record names on this node (a vDisk deleted while this node was down, a
 * replica replaced while it was away, a group whose record was never written because its owner
 * crashed). A file changed less than `minAgeMs` ago is left for a later pass: it may be a copy in
 * progress or a group whose record is about to be written. A file open in the replica store is
 * left too unless a record names it as stale here. A file that a record names as a live replica
 * (its disk and group) is never removed, whatever the stale entries say (the same file may be
 * both); a group's stale file on another disk of this node than its live one is removed (a move
 * between this node's disks that ended before the old file was deleted).
 */
export async function collectGarbage(env: GcEnv, minAgeMs: number): Promise<GcFound> {
  const found: GcFound = { files: 0, bytes: 0, staleEntries: 0 }
  const me = env.nodeName
  const all = await etcdCall('list extent groups', () => env.etcd.getAll().prefix(keys.egroupsPrefix).strings())
  /** the files (disk/group) of replicas on this node that a record names as live */
  const live = new Set<string>()
  const staleHere: StaleHere[] = []
  for (const [key, raw] of Object.entries(all)) {
    const rec = JSON.parse(raw) as EgroupRecord
    for (const r of rec.replicas) if (r.node === me) live.add(egroupFileKey(r.diskId, rec.id))
    if ((rec.stale ?? []).some((r) => r.node === me)) staleHere.push({ key, raw, rec })
  }
  const disks = new Map((await env.localDisks()).map((d) => [d.id, d]))
  const sweep: Sweep = { env, minAgeMs, found, disks, live, keep: new Set() }
  for (const s of staleHere) await removeStale(sweep, s)
  for (const d of disks.values()) await removeUnrecorded(sweep, d.id, path.join(d.path, egroupDirName))
  return found
}

interface StaleHere { key: string, raw: string, rec: EgroupRecord }

/** One pass's state: what it found so far, this node's disks, the files (disk/group) of live replicas here, and the stale files here still too young (the sweep leaves them too). */
interface Sweep { env: GcEnv, minAgeMs: number, found: GcFound, disks: Map<string, DiskRecord>, live: Set<string>, keep: Set<string> }

/** a file too young to remove: undefined; gone: 'gone'; else what it takes on disk */
async function oldEnough(sw: Sweep, file: string): Promise<{ allocatedBytes: number } | undefined | 'gone'> {
  const st = await sw.env.files.stat(file)
  if (st === undefined) return 'gone'
  return sw.env.now() - st.changedAtMs >= sw.minAgeMs ? st : undefined
}

/** (1) A group's stale replicas on this node: their files (unless the same file is live too), then their entries in its record. */
async function removeStale(sw: Sweep, { key, raw, rec }: StaleHere): Promise<void> {
  const { env, found } = sw
  const me = env.nodeName
  const mine = (rec.stale ?? []).filter((r) => r.node === me)
  let young = false
  for (const r of mine) {
    if (sw.live.has(egroupFileKey(r.diskId, rec.id))) continue
    const d = sw.disks.get(r.diskId)
    if (d === undefined) continue // the disk was removed: its files went with it
    const file = EgroupFile.fileName(path.join(d.path, egroupDirName), rec.id)
    const age = await oldEnough(sw, file)
    if (age === undefined) {
      young = true
      sw.keep.add(egroupFileKey(r.diskId, rec.id))
      continue
    }
    if (age === 'gone') continue
    await env.remove(rec.id, r.diskId)
    await env.files.remove(EgroupFile.markerName(file))
    found.files++
    found.bytes += age.allocatedBytes
    env.log.info(`gc: removed stale replica ${file} of extent group ${rec.id} (vDisk ${rec.vdiskId})`)
  }
  if (young) return
  // the entries go; a change of the record meanwhile (its owner replaced replicas) leaves them for the next pass
  const next: EgroupRecord = { ...rec, stale: (rec.stale ?? []).filter((r) => r.node !== me) }
  if (next.stale!.length === 0) delete next.stale
  const res = await etcdCall('update an extent group record', () => env.etcd.if(key, 'Value', '==', raw).then(env.etcd.put(key).value(JSON.stringify(next))).commit())
  if (res.succeeded) found.staleEntries += mine.length
}

/** (2) The files in one disk's extent group directory that no record names on this disk. */
async function removeUnrecorded(sw: Sweep, diskId: string, dir: string): Promise<void> {
  const { env, found } = sw
  let names: string[]
  try {
    names = await env.files.list(dir)
  } catch { return /* no such directory yet, or the disk is offline */ }
  const present = new Set(names)
  for (const n of names) {
    const m = egroupFilePattern.exec(n)
    if (!m) continue
    const egid = m[1]!
    const key = egroupFileKey(diskId, egid)
    if (sw.live.has(key) || sw.keep.has(key) || env.isOpen(egid, diskId)) continue
    const file = path.join(dir, n)
    // a marker goes with its group file (removed below), or alone when that file is gone
    if (m[2] !== undefined && present.has(`${egid}.eg`)) continue
    try {
      const age = await oldEnough(sw, file)
      if (age === undefined || age === 'gone') continue
      // the store may have opened it since the listing (a new replica made by another owner)
      if (env.isOpen(egid, diskId)) continue
      await env.files.remove(file)
      if (m[2] === undefined) await env.files.remove(EgroupFile.markerName(file))
      found.files++
      found.bytes += age.allocatedBytes
      env.log.info(`gc: removed extent group file ${file}: no record names it on this node`)
    } catch (e) {
      env.log.warn(`gc: cannot remove ${file}: ${errorMessage(e)}`)
    }
  }
}

