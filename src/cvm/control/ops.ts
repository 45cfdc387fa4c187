import { TessError } from '../../lib/errors.js'
import { checkName } from '../../lib/names.js'
import { bool, int, obj, str, type ApiServer } from '../../lib/http-server.js'
import { parseContainerSpec, parseCsmQuota, type ContainerInfo } from '../../lib/container-spec.js'
import { containerStopTimeoutMsMax, csmCallTimeoutMs, logTailLinesMax } from '../../lib/limits.js'
import type { NodeAgent } from './agent.js'

export type NodeOp = (body: Record<string, unknown>) => Promise<unknown>

const idPattern = /^[a-f0-9]{12}$/

function containerId(b: Record<string, unknown>): string {
  const id = str(b, 'id')!
  if (!idPattern.test(id)) throw new TessError('TESS_E_BAD_REQUEST', `bad container id "${id.slice(0, 40)}"`, '12 hex digits')
  return id
}

/**
 * What one node's agent does for the cluster: called in-process for this node, or by another
 * CVM over the API (POST /v1/node-ops/OP, with the cluster's token). Every body is checked.
 */
export function nodeOps(agent: NodeAgent): Record<string, NodeOp> {
  const csm = (b: Record<string, unknown>) => checkName('CSM', str(b, 'csm')!)
  const ops: Record<string, NodeOp> = {
    'node.capacity': async () => agent.capacity(),
    'csm.ensure': async (b) => agent.ensure(checkName('CSM', str(b, 'name')!)),
    'csm.remove': async (b) => ({ removed: await agent.removeLocal(checkName('CSM', str(b, 'name')!), bool(b, 'force')) }),
    'csm.limits': async (b) => {
      const { cpus, memoryBytes } = parseCsmQuota(b, 'node operation csm.limits')
      await agent.setLimits(checkName('CSM', str(b, 'name')!), cpus, memoryBytes)
      return {}
    },
    'csm.status': async () => agent.status(),
    'image.pull': async (b) => agent.pull(str(b, 'ref')!),
    'image.list': async () => agent.images(),
    'image.remove': async (b) => ({ removed: await agent.removeImage(str(b, 'ref')!) }),
    'container.run': async (b) => {
      const name = csm(b)
      const spec = parseContainerSpec(obj(b, 'spec'), 'node operation container.run: field "spec"')
      const image = await agent.ensureImage(spec.image)
      return agent.csm<ContainerInfo>(name, 'POST', '/v1/containers', { ...spec, image }, csmCallTimeoutMs)
    },
    'container.get': async (b) => agent.csm<ContainerInfo>(csm(b), 'GET', `/v1/containers/${containerId(b)}`),
    'container.op': async (b) => {
      const op = str(b, 'op')!
      if (!['start', 'stop', 'pause', 'resume'].includes(op)) throw new TessError('TESS_E_BAD_REQUEST', `unknown container operation "${op.slice(0, 40)}"`, 'one of start, stop, pause, resume')
      const timeoutMs = int(b, 'timeoutMs', 0, containerStopTimeoutMsMax, false)
      return agent.csm<ContainerInfo>(csm(b), 'POST', `/v1/containers/${containerId(b)}/${op}`, timeoutMs !== undefined ? { timeoutMs } : {}, csmCallTimeoutMs)
    },
    'container.remove': async (b) => agent.csm(csm(b), 'DELETE', `/v1/containers/${containerId(b)}${bool(b, 'force') ? '?force=true' : ''}`, undefined, csmCallTimeoutMs),
    'container.logs': async (b) => {
      const offset = int(b, 'offset', 0, Number.MAX_SAFE_INTEGER, false)
      const tail = int(b, 'tail', 0, logTailLinesMax, false)
      const q = new URLSearchParams()
      if (offset !== undefined) q.set('offset', String(offset))
      if (tail !== undefined) q.set('tail', String(tail))
      return agent.csm(csm(b), 'GET', `/v1/containers/${containerId(b)}/logs?${q.toString()}`)
    },
    'stats': async (b) => agent.stats(b.csm !== undefined ? csm(b) : undefined),
  }
  // everything but the image store needs the container side (cgroups, the OCI runtime)
  for (const [name, op] of Object.entries(ops)) {
    const image = name.startsWith('image.')
    ops[name] = async (b) => {
      if (image) agent.requireImageStore()
      else agent.requireContainers()
      return op(b)
    }
  }
  return ops
}

/** Register the node-ops route: the way other CVMs reach this node's agent. */
export function registerNodeOps(api: ApiServer, ops: Record<string, NodeOp>): void {
  api.route('POST', '/v1/node-ops/:op', async (req) => {
    const op = ops[req.params.op!]
    if (op === undefined) throw new TessError('TESS_E_NOT_FOUND', `no node operation "${req.params.op!.slice(0, 40)}"`, 'are all nodes on the same tess version?')
    const b = req.body
    if (b === null || typeof b !== 'object' || Array.isArray(b)) throw new TessError('TESS_E_BAD_REQUEST', 'request body must be a JSON object', 'send a JSON object as the body')
    return op(b as Record<string, unknown>)
  }, 'node')
}
