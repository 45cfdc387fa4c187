import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { keyValue } from '../../output.js'
import { checkName } from '../../../lib/names.js'
import { formatBytes } from '../../../lib/units.js'
import type { VdiskInfo } from '../../../lib/types.js'

/** `dryRun`: true when nothing was deleted (--dry-run): the vDisk as it would be deleted */
export type VdiskDeleteResult = VdiskInfo & { dryRun: boolean }

export default class VdiskDelete extends TessCommand<VdiskDeleteResult> {
  static override summary = 'Delete a vDisk and free its space'
  static override description = 'All data of the vDisk is deleted and its extents return to the pool. Refuses while the vDisk has snapshots, while NBD clients are connected through any node, or while a node that is up does not say whether it has any, unless --force (which deletes its snapshots with it). Asks first on a terminal; --yes skips the question. --dry-run makes every check (the same refusals) and prints what would be deleted, changing nothing.'
  static override aliases = ['vdisk:rm']
  static override examples = ['<%= config.bin %> <%= command.id %> db1 --yes', '<%= config.bin %> <%= command.id %> db1 --yes --force --json', '<%= config.bin %> <%= command.id %> db1 --dry-run']
  static override args = {
    name: Args.string({ description: 'vDisk name.', required: true }),
  }

  static override flags = {
    yes: Flags.boolean({ char: 'y', description: 'Do not ask for confirmation.' }),
    force: Flags.boolean({ description: 'Delete even while NBD clients are connected (their I/O then fails), and with its snapshots.' }),
    'dry-run': Flags.boolean({ description: 'Check and print what would be deleted; delete nothing (no question asked).' }),
  }

  protected async exec(): Promise<VdiskDeleteResult> {
    const { flags, args } = await this.parseInput(VdiskDelete)
    checkName('vDisk', args.name)
    const ctx = this.context(flags.cluster)
    const client = this.client(ctx)
    const path = `/v1/vdisks/${encodeURIComponent(args.name)}`
    const query = new URLSearchParams()
    if (flags.force) query.set('force', 'true')
    if (flags['dry-run']) {
      query.set('dryRun', 'true')
      return { ...await client.delete<VdiskInfo>(`${path}?${query.toString()}`), dryRun: true }
    }
    const v = await client.get<VdiskInfo>(path)
    await this.confirm(`Delete vDisk "${v.name}" (${formatBytes(v.sizeBytes)}, ${formatBytes(v.allocatedBytes)} written) and all its data?`, flags.yes, `delete vDisk "${v.name}"`)
    const q = query.toString()
    return { ...await client.delete<VdiskInfo>(q === '' ? path : `${path}?${q}`), dryRun: false }
  }

  protected render(v: VdiskDeleteResult): string {
    if (v.dryRun) return keyValue([['would delete vDisk', v.name], ['id', v.id], ['would free', formatBytes(v.allocatedBytes)], ['changed', 'nothing (--dry-run)']])
    return keyValue([['deleted vDisk', v.name], ['id', v.id], ['freed', formatBytes(v.allocatedBytes)]])
  }
}
