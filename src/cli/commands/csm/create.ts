import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { checkNodeName, csmCreateTimeoutMs, parseCpus, parseMemory } from '../../csm-input.js'
import { withSpinner } from '../../output.js'
import { renderCsm } from '../../render-csm.js'
import { checkName } from '../../../lib/names.js'
import type { CsmInfo } from '../../../lib/csm-types.js'

export default class CsmCreate extends TessCommand<CsmInfo> {
  static override summary = 'Create a CSM: a resource-bounded container service machine on one node'
  static override description = `A CSM (container service machine) is a daemon on one node that hosts containers within the CPUs and memory given here. Containers run with \`tess container run --csm NAME\`, or in a CSM pool that holds it.

--cpus accepts fractions (0.5 = half a CPU). --memory accepts bytes or binary units: 512M, 2G, 1GiB (1G = 1 GiB). Without --node the cluster picks the node. The command waits until the CSM daemon has started.`
  static override examples = [
    '<%= config.bin %> <%= command.id %> web --cpus 2 --memory 2G',
    { description: 'Half a CPU on a chosen node, with crun', command: '<%= config.bin %> <%= command.id %> small --cpus 0.5 --memory 512M --node node2 --runtime crun' },
    '<%= config.bin %> <%= command.id %> batch --cpus 4 --memory 8G --json',
  ]

  static override args = {
    name: Args.string({ description: 'CSM name: [a-z0-9][a-z0-9-]{0,62}.', required: true }),
  }

  static override flags = {
    cpus: Flags.string({ description: 'CPUs for the CSM and its containers: a number more than 0, fractions allowed (e.g. 0.5, 2).', required: true }),
    memory: Flags.string({ char: 'm', description: 'Memory for the CSM and its containers, e.g. 512M, 2G.', required: true }),
    node: Flags.string({ description: 'Node to create the CSM on (default: the cluster picks one).', aliases: ['host'], deprecateAliases: true }),
    runtime: Flags.option({ options: ['runc', 'crun'] as const, description: 'OCI runtime of its containers (default: runc).' })(),
  }

  protected async exec(): Promise<CsmInfo> {
    const { flags, args } = await this.parseInput(CsmCreate)
    checkName('CSM', args.name)
    const cpus = parseCpus(flags.cpus)
    const memoryBytes = parseMemory(flags.memory)
    if (flags.node !== undefined) checkNodeName(flags.node)
    const client = this.client(this.context(flags.cluster))
    const body = {
      name: args.name,
      cpus,
      memoryBytes,
      ...(flags.node !== undefined ? { node: flags.node } : {}),
      ...(flags.runtime !== undefined ? { runtime: flags.runtime } : {}),
    }
    return withSpinner(!this.jsonMode, `Creating CSM ${args.name}`, () => client.post<CsmInfo>('/v1/csms', body, { timeoutMs: csmCreateTimeoutMs }))
  }

  protected render(c: CsmInfo): string {
    return renderCsm(c)
  }
}
