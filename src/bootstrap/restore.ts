/**
 * `tess cluster restore`: rebuild the metadata of a cluster whose etcd was lost, on the same nodes
 * and disks, from a file of `tess cluster backup`. Every node's daemons are stopped (containers
 * keep running: their CSMs adopt them again), every etcd member's data dir is rebuilt from the
 * snapshot (the lost one is moved aside), the id counters are raised past every id the disks still
 * hold (restore-node.ts), then every node is started again and the CVMs answer.
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { ApiClient } from '../lib/apiclient.js'
import { extractSnapshot, type BackupFile } from '../lib/backup.js'
import type { ClusterContext } from '../lib/contexts.js'
import { TessError, errorMessage } from '../lib/errors.js'
import { nodePaths, readNodeConfig } from '../lib/nodeconfig.js'
import { spawnSupervisor } from '../supervisor/running.js'
import { stopLocalDaemons, waitForCvm } from './local.js'
import { connectHost, remoteDataDir, startSupervisor, stopSupervisor } from './remote.js'
import { applyRestore, mergeIdMaxima, scanNodeIds, type AppliedRestore, type IdMaxima } from './restore-node.js'
import { shellQuote, type SshTransport } from './ssh.js'

export interface RestoredNode extends AppliedRestore {
  /** the highest ids found on its disks */
  found: IdMaxima
}

export interface Restored {
  nodes: RestoredNode[]
  /** the floors every id counter was raised past */
  floors: IdMaxima
}

/** The embedded cluster: everything on this machine. */
export async function restoreLocalCluster(ctx: ClusterContext, file: string, b: BackupFile, progress: (step: string) => void): Promise<Restored> {
  const dataDir = ctx.local!.dataDir
  const cfg = readNodeConfig(dataDir)
  const p = nodePaths(dataDir)
  progress('stopping the node\'s daemons')
  await stopLocalDaemons(dataDir)
  progress('reading the ids on the disks')
  const found = scanNodeIds(dataDir, b.manifest.disks.filter((d) => d.node === cfg.nodeName).map((d) => d.path))
  const floors = mergeIdMaxima([found])
  const snap = path.join(p.run, `restore-${crypto.randomBytes(6).toString('hex')}.db`)
  try {
    progress('extracting the etcd snapshot')
    await extractSnapshot(file, b, snap)
    progress('rebuilding etcd\'s data from the snapshot')
    const applied = await applyRestore(dataDir, snap, b.manifest.members, floors)
    progress('starting the node')
    const sup = spawnSupervisor(dataDir)
    progress('waiting for the CVM to answer')
    await waitForCvm(new ApiClient(ctx), sup, ctx.name, p)
    return { nodes: [{ ...applied, found }], floors }
  } finally {
    fs.rmSync(snap, { force: true })
  }
}

const restoreScript = `${remoteDataDir}/bundle/current/dist/bootstrap/restore-node.js`

async function nodeScript<T>(t: SshTransport, args: string[], what: string): Promise<T> {
  const node = (await t.execOk('command -v node')).stdout.trim()
  const r = await t.exec([node, restoreScript, ...args])
  const line = r.stdout.trim().split('\n').pop() ?? ''
  let out: unknown
  try {
    out = JSON.parse(line)
  } catch {
    throw new TessError('TESS_E_IO', `cannot ${what} on ${t.host}: ${r.stderr.trim() || line || `exit ${r.code}`}`, 'see the node')
  }
  const err = (out as { error?: { code?: string, message?: string, hint?: string } }).error
  if (err !== undefined) throw new TessError(err.code === 'TESS_E_CONFLICT' ? 'TESS_E_CONFLICT' : 'TESS_E_IO', `cannot ${what} on ${t.host}: ${err.message ?? ''}`, err.hint ?? '')
  return out as T
}

/**
 * A cluster on hosts, over SSH: every host is reached before anything stops (an unreachable host
 * stops the restore with nothing changed), then in steps across all hosts: stop, scan, rebuild,
 * start.
 */
export async function restoreRemoteCluster(ctx: ClusterContext, file: string, b: BackupFile, progress: (host: string, step: string) => void): Promise<Restored> {
  const r = ctx.remote!
  const hosts = r.hosts
  const ts: SshTransport[] = []
  const snapLocal = path.join(fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'tess-restore-')), 'snapshot.db')
  const snapRemote = `${remoteDataDir}/run/restore-snapshot.db`
  try {
    for (const h of hosts) {
      progress(h.address, 'connecting')
      try {
        ts.push(await connectHost(r, h.address))
      } catch (e) {
        throw new TessError('TESS_E_UNREACHABLE', `cannot restore cluster "${ctx.name}": host ${h.address} (${h.name}) cannot be reached: ${errorMessage(e)}`, 'every host of the cluster takes part in a restore: bring it back, then run the command again (nothing was changed)')
      }
    }
    await Promise.all(ts.map(async (t, i) => {
      if ((await t.exec(`test -f ${shellQuote(restoreScript)}`)).code !== 0) {
        throw new TessError('TESS_E_PRECONDITION', `host ${t.host} runs a tess bundle without restore support`, 'upgrade the cluster to this tess first, then restore')
      }
      progress(hosts[i]!.address, 'stopping the node\'s daemons')
      await stopSupervisor(t)
    }))
    await extractSnapshot(file, b, snapLocal)
    const found = await Promise.all(ts.map(async (t, i) => {
      const h = hosts[i]!
      progress(h.address, 'reading the ids on the disks')
      const disks = b.manifest.disks.filter((d) => d.node === h.name).map((d) => d.path)
      return nodeScript<IdMaxima>(t, ['scan', '--data-dir', remoteDataDir, '--disks', JSON.stringify(disks)], 'read the ids on the disks')
    }))
    const floors = mergeIdMaxima(found)
    const applied = await Promise.all(ts.map(async (t, i) => {
      progress(hosts[i]!.address, 'rebuilding etcd\'s data from the snapshot')
      await t.upload(snapLocal, snapRemote, { mode: 0o600 })
      try {
        return await nodeScript<AppliedRestore>(t, ['apply', '--data-dir', remoteDataDir, '--snapshot', snapRemote, '--members', JSON.stringify(b.manifest.members), '--floors', JSON.stringify(floors)], 'rebuild etcd\'s data')
      } finally {
        await t.exec(`rm -f ${shellQuote(snapRemote)}`)
      }
    }))
    await Promise.all(ts.map(async (t, i) => {
      progress(hosts[i]!.address, 'starting the node')
      await startSupervisor(t)
    }))
    return { nodes: applied.map((a, i) => ({ ...a, found: found[i]! })), floors }
  } finally {
    fs.rmSync(path.dirname(snapLocal), { recursive: true, force: true })
    await Promise.all(ts.map((t) => t.close().catch(() => undefined))) // closing SSH connections when done: nothing is lost if one is gone
  }
}
