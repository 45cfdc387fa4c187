import { TessError } from '../../lib/errors.js'
import { checkName } from '../../lib/names.js'
import type { ContainerControl } from '../control/cluster.js'
import type { Containers } from '../control/containers.js'
import type { Csms } from '../control/csms.js'
import type { Images } from '../control/images.js'
import type { CsmPools } from '../control/pools.js'
import type { Registries } from '../control/registries.js'
import type { Volumes } from '../control/volumes.js'
import { parseCsmCreateRequest, parseCsmUpdateRequest, parseRunRequest } from '../../lib/container-spec.js'
import { bodyObject, bool, int, queryInt, str, strList, type ApiServer } from '../../lib/http-server.js'
import { logQueryFrom } from '../../lib/rpc/csm.js'
import { containerStopTimeoutMsMax, rfMax, vdiskSizeMaxBytes } from '../../lib/limits.js'

/** The container half of the management API: CSMs, pools, registries, images, containers, volumes (one resource object each: control/cluster.ts). */
export function registerCsmRoutes(api: ApiServer, c: ContainerControl): void {
  csmRoutes(api, c.csms, c.containers)
  poolRoutes(api, c.pools)
  registryRoutes(api, c.registries)
  imageRoutes(api, c.images)
  containerRoutes(api, c.containers)
  volumeRoutes(api, c.volumes)
}

/** CSMs: create, list, show, update (the quota), delete, move */
function csmRoutes(api: ApiServer, r: Csms, containers: Containers): void {
  api.route('GET', '/v1/csms', async () => r.list())
  api.route('POST', '/v1/csms', async (req) => r.create(parseCsmCreateRequest(req.body, 'cannot create the CSM')), 'operator')
  api.route('GET', '/v1/csms/:name', async (req) => r.show(req.params.name!))
  api.route('PATCH', '/v1/csms/:name', async (req) => r.update(req.params.name!, parseCsmUpdateRequest(req.body, `cannot update CSM "${req.params.name!.slice(0, 63)}"`)), 'operator')
  api.route('DELETE', '/v1/csms/:name', async (req) => r.delete(req.params.name!, req.query.get('force') === 'true'), 'operator')
  // with its containers, to `node` or the scheduler's pick
  api.route('POST', '/v1/csms/:name/move', async (req) => {
    const b = bodyObject(req.body)
    const node = str(b, 'node', false)
    return r.move(req.params.name!, containers, {
      ...(node !== undefined ? { node: checkName('node', node) } : {}),
      timeoutMs: int(b, 'timeoutMs', 0, containerStopTimeoutMsMax, false) ?? 10_000,
      force: bool(b, 'force'),
    })
  }, 'operator')
}

/** CSM pools */
function poolRoutes(api: ApiServer, r: CsmPools): void {
  api.route('GET', '/v1/csm-pools', async () => r.list())
  api.route('POST', '/v1/csm-pools', async (req) => {
    const b = bodyObject(req.body)
    return r.create(str(b, 'name')!, strList(b, 'csms', 1000, 63) ?? [])
  }, 'operator')
  api.route('GET', '/v1/csm-pools/:name', async (req) => r.show(req.params.name!))
  api.route('PATCH', '/v1/csm-pools/:name', async (req) => {
    const b = bodyObject(req.body)
    return r.change(req.params.name!, strList(b, 'add', 1000, 63) ?? [], strList(b, 'remove', 1000, 63) ?? [])
  }, 'operator')
  api.route('DELETE', '/v1/csm-pools/:name', async (req) => r.delete(req.params.name!), 'operator')
}

/** Registries and the pull policy */
function registryRoutes(api: ApiServer, r: Registries): void {
  api.route('GET', '/v1/registries', async () => r.list())
  api.route('POST', '/v1/registries', async (req) => {
    const b = bodyObject(req.body)
    const username = str(b, 'username', false)
    const password = str(b, 'password', false)
    return r.add({
      name: str(b, 'name')!, url: str(b, 'url')!, insecure: bool(b, 'insecure'),
      ...(username !== undefined ? { username } : {}), ...(password !== undefined ? { password } : {}),
    })
  })
  api.route('DELETE', '/v1/registries/:name', async (req) => r.remove(req.params.name!))
  api.route('GET', '/v1/registry-policy', async () => r.policy())
  api.route('POST', '/v1/registry-policy', async (req) => {
    const b = bodyObject(req.body)
    return r.changePolicy(str(b, 'kind')! as 'allow' | 'deny', str(b, 'pattern')!, bool(b, 'remove'))
  })
}

/** Images on the nodes */
function imageRoutes(api: ApiServer, r: Images): void {
  api.route('GET', '/v1/images', async () => r.list())
  api.route('GET', '/v1/images/pulls', async (req) => r.pulls(req.query.get('ref') ?? undefined))
  api.route('POST', '/v1/images', async (req) => {
    const b = bodyObject(req.body)
    const csm = str(b, 'csm', false)
    const node = str(b, 'node', false)
    return r.pull({ ref: str(b, 'ref')!, ...(csm !== undefined ? { csm } : {}), ...(node !== undefined ? { node } : {}) })
  }, 'operator')
  api.route('DELETE', '/v1/images', async (req) => {
    const ref = req.query.get('ref')
    if (!ref) throw new TessError('TESS_E_BAD_REQUEST', 'query parameter "ref" is required', 'DELETE /v1/images?ref=REF')
    const node = req.query.get('node')
    return r.remove({ ref, ...(node !== null ? { node } : {}) })
  }, 'operator')
}

/** Containers, their logs and stats */
function containerRoutes(api: ApiServer, r: Containers): void {
  api.route('GET', '/v1/containers', async () => r.list())
  api.route('POST', '/v1/containers', async (req) => r.run(parseRunRequest(req.body, 'cannot run the container')), 'operator')
  api.route('GET', '/v1/containers/:name', async (req) => r.show(req.params.name!))
  api.route('POST', '/v1/containers/:name/:op', async (req) => {
    const op = req.params.op!
    if (op === 'move') {
      const b = bodyObject(req.body)
      return r.move(req.params.name!, checkName('CSM', str(b, 'csm')!), int(b, 'timeoutMs', 0, containerStopTimeoutMsMax, false) ?? 10_000, bool(b, 'force'))
    }
    if (op !== 'start' && op !== 'stop' && op !== 'pause' && op !== 'resume') throw new TessError('TESS_E_NOT_FOUND', `no container operation "${op.slice(0, 40)}"`, 'start, stop, pause or resume')
    const timeoutMs = op === 'stop' ? int(bodyObject(req.body), 'timeoutMs', 0, containerStopTimeoutMsMax, false) : undefined
    return r.op(req.params.name!, op, timeoutMs)
  }, 'operator')
  api.route('DELETE', '/v1/containers/:name', async (req) => r.remove(req.params.name!, req.query.get('force') === 'true'), 'operator')
  api.route('GET', '/v1/containers/:name/logs', async (req) => r.logs(req.params.name!, logQueryFrom(req.query, (n, max) => queryInt(req, n, max))))
  api.route('GET', '/v1/stats', async (req) => r.stats(req.query.get('container') ?? undefined))
}

/** Volumes */
function volumeRoutes(api: ApiServer, r: Volumes): void {
  api.route('GET', '/v1/volumes', async () => r.list())
  api.route('POST', '/v1/volumes', async (req) => {
    const b = bodyObject(req.body)
    return r.create({ name: str(b, 'name')!, sizeBytes: int(b, 'sizeBytes', 1, vdiskSizeMaxBytes)!, rf: int(b, 'rf', 1, rfMax, false) ?? 1, encrypted: bool(b, 'encrypted') })
  }, 'operator')
  api.route('GET', '/v1/volumes/:name', async (req) => r.show(req.params.name!))
  api.route('DELETE', '/v1/volumes/:name', async (req) => r.delete(req.params.name!, req.query.get('dryRun') === 'true', req.query.get('force') === 'true'), 'operator')
  api.route('GET', '/v1/volume-snapshots', async () => r.snapshots())
  api.route('GET', '/v1/volumes/:name/snapshots', async (req) => r.snapshots(req.params.name!))
  api.route('POST', '/v1/volumes/:name/snapshots', async (req) => r.createSnapshot(req.params.name!, str(bodyObject(req.body), 'name')!), 'operator')
  api.route('DELETE', '/v1/volumes/:name/snapshots/:snapshot', async (req) => r.deleteSnapshot(req.params.name!, req.params.snapshot!), 'operator')
  api.route('POST', '/v1/volumes/:name/restore', async (req) => r.restoreSnapshot(req.params.name!, str(bodyObject(req.body), 'snapshot')!), 'operator')
  api.route('POST', '/v1/volumes/:name/clones', async (req) => {
    const b = bodyObject(req.body)
    return r.clone(req.params.name!, str(b, 'snapshot', false), str(b, 'name')!, int(b, 'rf', 1, rfMax, false))
  }, 'operator')
}
