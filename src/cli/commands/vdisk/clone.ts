import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { renderVdisk } from '../../render.js'
import { TessError } from '../../../lib/errors.js'
import { checkName } from '../../../lib/names.js'
import { rfMax } from '../../../lib/limits.js'
import type { VdiskInfo } from '../../../lib/types.js'

export default class VdiskClone extends TessCommand<VdiskInfo> {
  static override summary = 'Make a writable vDisk from a snapshot of another (copy-on-write)'
  static override description = 'SOURCE is VDISK@SNAPSHOT, or VDISK alone: a snapshot of it named after the clone is taken first. The clone has the snapshot\'s size and bytes at once, whatever its size: it reads through to the snapshot what it has not written itself, and its writes go to it only (the first write to a 1 MiB extent copies that extent from the snapshot). The snapshot never changes; clones of clones work to any depth. While a clone reads from a snapshot, that snapshot and its vDisk cannot be deleted: `tess vdisk flatten` copies what the clone still reads from its parents and drops the reference. The clone of an encrypted vDisk is encrypted too, with a key of its own.'
  static override examples = ['<%= config.bin %> <%= command.id %> golden@v1 web-1', '<%= config.bin %> <%= command.id %> db1 db1-test --json', '<%= config.bin %> <%= command.id %> golden@v1 web-2 --rf 2']
  static override args = {
    source: Args.string({ description: 'VDISK@SNAPSHOT, or VDISK (a snapshot is taken first).', required: true }),
    name: Args.string({ description: 'Name of the new vDisk.', required: true }),
  }

  static override flags = {
    rf: Flags.integer({ description: `Replication factor of the clone's own extents (1..${rfMax}; default: the source's).` }),
  }

  protected async exec(): Promise<VdiskInfo> {
    const { flags, args } = await this.parseInput(VdiskClone)
    const [vdisk, snapshot, ...rest] = args.source.split('@')
    if (rest.length > 0 || vdisk === undefined) throw new TessError('TESS_E_INVALID', `invalid source "${args.source}"`, 'give VDISK@SNAPSHOT or VDISK')
    checkName('vDisk', vdisk)
    if (snapshot !== undefined) checkName('snapshot', snapshot)
    checkName('vDisk', args.name)
    return this.client(this.context(flags.cluster)).post<VdiskInfo>(`/v1/vdisks/${encodeURIComponent(vdisk)}/clones`, {
      name: args.name, ...(snapshot !== undefined ? { snapshot } : {}), ...(flags.rf !== undefined ? { rf: flags.rf } : {}),
    })
  }

  protected render(v: VdiskInfo): string {
    return renderVdisk(v)
  }
}
