import { formatRestartPolicy, type ContainerInfo, type ContainerSpec, type RunRequest, type VolumeMount } from '../../lib/container-spec.js'
import type { ContainerMoveResult, ContainerRemoveResult, ContainerView, CsmMoveResult, LogChunk, StatsResult } from '../../lib/csm-types.js'
import { TessError, assert, errorMessage, isTessError } from '../../lib/errors.js'
import { etcdCall, getJson, keys } from '../../lib/etcd.js'
import { csmCallTimeoutMs } from '../../lib/limits.js'
import type { ContainerOpName, CsmLogQuery } from '../../lib/rpc/csm.js'
import { openSecret, sealSecret } from '../../lib/secretbox.js'
import { mib } from '../../lib/units.js'
import { canonicalRef } from './agent.js'
import type { ControlContext } from './context.js'
import { imagePullTimeoutMs } from './images.js'
import type { ContainerRecord, CsmRecord } from './records.js'
import { csmTooSmall, fitsCsm, pickCsm } from './scheduler.js'
import type { Volumes } from './volumes.js'

/** the stop timeout when none is given (the CSM's default) */
const stopTimeoutMsDefault = 10_000
/** how much longer than its stop timeout a container operation may take */
const opSlackMs = 60_000

/** A container as `tess container list/show` shows it: its record, and what its CSM knows (when it answered). */
export function containerView(r: ContainerRecord, c: ContainerInfo | undefined, nodeUp: boolean): ContainerView {
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
    volumes: (r.volumes ?? []).map((v) => ({ name: v.name, target: v.target, readOnly: v.readOnly })),
    restartPolicy: formatRestartPolicy(c?.spec.restart ?? r.restart),
    restartCount: c?.restartCount ?? 0,
    nextRestartAt: c?.nextRestartAt ?? null,
  }
}

/** The spec a CSM runs for a run request, with its volumes attached. */
function specOf(req: RunRequest, image: string, volumes: ContainerSpec['volumes']): ContainerSpec {
  return {
    name: req.name, image,
    ...(req.command !== undefined && req.command.length > 0 ? { command: req.command } : {}),
    ...(req.env !== undefined ? { env: req.env } : {}),
    ...(req.cpus !== undefined ? { cpus: req.cpus } : {}),
    ...(req.memoryBytes !== undefined ? { memoryBytes: req.memoryBytes } : {}),
    network: req.network ?? 'none',
    ...(volumes !== undefined && volumes.length > 0 ? { volumes } : {}),
    ...(req.userns === true ? { userns: true } : {}),
    ...(req.restart !== undefined && req.restart.policy !== 'no' ? { restart: req.restart } : {}),
  }
}

/**
 * Containers: a record in etcd reserves the name and says where the container runs (placed by
 * scheduler.ts); the CSM on that node runs it (node operations container.*) and knows its state.
 */
export class Containers {
  constructor(private readonly ctx: ControlContext, private readonly volumes: Volumes) {}

  /** The scheduler: where a container goes (a named CSM, one of a pool's, or any). */
  private async place(req: RunRequest, containers: ContainerRecord[]): Promise<CsmRecord> {
    const what = `container "${req.name}"`
    if (req.csm !== undefined && req.pool !== undefined) throw new TessError('TESS_E_INVALID', `cannot run ${what}: give --csm or --pool, not both`, 'leave out one of --csm and --pool')
    if (req.csm !== undefined) {
      const c = await this.ctx.csmRecord(req.csm)
      if (!fitsCsm(req, c)) throw csmTooSmall(req, c)
      return c
    }
    const all = (await this.ctx.csmRecords()).filter((r) => r.deleting !== true)
    const pool = req.pool !== undefined ? await this.ctx.poolRecord(req.pool) : undefined
    const candidates = pool !== undefined ? all.filter((c) => pool.csms.includes(c.name)) : all
    if (candidates.length === 0) {
      throw new TessError('TESS_E_PRECONDITION', `cannot run ${what}: ${req.pool !== undefined ? `CSM pool "${req.pool}" has no CSM` : 'the cluster has no CSM'}`, 'create one: tess csm create NAME --cpus N --memory SIZE')
    }
    const up = new Set(await this.ctx.upNodes())
    const live = candidates.filter((c) => up.has(c.node))
    if (live.length === 0) throw new TessError('TESS_E_UNREACHABLE', `cannot run ${what}: the nodes of every candidate CSM (${candidates.map((c) => c.name).join(', ')}) are down`, 'see `tess cluster status`')
    return pickCsm(req, live, containers)
  }

  /** A container's environment for its etcd record: sealed under the secrets key (values are often credentials). */
  private sealEnv(name: string, env: string[]): Pick<ContainerRecord, 'env' | 'envSealed'> {
    if (this.ctx.secretsKey === undefined) {
      this.ctx.log.warn(`container ${name}: its environment is stored in etcd in the clear: this node has no secrets key (pki/secrets.key)`)
      return { env }
    }
    return { envSealed: sealSecret(this.ctx.secretsKey, JSON.stringify(env), `${keys.container(name)}#env`) }
  }

  /** The environment of a container record (sealed, or in the clear as an older tess stored it). */
  private openEnv(r: ContainerRecord): string[] | undefined {
    if (r.envSealed === undefined) return r.env
    const env = JSON.parse(openSecret(this.ctx.secretsKey, r.envSealed, `${keys.container(r.name)}#env`)) as unknown
    assert(Array.isArray(env) && env.every((e) => typeof e === 'string'), `the sealed environment of container ${r.name} is a list of strings`)
    return env as string[]
  }

  /** Reserve the name: a "creating" record, placed in a CSM, written only if the name is free. */
  private async reserve(req: RunRequest, image: string, mounts: VolumeMount[]): Promise<{ rec: ContainerRecord, csm: CsmRecord }> {
    const { etcd, self } = this.ctx
    const name = req.name
    const existing = await etcdCall('read the container', () => getJson<ContainerRecord>(etcd, keys.container(name)))
    if (existing !== undefined) throw new TessError('TESS_E_EXISTS', `cannot run container "${name}": a container of that name exists (in CSM ${existing.csm} on node ${existing.node})`, `remove it first: tess container remove ${name}`)
    const csm = await this.place(req, await this.ctx.containerRecords())
    const rec: ContainerRecord = {
      name, id: null, csm: csm.name, node: csm.node, image, cpus: req.cpus ?? null, memoryBytes: req.memoryBytes ?? null, network: req.network ?? 'none',
      ...(req.command !== undefined && req.command.length > 0 ? { command: req.command } : {}),
      ...(req.env !== undefined ? this.sealEnv(name, req.env) : {}),
      ...(mounts.length > 0 ? { volumes: mounts } : {}),
      ...(req.userns === true ? { userns: true } : {}),
      ...(req.restart !== undefined && req.restart.policy !== 'no' ? { restart: req.restart } : {}),
      state: 'creating', apiNode: self, createdAt: new Date().toISOString(),
    }
    const res = await etcdCall('reserve the container name', () => etcd.if(keys.container(name), 'Create', '==', 0).then(etcd.put(keys.container(name)).value(JSON.stringify(rec))).commit())
    if (!res.succeeded) throw new TessError('TESS_E_EXISTS', `cannot run container "${name}": a container of that name was just created`, 'choose another name')
    return { rec, csm }
  }

  /** `req` is checked (lib/container-spec.ts: parseRunRequest), or a record's (a move) */
  async run(req: RunRequest): Promise<ContainerView> {
    const { etcd, log, call } = this.ctx
    const name = req.name
    const image = canonicalRef(req.image)
    const mounts = (req.volumes ?? []).map((m) => ({ name: m.name, target: m.target, readOnly: m.readOnly }))
    const { rec, csm } = await this.reserve(req, image, mounts)
    let c: ContainerInfo
    try {
      const volumes = mounts.length > 0 ? await this.volumes.attach(name, csm, mounts) : []
      c = await call(csm.node, 'container.run', { csm: csm.name, spec: specOf(req, image, volumes) }, imagePullTimeoutMs)
    } catch (e) {
      await this.volumes.release(name).catch((re: unknown) => log.warn(`container ${name}: ${errorMessage(re)}`))
      await etcd.delete().key(keys.container(name)).catch((de: unknown) => log.warn(`container ${name}: its name stays reserved until etcd answers: ${errorMessage(de)}`))
      throw e
    }
    if (mounts.some((m) => !m.readOnly)) await this.volumes.markFormatted(mounts.filter((m) => !m.readOnly).map((m) => m.name))
    const done: ContainerRecord = { ...rec, id: c.id, image: c.image, state: 'created' }
    await etcdCall('record the container', () => etcd.put(keys.container(name)).value(JSON.stringify(done)))
    log.info(`container ${name} (${c.id}) runs in CSM ${csm.name} on node ${csm.node}`)
    return containerView(done, c, true)
  }

  async list(): Promise<ContainerView[]> {
    const recs = await this.ctx.containerRecords()
    const st = await this.ctx.nodeStatus(recs.map((r) => r.node))
    return recs.map((r) => {
      const local = st.get(r.node)
      const c = local?.find((x) => x.name === r.csm)?.containers.find((x) => x.name === r.name)
      return containerView(r, c, local !== undefined)
    })
  }

  /** A container that its CSM made (it has an id). */
  private async target(name: string): Promise<ContainerRecord & { id: string }> {
    const r = await this.ctx.containerRecord(name)
    if (r.id === null) throw new TessError('TESS_E_CONFLICT', `container "${name}" is still being created`, 'wait and retry')
    return r as ContainerRecord & { id: string }
  }

  async show(name: string): Promise<ContainerView> {
    const v = await this.view(name)
    // network "host": the node's address; "none": loopback only
    const node = v.network === 'host' ? (await this.ctx.nodeRecords()).find((n) => n.name === v.node) : undefined
    return { ...v, addresses: v.network === 'none' ? ['127.0.0.1', '::1'] : node !== undefined ? [node.address] : [] }
  }

  private async view(name: string): Promise<ContainerView> {
    const r = await this.ctx.containerRecord(name)
    if (r.id === null) return containerView(r, undefined, true)
    const up = (await this.ctx.upNodes()).includes(r.node)
    if (!up) return containerView(r, undefined, false)
    try {
      const c = await this.ctx.call(r.node, 'container.get', { csm: r.csm, id: r.id })
      return containerView(r, c, true)
    } catch (e) {
      // the node's lease has not run out yet, but it does not answer: its state is unknown
      if (isTessError(e) && (e.code === 'TESS_E_UNREACHABLE' || e.code === 'TESS_E_TIMEOUT')) return containerView(r, undefined, false)
      throw e
    }
  }

  async op(name: string, op: ContainerOpName, timeoutMs?: number): Promise<ContainerView> {
    const r = await this.target(name)
    const c = await this.ctx.call(r.node, 'container.op', { csm: r.csm, id: r.id, op, ...(timeoutMs !== undefined ? { timeoutMs } : {}) }, (timeoutMs ?? stopTimeoutMsDefault) + opSlackMs)
    return containerView(r, c, true)
  }

  async remove(name: string, force: boolean): Promise<ContainerRemoveResult> {
    const r = await this.ctx.containerRecord(name)
    const up = (await this.ctx.upNodes()).includes(r.node)
    if (r.id !== null) {
      if (up) {
        try {
          await this.ctx.call(r.node, 'container.remove', { csm: r.csm, id: r.id, force }, csmCallTimeoutMs)
        } catch (e) {
          // --force: a node that is lost but not yet seen down (its status not expired) is passed
          // over like a node that is down; it removes the container when it is back
          const lost = isTessError(e) && (e.code === 'TESS_E_UNREACHABLE' || e.code === 'TESS_E_TIMEOUT')
          if (!(isTessError(e) && e.code === 'TESS_E_NOT_FOUND') && !(force && lost)) throw e
        }
      } else if (!force) {
        throw new TessError('TESS_E_UNREACHABLE', `cannot remove container "${name}": node ${r.node} is down`, 'remove it with --force: its record goes now, and the node removes the container when it is back')
      }
    } else if (!force) {
      throw new TessError('TESS_E_CONFLICT', `container "${name}" is still being created`, 'wait, or remove it with --force')
    }
    await this.volumes.release(name)
    await etcdCall('delete the container record', () => this.ctx.etcd.delete().key(keys.container(name)))
    return { name, id: r.id ?? '', csm: r.csm, node: r.node }
  }

  async logs(name: string, query: CsmLogQuery): Promise<LogChunk> {
    const r = await this.target(name)
    const chunk = await this.ctx.call(r.node, 'container.logs', { csm: r.csm, id: r.id, ...query })
    return { name, ...chunk }
  }

  /** Use of every CSM of the up nodes and of their containers; or of one container (and its CSM). */
  async stats(container?: string): Promise<StatsResult> {
    const out: StatsResult = { containers: [], csms: [] }
    const r = container !== undefined ? await this.target(container) : undefined
    const nodes = r !== undefined ? [r.node] : await this.ctx.upNodes()
    const recs = await this.ctx.containerRecords()
    await Promise.all(nodes.map(async (n) => {
      const answers = await this.ctx.call(n, 'stats', r !== undefined ? { csm: r.csm } : {})
      for (const a of answers) {
        out.csms.push({ csm: a.name, node: n, readAt: a.readAt, ...a.csm })
        for (const c of a.containers) {
          if (container !== undefined && c.name !== container) continue
          if (!recs.some((x) => x.name === c.name && x.csm === a.name)) continue
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

  /**
   * Move a container to another CSM (on another node, usually): stop it where it is (SIGTERM,
   * then SIGKILL after `timeoutMs`), remove it, and run it again with the same image, command,
   * environment, limits and volumes. Its volumes' data goes with it: they are vDisks.
   */
  async move(name: string, csmName: string, timeoutMs: number, force: boolean): Promise<ContainerMoveResult> {
    const r = await this.target(name)
    const to = await this.ctx.csmRecord(csmName)
    if (to.name === r.csm) throw new TessError('TESS_E_INVALID', `container "${name}" is in CSM "${to.name}" already`, 'name another CSM')
    if ((r.cpus ?? 0) > to.cpus + 1e-9 || (r.memoryBytes ?? 0) > to.memoryBytes) {
      throw new TessError('TESS_E_CAPACITY', `cannot move container "${name}" to CSM "${to.name}": it has ${r.cpus ?? '-'} cpus and ${r.memoryBytes !== null ? mib(r.memoryBytes) : '-'}, the CSM ${to.cpus} cpus and ${mib(to.memoryBytes)}`, 'choose a bigger CSM')
    }
    if (!(await this.ctx.upNodes()).includes(to.node)) throw new TessError('TESS_E_UNREACHABLE', `cannot move container "${name}": node ${to.node} of CSM "${to.name}" is down`, 'see `tess cluster status`')
    const from = { csm: r.csm, node: r.node }
    if ((await this.ctx.upNodes()).includes(r.node)) {
      await this.op(name, 'stop', timeoutMs).catch((e: unknown) => {
        if (!force) throw e
      })
    } else if (!force) {
      throw new TessError('TESS_E_UNREACHABLE', `cannot move container "${name}": its node ${r.node} is down, so it cannot be stopped cleanly`, 'move it with --force: what its volumes hold is what was flushed before the node went down')
    }
    // opened before the record goes: a record whose environment does not open stops the move here
    const env = this.openEnv(r)
    await this.remove(name, true)
    try {
      return { ...await this.run(this.runRequestOf(r, to.name, env)), from }
    } catch (e) {
      const again = `run it again: tess container run ${r.image} --name ${name} --csm ${to.name} ...`
      const t = isTessError(e) ? e : new TessError('TESS_E_IO', errorMessage(e), again)
      throw new TessError(t.code, `container "${name}" was removed from CSM "${from.csm}" (node ${from.node}) but could not start in CSM "${to.name}": ${t.message}`, t.hint || again)
    }
  }

  /**
   * Move a CSM with its containers to another node (`tess csm move`, `host remove --evacuate`,
   * failover): its containers are stopped where they run (when that node is up), the CSM's record
   * names the new node and that node starts it, then each container is made again there from its
   * record (image, command, environment, limits, volumes: their vDisks go with them). The old
   * node removes its copy of the CSM when its agent next reconciles (at once if up, else when it is
   * back). `force`: go on when the old node is down or a container does not stop.
   */
  async moveCsm(csm: CsmRecord, toNode: string, timeoutMs: number, force: boolean, runAgain: (c: ContainerRecord) => boolean = () => true): Promise<CsmMoveResult> {
    const { etcd, log } = this.ctx
    const from = csm.node
    const mine = (await this.ctx.containerRecords()).filter((c) => c.csm === csm.name)
    const fromUp = (await this.ctx.upNodes()).includes(from)
    if (!fromUp && !force) {
      throw new TessError('TESS_E_UNREACHABLE', `cannot move CSM "${csm.name}": its node ${from} is down, so its containers cannot be stopped cleanly`, 'move it with --force: what their volumes hold is what was flushed before the node went down')
    }
    // opened first: a record whose environment does not open stops the move before anything changes
    const requests = mine.map((c) => ({ rec: c, req: this.runRequestOf(c, csm.name, this.openEnv(c)), again: runAgain(c) }))
    // Stopped and removed where they run while the CSM is still there (their volumes are detached
    // there before any other node attaches them); on a node that is down, the records and the
    // attachments go now, and the node removes the containers when it is back.
    for (const { rec } of requests) {
      if (fromUp && rec.id !== null) {
        await this.op(rec.name, 'stop', timeoutMs).catch((e: unknown) => {
          if (!force) throw e
          log.warn(`move of CSM ${csm.name}: container ${rec.name} did not stop (${errorMessage(e)}); going on (--force)`)
        })
      }
      await this.remove(rec.name, true)
    }
    const moved: CsmRecord = { ...csm, node: toNode }
    const res = await etcdCall('move the CSM record', () => etcd.if(keys.csm(csm.name), 'Value', '==', JSON.stringify(csm)).then(etcd.put(keys.csm(csm.name)).value(JSON.stringify(moved))).commit())
    let at = toNode
    if (!res.succeeded) {
      at = from
      log.warn(`move of CSM ${csm.name}: its record changed meanwhile; its containers run again where it is`)
    } else {
      try {
        await this.ctx.call(toNode, 'csm.ensure', { name: csm.name })
        log.info(`CSM ${csm.name} moved from node ${from} to ${toNode}; running its ${requests.length} container(s) there`)
      } catch (e) {
        // back where it was: its containers run again there
        log.warn(`move of CSM ${csm.name}: node ${toNode} did not start it (${errorMessage(e)}); it stays on ${from}`)
        await etcd.put(keys.csm(csm.name)).value(JSON.stringify(csm)).catch((pe: unknown) => log.warn(`CSM ${csm.name}: its record stays on ${toNode}: ${errorMessage(pe)}`))
        at = from
      }
    }
    const out: CsmMoveResult = { name: csm.name, from, node: at, containers: [], notStarted: [], dropped: [] }
    for (const { rec, req, again } of requests) {
      if (!again) {
        out.dropped.push(rec.name)
        continue
      }
      try {
        out.containers.push((await this.run(req)).name)
      } catch (e) {
        const again = `run it again: tess container run ${rec.image} --name ${rec.name} --csm ${csm.name} ...`
        const t = isTessError(e) ? e : new TessError('TESS_E_IO', errorMessage(e), again)
        log.warn(`move of CSM ${csm.name}: container ${rec.name} did not start on ${at}: ${t.message}`)
        out.notStarted.push({ name: rec.name, error: { code: t.code, message: t.message, hint: t.hint || again } })
      }
    }
    if (at !== toNode) {
      throw new TessError('TESS_E_IO', `cannot move CSM "${csm.name}" to node ${toNode}: it stays on ${from}${out.notStarted.length > 0 ? `; container(s) ${out.notStarted.map((c) => c.name).join(', ')} did not start again` : ' with its containers'}`, 'see the CVM log of that node; `tess csm show` shows where it is')
    }
    return out
  }

  /** The run request that makes a container again from its record, in CSM `csm`. */
  private runRequestOf(r: ContainerRecord, csm: string, env: string[] | undefined): RunRequest {
    return {
      name: r.name, image: r.image, csm, network: r.network,
      ...(r.cpus !== null ? { cpus: r.cpus } : {}), ...(r.memoryBytes !== null ? { memoryBytes: r.memoryBytes } : {}),
      ...(r.command !== undefined ? { command: r.command } : {}), ...(env !== undefined ? { env } : {}),
      ...(r.volumes !== undefined ? { volumes: r.volumes } : {}),
      ...(r.userns === true ? { userns: true } : {}),
      ...(r.restart !== undefined ? { restart: r.restart } : {}),
    }
  }

  /**
   * After a CVM restart: a run this CVM began and never finished left a "creating" record.
   * If the CSM made the container, the record is completed; if not, the name is freed.
   */
  async recover(): Promise<void> {
    const { etcd, log } = this.ctx
    const mine = (await this.ctx.containerRecords()).filter((r) => r.state === 'creating' && r.apiNode === this.ctx.self)
    for (const r of mine) {
      try {
        const local = (await this.ctx.call(r.node, 'csm.status', {})).find((x) => x.name === r.csm)
        if (local === undefined || !local.up) continue
        const c = local.containers.find((x) => x.name === r.name)
        if (c !== undefined) await etcd.put(keys.container(r.name)).value(JSON.stringify({ ...r, id: c.id, image: c.image, state: 'created' }))
        else await etcd.delete().key(keys.container(r.name))
        log.info(`container ${r.name}: a run cut short by a restart was ${c !== undefined ? 'completed' : 'undone'}`)
      } catch (e) {
        log.warn(`recover container ${r.name}: ${errorMessage(e)}`)
      }
    }
    await this.volumes.releaseOrphans(new Set((await this.ctx.containerRecords()).map((r) => r.name)))
  }
}
