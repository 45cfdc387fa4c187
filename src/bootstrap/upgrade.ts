/**
 * `tess cluster upgrade`: every node of a cluster on hosts moves to the bundle of the tess that runs
 * the command, one node at a time, with the others serving I/O. For each node whose CVM reports
 * another bundle: the bundle is installed over SSH (uploaded once, verified, `current` switched:
 * the running daemons are not touched), the node's supervisor is stopped (its CSM daemons, CVM and
 * etcd member stop in order; the CVM flushes and gives up its vDisk ownership and curator leases,
 * so the next I/O through another node takes a vDisk over at once; containers keep running) and
 * started again from the new bundle, then the upgrade waits until that node reports the new
 * bundle with every daemon healthy and the whole cluster is healthy again (no extent group short
 * of its RF: what was written while the node was down is re-protected) before it goes on.
 *
 * It refuses to start unless every node is up and nothing is under-replicated, and refuses a node
 * whose containers have volumes attached (their NBD chain goes through that node's CVM). A node
 * that does not come back healthy in time stops it with a report of what was done; nodes already
 * on the new bundle are skipped by the next run, which goes on from there. `tess cluster status`
 * shows each node's version and warns while they differ.
 */
import path from 'node:path'
import type { ApiClient } from '../lib/apiclient.js'
import { configDir, type ClusterContext } from '../lib/contexts.js'
import type { ContainerView } from '../lib/csm-types.js'
import { TessError, errorMessage } from '../lib/errors.js'
import type { ClusterHealth, ClusterStatus, NodeInfo } from '../lib/types.js'
import { bundleLabel, protocolOfOlderCvms, protocolsCompatible, runningVersion, type ProtocolRange, type TessVersion } from '../lib/version.js'
import { buildBundle, installBundle, type Bundle } from './bundle.js'
import { connectHost, remoteDataDir, repoRoot, startSupervisor, stopSupervisor } from './remote.js'

/** how long a restarted node may take to report the new bundle, healthy, with the cluster whole again */
export const upgradeNodeTimeoutMsDefault = 10 * 60_000
/** between two looks at the cluster while waiting */
const pollMs = 1000

export interface UpgradePlanStep {
  node: string
  /** what the node runs now (null: it did not say) */
  from: TessVersion | null
  /** upgrade: it gets the new bundle; current: it runs it already */
  action: 'upgrade' | 'current'
}

export interface UpgradedNode {
  node: string
  from: TessVersion | null
  /** from the restart until it reported the new bundle with its daemons healthy */
  restartMs: number
  /** from the restart until the cluster was healthy again */
  healthyMs: number
}

export interface UpgradeReport {
  dryRun: boolean
  target: TessVersion
  plan: UpgradePlanStep[]
  /** the nodes upgraded by this run, in order */
  upgraded: UpgradedNode[]
}

export interface UpgradeOptions {
  dryRun: boolean
  /** only these nodes (default: every node) */
  nodes?: string[]
  nodeTimeoutMs: number
  progress: (node: string, step: string) => void
}

/** The nodes to look at, checked against the cluster. */
export function chosenNodes(st: ClusterStatus, names: string[] | undefined): NodeInfo[] {
  if (names === undefined || names.length === 0) return st.nodes
  const unknown = names.filter((n) => !st.nodes.some((x) => x.name === n))
  if (unknown.length > 0) throw new TessError('TESS_E_NOT_FOUND', `cluster "${st.name}" has no node ${unknown.join(', ')}`, `its nodes: ${st.nodes.map((n) => n.name).join(', ')}`)
  return st.nodes.filter((n) => names.includes(n.name))
}

/** Why the cluster cannot take an upgrade now (undefined: it can). */
export function notReady(st: ClusterStatus, h: ClusterHealth): string | undefined {
  const down = st.nodes.filter((n) => n.state !== 'up').map((n) => n.name)
  if (down.length > 0) return `node(s) ${down.join(', ')} down`
  const sick = st.nodes.flatMap((n) => n.daemons.filter((d) => !d.healthy).map((d) => `${d.name} of ${n.name}`))
  if (sick.length > 0) return `daemon(s) not healthy: ${sick.join(', ')}`
  if (h.state !== 'healthy') {
    return `the cluster is ${h.state}: ${h.total.underReplicated} extent group(s) under-replicated, ${h.total.lost} without a copy up (${h.total.bytesToReprotect} bytes to re-protect)`
  }
  return undefined
}

/**
 * Nodes whose protocol this release cannot work beside during the upgrade (undefined: none). A
 * node that reports no protocol runs a release from before protocols were reported: protocol 1.
 */
export function protocolGap(nodes: NodeInfo[], target: TessVersion): string | undefined {
  const ours = target.protocol ?? protocolOfOlderCvms
  const theirs = (n: NodeInfo): ProtocolRange => n.version?.protocol ?? protocolOfOlderCvms
  const apart = nodes.filter((n) => !protocolsCompatible(theirs(n), ours))
  if (apart.length === 0) return undefined
  return `it speaks protocol ${ours.current} (and works beside ${ours.oldest} and later), node(s) ${apart.map((n) => `${n.name} (protocol ${theirs(n).current})`).join(', ')} cannot run beside it`
}

/** Containers with volumes on `node`: their volumes reach the vDisk through that node's CVM. */
async function containersWithVolumes(client: ApiClient, node: string): Promise<string[]> {
  const all = await client.get<ContainerView[]>('/v1/containers')
  return all.filter((c) => c.node === node && c.volumes.length > 0 && c.status !== 'exited').map((c) => c.name)
}

async function restartOn(ctx: ClusterContext, node: string, bundle: Bundle, progress: (step: string) => void): Promise<void> {
  const host = ctx.remote!.hosts.find((h) => h.name === node)
  if (host === undefined) throw new TessError('TESS_E_NOT_FOUND', `node ${node} is not among the hosts of the context of cluster "${ctx.name}"`, 'add it again (tess host add) or edit the context')
  const t = await connectHost(ctx.remote!, host.address)
  try {
    progress(`installing the bundle (${(bundle.sizeBytes / 1048576).toFixed(0)} MiB)`)
    await installBundle(t, bundle, { remoteDir: `${remoteDataDir}/bundle` })
    progress('stopping its daemons')
    await stopSupervisor(t)
    progress('starting its daemons on the new bundle')
    await startSupervisor(t)
  } finally {
    await t.close().catch(() => undefined) // the SSH session is done either way
  }
}

/**
 * Wait until `node` reports `sha256` with every daemon healthy, then until the cluster is healthy.
 * Errors of single looks (the node's API restarting, etcd electing) are retried until the deadline.
 */
export async function waitHealthy(client: ApiClient, node: string, sha256: string, timeoutMs: number, progress: (step: string) => void, intervalMs = pollMs): Promise<{ restartMs: number, healthyMs: number }> {
  const t0 = Date.now()
  const deadline = t0 + timeoutMs
  let restartMs: number | undefined
  let why = 'no answer yet'
  progress('waiting for it to report the new bundle')
  while (Date.now() < deadline) {
    try {
      const st = await client.get<ClusterStatus>('/v1/cluster/status', { timeoutMs: 10_000 })
      const n = st.nodes.find((x) => x.name === node)
      if (n === undefined) throw new TessError('TESS_E_NOT_FOUND', `node ${node} left the cluster during its upgrade`, 'see tess cluster status')
      if (restartMs === undefined) {
        if (n.state !== 'up') why = 'it is down'
        else if (n.version?.bundle !== sha256) why = `it reports bundle ${bundleLabel(n.version?.bundle)}`
        else if (n.daemons.some((d) => !d.healthy)) why = `daemon(s) ${n.daemons.filter((d) => !d.healthy).map((d) => d.name).join(', ')} not healthy`
        else {
          restartMs = Date.now() - t0
          progress('waiting until nothing is under-replicated')
        }
      }
      if (restartMs !== undefined) {
        const h = await client.get<ClusterHealth>('/v1/cluster/health', { timeoutMs: 10_000 })
        const gap = notReady(st, h)
        if (gap === undefined) return { restartMs, healthyMs: Date.now() - t0 }
        why = gap
      }
    } catch (e) {
      if (e instanceof TessError && e.code === 'TESS_E_NOT_FOUND') throw e
      why = errorMessage(e)
    }
    await new Promise((r) => setTimeout(r, intervalMs))
  }
  throw new TessError('TESS_E_TIMEOUT', `node ${node} was not healthy ${Math.round(timeoutMs / 1000)} s after its restart on the new bundle: ${why}`,
    `see the node's logs (${remoteDataDir}/logs on its host); a slow repair may need a longer --timeout`)
}

export async function upgradeCluster(ctx: ClusterContext, client: ApiClient, o: UpgradeOptions): Promise<UpgradeReport> {
  if (ctx.local !== undefined || ctx.remote === undefined) {
    throw new TessError('TESS_E_PRECONDITION', `cluster "${ctx.name}" is an embedded cluster: its daemons run from this tess's own files, there is no bundle to install`,
      'to take up a new tess, stop the node (kill -TERM the pid in <data-dir>/run/supervisor.pid) and start it again with its boot entry point (README: Starting a node at boot)')
  }
  const st = await client.get<ClusterStatus>('/v1/cluster/status')
  const nodes = chosenNodes(st, o.nodes)
  const bundle = await buildBundle(repoRoot, path.join(configDir(), 'bundles'))
  const target: TessVersion = { ...runningVersion(), bundle: bundle.sha256 }
  const plan: UpgradePlanStep[] = nodes.map((n) => ({ node: n.name, from: n.version, action: n.version?.bundle === bundle.sha256 ? 'current' : 'upgrade' }))
  const report: UpgradeReport = { dryRun: o.dryRun, target, plan, upgraded: [] }
  if (o.dryRun || plan.every((p) => p.action === 'current')) return report
  const apart = protocolGap(nodes, target)
  if (apart !== undefined) throw new TessError('TESS_E_PRECONDITION', `cannot upgrade cluster "${st.name}" to tess ${target.tess}: ${apart}`, 'upgrade through a release in between first (docs/releases.md lists them)')
  const gap = notReady(st, await client.get<ClusterHealth>('/v1/cluster/health'))
  if (gap !== undefined) {
    throw new TessError('TESS_E_PRECONDITION', `cannot upgrade cluster "${st.name}": ${gap}`, 'an upgrade takes one node at a time out of service and needs every other copy in place: bring the nodes back or wait for the repair (tess cluster health), then run it again')
  }
  for (const step of plan.filter((p) => p.action === 'upgrade')) {
    const progress = (s: string) => o.progress(step.node, s)
    const attached = await containersWithVolumes(client, step.node)
    if (attached.length > 0) {
      throw stopped(report, step.node, new TessError('TESS_E_PRECONDITION', `node ${step.node} runs container(s) with volumes attached through its CVM: ${attached.join(', ')}`,
        'move them to a CSM on another node first (tess container move NAME --csm CSM, or tess csm move) or stop them, then run the upgrade again'))
    }
    try {
      await restartOn(ctx, step.node, bundle, progress)
      const w = await waitHealthy(client, step.node, bundle.sha256, o.nodeTimeoutMs, progress)
      report.upgraded.push({ node: step.node, from: step.from, restartMs: w.restartMs, healthyMs: w.healthyMs })
    } catch (e) {
      throw stopped(report, step.node, e)
    }
  }
  return report
}

/** The error that stops an upgrade at `node`: what was done, what was not, how to go on. */
export function stopped(r: UpgradeReport, node: string, e: unknown): TessError {
  const done = r.upgraded.map((u) => u.node)
  const todo = r.plan.filter((p) => p.action === 'upgrade' && !done.includes(p.node)).map((p) => p.node)
  const code = e instanceof TessError ? e.code : 'TESS_E_IO'
  const hint = e instanceof TessError && e.hint !== '' ? `${e.hint}; ` : ''
  return new TessError(code, `the upgrade stopped at node ${node}: ${errorMessage(e)}. Upgraded: ${done.join(', ') || 'none'}; not yet: ${todo.join(', ')}`,
    `${hint}see tess cluster status and tess cluster health; run tess cluster upgrade again to go on (nodes on the new bundle are skipped)`)
}
