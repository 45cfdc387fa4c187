import path from 'node:path'
import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { keyValue } from '../../output.js'
import { formatBytes } from '../../../lib/units.js'
import type { DiskInfo } from '../../../lib/types.js'

export default class DiskAdd extends TessCommand<DiskInfo> {
  static override summary = 'Add a disk (a directory on a node) to the storage pool'
  static override description = 'The directory must exist on the node, be writable and not already be (or be inside, or contain) a disk of the pool. A relative PATH is resolved against the current directory when the disk is on this machine.'
  static override examples = ['<%= config.bin %> <%= command.id %> /mnt/disk2', '<%= config.bin %> <%= command.id %> /mnt/disk2 --node node2 --json']
  static override args = {
    path: Args.string({ description: 'Directory to add (where the disk is mounted, or a folder).', required: true }),
  }

  static override flags = {
    node: Flags.string({ description: 'Node the directory is on (default: the node serving the API).' }),
  }

  protected async exec(): Promise<DiskInfo> {
    const { flags, args } = await this.parseInput(DiskAdd)
    const ctx = this.context(flags.cluster)
    const p = flags.node ? args.path : path.resolve(args.path)
    return this.client(ctx).post<DiskInfo>('/v1/disks', { path: p, ...(flags.node ? { node: flags.node } : {}) })
  }

  protected render(d: DiskInfo): string {
    return keyValue([['id', d.id], ['node', d.node], ['path', d.path], ['state', d.state], ['capacity', formatBytes(d.capacityBytes)], ['free', formatBytes(d.freeBytes)]])
  }
}
