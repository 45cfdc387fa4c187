import fs from 'node:fs'
import { TessError } from '../lib/errors.js'
import type { RuntimeName } from '../lib/csm-types.js'

/**
 * What one CSM daemon runs with: `<dataDir>/csms/NAME/csm.json`. The node's CVM writes it (from
 * the CSM record in etcd); the supervisor runs one daemon per file; the daemon reads it at start.
 */
export interface CsmSpec {
  version: 1
  name: string
  id: string
  cpus: number
  memoryBytes: number
  runtime: RuntimeName
  /** cgroup under which every CSM of this cluster on this node has its subtree (`/tess-<cluster id>`) */
  cgroupParent: string
}

export function readCsmSpec(file: string): CsmSpec {
  let spec: CsmSpec
  try {
    spec = JSON.parse(fs.readFileSync(file, 'utf8')) as CsmSpec
  } catch (e) {
    throw new TessError('TESS_E_NOT_FOUND', `cannot read CSM spec "${file}": ${e instanceof Error ? e.message : String(e)}`, 'the node\'s CVM writes it when the CSM is created')
  }
  if (spec.version !== 1) throw new TessError('TESS_E_INVALID', `CSM spec "${file}" has unknown version ${String(spec.version)}`, 'upgrade tess')
  return spec
}

/** The cgroup parent of a cluster's CSMs on a node: one per cluster, so test clusters sharing a machine never meet. */
export function cgroupParentFor(clusterId: string): string {
  return `/tess-${clusterId.replace(/[^a-zA-Z0-9]/g, '').slice(0, 12)}`
}
