import path from 'node:path'
import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { keyValue } from '../../output.js'
import type { DiskInfo } from '../../../lib/types.js'

export default class DiskRemove extends TessCommand<DiskInfo> {
  static override summary = 'Remove a disk from the storage pool'
  static override description = 'Refuses while the disk holds extent groups. The directory and any files in it that are not Tessera\'s are left alone. Asks first on a terminal; --yes skips the question.'
  static override aliases = ['disk:rm']
  static override examples = ['<%= config.bin %> <%= command.id %> /mnt/disk2', '<%= config.bin %> <%= command.id %> /mnt/disk2 --node node2 --yes --json']
  static override args = {
    path: Args.string({ description: 'Directory of the disk (or its id from `tess disk list`).', required: true }),
  }

  static override flags = {
    node: Flags.string({ description: 'Node the disk is on, when several nodes have a disk at that path.' }),
    yes: Flags.boolean({ char: 'y', description: 'Do not ask for confirmation.' }),
  }

  protected async exec(): Promise<DiskInfo> {
    const { flags, args } = await this.parseInput(DiskRemove)
    const ctx = this.context(flags.cluster)
    const p = /^\d+$/.test(args.path) || flags.node ? args.path : path.resolve(args.path)
    await this.confirm(`Remove disk ${p}${flags.node ? ` of node ${flags.node}` : ''} from the storage pool?`, flags.yes, `remove disk ${p}`)
    const q = new URLSearchParams({ path: p, ...(flags.node ? { node: flags.node } : {}) })
    return this.client(ctx).delete<DiskInfo>(`/v1/disks?${q.toString()}`)
  }

  protected render(d: DiskInfo): string {
    return keyValue([['removed disk', d.id], ['node', d.node], ['path', d.path]])
  }
}
