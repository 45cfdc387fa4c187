import { Args } from '@oclif/core'
import { TessCommand, watchFlag } from '../../base.js'
import { renderStats } from '../../render-csm.js'
import { checkName } from '../../../lib/names.js'
import type { StatsResult } from '../../../lib/csm-types.js'

export default class ContainerStats extends TessCommand<StatsResult> {
  static override summary = 'Show CPU, memory and process usage of containers and CSMs'
  static override watchable = true
  static override flags = { watch: watchFlag }
  static override description = `Reads the cgroup counters of every container (or of the one named) and of every CSM. CPU% is the CPU used over the last sampling window (100% = one CPU busy; "-" until a second sample exists); CPU LIMIT and MEMORY / LIMIT show the bounds ("-" = none); OOM KILLS counts processes the kernel killed for lack of memory; THROTTLED counts the CPU periods in which the limit held the container back.`
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> web1', '<%= config.bin %> <%= command.id %> --json']
  static override args = {
    // ignoreStdin: an optional argument would otherwise be read from a piped stdin.
    name: Args.string({ description: 'Only this container (default: all).', required: false, ignoreStdin: true }),
  }

  protected async exec(): Promise<StatsResult> {
    const { flags, args } = await this.parseInput(ContainerStats)
    if (args.name !== undefined) checkName('container', args.name)
    const q = args.name !== undefined ? `?${new URLSearchParams({ container: args.name }).toString()}` : ''
    return this.client(this.context(flags.cluster)).get<StatsResult>(`/v1/stats${q}`)
  }

  protected render(r: StatsResult): string {
    return renderStats(r)
  }
}
