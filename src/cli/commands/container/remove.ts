import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { renderContainerRemoved } from '../../render-csm.js'
import { TessError } from '../../../lib/errors.js'
import { checkName } from '../../../lib/names.js'
import { csmCallTimeoutMs } from '../../../lib/limits.js'
import { containerStopSlackMs } from '../../csm-input.js'
import type { ContainerRemoveResult, ContainerView } from '../../../lib/csm-types.js'

export default class ContainerRemove extends TessCommand<ContainerRemoveResult> {
  static override summary = 'Remove a container'
  static override description = 'Refuses a running container unless --force, which kills it first (SIGKILL; use `tess container stop` for a graceful stop). The image stays on the node. Asks first on a terminal; --yes skips the question.'
  static override aliases = ['container:rm']
  static override examples = ['<%= config.bin %> <%= command.id %> web1 --yes', '<%= config.bin %> <%= command.id %> web1 --force --yes --json']
  static override args = {
    name: Args.string({ description: 'Container name.', required: true }),
  }

  static override flags = {
    force: Flags.boolean({ description: 'Kill the container first if it is running.' }),
    yes: Flags.boolean({ char: 'y', description: 'Do not ask for confirmation.' }),
  }

  protected async exec(): Promise<ContainerRemoveResult> {
    const { flags, args } = await this.parseInput(ContainerRemove)
    checkName('container', args.name)
    const client = this.client(this.context(flags.cluster))
    const path = `/v1/containers/${encodeURIComponent(args.name)}`
    if (!flags.yes) {
      const c = await client.get<ContainerView>(path)
      if (c.status === 'running' && !flags.force) {
        throw new TessError('TESS_E_CONFLICT', `cannot remove container "${c.name}": it is running`, 'stop it first with `tess container stop`, or pass --force to kill it')
      }
      const kill = flags.force && (c.status === 'running' || c.status === 'paused') ? ', killing it first' : ''
      await this.confirm(`Remove container "${c.name}" (${c.status}, ${c.image} on ${c.node})${kill}?`, flags.yes, `remove container "${c.name}"`)
    }
    // as long as the CVM waits for the CSM: detaching volumes flushes their filesystems, which a
    // busy node may take more than the usual 30 s for (giving up earlier leaves it half done)
    return client.delete<ContainerRemoveResult>(`${path}${flags.force ? '?force=true' : ''}`, { timeoutMs: csmCallTimeoutMs + containerStopSlackMs })
  }

  protected render(r: ContainerRemoveResult): string {
    return renderContainerRemoved(r)
  }
}
