import type { Etcd3 } from 'etcd3'
import type { Logger } from '../../lib/log.js'
import type { NodeCall } from '../../lib/rpc/node-ops.js'
import { Containers } from './containers.js'
import { ControlContext } from './context.js'
import { Csms } from './csms.js'
import { Images } from './images.js'
import { CsmPools } from './pools.js'
import { Registries } from './registries.js'
import { Volumes, type VdiskOps } from './volumes.js'

/**
 * The cluster-wide half of containers, served by every CVM: one object per resource, each keeping
 * its records in etcd and routing each operation to the node that holds the CSM (node operations,
 * lib/rpc/node-ops.ts). The schedulers are in scheduler.ts; one node's side is agent.ts.
 */
export interface ContainerControl {
  csms: Csms
  pools: CsmPools
  registries: Registries
  images: Images
  containers: Containers
  volumes: Volumes
}

export interface ContainerControlOptions {
  etcd: Etcd3
  /** this node */
  self: string
  call: NodeCall
  log: Logger
  /** volumes are vDisks */
  vdisks: VdiskOps
  /** seals registry passwords and container environments before they go to etcd (lib/secretbox.ts) */
  secretsKey: Buffer | undefined
}

export function containerControl(o: ContainerControlOptions): ContainerControl {
  const ctx = new ControlContext(o.etcd, o.self, o.call, o.log, o.secretsKey)
  const volumes = new Volumes(ctx, o.vdisks)
  const pools = new CsmPools(ctx)
  return {
    csms: new Csms(ctx, pools, volumes),
    pools,
    registries: new Registries(ctx),
    images: new Images(ctx),
    containers: new Containers(ctx, volumes),
    volumes,
  }
}
