import { TessError } from '../errors.js'
import { parseContainerSpec, parseCsmQuota, type ContainerInfo, type ContainerSpec, type CsmQuota } from '../container-spec.js'
import { logQueryParams, type CsmStatsAnswer, type LogQuery } from '../csm-types.js'
import { bodyObject, bool, int, queryInt, shown, type ApiServer } from '../http-server.js'
import { jsonRequest } from '../jsonhttp.js'
import { containerStopTimeoutMsMax, csmCallTimeoutMs, csmQuickCallTimeoutMs, logTailLinesMax, volumeFreezeCallTimeoutMs } from '../limits.js'
import { checkName, namePattern } from '../names.js'

/**
 * The API of one CSM daemon, on its unix socket, for the CVM of its node only: what the daemon
 * serves (registerCsmApi) and what the CVM calls (CsmClient) are one interface, CsmApi, with the
 * request and reply types shared by both sides and the paths written once, here. The daemon checks
 * every request as if it came from anyone (lib/container-spec.ts): a malformed one is a 400.
 */

export const containerOps = ['start', 'stop', 'pause', 'resume'] as const
export type ContainerOpName = typeof containerOps[number]

export interface CsmHealth {
  csm: string
  id: string
  pid: number
  containers: number
}

/** A piece of a container's log: the bytes (base64), where the next read starts, and whether more may come. */
export interface CsmLogAnswer {
  data: string
  offset: number
  running: boolean
  /** the log's size when it was read: a reader that is not following stops there (absent from older CSMs) */
  sizeBytes?: number
}

export type CsmLogQuery = LogQuery

/** A log query from URL parameters (offset, tail, since in ms since the epoch, timestamps=true). */
export function logQueryFrom(query: URLSearchParams, int: (name: string, max: number) => number | undefined): CsmLogQuery {
  const offset = int('offset', Number.MAX_SAFE_INTEGER)
  const tail = int('tail', logTailLinesMax)
  const sinceMs = int('since', Number.MAX_SAFE_INTEGER)
  const t = query.get('timestamps')
  if (t !== null && t !== 'true' && t !== 'false') throw new TessError('TESS_E_BAD_REQUEST', `bad parameter timestamps=${t.slice(0, 20)}`, 'give true or false')
  return { ...(offset !== undefined ? { offset } : {}), ...(tail !== undefined ? { tail } : {}), ...(sinceMs !== undefined ? { sinceMs } : {}), ...(t === 'true' ? { timestamps: true } : {}) }
}

/** A CSM's limits as its cgroup has them now; a missing field is "no limit". */
export interface CsmLimitsAnswer {
  cpus?: number
  memoryBytes?: number
  pidsMax?: number
}

/** The answer to the CVM's confirmation that a CSM is placed on its node: whether restarts were held until then. */
export interface CsmPlacementAnswer {
  wasHeld: boolean
}

/** A volume frozen or thawed for a snapshot: `mounted` false when there was nothing to freeze (its container is stopped). */
export interface VolumeFreezeAnswer {
  mounted: boolean
  frozen: boolean
}

/** One CSM daemon. `ref` is a container's id (12 hex digits) or its name. */
export interface CsmApi {
  health(): Promise<CsmHealth>
  list(): Promise<ContainerInfo[]>
  run(spec: ContainerSpec): Promise<ContainerInfo>
  inspect(ref: string): Promise<ContainerInfo>
  /** start, pause or resume; stop with SIGTERM, then SIGKILL after `timeoutMs` */
  op(ref: string, op: ContainerOpName, timeoutMs?: number): Promise<ContainerInfo>
  /** answers the container as it was before it went */
  remove(ref: string, force: boolean): Promise<ContainerInfo>
  logs(ref: string, q: CsmLogQuery): Promise<CsmLogAnswer>
  stats(): Promise<CsmStatsAnswer>
  setLimits(q: CsmQuota): Promise<CsmLimitsAnswer>
  /** the node's CVM saw this CSM's record on this node: restarts held since the daemon started go on */
  confirmPlacement(): Promise<CsmPlacementAnswer>
  /** freeze (or thaw) a volume the container has attached read-write, for a consistent snapshot */
  freezeVolume(ref: string, volume: string, frozen: boolean): Promise<VolumeFreezeAnswer>
}

const containerIdPattern = /^[a-f0-9]{12}$/

/** A container named in a path: its id or its name. */
export function containerRef(ref: string): string {
  if (!containerIdPattern.test(ref) && !namePattern.test(ref)) throw new TessError('TESS_E_BAD_REQUEST', `bad container id or name ${shown(ref, 40)}`, 'a container id (12 hex digits) or name')
  return ref
}

const containerPath = (ref: string, rest = ''): string => `/v1/containers/${encodeURIComponent(ref)}${rest}`

/** Serve a CSM's API (`what` names the CSM in errors). */
export function registerCsmApi(api: ApiServer, csm: CsmApi, what: string): void {
  api.route('GET', '/v1/health', async () => csm.health())
  api.route('GET', '/v1/containers', async () => csm.list())
  api.route('POST', '/v1/containers', async (req) => csm.run(parseContainerSpec(req.body, `${what}: cannot run the container`)))
  api.route('GET', '/v1/containers/:id', async (req) => csm.inspect(containerRef(req.params.id!)))
  api.route('POST', '/v1/containers/:id/:op', async (req) => {
    const op = req.params.op!
    if (!(containerOps as readonly string[]).includes(op)) throw new TessError('TESS_E_NOT_FOUND', `no container operation ${shown(op, 40)}`, 'start, stop, pause or resume')
    const timeoutMs = op === 'stop' ? int(bodyObject(req.body), 'timeoutMs', 0, containerStopTimeoutMsMax, false) : undefined
    return csm.op(containerRef(req.params.id!), op as ContainerOpName, timeoutMs)
  })
  api.route('DELETE', '/v1/containers/:id', async (req) => csm.remove(containerRef(req.params.id!), req.query.get('force') === 'true'))
  api.route('GET', '/v1/containers/:id/logs', async (req) => csm.logs(containerRef(req.params.id!), logQueryFrom(req.query, (n, max) => queryInt(req, n, max))))
  api.route('GET', '/v1/stats', async () => csm.stats())
  api.route('PUT', '/v1/limits', async (req) => csm.setLimits(parseCsmQuota(req.body, `${what}: cannot change its limits`)))
  api.route('POST', '/v1/placement/confirm', async () => csm.confirmPlacement())
  api.route('POST', '/v1/containers/:id/volumes/:volume/freeze', async (req) => {
    const frozen = bool(bodyObject(req.body), 'frozen')
    return csm.freezeVolume(containerRef(req.params.id!), checkName('volume', req.params.volume!), frozen)
  })
}

/** One JSON request to a CSM daemon. */
export type CsmRequest = <T>(method: 'GET' | 'POST' | 'PUT' | 'DELETE', path: string, body: unknown, timeoutMs: number) => Promise<T>

/**
 * The CVM's side of a CSM's API. Requests that run, stop or remove containers may take long (an
 * image may be unpacked, a container may take its stop timeout): csmCallTimeoutMs; the others
 * csmQuickCallTimeoutMs. Replies come from the node's own daemon and are not checked again.
 */
export class CsmClient implements CsmApi {
  constructor(private readonly request: CsmRequest) {}

  /** A client of the daemon listening on `socketPath`; `what` names it in errors. */
  static over(socketPath: string, what: string): CsmClient {
    return new CsmClient((method, path, body, timeoutMs) => jsonRequest({ endpoint: socketPath, what }, method, path, body, timeoutMs))
  }

  health(timeoutMs = csmQuickCallTimeoutMs): Promise<CsmHealth> {
    return this.request('GET', '/v1/health', undefined, timeoutMs)
  }

  list(): Promise<ContainerInfo[]> {
    return this.request('GET', '/v1/containers', undefined, csmQuickCallTimeoutMs)
  }

  run(spec: ContainerSpec): Promise<ContainerInfo> {
    return this.request('POST', '/v1/containers', spec, csmCallTimeoutMs)
  }

  inspect(ref: string): Promise<ContainerInfo> {
    return this.request('GET', containerPath(ref), undefined, csmQuickCallTimeoutMs)
  }

  op(ref: string, op: ContainerOpName, timeoutMs?: number): Promise<ContainerInfo> {
    return this.request('POST', containerPath(ref, `/${op}`), timeoutMs !== undefined ? { timeoutMs } : {}, csmCallTimeoutMs)
  }

  remove(ref: string, force: boolean): Promise<ContainerInfo> {
    return this.request('DELETE', containerPath(ref, force ? '?force=true' : ''), undefined, csmCallTimeoutMs)
  }

  logs(ref: string, q: CsmLogQuery): Promise<CsmLogAnswer> {
    return this.request('GET', containerPath(ref, `/logs?${logQueryParams(q).toString()}`), undefined, csmQuickCallTimeoutMs)
  }

  stats(): Promise<CsmStatsAnswer> {
    return this.request('GET', '/v1/stats', undefined, csmQuickCallTimeoutMs)
  }

  setLimits(q: CsmQuota): Promise<CsmLimitsAnswer> {
    return this.request('PUT', '/v1/limits', { cpus: q.cpus, memoryBytes: q.memoryBytes }, csmQuickCallTimeoutMs)
  }

  confirmPlacement(): Promise<CsmPlacementAnswer> {
    return this.request('POST', '/v1/placement/confirm', {}, csmQuickCallTimeoutMs)
  }

  freezeVolume(ref: string, volume: string, frozen: boolean): Promise<VolumeFreezeAnswer> {
    return this.request('POST', containerPath(ref, `/volumes/${encodeURIComponent(volume)}/freeze`), { frozen }, frozen ? volumeFreezeCallTimeoutMs : csmQuickCallTimeoutMs)
  }
}
