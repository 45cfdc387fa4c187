import fs from 'node:fs'
import fsp from 'node:fs/promises'
import { errorMessage } from '../lib/errors.js'
import type { Logger } from '../lib/log.js'
import { nodePaths } from '../lib/nodeconfig.js'
import { ContentStore } from '../lib/images/store.js'
import { LayerStore } from '../lib/images/unpack.js'
import { CgroupHost } from './runtime/cgroups.js'
import { ContainerManager } from './runtime/containers.js'
import { NbdVolumeAttacher } from './volumes/attach.js'
import { readCsmSpec } from './spec.js'

export interface NodeCleanReport {
  csms: string[]
  containers: string[]
  errors: string[]
}

/**
 * Remove every container and CSM cgroup of a node whose daemons are stopped (cluster destroy):
 * each CSM's containers are adopted from their state directories and removed (killed,
 * unmounted, runtime state deleted), then the CSM's cgroup and directory go. Errors are
 * collected and the rest is still cleaned.
 */
export async function cleanNodeContainers(dataDir: string, log: Logger): Promise<NodeCleanReport> {
  const paths = nodePaths(dataDir)
  const report: NodeCleanReport = { csms: [], containers: [], errors: [] }
  let names: string[] = []
  try {
    names = (await fsp.readdir(paths.csms)).sort()
  } catch {
    return report
  }
  const images = new ContentStore(paths.imageContent)
  const layers = new LayerStore(paths.imageLayers)
  for (const name of names) {
    try {
      const spec = readCsmSpec(paths.csmSpec(name))
      const host = await CgroupHost.detect({ parent: spec.cgroupParent })
      const cgroup = host.csm(name)
      if (fs.existsSync(paths.csmState(name))) {
        const m = new ContainerManager({ csm: name, stateDir: paths.csmState(name), cgroup, images, layers, runtime: spec.runtime, log, volumes: new NbdVolumeAttacher(log, paths.nbdSocket) })
        await m.adopt()
        for (const c of await m.list()) {
          await m.remove(c.id, { force: true })
          report.containers.push(c.name)
        }
      }
      if (await cgroup.exists()) await cgroup.remove()
      await fsp.rm(paths.csmDir(name), { recursive: true, force: true })
      report.csms.push(name)
    } catch (e) {
      report.errors.push(`CSM ${name}: ${errorMessage(e)}`)
      log.warn(`cannot clean CSM ${name}: ${errorMessage(e)}`)
    }
  }
  return report
}
