import { TessError } from '../../lib/errors.js'
import { checkName } from '../../lib/names.js'
import type { ContainerControl } from '../control/cluster.js'
import { parseCsmCreateRequest, parseCsmUpdateRequest, parseRunRequest } from '../../lib/container-spec.js'
import { bodyObject, bool, int, queryInt, str, strList, type ApiServer } from '../../lib/http-server.js'
import { containerStopTimeoutMsMax, logTailLinesMax, rfMax, vdiskSizeMaxBytes } from '../../lib/limits.js'

/** The container half of the management API: CSMs, pools, registries, images, containers, volumes (one resource object each: control/cluster.ts). */
export function registerCsmRoutes(api: ApiServer, c: ContainerControl): void {
  api.route('GET', '/v1/csms', async () => c.csms.list())
  api.route('POST', '/v1/csms', async (req) => {
    return c.csms.create(parseCsmCreateRequest(req.body, 'cannot create the CSM'))
  }, 'operator')
  api.route('GET', '/v1/csms/:name', async (req) => c.csms.show(req.params.name!))
  api.route('PATCH', '/v1/csms/:name', async (req) => {
    return c.csms.update(req.params.name!, parseCsmUpdateRequest(req.body, `cannot update CSM "${req.params.name!.slice(0, 63)}"`))
  }, 'operator')
  api.route('DELETE', '/v1/csms/:name', async (req) => c.csms.delete(req.params.name!, req.query.get('force') === 'true'), 'operator')

  api.route('GET', '/v1/csm-pools', async () => c.pools.list())
  api.route('POST', '/v1/csm-pools', async (req) => {
    const b = bodyObject(req.body)
    return c.pools.create(str(b, 'name')!, strList(b, 'csms', 1000, 63) ?? [])
  }, 'operator')
  api.route('GET', '/v1/csm-pools/:name', async (req) => c.pools.show(req.params.name!))
  api.route('PATCH', '/v1/csm-pools/:name', async (req) => {
    const b = bodyObject(req.body)
    return c.pools.change(req.params.name!, strList(b, 'add', 1000, 63) ?? [], strList(b, 'remove', 1000, 63) ?? [])
  }, 'operator')
  api.route('DELETE', '/v1/csm-pools/:name', async (req) => c.pools.delete(req.params.name!), 'operator')

  api.route('GET', '/v1/registries', async () => c.registries.list())
  api.route('POST', '/v1/registries', async (req) => {
    const b = bodyObject(req.body)
    const username = str(b, 'username', false)
    const password = str(b, 'password', false)
    return c.registries.add({
      name: str(b, 'name')!, url: str(b, 'url')!, insecure: bool(b, 'insecure'),
      ...(username !== undefined ? { username } : {}), ...(password !== undefined ? { password } : {}),
    })
  })
  api.route('DELETE', '/v1/registries/:name', async (req) => c.registries.remove(req.params.name!))
  api.route('GET', '/v1/registry-policy', async () => c.registries.policy())
  api.route('POST', '/v1/registry-policy', async (req) => {
    const b = bodyObject(req.body)
    return c.registries.changePolicy(str(b, 'kind')! as 'allow' | 'deny', str(b, 'pattern')!, bool(b, 'remove'))
  })

  api.route('GET', '/v1/images', async () => c.images.list())
  api.route('POST', '/v1/images', async (req) => {
    const b = bodyObject(req.body)
    const csm = str(b, 'csm', false)
    const node = str(b, 'node', false)
    return c.images.pull({ ref: str(b, 'ref')!, ...(csm !== undefined ? { csm } : {}), ...(node !== undefined ? { node } : {}) })
  }, 'operator')
  api.route('DELETE', '/v1/images', async (req) => {
    const ref = req.query.get('ref')
    if (!ref) throw new TessError('TESS_E_BAD_REQUEST', 'query parameter "ref" is required', 'DELETE /v1/images?ref=REF')
    const node = req.query.get('node')
    return c.images.remove({ ref, ...(node !== null ? { node } : {}) })
  }, 'operator')

  api.route('GET', '/v1/containers', async () => c.containers.list())
  api.route('POST', '/v1/containers', async (req) => {
    return c.containers.run(parseRunRequest(req.body, 'cannot run the container'))
  }, 'operator')
  api.route('GET', '/v1/containers/:name', async (req) => c.containers.show(req.params.name!))
  api.route('POST', '/v1/containers/:name/:op', async (req) => {
    const op = req.params.op!
    if (op === 'move') {
      const b = bodyObject(req.body)
      return c.containers.move(req.params.name!, checkName('CSM', str(b, 'csm')!), int(b, 'timeoutMs', 0, containerStopTimeoutMsMax, false) ?? 10_000, bool(b, 'force'))
    }
    if (op !== 'start' && op !== 'stop' && op !== 'pause' && op !== 'resume') throw new TessError('TESS_E_NOT_FOUND', `no container operation "${op.slice(0, 40)}"`, 'start, stop, pause or resume')
    const timeoutMs = op === 'stop' ? int(bodyObject(req.body), 'timeoutMs', 0, containerStopTimeoutMsMax, false) : undefined
    return c.containers.op(req.params.name!, op, timeoutMs)
  }, 'operator')
  api.route('DELETE', '/v1/containers/:name', async (req) => c.containers.remove(req.params.name!, req.query.get('force') === 'true'), 'operator')
  api.route('GET', '/v1/containers/:name/logs', async (req) => c.containers.logs(req.params.name!, queryInt(req, 'offset', Number.MAX_SAFE_INTEGER), queryInt(req, 'tail', logTailLinesMax)))
  api.route('GET', '/v1/volumes', async () => c.volumes.list())
  api.route('POST', '/v1/volumes', async (req) => {
    const b = bodyObject(req.body)
    return c.volumes.create({ name: str(b, 'name')!, sizeBytes: int(b, 'sizeBytes', 1, vdiskSizeMaxBytes)!, rf: int(b, 'rf', 1, rfMax, false) ?? 1, encrypted: bool(b, 'encrypted') })
  }, 'operator')
  api.route('GET', '/v1/volumes/:name', async (req) => c.volumes.show(req.params.name!))
  api.route('DELETE', '/v1/volumes/:name', async (req) => c.volumes.delete(req.params.name!), 'operator')
  api.route('GET', '/v1/stats', async (req) => c.containers.stats(req.query.get('container') ?? undefined))
}
