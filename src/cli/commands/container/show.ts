import { Args } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { renderContainer } from '../../render-csm.js'
import { checkName } from '../../../lib/names.js'
import type { ContainerView } from '../../../lib/csm-types.js'

export default class ContainerShow extends TessCommand<ContainerView> {
  static override summary = 'Show a container: status, CSM, image, command, limits, volumes, addresses and exit details'
  static override description = 'STATUS of an exited container shows its exit code and whether it was OOM-killed; NOTE says what else is known about how it ended. CPUS and MEMORY are its own limits ("no limit": bounded only by its CSM). VOLUMES are NAME:PATH (:ro when read-only). ADDRESSES are where it can be reached: with network none, loopback only; with network host, its node\'s address. ENV lists the variables it was started with.'
  static override examples = ['<%= config.bin %> <%= command.id %> web1', '<%= config.bin %> <%= command.id %> web1 --json']
  static override args = {
    name: Args.string({ description: 'Container name.', required: true }),
  }

  protected async exec(): Promise<ContainerView> {
    const { flags, args } = await this.parseInput(ContainerShow)
    checkName('container', args.name)
    return this.client(this.context(flags.cluster)).get<ContainerView>(`/v1/containers/${encodeURIComponent(args.name)}`)
  }

  protected render(c: ContainerView): string {
    return renderContainer(c)
  }
}
