import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { keyValue } from '../../output.js'
import { checkName } from '../../../lib/names.js'
import { formatBytes } from '../../../lib/units.js'
import type { VolumeInfo } from '../../../lib/csm-types.js'

/** `dryRun`: true when nothing was deleted (--dry-run): the volume as it would be deleted */
export type VolumeDeleteResult = VolumeInfo & { dryRun: boolean }

export default class VolumeDelete extends TessCommand<VolumeDeleteResult> {
  static override summary = 'Delete a volume and all its data'
  static override description = 'Refused while the volume is attached to a container (remove the container first), while it has snapshots unless --force (which deletes them with it), and, even with --force, while a cloned volume reads from one of its snapshots. Asks first on a terminal; --yes skips the question. --dry-run makes every check (the same refusals) and prints what would be deleted, changing nothing.'
  static override aliases = ['volume:rm']
  static override examples = ['<%= config.bin %> <%= command.id %> data --yes', '<%= config.bin %> <%= command.id %> data --yes --json', '<%= config.bin %> <%= command.id %> data --dry-run']
  static override args = {
    name: Args.string({ description: 'Volume name.', required: true }),
  }

  static override flags = {
    yes: Flags.boolean({ char: 'y', description: 'Do not ask for confirmation.' }),
    'dry-run': Flags.boolean({ description: 'Check and print what would be deleted; delete nothing (no question asked).' }),
    force: Flags.boolean({ description: 'Delete the volume\'s snapshots with it.' }),
  }

  protected async exec(): Promise<VolumeDeleteResult> {
    const { flags, args } = await this.parseInput(VolumeDelete)
    checkName('volume', args.name)
    const client = this.client(this.context(flags.cluster))
    const path = `/v1/volumes/${encodeURIComponent(args.name)}`
    const force = flags.force ? '&force=true' : ''
    if (flags['dry-run']) return { ...await client.delete<VolumeInfo>(`${path}?dryRun=true${force}`), dryRun: true }
    const v = await client.get<VolumeInfo>(path)
    await this.confirm(`Delete volume "${v.name}" (${formatBytes(v.sizeBytes)}, ${formatBytes(v.allocatedBytes)} written)${flags.force ? ' with its snapshots' : ''} and all its data?`, flags.yes, `delete volume "${v.name}"`)
    return { ...await client.delete<VolumeInfo>(`${path}?dryRun=false${force}`), dryRun: false }
  }

  protected render(v: VolumeDeleteResult): string {
    if (v.dryRun) return keyValue([['would delete volume', v.name], ['vdisk', v.vdisk], ['would free', formatBytes(v.allocatedBytes)], ['changed', 'nothing (--dry-run)']])
    return keyValue([['deleted volume', v.name], ['vdisk', v.vdisk], ['freed', formatBytes(v.allocatedBytes)]])
  }
}
