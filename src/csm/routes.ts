import { TessError } from '../lib/errors.js'
import type { Logger } from '../lib/log.js'
import type { CsmStatsAnswer, UsageStats } from '../lib/csm-types.js'
import { parseContainerSpec, parseCsmQuota, type CsmSpec } from '../lib/container-spec.js'
import { bodyObject, int, queryInt, type ApiServer } from '../lib/http-server.js'
import { containerStopTimeoutMsMax, logTailLinesMax } from '../lib/limits.js'
import type { CgroupStats, CsmCgroup } from './runtime/cgroups.js'
import type { ContainerManager } from './runtime/containers.js'

/** how long CPU use is sampled for a stats answer */
const statsSampleMs = 250

function usage(a: CgroupStats, b: CgroupStats, ms: number): UsageStats {
  return {
    cpuUsageNs: b.cpuUsageNs,
    cpuCpus: ms > 0 ? Math.max(0, (b.cpuUsageNs - a.cpuUsageNs) / (ms * 1e6)) : null,
    cpuThrottledPeriods: b.cpuThrottledPeriods,
    cpuLimitCpus: b.cpuLimitCpus ?? null,
    memoryUsageBytes: b.memoryUsageBytes,
    memoryLimitBytes: b.memoryLimitBytes ?? null,
    oomKills: b.oomKills,
    pidsCurrent: b.pidsCurrent,
    pidsLimit: b.pidsLimit ?? null,
  }
}

/**
 * The CSM daemon's API, on its unix socket, for the node's CVM only. Every request is checked
 * as if it came from anyone: a malformed one is a 400, never a crash.
 */
export function registerCsmRoutes(api: ApiServer, s: { manager: ContainerManager, cgroup: CsmCgroup, spec: CsmSpec, log: Logger }): void {
  const m = s.manager
  api.route('GET', '/v1/health', async () => ({ csm: s.spec.name, id: s.spec.id, pid: process.pid, containers: (await m.list()).length }))
  api.route('GET', '/v1/containers', async () => m.list())
  api.route('POST', '/v1/containers', async (req) => {
    return m.run(parseContainerSpec(req.body, `cannot run the container in CSM "${s.spec.name}"`))
  })
  api.route('GET', '/v1/containers/:id', async (req) => m.inspect(req.params.id!))
  api.route('POST', '/v1/containers/:id/:op', async (req) => {
    const id = req.params.id!
    switch (req.params.op) {
      case 'start': return m.start(id)
      case 'pause': return m.pause(id)
      case 'resume': return m.resume(id)
      case 'stop': return m.stop(id, int(bodyObject(req.body), 'timeoutMs', 0, containerStopTimeoutMsMax, false) ?? undefined)
      default: throw new TessError('TESS_E_NOT_FOUND', `no container operation "${req.params.op}"`, 'start, stop, pause or resume')
    }
  })
  api.route('DELETE', '/v1/containers/:id', async (req) => {
    const c = await m.inspect(req.params.id!)
    await m.remove(c.id, { force: req.query.get('force') === 'true' })
    return c
  })
  api.route('GET', '/v1/containers/:id/logs', async (req) => {
    const offset = queryInt(req, 'offset', Number.MAX_SAFE_INTEGER)
    const tail = queryInt(req, 'tail', logTailLinesMax)
    const r = await m.readLog(req.params.id!, { ...(offset !== undefined ? { offset } : {}), ...(tail !== undefined ? { tail } : {}) })
    return { data: r.data.toString('base64'), offset: r.offset, running: r.running }
  })
  api.route('GET', '/v1/stats', async (): Promise<CsmStatsAnswer> => {
    const live = (await m.list()).filter((c) => c.status === 'running' || c.status === 'paused')
    const read = async () => ({
      csm: await s.cgroup.stats(),
      containers: await Promise.all(live.map(async (c) => m.stats(c.id).catch(() => undefined))), // a container that ended meanwhile has no stats: shown without
    })
    const a = await read()
    const t0 = process.hrtime.bigint()
    await new Promise((r) => setTimeout(r, statsSampleMs))
    const b = await read()
    const ms = Number(process.hrtime.bigint() - t0) / 1e6
    const containers: CsmStatsAnswer['containers'] = []
    live.forEach((c, i) => {
      const x = a.containers[i]
      const y = b.containers[i]
      if (x !== undefined && y !== undefined) containers.push({ id: c.id, name: c.name, ...usage(x, y, ms) })
    })
    return { csm: { ...usage(a.csm, b.csm, ms), containers: live.length }, containers, readAt: new Date().toISOString() }
  })
  api.route('PUT', '/v1/limits', async (req) => {
    const { cpus, memoryBytes } = parseCsmQuota(req.body, `cannot change the limits of CSM "${s.spec.name}"`)
    // a CSM may not be squeezed below what its containers were given
    const biggest = (await m.list()).filter((c) => c.status !== 'exited').reduce((acc, c) => ({
      cpus: Math.max(acc.cpus, c.spec.cpus ?? 0), memoryBytes: Math.max(acc.memoryBytes, c.spec.memoryBytes ?? 0),
    }), { cpus: 0, memoryBytes: 0 })
    if (cpus < biggest.cpus || memoryBytes < biggest.memoryBytes) {
      throw new TessError('TESS_E_CONFLICT', `cannot shrink CSM "${s.spec.name}" to ${cpus} cpus and ${memoryBytes} bytes: a container in it has ${biggest.cpus} cpus and ${biggest.memoryBytes} bytes`, 'stop and remove that container first, or give the CSM more')
    }
    await s.cgroup.setLimits({ cpus, memoryBytes })
    s.spec.cpus = cpus
    s.spec.memoryBytes = memoryBytes
    s.log.info(`limits now ${cpus} cpus, ${memoryBytes} bytes`)
    return s.cgroup.limits()
  })
}
