import { TessError } from '../../lib/errors.js'
import type { ContainerControl } from '../control/cluster.js'
import { parseCsmCreateRequest, parseCsmUpdateRequest, parseRunRequest } from '../../lib/container-spec.js'
import { bodyObject, bool, int, queryInt, str, strList, type ApiServer } from '../../lib/http-server.js'
import { containerStopTimeoutMsMax, logTailLinesMax, rfMax, vdiskSizeMaxBytes } from '../../lib/limits.js'

/** The container half of the management API: CSMs, pools, registries, images, containers. */
export function registerCsmRoutes(api: ApiServer, c: ContainerControl): void {
  api.route('GET', '/v1/csms', async () => c.listCsms())
  api.route('POST', '/v1/csms', async (req) => {
    return c.createCsm(parseCsmCreateRequest(req.body, 'cannot create the CSM'))
  }, 'operator')
  api.route('GET', '/v1/csms/:name', async (req) => c.showCsm(req.params.name!))
  api.route('PATCH', '/v1/csms/:name', async (req) => {
    return c.updateCsm(req.params.name!, parseCsmUpdateRequest(req.body, `cannot update CSM "${req.params.name!.slice(0, 63)}"`))
  }, 'operator')
  api.route('DELETE', '/v1/csms/:name', async (req) => c.deleteCsm(req.params.name!, req.query.get('force') === 'true'), 'operator')

  api.route('GET', '/v1/csm-pools', async () => c.listPools())
  api.route('POST', '/v1/csm-pools', async (req) => {
    const b = bodyObject(req.body)
    return c.createPool(str(b, 'name')!, strList(b, 'csms', 1000, 63) ?? [])
  }, 'operator')
  api.route('GET', '/v1/csm-pools/:name', async (req) => c.showPool(req.params.name!))
  api.route('PATCH', '/v1/csm-pools/:name', async (req) => {
    const b = bodyObject(req.body)
    return c.changePool(req.params.name!, strList(b, 'add', 1000, 63) ?? [], strList(b, 'remove', 1000, 63) ?? [])
  }, 'operator')
  api.route('DELETE', '/v1/csm-pools/:name', async (req) => c.deletePool(req.params.name!), 'operator')

  api.route('GET', '/v1/registries', async () => c.listRegistries())
  api.route('POST', '/v1/registries', async (req) => {
    const b = bodyObject(req.body)
    const username = str(b, 'username', false)
    const password = str(b, 'password', false)
    return c.addRegistry({
      name: str(b, 'name')!, url: str(b, 'url')!, insecure: bool(b, 'insecure'),
      ...(username !== undefined ? { username } : {}), ...(password !== undefined ? { password } : {}),
    })
  })
  api.route('DELETE', '/v1/registries/:name', async (req) => c.removeRegistry(req.params.name!))
  api.route('GET', '/v1/registry-policy', async () => c.policy())
  api.route('POST', '/v1/registry-policy', async (req) => {
    const b = bodyObject(req.body)
    return c.changePolicy(str(b, 'kind')! as 'allow' | 'deny', str(b, 'pattern')!, bool(b, 'remove'))
  })

  api.route('GET', '/v1/images', async () => c.images())
  api.route('POST', '/v1/images', async (req) => {
    const b = bodyObject(req.body)
    const csm = str(b, 'csm', false)
    const node = str(b, 'node', false)
    return c.pull({ ref: str(b, 'ref')!, ...(csm !== undefined ? { csm } : {}), ...(node !== undefined ? { node } : {}) })
  }, 'operator')
  api.route('DELETE', '/v1/images', async (req) => {
    const ref = req.query.get('ref')
    if (!ref) throw new TessError('TESS_E_BAD_REQUEST', 'query parameter "ref" is required', 'DELETE /v1/images?ref=REF')
    const node = req.query.get('node')
    return c.removeImage({ ref, ...(node !== null ? { node } : {}) })
  }, 'operator')

  api.route('GET', '/v1/containers', async () => c.listContainers())
  api.route('POST', '/v1/containers', async (req) => {
    return c.run(parseRunRequest(req.body, 'cannot run the container'))
  }, 'operator')
  api.route('GET', '/v1/containers/:name', async (req) => c.showContainer(req.params.name!))
  api.route('POST', '/v1/containers/:name/:op', async (req) => {
    const op = req.params.op!
    if (op === 'move') {
      const b = bodyObject(req.body)
      return c.move(req.params.name!, str(b, 'csm')!, int(b, 'timeoutMs', 0, containerStopTimeoutMsMax, false) ?? 10_000, bool(b, 'force'))
    }
    if (op !== 'start' && op !== 'stop' && op !== 'pause' && op !== 'resume') throw new TessError('TESS_E_NOT_FOUND', `no container operation "${op.slice(0, 40)}"`, 'start, stop, pause or resume')
    const timeoutMs = op === 'stop' ? int(bodyObject(req.body), 'timeoutMs', 0, containerStopTimeoutMsMax, false) : undefined
    return c.containerOp(req.params.name!, op, timeoutMs)
  }, 'operator')
  api.route('DELETE', '/v1/containers/:name', async (req) => c.removeContainer(req.params.name!, req.query.get('force') === 'true'), 'operator')
  api.route('GET', '/v1/containers/:name/logs', async (req) => c.logs(req.params.name!, queryInt(req, 'offset', Number.MAX_SAFE_INTEGER), queryInt(req, 'tail', logTailLinesMax)))
  api.route('GET', '/v1/volumes', async () => c.listVolumes())
  api.route('POST', '/v1/volumes', async (req) => {
    const b = bodyObject(req.body)
    return c.createVolume({ name: str(b, 'name')!, sizeBytes: int(b, 'sizeBytes', 1, vdiskSizeMaxBytes)!, rf: int(b, 'rf', 1, rfMax, false) ?? 1, encrypted: bool(b, 'encrypted') })
  }, 'operator')
  api.route('GET', '/v1/volumes/:name', async (req) => c.showVolume(req.params.name!))
  api.route('DELETE', '/v1/volumes/:name', async (req) => c.deleteVolume(req.params.name!), 'operator')
  api.route('GET', '/v1/stats', async (req) => c.stats(req.query.get('container') ?? undefined))
}
