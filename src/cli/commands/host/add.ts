import { Args, Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { clusterReadyTimeoutMs } from '../../../lib/limits.js'
import { saveContext } from '../../../lib/contexts.js'
import { keyValue, withSpinner } from '../../output.js'
import { PreflightFailed, addRemoteHost, type HostAdded } from '../../../bootstrap/remote.js'
import { formatPreflight } from '../../../bootstrap/preflight.js'

export default class HostAdd extends TessCommand<HostAdded> {
  static override summary = 'Add a host to the cluster'
  static override description = `Joins HOST as a new node: connects over SSH with the cluster's saved SSH settings (host key pinned as for \`cluster create\`), runs the pre-flight checks, installs the bundle, writes its certificate (from the cluster CA kept on this machine) and config, starts its supervisor and CVM and registers its disks.

When the etcd member count should grow (from 1 to 3 members when a third node joins, from 3 to 5 for a fifth), the new node and as many existing nodes as needed become members, one at a time: each is added as a learner, its etcd is started (an existing node's supervisor is restarted for that, a short pause of its CVM), and it is promoted once it has caught up. Every node must be up for that.

The command returns when the cluster takes writes with the new node: the CVM of every node that is up, and of the new one, sees all of them up with their disks. It waits up to ${clusterReadyTimeoutMs / 1000} s for that, then fails with TESS_E_TIMEOUT (exit 6) naming, per CVM, the nodes it does not see and why; the node stays added.`
  static override examples = ['<%= config.bin %> <%= command.id %> 10.0.0.14', '<%= config.bin %> <%= command.id %> 10.0.0.14 --disk /mnt/d1 --disk /mnt/d2 --accept-new-host-keys --json']
  static override args = {
    host: Args.string({ description: 'Address or name of the host to join.', required: true }),
  }

  static override flags = {
    disk: Flags.string({ description: 'Disk directory on the host (repeat for several; default /var/lib/tess/disks/d0).', multiple: true }),
    'install-deps': Flags.boolean({ description: 'Install missing Debian packages on the host.' }),
    'accept-new-host-keys': Flags.boolean({ description: 'Accept and record the host key if it is seen for the first time (a changed key is still refused).' }),
  }

  protected async exec(): Promise<HostAdded> {
    const { flags, args } = await this.parseInput(HostAdd)
    const ctx = this.context(flags.cluster)
    const policy = flags['accept-new-host-keys'] ? 'accept-new' : (!ctx.remote?.knownHostsFile && this.interactive ? 'ask' : 'strict')
    const r = await withSpinner(!this.jsonMode, `Adding host ${args.host}`, async (s) => {
      try {
        return await addRemoteHost(ctx, args.host, {
          disks: flags.disk ?? [],
          installDeps: flags['install-deps'],
          hostKeyPolicy: policy,
          // the node is in the cluster from here on: keep it in the context even if a later step fails
          onJoined: (c) => saveContext(c, false),
          ask: async (host, fp, type) => {
            const { confirm } = await import('@inquirer/prompts')
            return confirm({ message: `Host ${host} presents ${type} key ${fp}. Trust it?`, default: false }, { output: process.stderr })
          },
        }, (h, step) => s.text(`Adding host ${h}: ${step}`))
      } catch (e) {
        if (e instanceof PreflightFailed && !this.jsonMode) process.stderr.write(formatPreflight(e.result, { onlyProblems: true }) + '\n')
        throw e
      }
    })
    await saveContext(r.context, false)
    return r.added
  }

  protected render(r: HostAdded): string {
    return keyValue([['added host', r.host], ['node', r.node], ['etcd member', r.etcdMember], ['nodes now', r.status.nodes.map((n) => `${n.name} (${n.state})`).join(', ')]])
  }
}
