import crypto from 'node:crypto'
import type { Etcd3 } from 'etcd3'
import { TessError } from '../../lib/errors.js'
import { etcdCall, followEtcd, keys } from '../../lib/etcd.js'
import type { Logger } from '../../lib/log.js'
import { clusterKeyBytes, clusterKeyCheck } from './crypt.js'

/** how often a locked CVM asks the other CVMs for the cluster key */
export const clusterKeyAskMs = 5_000

/**
 * The cluster key (the key that wraps the data keys of encrypted vDisks) on this CVM: in memory
 * only, never on a disk. It arrives from the operator (`tess cluster unlock`, through the API) or
 * from another CVM (node operations, mutually authenticated with node certificates): a CVM that
 * starts asks the others, every few seconds while it has none. etcd holds only a check value (an
 * HMAC under the key), so a wrong key is refused and the first key given becomes the cluster's.
 */
export class KeyKeeper {
  private key: Buffer | undefined
  private follower: { stop(): void } | undefined

  constructor(private readonly etcd: Etcd3, private readonly log: Logger, private readonly askPeers: () => Promise<Buffer | undefined>) {}

  get current(): Buffer | undefined {
    return this.key
  }

  /** Take the cluster key after checking it against the cluster's check value (set by the first key given). */
  async unlock(key: Buffer): Promise<void> {
    if (key.length !== clusterKeyBytes) throw new TessError('TESS_E_INVALID', `a cluster key is ${clusterKeyBytes} bytes, not ${key.length}`, 'give the key file `tess vdisk create --encrypted` wrote')
    const check = clusterKeyCheck(key)
    const stored = await etcdCall('read the cluster key check', () => this.etcd.get(keys.clusterKeyCheck).string())
    if (stored === null) {
      const res = await etcdCall('store the cluster key check', () => this.etcd.if(keys.clusterKeyCheck, 'Create', '==', 0).then(this.etcd.put(keys.clusterKeyCheck).value(check)).commit())
      if (!res.succeeded) return this.unlock(key)
    } else if (!crypto.timingSafeEqual(Buffer.from(stored), Buffer.from(check))) {
      throw new TessError('TESS_E_FORBIDDEN', 'this is not the cluster key: its check value differs from the one in etcd', 'give the key file of this cluster (tess cluster unlock --key-file)')
    }
    if (this.key === undefined) this.log.info('cluster key received: encrypted vDisks can be opened')
    this.key = key
  }

  /** whether the cluster has a key at all (an encrypted vDisk was ever made) */
  async clusterHasKey(): Promise<boolean> {
    return (await etcdCall('read the cluster key check', () => this.etcd.get(keys.clusterKeyCheck).string())) !== null
  }

  /**
   * Ask the other CVMs for the key now, every clusterKeyAskMs while this one has none, and as soon
   * as the cluster gets one (its check value appears in etcd).
   */
  start(): void {
    this.follower = followEtcd(this.etcd, { key: keys.clusterKeyCheck }, { what: 'cluster key: from the other CVMs', log: this.log, pollMs: clusterKeyAskMs }, async () => {
      if (this.key !== undefined || !(await this.clusterHasKey())) return
      const k = await this.askPeers()
      if (k !== undefined) await this.unlock(k)
    })
  }

  stop(): void {
    this.follower?.stop()
  }
}
