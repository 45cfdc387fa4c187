import { usernsHostIdBase } from '../lib/limits.js'
import type {
  ContainerRemoveResult, ContainerView, CsmDeleteResult, CsmInfo, CsmPoolInfo, ImageInfo, ImagePullProgress, ImagePullResult, ImageRemoveResult,
  RegistryInfo, RegistryPolicyInfo, StatsResult, UsageStats, VolumeInfo,
} from '../lib/csm-types.js'
import { formatBytes } from '../lib/units.js'
import { formatAge, shortDigest } from './csm-input.js'
import { keyValue, table } from './output.js'

/** Text renderings of the container half of the API: tables for lists, key: value for one thing. */

const yesNo = (b: boolean): string => (b ? 'yes' : 'no')
const cpus = (n: number | null | undefined): string => (n === null || n === undefined ? '-' : String(Number(n.toFixed(3))))
const bytesOrDash = (n: number | null | undefined): string => (n === null || n === undefined ? '-' : formatBytes(n))

// CSMs

export function renderCsm(c: CsmInfo): string {
  return keyValue([
    ['name', c.name],
    ['id', c.id],
    ['node', c.node],
    ['state', c.state],
    ['pid', c.pid],
    ['runtime', c.runtime],
    ['cpus', cpus(c.cpus)],
    ['memory', `${formatBytes(c.memoryBytes)} (${c.memoryBytes} bytes)`],
    ['containers', c.containers],
    ['reserved cpus', `${cpus(c.reservedCpus)} of ${cpus(c.cpus)}`],
    ['reserved memory', `${formatBytes(c.reservedMemoryBytes)} of ${formatBytes(c.memoryBytes)}`],
    ['created', c.createdAt],
  ])
}

export function renderCsmList(list: CsmInfo[]): string {
  if (list.length === 0) return 'No CSMs. Create one with: tess csm create NAME --cpus 2 --memory 2G'
  return table(['name', 'node', 'state', 'cpus', 'memory', 'containers', 'reserved (cpus/mem)', 'runtime'], list.map((c) => [
    c.name, c.node, c.state, cpus(c.cpus), formatBytes(c.memoryBytes), c.containers,
    `${cpus(c.reservedCpus)} / ${formatBytes(c.reservedMemoryBytes)}`, c.runtime,
  ]))
}

export function renderCsmDeleted(r: CsmDeleteResult): string {
  return keyValue([['deleted CSM', r.name], ['node', r.node], ['containers removed', r.containersRemoved.join(', ') || '-']])
}

// CSM pools

export function renderCsmPool(p: CsmPoolInfo): string {
  return keyValue([['name', p.name], ['csms', p.csms.join(', ') || '-'], ['created', p.createdAt]])
}

export function renderCsmPoolList(list: CsmPoolInfo[]): string {
  if (list.length === 0) return 'No CSM pools. Create one with: tess csm-pool create NAME --csm CSM1,CSM2'
  return table(['name', 'csms', 'created'], list.map((p) => [p.name, p.csms.join(', ') || '-', formatAge(p.createdAt)]))
}

// registries

/** Who the registry is accessed as; never a password, only whether one is stored. */
export function registryCredentials(r: RegistryInfo): string {
  if (r.username === null && !r.hasPassword) return 'no'
  return `${r.username ?? '-'} (password: ${yesNo(r.hasPassword)})`
}

export function renderRegistry(r: RegistryInfo): string {
  return keyValue([
    ['name', r.name],
    ['url', r.url],
    ['host', r.host],
    ['insecure', yesNo(r.insecure)],
    ['username', r.username ?? '-'],
    ['password', r.hasPassword ? 'stored' : 'none'],
    ['created', r.createdAt],
  ])
}

export function renderRegistryList(list: RegistryInfo[]): string {
  if (list.length === 0) return 'No registries. Add one with: tess registry add NAME https://registry.example.com'
  return table(['name', 'url', 'host', 'insecure', 'credentials', 'created'],
    list.map((r) => [r.name, r.url, r.host, yesNo(r.insecure), registryCredentials(r), formatAge(r.createdAt)]))
}

export function renderPolicy(p: RegistryPolicyInfo): string {
  const section = (title: string, patterns: string[]): string =>
    [`${title}:`, ...(patterns.length === 0 ? ['  (none)'] : patterns.map((x) => `  ${x}`))].join('\n')
  return `${section('allow', p.allow)}\n${section('deny', p.deny)}`
}

// images

export function renderImageList(list: ImageInfo[]): string {
  if (list.length === 0) return 'No images. Pull one with: tess image pull HOST[:PORT]/REPOSITORY[:TAG]'
  return table(['node', 'ref', 'digest', 'size', 'layers', 'used by'],
    list.map((i) => [i.node, i.ref, shortDigest(i.digest), formatBytes(i.sizeBytes), i.layers, i.usedBy.join(', ') || '-']))
}

export function renderImagePull(r: ImagePullResult): string {
  const kv = keyValue([
    ['pulled', r.ref],
    ['digest', r.digest],
    ['size', `${formatBytes(r.sizeBytes)} (${r.sizeBytes} bytes)`],
    ['layers', r.layers],
    ['platform', r.platform],
  ])
  if (r.nodes.length === 0) return kv
  return `${kv}\n${table(['node', 'downloaded', 'seconds'], r.nodes.map((n) => [n.node, formatBytes(n.downloadedBytes), n.seconds.toFixed(1)]))}`
}

/**
 * How far a pull is, for a spinner, from what the nodes report (GET /v1/images/pulls): layers and
 * compressed bytes done of the totals, summed over the nodes that pull it; undefined when no node
 * pulls it (not begun, or already done).
 */
export function pullProgressText(views: ImagePullProgress[]): string | undefined {
  if (views.length === 0) return undefined
  const where = views.length === 1 ? `on ${views[0]!.node}` : `on ${views.length} nodes`
  if (views.every((v) => v.state === 'waiting')) return `waiting for other pulls ${where}`
  if (views.some((v) => v.layersTotal === null || v.bytesTotal === null)) return `reading the manifest ${where}`
  const sum = (f: (v: ImagePullProgress) => number) => views.reduce((n, v) => n + f(v), 0)
  return `${sum((v) => v.layersDone)}/${sum((v) => v.layersTotal!)} layers, ${formatBytes(sum((v) => v.bytesDone))} of ${formatBytes(sum((v) => v.bytesTotal!))} ${where}`
}

export function renderImageRemoved(r: ImageRemoveResult): string {
  return keyValue([['removed image', r.ref], ['from nodes', r.nodes.join(', ') || '-']])
}

// containers

/** `running`, `exited (0)`, `exited (137, OOM-killed)`, ... */
export function containerStatus(c: Pick<ContainerView, 'status' | 'exitCode' | 'oomKilled'>): string {
  if (c.status !== 'exited') return c.status
  const parts: string[] = []
  if (c.exitCode !== null) parts.push(String(c.exitCode))
  if (c.oomKilled) parts.push('OOM-killed')
  return parts.length > 0 ? `exited (${parts.join(', ')})` : 'exited'
}

/** A command line for people: words with spaces or quotes are single-quoted. */
export function formatCommand(argv: string[]): string {
  return argv.map((a) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ')
}

export function renderContainer(c: ContainerView): string {
  const pairs: Array<[string, string | number | boolean | null | undefined]> = [
    ['name', c.name],
    ['id', c.id],
    ['status', containerStatus(c)],
    ['csm', c.csm],
    ['node', c.node],
    ['image', c.image],
    ['image digest', c.imageDigest],
    ['runtime', c.runtime],
    ['command', c.command.length > 0 ? formatCommand(c.command) : '(image default)'],
    ['cpus', c.cpus === null ? 'no limit' : cpus(c.cpus)],
    ['memory', c.memoryBytes === null ? 'no limit' : `${formatBytes(c.memoryBytes)} (${c.memoryBytes} bytes)`],
    ['network', c.network],
    ['user namespace', c.userns ? `yes (root is host uid ${usernsHostIdBase})` : 'no'],
    ['restart', `${c.restartPolicy}${c.restartPolicy !== 'no' ? ` (restarted ${c.restartCount} time(s)${c.nextRestartAt !== null ? `, next at ${c.nextRestartAt}` : ''})` : ''}`],
    ['pid', c.pid],
    ['created', c.createdAt],
    ['started', c.startedAt],
    ['finished', c.finishedAt],
  ]
  if (c.status === 'exited') {
    pairs.push(['exit code', c.exitCode], ['oom killed', yesNo(c.oomKilled)])
  }
  if (c.exitNote) pairs.push(['note', c.exitNote])
  pairs.push(['volumes', c.volumes.length > 0 ? c.volumes.map((v) => `${v.name}:${v.target}${v.readOnly ? ':ro' : ''}`).join(', ') : '-'])
  if (c.addresses !== undefined) pairs.push(['addresses', `${c.addresses.join(', ') || '-'} (${c.network === 'none' ? 'loopback only: network none' : `its node's: network ${c.network}`})`])
  const env = c.env.length > 0 ? `\nenv:\n${c.env.map((e) => `  ${e}`).join('\n')}` : ''
  return keyValue(pairs) + env
}

export function renderContainerList(list: ContainerView[]): string {
  if (list.length === 0) return 'No containers. Run one with: tess container run IMAGE --name NAME'
  return table(['name', 'id', 'node', 'csm', 'image', 'status', 'created'],
    list.map((c) => [c.name, c.id.slice(0, 12), c.node, c.csm, c.image, containerStatus(c), formatAge(c.createdAt)]))
}

export function renderContainerRemoved(r: ContainerRemoveResult): string {
  return keyValue([['removed container', r.name], ['id', r.id], ['csm', r.csm], ['node', r.node]])
}

// stats

const cpuPercent = (s: UsageStats): string => (s.cpuCpus === null ? '-' : `${(s.cpuCpus * 100).toFixed(1)}%`)
const memory = (s: UsageStats): string => `${formatBytes(s.memoryUsageBytes)} / ${bytesOrDash(s.memoryLimitBytes)}`
const pids = (s: UsageStats): string => (s.pidsLimit === null ? String(s.pidsCurrent) : `${s.pidsCurrent} / ${s.pidsLimit}`)

export function renderStats(r: StatsResult): string {
  const containers = r.containers.length === 0
    ? 'No containers.'
    : table(['name', 'node', 'csm', 'cpu%', 'cpu limit', 'memory / limit', 'pids', 'oom kills', 'throttled'],
      r.containers.map((s) => [s.name, s.node, s.csm, cpuPercent(s), cpus(s.cpuLimitCpus), memory(s), pids(s), s.oomKills, s.cpuThrottledPeriods]))
  const csms = r.csms.length === 0
    ? 'No CSMs.'
    : table(['csm', 'node', 'containers', 'cpu%', 'cpu limit', 'memory / limit', 'pids', 'oom kills', 'throttled'],
      r.csms.map((s) => [s.csm, s.node, s.containers, cpuPercent(s), cpus(s.cpuLimitCpus), memory(s), pids(s), s.oomKills, s.cpuThrottledPeriods]))
  return `Containers\n${containers}\n\nCSMs\n${csms}`
}

export function renderVolume(v: VolumeInfo): string {
  return keyValue([
    ['name', v.name],
    ['vdisk', v.vdisk],
    ['size', formatBytes(v.sizeBytes)],
    ['rf', String(v.rf)],
    ['encrypted', v.encrypted ? 'yes' : 'no'],
    ['allocated', formatBytes(v.allocatedBytes)],
    ['formatted', v.formatted ? 'ext4' : 'not yet (on the first read-write attach)'],
    ['attached', v.attachments.length === 0 ? '-' : v.attachments.map((a) => `${a.container} on ${a.node} at ${a.target} (${a.readOnly ? 'ro' : 'rw'})`).join(', ')],
    ...(v.parent !== undefined ? [['clone of', v.parent] as [string, string]] : []),
    ['created', v.createdAt],
  ])
}

export function renderVolumeList(list: VolumeInfo[]): string {
  return table(['name', 'size', 'allocated', 'rf', 'attached to'], list.map((v) => [
    v.name, formatBytes(v.sizeBytes), formatBytes(v.allocatedBytes), String(v.rf),
    v.attachments.length === 0 ? '-' : v.attachments.map((a) => `${a.container}@${a.node}${a.readOnly ? ' (ro)' : ''}`).join(', '),
  ]))
}
