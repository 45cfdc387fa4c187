import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { renderCsmDeleted } from '../../render-csm.js'
import { TessError } from '../../../lib/errors.js'
import { checkName } from '../../../lib/names.js'
import type { CsmDeleteResult, CsmInfo } from '../../../lib/csm-types.js'

export default class CsmDelete extends TessCommand<CsmDeleteResult> {
  static override summary = 'Delete a CSM and stop its daemon'
  static override description = 'Refused while the CSM hosts containers, unless --force, which kills and removes its containers too. A CSM that is a member of a CSM pool leaves the pool. Asks first on a terminal; --yes skips the question.'
  static override aliases = ['csm:rm']
  static override examples = ['<%= config.bin %> <%= command.id %> web --yes', '<%= config.bin %> <%= command.id %> web --force --yes --json']
  static override args = {
    name: Args.string({ description: 'CSM name.', required: true }),
  }

  static override flags = {
    yes: Flags.boolean({ char: 'y', description: 'Do not ask for confirmation.' }),
    force: Flags.boolean({ description: 'Delete even while it hosts containers: they are killed and removed.' }),
  }

  protected async exec(): Promise<CsmDeleteResult> {
    const { flags, args } = await this.parseInput(CsmDelete)
    checkName('CSM', args.name)
    const client = this.client(this.context(flags.cluster))
    const path = `/v1/csms/${encodeURIComponent(args.name)}`
    if (!flags.yes) {
      const c = await client.get<CsmInfo>(path)
      if (c.containers > 0 && !flags.force) {
        throw new TessError('TESS_E_CONFLICT', `cannot delete CSM "${c.name}": it hosts ${c.containers} container(s)`, 'remove them first (`tess container list`), or pass --force to kill and remove them with it')
      }
      const what = c.containers > 0 ? ` and kill and remove its ${c.containers} container(s)` : ''
      await this.confirm(`Delete CSM "${c.name}" on ${c.node}${what}?`, flags.yes, `delete CSM "${c.name}"`)
    }
    return client.delete<CsmDeleteResult>(`${path}${flags.force ? '?force=true' : ''}`)
  }

  protected render(r: CsmDeleteResult): string {
    return renderCsmDeleted(r)
  }
}
