#!/usr/bin/env node
// Container benchmark (issue: containers). One run, on the embedded cluster, measures:
//   start  - latency of a container that runs /bin/true, the image already on the node:
//            ours    POST /v1/containers until GET /v1/containers/NAME says 'exited' (polled every
//                    10 ms); the DELETE ?force=true after it is not timed
//            runc    `runc run` of an OCI bundle with the same busybox rootfs (config.json from
//                    `runc spec`, /bin/true, no terminal), which runs to the exit
//            CLI     `tess container run IMAGE --name NAME --csm CSM -- /bin/true` end to end, with
//                    hyperfine (--prepare removes the previous container) or a timing loop
//            median and p90 in ms; ratios of the medians to runc. Also the POST's own time (and the
//            status it returned) and `tess --version` alone (the CLI's start).
//   pull   - a 5-layer image (busybox-static + 4 layers of random data) from a docker-registry on
//            127.0.0.1, each run cold:
//            ours    POST /v1/images (download, verify, unpack), DELETE /v1/images between runs
//            skopeo  `skopeo copy docker://REF oci:DIR:x` (download and verify)
//            skopeo + umoci  the same, then `umoci unpack` (download and unpack)
//            median seconds; ratios of ours to each peer.
// Images are built with umoci and pushed with skopeo (as test/helpers/registry.ts does).
// Prints a Markdown table for each.
// Usage: node scripts/bench/containers.mjs [--runs 20] [--pull-runs 3] [--layer-mib 8] [--dir DIR]   (root)
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import {
  buildBenchImages, checkArgs, localCluster, opt, ratio, runcBundle, sh, sleep, startRegistry, stats, tess,
} from './common.mjs'

checkArgs('usage: node scripts/bench/containers.mjs [--runs 20] [--pull-runs 3] [--layer-mib 8] [--dir DIR]', ['runs', 'pull-runs', 'layer-mib', 'dir'], [])

const runs = Number(opt('runs', '20'))
const pullRuns = Number(opt('pull-runs', '3'))
const layerMiB = Number(opt('layer-mib', '8'))
const base = opt('dir', '/var/tmp')
const root = fs.mkdtempSync(path.join(base, 'tess-bench-ctr-'))
const configDir = path.join(root, 'config')
const clusterName = 'benchc'
const csm = 'bench'

const stops = []
const lines = []
try {
  console.error(`bench dir ${root} (${runs} start runs, ${pullRuns} pull runs, 4 x ${layerMiB} MiB) on ${os.cpus().length} cores`)

  // ---- registry and images
  const reg = await startRegistry(root)
  stops.push(reg.stop)
  const layout = path.join(root, 'oci')
  buildBenchImages(layout, root, layerMiB)
  const busyboxRef = `${reg.host}/bench/busybox:1`
  const multiRef = `${reg.host}/bench/multi:1`
  for (const [tag, ref] of [['busybox', busyboxRef], ['multi', multiRef]]) {
    sh('skopeo', ['copy', '--insecure-policy', '--dest-tls-verify=false', `oci:${layout}:${tag}`, `docker://${ref}`])
  }
  const multiBytes = JSON.parse(fs.readFileSync(path.join(layout, 'index.json'), 'utf8')).manifests
    .filter((m) => m.annotations?.['org.opencontainers.image.ref.name'] === 'multi')
    .map((m) => JSON.parse(fs.readFileSync(path.join(layout, 'blobs', ...m.digest.split(':')), 'utf8')).layers)[0]
    .reduce((n, l) => n + l.size, 0)
  console.error(`images pushed: ${busyboxRef}, ${multiRef} (${(multiBytes / 1048576).toFixed(1)} MiB of layers)`)

  // ---- cluster and API client (the contexts file lives in TESS_CONFIG_DIR: set it before the import)
  process.env.TESS_CONFIG_DIR = configDir
  const cluster = await localCluster(root, clusterName)
  stops.push(async () => cluster.tess(['cluster', 'destroy', '--yes', '--cluster', clusterName]))
  const { ApiClient } = await import('../../dist/lib/apiclient.js')
  const { resolveContext } = await import('../../dist/lib/contexts.js')
  const client = new ApiClient(resolveContext(clusterName))
  const api = (method, p, body) => client.request(method, p, body, { timeoutMs: 600_000 })
  await api('POST', '/v1/registries', { name: 'local', url: `http://${reg.host}`, insecure: true })
  await api('POST', '/v1/csms', { name: csm, cpus: 1, memoryBytes: 512 * 2 ** 20 })
  await api('POST', '/v1/images', { ref: busyboxRef })

  // ---- 1. start latency
  const postMs = [] // the POST alone, and the status it returned
  const postStatus = {}
  const ours = async (name) => {
    const t0 = performance.now()
    let c = await api('POST', '/v1/containers', { name, image: busyboxRef, csm, command: ['/bin/true'] })
    postMs.push(performance.now() - t0)
    postStatus[c.status] = (postStatus[c.status] ?? 0) + 1
    while (c.status !== 'exited') {
      c = await api('GET', `/v1/containers/${name}`)
      if (c.status === 'exited') break
      if (performance.now() - t0 > 60_000) throw new Error(`container ${name} still ${c.status} after 60 s`)
      await sleep(10)
    }
    const ms = performance.now() - t0
    await api('DELETE', `/v1/containers/${name}?force=true`)
    if (c.exitCode !== 0) throw new Error(`container ${name} exited with ${c.exitCode}`)
    return ms
  }
  await ours('warmup') // one untimed run of each first
  postMs.length = 0
  for (const k of Object.keys(postStatus)) delete postStatus[k]
  const oursMs = []
  for (let i = 0; i < runs; i++) oursMs.push(await ours(`start-${i}`))
  console.error(`ours  ${oursMs.map((m) => m.toFixed(0)).join(' ')}`)

  const bundleDir = path.join(root, 'runc-bundle')
  const runcRoot = path.join(root, 'runc-state')
  fs.mkdirSync(runcRoot)
  runcBundle(layout, 'busybox', bundleDir, ['/bin/true']) // the image's rootfs, as the node unpacks it
  const runc = (id) => {
    const t0 = performance.now()
    const r = spawnSync('runc', ['--root', runcRoot, 'run', '-b', bundleDir, id], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' })
    const ms = performance.now() - t0
    if (r.status !== 0) throw new Error(`runc run ${id} failed (${r.status}): ${r.stderr}`)
    return ms
  }
  runc('bench-warmup')
  const runcMs = []
  for (let i = 0; i < runs; i++) runcMs.push(runc(`bench-${i}`))
  console.error(`runc  ${runcMs.map((m) => m.toFixed(0)).join(' ')}`)

  const env = { ...process.env, TESS_CONFIG_DIR: configDir, NO_COLOR: '1' }
  const q = (s) => `'${s.replace(/'/g, `'\\''`)}'`
  const cliRun = `${q(process.execPath)} ${q(tess)} container run ${q(busyboxRef)} --name cli --csm ${csm} --cluster ${clusterName} --json -- /bin/true`
  const cliRemove = `${q(process.execPath)} ${q(tess)} container remove cli --force --yes --cluster ${clusterName} --json >/dev/null 2>&1 || true`
  let cliMs
  let cliHow
  if (spawnSync('hyperfine', ['--version']).status === 0) {
    const out = path.join(root, 'hyperfine.json')
    sh('hyperfine', ['--runs', String(runs), '--warmup', '1', '--prepare', cliRemove, '--export-json', out, '--style', 'none', cliRun], { env })
    cliMs = JSON.parse(fs.readFileSync(out, 'utf8')).results[0].times.map((s) => s * 1000)
    cliHow = 'hyperfine'
  } else {
    cliMs = []
    for (let i = -1; i < runs; i++) {
      sh('sh', ['-c', cliRemove], { env })
      const t0 = performance.now()
      sh('sh', ['-c', `${cliRun} >/dev/null`], { env })
      if (i >= 0) cliMs.push(performance.now() - t0)
    }
    cliHow = 'timing loop'
  }
  sh('sh', ['-c', cliRemove], { env })
  console.error(`cli   ${cliMs.map((m) => m.toFixed(0)).join(' ')}`)
  const aloneMs = []
  for (let i = -1; i < runs; i++) {
    const t0 = performance.now()
    sh(process.execPath, [tess, '--version'], { env })
    if (i >= 0) aloneMs.push(performance.now() - t0)
  }
  const cliAloneMs = stats(aloneMs).median

  const so = stats(oursMs)
  const sr = stats(runcMs)
  const sc = stats(cliMs)
  lines.push(`| start to exit, /bin/true (image on the node) | runs | median ms | p90 ms | / runc (median) |`)
  lines.push(`|---|---|---|---|---|`)
  lines.push(`| ours: POST /v1/containers until the container has exited | ${runs} | ${so.median.toFixed(1)} | ${so.p90.toFixed(1)} | ${ratio(so.median, sr.median)} |`)
  lines.push(`| \`runc run\` of a bundle (same rootfs, \`runc spec\`) | ${runs} | ${sr.median.toFixed(1)} | ${sr.p90.toFixed(1)} | 1.00 |`)
  lines.push(`| \`tess container run ... -- /bin/true\` (CLI, ${cliHow}) | ${runs} | ${sc.median.toFixed(1)} | ${sc.p90.toFixed(1)} | ${ratio(sc.median, sr.median)} |`)
  lines.push('')
  lines.push(`Of ours, the POST alone: median ${stats(postMs).median.toFixed(1)} ms (status it returned: ${Object.entries(postStatus).map(([k, v]) => `${k} ${v}x`).join(', ')}); `
    + `the CLI process alone (\`tess --version\`): median ${cliAloneMs.toFixed(1)} ms`)
  lines.push('')

  // ---- 2. pull time, each run cold (the busybox image shares its layer with the multi-layer one)
  await api('DELETE', `/v1/images?ref=${encodeURIComponent(busyboxRef)}`)
  const pullS = []
  const downloaded = []
  for (let i = 0; i < pullRuns; i++) {
    const t0 = performance.now()
    const res = await api('POST', '/v1/images', { ref: multiRef })
    pullS.push((performance.now() - t0) / 1000)
    downloaded.push(res.nodes.map((n) => n.downloadedBytes).reduce((a, b) => a + b, 0))
    await api('DELETE', `/v1/images?ref=${encodeURIComponent(multiRef)}`)
  }
  console.error(`ours pull  ${pullS.map((s) => s.toFixed(2)).join(' ')} s, downloaded ${downloaded.map((b) => (b / 1048576).toFixed(1)).join(' ')} MiB`)
  const skopeo = (dir) => sh('skopeo', ['copy', '--insecure-policy', '--src-tls-verify=false', `docker://${multiRef}`, `oci:${dir}:x`])
  const skopeoS = []
  const unpackS = []
  for (let i = 0; i < pullRuns; i++) {
    const dir = path.join(root, `skopeo-${i}`)
    let t0 = performance.now()
    skopeo(dir)
    skopeoS.push((performance.now() - t0) / 1000)
    fs.rmSync(dir, { recursive: true, force: true })
    const bundle = path.join(root, `unpack-${i}`)
    t0 = performance.now()
    skopeo(dir)
    sh('umoci', ['unpack', '--image', `${dir}:x`, bundle])
    unpackS.push((performance.now() - t0) / 1000)
    fs.rmSync(dir, { recursive: true, force: true })
    fs.rmSync(bundle, { recursive: true, force: true })
  }
  console.error(`skopeo     ${skopeoS.map((s) => s.toFixed(2)).join(' ')} s`)
  console.error(`skopeo+umoci ${unpackS.map((s) => s.toFixed(2)).join(' ')} s`)
  const po = stats(pullS).median
  const ps = stats(skopeoS).median
  const pu = stats(unpackS).median
  lines.push(`| cold pull, 5 layers, ${(multiBytes / 1048576).toFixed(1)} MiB | runs | median s | ours / this |`)
  lines.push(`|---|---|---|---|`)
  lines.push(`| ours: POST /v1/images (download, verify, unpack) | ${pullRuns} | ${po.toFixed(2)} | 1.00 |`)
  lines.push(`| \`skopeo copy\` to an OCI layout (download, verify) | ${pullRuns} | ${ps.toFixed(2)} | ${ratio(po, ps)} |`)
  lines.push(`| \`skopeo copy\` + \`umoci unpack\` (download, verify, unpack) | ${pullRuns} | ${pu.toFixed(2)} | ${ratio(po, pu)} |`)
  console.log(lines.join('\n'))
} finally {
  for (const s of stops.reverse()) {
    try {
      await s()
    } catch (e) {
      console.error(`cleanup: ${e.message}`)
    }
  }
  fs.rmSync(root, { recursive: true, force: true })
}
