import fs from 'node:fs'
import { Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { deleteContext } from '../../../lib/contexts.js'
import { keyValue, withSpinner } from '../../output.js'
import { destroyLocalCluster } from '../../../bootstrap/local.js'
import { clusterStateDir, destroyRemoteCluster } from '../../../bootstrap/remote.js'
import { TessError } from '../../../lib/errors.js'
import type { ClusterStatus, DiskInfo } from '../../../lib/types.js'

export interface ClusterDestroyResult {
  name: string
  dataDir: string | null
  stopped: Array<{ name: string, pid: number, how: string }>
  hosts: Array<{ host: string, node: string, ok: boolean, message: string }>
}

export default class ClusterDestroy extends TessCommand<ClusterDestroyResult> {
  static override summary = 'Destroy a cluster: stop its daemons and delete all of its data'
  static override description = 'Stops every process the cluster started (by pid, from its pidfiles, checked against /proc), removes the data dir of every node with every vDisk in it, and forgets the context and the state of the cluster kept on this machine (with its cluster key, see tess vdisk create --encrypted). For a cluster on hosts, this is done over SSH on every host; a host that cannot be reached is reported and the context is kept so the command can be run again. Asks first on a terminal; --yes skips the question; without a terminal, --yes is required.'
  static override examples = ['<%= config.bin %> <%= command.id %> --yes', '<%= config.bin %> <%= command.id %> --cluster dev --yes --json']
  static override flags = {
    yes: Flags.boolean({ char: 'y', description: 'Do not ask for confirmation.' }),
  }

  protected async exec(): Promise<ClusterDestroyResult> {
    const { flags } = await this.parseInput(ClusterDestroy)
    const ctx = this.context(flags.cluster)
    const where = ctx.local ? ctx.local.dataDir : `${ctx.remote?.hosts.length ?? 0} host(s)`
    await this.confirm(`Destroy cluster "${ctx.name}" and delete ALL its data (${where})?`, flags.yes, `destroy cluster "${ctx.name}"`)
    let disks: DiskInfo[] = []
    let clusterId: string | undefined
    try {
      const st = await this.client(ctx).get<ClusterStatus>('/v1/cluster/status', { retryMs: 0 })
      clusterId = st.id
      disks = st.pool.disks
    } catch { /* the cluster may be down already: destroy what can be reached */ }
    if (ctx.local) {
      const stopped = await withSpinner(!this.jsonMode, `Destroying cluster "${ctx.name}"`, () => destroyLocalCluster(ctx.local!.dataDir, disks.map((d) => d.path)))
      await deleteContext(ctx.name)
      // the operator's state of the cluster (its cluster key, if encrypted vDisks were made)
      fs.rmSync(clusterStateDir(ctx.name), { recursive: true, force: true })
      return { name: ctx.name, dataDir: ctx.local.dataDir, stopped, hosts: [] }
    }
    if (!ctx.remote) throw new TessError('TESS_E_INTERNAL', `cluster "${ctx.name}" has neither local nor SSH details`, 'edit or remove the context file')
    const byNode = new Map<string, string[]>()
    for (const d of disks) byNode.set(d.node, [...(byNode.get(d.node) ?? []), d.path])
    const hosts = await withSpinner(!this.jsonMode, `Destroying cluster "${ctx.name}"`, (s) => destroyRemoteCluster(ctx, byNode, clusterId, (h, step) => s.text(`Destroying cluster "${ctx.name}": ${h}: ${step}`)))
    const failed = hosts.filter((h) => !h.ok)
    if (failed.length > 0) {
      throw new TessError('TESS_E_UNREACHABLE', `cluster "${ctx.name}" destroyed on ${hosts.length - failed.length} of ${hosts.length} hosts; not on ${failed.map((f) => `${f.host} (${f.message})`).join('; ')}`, 'bring those hosts back and run the command again (the context is kept)')
    }
    await deleteContext(ctx.name)
    fs.rmSync(clusterStateDir(ctx.name), { recursive: true, force: true })
    return { name: ctx.name, dataDir: null, stopped: [], hosts }
  }

  protected render(r: ClusterDestroyResult): string {
    if (r.hosts.length > 0) return keyValue([['cluster', r.name], ...r.hosts.map((h): [string, string] => [h.host, `${h.node}: ${h.message}`])])
    return keyValue([['cluster', r.name], ['data dir removed', r.dataDir], ['stopped', r.stopped.map((s) => `${s.name} (pid ${s.pid})`).join(', ') || 'nothing was running']])
  }
}
