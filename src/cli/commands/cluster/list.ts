import { TessCommand } from '../../base.js'
import { listContexts } from '../../../lib/contexts.js'
import { table } from '../../output.js'
import { formatAge } from '../../csm-input.js'

export interface ClusterContextInfo {
  name: string
  current: boolean
  endpoints: string[]
  local: boolean
  dataDir: string | null
  createdAt: string
}

export default class ClusterList extends TessCommand<ClusterContextInfo[]> {
  static override summary = 'List the saved cluster contexts'
  static override description = 'Contexts are kept in the tess config directory (TESS_CONFIG_DIR, else ~/.config/tess) in a file of mode 0600. Credentials are never printed.'
  static override aliases = ['cluster:ls']
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json']

  protected async exec(): Promise<ClusterContextInfo[]> {
    await this.parseInput(ClusterList)
    const { current, contexts } = listContexts()
    return contexts.sort((a, b) => a.name.localeCompare(b.name)).map((c) => ({
      name: c.name,
      current: c.name === current,
      endpoints: c.endpoints,
      local: c.local !== undefined,
      dataDir: c.local?.dataDir ?? null,
      createdAt: c.createdAt,
    }))
  }

  protected render(r: ClusterContextInfo[]): string {
    if (r.length === 0) return 'No cluster contexts. Create one with: tess cluster create --local'
    return table(['', 'name', 'endpoints', 'local data dir', 'created'], r.map((c) => [c.current ? '*' : '', c.name, c.endpoints.join(', '), c.dataDir ?? '-', formatAge(c.createdAt)]))
  }
}
