import { Flags } from '@oclif/core'
import { TessCommand } from '../../cli/base.js'
import { saveContext } from '../../cli/contexts.js'
import { keyValue, withSpinner } from '../../cli/output.js'
import { createLocalCluster, localDefaults } from '../../bootstrap/local.js'
import { TessError } from '../../common/errors.js'
import { formatBytes } from '../../common/units.js'
import type { ClusterStatus } from '../../common/types.js'

export interface ClusterCreateResult extends ClusterStatus {
  local: boolean
  dataDir: string
  endpoint: string
}

export default class ClusterCreate extends TessCommand<ClusterCreateResult> {
  static override summary = 'Create a cluster'
  static override description = `With --local, create the embedded single-node cluster on this machine: an etcd member, the node supervisor and the CVM, run from the data dir, with RF 1. A cluster CA, node certificate and API credentials are generated, one disk is registered under the data dir and the cluster context is saved (and made current).

The daemons keep running after the command returns; stop them with \`<%= config.bin %> cluster destroy\`.`

  static override examples = [
    { description: 'Create the embedded cluster with the defaults (data in /var/lib/tess)', command: '<%= config.bin %> <%= command.id %> --local' },
    { description: 'A second local cluster beside it, on other ports', command: '<%= config.bin %> <%= command.id %> --local --name dev --data-dir /tmp/tess-dev --api-port 9540 --nbd-port 10909 --etcd-client-port 2479 --etcd-peer-port 2480' },
  ]

  static override flags = {
    local: Flags.boolean({ description: 'Create the embedded single-node cluster on this machine.', required: true }),
    name: Flags.string({ description: 'Cluster name ([a-z0-9][a-z0-9-]{0,62}).', default: localDefaults.name }),
    'data-dir': Flags.string({ description: 'Directory for the node\'s state, logs, certificates and its first disk.', default: localDefaults.dataDir }),
    bind: Flags.string({ description: 'Address the API, NBD server and etcd listen on.', default: localDefaults.bind }),
    'api-port': Flags.integer({ description: 'Management API (HTTPS) port.', default: localDefaults.apiPort, min: 1, max: 65535 }),
    'nbd-port': Flags.integer({ description: 'NBD server port.', default: localDefaults.nbdPort, min: 1, max: 65535 }),
    'etcd-client-port': Flags.integer({ description: 'etcd client port.', default: localDefaults.etcdClientPort, min: 1, max: 65535 }),
    'etcd-peer-port': Flags.integer({ description: 'etcd peer port.', default: localDefaults.etcdPeerPort, min: 1, max: 65535 }),
    'data-port': Flags.integer({ description: 'Data port between CVMs (replication, forwarded I/O).', default: localDefaults.dataPort, min: 1, max: 65535 }),
  }

  protected async exec(): Promise<ClusterCreateResult> {
    const { flags } = await this.parseInput(ClusterCreate)
    if (!flags.local) throw new TessError('TESS_E_USAGE', 'only --local is supported by this version', 'run `tess cluster create --local`')
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
    saveContext(created.context)
    return { ...created.status, local: true, dataDir: created.context.local!.dataDir, endpoint: created.context.endpoints[0]! }
  }

  protected render(r: ClusterCreateResult): string {
    return keyValue([
      ['cluster', r.name],
      ['id', r.id],
      ['endpoint', r.endpoint],
      ['data dir', r.dataDir],
      ['nodes', r.nodes.map((n) => n.name).join(', ')],
      ['pool capacity', formatBytes(r.pool.capacityBytes)],
      ['pool free', formatBytes(r.pool.freeBytes)],
    ]) + `\n\nCluster "${r.name}" is running and is now the current context. Next: tess vdisk create NAME --size 10G`
  }
}
