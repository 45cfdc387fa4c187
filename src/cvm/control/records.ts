import type { NetworkMode, RuntimeName, VolumeAttachment } from '../../lib/csm-types.js'
import type { RestartPolicy, VolumeMount } from '../../lib/container-spec.js'
import type { Etcd3 } from 'etcd3'
import { etcdCall, keys, listJson } from '../../lib/etcd.js'

/** Records of the container half of the cluster, as stored in etcd (keys in src/lib/etcd.ts). */

export interface CsmRecord {
  name: string
  /** from the `csm` id counter */
  id: string
  node: string
  cpus: number
  memoryBytes: number
  runtime: RuntimeName
  createdAt: string
  /** a delete has begun: the node removes it, then the record goes */
  deleting?: boolean
}

export interface CsmPoolRecord {
  name: string
  csms: string[]
  createdAt: string
}

export interface RegistryRecord {
  name: string
  url: string
  host: string
  insecure: boolean
  username: string | null
  hasPassword: boolean
  createdAt: string
}

export interface RegistryPolicyRecord {
  allow: string[]
  deny: string[]
}

/** A container's name reservation and placement. Its live state is the CSM's. */
export interface ContainerRecord {
  name: string
  /** the CSM's id for it; null while it is being created */
  id: string | null
  csm: string
  node: string
  image: string
  cpus: number | null
  memoryBytes: number | null
  network: NetworkMode
  /** what it runs (for a move to another CSM) */
  command?: string[]
  /** its environment in the clear: only records written by an older tess, or on a node without a secrets key */
  env?: string[]
  /** its environment (KEY=VALUE entries, often credentials) as JSON sealed under the secrets key (see secretbox.ts) */
  envSealed?: string
  volumes?: VolumeMount[]
  /** runs in a user namespace (csm/runtime/userns.ts) */
  userns?: boolean
  /** started again after it exits, and on another node when its node is lost (absent: no) */
  restart?: RestartPolicy
  /** creating: the name is reserved and the run is under way (by `apiNode`) */
  state: 'creating' | 'created'
  apiNode: string
  createdAt: string
}

export type { VolumeMount }

export interface VolumeRecord {
  name: string
  /** the vDisk holding it: `vol-<name>` */
  vdisk: string
  sizeBytes: number
  rf: number
  formatted: boolean
  attachments: VolumeAttachment[]
  createdAt: string
  /** a clone's volume and snapshot (shown only: the reference that counts is its vDisk's) */
  parent?: { volume: string, snapshot: string }
}

/** every CSM record in the cluster, or those of one node (the API, the control context and the node agent) */
export async function listCsmRecords(etcd: Etcd3, node?: string): Promise<CsmRecord[]> {
  const all = await etcdCall('list CSMs', () => listJson<CsmRecord>(etcd, keys.csmsPrefix))
  return node === undefined ? all : all.filter((c) => c.node === node)
}
