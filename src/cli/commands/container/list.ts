import { TessCommand, watchFlag } from '../../base.js'
import { renderContainerList } from '../../render-csm.js'
import type { ContainerView } from '../../../lib/csm-types.js'

export default class ContainerList extends TessCommand<ContainerView[]> {
  static override summary = 'List containers with their node, CSM, image and status'
  static override watchable = true
  static override flags = { watch: watchFlag }
  static override description = 'STATUS of an exited container shows its exit code, and "OOM-killed" when the kernel killed it for running out of memory.'
  static override aliases = ['container:ls']
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json']

  protected async exec(): Promise<ContainerView[]> {
    const { flags } = await this.parseInput(ContainerList)
    return this.client(this.context(flags.cluster)).get<ContainerView[]>('/v1/containers')
  }

  protected render(r: ContainerView[]): string {
    return renderContainerList(r)
  }
}
