/**
 * What a metadata restore (`tess cluster restore`) does on one node, with the node's daemons
 * stopped: the embedded cluster calls these functions in the tess process; a cluster on hosts
 * runs this file over SSH from the node's bundle (`node dist/bootstrap/restore-node.js scan|apply
 * --data-dir DIR ...`, one JSON line out).
 *
 * - scan: the highest ids this node's disks and CSMs hold (extent group files and the vDisk ids in
 *   their headers, disk markers, csm.json files). Objects made after the backup are on the disks but
 *   not in the restored etcd: their ids must never be handed out again, or a new extent group
 *   would be given the id (and the file name) of one still on a disk.
 * - apply: the etcd member's data dir rebuilt from the snapshot with `etcdctl snapshot restore`
 *   (the lost one is moved aside, never deleted), and the id floors written to
 *   `<data-dir>/restore-floors.json`: the CVM raises etcd's id counters past them at its next start,
 *   before it allocates anything (cvm/main.ts).
 */
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { egroupMagic } from '../cvm/vdisk/egroup.js'
import type { BackupMember } from '../lib/backup.js'
import { TessError, errorMessage } from '../lib/errors.js'
import { nodePaths, readNodeConfig, writeFileAtomic, type NodeConfig } from '../lib/nodeconfig.js'
import { argValue, runCommand } from '../lib/process.js'

/** the id kinds of etcd's counters (/tess/ids/KIND) that objects on a node's disks carry */
export const idKinds = ['egroup', 'vdisk', 'disk', 'csm'] as const
export type IdKind = typeof idKinds[number]
/** per kind, the highest id found (decimal string; "0" when none) */
export type IdMaxima = Record<IdKind, string>

const egroupFile = /^(\d+)\.eg(\.dirty)?$/
const diskMarkerFile = 'tess-disk.json'
/** the vDisk id in an extent group file's header (egroup.ts: magic 8, version, geometry, egroup id at 24, vDisk id at 32) */
const headerVdiskIdOffset = 32
/** how long `etcdctl snapshot restore` may take */
const etcdRestoreTimeoutMs = 10 * 60_000

function maxOf(a: bigint, b: string | bigint | undefined): bigint {
  if (b === undefined) return a
  let v: bigint
  try {
    v = BigInt(b)
  } catch {
    return a
  }
  return v > a ? v : a
}

/**
 * The highest ids held by this node: every disk in `diskPaths` and under `<data-dir>/disks/`
 * whose marker names this cluster (a disk of another cluster is left out), and its CSMs.
 */
export function scanNodeIds(dataDir: string, diskPaths: string[]): IdMaxima {
  const cfg = readNodeConfig(dataDir)
  const p = nodePaths(dataDir)
  const max: Record<IdKind, bigint> = { egroup: 0n, vdisk: 0n, disk: 0n, csm: 0n }
  const disks = new Set(diskPaths)
  for (const d of safeReaddir(p.disks)) disks.add(path.join(p.disks, d))
  for (const d of disks) {
    let marker: { clusterId?: string, diskId?: string }
    try {
      marker = JSON.parse(fs.readFileSync(path.join(d, diskMarkerFile), 'utf8')) as typeof marker
    } catch {
      continue // not a disk of any cluster (or gone)
    }
    if (marker.clusterId !== cfg.clusterId) continue
    max.disk = maxOf(max.disk, marker.diskId)
    const egDir = path.join(d, 'egroups')
    const head = Buffer.alloc(headerVdiskIdOffset + 8)
    for (const name of safeReaddir(egDir)) {
      const m = egroupFile.exec(name)
      if (!m) continue
      max.egroup = maxOf(max.egroup, m[1])
      if (m[2] !== undefined) continue
      let fd: number | undefined
      try {
        fd = fs.openSync(path.join(egDir, name), 'r')
        if (fs.readSync(fd, head, 0, head.length, 0) === head.length && head.subarray(0, egroupMagic.length).equals(egroupMagic)) {
          max.vdisk = maxOf(max.vdisk, head.readBigUInt64LE(headerVdiskIdOffset))
        }
      } catch { /* a file removed meanwhile, or unreadable: its name still counted */ } finally {
        if (fd !== undefined) fs.closeSync(fd)
      }
    }
  }
  for (const c of safeReaddir(p.csms)) {
    try {
      const rec = JSON.parse(fs.readFileSync(p.csmSpec(c), 'utf8')) as { id?: string }
      max.csm = maxOf(max.csm, rec.id)
    } catch { /* no record: nothing to count */ }
  }
  return { egroup: max.egroup.toString(), vdisk: max.vdisk.toString(), disk: max.disk.toString(), csm: max.csm.toString() }
}

function safeReaddir(dir: string): string[] {
  try {
    return fs.readdirSync(dir)
  } catch {
    return []
  }
}

/** The highest of every node's maxima: each counter must go past what any node holds. */
export function mergeIdMaxima(all: IdMaxima[]): IdMaxima {
  const out: IdMaxima = { egroup: '0', vdisk: '0', disk: '0', csm: '0' }
  for (const m of all) for (const k of idKinds) out[k] = maxOf(BigInt(out[k]), m[k]).toString()
  return out
}

/** `--initial-cluster` of the restored members */
export function initialClusterOf(members: BackupMember[]): string {
  return members.map((m) => `${m.name}=${m.peerUrls[0]}`).join(',')
}

/**
 * Check that this node's place in etcd matches the backup's: a member then must be one now (its
 * member data is rebuilt), and a node that is a member now must have been one then.
 */
export function checkMembership(cfg: NodeConfig, members: BackupMember[]): boolean {
  const inBackup = members.some((m) => m.name === cfg.nodeName)
  const memberNow = cfg.etcd.member !== false
  if (inBackup !== memberNow) {
    throw new TessError('TESS_E_CONFLICT', `node ${cfg.nodeName} ${memberNow ? 'is an etcd member now but was not' : 'is no etcd member now but was one'} when the backup was taken`,
      'a restore rebuilds the etcd members of the backup on the same nodes: use a backup taken since the last change of the etcd members (host add or remove)')
  }
  return inBackup
}

export interface AppliedRestore {
  node: string
  /** where the lost member data was moved (null: there was none, or the node is no etcd member) */
  movedAside: string | null
  etcdMember: boolean
}

/**
 * Rebuild this node's etcd member from the snapshot (when it is a member) and leave the id floors
 * for the CVM. The node's daemons must be stopped. The old data dir of the member is moved to
 * `etcd.lost-<time>`, never deleted.
 */
export async function applyRestore(dataDir: string, snapshot: string, members: BackupMember[], floors: IdMaxima): Promise<AppliedRestore> {
  const cfg = readNodeConfig(dataDir)
  const p = nodePaths(dataDir)
  const member = checkMembership(cfg, members)
  let movedAside: string | null = null
  if (member) {
    const me = members.find((m) => m.name === cfg.nodeName)!
    const staging = `${p.etcdData}.restoring`
    fs.rmSync(staging, { recursive: true, force: true })
    await runCommand('etcdctl', ['snapshot', 'restore', snapshot, '--name', cfg.nodeName, '--data-dir', staging,
      '--initial-cluster', initialClusterOf(members), '--initial-cluster-token', cfg.clusterId,
      '--initial-advertise-peer-urls', me.peerUrls.join(',')], { env: { ...process.env, ETCDCTL_API: '3' }, timeoutMs: etcdRestoreTimeoutMs })
    if (fs.existsSync(p.etcdData)) {
      movedAside = `${p.etcdData}.lost-${new Date().toISOString().replace(/[:.]/g, '-')}`
      fs.renameSync(p.etcdData, movedAside)
    }
    fs.renameSync(staging, p.etcdData)
    fs.chmodSync(p.etcdData, 0o700)
  }
  writeFileAtomic(p.restoreFloors, JSON.stringify(floors) + '\n', 0o600)
  return { node: cfg.nodeName, movedAside, etcdMember: member }
}

async function main(): Promise<number> {
  const [verb] = process.argv.slice(2)
  const dataDir = argValue('--data-dir')
  try {
    if (dataDir === undefined || !dataDir.startsWith('/')) throw new TessError('TESS_E_USAGE', 'usage: restore-node.js scan|apply --data-dir /ABSOLUTE/DIR ...', 'tess cluster restore runs this; see its help')
    if (verb === 'scan') {
      const disks = JSON.parse(argValue('--disks') ?? '[]') as unknown
      if (!Array.isArray(disks) || disks.some((d) => typeof d !== 'string')) throw new TessError('TESS_E_USAGE', '--disks is a JSON array of paths', 'tess cluster restore runs this; see its help')
      process.stdout.write(JSON.stringify(scanNodeIds(dataDir, disks as string[])) + '\n')
      return 0
    }
    if (verb === 'apply') {
      const snapshot = argValue('--snapshot')
      const members = JSON.parse(argValue('--members') ?? 'null') as BackupMember[] | null
      const floors = JSON.parse(argValue('--floors') ?? 'null') as IdMaxima | null
      if (snapshot === undefined || !Array.isArray(members) || floors === null || idKinds.some((k) => typeof floors[k] !== 'string')) {
        throw new TessError('TESS_E_USAGE', 'usage: restore-node.js apply --data-dir DIR --snapshot FILE --members JSON --floors JSON', 'tess cluster restore runs this; see its help')
      }
      process.stdout.write(JSON.stringify(await applyRestore(dataDir, snapshot, members, floors)) + '\n')
      return 0
    }
    throw new TessError('TESS_E_USAGE', `unknown verb "${verb ?? ''}": scan or apply`, 'tess cluster restore runs this; see its help')
  } catch (e) {
    const err = e instanceof TessError ? e.toBody() : { code: 'TESS_E_INTERNAL', message: errorMessage(e), hint: 'see the node' }
    process.stdout.write(JSON.stringify({ error: err }) + '\n')
    return e instanceof TessError ? e.exitCode : 1
  }
}

/** run as a script (the bundle's path on a node goes through the `current` symlink; import.meta.url does not) */
function runAsScript(): boolean {
  try {
    return process.argv[1] !== undefined && fs.realpathSync(process.argv[1]) === fs.realpathSync(fileURLToPath(import.meta.url))
  } catch {
    return false // argv[1] is not a file: imported by another entry point
  }
}

if (runAsScript()) process.exitCode = await main()
