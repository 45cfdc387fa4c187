import { TessError, errorMessage } from '../../lib/errors.js'
import type { KeyKeeper } from '../vdisk/keykeeper.js'
import { bodyObject, str, type ApiServer } from '../../lib/http-server.js'

export interface UnlockAnswer {
  /** nodes that hold the cluster key now (this one first) */
  unlockedNodes: string[]
  /** up nodes that could not be given it, and why */
  failedNodes: Array<{ node: string, error: string }>
}

function keyFrom(b: Record<string, unknown>): Buffer {
  const text = str(b, 'key')!
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(text)) throw new TessError('TESS_E_INVALID', 'the cluster key must be base64', 'give the key file `tess vdisk create --encrypted` wrote')
  return Buffer.from(text, 'base64')
}

/**
 * `POST /v1/keys/unlock` (admin): the operator gives the cluster key; this CVM checks it against
 * the cluster's check value, keeps it in memory, and hands it to every other CVM that is up over
 * their node operations (mutual TLS). A CVM that starts later asks the others for it.
 */
export function registerKeyRoutes(api: ApiServer, keeper: KeyKeeper, self: string, others: () => string[], give: (node: string, keyB64: string) => Promise<void>): void {
  api.route('POST', '/v1/keys/unlock', async (req): Promise<UnlockAnswer> => {
    const key = keyFrom(bodyObject(req.body))
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
export function keyNodeOps(keeper: KeyKeeper): Record<string, (b: Record<string, unknown>) => Promise<unknown>> {
  return {
    'keys.unlock': async (b) => {
      await keeper.unlock(keyFrom(b))
      return { unlocked: true }
    },
    'keys.get': async () => ({ key: keeper.current?.toString('base64') ?? null }),
  }
}
