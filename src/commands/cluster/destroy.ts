import { Flags } from '@oclif/core'
import { TessCommand } from '../../cli/base.js'
import { deleteContext } from '../../cli/contexts.js'
import { keyValue, withSpinner } from '../../cli/output.js'
import { destroyLocalCluster } from '../../bootstrap/local.js'
import { TessError } from '../../common/errors.js'
import type { DiskInfo } from '../../common/types.js'

export interface ClusterDestroyResult {
  name: string
  dataDir: string
  stopped: Array<{ name: string, pid: number, how: string }>
}

export default class ClusterDestroy extends TessCommand<ClusterDestroyResult> {
  static override summary = 'Destroy a cluster: stop its daemons and delete all of its data'
  static override description = 'Stops every process the cluster started (by pid, from its pidfiles), removes the data dir with every vDisk in it, and forgets the context. Asks first on a terminal; --yes skips the question; without a terminal, --yes is required.'
  static override examples = ['<%= config.bin %> <%= command.id %> --yes', '<%= config.bin %> <%= command.id %> --cluster dev --yes --json']
  static override flags = {
    yes: Flags.boolean({ char: 'y', description: 'Do not ask for confirmation.' }),
  }

  protected async exec(): Promise<ClusterDestroyResult> {
    const { flags } = await this.parseInput(ClusterDestroy)
    const ctx = this.context(flags.cluster)
    if (!ctx.local) throw new TessError('TESS_E_USAGE', `cluster "${ctx.name}" is not a local cluster`, 'only embedded clusters can be destroyed by this version')
    await this.confirm(`Destroy cluster "${ctx.name}" and delete ALL its data in ${ctx.local.dataDir}?`, flags.yes, `destroy cluster "${ctx.name}"`)
    let diskPaths: string[] = []
    try {
      diskPaths = (await this.client(ctx).get<DiskInfo[]>('/v1/disks', { retryMs: 0 })).map((d) => d.path)
    } catch { /* the cluster may be down already: destroy what is on this machine */ }
    const stopped = await withSpinner(!this.jsonMode, `Destroying cluster "${ctx.name}"`, () => destroyLocalCluster(ctx.local!.dataDir, diskPaths))
    deleteContext(ctx.name)
    return { name: ctx.name, dataDir: ctx.local.dataDir, stopped }
  }

  protected render(r: ClusterDestroyResult): string {
    return keyValue([['cluster', r.name], ['data dir removed', r.dataDir], ['stopped', r.stopped.map((s) => `${s.name} (pid ${s.pid})`).join(', ') || 'nothing was running']])
  }
}
