import type { CsmCreateRequest, CsmQuota } from '../../lib/container-spec.js'
import type { CsmDeleteResult, CsmInfo, CsmMoveResult } from '../../lib/csm-types.js'
import type { CsmFailover } from '../../lib/types.js'
import { TessError, errorMessage } from '../../lib/errors.js'
import { IdAllocator, etcdCall, getJson, keys } from '../../lib/etcd.js'
import { csmCallTimeoutMs } from '../../lib/limits.js'
import type { LocalCsm } from '../../lib/rpc/node-ops.js'
import { round2 } from '../../lib/units.js'
import type { Containers } from './containers.js'
import type { ControlContext } from './context.js'
import type { CsmPools } from './pools.js'
import type { ContainerRecord, CsmRecord } from './records.js'
import { nodeRoom, pickCsmNode, roomError } from './scheduler.js'
import type { Volumes } from './volumes.js'

/** A CSM as `tess csm list/show` shows it: its record, its node's view of it, and its containers' records. */
export function csmInfo(r: CsmRecord, local: LocalCsm[] | undefined, containers: ContainerRecord[]): CsmInfo {
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

/**
 * CSMs: records in etcd, placed on a node by the scheduler (scheduler.ts), made and removed by
 * that node's agent (node operations csm.ensure, csm.limits, csm.remove).
 */
export class Csms {
  private readonly ids: IdAllocator

  constructor(private readonly ctx: ControlContext, private readonly pools: CsmPools, private readonly volumes: Volumes) {
    this.ids = new IdAllocator(ctx.etcd, 'csm')
  }

  /** `req` is checked (lib/container-spec.ts: parseCsmCreateRequest) */
  async create(req: CsmCreateRequest): Promise<CsmInfo> {
    const { etcd, log, call } = this.ctx
    const name = req.name
    const runtime = req.runtime ?? 'runc'
    if (await etcdCall('read the CSM', () => getJson<CsmRecord>(etcd, keys.csm(name))) !== undefined) {
      throw new TessError('TESS_E_EXISTS', `cannot create CSM "${name}": a CSM of that name exists`, 'choose another name, or delete it first')
    }
    const node = await this.nodeFor(req)
    const rec: CsmRecord = { name, id: await this.ids.allocate(), node, cpus: req.cpus, memoryBytes: req.memoryBytes, runtime, createdAt: new Date().toISOString() }
    const res = await etcdCall('create the CSM record', () => etcd.if(keys.csm(name), 'Create', '==', 0).then(etcd.put(keys.csm(name)).value(JSON.stringify(rec))).commit())
    if (!res.succeeded) throw new TessError('TESS_E_EXISTS', `cannot create CSM "${name}": a CSM of that name was just created`, 'choose another name')
    try {
      await call(node, 'csm.ensure', { name })
    } catch (e) {
      // undo: the node removes what it made, then the record goes
      log.warn(`CSM ${name} on ${node} did not start (${errorMessage(e)}); removing it`)
      await etcd.put(keys.csm(name)).value(JSON.stringify({ ...rec, deleting: true })).catch((e2: unknown) => log.warn(`CSM ${name}: cannot mark it deleting: ${errorMessage(e2)}`))
      await call(node, 'csm.remove', { name, force: true }).catch((e2: unknown) => log.warn(`CSM ${name}: node ${node} could not remove it: ${errorMessage(e2)}`))
      await etcd.delete().key(keys.csm(name)).catch((e2: unknown) => log.warn(`CSM ${name}: its record stays (marked deleting): ${errorMessage(e2)}`))
      throw e
    }
    log.info(`CSM ${name} created on node ${node} (${req.cpus} cpus, ${req.memoryBytes} bytes, ${runtime})`)
    return this.show(name)
  }

  /** The node a new CSM goes to: the one asked for if it is up and has room, else the scheduler's pick. */
  private async nodeFor(req: CsmCreateRequest): Promise<string> {
    const csms = await this.ctx.csmRecords()
    const up = await this.ctx.upNodes()
    if (req.node !== undefined) {
      const rec = await this.ctx.nodeRecord(req.node)
      if (!up.includes(rec.name)) throw new TessError('TESS_E_UNREACHABLE', `cannot create CSM "${req.name}" on node ${rec.name}: the node is down`, 'see `tess cluster status`, or leave out --host')
      const err = roomError(req.name, rec.name, req.cpus, req.memoryBytes, await nodeRoom(this.ctx.call, rec.name, csms))
      if (err) throw err
      return rec.name
    }
    const candidates = (await this.ctx.nodeRecords()).filter((n) => up.includes(n.name) && n.draining !== true).map((n) => n.name)
    return pickCsmNode(this.ctx.call, req, candidates, csms)
  }

  async list(): Promise<CsmInfo[]> {
    const [recs, cs] = await Promise.all([this.ctx.csmRecords(), this.ctx.containerRecords()])
    const live = recs.filter((r) => r.deleting !== true)
    const st = await this.ctx.nodeStatus(live.map((r) => r.node))
    return live.map((r) => csmInfo(r, st.get(r.node), cs))
  }

  async show(name: string): Promise<CsmInfo> {
    const r = await this.ctx.csmRecord(name)
    const st = await this.ctx.nodeStatus([r.node])
    return csmInfo(r, st.get(r.node), await this.ctx.containerRecords())
  }

  /** `req` is checked (lib/container-spec.ts: parseCsmUpdateRequest) */
  async update(name: string, req: Partial<CsmQuota>): Promise<CsmInfo> {
    const r = await this.ctx.csmRecord(name)
    const cpus = req.cpus ?? r.cpus
    const memoryBytes = req.memoryBytes ?? r.memoryBytes
    const err = roomError(name, r.node, cpus, memoryBytes, await nodeRoom(this.ctx.call, r.node, await this.ctx.csmRecords(), name))
    if (err) throw err
    await this.ctx.call(r.node, 'csm.limits', { name, cpus, memoryBytes })
    await etcdCall('update the CSM record', () => this.ctx.etcd.put(keys.csm(name)).value(JSON.stringify({ ...r, cpus, memoryBytes })))
    return this.show(name)
  }

  /**
   * Move a CSM and its containers to another node (`node`, or the scheduler's pick of the nodes that
   * are up, not draining and not its own): checked for room first, then Containers.moveCsm.
   */
  async move(name: string, containers: Containers, opts: { node?: string, timeoutMs: number, force: boolean, runAgain?: (c: ContainerRecord) => boolean }): Promise<CsmMoveResult> {
    const r = await this.ctx.csmRecord(name)
    if (r.deleting === true) throw new TessError('TESS_E_CONFLICT', `CSM "${name}" is being deleted`, 'wait for the delete to finish')
    const csms = await this.ctx.csmRecords()
    const up = await this.ctx.upNodes()
    let to: string
    if (opts.node !== undefined) {
      const rec = await this.ctx.nodeRecord(opts.node)
      if (rec.name === r.node) throw new TessError('TESS_E_INVALID', `CSM "${name}" is on node ${rec.name} already`, 'name another node, or leave out --node')
      if (!up.includes(rec.name)) throw new TessError('TESS_E_UNREACHABLE', `cannot move CSM "${name}" to node ${rec.name}: the node is down`, 'see `tess cluster status`')
      const err = roomError(name, rec.name, r.cpus, r.memoryBytes, await nodeRoom(this.ctx.call, rec.name, csms))
      if (err) throw err
      to = rec.name
    } else {
      const candidates = (await this.ctx.nodeRecords()).filter((n) => up.includes(n.name) && n.draining !== true && n.name !== r.node).map((n) => n.name)
      if (candidates.length === 0) throw new TessError('TESS_E_PRECONDITION', `cannot move CSM "${name}": no other node is up`, 'add a host, or bring one back (see `tess cluster status`)')
      to = await pickCsmNode(this.ctx.call, r, candidates, csms)
    }
    return containers.moveCsm(r, to, opts.timeoutMs, opts.force, opts.runAgain)
  }

  /**
   * Failover (the curator master calls this with the nodes down for longer than its grace): each
   * CSM of those nodes that holds a container with a restart policy moves to a node that is up and
   * has room, and those containers run there (their volumes' vDisks are owned by whoever serves
   * them next: the lost node's ownership lease ran out long before the grace). Its containers with
   * no restart policy are removed with their node. CSMs with none to restart stay where they are
   * (shown down). The lost node removes its copies when it is back (its agent's reconcile).
   */
  async failover(down: string[], containers: Containers): Promise<CsmFailover[]> {
    const out: CsmFailover[] = []
    const all = await this.ctx.containerRecords()
    for (const r of (await this.ctx.csmRecords()).filter((c) => down.includes(c.node) && c.deleting !== true)) {
      const mine = all.filter((c) => c.csm === r.name)
      if (!mine.some((c) => c.restart !== undefined)) continue
      const at = new Date().toISOString()
      try {
        const m = await this.move(r.name, containers, { timeoutMs: 0, force: true, runAgain: (c) => c.restart !== undefined })
        this.ctx.log.warn(`failover: CSM ${r.name} of lost node ${r.node} moved to ${m.node}; containers running there: ${m.containers.join(', ') || 'none'}${m.dropped.length > 0 ? `; removed (no restart policy): ${m.dropped.join(', ')}` : ''}`)
        out.push({ csm: r.name, from: r.node, to: m.node, at, containers: m.containers, dropped: m.dropped, notStarted: m.notStarted.map((x) => x.name), error: null })
      } catch (e) {
        this.ctx.log.warn(`failover: CSM ${r.name} of lost node ${r.node} could not move: ${errorMessage(e)}; tried again at the next scan`)
        out.push({ csm: r.name, from: r.node, to: null, at, containers: [], dropped: [], notStarted: [], error: errorMessage(e) })
      }
    }
    return out
  }

  /**
   * Delete a CSM (with `force`, with its containers): its node removes it, then its containers'
   * records and attachments, its pool memberships and its record go. With the node down, the
   * record stays marked "deleting" and the node finishes when it is back.
   */
  async delete(name: string, force: boolean): Promise<CsmDeleteResult> {
    const { etcd, log } = this.ctx
    const r = await this.ctx.csmRecord(name)
    const mine = (await this.ctx.containerRecords()).filter((c) => c.csm === name)
    if (mine.length > 0 && !force) {
      throw new TessError('TESS_E_CONFLICT', `cannot delete CSM "${name}": it hosts ${mine.length} container(s): ${mine.map((c) => c.name).join(', ')}`, 'remove them first, or delete with --force (its containers are killed and removed)')
    }
    const up = (await this.ctx.upNodes()).includes(r.node)
    await etcdCall('mark the CSM deleting', () => etcd.put(keys.csm(name)).value(JSON.stringify({ ...r, deleting: true })))
    let removed: string[] = mine.map((c) => c.name)
    if (up) {
      try {
        removed = (await this.ctx.call(r.node, 'csm.remove', { name, force }, csmCallTimeoutMs)).removed
      } catch (e) {
        // not deleted after all: the CSM stays as it was
        await etcd.put(keys.csm(name)).value(JSON.stringify(r)).catch(() => undefined)
        throw e
      }
    } else {
      log.warn(`CSM ${name}: node ${r.node} is down; it removes the CSM when it is back`)
    }
    for (const c of mine) {
      await this.volumes.release(c.name)
      await etcdCall('delete the container record', () => etcd.delete().key(keys.container(c.name)))
    }
    await this.pools.dropCsm(name)
    if (up) await etcdCall('delete the CSM record', () => etcd.delete().key(keys.csm(name)))
    return { name, node: r.node, containersRemoved: removed }
  }
}
