import { Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { clusterReadyTimeoutMs } from '../../../lib/limits.js'
import { saveContext } from '../../../lib/contexts.js'
import { keyValue, withSpinner } from '../../output.js'
import { createLocalCluster, localDefaults } from '../../../bootstrap/local.js'
import { PreflightFailed, createRemoteCluster, remotePortDefaults, type RemotePlan } from '../../../bootstrap/remote.js'
import { formatPreflight } from '../../../bootstrap/preflight.js'
import { TessError } from '../../../lib/errors.js'
import { formatBytes } from '../../../lib/units.js'
import type { ClusterStatus } from '../../../lib/types.js'

export interface ClusterCreateResult extends Partial<ClusterStatus> {
  name: string
  local: boolean
  dataDir: string | null
  endpoint: string | null
  /** with --dry-run: what would be done, and nothing else */
  plan?: RemotePlan
  dryRun: boolean
}

export default class ClusterCreate extends TessCommand<ClusterCreateResult> {
  static override summary = 'Create a cluster'
  static override description = `With --local, create the embedded single-node cluster on this machine: an etcd member, the node supervisor and the CVM, run from the data dir, with RF 1.

With --hosts, bootstrap the hosts over SSH: connect to every host (host keys pinned), run pre-flight checks on all of them in parallel and report every problem before changing anything (a host without cgroups, an OCI runtime, FUSE or loop devices gets a warning: it will serve storage but run no containers), install the daemon bundle, write each node's certificates (from a cluster CA made here) and config, start the supervisor on each host (which starts an etcd member on the first 1, 3 or 5 hosts, and the CVM), register the disks and save the context. Running the same command again after a partial failure resumes where it stopped.

Either way, the command returns only when the cluster takes writes: the CVM of every node sees every node up with its disks and can place data at the RF (--rf; 1 with --local). It waits up to ${clusterReadyTimeoutMs / 1000} s for that, then fails with TESS_E_TIMEOUT (exit 6) naming, per CVM, the nodes it does not see and why.

Host keys: on a terminal, an unknown host key is shown and you are asked; without a terminal, pass --known-hosts FILE (keys must be in it) or --accept-new-host-keys (unknown keys are accepted and recorded). A changed key is always refused.

The daemons keep running after the command returns; stop them with \`<%= config.bin %> cluster destroy\`.`

  static override examples = [
    { description: 'Create the embedded cluster with the defaults (data in /var/lib/tess)', command: '<%= config.bin %> <%= command.id %> --local' },
    { description: 'A second local cluster beside it, on other ports', command: '<%= config.bin %> <%= command.id %> --local --name dev --data-dir /tmp/tess-dev --api-port 9540 --nbd-port 10909 --etcd-client-port 2479 --etcd-peer-port 2480 --data-port 10910' },
    { description: 'Three hosts over SSH, two copies of every extent group', command: '<%= config.bin %> <%= command.id %> --name prod --hosts 10.0.0.11,10.0.0.12,10.0.0.13 --ssh-user root --ssh-key ~/.ssh/id_ed25519 --known-hosts ~/.ssh/known_hosts --rf 2' },
    { description: 'Show the plan only', command: '<%= config.bin %> <%= command.id %> --hosts h1,h2,h3 --ssh-key ~/.ssh/id_ed25519 --accept-new-host-keys --dry-run' },
  ]

  static override flags = {
    local: Flags.boolean({ description: 'Create the embedded single-node cluster on this machine.', exclusive: ['hosts'] }),
    hosts: Flags.string({ description: 'Hosts to bootstrap over SSH, comma-separated (addresses or names).', exclusive: ['local'] }),
    name: Flags.string({ description: 'Cluster name ([a-z0-9][a-z0-9-]{0,62}).', default: localDefaults.name }),
    'data-dir': Flags.string({ description: 'With --local: directory for the node\'s state, logs, certificates and its first disk.', default: localDefaults.dataDir }),
    bind: Flags.string({ description: 'With --local: address the API, NBD server, data port and etcd listen on.', default: localDefaults.bind }),
    'ssh-user': Flags.string({ description: 'With --hosts: SSH user (root, or a user with passwordless sudo).', default: 'root' }),
    'ssh-key': Flags.string({ description: 'With --hosts: private key file for SSH.' }),
    'ssh-port': Flags.integer({ description: 'With --hosts: SSH port.', default: 22, min: 1, max: 65535 }),
    'known-hosts': Flags.string({ description: 'With --hosts: known_hosts file the host keys must be in.' }),
    'accept-new-host-keys': Flags.boolean({ description: 'With --hosts: accept and record host keys seen for the first time (a changed key is still refused).' }),
    'install-deps': Flags.boolean({ description: 'With --hosts: install missing Debian packages (etcd-server, ...) on the hosts.' }),
    disk: Flags.string({ description: 'With --hosts: disk directory on every host (repeat for several; default /var/lib/tess/disks/d0).', multiple: true }),
    rf: Flags.integer({ description: 'With --hosts: default replication factor to plan for (checked against the host count).', min: 1, max: 3 }),
    'dry-run': Flags.boolean({ description: 'With --hosts: connect and run the pre-flight checks, print the plan, change nothing.' }),
    'api-port': Flags.integer({ description: 'Management API (HTTPS) port.', default: localDefaults.apiPort, min: 1, max: 65535 }),
    'nbd-port': Flags.integer({ description: 'NBD server port.', default: localDefaults.nbdPort, min: 1, max: 65535 }),
    'etcd-client-port': Flags.integer({ description: 'etcd client port.', default: localDefaults.etcdClientPort, min: 1, max: 65535 }),
    'etcd-peer-port': Flags.integer({ description: 'etcd peer port.', default: localDefaults.etcdPeerPort, min: 1, max: 65535 }),
    'data-port': Flags.integer({ description: 'Data port between CVMs (replication, forwarded I/O).', default: localDefaults.dataPort, min: 1, max: 65535 }),
  }

  protected async exec(): Promise<ClusterCreateResult> {
    const { flags } = await this.parseInput(ClusterCreate)
    if (!flags.local && !flags.hosts) throw new TessError('TESS_E_USAGE', 'say where the cluster runs: --local, or --hosts H1,H2,...', 'see `tess cluster create --help`')
    if (flags.local) {
      const created = await withSpinner(!this.jsonMode, 'Creating cluster', (s) => createLocalCluster({
        name: flags.name,
        dataDir: flags['data-dir'],
        bind: flags.bind,
        apiPort: flags['api-port'],
        nbdPort: flags['nbd-port'],
        etcdClientPort: flags['etcd-client-port'],
        etcdPeerPort: flags['etcd-peer-port'],
        dataPort: flags['data-port'],
      }, (step) => s.text(`Creating cluster "${flags.name}": ${step}`)))
      await saveContext(created.context)
      return { ...created.status, local: true, dataDir: created.context.local!.dataDir, endpoint: created.context.endpoints[0]!, dryRun: false }
    }
    const hosts = flags.hosts!.split(',').map((h) => h.trim()).filter(Boolean)
    if (!flags['ssh-key']) throw new TessError('TESS_E_USAGE', '--ssh-key is required with --hosts', 'pass --ssh-key PATH (a private key authorized on every host)')
    let policy: 'strict' | 'accept-new' | 'ask' = 'strict'
    if (flags['accept-new-host-keys']) policy = 'accept-new'
    else if (!flags['known-hosts'] && this.interactive) policy = 'ask'
    const steps = new Map<string, string>()
    const result = await withSpinner(!this.jsonMode, `Creating cluster "${flags.name}"`, async (s) => {
      const show = (host: string, step: string) => {
        steps.set(host, step)
        s.text(`Creating cluster "${flags.name}"\n${[...steps].map(([h, st]) => `  ${h}: ${st}`).join('\n')}`)
      }
      try {
        return await createRemoteCluster({
          name: flags.name,
          hosts,
          sshUser: flags['ssh-user'],
          sshKey: flags['ssh-key']!,
          sshPort: flags['ssh-port'],
          knownHostsFile: flags['known-hosts'],
          hostKeyPolicy: policy,
          ask: async (host, fp, type) => {
            const { confirm } = await import('@inquirer/prompts')
            return confirm({ message: `Host ${host} presents ${type} key ${fp}. Trust it?`, default: false }, { output: process.stderr })
          },
          rf: flags.rf ?? Math.min(2, hosts.length),
          disks: flags.disk ?? [],
          installDeps: flags['install-deps'],
          dryRun: flags['dry-run'],
          ports: { ...remotePortDefaults, api: flags['api-port'], nbd: flags['nbd-port'], etcdClient: flags['etcd-client-port'], etcdPeer: flags['etcd-peer-port'], data: flags['data-port'] },
        }, show)
      } catch (e) {
        if (e instanceof PreflightFailed && !this.jsonMode) process.stderr.write(formatPreflight(e.result, { onlyProblems: true }) + '\n')
        throw e
      }
    })
    if ('dryRun' in result) return { name: flags.name, local: false, dataDir: null, endpoint: null, plan: result.plan, dryRun: true }
    await saveContext(result.context)
    return { ...result.status, local: false, dataDir: null, endpoint: result.context.endpoints[0]!, plan: result.plan, dryRun: false }
  }

  protected render(r: ClusterCreateResult): string {
    if (r.dryRun && r.plan) {
      const p = r.plan
      return [`Plan for cluster "${p.cluster}" (nothing was changed):`, ...p.nodes.map((n) => `  ${n.host}: node ${n.name}${n.etcdMember ? ', etcd member' : ''}, disks ${n.disks.join(', ')} (${n.state})`),
        `  RF ${p.rf}; ports API ${p.ports.api}, NBD ${p.ports.nbd}, data ${p.ports.data}, etcd ${p.ports.etcdClient}/${p.ports.etcdPeer}`].join('\n')
    }
    return keyValue([
      ['cluster', r.name],
      ['id', r.id],
      ['endpoint', r.endpoint],
      ['data dir', r.dataDir],
      ['nodes', r.nodes?.map((n) => n.name).join(', ')],
      ['pool capacity', formatBytes(r.pool?.capacityBytes ?? 0)],
      ['pool free', formatBytes(r.pool?.freeBytes ?? 0)],
    ]) + `\n\nCluster "${r.name}" is running and is now the current context. Next: tess vdisk create NAME --size 10G`
  }
}
