import type { Etcd3 } from 'etcd3'
import { openSecret, sealSecret } from '../../lib/secretbox.js'
import { TessError, assert, errorMessage, isTessError } from '../../lib/errors.js'
import { IdAllocator, etcdCall, getJson, keys, listJson } from '../../lib/etcd.js'
import type { Logger } from '../../lib/log.js'
import { checkName } from '../../lib/names.js'
import type { NodeRecord, NodeStatusRecord } from '../../lib/types.js'
import type {
  ContainerRemoveResult, ContainerView, CsmDeleteResult, CsmInfo, CsmPoolInfo, ImageInfo, ImagePullResult, ImageRemoveResult,
  LogChunk, RegistryInfo, RegistryPolicyInfo, RuntimeName, StatsResult, VolumeInfo, ContainerMoveResult, CsmStatsAnswer, HostCapacity,
} from '../../lib/csm-types.js'
import type { ContainerInfo, RunRequest, VolumeSpec } from '../../lib/container-spec.js'
import { parseRegistryHost } from '../../lib/images/reference.js'
import { csmCallTimeoutMs } from '../../lib/limits.js'
import { gib, mib, round2 } from '../../lib/units.js'
import type { LocalCsm, NodeCall, PullAnswer } from '../../lib/rpc/node-ops.js'
import { canonicalRef } from './agent.js'
import { checkPattern, policyRulesMax } from './policy.js'
import type { ContainerRecord, CsmPoolRecord, CsmRecord, RegistryPolicyRecord, RegistryRecord, VolumeMount, VolumeRecord } from './records.js'
import type { VdiskInfo } from '../../lib/types.js'

/** What the container control needs of the vDisk service (volumes are vDisks). */
export interface VdiskOps {
  create(name: string, sizeBytes: number, rf: number, encrypted?: boolean): Promise<VdiskInfo>
  list(): Promise<VdiskInfo[]>
  delete(name: string): Promise<VdiskInfo>
}

/** a volume's vDisk is `vol-<name>`: the name leaves room for the prefix */
export const volumeNameLengthMax = 59
export const volumeSizeMinBytes = 16 * 1024 * 1024
export const vdiskOfVolume = (name: string): string => `vol-${name}`

export const imagePullTimeoutMs = 30 * 60_000
const poolSizeMax = 1000
/** a node that does not tell its CSMs' state within this is shown down */
const nodeStatusTimeoutMs = 10_000
const registryPasswordLengthMax = 4096

/**
 * The cluster-wide half of containers, served by every CVM: CSM, pool, registry and container
 * records in etcd, the scheduler, and routing of each operation to the node that holds the CSM.
 */
export class ContainerControl {
  private readonly csmIds: IdAllocator

  /** `secretsKey` seals registry passwords before they go to etcd (lib/secretbox.ts) */
  constructor(private readonly etcd: Etcd3, private readonly self: string, private readonly call: NodeCall, private readonly log: Logger, private readonly vdisks: VdiskOps,
    private readonly secretsKey: Buffer | undefined) {
    this.csmIds = new IdAllocator(etcd, 'csm')
  }

  // ---------------------------------------------------------------- nodes

  private async upNodes(): Promise<string[]> {
    const [nodes, statuses] = await Promise.all([
      etcdCall('list nodes', () => listJson<NodeRecord>(this.etcd, keys.nodesPrefix)),
      etcdCall('read node status', () => listJson<NodeStatusRecord>(this.etcd, keys.nodeStatusPrefix)),
    ])
    const up = new Set(statuses.map((s) => s.name))
    up.add(this.self)
    return nodes.filter((n) => up.has(n.name)).map((n) => n.name).sort()
  }

  private async nodeRecord(name: string): Promise<NodeRecord> {
    const n = await etcdCall('read the node', () => getJson<NodeRecord>(this.etcd, keys.node(name)))
    if (n === undefined) throw new TessError('TESS_E_NOT_FOUND', `host "${name}" is not a node of this cluster`, 'see `tess host list`')
    return n
  }

  // ---------------------------------------------------------------- CSMs

  private async csmRecord(name: string): Promise<CsmRecord> {
    const r = await etcdCall('read the CSM', () => getJson<CsmRecord>(this.etcd, keys.csm(name)))
    if (r === undefined || r.deleting === true) throw new TessError('TESS_E_NOT_FOUND', `no CSM named "${name}"`, 'see `tess csm list`')
    return r
  }

  private csmRecords(): Promise<CsmRecord[]> {
    return etcdCall('list CSMs', () => listJson<CsmRecord>(this.etcd, keys.csmsPrefix))
  }

  private containerRecords(): Promise<ContainerRecord[]> {
    return etcdCall('list containers', () => listJson<ContainerRecord>(this.etcd, keys.containersPrefix))
  }

  /** What a node has, and what its CSMs (other than `except`) were given. */
  private async nodeRoom(node: string, csms: CsmRecord[], except?: string): Promise<{ cap: HostCapacity, usedCpus: number, usedMemoryBytes: number, names: string[] }> {
    const cap = await this.call(node, 'node.capacity', {})
    const mine = csms.filter((c) => c.node === node && c.name !== except && c.deleting !== true)
    return { cap, usedCpus: mine.reduce((a, c) => a + c.cpus, 0), usedMemoryBytes: mine.reduce((a, c) => a + c.memoryBytes, 0), names: mine.map((c) => c.name) }
  }

  private static roomError(name: string, node: string, cpus: number, memoryBytes: number, room: { cap: HostCapacity, usedCpus: number, usedMemoryBytes: number, names: string[] }): TessError | undefined {
    const freeCpus = room.cap.cpus - room.usedCpus
    const freeMem = room.cap.memoryBytes - room.usedMemoryBytes
    const given = room.names.length > 0 ? ` given to CSM(s) ${room.names.join(', ')}` : ''
    if (cpus > freeCpus + 1e-9) {
      return new TessError('TESS_E_CAPACITY', `cannot place CSM "${name}" on node ${node}: it asks ${cpus} cpus, the node has ${round2(room.cap.cpus)} of which ${round2(room.usedCpus)} are${given || ' given to other CSMs'} (${round2(Math.max(0, freeCpus))} free)`,
        `ask for at most ${round2(Math.max(0, freeCpus))} cpus, or use another node`)
    }
    if (memoryBytes > freeMem) {
      return new TessError('TESS_E_CAPACITY', `cannot place CSM "${name}" on node ${node}: it asks ${gib(memoryBytes)} of memory, the node has ${gib(room.cap.memoryBytes)} of which ${gib(room.usedMemoryBytes)} are${given || ' given to other CSMs'} (${gib(Math.max(0, freeMem))} free)`,
        `ask for at most ${gib(Math.max(0, freeMem))}, or use another node`)
    }
    return undefined
  }

  /** `req` is checked (lib/container-spec.ts: parseCsmCreateRequest) */
  async createCsm(req: { name: string, cpus: number, memoryBytes: number, node?: string, runtime?: RuntimeName }): Promise<CsmInfo> {
    const name = req.name
    const runtime = req.runtime ?? 'runc'
    if (await etcdCall('read the CSM', () => getJson<CsmRecord>(this.etcd, keys.csm(name))) !== undefined) {
      throw new TessError('TESS_E_EXISTS', `cannot create CSM "${name}": a CSM of that name exists`, 'choose another name, or delete it first')
    }
    const csms = await this.csmRecords()
    const up = await this.upNodes()
    let node: string
    if (req.node !== undefined) {
      const rec = await this.nodeRecord(req.node)
      if (!up.includes(rec.name)) throw new TessError('TESS_E_UNREACHABLE', `cannot create CSM "${name}" on node ${rec.name}: the node is down`, 'see `tess cluster status`, or leave out --host')
      const err = ContainerControl.roomError(name, rec.name, req.cpus, req.memoryBytes, await this.nodeRoom(rec.name, csms))
      if (err) throw err
      node = rec.name
    } else {
      // the scheduler: the up node, not draining, with the most free capacity that holds the CSM
      const nodes = await etcdCall('list nodes', () => listJson<NodeRecord>(this.etcd, keys.nodesPrefix))
      const candidates = nodes.filter((n) => up.includes(n.name) && n.draining !== true)
      const rooms = await Promise.all(candidates.map(async (n) => {
        try {
          return { node: n.name, room: await this.nodeRoom(n.name, csms) }
        } catch (e) {
          return { node: n.name, room: undefined, why: errorMessage(e) }
        }
      }))
      const fits = rooms.filter((r) => r.room !== undefined && ContainerControl.roomError(name, r.node, req.cpus, req.memoryBytes, r.room) === undefined)
      if (fits.length === 0) {
        const best = rooms.filter((r) => r.room !== undefined).map((r) => `${r.node}: ${round2(r.room!.cap.cpus - r.room!.usedCpus)} cpus and ${gib(r.room!.cap.memoryBytes - r.room!.usedMemoryBytes)} free`)
        const cannot = rooms.filter((r) => r.room === undefined).map((r) => r.why ?? `${r.node} did not answer`)
        if (best.length === 0 && cannot.length > 0) {
          // no node can run containers at all: that, not capacity, is the problem
          throw new TessError('TESS_E_PRECONDITION', `cannot create CSM "${name}": no node can run containers (${cannot.join('; ')})`,
            'fix the cause on a node and restart its daemons, or add a host that can run containers (`tess cluster status` shows each node)')
        }
        throw new TessError('TESS_E_CAPACITY', `cannot create CSM "${name}" (${req.cpus} cpus, ${gib(req.memoryBytes)}): no node has room (${[...best, ...cannot].join('; ') || 'no node is up'})`, 'ask for less, delete a CSM, or add a host')
      }
      const score = (r: { cap: HostCapacity, usedCpus: number, usedMemoryBytes: number }) => (r.cap.cpus - r.usedCpus) / r.cap.cpus + (r.cap.memoryBytes - r.usedMemoryBytes) / r.cap.memoryBytes
      fits.sort((a, b) => score(b.room!) - score(a.room!) || a.node.localeCompare(b.node))
      node = fits[0]!.node
    }
    const rec: CsmRecord = { name, id: await this.csmIds.allocate(), node, cpus: req.cpus, memoryBytes: req.memoryBytes, runtime, createdAt: new Date().toISOString() }
    const res = await etcdCall('create the CSM record', () => this.etcd.if(keys.csm(name), 'Create', '==', 0).then(this.etcd.put(keys.csm(name)).value(JSON.stringify(rec))).commit())
    if (!res.succeeded) throw new TessError('TESS_E_EXISTS', `cannot create CSM "${name}": a CSM of that name was just created`, 'choose another name')
    try {
      await this.call(node, 'csm.ensure', { name })
    } catch (e) {
      // undo: the node removes what it made, then the record goes
      this.log.warn(`CSM ${name} on ${node} did not start (${errorMessage(e)}); removing it`)
      await this.etcd.put(keys.csm(name)).value(JSON.stringify({ ...rec, deleting: true })).catch((e2: unknown) => this.log.warn(`CSM ${name}: cannot mark it deleting: ${errorMessage(e2)}`))
      await this.call(node, 'csm.remove', { name, force: true }).catch((e2: unknown) => this.log.warn(`CSM ${name}: node ${node} could not remove it: ${errorMessage(e2)}`))
      await this.etcd.delete().key(keys.csm(name)).catch((e2: unknown) => this.log.warn(`CSM ${name}: its record stays (marked deleting): ${errorMessage(e2)}`))
      throw e
    }
    this.log.info(`CSM ${name} created on node ${node} (${req.cpus} cpus, ${req.memoryBytes} bytes, ${runtime})`)
    return this.showCsm(name)
  }

  private async nodeStatus(nodes: string[]): Promise<Map<string, LocalCsm[] | undefined>> {
    const up = new Set(await this.upNodes())
    const out = new Map<string, LocalCsm[] | undefined>()
    await Promise.all([...new Set(nodes)].map(async (n) => {
      if (!up.has(n)) {
        out.set(n, undefined)
        return
      }
      out.set(n, await this.call(n, 'csm.status', {}, nodeStatusTimeoutMs).catch((e: unknown) => {
        this.log.warn(`status of the CSMs of ${n}: ${errorMessage(e)}`)
        return undefined
      }))
    }))
    return out
  }

  private csmInfo(r: CsmRecord, local: LocalCsm[] | undefined, containers: ContainerRecord[]): CsmInfo {
    const l = local?.find((x) => x.name === r.name)
    const mine = containers.filter((c) => c.csm === r.name)
    return {
      name: r.name,
      id: r.id,
      node: r.node,
      cpus: r.cpus,
      memoryBytes: r.memoryBytes,
      runtime: r.runtime,
      state: local === undefined ? 'down' : l?.up === true ? 'running' : 'starting',
      pid: l?.pid ?? null,
      containers: mine.length,
      reservedCpus: round2(mine.reduce((a, c) => a + (c.cpus ?? 0), 0)),
      reservedMemoryBytes: mine.reduce((a, c) => a + (c.memoryBytes ?? 0), 0),
      createdAt: r.createdAt,
    }
  }

  async listCsms(): Promise<CsmInfo[]> {
    const [recs, cs] = await Promise.all([this.csmRecords(), this.containerRecords()])
    const live = recs.filter((r) => r.deleting !== true)
    const st = await this.nodeStatus(live.map((r) => r.node))
    return live.map((r) => this.csmInfo(r, st.get(r.node), cs))
  }

  async showCsm(name: string): Promise<CsmInfo> {
    const r = await this.csmRecord(name)
    const st = await this.nodeStatus([r.node])
    return this.csmInfo(r, st.get(r.node), await this.containerRecords())
  }

  async updateCsm(name: string, req: { cpus?: number, memoryBytes?: number }): Promise<CsmInfo> {
    const r = await this.csmRecord(name)
    const cpus = req.cpus ?? r.cpus
    const memoryBytes = req.memoryBytes ?? r.memoryBytes
    const err = ContainerControl.roomError(name, r.node, cpus, memoryBytes, await this.nodeRoom(r.node, await this.csmRecords(), name))
    if (err) throw err
    await this.call(r.node, 'csm.limits', { name, cpus, memoryBytes })
    await etcdCall('update the CSM record', () => this.etcd.put(keys.csm(name)).value(JSON.stringify({ ...r, cpus, memoryBytes })))
    return this.showCsm(name)
  }

  async deleteCsm(name: string, force: boolean): Promise<CsmDeleteResult> {
    const r = await this.csmRecord(name)
    const mine = (await this.containerRecords()).filter((c) => c.csm === name)
    if (mine.length > 0 && !force) {
      throw new TessError('TESS_E_CONFLICT', `cannot delete CSM "${name}": it hosts ${mine.length} container(s): ${mine.map((c) => c.name).join(', ')}`, 'remove them first, or delete with --force (its containers are killed and removed)')
    }
    const up = await this.upNodes()
    await etcdCall('mark the CSM deleting', () => this.etcd.put(keys.csm(name)).value(JSON.stringify({ ...r, deleting: true })))
    let removed: string[] = mine.map((c) => c.name)
    if (up.includes(r.node)) {
      try {
        removed = (await this.call(r.node, 'csm.remove', { name, force }, csmCallTimeoutMs)).removed
      } catch (e) {
        // not deleted after all: the CSM stays as it was
        await this.etcd.put(keys.csm(name)).value(JSON.stringify(r)).catch(() => undefined)
        throw e
      }
    } else {
      this.log.warn(`CSM ${name}: node ${r.node} is down; it removes the CSM when it is back`)
    }
    for (const c of mine) {
      await this.releaseVolumes(c.name)
      await etcdCall('delete the container record', () => this.etcd.delete().key(keys.container(c.name)))
    }
    for (const p of await etcdCall('list CSM pools', () => listJson<CsmPoolRecord>(this.etcd, keys.csmPoolsPrefix))) {
      if (p.csms.includes(name)) {
        await etcdCall('update the CSM pool', () => this.etcd.put(keys.csmPool(p.name)).value(JSON.stringify({ ...p, csms: p.csms.filter((x) => x !== name) })))
      }
    }
    // with the node down, the record stays marked "deleting" for the node to finish
    if (up.includes(r.node)) await etcdCall('delete the CSM record', () => this.etcd.delete().key(keys.csm(name)))
    return { name, node: r.node, containersRemoved: removed }
  }

  // ---------------------------------------------------------------- pools

  private async poolRecord(name: string): Promise<CsmPoolRecord> {
    const p = await etcdCall('read the CSM pool', () => getJson<CsmPoolRecord>(this.etcd, keys.csmPool(name)))
    if (p === undefined) throw new TessError('TESS_E_NOT_FOUND', `no CSM pool named "${name}"`, 'see `tess csm-pool list`')
    return p
  }

  private async checkMembers(csms: string[], what: string): Promise<string[]> {
    if (csms.length === 0) throw new TessError('TESS_E_INVALID', `${what}: no CSM given`, 'name at least one with --csm')
    if (csms.length > poolSizeMax) throw new TessError('TESS_E_INVALID', `${what}: ${csms.length} CSMs, at most ${poolSizeMax}`, 'use several pools')
    for (const c of csms) checkName('CSM', c)
    const known = new Set((await this.csmRecords()).filter((r) => r.deleting !== true).map((r) => r.name))
    const unknown = csms.filter((c) => !known.has(c))
    if (unknown.length > 0) throw new TessError('TESS_E_NOT_FOUND', `${what}: no CSM named ${unknown.map((u) => `"${u}"`).join(', ')}`, 'see `tess csm list`')
    return [...new Set(csms)]
  }

  async createPool(name: string, csms: string[]): Promise<CsmPoolInfo> {
    checkName('CSM pool', name)
    const members = await this.checkMembers(csms, `cannot create CSM pool "${name}"`)
    const rec: CsmPoolRecord = { name, csms: members.sort(), createdAt: new Date().toISOString() }
    const res = await etcdCall('create the CSM pool', () => this.etcd.if(keys.csmPool(name), 'Create', '==', 0).then(this.etcd.put(keys.csmPool(name)).value(JSON.stringify(rec))).commit())
    if (!res.succeeded) throw new TessError('TESS_E_EXISTS', `cannot create CSM pool "${name}": a pool of that name exists`, 'choose another name, or change it with `tess csm-pool add/remove`')
    return rec
  }

  listPools(): Promise<CsmPoolInfo[]> {
    return etcdCall('list CSM pools', () => listJson<CsmPoolRecord>(this.etcd, keys.csmPoolsPrefix))
  }

  showPool(name: string): Promise<CsmPoolInfo> {
    checkName('CSM pool', name)
    return this.poolRecord(name)
  }

  async changePool(name: string, add: string[], remove: string[]): Promise<CsmPoolInfo> {
    checkName('CSM pool', name)
    const p = await this.poolRecord(name)
    if (add.length > 0) await this.checkMembers(add, `cannot add to CSM pool "${name}"`)
    const notIn = remove.filter((r) => !p.csms.includes(r))
    if (notIn.length > 0) throw new TessError('TESS_E_NOT_FOUND', `cannot remove ${notIn.join(', ')} from CSM pool "${name}": not members`, `its members: ${p.csms.join(', ')}`)
    const next = [...new Set([...p.csms, ...add])].filter((c) => !remove.includes(c)).sort()
    if (next.length === 0) throw new TessError('TESS_E_CONFLICT', `cannot remove every CSM from pool "${name}"`, `delete the pool instead: tess csm-pool delete ${name}`)
    const rec = { ...p, csms: next }
    await etcdCall('update the CSM pool', () => this.etcd.put(keys.csmPool(name)).value(JSON.stringify(rec)))
    return rec
  }

  async deletePool(name: string): Promise<CsmPoolInfo> {
    checkName('CSM pool', name)
    const p = await this.poolRecord(name)
    await etcdCall('delete the CSM pool', () => this.etcd.delete().key(keys.csmPool(name)))
    return p
  }

  // ---------------------------------------------------------------- registries

  async addRegistry(req: { name: string, url: string, insecure: boolean, username?: string, password?: string }): Promise<RegistryInfo> {
    const name = checkName('registry', req.name)
    let u: URL
    try {
      u = new URL(req.url)
    } catch {
      throw new TessError('TESS_E_INVALID', `invalid registry URL "${req.url.slice(0, 200)}"`, 'e.g. https://registry.example.com or http://127.0.0.1:5000 (with --insecure)')
    }
    if ((u.protocol !== 'http:' && u.protocol !== 'https:') || u.username !== '' || u.password !== '' || (u.pathname !== '/' && u.pathname !== '') || u.search !== '' || u.hash !== '') {
      throw new TessError('TESS_E_INVALID', `invalid registry URL "${req.url.slice(0, 200)}": give only http(s)://host[:port]`, 'credentials go in --username and --password-stdin')
    }
    if (u.protocol === 'http:' && !req.insecure) throw new TessError('TESS_E_INVALID', `registry URL ${u.origin} is plain HTTP`, 'add --insecure to use a registry without TLS')
    const host = parseRegistryHost(u.host, 'registry host')
    if ((req.username === undefined) !== (req.password === undefined)) throw new TessError('TESS_E_INVALID', 'give both a username and a password, or neither', '--username U --password-stdin')
    if (req.username !== undefined && (req.username.length === 0 || req.username.length > 256 || /[\s:]/.test(req.username))) throw new TessError('TESS_E_INVALID', 'invalid registry username', '1-256 characters, no spaces or ":"')
    if (req.password !== undefined && (req.password.length === 0 || req.password.length > registryPasswordLengthMax)) throw new TessError('TESS_E_INVALID', `the registry password must be 1..${registryPasswordLengthMax} characters`, 'give the password on stdin with --password-stdin')
    const same = (await etcdCall('list registries', () => listJson<RegistryRecord>(this.etcd, keys.registriesPrefix))).find((r) => r.host === host)
    if (same !== undefined) throw new TessError('TESS_E_EXISTS', `cannot add registry "${name}": registry "${same.name}" serves ${host} already`, `remove it first: tess registry remove ${same.name}`)
    const rec: RegistryRecord = { name, url: u.origin, host, insecure: req.insecure, username: req.username ?? null, hasPassword: req.password !== undefined, createdAt: new Date().toISOString() }
    const ops = [this.etcd.put(keys.registry(name)).value(JSON.stringify(rec))]
    if (req.password !== undefined) ops.push(this.etcd.put(keys.registrySecret(name)).value(sealSecret(this.secretsKey, req.password, keys.registrySecret(name))))
    const res = await etcdCall('add the registry', () => this.etcd.if(keys.registry(name), 'Create', '==', 0).then(...ops).commit())
    if (!res.succeeded) throw new TessError('TESS_E_EXISTS', `cannot add registry "${name}": a registry of that name exists`, 'remove it first, or choose another name')
    return rec
  }

  listRegistries(): Promise<RegistryInfo[]> {
    return etcdCall('list registries', () => listJson<RegistryRecord>(this.etcd, keys.registriesPrefix))
  }

  async removeRegistry(name: string): Promise<RegistryInfo> {
    checkName('registry', name)
    const r = await etcdCall('read the registry', () => getJson<RegistryRecord>(this.etcd, keys.registry(name)))
    if (r === undefined) throw new TessError('TESS_E_NOT_FOUND', `no registry named "${name}"`, 'see `tess registry list`')
    await etcdCall('remove the registry', () => this.etcd.if(keys.registry(name), 'Create', '>', 0).then(this.etcd.delete().key(keys.registry(name)), this.etcd.delete().key(keys.registrySecret(name))).commit())
    return r
  }

  async policy(): Promise<RegistryPolicyInfo> {
    return await etcdCall('read the registry policy', () => getJson<RegistryPolicyRecord>(this.etcd, keys.registryPolicy)) ?? { allow: [], deny: [] }
  }

  async changePolicy(kind: 'allow' | 'deny', pattern: string, remove: boolean): Promise<RegistryPolicyInfo> {
    if (kind !== 'allow' && kind !== 'deny') throw new TessError('TESS_E_BAD_REQUEST', 'field "kind" must be "allow" or "deny"', 'use tess registry allow or tess registry deny')
    checkPattern(pattern)
    for (let attempt = 0; attempt < 10; attempt++) {
      const cur = await etcdCall('read the registry policy', () => this.etcd.get(keys.registryPolicy).exec())
      const kv = cur.kvs[0]
      const p: RegistryPolicyRecord = kv ? JSON.parse(kv.value.toString()) as RegistryPolicyRecord : { allow: [], deny: [] }
      const list = p[kind]
      if (remove) {
        if (!list.includes(pattern)) throw new TessError('TESS_E_NOT_FOUND', `no ${kind} rule "${pattern}"`, 'see `tess registry policy`')
        p[kind] = list.filter((x) => x !== pattern)
      } else if (!list.includes(pattern)) {
        if (p.allow.length + p.deny.length >= policyRulesMax) throw new TessError('TESS_E_CAPACITY', `the registry policy holds ${policyRulesMax} rules already`, 'remove some first')
        p[kind] = [...list, pattern]
      }
      const txn = kv
        ? this.etcd.if(keys.registryPolicy, 'Mod', '==', kv.mod_revision)
        : this.etcd.if(keys.registryPolicy, 'Create', '==', 0)
      const res = await etcdCall('write the registry policy', () => txn.then(this.etcd.put(keys.registryPolicy).value(JSON.stringify(p))).commit())
      if (res.succeeded) return p
    }
    throw new TessError('TESS_E_CONFLICT', 'the registry policy kept changing under this update', 'retry')
  }

  // ---------------------------------------------------------------- images

  private async imageNodes(req: { csm?: string, node?: string }): Promise<string[]> {
    if (req.csm !== undefined && req.node !== undefined) throw new TessError('TESS_E_INVALID', 'give a CSM or a host, not both', 'leave out one of --csm and --host')
    if (req.csm !== undefined) return [(await this.csmRecord(checkName('CSM', req.csm))).node]
    if (req.node !== undefined) {
      const n = await this.nodeRecord(req.node)
      if (!(await this.upNodes()).includes(n.name)) throw new TessError('TESS_E_UNREACHABLE', `node ${n.name} is down`, 'see `tess cluster status`')
      return [n.name]
    }
    return this.upNodes()
  }

  async pull(req: { ref: string, csm?: string, node?: string }): Promise<ImagePullResult> {
    canonicalRef(req.ref) // a malformed reference is refused before any node is asked
    const nodes = await this.imageNodes(req)
    const results = await Promise.allSettled(nodes.map((n) => this.call(n, 'image.pull', { ref: req.ref }, imagePullTimeoutMs)))
    const failed = results.findIndex((r) => r.status === 'rejected')
    if (failed >= 0) {
      const e = (results[failed] as PromiseRejectedResult).reason as unknown
      if (nodes.length === 1) throw e
      const t = isTessError(e) ? e : new TessError('TESS_E_IO', errorMessage(e), `see cvm.log on node ${nodes[failed]}`)
      throw new TessError(t.code, `on node ${nodes[failed]}: ${t.message}`, t.hint)
    }
    const ok = results.map((r) => (r as PromiseFulfilledResult<PullAnswer>).value)
    const first = ok[0]!
    return {
      ref: first.ref, digest: first.digest, sizeBytes: first.sizeBytes, layers: first.layers, platform: first.platform,
      nodes: ok.map((a, i) => ({ node: nodes[i]!, downloadedBytes: a.downloadedBytes, seconds: a.seconds })),
    }
  }

  async images(): Promise<ImageInfo[]> {
    const nodes = await this.upNodes()
    const all = await Promise.all(nodes.map((n) => this.call(n, 'image.list', {})))
    return all.flat().sort((a, b) => a.ref.localeCompare(b.ref) || a.node.localeCompare(b.node))
  }

  async removeImage(req: { ref: string, node?: string }): Promise<ImageRemoveResult> {
    const ref = canonicalRef(req.ref)
    const nodes = await this.imageNodes(req.node !== undefined ? { node: req.node } : {})
    const done: string[] = []
    for (const n of nodes) {
      if ((await this.call(n, 'image.remove', { ref })).removed) done.push(n)
    }
    if (done.length === 0) throw new TessError('TESS_E_NOT_FOUND', `image ${ref} is not on ${req.node !== undefined ? `node ${req.node}` : 'any node'}`, 'see `tess image list`')
    return { ref, nodes: done }
  }

  // ---------------------------------------------------------------- containers

  private async containerRecord(name: string): Promise<ContainerRecord> {
    checkName('container', name)
    const r = await etcdCall('read the container', () => getJson<ContainerRecord>(this.etcd, keys.container(name)))
    if (r === undefined) throw new TessError('TESS_E_NOT_FOUND', `no container named "${name}"`, 'see `tess container list`')
    return r
  }

  private static view(r: ContainerRecord, c: ContainerInfo | undefined, nodeUp: boolean): ContainerView {
    return {
      id: c?.id ?? r.id ?? '',
      name: r.name,
      csm: r.csm,
      node: r.node,
      image: c?.image ?? r.image,
      imageDigest: c?.imageDigest ?? '',
      runtime: c?.runtime ?? 'runc',
      status: c !== undefined ? c.status : r.state === 'creating' ? 'creating' : nodeUp ? 'removing' : 'unknown',
      createdAt: c?.createdAt ?? r.createdAt,
      startedAt: c?.startedAt ?? null,
      finishedAt: c?.finishedAt ?? null,
      pid: c?.pid ?? null,
      exitCode: c?.exitCode ?? null,
      oomKilled: c?.oomKilled === true,
      exitNote: c?.exitNote ?? (c === undefined && !nodeUp ? `node ${r.node} is down` : null),
      command: c?.spec.command ?? [],
      env: c?.spec.env ?? [],
      cpus: c?.spec.cpus ?? r.cpus,
      memoryBytes: c?.spec.memoryBytes ?? r.memoryBytes,
      network: c?.spec.network ?? r.network,
      userns: c !== undefined ? c.spec.userns !== undefined : r.userns === true,
    }
  }

  /** The scheduler: where a container goes. */
  private async place(req: RunRequest, containers: ContainerRecord[]): Promise<CsmRecord> {
    const what = `container "${req.name}"`
    const fitsTotal = (c: CsmRecord) => (req.cpus === undefined || req.cpus <= c.cpus + 1e-9) && (req.memoryBytes === undefined || req.memoryBytes <= c.memoryBytes)
    if (req.csm !== undefined && req.pool !== undefined) throw new TessError('TESS_E_INVALID', `cannot run ${what}: give --csm or --pool, not both`, 'leave out one of --csm and --pool')
    if (req.csm !== undefined) {
      const c = await this.csmRecord(checkName('CSM', req.csm))
      if (!fitsTotal(c)) {
        throw new TessError('TESS_E_CAPACITY', `cannot run ${what} in CSM "${c.name}": it asks ${req.cpus ?? '-'} cpus and ${req.memoryBytes !== undefined ? mib(req.memoryBytes) : '-'}, the CSM has ${c.cpus} cpus and ${mib(c.memoryBytes)}`,
          `ask for less, or grow the CSM: tess csm update ${c.name} --cpus N --memory SIZE`)
      }
      return c
    }
    let candidates: CsmRecord[]
    const all = (await this.csmRecords()).filter((r) => r.deleting !== true)
    if (req.pool !== undefined) {
      const p = await this.poolRecord(checkName('CSM pool', req.pool))
      candidates = all.filter((c) => p.csms.includes(c.name))
    } else {
      candidates = all
    }
    if (candidates.length === 0) {
      throw new TessError('TESS_E_PRECONDITION', `cannot run ${what}: ${req.pool !== undefined ? `CSM pool "${req.pool}" has no CSM` : 'the cluster has no CSM'}`, 'create one: tess csm create NAME --cpus N --memory SIZE')
    }
    const up = new Set(await this.upNodes())
    const live = candidates.filter((c) => up.has(c.node))
    if (live.length === 0) throw new TessError('TESS_E_UNREACHABLE', `cannot run ${what}: the nodes of every candidate CSM (${candidates.map((c) => c.name).join(', ')}) are down`, 'see `tess cluster status`')
    const fit = live.filter(fitsTotal)
    if (fit.length === 0) {
      throw new TessError('TESS_E_CAPACITY', `cannot run ${what}: no CSM is big enough (it asks ${req.cpus ?? '-'} cpus and ${req.memoryBytes !== undefined ? mib(req.memoryBytes) : '-'}; largest: ${live.map((c) => `${c.name} ${c.cpus} cpus ${mib(c.memoryBytes)}`).join(', ')})`,
        'ask for less, or create a bigger CSM')
    }
    // Free room per CSM: its quota minus what its containers asked for. Prefer CSMs the
    // container fits in without overcommit; among them the one with the most room, then the
    // fewest containers.
    const room = (c: CsmRecord) => {
      const mine = containers.filter((x) => x.csm === c.name)
      const freeCpus = c.cpus - mine.reduce((a, x) => a + (x.cpus ?? 0), 0)
      const freeMem = c.memoryBytes - mine.reduce((a, x) => a + (x.memoryBytes ?? 0), 0)
      const fitsFree = (req.cpus ?? 0) <= freeCpus + 1e-9 && (req.memoryBytes ?? 0) <= freeMem
      return { fitsFree, score: freeCpus / c.cpus + freeMem / c.memoryBytes, count: mine.length }
    }
    const ranked = fit.map((c) => ({ c, r: room(c) })).sort((a, b) =>
      Number(b.r.fitsFree) - Number(a.r.fitsFree) || b.r.score - a.r.score || a.r.count - b.r.count || a.c.name.localeCompare(b.c.name))
    return ranked[0]!.c
  }

  /** A container's environment for its etcd record: sealed under the secrets key (values are often credentials). */
  private sealEnv(name: string, env: string[]): Pick<ContainerRecord, 'env' | 'envSealed'> {
    if (this.secretsKey === undefined) {
      this.log.warn(`container ${name}: its environment is stored in etcd in the clear: this node has no secrets key (pki/secrets.key)`)
      return { env }
    }
    return { envSealed: sealSecret(this.secretsKey, JSON.stringify(env), `${keys.container(name)}#env`) }
  }

  /** The environment of a container record (sealed, or in the clear as an older tess stored it). */
  private openEnv(r: ContainerRecord): string[] | undefined {
    if (r.envSealed === undefined) return r.env
    const env = JSON.parse(openSecret(this.secretsKey, r.envSealed, `${keys.container(r.name)}#env`)) as unknown
    assert(Array.isArray(env) && env.every((e) => typeof e === 'string'), `the sealed environment of container ${r.name} is a list of strings`)
    return env as string[]
  }

  /** `req` is checked (lib/container-spec.ts: parseRunRequest), or a record's (a move) */
  async run(req: RunRequest): Promise<ContainerView> {
    const name = req.name
    const image = canonicalRef(req.image)
    const network = req.network ?? 'none'
    const mounts = (req.volumes ?? []).map((m) => ({ name: m.name, target: m.target, readOnly: m.readOnly }))
    const existing = await etcdCall('read the container', () => getJson<ContainerRecord>(this.etcd, keys.container(name)))
    if (existing !== undefined) throw new TessError('TESS_E_EXISTS', `cannot run container "${name}": a container of that name exists (in CSM ${existing.csm} on node ${existing.node})`, `remove it first: tess container remove ${name}`)
    const csm = await this.place(req, await this.containerRecords())
    const rec: ContainerRecord = {
      name, id: null, csm: csm.name, node: csm.node, image, cpus: req.cpus ?? null, memoryBytes: req.memoryBytes ?? null, network,
      ...(req.command !== undefined && req.command.length > 0 ? { command: req.command } : {}),
      ...(req.env !== undefined ? this.sealEnv(name, req.env) : {}),
      ...(mounts.length > 0 ? { volumes: mounts } : {}),
      ...(req.userns === true ? { userns: true } : {}),
      state: 'creating', apiNode: this.self, createdAt: new Date().toISOString(),
    }
    const res = await etcdCall('reserve the container name', () => this.etcd.if(keys.container(name), 'Create', '==', 0).then(this.etcd.put(keys.container(name)).value(JSON.stringify(rec))).commit())
    if (!res.succeeded) throw new TessError('TESS_E_EXISTS', `cannot run container "${name}": a container of that name was just created`, 'choose another name')
    let c: ContainerInfo
    try {
      const volumes = mounts.length > 0 ? await this.attachVolumes(name, csm, mounts) : []
      c = await this.call(csm.node, 'container.run', {
        csm: csm.name,
        spec: {
          name, image,
          ...(req.command !== undefined && req.command.length > 0 ? { command: req.command } : {}),
          ...(req.env !== undefined ? { env: req.env } : {}),
          ...(req.cpus !== undefined ? { cpus: req.cpus } : {}),
          ...(req.memoryBytes !== undefined ? { memoryBytes: req.memoryBytes } : {}),
          network,
          ...(volumes.length > 0 ? { volumes } : {}),
          ...(req.userns === true ? { userns: true } : {}),
        },
      }, imagePullTimeoutMs)
    } catch (e) {
      await this.releaseVolumes(name).catch((re: unknown) => this.log.warn(`container ${name}: ${errorMessage(re)}`))
      await this.etcd.delete().key(keys.container(name)).catch((de: unknown) => this.log.warn(`container ${name}: its name stays reserved until etcd answers: ${errorMessage(de)}`))
      throw e
    }
    if (mounts.some((m) => !m.readOnly)) await this.markFormatted(mounts.filter((m) => !m.readOnly).map((m) => m.name))
    const done: ContainerRecord = { ...rec, id: c.id, image: c.image, state: 'created' }
    await etcdCall('record the container', () => this.etcd.put(keys.container(name)).value(JSON.stringify(done)))
    this.log.info(`container ${name} (${c.id}) runs in CSM ${csm.name} on node ${csm.node}`)
    return ContainerControl.view(done, c, true)
  }

  async listContainers(): Promise<ContainerView[]> {
    const recs = await this.containerRecords()
    const st = await this.nodeStatus(recs.map((r) => r.node))
    return recs.map((r) => {
      const local = st.get(r.node)
      const c = local?.find((x) => x.name === r.csm)?.containers.find((x) => x.name === r.name)
      return ContainerControl.view(r, c, local !== undefined)
    })
  }

  private async target(name: string): Promise<ContainerRecord & { id: string }> {
    const r = await this.containerRecord(name)
    if (r.id === null) throw new TessError('TESS_E_CONFLICT', `container "${name}" is still being created`, 'wait and retry')
    return r as ContainerRecord & { id: string }
  }

  async showContainer(name: string): Promise<ContainerView> {
    const r = await this.containerRecord(name)
    if (r.id === null) return ContainerControl.view(r, undefined, true)
    const up = (await this.upNodes()).includes(r.node)
    if (!up) return ContainerControl.view(r, undefined, false)
    try {
      const c = await this.call(r.node, 'container.get', { csm: r.csm, id: r.id })
      return ContainerControl.view(r, c, true)
    } catch (e) {
      // the node's lease has not run out yet, but it does not answer: its state is unknown
      if (isTessError(e) && (e.code === 'TESS_E_UNREACHABLE' || e.code === 'TESS_E_TIMEOUT')) return ContainerControl.view(r, undefined, false)
      throw e
    }
  }

  async containerOp(name: string, op: 'start' | 'stop' | 'pause' | 'resume', timeoutMs?: number): Promise<ContainerView> {
    const r = await this.target(name)
    const c = await this.call(r.node, 'container.op', { csm: r.csm, id: r.id, op, ...(timeoutMs !== undefined ? { timeoutMs } : {}) }, (timeoutMs ?? 10_000) + 60_000)
    return ContainerControl.view(r, c, true)
  }

  async removeContainer(name: string, force: boolean): Promise<ContainerRemoveResult> {
    const r = await this.containerRecord(name)
    const up = (await this.upNodes()).includes(r.node)
    if (r.id !== null) {
      if (up) {
        try {
          await this.call(r.node, 'container.remove', { csm: r.csm, id: r.id, force }, csmCallTimeoutMs)
        } catch (e) {
          if (!(isTessError(e) && e.code === 'TESS_E_NOT_FOUND')) throw e
        }
      } else if (!force) {
        throw new TessError('TESS_E_UNREACHABLE', `cannot remove container "${name}": node ${r.node} is down`, 'remove it with --force: its record goes now, and the node removes the container when it is back')
      }
    } else if (!force) {
      throw new TessError('TESS_E_CONFLICT', `container "${name}" is still being created`, 'wait, or remove it with --force')
    }
    await this.releaseVolumes(name)
    await etcdCall('delete the container record', () => this.etcd.delete().key(keys.container(name)))
    return { name, id: r.id ?? '', csm: r.csm, node: r.node }
  }

  async logs(name: string, offset?: number, tail?: number): Promise<LogChunk> {
    const r = await this.target(name)
    const chunk = await this.call(r.node, 'container.logs', {
      csm: r.csm, id: r.id, ...(offset !== undefined ? { offset } : {}), ...(tail !== undefined ? { tail } : {}),
    })
    return { name, ...chunk }
  }

  async stats(container?: string): Promise<StatsResult> {
    const out: StatsResult = { containers: [], csms: [] }
    let nodes: string[]
    let csmFilter: string | undefined
    if (container !== undefined) {
      const r = await this.target(container)
      nodes = [r.node]
      csmFilter = r.csm
    } else {
      nodes = await this.upNodes()
    }
    const recs = await this.containerRecords()
    await Promise.all(nodes.map(async (n) => {
      const answers = await this.call(n, 'stats', csmFilter !== undefined ? { csm: csmFilter } : {})
      for (const a of answers) {
        out.csms.push({ csm: a.name, node: n, readAt: a.readAt, ...a.csm })
        for (const c of a.containers) {
          if (container !== undefined && c.name !== container) continue
          if (!recs.some((r) => r.name === c.name && r.csm === a.name)) continue
          out.containers.push({ ...c, csm: a.name, node: n, readAt: a.readAt })
        }
      }
    }))
    if (container !== undefined && out.containers.length === 0) {
      throw new TessError('TESS_E_CONFLICT', `container "${container}" is not running: it has no stats`, `start it: tess container start ${container}`)
    }
    out.containers.sort((a, b) => a.name.localeCompare(b.name))
    out.csms.sort((a, b) => a.csm.localeCompare(b.csm))
    return out
  }

  // ---------------------------------------------------------------- volumes

  private async volumeRecord(name: string): Promise<VolumeRecord> {
    checkName('volume', name)
    const r = await etcdCall('read the volume', () => getJson<VolumeRecord>(this.etcd, keys.volume(name)))
    if (r === undefined) throw new TessError('TESS_E_NOT_FOUND', `no volume named "${name}"`, 'see `tess volume list`, or create it: tess volume create NAME --size SIZE')
    return r
  }

  private static volumeInfo(r: VolumeRecord, vds: VdiskInfo[]): VolumeInfo {
    const vd = vds.find((v) => v.name === r.vdisk)
    return { name: r.name, vdisk: r.vdisk, sizeBytes: vd?.sizeBytes ?? r.sizeBytes, rf: r.rf, allocatedBytes: vd?.allocatedBytes ?? 0, encrypted: vd?.encrypted ?? false, formatted: r.formatted, attachments: r.attachments, createdAt: r.createdAt }
  }

  async createVolume(req: { name: string, sizeBytes: number, rf: number, encrypted?: boolean }): Promise<VolumeInfo> {
    const name = checkName('volume', req.name)
    if (name.length > volumeNameLengthMax) throw new TessError('TESS_E_INVALID', `invalid volume name "${name}": at most ${volumeNameLengthMax} characters`, 'its vDisk is named vol-NAME')
    if (req.sizeBytes < volumeSizeMinBytes) throw new TessError('TESS_E_INVALID', `cannot create volume "${name}" of ${req.sizeBytes} bytes: at least ${mib(volumeSizeMinBytes)}`, 'ext4 needs room for its journal: e.g. --size 1G')
    if (await etcdCall('read the volume', () => getJson<VolumeRecord>(this.etcd, keys.volume(name))) !== undefined) {
      throw new TessError('TESS_E_EXISTS', `cannot create volume "${name}": a volume of that name exists`, 'choose another name, or delete it first')
    }
    const vd = await this.vdisks.create(vdiskOfVolume(name), req.sizeBytes, req.rf, req.encrypted === true)
    const rec: VolumeRecord = { name, vdisk: vd.name, sizeBytes: vd.sizeBytes, rf: vd.rf, formatted: false, attachments: [], createdAt: new Date().toISOString() }
    const res = await etcdCall('create the volume record', () => this.etcd.if(keys.volume(name), 'Create', '==', 0).then(this.etcd.put(keys.volume(name)).value(JSON.stringify(rec))).commit())
    if (!res.succeeded) {
      await this.vdisks.delete(vd.name).catch((de: unknown) => this.log.warn(`volume ${name}: its vDisk ${vd.name} stays: ${errorMessage(de)}`))
      throw new TessError('TESS_E_EXISTS', `cannot create volume "${name}": a volume of that name was just created`, 'choose another name')
    }
    this.log.info(`volume ${name} created (vDisk ${vd.name}, ${vd.sizeBytes} bytes, RF ${vd.rf})`)
    return ContainerControl.volumeInfo(rec, [vd])
  }

  async listVolumes(): Promise<VolumeInfo[]> {
    const [recs, vds] = await Promise.all([etcdCall('list volumes', () => listJson<VolumeRecord>(this.etcd, keys.volumesPrefix)), this.vdisks.list()])
    return recs.map((r) => ContainerControl.volumeInfo(r, vds))
  }

  async showVolume(name: string): Promise<VolumeInfo> {
    const r = await this.volumeRecord(name)
    return ContainerControl.volumeInfo(r, await this.vdisks.list())
  }

  async deleteVolume(name: string): Promise<VolumeInfo> {
    checkName('volume', name)
    const got = await etcdCall('read the volume', () => this.etcd.get(keys.volume(name)).exec())
    const kv = got.kvs[0]
    if (kv === undefined) throw new TessError('TESS_E_NOT_FOUND', `no volume named "${name}"`, 'see `tess volume list`')
    const r = JSON.parse(kv.value.toString()) as VolumeRecord
    if (r.attachments.length > 0) {
      const a = r.attachments[0]!
      throw new TessError('TESS_E_CONFLICT', `cannot delete volume "${name}": it is attached to container "${a.container}" on node ${a.node}${r.attachments.length > 1 ? ` and ${r.attachments.length - 1} more` : ''}`, `remove the container first: tess container remove ${a.container}`)
    }
    const info = ContainerControl.volumeInfo(r, await this.vdisks.list())
    const res = await etcdCall('delete the volume record', () => this.etcd.if(keys.volume(name), 'Mod', '==', kv.mod_revision).then(this.etcd.delete().key(keys.volume(name))).commit())
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
   */
  private async attachVolumes(container: string, csm: CsmRecord, mounts: VolumeMount[]): Promise<VolumeSpec[]> {
    const node = await this.nodeRecord(csm.node)
    for (let attempt = 0; attempt < 10; attempt++) {
      const got = await Promise.all(mounts.map((m) => etcdCall('read the volume', () => this.etcd.get(keys.volume(m.name)).exec())))
      const recs = got.map((g, i) => {
        const kv = g.kvs[0]
        if (kv === undefined) throw new TessError('TESS_E_NOT_FOUND', `cannot run container "${container}": no volume named "${mounts[i]!.name}"`, 'create it: tess volume create NAME --size SIZE')
        return { kv, rec: JSON.parse(kv.value.toString()) as VolumeRecord }
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
      const at = new Date().toISOString()
      let txn = this.etcd.if(keys.volume(mounts[0]!.name), 'Mod', '==', recs[0]!.kv.mod_revision)
      for (let i = 1; i < recs.length; i++) txn = txn.and(keys.volume(mounts[i]!.name), 'Mod', '==', recs[i]!.kv.mod_revision)
      const puts = recs.map(({ rec }, i) => {
        const m = mounts[i]!
        const next: VolumeRecord = { ...rec, attachments: [...rec.attachments.filter((a) => a.container !== container), { container, csm: csm.name, node: csm.node, readOnly: m.readOnly, target: m.target, at }] }
        return this.etcd.put(keys.volume(m.name)).value(JSON.stringify(next))
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

  /** Drop every attachment of a container (after it is removed, or when its run failed). */
  private async releaseVolumes(container: string): Promise<void> {
    for (let attempt = 0; attempt < 10; attempt++) {
      const got = await etcdCall('list volumes', () => this.etcd.getAll().prefix(keys.volumesPrefix).exec())
      let conflicts = 0
      for (const kv of got.kvs) {
        const rec = JSON.parse(kv.value.toString()) as VolumeRecord
        if (!rec.attachments.some((a) => a.container === container)) continue
        const next = { ...rec, attachments: rec.attachments.filter((a) => a.container !== container) }
        const res = await etcdCall('detach the volume', () => this.etcd.if(kv.key.toString(), 'Mod', '==', kv.mod_revision).then(this.etcd.put(kv.key.toString()).value(JSON.stringify(next))).commit())
        if (!res.succeeded) conflicts++
      }
      if (conflicts === 0) return
    }
    throw new TessError('TESS_E_CONFLICT', `cannot release the volumes of container "${container}": they kept changing`, 'retry')
  }

  private async markFormatted(names: string[]): Promise<void> {
    for (const n of names) {
      for (let attempt = 0; attempt < 10; attempt++) {
        const kv = (await etcdCall('read the volume', () => this.etcd.get(keys.volume(n)).exec())).kvs[0]
        if (kv === undefined) break
        const rec = JSON.parse(kv.value.toString()) as VolumeRecord
        if (rec.formatted) break
        const res = await etcdCall('mark the volume formatted', () => this.etcd.if(keys.volume(n), 'Mod', '==', kv.mod_revision).then(this.etcd.put(keys.volume(n)).value(JSON.stringify({ ...rec, formatted: true }))).commit())
        if (res.succeeded) break
      }
    }
  }

  /**
   * Move a container to another CSM (on another node, usually): stop it where it is (SIGTERM,
   * then SIGKILL after `timeoutMs`), remove it, and run it again with the same image, command,
   * environment, limits and volumes. Its volumes' data goes with it: they are vDisks.
   */
  async move(name: string, csmName: string, timeoutMs: number, force: boolean): Promise<ContainerMoveResult> {
    const r = await this.containerRecord(name)
    if (r.id === null) throw new TessError('TESS_E_CONFLICT', `container "${name}" is still being created`, 'wait and retry')
    const to = await this.csmRecord(checkName('CSM', csmName))
    if (to.name === r.csm) throw new TessError('TESS_E_INVALID', `container "${name}" is in CSM "${to.name}" already`, 'name another CSM')
    if ((r.cpus ?? 0) > to.cpus + 1e-9 || (r.memoryBytes ?? 0) > to.memoryBytes) {
      throw new TessError('TESS_E_CAPACITY', `cannot move container "${name}" to CSM "${to.name}": it has ${r.cpus ?? '-'} cpus and ${r.memoryBytes !== null ? mib(r.memoryBytes) : '-'}, the CSM ${to.cpus} cpus and ${mib(to.memoryBytes)}`, 'choose a bigger CSM')
    }
    if (!(await this.upNodes()).includes(to.node)) throw new TessError('TESS_E_UNREACHABLE', `cannot move container "${name}": node ${to.node} of CSM "${to.name}" is down`, 'see `tess cluster status`')
    const from = { csm: r.csm, node: r.node }
    if ((await this.upNodes()).includes(r.node)) {
      await this.containerOp(name, 'stop', timeoutMs).catch((e: unknown) => {
        if (!force) throw e
      })
    } else if (!force) {
      throw new TessError('TESS_E_UNREACHABLE', `cannot move container "${name}": its node ${r.node} is down, so it cannot be stopped cleanly`, 'move it with --force: what its volumes hold is what was flushed before the node went down')
    }
    // opened before the record goes: a record whose environment does not open stops the move here
    const env = this.openEnv(r)
    const envOf = env !== undefined ? { env } : {}
    await this.removeContainer(name, true)
    try {
      const v = await this.run({
        name, image: r.image, csm: to.name, network: r.network,
        ...(r.cpus !== null ? { cpus: r.cpus } : {}), ...(r.memoryBytes !== null ? { memoryBytes: r.memoryBytes } : {}),
        ...(r.command !== undefined ? { command: r.command } : {}), ...envOf,
        ...(r.volumes !== undefined ? { volumes: r.volumes } : {}),
        ...(r.userns === true ? { userns: true } : {}),
      })
      return { ...v, from }
    } catch (e) {
      const t = isTessError(e) ? e : new TessError('TESS_E_IO', errorMessage(e), `run it again: tess container run ${r.image} --name ${name} --csm ${to.name} ...`)
      throw new TessError(t.code, `container "${name}" was removed from CSM "${from.csm}" (node ${from.node}) but could not start in CSM "${to.name}": ${t.message}`, t.hint || `run it again: tess container run ${r.image} --name ${name} --csm ${to.name} ...`)
    }
  }

  /**
   * After a CVM restart: a run this CVM began and never finished left a "creating" record.
   * If the CSM made the container, the record is completed; if not, the name is freed.
   */
  async recover(): Promise<void> {
    const mine = (await this.containerRecords()).filter((r) => r.state === 'creating' && r.apiNode === this.self)
    for (const r of mine) {
      try {
        const local = (await this.call(r.node, 'csm.status', {})).find((x) => x.name === r.csm)
        if (local === undefined || !local.up) continue
        const c = local.containers.find((x) => x.name === r.name)
        if (c !== undefined) await this.etcd.put(keys.container(r.name)).value(JSON.stringify({ ...r, id: c.id, image: c.image, state: 'created' }))
        else await this.etcd.delete().key(keys.container(r.name))
        this.log.info(`container ${r.name}: a run cut short by a restart was ${c !== undefined ? 'completed' : 'undone'}`)
      } catch (e) {
        this.log.warn(`recover container ${r.name}: ${errorMessage(e)}`)
      }
    }
    // attachments of containers that no longer exist (a remove cut short) are released
    const names = new Set((await this.containerRecords()).map((r) => r.name))
    for (const v of await etcdCall('list volumes', () => listJson<VolumeRecord>(this.etcd, keys.volumesPrefix))) {
      for (const a of v.attachments) {
        if (!names.has(a.container)) await this.releaseVolumes(a.container).catch((e: unknown) => this.log.warn(`release ${a.container}: ${errorMessage(e)}`))
      }
    }
  }
}
