import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../../base.js'
import { keyValue } from '../../../output.js'
import { checkName } from '../../../../lib/names.js'
import type { SnapshotInfo } from '../../../../lib/types.js'

export default class VdiskSnapshotDelete extends TessCommand<SnapshotInfo> {
  static override summary = 'Delete a snapshot of a vDisk and free the extents only it kept'
  static override description = 'The vDisk and its other snapshots do not change. Refuses while NBD clients read the snapshot through any node, unless --force. Asks first on a terminal; --yes skips the question.'
  static override aliases = ['vdisk:snapshot:rm']
  static override examples = ['<%= config.bin %> <%= command.id %> db1 before-upgrade --yes', '<%= config.bin %> <%= command.id %> db1 nightly-1 --yes --json']
  static override args = {
    vdisk: Args.string({ description: 'vDisk name.', required: true }),
    snapshot: Args.string({ description: 'Snapshot name.', required: true }),
  }

  static override flags = {
    yes: Flags.boolean({ char: 'y', description: 'Do not ask for confirmation.' }),
    force: Flags.boolean({ description: 'Delete even while NBD clients read the snapshot (their reads then fail).' }),
  }

  protected async exec(): Promise<SnapshotInfo> {
    const { flags, args } = await this.parseInput(VdiskSnapshotDelete)
    checkName('vDisk', args.vdisk)
    checkName('snapshot', args.snapshot)
    const client = this.client(this.context(flags.cluster))
    await this.confirm(`Delete snapshot "${args.vdisk}@${args.snapshot}"?`, flags.yes, `delete snapshot "${args.vdisk}@${args.snapshot}"`)
    const path = `/v1/vdisks/${encodeURIComponent(args.vdisk)}/snapshots/${encodeURIComponent(args.snapshot)}`
    return client.delete<SnapshotInfo>(flags.force ? `${path}?force=true` : path)
  }

  protected render(s: SnapshotInfo): string {
    return keyValue([['deleted snapshot', `${s.vdisk}@${s.name}`], ['taken', s.createdAt]])
  }
}
