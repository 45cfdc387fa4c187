import { errorMessage } from '../../lib/errors.js'
import type { KeyKeeper } from '../vdisk/keykeeper.js'
import { bodyObject, type ApiServer } from '../../lib/http-server.js'
import { clusterKeyField, type NodeHandlers } from '../../lib/rpc/node-ops.js'

export interface UnlockAnswer {
  /** nodes that hold the cluster key now (this one first) */
  unlockedNodes: string[]
  /** up nodes that could not be given it, and why */
  failedNodes: Array<{ node: string, error: string }>
}

/**
 * `POST /v1/keys/unlock` (admin): the operator gives the cluster key; this CVM checks it against
 * the cluster's check value, keeps it in memory, and hands it to every other CVM that is up over
 * their node operations (mutual TLS). A CVM that starts later asks the others for it.
 */
export function registerKeyRoutes(api: ApiServer, keeper: KeyKeeper, self: string, others: () => string[], give: (node: string, keyB64: string) => Promise<void>): void {
  api.route('POST', '/v1/keys/unlock', async (req): Promise<UnlockAnswer> => {
    const key = Buffer.from(clusterKeyField(bodyObject(req.body)), 'base64')
    await keeper.unlock(key)
    const out: UnlockAnswer = { unlockedNodes: [self], failedNodes: [] }
    await Promise.all(others().map(async (n) => {
      try {
        await give(n, key.toString('base64'))
        out.unlockedNodes.push(n)
      } catch (e) {
        out.failedNodes.push({ node: n, error: errorMessage(e) })
      }
    }))
    return out
  }, 'admin')
}

/** The node operations of the cluster key: another CVM gives it, or asks for it. */
export function keyNodeOps(keeper: KeyKeeper): Pick<NodeHandlers, 'keys.unlock' | 'keys.get'> {
  return {
    'keys.unlock': async ({ key }) => {
      await keeper.unlock(Buffer.from(key, 'base64'))
      return { unlocked: true }
    },
    'keys.get': async () => ({ key: keeper.current?.toString('base64') ?? null }),
  }
}
