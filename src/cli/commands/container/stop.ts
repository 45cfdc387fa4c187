import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { containerStopSlackMs, containerStopTimeoutDefault, parseStopTimeout } from '../../csm-input.js'
import { withSpinner } from '../../output.js'
import { renderContainer } from '../../render-csm.js'
import { checkName } from '../../../lib/names.js'
import type { ContainerView } from '../../../lib/csm-types.js'

export default class ContainerStop extends TessCommand<ContainerView> {
  static override summary = 'Stop a container: SIGTERM, then SIGKILL after a timeout'
  static override description = `Sends SIGTERM to the container's main process and waits up to --timeout for it to exit, then kills it with SIGKILL. The container stays (exited) and can be started again with \`tess container start\`, or removed with \`tess container remove\`.

--timeout is a duration such as 500ms, 10s or 2m (a bare number is seconds); 0 kills at once.`
  static override examples = [
    '<%= config.bin %> <%= command.id %> web1',
    '<%= config.bin %> <%= command.id %> web1 --timeout 30s',
    '<%= config.bin %> <%= command.id %> web1 --timeout 0 --json',
  ]

  static override args = {
    name: Args.string({ description: 'Container name.', required: true }),
  }

  static override flags = {
    timeout: Flags.string({ char: 't', description: 'How long to wait after SIGTERM before SIGKILL, e.g. 500ms, 10s, 2m.', default: containerStopTimeoutDefault }),
  }

  protected async exec(): Promise<ContainerView> {
    const { flags, args } = await this.parseInput(ContainerStop)
    checkName('container', args.name)
    const timeoutMs = parseStopTimeout(flags.timeout)
    const client = this.client(this.context(flags.cluster))
    return withSpinner(!this.jsonMode, `Stopping container ${args.name}`, () =>
      client.post<ContainerView>(`/v1/containers/${encodeURIComponent(args.name)}/stop`, { timeoutMs }, { timeoutMs: timeoutMs + containerStopSlackMs }))
  }

  protected render(c: ContainerView): string {
    return renderContainer(c)
  }
}
