import { Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { keyValue, withSpinner } from '../../output.js'
import { TessError } from '../../../lib/errors.js'
import type { ClusterStatus } from '../../../lib/types.js'
import { nodeCertDaysDefault } from '../../../bootstrap/pki.js'
import { rotateNodeCertificates, type RotatedNode } from '../../../bootstrap/rotate.js'

export interface RotateCertsResult {
  dryRun: boolean
  days: number
  nodes: RotatedNode[]
  /** with --dry-run: the nodes and when their certificates expire now */
  plan?: Array<{ node: string, notAfter: string | null }>
}

export default class ClusterRotateCerts extends TessCommand<RotateCertsResult> {
  static override summary = 'Renew the certificate of every node, one node at a time, with nothing restarted'
  static override description = 'Each node\'s certificate (its API, NBD and data port listeners, its calls to other nodes, its etcd member\'s peer and client TLS) is replaced by a new one signed by the cluster CA, valid for --days: the pair is made on this machine with the CA key (kept where the cluster was created), written to the node\'s pki/, taken up by its CVM without a restart (connections already open go on), and checked: the node\'s API and etcd member present the new certificate before the next node is done. The CVM\'s own etcd client keeps presenting the certificate it started with until the CVM restarts; `tess cluster status` lists it and warns 30 days before it expires. Every node must be up. Needs role admin.'
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --days 365 --json', '<%= config.bin %> <%= command.id %> --dry-run']

  static override flags = {
    days: Flags.integer({ description: 'How long the new certificates are valid, in days.', default: nodeCertDaysDefault, min: 1, max: nodeCertDaysDefault }),
    'dry-run': Flags.boolean({ description: 'Print the nodes and when their certificates expire, change nothing.' }),
  }

  protected async exec(): Promise<RotateCertsResult> {
    const { flags } = await this.parseInput(ClusterRotateCerts)
    const ctx = this.context(flags.cluster)
    const client = this.client(ctx)
    const st = await client.get<ClusterStatus>('/v1/cluster/status')
    if (flags['dry-run']) {
      return { dryRun: true, days: flags.days, nodes: [], plan: st.nodes.map((n) => ({ node: n.name, notAfter: n.certificates?.find((c) => c.name === 'node')?.notAfter ?? null })) }
    }
    const down = st.nodes.filter((n) => n.state !== 'up')
    if (down.length > 0) throw new TessError('TESS_E_PRECONDITION', `cannot renew the certificates: node(s) ${down.map((n) => n.name).join(', ')} down`, 'bring them back (or remove them with tess host remove), then run the command again')
    const nodes = await withSpinner(!this.jsonMode, 'Renewing node certificates', (s) =>
      rotateNodeCertificates(ctx, client, st.nodes, flags.days, (node) => s.text(`Renewing node certificates: ${node}`)))
    return { dryRun: false, days: flags.days, nodes }
  }

  protected render(r: RotateCertsResult): string {
    if (r.dryRun) return keyValue((r.plan ?? []).map((p): [string, string] => [p.node, `certificate valid until ${p.notAfter ?? 'unknown'}; would get one valid for ${r.days} day(s)`]))
    return keyValue(r.nodes.map((n): [string, string] => [n.node, `new certificate ${n.serial} valid until ${n.notAfter} (was ${n.notAfterBefore ?? 'unknown'}); API${n.etcdChecked === true ? ' and etcd' : ''} present it`]))
  }
}
