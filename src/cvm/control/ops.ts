import type { NodeHandlers, NodeOp } from '../../lib/rpc/node-ops.js'
import type { NodeAgent } from './agent.js'

/** The node operations of the container side: every one but the vDisk, pool, curator, cluster key and certificate ones. */
export type ContainerNodeOp = Exclude<NodeOp, `vdisk.${string}` | `pool.${string}` | `curator.${string}` | 'keys.unlock' | 'keys.get' | 'pki.reload'>

/**
 * What one node's agent does for the cluster: called in-process for this node, or by another
 * CVM over the API (POST /v1/node-ops/OP, for nodes only). Requests arrive checked
 * (lib/rpc/node-ops.ts: nodeOpRequests); the CSM daemon checks a container spec again.
 */
export function containerNodeOps(agent: NodeAgent): Pick<NodeHandlers, ContainerNodeOp> {
  const ops: Pick<NodeHandlers, ContainerNodeOp> = {
    'node.capacity': async () => agent.capacity(),
    'csm.ensure': async ({ name }) => agent.ensure(name),
    'csm.remove': async ({ name, force }) => ({ removed: await agent.removeLocal(name, force) }),
    'csm.limits': async ({ name, cpus, memoryBytes }) => {
      await agent.setLimits(name, cpus, memoryBytes)
      return {}
    },
    'csm.status': async () => agent.status(),
    'image.pull': async ({ ref }) => agent.pull(ref),
    'image.list': async () => agent.images(),
    'image.pulls': async () => agent.pulls(),
    'image.remove': async ({ ref }) => ({ removed: await agent.removeImage(ref) }),
    'container.run': async ({ csm, spec }) => {
      const image = await agent.ensureImage(spec.image)
      return agent.csm(csm).run({ ...spec, image })
    },
    'container.get': async ({ csm, id }) => agent.csm(csm).inspect(id),
    'container.op': async ({ csm, id, op, timeoutMs }) => agent.csm(csm).op(id, op, timeoutMs),
    'container.remove': async ({ csm, id, force }) => agent.csm(csm).remove(id, force),
    'container.logs': async ({ csm, id, ...query }) => agent.csm(csm).logs(id, query),
    'container.freeze': async ({ csm, id, volume, frozen }) => agent.csm(csm).freezeVolume(id, volume, frozen),
    'stats': async ({ csm }) => agent.stats(csm),
  }
  // everything but the image store needs the container side (cgroups, the OCI runtime)
  return guarded(ops, (op) => {
    if (op.startsWith('image.')) agent.requireImageStore()
    else agent.requireContainers()
  })
}

/** The same handlers, each running `check(op)` first. */
function guarded<T extends Partial<NodeHandlers>>(table: T, check: (op: string) => void): T {
  type Untyped = (req: never) => Promise<unknown>
  const out: Record<string, Untyped> = {}
  for (const [op, h] of Object.entries(table) as Array<[string, Untyped]>) {
    out[op] = async (req) => {
      check(op)
      return h(req)
    }
  }
  return out as T
}
