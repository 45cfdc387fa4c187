import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { saveContext } from '../../../lib/contexts.js'
import { followEvacuation, keyValue, withSpinner } from '../../output.js'
import { cleanRemoteHost, remotePortDefaults } from '../../../bootstrap/remote.js'
import { etcdUrl } from '../../../supervisor/services.js'
import { TessError } from '../../../lib/errors.js'
import { etcdReconfigCallTimeoutMs } from '../../../lib/limits.js'
import type { ClusterStatus, EvacuationProgress } from '../../../lib/types.js'
import type { CsmInfo, CsmMoveResult } from '../../../lib/csm-types.js'
import { containerStopSlackMs, imagePullTimeoutMs } from '../../csm-input.js'

export interface HostRemoved {
  node: string
  address: string
  egroupsMoved: number
  /** with --evacuate: the host's CSMs, moved with their containers to other nodes */
  csmsMoved: CsmMoveResult[]
  disksRemoved: string[]
  etcdMemberRemoved: boolean
  cleaned: boolean
  message: string
}

export default class HostRemove extends TessCommand<HostRemoved> {
  static override summary = 'Remove a host from the cluster'
  static override description = `Refuses while the host holds the only healthy copy of any data, or runs CSMs (move them with \`tess csm move\` or --evacuate, or delete them with \`tess csm delete NAME --force\`; the CSMs of a host that is down, once deleted, go with it). With --evacuate, first moves each CSM of the host with its containers and their volumes to another node (as \`tess csm move\`; forced when the host is down: what the volumes hold is what was flushed), then marks the host draining (no new data lands there) and has the owner of every vDisk copy each extent group the host holds to another node, then removes it.

A host running an etcd member leaves etcd too (refused while the members left would not have a quorum of live ones; an even member count is left as it is). Then the host's daemons are stopped and its data removed over SSH (an unreachable host is only forgotten), and the node and its disks are removed from the cluster. Asks first on a terminal; --yes skips the question.`
  static override aliases = ['host:rm']
  static override examples = ['<%= config.bin %> <%= command.id %> node4 --evacuate --yes', '<%= config.bin %> <%= command.id %> 10.0.0.14 --yes --json']
  static override args = {
    host: Args.string({ description: 'Node name or address of the host.', required: true }),
  }

  static override flags = {
    evacuate: Flags.boolean({ description: 'Move the host\'s CSMs with their containers, and copy every extent group on the host, to other nodes first.' }),
    yes: Flags.boolean({ char: 'y', description: 'Do not ask for confirmation.' }),
  }

  protected async exec(): Promise<HostRemoved> {
    const { flags, args } = await this.parseInput(HostRemove)
    const ctx = this.context(flags.cluster)
    const client = this.client(ctx)
    const status = await client.get<ClusterStatus>('/v1/cluster/status')
    const node = status.nodes.find((n) => n.name === args.host || n.address === args.host)
    if (!node) throw new TessError('TESS_E_NOT_FOUND', `host "${args.host}" is not a node of cluster "${ctx.name}"`, 'see `tess host list`')
    if (status.nodes.length === 1) throw new TessError('TESS_E_PRECONDITION', `cannot remove host "${node.name}": it is the only node`, 'destroy the cluster instead: `tess cluster destroy`')
    await this.confirm(`Remove host "${node.name}" (${node.address}) from cluster "${ctx.name}"${flags.evacuate ? ' after moving its data' : ''}?`, flags.yes, `remove host "${node.name}"`)
    // Use another node's API: the one being removed goes away during the command.
    const others = this.client({ ...ctx, endpoints: ctx.endpoints.filter((e) => !e.includes(`//${node.address}:`)) })
    let moved = 0
    const csmsMoved: CsmMoveResult[] = []
    if (flags.evacuate) {
      // the CSMs first (with their containers and volumes), one after the other
      const csms = (await others.get<CsmInfo[]>('/v1/csms')).filter((c) => c.node === node.name)
      for (const c of csms) {
        const r = await withSpinner(!this.jsonMode, `Moving CSM ${c.name} (${c.containers} container(s)) off ${node.name}`, () =>
          others.post<CsmMoveResult>(`/v1/csms/${encodeURIComponent(c.name)}/move`, { force: node.state === 'down' },
            { timeoutMs: Math.max(1, c.containers) * (10_000 + containerStopSlackMs + imagePullTimeoutMs) }))
        csmsMoved.push(r)
        if (r.notStarted.length > 0) {
          throw new TessError('TESS_E_IO', `CSM ${c.name} moved to ${r.node}, but container(s) ${r.notStarted.map((x) => `${x.name} (${x.error.message})`).join(', ')} did not start there; host ${node.name} is not removed`,
            r.notStarted[0]!.error.hint)
        }
      }
      // The evacuation runs on the CVM; progress is polled (the first endpoint answers both calls).
      const path = `/v1/nodes/${encodeURIComponent(node.name)}/evacuate`
      const job = await followEvacuation(!this.jsonMode, `Moving the data off ${node.name}`, () => others.post<EvacuationProgress>(path, {}), () => others.get<EvacuationProgress>(path))
      moved = job.egroupsMoved
    }
    // Refused (with the vDisks named) while the node holds the only healthy copy of data.
    const del = await others.delete<{ node: string, address: string, disksRemoved: string[] }>(`/v1/nodes/${encodeURIComponent(node.name)}`)
    let etcdMemberRemoved = false
    if (node.daemons.some((d) => d.name === 'etcd')) {
      // Refused (exit 5) if the members left would not have a quorum of live ones.
      const ports = ctx.remote?.ports ?? remotePortDefaults
      const r = await others.post<{ removed: boolean }>('/v1/etcd/members/remove', { peerUrl: etcdUrl(node.address, ports.etcdPeer) }, { timeoutMs: etcdReconfigCallTimeoutMs })
      etcdMemberRemoved = r.removed
    }
    let cleaned = false
    let message = 'not bootstrapped over SSH: stop its daemons yourself'
    if (ctx.remote) {
      const res = await withSpinner(!this.jsonMode, `Stopping ${node.name}`, (s) => cleanRemoteHost(ctx, node.name, (h, st) => s.text(`Stopping ${h}: ${st}`)))
      cleaned = res?.ok ?? false
      message = res?.message ?? 'host not in the context'
      await saveContext({
        ...ctx,
        endpoints: ctx.endpoints.filter((e) => !e.includes(`//${node.address}:`)),
        remote: { ...ctx.remote, hosts: ctx.remote.hosts.filter((h) => h.name !== node.name) },
      }, false)
    }
    return { node: node.name, address: node.address, egroupsMoved: moved, csmsMoved, disksRemoved: del.disksRemoved, etcdMemberRemoved, cleaned, message }
  }

  protected render(r: HostRemoved): string {
    return keyValue([['removed host', r.node], ['address', r.address], ['extent groups moved', r.egroupsMoved],
      ['CSMs moved', r.csmsMoved.map((c) => `${c.name} to ${c.node}${c.containers.length > 0 ? ` (${c.containers.join(', ')})` : ''}`).join('; ') || '-'], ['disks removed', r.disksRemoved.join(', ') || '-'], ['etcd member removed', r.etcdMemberRemoved], ['host cleaned', `${r.cleaned ? 'yes' : 'no'} (${r.message})`]])
  }
}
