import { TessError } from '../../common/errors.js'
import type { NodeConfig } from '../../common/nodeconfig.js'
import type { HealthInfo } from '../../common/types.js'
import type { NodeService } from '../node.js'
import type { DiskService } from '../pool/disks.js'
import type { VdiskService } from '../vdisk/service.js'
import { bodyObject, int, str, type ApiServer } from './server.js'
import { rfMax, vdiskSizeMaxBytes } from '../../common/limits.js'

export const apiVersion = '0.1.0'

/** The management API routes (see the README's API section). */
export function registerRoutes(api: ApiServer, s: { cfg: NodeConfig, node: NodeService, disks: DiskService, vdisks: VdiskService }): void {
  api.route('GET', '/v1/health', async (): Promise<HealthInfo> => ({
    node: s.cfg.nodeName,
    clusterName: s.cfg.clusterName,
    pid: process.pid,
    etcd: await s.node.etcdHealthy(),
    version: apiVersion,
  }))

  api.route('GET', '/v1/cluster/status', async () => {
    const [pool, vdisks] = await Promise.all([s.disks.pool(), s.vdisks.list()])
    return s.node.status(pool, vdisks.length)
  })

  api.route('GET', '/v1/disks', async () => s.disks.list())
  api.route('POST', '/v1/disks', async (req) => {
    const b = bodyObject(req.body)
    return s.disks.add(str(b, 'path')!, str(b, 'node', false) ?? s.cfg.nodeName)
  })
  api.route('DELETE', '/v1/disks', async (req) => {
    const p = req.query.get('path')
    if (!p) throw new TessError('TESS_E_BAD_REQUEST', 'query parameter "path" is required', 'DELETE /v1/disks?path=/the/disk')
    return s.disks.remove(p, req.query.get('node') ?? undefined)
  })
  api.route('GET', '/v1/storage-pool', async () => s.disks.pool())

  api.route('GET', '/v1/vdisks', async () => s.vdisks.list())
  api.route('POST', '/v1/vdisks', async (req) => {
    const b = bodyObject(req.body)
    return s.vdisks.create(str(b, 'name')!, int(b, 'sizeBytes', 1, vdiskSizeMaxBytes)!, int(b, 'rf', 1, rfMax, false) ?? 1)
  })
  api.route('GET', '/v1/vdisks/:name', async (req) => s.vdisks.show(req.params.name!))
  api.route('PATCH', '/v1/vdisks/:name', async (req) => {
    const b = bodyObject(req.body)
    return s.vdisks.resize(req.params.name!, int(b, 'sizeBytes', 1, vdiskSizeMaxBytes)!)
  })
  api.route('DELETE', '/v1/vdisks/:name', async (req) => s.vdisks.delete(req.params.name!, req.query.get('force') === 'true'))
}
