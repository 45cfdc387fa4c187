import { TessCommand, watchFlag } from '../../base.js'
import { keyValue, table } from '../../output.js'
import { formatBytes } from '../../../lib/units.js'
import type { PoolInfo } from '../../../lib/types.js'

export default class StoragePoolShow extends TessCommand<PoolInfo> {
  static override summary = 'Show the storage pool: capacity, used and free, per disk and in total'
  static override watchable = true
  static override flags = { watch: watchFlag }
  static override description = 'Capacity and free space are those of the filesystems under the disks (counted once per filesystem and node when several disks share one); used is what Tessera\'s extent groups occupy; free includes the spare extent groups written ahead (they hold no data). The rest of the capacity is reserved (the filesystem\'s blocks for root only) and other (other files on those filesystems, and their metadata): capacity = used + free + reserved + other. vDisks are thin: provisioned is what they promise (every vDisk\'s size times its RF), held to (used + free) times the overcommit limit (tess storage-pool update --overcommit-max).'
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json']

  protected async exec(): Promise<PoolInfo> {
    const { flags } = await this.parseInput(StoragePoolShow)
    return this.client(this.context(flags.cluster)).get<PoolInfo>('/v1/storage-pool')
  }

  protected render(p: PoolInfo): string {
    return [
      keyValue([
        ['capacity', formatBytes(p.capacityBytes)], ['used', formatBytes(p.usedBytes)], ['free', formatBytes(p.freeBytes)],
        ['reserved', `${formatBytes(p.reservedBytes)} (the filesystems' blocks for root only)`],
        ['other', `${formatBytes(p.otherBytes)} (other files on the disks' filesystems)`],
        ...(p.provisionedBytes !== undefined && p.provisionLimitBytes !== undefined
          ? [['provisioned', `${formatBytes(p.provisionedBytes)} of at most ${formatBytes(p.provisionLimitBytes)} (overcommit ${p.overcommitMax ?? 1}x of used + free)`] as [string, string]]
          : []),
        ['disks', p.disks.length],
      ]),
      table(['disk', 'node', 'path', 'state', 'capacity', 'used', 'free'], p.disks.map((d) => [d.id, d.node, d.path, d.state, formatBytes(d.capacityBytes), formatBytes(d.usedBytes), formatBytes(d.freeBytes)])),
    ].join('\n')
  }
}
