import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { giveClusterKey } from '../../clusterkey.js'
import { renderVdisk } from '../../render.js'
import { checkName } from '../../../lib/names.js'
import { parseSize } from '../../../lib/units.js'
import { rfMax } from '../../../lib/limits.js'
import type { VdiskInfo } from '../../../lib/types.js'

export default class VdiskCreate extends TessCommand<VdiskInfo> {
  static override summary = 'Create a vDisk'
  static override description = `A vDisk is a thin-provisioned block device: no space is used until data is written. It is served over NBD at the URI shown (export name = vDisk name).

SIZE accepts bytes or binary units: 512M, 10G, 1T, 1GiB (1G = 1 GiB); it must be a multiple of 512 bytes. SIZE x RF counts against the pool's provisioning limit: what all vDisks promise may reach the pool's used + free space times the overcommit limit (1 unless set with \`tess storage-pool update --overcommit-max\`), so a vDisk may be larger than the free space.

--encrypted: every 4 KiB block is encrypted on the disks (AES-256-XTS) with a key of the vDisk's own, which the cluster key wraps. The cluster key is made on first use and kept by this CLI (cluster.key in the cluster's state directory, mode 0600); the CVMs hold it in memory only. After all CVMs were restarted, encrypted vDisks open again once \`tess cluster unlock\` gave it back; a single CVM that restarts gets it from the others.`
  static override examples = [
    '<%= config.bin %> <%= command.id %> db1 --size 10G',
    '<%= config.bin %> <%= command.id %> scratch --size 512M --json',
    { description: 'Two copies on two nodes', command: '<%= config.bin %> <%= command.id %> logs --size 1T --rf 2' },
    { description: 'Encrypted on the disks', command: '<%= config.bin %> <%= command.id %> secrets --size 10G --encrypted' },
  ]

  static override args = {
    name: Args.string({ description: 'vDisk name: [a-z0-9][a-z0-9-]{0,62}.', required: true }),
  }

  static override flags = {
    size: Flags.string({ char: 's', description: 'Size, e.g. 512M, 10G, 1T, 1GiB or bytes.', required: true }),
    rf: Flags.integer({ description: `Replication factor: copies on distinct nodes (1..${rfMax}, at most the number of nodes).`, default: 1 }),
    encrypted: Flags.boolean({ description: 'Encrypt its blocks on the disks (AES-256-XTS, a key of its own wrapped by the cluster key).', default: false }),
  }

  protected async exec(): Promise<VdiskInfo> {
    const { flags, args } = await this.parseInput(VdiskCreate)
    checkName('vDisk', args.name)
    const sizeBytes = parseSize(flags.size, 'vDisk size')
    const ctx = this.context(flags.cluster)
    const client = this.client(ctx)
    if (flags.encrypted) await giveClusterKey(client, ctx)
    return client.post<VdiskInfo>('/v1/vdisks', { name: args.name, sizeBytes, rf: flags.rf, ...(flags.encrypted ? { encrypted: true } : {}) })
  }

  protected render(v: VdiskInfo): string {
    return renderVdisk(v)
  }
}
