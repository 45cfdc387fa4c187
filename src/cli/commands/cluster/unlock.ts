import { Flags } from '@oclif/core'
import { TessCommand } from '../../base.js'
import { clusterKeyFile, readClusterKey, unlockCluster, type UnlockResult } from '../../clusterkey.js'
import { keyValue } from '../../output.js'
import { TessError } from '../../../lib/errors.js'

export default class ClusterUnlock extends TessCommand<UnlockResult> {
  static override summary = 'Give the cluster its key, so that encrypted vDisks open'
  static override description = `The CVMs keep the cluster key (which wraps the keys of encrypted vDisks) in memory only. A CVM that restarts asks the others for it; after every CVM was restarted (a power cut), encrypted vDisks cannot be opened (NBD clients are refused with a message naming this command) until this command gives the key back. The key is checked against the cluster's check value: another cluster's key is refused. Needs role admin.`
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --key-file /secure/prod.key --json']

  static override flags = {
    'key-file': Flags.string({ description: 'The cluster key file (default: cluster.key in the cluster\'s state directory, written by the first `tess vdisk create --encrypted`).' }),
  }

  protected async exec(): Promise<UnlockResult> {
    const { flags } = await this.parseInput(ClusterUnlock)
    const ctx = this.context(flags.cluster)
    const file = flags['key-file'] ?? clusterKeyFile(ctx)
    const r = await unlockCluster(this.client(ctx), file, readClusterKey(file, false))
    if (r.failedNodes.length > 0) {
      this.warn(`not given to node(s) ${r.failedNodes.map((f) => `${f.node} (${f.error})`).join(', ')}: they ask the others for it every few seconds once they are up`)
    }
    if (r.unlockedNodes.length === 0) throw new TessError('TESS_E_UNREACHABLE', 'no CVM took the cluster key', 'see tess cluster status')
    return r
  }

  protected render(r: UnlockResult): string {
    return keyValue([['key file', r.keyFile], ['unlocked nodes', r.unlockedNodes.join(', ')], ['not reached', r.failedNodes.map((f) => f.node).join(', ') || '-']])
  }
}
