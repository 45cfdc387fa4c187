/**
 * A CSM daemon: one per CSM, kept running by the node's supervisor. It owns the CSM's cgroup
 * subtree (the CPU and memory caps of all its containers together) and its state directory, runs
 * containers through the OCI runtime, and answers the node's CVM on a unix socket (mode 0600 in
 * a 0700 directory: only root on the node reaches it). On start it re-adopts its containers:
 * they keep running while the daemon is down.
 */
import fs from 'node:fs'
import { errorMessage } from '../lib/errors.js'
import { makeLogger } from '../lib/log.js'
import { nodePaths, readNodeConfig } from '../lib/nodeconfig.js'
import { ApiServer } from '../lib/http-server.js'
import { ContentStore } from '../lib/images/store.js'
import { LayerStore } from '../lib/images/unpack.js'
import { CgroupHost } from './runtime/cgroups.js'
import { ContainerManager } from './runtime/containers.js'
import { NbdVolumeAttacher } from './volumes/attach.js'
import { registerCsmRoutes } from './routes.js'
import { readCsmSpec } from './spec.js'
import { argValue } from '../lib/process.js'

async function main(): Promise<void> {
  const dataDir = argValue('--data-dir') ?? process.env.TESS_DATA_DIR
  const name = argValue('--csm')
  if (!dataDir || !name) {
    process.stderr.write('usage: csm --data-dir DIR --csm NAME\n')
    process.exit(2)
  }
  const log = makeLogger(`csm-${name}`)
  const cfg = readNodeConfig(dataDir)
  const paths = nodePaths(dataDir)
  const spec = readCsmSpec(paths.csmSpec(name))
  const host = await CgroupHost.detect({ parent: spec.cgroupParent })
  // Takes over the subtree after a restart; sets the limits from the spec (csm update rewrites it).
  const cgroup = await host.createCsm(name, { cpus: spec.cpus, memoryBytes: spec.memoryBytes })
  fs.mkdirSync(paths.imageContent, { recursive: true, mode: 0o700 })
  fs.mkdirSync(paths.imageLayers, { recursive: true, mode: 0o700 })
  const images = await new ContentStore(paths.imageContent).init()
  const layers = await new LayerStore(paths.imageLayers).init()
  const manager = new ContainerManager({
    csm: name,
    stateDir: paths.csmState(name),
    cgroup,
    images,
    layers,
    runtime: spec.runtime,
    log,
    volumes: new NbdVolumeAttacher(log, paths.nbdSocket),
  })
  const report = await manager.adopt()
  const api = new ApiServer({ log })
  registerCsmRoutes(api, { manager, cgroup, spec, log })
  await api.listenUnix(paths.csmSocket(name))
  log.info(`CSM ${name} (${spec.cpus} cpus, ${spec.memoryBytes} bytes) of node ${cfg.nodeName}: ${report.adopted.length} container(s) adopted, ${report.exited.length} exited meanwhile, ${report.cleaned.length} cleaned`)
  // containers whose restart policy asks are started again after they exit (also those that exited
  // while this daemon was down), once the node's CVM confirms this CSM is still placed here: after a
  // node loss it may have been failed over to another node with its containers and volumes
  manager.holdRestarts()
  manager.superviseRestarts()
  log.info('restarts held until the node\'s CVM confirms this CSM is placed on this node')

  let stopping = false
  const stop = async (sig: string) => {
    if (stopping) return
    stopping = true
    log.info(`stopping on ${sig}; containers keep running`)
    const force = setTimeout(() => process.exit(1), 5000)
    manager.stopSupervising()
    await api.close().catch(() => undefined) // stopping: the process exits next
    fs.rmSync(paths.csmSocket(name), { force: true })
    clearTimeout(force)
    process.exit(0)
  }
  process.on('SIGTERM', () => void stop('SIGTERM'))
  process.on('SIGINT', () => void stop('SIGINT'))
  process.on('SIGHUP', () => { /* detached: ignore */ })
}

main().catch((e) => {
  process.stderr.write(`${new Date().toISOString()} csm fatal: ${e instanceof Error ? e.stack ?? e.message : errorMessage(e)}\n`)
  process.exit(1)
})
