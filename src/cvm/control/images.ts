import type { ImageInfo, ImagePullProgress, ImagePullResult, ImageRemoveResult } from '../../lib/csm-types.js'
import { TessError, errorMessage, isTessError } from '../../lib/errors.js'
import { checkName } from '../../lib/names.js'
import type { PullAnswer } from '../../lib/rpc/node-ops.js'
import { canonicalRef } from './agent.js'
import type { ControlContext } from './context.js'

/** an image pull (and a container run, which may pull) may take this long on a slow registry */
export const imagePullTimeoutMs = 30 * 60_000
/** a node that does not tell its pulls in this time is left out of the view */
const pullsTimeoutMs = 5_000

/** Images: pulled into, listed from and removed from the nodes' image stores (node operations image.*). */
export class Images {
  constructor(private readonly ctx: ControlContext) {}

  /** The nodes an image operation goes to: a CSM's, a named one (up), or every up node. */
  private async nodes(req: { csm?: string, node?: string }): Promise<string[]> {
    if (req.csm !== undefined && req.node !== undefined) throw new TessError('TESS_E_INVALID', 'give a CSM or a host, not both', 'leave out one of --csm and --host')
    if (req.csm !== undefined) return [(await this.ctx.csmRecord(checkName('CSM', req.csm))).node]
    if (req.node !== undefined) {
      const n = await this.ctx.nodeRecord(req.node)
      if (!(await this.ctx.upNodes()).includes(n.name)) throw new TessError('TESS_E_UNREACHABLE', `node ${n.name} is down`, 'see `tess cluster status`')
      return [n.name]
    }
    return this.ctx.upNodes()
  }

  async pull(req: { ref: string, csm?: string, node?: string }): Promise<ImagePullResult> {
    canonicalRef(req.ref) // a malformed reference is refused before any node is asked
    const nodes = await this.nodes(req)
    const results = await Promise.allSettled(nodes.map((n) => this.ctx.call(n, 'image.pull', { ref: req.ref }, imagePullTimeoutMs)))
    const failed = results.findIndex((r) => r.status === 'rejected')
    if (failed >= 0) {
      const e = (results[failed] as PromiseRejectedResult).reason as unknown
      if (nodes.length === 1) throw e
      const t = isTessError(e) ? e : new TessError('TESS_E_IO', errorMessage(e), `see cvm.log on node ${nodes[failed]}`)
      throw new TessError(t.code, `on node ${nodes[failed]}: ${t.message}`, t.hint)
    }
    const ok = results.map((r) => (r as PromiseFulfilledResult<PullAnswer>).value)
    const first = ok[0]!
    return {
      ref: first.ref, digest: first.digest, sizeBytes: first.sizeBytes, layers: first.layers, platform: first.platform,
      nodes: ok.map((a, i) => ({ node: nodes[i]!, downloadedBytes: a.downloadedBytes, seconds: a.seconds })),
    }
  }

  /**
   * The pulls running or waiting on the up nodes, how far each is; `ref` keeps those of the image
   * it names (in any spelling: `busybox` is `docker.io/busybox:latest`). A node that cannot tell
   * (down since, its container side unavailable, or a release before pulls were reported) is
   * left out: progress is a view, not a check.
   */
  async pulls(ref?: string): Promise<ImagePullProgress[]> {
    const wanted = ref !== undefined ? canonicalRef(ref) : undefined
    const nodes = await this.ctx.upNodes()
    const each = await Promise.all(nodes.map(async (node) => {
      try {
        return (await this.ctx.call(node, 'image.pulls', {}, pullsTimeoutMs)).map((p) => ({ ...p, node }))
      } catch {
        // see above: such a node's pulls are simply not shown
        return []
      }
    }))
    return each.flat().filter((p) => wanted === undefined || sameImage(p.ref, wanted))
  }

  async list(): Promise<ImageInfo[]> {
    const nodes = await this.ctx.upNodes()
    const all = await Promise.all(nodes.map((n) => this.ctx.call(n, 'image.list', {})))
    return all.flat().sort((a, b) => a.ref.localeCompare(b.ref) || a.node.localeCompare(b.node))
  }

  async remove(req: { ref: string, node?: string }): Promise<ImageRemoveResult> {
    const ref = canonicalRef(req.ref)
    const nodes = await this.nodes(req.node !== undefined ? { node: req.node } : {})
    const done: string[] = []
    for (const n of nodes) {
      if ((await this.ctx.call(n, 'image.remove', { ref })).removed) done.push(n)
    }
    if (done.length === 0) throw new TessError('TESS_E_NOT_FOUND', `image ${ref} is not on ${req.node !== undefined ? `node ${req.node}` : 'any node'}`, 'see `tess image list`')
    return { ref, nodes: done }
  }
}

/** Whether a pull's reference (as it was asked for) names the image of canonical reference `canon`. */
function sameImage(ref: string, canon: string): boolean {
  try {
    return canonicalRef(ref) === canon
  } catch {
    // a pull runs only for a well-formed reference; one that does not parse is not this image
    return false
  }
}
