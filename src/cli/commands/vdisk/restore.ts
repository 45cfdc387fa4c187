import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { keyValue } from '../../output.js'
import { checkName } from '../../../lib/names.js'
import type { SnapshotInfo } from '../../../lib/types.js'

export default class VdiskRestore extends TessCommand<SnapshotInfo> {
  static override summary = 'Roll a vDisk back to one of its snapshots'
  static override description = 'Every 1 MiB extent written since the snapshot gets the snapshot\'s bytes back; what was written since is lost, unless another snapshot holds it. The snapshot and the other snapshots stay as they are. Writes wait while it runs. Refuses while NBD clients have the vDisk open through any node (a writer, or a volume attached to a container), unless --force: their caches would no longer match the vDisk. Asks first on a terminal; --yes skips the question.'
  static override examples = ['<%= config.bin %> <%= command.id %> db1 before-upgrade --yes', '<%= config.bin %> <%= command.id %> db1 nightly-1 --yes --json']
  static override args = {
    vdisk: Args.string({ description: 'vDisk name.', required: true }),
    snapshot: Args.string({ description: 'Snapshot to roll back to.', required: true }),
  }

  static override flags = {
    yes: Flags.boolean({ char: 'y', description: 'Do not ask for confirmation.' }),
    force: Flags.boolean({ description: 'Roll back even while NBD clients have the vDisk open (they then read data their caches do not expect).' }),
  }

  protected async exec(): Promise<SnapshotInfo> {
    const { flags, args } = await this.parseInput(VdiskRestore)
    checkName('vDisk', args.vdisk)
    checkName('snapshot', args.snapshot)
    const client = this.client(this.context(flags.cluster))
    await this.confirm(`Roll vDisk "${args.vdisk}" back to snapshot "${args.snapshot}"? What was written since is lost.`, flags.yes, `restore vDisk "${args.vdisk}"`)
    return client.post<SnapshotInfo>(`/v1/vdisks/${encodeURIComponent(args.vdisk)}/restore`, { snapshot: args.snapshot, force: flags.force })
  }

  protected render(s: SnapshotInfo): string {
    return keyValue([['restored vDisk', s.vdisk], ['to snapshot', `${s.name} (taken ${s.createdAt})`], ['extents changed', String(s.changedExtents ?? 0)]])
  }
}
