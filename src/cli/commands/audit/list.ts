import { Flags } from '@oclif/core'
import { TessCommand, watchFlag } from '../../base.js'
import { table } from '../../output.js'
import type { AuditInfo } from '../../../lib/user-types.js'

export default class AuditList extends TessCommand<AuditInfo[]> {
  static override summary = 'Show the newest changes made through the API: who, what, when, and how each ended'
  static override watchable = true
  static override description = 'Every request that changes something (anything but a read) is recorded once answered, refused ones included (403: the role was too small), whichever node received it. The log keeps the newest 10000 changes. Needs role admin.'
  static override aliases = ['audit:ls']
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --user alice --limit 20', '<%= config.bin %> <%= command.id %> --json']

  static override flags = {
    watch: watchFlag,
    limit: Flags.integer({ description: 'How many changes, newest first (1 to 1000).', default: 50, min: 1, max: 1000 }),
    user: Flags.string({ description: 'Only this user\'s changes (root: the bootstrap token).' }),
  }

  protected async exec(): Promise<AuditInfo[]> {
    const { flags } = await this.parseInput(AuditList)
    const q = new URLSearchParams({ limit: String(flags.limit), ...(flags.user !== undefined ? { user: flags.user } : {}) })
    return this.client(this.context(flags.cluster)).get<AuditInfo[]>(`/v1/audit?${q.toString()}`)
  }

  protected render(es: AuditInfo[]): string {
    if (es.length === 0) return 'No changes recorded.'
    return table(['TIME', 'WHO', 'ROLE', 'REQUEST', 'STATUS'], es.map((e) => [e.at, e.who, e.role, `${e.method} ${e.path}`, e.code !== undefined ? `${e.status} ${e.code}` : String(e.status)]))
  }
}
