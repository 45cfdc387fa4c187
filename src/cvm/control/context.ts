import type { Etcd3 } from 'etcd3'
import { TessError, errorMessage } from '../../lib/errors.js'
import { etcdCall, getJson, keys, listJson } from '../../lib/etcd.js'
import type { Logger } from '../../lib/log.js'
import { checkName } from '../../lib/names.js'
import type { LocalCsm, NodeCall } from '../../lib/rpc/node-ops.js'
import type { NodeRecord, NodeStatusRecord } from '../../lib/types.js'
import { listCsmRecords, type ContainerRecord, type CsmPoolRecord, type CsmRecord, type VolumeRecord } from './records.js'

/** a node that does not tell its CSMs' state within this is shown down */
const nodeStatusTimeoutMs = 10_000

/**
 * What every resource of the container control shares (csms.ts, pools.ts, registries.ts,
 * images.ts, containers.ts, volumes.ts): etcd and the records in it (records.ts), the typed call
 * to any node's CVM (lib/rpc/node-ops.ts), this node's name and the log.
 */
export class ControlContext {
  /** `secretsKey` seals registry passwords and container environments before they go to etcd (lib/secretbox.ts) */
  constructor(readonly etcd: Etcd3, readonly self: string, readonly call: NodeCall, readonly log: Logger, readonly secretsKey: Buffer | undefined) {}

  /** The nodes whose CVM is up (this one always), sorted. */
  async upNodes(): Promise<string[]> {
    const [nodes, statuses] = await Promise.all([
      this.nodeRecords(),
      etcdCall('read node status', () => listJson<NodeStatusRecord>(this.etcd, keys.nodeStatusPrefix)),
    ])
    const up = new Set(statuses.map((s) => s.name))
    up.add(this.self)
    return nodes.filter((n) => up.has(n.name)).map((n) => n.name).sort()
  }

  nodeRecords(): Promise<NodeRecord[]> {
    return etcdCall('list nodes', () => listJson<NodeRecord>(this.etcd, keys.nodesPrefix))
  }

  async nodeRecord(name: string): Promise<NodeRecord> {
    const n = await etcdCall('read the node', () => getJson<NodeRecord>(this.etcd, keys.node(name)))
    if (n === undefined) throw new TessError('TESS_E_NOT_FOUND', `host "${name}" is not a node of this cluster`, 'see `tess host list`')
    return n
  }

  /** A CSM that exists (not being deleted). */
  async csmRecord(name: string): Promise<CsmRecord> {
    const r = await etcdCall('read the CSM', () => getJson<CsmRecord>(this.etcd, keys.csm(name)))
    if (r === undefined || r.deleting === true) throw new TessError('TESS_E_NOT_FOUND', `no CSM named "${name}"`, 'see `tess csm list`')
    return r
  }

  /** Every CSM record, those being deleted too. */
  csmRecords(): Promise<CsmRecord[]> {
    return listCsmRecords(this.etcd)
  }

  async poolRecord(name: string): Promise<CsmPoolRecord> {
    const p = await etcdCall('read the CSM pool', () => getJson<CsmPoolRecord>(this.etcd, keys.csmPool(name)))
    if (p === undefined) throw new TessError('TESS_E_NOT_FOUND', `no CSM pool named "${name}"`, 'see `tess csm-pool list`')
    return p
  }

  poolRecords(): Promise<CsmPoolRecord[]> {
    return etcdCall('list CSM pools', () => listJson<CsmPoolRecord>(this.etcd, keys.csmPoolsPrefix))
  }

  async containerRecord(name: string): Promise<ContainerRecord> {
    checkName('container', name)
    const r = await etcdCall('read the container', () => getJson<ContainerRecord>(this.etcd, keys.container(name)))
    if (r === undefined) throw new TessError('TESS_E_NOT_FOUND', `no container named "${name}"`, 'see `tess container list`')
    return r
  }

  containerRecords(): Promise<ContainerRecord[]> {
    return etcdCall('list containers', () => listJson<ContainerRecord>(this.etcd, keys.containersPrefix))
  }

  volumeRecords(): Promise<VolumeRecord[]> {
    return etcdCall('list volumes', () => listJson<VolumeRecord>(this.etcd, keys.volumesPrefix))
  }

  /** The CSMs of each node as its CVM tells them; undefined for a node that is down or does not answer. */
  async nodeStatus(nodes: string[]): Promise<Map<string, LocalCsm[] | undefined>> {
    const up = new Set(await this.upNodes())
    const out = new Map<string, LocalCsm[] | undefined>()
    await Promise.all([...new Set(nodes)].map(async (n) => {
      if (!up.has(n)) {
        out.set(n, undefined)
        return
      }
      out.set(n, await this.call(n, 'csm.status', {}, nodeStatusTimeoutMs).catch((e: unknown) => {
        this.log.warn(`status of the CSMs of ${n}: ${errorMessage(e)}`)
        return undefined
      }))
    }))
    return out
  }
}
