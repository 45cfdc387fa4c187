/** Result types shared by the management API and the CLI. Keys are stable: add, never rename. */

export interface DaemonInfo {
  name: string
  pid: number | null
  healthy: boolean
  restarts: number
}

export interface NodeInfo {
  name: string
  address: string
  state: 'up' | 'down'
  daemons: DaemonInfo[]
  apiPort: number
  nbdPort: number
  lastSeenAt: string | null
}

export interface DiskInfo {
  id: string
  node: string
  path: string
  state: 'online' | 'offline'
  capacityBytes: number
  usedBytes: number
  freeBytes: number
  addedAt: string
}

export interface PoolInfo {
  capacityBytes: number
  usedBytes: number
  freeBytes: number
  disks: DiskInfo[]
}

export interface VdiskInfo {
  id: string
  name: string
  sizeBytes: number
  rf: number
  allocatedBytes: number
  owner: string | null
  nbdUri: string
  createdAt: string
}

export interface ClusterStatus {
  name: string
  id: string
  createdAt: string
  nodes: NodeInfo[]
  pool: PoolInfo
  vdiskCount: number
}

export interface HealthInfo {
  node: string
  clusterName: string
  pid: number
  etcd: boolean
  version: string
}

/** Records as stored in etcd. */
export interface ClusterRecord { name: string, id: string, createdAt: string }
export interface NodeRecord { name: string, address: string, apiPort: number, nbdPort: number, dataPort: number, joinedAt: string, draining?: boolean }
export interface NodeStatusRecord {
  name: string
  at: string
  daemons: DaemonInfo[]
  disks: Record<string, { capacityBytes: number, freeBytes: number, usedBytes: number, dev: number }>
}
export interface DiskRecord { id: string, node: string, path: string, addedAt: string }
export interface VdiskRecord {
  id: string
  name: string
  sizeBytes: number
  rf: number
  createdAt: string
  state: 'ready' | 'deleting'
}
