import fs from 'node:fs'
import { openSecret, readSecretsKey } from '../../lib/secretbox.js'
import fsp from 'node:fs/promises'
import type { Etcd3 } from 'etcd3'
import { TessError, errorMessage, isTessError } from '../../lib/errors.js'
import { etcdCall, getJson, keys, listJson } from '../../lib/etcd.js'
import type { Logger } from '../../lib/log.js'
import { nodePaths, writeFileAtomic, type NodeConfig } from '../../lib/nodeconfig.js'
import type { HostCapacity, ImageInfo, PullProgressView } from '../../lib/csm-types.js'
import { cgroupParentFor, type ContainerInfo, type CsmSpec } from '../../lib/container-spec.js'
import { CsmClient } from '../../lib/rpc/csm.js'
import type { LocalCsm, NamedCsmStats, PullAnswer } from '../../lib/rpc/node-ops.js'
import type { ContainersState } from '../../lib/types.js'
import type { EventSink } from '../../lib/event-types.js'
import { formatReference, parseReference } from '../../lib/images/reference.js'
import type { RegistryConfig } from '../images/registry.js'
import { ContentStore } from '../../lib/images/store.js'
import { LayerStore } from '../../lib/images/unpack.js'
import { ImageWorker } from '../images/worker.js'
import { CgroupHost } from '../../csm/runtime/cgroups.js'
import { isProcessAlive } from '../../csm/runtime/runc.js'
import { refusingRule } from './policy.js'
import { listCsmRecords, type ContainerRecord, type CsmRecord, type RegistryPolicyRecord, type RegistryRecord } from './records.js'

/** how long a new (or restarted) CSM daemon may take to answer */
export const csmStartTimeoutMs = 30_000
/** how long the supervisor may take to stop a deleted CSM's daemon */
export const csmStopTimeoutMs = 20_000
/** longest unix socket path (sun_path is 108 bytes with its NUL) */
const socketPathMaxBytes = 107
/** a container without a record is removed only when older than this */
const orphanAgeMinMs = 60_000

export const canonicalRef = (ref: string): string => formatReference(parseReference(ref, { defaultRegistry: 'docker.io' }))

/**
 * The container side of one node, inside its CVM: it turns CSM records in etcd into CSM
 * directories (the supervisor runs a daemon for each), talks to those daemons over their unix
 * sockets, and owns the node's image store (the one writer; CSMs only read it).
 */
export class NodeAgent {
  readonly paths: ReturnType<typeof nodePaths>
  private store!: ContentStore
  private layers!: LayerStore
  /** pulls run in a child process at a lower priority (decompression and digests off the data path's core share) */
  private readonly imageWorker: ImageWorker
  private host!: CgroupHost
  private reconciling: Promise<void> | undefined
  private timer: NodeJS.Timeout | undefined
  /** why this node cannot run containers (its container subsystem did not start); undefined when it can */
  private unavailable: string | undefined

  /** what each container looked like at the last reconcile (its exits and restarts become events) */
  private readonly lastSeen = new Map<string, { finishedAt?: string, restartCount: number }>()
  private readonly startedAtMs = Date.now()

  constructor(private readonly cfg: NodeConfig, private readonly etcd: Etcd3, private readonly log: Logger, private readonly events?: EventSink) {
    this.paths = nodePaths(cfg.dataDir)
    this.imageWorker = new ImageWorker({ log })
  }

  get node(): string {
    return this.cfg.nodeName
  }

  get cgroupParent(): string {
    return cgroupParentFor(this.cfg.clusterId, this.cfg.nodeName)
  }

  /**
   * Start the container side. A failure here (no cgroups mounted, say) does not take the CVM
   * down: the node keeps serving storage, reports why containers are unavailable in its status,
   * and refuses container operations with that reason.
   */
  async start(): Promise<void> {
    try {
      await fsp.mkdir(this.paths.csms, { recursive: true, mode: 0o700 })
      await fsp.mkdir(this.paths.imageContent, { recursive: true, mode: 0o700 })
      await fsp.mkdir(this.paths.imageLayers, { recursive: true, mode: 0o700 })
      this.store = await new ContentStore(this.paths.imageContent).init()
      this.layers = await new LayerStore(this.paths.imageLayers).init()
      this.host = await CgroupHost.detect({ parent: this.cgroupParent })
    } catch (e) {
      this.unavailable = isTessError(e) ? `${e.message} (${e.hint})` : errorMessage(e)
      this.log.error(`containers are unavailable on this node (storage is not affected): ${this.unavailable}`)
      return
    }
    const tick = () => {
      this.reconcile().catch((e) => this.log.warn(`csm reconcile: ${errorMessage(e)}`)).finally(() => {
        this.timer = setTimeout(tick, 5000)
      })
    }
    tick()
  }

  async stop(): Promise<void> {
    if (this.timer) clearTimeout(this.timer)
    await this.imageWorker.stop()
  }

  /** whether this node runs containers, and why not */
  containersState(): ContainersState {
    return this.unavailable === undefined ? { available: true } : { available: false, reason: this.unavailable }
  }

  /** Images need only the image store: refused only when that is what failed to start. */
  requireImageStore(): void {
    if (this.store === undefined || this.layers === undefined) this.requireContainers()
  }

  /** Refuse a container operation on a node whose container side did not start, naming why. */
  requireContainers(): void {
    if (this.unavailable === undefined) return
    throw new TessError('TESS_E_PRECONDITION', `containers are unavailable on node ${this.node}: ${this.unavailable}`,
      'the node still serves storage; fix the cause and restart its daemons, or run containers on another node (`tess cluster status` shows each node)')
  }

  capacity(): Promise<HostCapacity> {
    return this.host.hostCapacity()
  }

  /** Check a CSM name makes a socket path this node can listen on. */
  checkSocketPath(name: string): void {
    const p = this.paths.csmSocket(name)
    if (Buffer.byteLength(p) > socketPathMaxBytes) {
      throw new TessError('TESS_E_INVALID', `CSM name "${name}" is too long for node ${this.node}: its socket ${p} would be ${Buffer.byteLength(p)} bytes, at most ${socketPathMaxBytes}`, 'choose a shorter name')
    }
  }

  /** The API of one of this node's CSM daemons, on its unix socket. */
  csm(name: string): CsmClient {
    return CsmClient.over(this.paths.csmSocket(name), `CSM "${name}" on node ${this.node}`)
  }

  private localNames(): string[] {
    try {
      return fs.readdirSync(this.paths.csms).filter((n) => fs.statSync(this.paths.csmDir(n)).isDirectory()).sort()
    } catch {
      return []
    }
  }

  private pidOf(name: string): number | null {
    try {
      const pid = Number(fs.readFileSync(this.paths.pidFile(`csm-${name}`), 'utf8').trim())
      return Number.isSafeInteger(pid) && pid > 0 ? pid : null
    } catch {
      return null
    }
  }

  private specFor(rec: CsmRecord): CsmSpec {
    return { version: 1, name: rec.name, id: rec.id, cpus: rec.cpus, memoryBytes: rec.memoryBytes, runtime: rec.runtime, cgroupParent: this.cgroupParent }
  }

  private async writeSpec(rec: CsmRecord): Promise<boolean> {
    const want = JSON.stringify(this.specFor(rec), null, 2) + '\n'
    let have: string | undefined
    try {
      have = await fsp.readFile(this.paths.csmSpec(rec.name), 'utf8')
    } catch { /* new */ }
    if (have === want) return false
    await fsp.mkdir(this.paths.csmDir(rec.name), { recursive: true, mode: 0o700 })
    writeFileAtomic(this.paths.csmSpec(rec.name), want, 0o600)
    return true
  }

  /**
   * Make the node match etcd: a CSM record of this node gets its directory and spec (the
   * supervisor starts its daemon); a directory without a record, or with one being deleted, is
   * removed with everything in it. Runs every few seconds and after each change.
   */
  reconcile(): Promise<void> {
    const run = (this.reconciling ?? Promise.resolve()).then(async () => {
      const recs = await listCsmRecords(this.etcd, this.node)
      const byName = new Map(recs.map((r) => [r.name, r]))
      for (const r of recs) {
        if (r.deleting === true) continue
        await this.writeSpec(r)
        await this.confirmPlacement(r.name)
      }
      for (const name of this.localNames()) {
        const r = byName.get(name)
        if (r === undefined || r.deleting === true) {
          try {
            await this.removeLocal(name, true)
            if (r !== undefined) await etcdCall('delete the CSM record', () => this.etcd.delete().key(keys.csm(name)))
          } catch (e) {
            this.log.warn(`cannot clean CSM ${name} (not in etcd): ${errorMessage(e)}`)
          }
        }
      }
      const local = await this.status()
      this.reportContainers(local)
      await this.removeOrphans(local)
    })
    this.reconciling = run.catch(() => undefined) // run logs its own failures; the next reconcile starts clean
    return run
  }

  /**
   * Tell a CSM daemon of this node that its record in etcd still places it here, so that it may
   * restart its containers (it holds restarts from its start until then: csm/main.ts). A daemon
   * not up yet is told at the next reconcile.
   */
  private async confirmPlacement(name: string): Promise<void> {
    if (!fs.existsSync(this.paths.csmSocket(name))) return
    try {
      const r = await this.csm(name).confirmPlacement()
      if (r.wasHeld) this.log.info(`CSM ${name}: placed on this node (etcd): its held restarts go on`)
    } catch (e) {
      this.log.warn(`CSM ${name}: its placement could not be confirmed to it (retried at the next reconcile): ${errorMessage(e)}`)
    }
  }

  /**
   * A container whose record is gone (removed with --force while this node was down, or its CSM
   * moved on) is removed here. A run writes the record before the container exists, so a
   * container without one is never a run in progress; the age check is a second guard.
   */
  private async removeOrphans(local: LocalCsm[]): Promise<void> {
    const records = await etcdCall('list containers', () => listJson<ContainerRecord>(this.etcd, keys.containersPrefix))
    const known = new Set(records.map((r) => `${r.csm}/${r.name}`))
    for (const s of local) {
      if (!s.up) continue
      for (const c of s.containers) {
        if (known.has(`${s.name}/${c.name}`) || Date.now() - Date.parse(c.createdAt) < orphanAgeMinMs) continue
        this.log.warn(`container ${c.name} (${c.id}) of CSM ${s.name} has no record in etcd: removing it`)
        await this.csm(s.name).remove(c.id, true).catch((e: unknown) => this.log.warn(`remove ${c.name}: ${errorMessage(e)}`))
      }
    }
  }

  /**
   * Events for what the containers of this node did since the last reconcile: exits (OOM kills
   * apart) and restarts by their policy. What ended before this CVM started is not reported again.
   */
  private reportContainers(local: LocalCsm[]): void {
    const ids = new Set<string>()
    for (const s of local) {
      for (const c of s.containers) {
        ids.add(c.id)
        const before = this.lastSeen.get(c.id)
        const restarts = c.restartCount ?? 0
        this.lastSeen.set(c.id, { ...(c.finishedAt !== undefined ? { finishedAt: c.finishedAt } : {}), restartCount: restarts })
        const fresh = before === undefined && Date.parse(c.createdAt) >= this.startedAtMs
        if (before === undefined && !fresh) continue
        const subject = `${s.name}/${c.name}`
        if (c.finishedAt !== undefined && c.finishedAt !== before?.finishedAt) {
          const code = c.exitCode !== undefined ? `code ${c.exitCode}` : `an unknown status${c.exitNote !== undefined ? ` (${c.exitNote})` : ''}`
          if (c.oomKilled === true) this.events?.record({ kind: 'container-oom', severity: 'error', subject, message: `container ${c.name} of CSM ${s.name} on ${this.node}: a process was killed by the OOM killer; it exited with ${code} (memory limit ${c.spec.memoryBytes ?? 'none'} bytes)` })
          else this.events?.record({ kind: 'container-exited', severity: c.stoppedByUser === true || c.exitCode === 0 ? 'info' : 'warning', subject, message: `container ${c.name} of CSM ${s.name} on ${this.node} exited with ${code}${c.stoppedByUser === true ? ' (stopped by a user)' : ''}` })
        }
        if (before !== undefined && restarts > before.restartCount) {
          this.events?.record({ kind: 'container-restarted', severity: 'warning', subject, message: `container ${c.name} of CSM ${s.name} on ${this.node} started again by its restart policy (restart ${restarts})` })
        }
      }
    }
    for (const id of [...this.lastSeen.keys()]) if (!ids.has(id)) this.lastSeen.delete(id)
  }

  /** Make sure a CSM of this node runs and answers; its pid. */
  async ensure(name: string): Promise<{ pid: number | null }> {
    const rec = await etcdCall('read the CSM', () => getJson<CsmRecord>(this.etcd, keys.csm(name)))
    if (rec === undefined || rec.node !== this.node) throw new TessError('TESS_E_NOT_FOUND', `CSM "${name}" is not on node ${this.node}`, 'see `tess csm list`')
    this.checkSocketPath(name)
    await this.writeSpec(rec)
    await this.waitUp(name, csmStartTimeoutMs)
    return { pid: this.pidOf(name) }
  }

  private async waitUp(name: string, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs
    let last: unknown
    for (;;) {
      try {
        await this.csm(name).health(2000)
        return
      } catch (e) {
        last = e
      }
      if (Date.now() > deadline) {
        const logFile = this.paths.logFile(`csm-${name}`)
        let tail = ''
        try {
          tail = (await fsp.readFile(logFile, 'utf8')).trim().split('\n').slice(-3).join(' | ')
        } catch { /* no log yet */ }
        throw new TessError('TESS_E_TIMEOUT', `CSM "${name}" on node ${this.node} did not start within ${timeoutMs} ms: ${errorMessage(last)}${tail ? `; its log ends: ${tail}` : ''}`, `see ${logFile}`)
      }
      await new Promise((r) => setTimeout(r, 200))
    }
  }

  /** The CSM's containers (waiting for its daemon, which the supervisor restarts, when it is down). */
  async containers(name: string): Promise<ContainerInfo[]> {
    if (!fs.existsSync(this.paths.csmSpec(name))) return []
    await this.waitUp(name, csmStartTimeoutMs)
    return this.csm(name).list()
  }

  /**
   * Remove a CSM from this node: its containers (only with force), its daemon (the supervisor
   * stops it when csm.json goes), its cgroup and its directory.
   */
  async removeLocal(name: string, force: boolean): Promise<string[]> {
    const removed: string[] = []
    if (fs.existsSync(this.paths.csmSpec(name))) {
      const cs = await this.containers(name)
      if (cs.length > 0 && !force) {
        throw new TessError('TESS_E_CONFLICT', `cannot delete CSM "${name}": it hosts ${cs.length} container(s): ${cs.map((c) => c.name).join(', ')}`, 'remove them first, or delete with --force (their containers are killed and removed)')
      }
      for (const c of cs) {
        await this.csm(name).remove(c.id, true)
        removed.push(c.name)
      }
      fs.rmSync(this.paths.csmSpec(name), { force: true })
    }
    // the supervisor notices within a second and stops the daemon
    const deadline = Date.now() + csmStopTimeoutMs
    for (let pid = this.pidOf(name); pid !== null && await isProcessAlive(pid); pid = this.pidOf(name)) {
      if (Date.now() > deadline) throw new TessError('TESS_E_TIMEOUT', `the daemon of CSM "${name}" did not stop within ${csmStopTimeoutMs} ms`, 'see the supervisor log; retry the delete')
      await new Promise((r) => setTimeout(r, 200))
    }
    await this.host.csm(name).remove().catch((e: unknown) => {
      if (!(isTessError(e) && e.code === 'TESS_E_NOT_FOUND')) throw e
    })
    await fsp.rm(this.paths.csmDir(name), { recursive: true, force: true })
    this.log.info(`CSM ${name} removed from node ${this.node}${removed.length > 0 ? ` with its containers ${removed.join(', ')}` : ''}`)
    return removed
  }

  async setLimits(name: string, cpus: number, memoryBytes: number): Promise<void> {
    await this.csm(name).setLimits({ cpus, memoryBytes })
    const rec = await etcdCall('read the CSM', () => getJson<CsmRecord>(this.etcd, keys.csm(name)))
    if (rec !== undefined) await this.writeSpec({ ...rec, cpus, memoryBytes })
  }

  /** Every CSM directory of this node, with its daemon's state and containers. */
  async status(): Promise<LocalCsm[]> {
    return Promise.all(this.localNames().filter((n) => fs.existsSync(this.paths.csmSpec(n))).map(async (name) => {
      try {
        const containers = await this.csm(name).list()
        return { name, pid: this.pidOf(name), up: true, containers }
      } catch {
        return { name, pid: this.pidOf(name), up: false, containers: [] }
      }
    }))
  }

  // ---- images

  private async registries(): Promise<Record<string, RegistryConfig>> {
    const recs = await etcdCall('list registries', () => listJson<RegistryRecord>(this.etcd, keys.registriesPrefix))
    const out: Record<string, RegistryConfig> = {}
    for (const r of recs) {
      const cfg: RegistryConfig = { insecure: r.insecure, scheme: r.url.startsWith('http://') ? 'http' : 'https' }
      if (r.username !== null && r.hasPassword) {
        const stored = await etcdCall('read registry credentials', () => this.etcd.get(keys.registrySecret(r.name)).string())
        if (stored !== null) cfg.credentials = { username: r.username, password: openSecret(readSecretsKey(this.paths.secretsKey), stored, keys.registrySecret(r.name)) }
      }
      out[r.host] = cfg
    }
    return out
  }

  /** Pull an image into this node's store, under the cluster's registry rules. */
  async pull(ref: string): Promise<PullAnswer> {
    const t0 = Date.now()
    const policy = await etcdCall('read the registry policy', () => getJson<RegistryPolicyRecord>(this.etcd, keys.registryPolicy)) ?? { allow: [], deny: [] }
    const r = await this.imageWorker.pull({
      ref,
      contentRoot: this.store.root,
      layersRoot: this.layers.root,
      registries: await this.registries(),
      defaultRegistry: 'docker.io',
      policy: (img) => refusingRule(policy, img),
    })
    // images.json has one writer, this process: the image is recorded once the worker stored every blob and layer
    await this.store.putImage(r.record)
    this.log.info(`pulled ${r.ref} (${r.digest}): ${r.downloadedBytes} bytes downloaded`)
    return { ref: r.ref, digest: r.digest, sizeBytes: r.sizeBytes, layers: r.layers.length, platform: r.platform, downloadedBytes: r.downloadedBytes, seconds: (Date.now() - t0) / 1000 }
  }

  /** The pulls running or waiting on this node, how far each is. */
  pulls(): PullProgressView[] {
    return this.imageWorker.progress()
  }

  /**
   * The image a reference names on this node, pulled now if it is missing. A cached image is
   * checked against today's registry rules too: a deny rule added after the pull stops new
   * containers from it (the pull checks a missing image itself).
   */
  async ensureImage(ref: string): Promise<string> {
    const canon = canonicalRef(ref)
    const cached = await this.store.getImage(canon)
    if (cached === undefined) return (await this.pull(ref)).ref
    const policy = await etcdCall('read the registry policy', () => getJson<RegistryPolicyRecord>(this.etcd, keys.registryPolicy)) ?? { allow: [], deny: [] }
    const r = parseReference(canon)
    const rule = refusingRule(policy, {
      ref: canon, registry: r.registry, repository: r.repository, digest: cached.digest,
      ...(r.tag !== undefined ? { tag: r.tag } : {}), ...(cached.indexDigest !== undefined ? { indexDigest: cached.indexDigest } : {}),
    })
    if (rule !== undefined) {
      throw new TessError('TESS_E_FORBIDDEN', `cannot run a container from image ${canon} (${cached.digest}): refused by registry policy rule "${rule}" (the image was pulled before the rule)`,
        'ask an operator to change the allow/deny list, or use an allowed image; `tess image remove` drops the cached copy')
    }
    return canon
  }

  private async allContainers(): Promise<ContainerInfo[]> {
    return (await this.status()).flatMap((s) => s.containers)
  }

  async images(): Promise<ImageInfo[]> {
    const cs = await this.allContainers()
    return (await this.store.listImages()).map((i) => ({
      node: this.node,
      ref: i.ref,
      digest: i.digest,
      sizeBytes: i.sizeBytes,
      layers: i.layers.length,
      platform: i.platform,
      pulledAt: i.pulledAt,
      usedBy: cs.filter((c) => c.image === i.ref).map((c) => c.name),
    }))
  }

  /**
   * Remove an image from this node (refused while a container uses it), then the blobs and
   * unpacked layers no other image uses. Answers false when the node did not have it.
   */
  async removeImage(ref: string): Promise<boolean> {
    const canon = canonicalRef(ref)
    const img = await this.store.getImage(canon)
    if (img === undefined) return false
    const users = (await this.allContainers()).filter((c) => c.image === canon)
    if (users.length > 0) {
      throw new TessError('TESS_E_CONFLICT', `cannot remove image ${canon} from node ${this.node}: container(s) ${users.map((c) => c.name).join(', ')} use it`, 'remove those containers first')
    }
    await this.store.removeImage(canon)
    const rest = await this.store.listImages()
    const keepBlobs = new Set(rest.flatMap((i) => [i.digest, i.configDigest, ...(i.indexDigest !== undefined ? [i.indexDigest] : []), ...i.layers.map((l) => l.digest)]))
    const keepLayers = new Set(rest.flatMap((i) => i.layers.map((l) => l.diffId)))
    for (const d of [img.digest, img.configDigest, ...(img.indexDigest !== undefined ? [img.indexDigest] : []), ...img.layers.map((l) => l.digest)]) {
      if (!keepBlobs.has(d)) await this.store.delete(d)
    }
    for (const l of img.layers) if (!keepLayers.has(l.diffId)) await this.layers.remove(l.diffId)
    return true
  }

  // ---- containers

  async stats(csm?: string): Promise<NamedCsmStats[]> {
    const names = csm !== undefined ? [csm] : this.localNames().filter((n) => fs.existsSync(this.paths.csmSpec(n)))
    const out: NamedCsmStats[] = []
    await Promise.all(names.map(async (name) => {
      try {
        out.push({ name, ...await this.csm(name).stats() })
      } catch (e) {
        if (csm !== undefined) throw e
        this.log.warn(`stats of CSM ${name}: ${errorMessage(e)}`)
      }
    }))
    return out.sort((a, b) => a.name.localeCompare(b.name))
  }
}
