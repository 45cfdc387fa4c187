import fs from 'node:fs'
import { TessError, errorMessage } from '../../lib/errors.js'
import { checkCaPem, nbdTrustRefreshMs, waitForNbdTrustAcks, type NbdRevocation, type NbdTrust } from '../nbd/trust.js'
import type { NodeConfig } from '../../lib/nodeconfig.js'
import type { HealthInfo } from '../../lib/types.js'
import type { NodeService } from '../node.js'
import type { DiskService } from '../pool/disks.js'
import type { VdiskService } from '../vdisk/service.js'
import type { VdiskEngine } from '../vdisk/engine.js'
import type { PlacementView } from '../vdisk/placement.js'
import { etcdCall, getJson, keys, listJson } from '../../lib/etcd.js'
import type { DiskRecord, EvacuationProgress, NodeRecord, ReplicaMove, ScrubStart } from '../../lib/types.js'
import { listCsmRecords } from '../control/records.js'
import type { Etcd3 } from 'etcd3'
import { FileAnswer, bodyObject, bool, int, queryInt, str, type ApiRequest, type ApiServer } from '../../lib/http-server.js'
import { takeBackup } from '../control/backup.js'
import { checkName } from '../../lib/names.js'
import { etcdReconfigWaitMs, healthExtentCountsTtlMs, rfMax, scrubBytesPerSecMax, scrubBytesPerSecMin, vdiskSizeMaxBytes } from '../../lib/limits.js'
import { evacuateDisk, evacuationTargets, type DiskEvacuationEnv, type DiskEvacuationJob } from '../curator/disk-evacuation.js'
import { ExtentCounts, clusterHealth, liveness } from '../curator/health.js'
import { parseSettingsPatch, readSettings, updateSettings } from '../curator/settings.js'
import { parsePoolPatch, updatePoolConfig } from '../pool/provisioning.js'
import type { Curator } from '../curator/curator.js'

export const apiVersion = '0.1.0'

interface EvacuationJob extends EvacuationProgress {
  node: string
  onlyCopies: string[]
}

/** what the management API routes use */
export type RouteServices = { cfg: NodeConfig, node: NodeService, disks: DiskService, vdisks: VdiskService, engine: VdiskEngine, view: PlacementView, etcd: Etcd3, log: { info(m: string): void, warn(m: string): void }, nbdTrust: NbdTrust, curator: Curator, scrubNow: (bytesPerSec?: number) => Promise<ScrubStart>,
  /** run one vDisk's replica moves at its owner (node operation vdisk.move) */
  moveAt: (vdiskId: string, moves: ReplicaMove[]) => Promise<{ egroups: number, bytes: number, skipped: number }> }

/** The management API routes (see the README's API section), one function per kind of resource. */
export function registerRoutes(api: ApiServer, s: RouteServices): void {
  registerClusterRoutes(api, s)
  registerNbdTrustRoutes(api, s)
  registerDiskRoutes(api, s)
  registerNodeRoutes(api, s)
  registerEtcdMemberRoutes(api, s)
  registerVdiskRoutes(api, s)
}

/** health, cluster status, and this CVM's placement view */
function registerClusterRoutes(api: ApiServer, s: RouteServices): void {
  api.route('GET', '/v1/health', async (): Promise<HealthInfo> => ({
    node: s.cfg.nodeName,
    clusterName: s.cfg.clusterName,
    pid: process.pid,
    etcd: await s.node.etcdHealthy(),
    version: apiVersion,
  }))

  api.route('GET', '/v1/cluster/status', async () => {
    const [pool, vdisks] = await Promise.all([s.vdisks.pool(), s.vdisks.list()])
    return s.node.status(pool, vdisks.length)
  })

  // how well the data is protected (extent groups healthy, under-replicated, lost) and the curator
  const counts = new ExtentCounts(s.etcd, healthExtentCountsTtlMs)
  api.route('GET', '/v1/cluster/health', async () => clusterHealth(s.etcd, () => s.curator.master(), counts))

  // the cluster's metadata backup (tess cluster backup): etcd's snapshot and what a restore needs, one at a time per CVM
  let backupRunning = false
  api.route('GET', '/v1/cluster/backup', async () => {
    if (backupRunning) throw new TessError('TESS_E_CONFLICT', `a backup is being taken through node ${s.cfg.nodeName} already`, 'wait for it to finish, or ask another node')
    backupRunning = true
    let b
    try {
      b = await takeBackup(s.etcd, s.cfg, apiVersion)
    } catch (e) {
      backupRunning = false
      throw e
    }
    const file = b.file
    s.log.info(`backup: etcd snapshot of ${b.manifest.snapshotBytes} bytes at revision ${b.manifest.revision} taken`)
    return new FileAnswer(b.head, file, () => {
      fs.rmSync(file, { force: true })
      backupRunning = false
    })
  }, 'admin')
  // the curator's settings: the grace before a lost node's data and CSMs move, the repair and scrub rates
  api.route('GET', '/v1/cluster/config', async () => readSettings(s.etcd))
  api.route('PATCH', '/v1/cluster/config', async (req) => updateSettings(s.etcd, parseSettingsPatch(req.body)), 'admin')
  // a full checksum scrub now, at the master (bytesPerSec: the rate from now on)
  api.route('POST', '/v1/cluster/scrub', async (req) => {
    const b = bodyObject(req.body)
    return s.scrubNow(int(b, 'bytesPerSec', scrubBytesPerSecMin, scrubBytesPerSecMax, false))
  }, 'operator')

  // This CVM's placement view (nodes up, draining, with disks) and whether it can place an extent
  // group at RF `rf` now: `cluster create` and `host add` wait until every CVM says so.
  api.route('GET', '/v1/placement', async (req) => s.view.info(Math.max(1, queryInt(req, 'rf', rfMax) ?? 1)))
}

/** who may use NBD over TCP: the users CA and revocations */
function registerNbdTrustRoutes(api: ApiServer, s: RouteServices): void {
  // the CA of NBD users' client certificates (public; its key stays with the operator)
  api.route('PUT', '/v1/nbd/user-ca', async (req) => {
    const pem = checkCaPem(str(bodyObject(req.body), 'certPem')!)
    await etcdCall('store the NBD users CA', () => s.etcd.put(keys.nbdUserCa).value(pem))
    await s.nbdTrust.refresh()
    // answered once every CVM that is up accepts it: credentials work on any node right away
    const pending = await waitForNbdTrustAcks(s.etcd, pem, () => s.view.nodes().filter((n) => n.up).map((n) => n.name))
    if (pending.length > 0) s.log.warn(`NBD users CA stored; not yet accepted by ${pending.join(', ')} (they read it within ${nbdTrustRefreshMs / 1000} s of coming back)`)
    return { stored: true, pendingNodes: pending }
  })
  // revoke a user's NBD credentials: certificates naming the user issued until now are refused,
  // and the connections they hold are closed, on every node within seconds (a watch)
  api.route('POST', '/v1/nbd/revocations', async (req) => {
    const user = checkName('user', str(bodyObject(req.body), 'user')!)
    const rec: NbdRevocation = { user, revokedAt: new Date().toISOString() }
    await etcdCall('store the revocation', () => s.etcd.put(keys.nbdRevocation(user)).value(JSON.stringify(rec)))
    await s.nbdTrust.refreshRevocations()
    return rec
  })
  api.route('GET', '/v1/nbd/revocations', async () => (await etcdCall('read the revocations', () => listJson<NbdRevocation>(s.etcd, keys.nbdRevocationsPrefix))).sort((a, b) => a.user.localeCompare(b.user)))
}

/** disks and the storage pool */
function registerDiskRoutes(api: ApiServer, s: RouteServices): void {
  // The node's status record shows a disk's capacity as soon as the disk is added or removed,
  // not at the next heartbeat (the pool, `vdisk create`'s capacity check and placement read it).
  const statusNow = () => s.node.heartbeat().catch((e: unknown) => s.log.warn(`status update after a disk change: ${errorMessage(e)}`))
  api.route('GET', '/v1/disks', async () => s.disks.list())
  api.route('POST', '/v1/disks', async (req) => {
    const b = bodyObject(req.body)
    const d = await s.disks.add(str(b, 'path')!, str(b, 'node', false) ?? s.cfg.nodeName)
    await statusNow()
    return d
  })
  api.route('DELETE', '/v1/disks', async (req) => {
    const p = req.query.get('path')
    if (!p) throw new TessError('TESS_E_BAD_REQUEST', 'query parameter "path" is required', 'DELETE /v1/disks?path=/the/disk')
    const d = await s.disks.remove(p, req.query.get('node') ?? undefined)
    await statusNow()
    return d
  })
  api.route('GET', '/v1/storage-pool', async () => s.vdisks.pool())
  api.route('PATCH', '/v1/storage-pool', async (req) => {
    await updatePoolConfig(s.etcd, parsePoolPatch(req.body))
    return s.vdisks.pool()
  }, 'admin')
  registerDiskEvacuation(api, s)
}

/**
 * `tess disk remove --evacuate`, step 1: the disk is marked draining (no new extent group lands
 * on it) and its replicas move to its node's other disks, through each vDisk's owner. Runs as a
 * job on this CVM; GET shows its progress. Step 2 is the DELETE above.
 */
function registerDiskEvacuation(api: ApiServer, s: RouteServices): void {
  const jobs = new Map<string, DiskEvacuationJob>()
  const env: DiskEvacuationEnv = { etcd: s.etcd, onlineDisks: async () => (await liveness(s.etcd)).onlineDisks, move: s.moveAt }
  const diskOf = (req: ApiRequest) => {
    const p = req.query.get('path')
    if (!p) throw new TessError('TESS_E_BAD_REQUEST', 'query parameter "path" is required', 'POST /v1/disks/evacuate?path=/the/disk')
    return s.disks.find(p, req.query.get('node') ?? undefined)
  }
  api.route('POST', '/v1/disks/evacuate', async (req) => {
    const found = await diskOf(req)
    const running = jobs.get(found.id)
    if (running && running.state === 'running') return running
    await evacuationTargets(env, found) // refused before anything changes when no other disk can take the data
    const d = await s.disks.drain(found.id, found.node)
    const job: DiskEvacuationJob = { disk: d.id, node: d.node, path: d.path, state: 'running', egroupsMoved: 0, egroupsTotal: 0, vdisk: null, error: null }
    jobs.set(d.id, job)
    void evacuateDisk(env, d, (p) => Object.assign(job, p)).then((moved) => {
      job.egroupsMoved = moved
      job.state = 'done'
      s.log.info(`disk ${d.path} on ${d.node}: ${moved} extent group(s) moved to the node's other disks`)
    }, (e: unknown) => {
      job.state = 'failed'
      job.error = e instanceof TessError ? e.toBody() : { code: 'TESS_E_IO', message: `evacuation of disk ${d.path} failed: ${errorMessage(e)}`, hint: 'see the CVM log; run the command again to resume' }
    })
    return job
  })
  api.route('GET', '/v1/disks/evacuate', async (req) => {
    const d = await diskOf(req)
    const job = jobs.get(d.id)
    if (!job) throw new TessError('TESS_E_NOT_FOUND', `no evacuation of disk "${d.path}" started on this CVM`, 'start one with POST')
    return job
  })
}

/**
 * Host removal is refused while the node runs CSMs that are not being deleted (their containers
 * would be left on a node that is gone). Returns the ones being deleted (a node that is down
 * finishes their delete when it is back): they go with the node.
 */
async function refuseWithCsms(etcd: Etcd3, name: string): Promise<string[]> {
  const csms = await listCsmRecords(etcd, name)
  const live = csms.filter((c) => c.deleting !== true).map((c) => c.name).sort()
  if (live.length > 0) {
    throw new TessError('TESS_E_CONFLICT', `cannot remove host "${name}": it runs CSM(s) ${live.join(', ')}`,
      `move them with their containers to other nodes (\`tess host remove ${name} --evacuate\`, or \`tess csm move NAME\`), or delete them (\`tess csm delete NAME --force\` removes their containers)`)
  }
  return csms.filter((c) => c.deleting === true).map((c) => c.name)
}

/** host removal: evacuation of a node's replicas, then forgetting the node */
function registerNodeRoutes(api: ApiServer, s: RouteServices): void {
  const nodeRecord = async (name: string): Promise<NodeRecord> => {
    const rec = await etcdCall('read the node', () => getJson<NodeRecord>(s.etcd, keys.node(name)))
    if (!rec) throw new TessError('TESS_E_NOT_FOUND', `host "${name}" is not a node of this cluster`, 'see `tess host list`')
    return rec
  }

  // Host removal, step 1: no new extent group lands on the node, and every replica it holds is
  // copied elsewhere by the owners of the vDisks. Runs as a job on this CVM; GET shows its progress.
  const evacuations = new Map<string, EvacuationJob>()
  api.route('POST', '/v1/nodes/:name/evacuate', async (req) => {
    const name = req.params.name!
    const rec = await nodeRecord(name)
    // the data is moved only for a host that can then be removed
    await refuseWithCsms(s.etcd, name)
    const running = evacuations.get(name)
    if (running && running.state === 'running') return running
    await etcdCall('mark the node draining', () => s.etcd.put(keys.node(name)).value(JSON.stringify({ ...rec, draining: true })))
    const job: EvacuationJob = { node: name, state: 'running', egroupsMoved: 0, egroupsTotal: 0, vdisk: null, error: null, onlyCopies: [] }
    evacuations.set(name, job)
    void s.engine.evacuateNode(name, (p) => {
      Object.assign(job, p)
      if (p.vdisk) s.log.info(`evacuate ${name}: ${p.egroupsMoved}/${p.egroupsTotal} extent groups moved (vDisk ${p.vdisk})`)
    }).then(async (moved) => {
      job.egroupsMoved = moved
      job.onlyCopies = await s.engine.onlyCopiesOn(name)
      job.state = 'done'
    }, (e: unknown) => {
      job.state = 'failed'
      job.error = e instanceof TessError ? e.toBody() : { code: 'TESS_E_IO', message: `evacuation of ${name} failed: ${errorMessage(e)}`, hint: 'see the CVM log; run the command again to resume' }
    })
    return job
  })
  api.route('GET', '/v1/nodes/:name/evacuate', async (req) => {
    const job = evacuations.get(req.params.name!)
    if (!job) throw new TessError('TESS_E_NOT_FOUND', `no evacuation of "${req.params.name}" started on this CVM`, 'start one with POST')
    return job
  })

  // Host removal, step 2: forget the node (refused while it holds the only healthy copy of data).
  api.route('DELETE', '/v1/nodes/:name', async (req) => {
    const name = req.params.name!
    const rec = await nodeRecord(name)
    const deletingCsms = await refuseWithCsms(s.etcd, name)
    const only = await s.engine.onlyCopiesOn(name)
    if (only.length > 0) {
      throw new TessError('TESS_E_CONFLICT', `cannot remove host "${name}": it holds the only healthy copy of data of vDisk(s) ${only.join(', ')}`, `run \`tess host remove ${name} --evacuate\` to copy the data elsewhere first`)
    }
    const disks = (await etcdCall('list disks', () => listJson<DiskRecord>(s.etcd, keys.disksPrefix))).filter((d) => d.node === name)
    await etcdCall('remove the node', () => s.etcd.if(keys.node(name), 'Create', '>', 0)
      .then(...disks.map((d) => s.etcd.delete().key(keys.disk(d.id))), ...deletingCsms.map((c) => s.etcd.delete().key(keys.csm(c))),
        s.etcd.delete().key(keys.node(name)), s.etcd.delete().key(keys.nodeStatus(name))).commit())
    return { node: name, address: rec.address, disksRemoved: disks.map((d) => d.path) }
  })
}

/**
 * A change of etcd's membership. etcd refuses one until its leader has been in touch with every
 * voting member for a few seconds ("unhealthy cluster": right after a promotion, or after a member
 * came back from a power loss or a partition): retried every 6 s up to etcdReconfigWaitMs.
 */
async function etcdReconfig<T>(action: string, fn: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + etcdReconfigWaitMs
  for (;;) {
    try {
      return await fn()
    } catch (e) {
      if (Date.now() > deadline || !/unhealthy|circuit breaker/i.test(String(e))) {
        throw new TessError('TESS_E_UNREACHABLE', `cannot ${action}: etcd: ${errorMessage(e)}`, 'check `tess cluster status`; every etcd member must be up')
      }
      await new Promise((r) => setTimeout(r, 6000))
    }
  }
}

/** etcd membership as hosts are added and removed */
function registerEtcdMemberRoutes(api: ApiServer, s: RouteServices): void {
  // Growing etcd (host add): register a new member as a learner (it does not count for quorum
  // until promoted) before its etcd starts; answers the --initial-cluster string it must start with.
  api.route('POST', '/v1/etcd/members', async (req) => {
    const b = bodyObject(req.body)
    const name = checkName('node', str(b, 'name')!)
    const peerUrl = str(b, 'peerUrl')!
    if (!/^https:\/\/[^/\s]+:\d+$/.test(peerUrl)) throw new TessError('TESS_E_INVALID', `bad etcd peer URL "${peerUrl}"`, 'https://ADDRESS:PORT')
    const list = await etcdCall('list etcd members', () => s.etcd.cluster.memberList({}))
    let members = list.members ?? []
    if (!members.some((m) => (m.peerURLs ?? []).includes(peerUrl))) {
      const res = await etcdReconfig('add an etcd member', () => s.etcd.cluster.memberAdd({ peerURLs: [peerUrl], isLearner: true }))
      members = res.members ?? []
    }
    const initialCluster = members.map((m) => `${m.name || ((m.peerURLs ?? []).includes(peerUrl) ? name : '')}=${(m.peerURLs ?? [])[0] ?? ''}`)
    if (initialCluster.some((x) => x.startsWith('='))) {
      throw new TessError('TESS_E_CONFLICT', 'another etcd member was added but has not started yet', 'start it (or remove it) first')
    }
    return { initialCluster: initialCluster.join(','), members: members.length }
  })

  // Host removal of an etcd member: remove it from etcd, refused if the members left would not
  // have a quorum of live ones.
  api.route('POST', '/v1/etcd/members/remove', async (req) => {
    const peerUrl = str(bodyObject(req.body), 'peerUrl')!
    const list = await etcdCall('list etcd members', () => s.etcd.cluster.memberList({}))
    const all = list.members ?? []
    const m = all.find((x) => (x.peerURLs ?? []).includes(peerUrl))
    if (!m) return { removed: false, members: all.length }
    const voters = all.filter((x) => !x.isLearner && x.ID !== m.ID)
    // Health of each remaining member, from the node status records (lease-bound: present = up).
    const statuses = await etcdCall('read node status', () => listJson<{ name: string, daemons: Array<{ name: string, healthy: boolean }> }>(s.etcd, keys.nodeStatusPrefix))
    const up = new Set(statuses.filter((x) => x.daemons.some((d) => d.name === 'etcd' && d.healthy)).map((x) => x.name))
    const liveVoters = voters.filter((v) => up.has(v.name)).length
    if (voters.length === 0 || liveVoters < Math.floor(voters.length / 2) + 1) {
      throw new TessError('TESS_E_PRECONDITION', `cannot remove etcd member ${m.name}: ${liveVoters} of the ${voters.length} members left are up, a quorum needs ${Math.floor(voters.length / 2) + 1}`, 'bring the other members up first')
    }
    await etcdReconfig('remove the etcd member', () => s.etcd.cluster.memberRemove({ ID: m.ID }))
    return { removed: true, members: all.length - 1 }
  })

  // ... and promote it to a voting member once its etcd has caught up (refused until then: retry).
  api.route('POST', '/v1/etcd/members/promote', async (req) => {
    const peerUrl = str(bodyObject(req.body), 'peerUrl')!
    const list = await etcdCall('list etcd members', () => s.etcd.cluster.memberList({}))
    const m = (list.members ?? []).find((x) => (x.peerURLs ?? []).includes(peerUrl))
    if (!m) throw new TessError('TESS_E_NOT_FOUND', `no etcd member with peer URL ${peerUrl}`, 'add it first')
    if (m.isLearner) {
      try {
        await s.etcd.cluster.memberPromote({ ID: m.ID })
      } catch (e) {
        throw new TessError('TESS_E_CONFLICT', `etcd member ${m.name || peerUrl} cannot be promoted yet: ${errorMessage(e)}`, 'it is still catching up: retry')
      }
    }
    return { promoted: true, name: m.name }
  })
}

function registerVdiskRoutes(api: ApiServer, s: RouteServices): void {
  api.route('GET', '/v1/vdisks', async () => s.vdisks.list())
  api.route('POST', '/v1/vdisks', async (req) => {
    const b = bodyObject(req.body)
    return s.vdisks.create(str(b, 'name')!, int(b, 'sizeBytes', 1, vdiskSizeMaxBytes)!, int(b, 'rf', 1, rfMax, false) ?? 1, bool(b, 'encrypted'))
  }, 'operator')
  api.route('GET', '/v1/vdisks/:name', async (req) => s.vdisks.show(req.params.name!))
  api.route('PATCH', '/v1/vdisks/:name', async (req) => {
    const b = bodyObject(req.body)
    return s.vdisks.resize(req.params.name!, int(b, 'sizeBytes', 1, vdiskSizeMaxBytes)!)
  }, 'operator')
  api.route('DELETE', '/v1/vdisks/:name', async (req) => s.vdisks.delete(req.params.name!, req.query.get('force') === 'true', req.query.get('dryRun') === 'true'), 'operator')
  api.route('GET', '/v1/snapshots', async () => s.vdisks.snapshots())
  api.route('GET', '/v1/vdisks/:name/snapshots', async (req) => s.vdisks.snapshots(req.params.name!))
  api.route('POST', '/v1/vdisks/:name/snapshots', async (req) => s.vdisks.createSnapshot(req.params.name!, str(bodyObject(req.body), 'name')!), 'operator')
  api.route('POST', '/v1/vdisks/:name/clones', async (req) => {
    const b = bodyObject(req.body)
    return s.vdisks.clone(req.params.name!, str(b, 'snapshot', false), str(b, 'name')!, int(b, 'rf', 1, rfMax, false))
  }, 'operator')
  api.route('POST', '/v1/vdisks/:name/flatten', async (req) => s.vdisks.flatten(req.params.name!), 'operator')
  api.route('POST', '/v1/vdisks/:name/restore', async (req) => {
    const b = bodyObject(req.body)
    return s.vdisks.restoreSnapshot(req.params.name!, str(b, 'snapshot')!, bool(b, 'force'))
  }, 'operator')
  api.route('DELETE', '/v1/vdisks/:name/snapshots/:snapshot', async (req) => s.vdisks.deleteSnapshot(req.params.name!, req.params.snapshot!, req.query.get('force') === 'true'), 'operator')
}
