import { Args } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { renderContainer } from '../../render-csm.js'
import { checkName } from '../../../lib/names.js'
import type { ContainerView } from '../../../lib/csm-types.js'

export default class ContainerPause extends TessCommand<ContainerView> {
  static override summary = 'Pause a running container (freeze its processes)'
  static override description = 'Freezes every process of the container (cgroup freezer): they keep their memory but get no CPU until `tess container resume`.'
  static override examples = ['<%= config.bin %> <%= command.id %> web1', '<%= config.bin %> <%= command.id %> web1 --json']
  static override args = {
    name: Args.string({ description: 'Container name.', required: true }),
  }

  protected async exec(): Promise<ContainerView> {
    const { flags, args } = await this.parseInput(ContainerPause)
    checkName('container', args.name)
    return this.client(this.context(flags.cluster)).post<ContainerView>(`/v1/containers/${encodeURIComponent(args.name)}/pause`, {})
  }

  protected render(c: ContainerView): string {
    return renderContainer(c)
  }
}
