import { Args } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { renderContainer } from '../../render-csm.js'
import { checkName } from '../../../lib/names.js'
import type { ContainerView } from '../../../lib/csm-types.js'

export default class ContainerStart extends TessCommand<ContainerView> {
  static override summary = 'Start a stopped container again'
  static override description = 'Starts an exited container again with the same image, command, variables and limits, in the same CSM.'
  static override examples = ['<%= config.bin %> <%= command.id %> web1', '<%= config.bin %> <%= command.id %> web1 --json']
  static override args = {
    name: Args.string({ description: 'Container name.', required: true }),
  }

  protected async exec(): Promise<ContainerView> {
    const { flags, args } = await this.parseInput(ContainerStart)
    checkName('container', args.name)
    return this.client(this.context(flags.cluster)).post<ContainerView>(`/v1/containers/${encodeURIComponent(args.name)}/start`, {})
  }

  protected render(c: ContainerView): string {
    return renderContainer(c)
  }
}
