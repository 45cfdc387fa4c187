import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { keyValue } from '../../output.js'
import { checkName } from '../../../lib/names.js'
import { formatBytes } from '../../../lib/units.js'
import type { VdiskInfo } from '../../../lib/types.js'

export default class VdiskDelete extends TessCommand<VdiskInfo> {
  static override summary = 'Delete a vDisk and free its space'
  static override description = 'All data of the vDisk is deleted and its extents return to the pool. Refuses while NBD clients are connected through any node, or while a node that is up does not say whether it has any, unless --force. Asks first on a terminal; --yes skips the question.'
  static override aliases = ['vdisk:rm']
  static override examples = ['<%= config.bin %> <%= command.id %> db1 --yes', '<%= config.bin %> <%= command.id %> db1 --yes --force --json']
  static override args = {
    name: Args.string({ description: 'vDisk name.', required: true }),
  }

  static override flags = {
    yes: Flags.boolean({ char: 'y', description: 'Do not ask for confirmation.' }),
    force: Flags.boolean({ description: 'Delete even while NBD clients are connected (their I/O then fails).' }),
  }

  protected async exec(): Promise<VdiskInfo> {
    const { flags, args } = await this.parseInput(VdiskDelete)
    checkName('vDisk', args.name)
    const ctx = this.context(flags.cluster)
    const client = this.client(ctx)
    const v = await client.get<VdiskInfo>(`/v1/vdisks/${encodeURIComponent(args.name)}`)
    await this.confirm(`Delete vDisk "${v.name}" (${formatBytes(v.sizeBytes)}, ${formatBytes(v.allocatedBytes)} written) and all its data?`, flags.yes, `delete vDisk "${v.name}"`)
    return client.delete<VdiskInfo>(`/v1/vdisks/${encodeURIComponent(args.name)}${flags.force ? '?force=true' : ''}`)
  }

  protected render(v: VdiskInfo): string {
    return keyValue([['deleted vDisk', v.name], ['id', v.id], ['freed', formatBytes(v.allocatedBytes)]])
  }
}
