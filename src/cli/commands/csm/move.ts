import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { containerStopSlackMs, imagePullTimeoutMs, parseStopTimeout } from '../../csm-input.js'
import { keyValue, withSpinner } from '../../output.js'
import { checkName } from '../../../lib/names.js'
import type { CsmMoveResult } from '../../../lib/csm-types.js'

/** the request waits for the move of this many containers, one after the other (a stop each, and a pull where the image is not on the new node) */
const csmMoveTimeoutContainers = 8

export default class CsmMove extends TessCommand<CsmMoveResult> {
  static override summary = 'Move a CSM with its containers and their volumes to another node'
  static override description = `Stops each container of the CSM (SIGTERM, then SIGKILL after --timeout) and removes it where it runs, detaching its volumes; the CSM then runs on the other node (--node, or the one the cluster picks among the nodes that are up, not draining, with room for its CPUs and memory) and each container runs again in it: same image, command, environment, limits and volumes. A volume's data is in the storage pool: the new container sees every byte the old one had flushed (fsync). The CSM keeps its name, so CSM pools that name it still do.

When the CSM's node is down its containers cannot be stopped cleanly: --force moves them anyway (what their volumes hold is what was flushed before the node went down); that node removes its copy of the CSM when it is back. A container that cannot run on the new node is listed under "not started" with the reason (exit 1).`
  static override examples = [
    '<%= config.bin %> <%= command.id %> web',
    '<%= config.bin %> <%= command.id %> web --node node3 --timeout 30s --json',
    '<%= config.bin %> <%= command.id %> web --force',
  ]

  static override args = {
    name: Args.string({ description: 'CSM name.', required: true }),
  }

  static override flags = {
    node: Flags.string({ description: 'Node to move it to (default: the cluster picks one).', aliases: ['host'], deprecateAliases: true }),
    timeout: Flags.string({ char: 't', description: 'How long each container\'s stop waits after SIGTERM before SIGKILL, e.g. 10s.', default: '10s' }),
    force: Flags.boolean({ description: 'Move it even when its node is down or a container cannot be stopped.' }),
  }

  protected async exec(): Promise<CsmMoveResult> {
    const { flags, args } = await this.parseInput(CsmMove)
    checkName('CSM', args.name)
    if (flags.node !== undefined) checkName('node', flags.node)
    const timeoutMs = parseStopTimeout(flags.timeout)
    const client = this.client(this.context(flags.cluster))
    const r = await withSpinner(!this.jsonMode, `Moving CSM ${args.name}${flags.node !== undefined ? ` to ${flags.node}` : ''}`, () =>
      client.post<CsmMoveResult>(`/v1/csms/${encodeURIComponent(args.name)}/move`, { ...(flags.node !== undefined ? { node: flags.node } : {}), timeoutMs, force: flags.force },
        { timeoutMs: csmMoveTimeoutContainers * (timeoutMs + containerStopSlackMs + imagePullTimeoutMs) }))
    if (r.notStarted.length > 0) process.exitCode = 1
    return r
  }

  protected render(r: CsmMoveResult): string {
    return keyValue([
      ['moved CSM', r.name], ['from', r.from], ['to', r.node], ['containers', r.containers.join(', ') || '-'],
      ...r.notStarted.map((c): [string, string] => [`not started: ${c.name}`, `${c.error.message} (${c.error.hint})`]),
    ])
  }
}
