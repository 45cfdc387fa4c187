import { TessError } from '../lib/errors.js'
import type { Logger } from '../lib/log.js'
import type { CsmStatsAnswer, UsageStats } from '../lib/csm-types.js'
import type { CsmSpec } from '../lib/container-spec.js'
import type { ApiServer } from '../lib/http-server.js'
import { registerCsmApi, type CsmApi } from '../lib/rpc/csm.js'
import type { CgroupStats, CsmCgroup } from './runtime/cgroups.js'
import type { ContainerManager } from './runtime/containers.js'

/**
 * How long CPU use is sampled for a stats answer: a multiple of the CFS period (100 ms), long
 * enough that one period's quota more or less inside the window moves the rate by at most a fifth
 * of a CPU limit (a 250 ms window read a 0.5-CPU quota as up to 0.67 CPU).
 */
const statsSampleMs = 500

/** A cgroup's counters and when they were read (hrtime, ns). */
interface Reading { stats: CgroupStats, atNs: bigint }

async function reading(read: () => Promise<CgroupStats>): Promise<Reading> {
  const stats = await read()
  return { stats, atNs: process.hrtime.bigint() }
}

function usage(ra: Reading, rb: Reading): UsageStats {
  const a = ra.stats
  const b = rb.stats
  // each cgroup's own interval between its two readings, not the sampler's sleep
  const ms = Number(rb.atNs - ra.atNs) / 1e6
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
 * The CSM daemon's API, on its unix socket, for the node's CVM only (lib/rpc/csm.ts: the routes,
 * the request checks and the client are there). Every request is checked as if it came from
 * anyone: a malformed one is a 400, never a crash.
 */
export function registerCsmRoutes(api: ApiServer, s: { manager: ContainerManager, cgroup: CsmCgroup, spec: CsmSpec, log: Logger }): void {
  registerCsmApi(api, csmService(s), `CSM "${s.spec.name}"`)
}

/** What the daemon does for each request of its API. */
export function csmService(s: { manager: ContainerManager, cgroup: CsmCgroup, spec: CsmSpec, log: Logger }): CsmApi {
  const m = s.manager
  return {
    health: async () => ({ csm: s.spec.name, id: s.spec.id, pid: process.pid, containers: (await m.list()).length }),
    list: () => m.list(),
    run: (spec) => m.run(spec),
    inspect: (ref) => m.inspect(ref),
    op: (ref, op, timeoutMs) => {
      switch (op) {
        case 'start': return m.start(ref)
        case 'pause': return m.pause(ref)
        case 'resume': return m.resume(ref)
        case 'stop': return m.stop(ref, timeoutMs)
      }
    },
    remove: async (ref, force) => {
      const c = await m.inspect(ref)
      await m.remove(c.id, { force })
      return c
    },
    logs: async (ref, q) => {
      const r = await m.readLog(ref, q)
      return { data: r.data.toString('base64'), offset: r.offset, running: r.running, sizeBytes: r.sizeBytes }
    },
    stats: () => stats(m, s.cgroup),
    confirmPlacement: async () => {
      const wasHeld = m.releaseRestarts()
      if (wasHeld) s.log.info('the node\'s CVM confirmed this CSM is placed on this node: containers to restart are started again')
      return { wasHeld }
    },
    freezeVolume: (ref, volume, frozen) => m.freezeVolume(ref, volume, frozen),
    setLimits: async ({ cpus, memoryBytes }) => {
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
    },
  }
}

/** The CSM's use and each running container's, sampled over statsSampleMs. */
async function stats(m: ContainerManager, cgroup: CsmCgroup): Promise<CsmStatsAnswer> {
  const live = (await m.list()).filter((c) => c.status === 'running' || c.status === 'paused')
  const read = async () => ({
    csm: await reading(() => cgroup.stats()),
    // a container that ended meanwhile has no stats: shown without
    containers: await Promise.all(live.map(async (c) => reading(() => m.stats(c.id)).catch(() => undefined))),
  })
  const a = await read()
  await new Promise((r) => setTimeout(r, statsSampleMs))
  const b = await read()
  const containers: CsmStatsAnswer['containers'] = []
  live.forEach((c, i) => {
    const x = a.containers[i]
    const y = b.containers[i]
    if (x !== undefined && y !== undefined) containers.push({ id: c.id, name: c.name, ...usage(x, y) })
  })
  return { csm: { ...usage(a.csm, b.csm), containers: live.length }, containers, readAt: new Date().toISOString() }
}
