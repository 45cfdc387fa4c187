import path from 'node:path'
import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { followEvacuation, keyValue } from '../../output.js'
import type { DiskInfo, EvacuationProgress } from '../../../lib/types.js'

/** `tess disk remove`: the disk as it was, and the extent groups --evacuate moved off it first */
export type DiskRemoved = DiskInfo & { egroupsMoved: number }


export default class DiskRemove extends TessCommand<DiskRemoved> {
  static override summary = 'Remove a disk from the storage pool'
  static override description = 'Refuses while the disk holds extent groups. With --evacuate, first marks the disk draining (no new extent group lands on it) and has the owner of every vDisk move each extent group the disk holds to the node\'s other disks (the one with the fewest first), then removes it; refused before anything changes when the node has no other disk online. The directory and any files in it that are not Tessera\'s are left alone. Asks first on a terminal; --yes skips the question.'
  static override aliases = ['disk:rm']
  static override examples = ['<%= config.bin %> <%= command.id %> /mnt/disk2', '<%= config.bin %> <%= command.id %> /mnt/disk2 --evacuate --yes', '<%= config.bin %> <%= command.id %> /mnt/disk2 --node node2 --yes --json']
  static override args = {
    path: Args.string({ description: 'Directory of the disk (or its id from `tess disk list`).', required: true }),
  }

  static override flags = {
    node: Flags.string({ description: 'Node the disk is on, when several nodes have a disk at that path.' }),
    evacuate: Flags.boolean({ description: 'Move the extent groups on the disk to the node\'s other disks first.' }),
    yes: Flags.boolean({ char: 'y', description: 'Do not ask for confirmation.' }),
  }

  protected async exec(): Promise<DiskRemoved> {
    const { flags, args } = await this.parseInput(DiskRemove)
    const ctx = this.context(flags.cluster)
    const p = /^\d+$/.test(args.path) || flags.node ? args.path : path.resolve(args.path)
    await this.confirm(`Remove disk ${p}${flags.node ? ` of node ${flags.node}` : ''} from the storage pool${flags.evacuate ? ' after moving its data' : ''}?`, flags.yes, `remove disk ${p}`)
    const q = new URLSearchParams({ path: p, ...(flags.node ? { node: flags.node } : {}) })
    const client = this.client(ctx)
    let moved = 0
    if (flags.evacuate) {
      // the evacuation runs on the CVM; its progress is polled (the first endpoint answers both calls)
      const job = await followEvacuation(!this.jsonMode, `Moving the data off disk ${p}`,
        () => client.post<EvacuationProgress>(`/v1/disks/evacuate?${q.toString()}`, {}), () => client.get<EvacuationProgress>(`/v1/disks/evacuate?${q.toString()}`))
      moved = job.egroupsMoved
    }
    const d = await client.delete<DiskInfo>(`/v1/disks?${q.toString()}`)
    return { ...d, egroupsMoved: moved }
  }

  protected render(d: DiskRemoved): string {
    return keyValue([['removed disk', d.id], ['node', d.node], ['path', d.path], ['extent groups moved', d.egroupsMoved]])
  }
}
