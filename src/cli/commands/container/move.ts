import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { containerStopSlackMs, imagePullTimeoutMs, parseStopTimeout } from '../../csm-input.js'
import { withSpinner } from '../../output.js'
import { renderContainer } from '../../render-csm.js'
import { checkName } from '../../../lib/names.js'
import type { ContainerMoveResult } from '../../../lib/csm-types.js'

export default class ContainerMove extends TessCommand<ContainerMoveResult> {
  static override summary = 'Move a container to another CSM, with its volumes'
  static override description = `Stops the container (SIGTERM, then SIGKILL after --timeout), removes it, and runs it again in the CSM named with --csm, usually on another node: same image, command, environment, limits and volumes. A volume's data is in the storage pool, so the new container sees every byte the old one had flushed (fsync); the vDisk's owner moves to the new node with the I/O.

When the container's node is down it cannot be stopped cleanly: --force moves it anyway.`
  static override examples = [
    '<%= config.bin %> <%= command.id %> db --csm node2-small',
    '<%= config.bin %> <%= command.id %> db --csm other --timeout 30s --json',
  ]

  static override args = {
    name: Args.string({ description: 'Container name.', required: true }),
  }

  static override flags = {
    csm: Flags.string({ description: 'The CSM to move it to.', required: true }),
    timeout: Flags.string({ char: 't', description: 'How long the stop waits after SIGTERM before SIGKILL, e.g. 10s.', default: '10s' }),
    force: Flags.boolean({ description: 'Move it even when its node is down or it cannot be stopped.' }),
  }

  protected async exec(): Promise<ContainerMoveResult> {
    const { flags, args } = await this.parseInput(ContainerMove)
    checkName('container', args.name)
    checkName('CSM', flags.csm)
    const timeoutMs = parseStopTimeout(flags.timeout)
    const client = this.client(this.context(flags.cluster))
    return withSpinner(!this.jsonMode, `Moving container ${args.name} to CSM ${flags.csm}`, () =>
      client.post<ContainerMoveResult>(`/v1/containers/${encodeURIComponent(args.name)}/move`, { csm: flags.csm, timeoutMs, force: flags.force },
        { timeoutMs: timeoutMs + containerStopSlackMs + imagePullTimeoutMs }))
  }

  protected render(c: ContainerMoveResult): string {
    return `moved from CSM ${c.from.csm} on ${c.from.node}\n${renderContainer(c)}`
  }
}
