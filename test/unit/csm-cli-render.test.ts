import { beforeAll, describe, expect, it } from 'vitest'
import type { ContainerView, CsmInfo, ImageInfo, ImagePullProgress, RegistryInfo, StatsResult } from '../../src/lib/csm-types.js'
import {
  containerStatus, formatCommand, pullProgressText, registryCredentials, renderContainer, renderContainerList, renderCsm, renderCsmList, renderImageList,
  renderPolicy, renderRegistry, renderRegistryList, renderStats,
} from '../../src/cli/render-csm.js'

beforeAll(() => {
  process.env.NO_COLOR = '1'
})

const container: ContainerView = {
  id: '0123456789abcdef0123',
  name: 'web1',
  csm: 'small',
  node: 'node1',
  image: '127.0.0.1:5000/test/busybox:1.36',
  imageDigest: `sha256:${'a'.repeat(64)}`,
  runtime: 'runc',
  status: 'exited',
  createdAt: '2025-01-01T00:00:00Z',
  startedAt: '2025-01-01T00:00:01Z',
  finishedAt: '2025-01-01T00:00:02Z',
  pid: null,
  exitCode: 137,
  oomKilled: true,
  exitNote: null,
  command: ['sh', '-c', "echo 'hi there'"],
  env: ['A=1'],
  cpus: 0.5,
  memoryBytes: 256 * 2 ** 20,
  network: 'none', userns: false,
  volumes: [{ name: 'data', target: '/data', readOnly: false }, { name: 'conf', target: '/etc/app', readOnly: true }],
  restartPolicy: 'no', restartCount: 0, nextRestartAt: null,
}

const registry: RegistryInfo = {
  name: 'corp', url: 'https://registry.corp.example', host: 'registry.corp.example', insecure: false, username: 'ci', hasPassword: true, createdAt: '2025-01-01T00:00:00Z',
}

describe('container rendering', () => {
  it('status shows the exit code and OOM kills of exited containers', () => {
    expect(containerStatus({ status: 'running', exitCode: null, oomKilled: false })).toBe('running')
    expect(containerStatus({ status: 'exited', exitCode: 0, oomKilled: false })).toBe('exited (0)')
    expect(containerStatus({ status: 'exited', exitCode: 137, oomKilled: true })).toBe('exited (137, OOM-killed)')
    expect(containerStatus({ status: 'exited', exitCode: null, oomKilled: false })).toBe('exited')
  })
  it('quotes command words for people', () => {
    expect(formatCommand(['sh', '-c', "echo 'hi there'"])).toBe(`sh -c 'echo '\\''hi there'\\'''`)
    expect(formatCommand(['ls', '/tmp', 'a=b'])).toBe('ls /tmp a=b')
    expect(formatCommand(['', 'x y'])).toBe(`'' 'x y'`)
  })
  it('list shows a 12-character id and the status', () => {
    const t = renderContainerList([container])
    expect(t).toContain('0123456789ab ')
    expect(t).not.toContain('0123456789abc')
    expect(t).toContain('exited (137, OOM-killed)')
    expect(renderContainerList([])).toMatch(/^No containers/)
  })
  it('show has key: value lines', () => {
    const t = renderContainer(container)
    expect(t).toMatch(/^name: +web1$/m)
    expect(t).toMatch(/^memory: +256 MiB/m)
    expect(t).toMatch(/^oom killed: +yes$/m)
    expect(t).toContain('  A=1')
    expect(renderContainer({ ...container, status: 'running', cpus: null, memoryBytes: null, env: [] })).toMatch(/^cpus: +no limit$/m)
    expect(t).toMatch(/^volumes: +data:\/data, conf:\/etc\/app:ro$/m)
    expect(renderContainer({ ...container, volumes: [] })).toMatch(/^volumes: +-$/m)
    // addresses: what `container show` answers (absent from older CVMs: no line)
    expect(renderContainer({ ...container, network: 'none', addresses: ['127.0.0.1', '::1'] })).toMatch(/^addresses: +127\.0\.0\.1, ::1 \(loopback only: network none\)$/m)
    expect(renderContainer({ ...container, network: 'host', addresses: ['10.0.0.5'] })).toMatch(/^addresses: +10\.0\.0\.5 \(its node's: network host\)$/m)
    expect(renderContainer(container)).not.toMatch(/^addresses:/m)
    expect(t).toMatch(/^restart: +no$/m)
    expect(renderContainer({ ...container, restartPolicy: 'on-failure:3', restartCount: 2, nextRestartAt: '2025-01-01T00:00:03Z' }))
      .toMatch(/^restart: +on-failure:3 \(restarted 2 time\(s\), next at 2025-01-01T00:00:03Z\)$/m)
  })
})

describe('registry rendering', () => {
  it('never shows a password, only whether one is stored', () => {
    expect(registryCredentials(registry)).toBe('ci (password: yes)')
    expect(registryCredentials({ ...registry, username: null, hasPassword: false })).toBe('no')
    expect(renderRegistry(registry)).toMatch(/^password: +stored$/m)
    const t = renderRegistryList([registry])
    expect(t).toContain('ci (password: yes)')
    expect(renderRegistryList([])).toMatch(/^No registries/)
  })
  it('policy: two sections, one pattern a line, (none) when empty', () => {
    expect(renderPolicy({ allow: ['a.example/**', 'b.example/x'], deny: [] })).toBe('allow:\n  a.example/**\n  b.example/x\ndeny:\n  (none)')
    expect(renderPolicy({ allow: [], deny: ['@sha256:00'] })).toBe('allow:\n  (none)\ndeny:\n  @sha256:00')
  })
})

describe('CSM, image and stats rendering', () => {
  const csm: CsmInfo = {
    name: 'small', id: 'c1', node: 'node1', cpus: 2, memoryBytes: 2 * 2 ** 30, runtime: 'runc', state: 'running', pid: 42,
    containers: 1, reservedCpus: 0.5, reservedMemoryBytes: 256 * 2 ** 20, createdAt: '2025-01-01T00:00:00Z',
  }
  it('csm list and show', () => {
    const t = renderCsmList([csm])
    expect(t).toContain('0.5 / 256 MiB')
    expect(t).toContain('2 GiB')
    expect(renderCsm(csm)).toMatch(/^reserved cpus: +0\.5 of 2$/m)
  })
  it('image list shortens the digest to 19 characters', () => {
    const img: ImageInfo = { node: 'node1', ref: 'h/a:1', digest: `sha256:${'0123456789abcdef'.repeat(4)}`, sizeBytes: 1536, layers: 2, platform: 'linux/amd64', pulledAt: '', usedBy: [] }
    const t = renderImageList([img])
    expect(t).toContain('sha256:0123456789ab ')
    expect(t).toContain('1.5 KiB')
  })
  it('stats: CPU% from cpuCpus, "-" when unknown; both tables', () => {
    const base = { cpuUsageNs: 0, cpuThrottledPeriods: 3, cpuLimitCpus: 0.5, memoryUsageBytes: 2 ** 20, memoryLimitBytes: null, oomKills: 1, pidsCurrent: 2, pidsLimit: 100 }
    const r: StatsResult = {
      containers: [{ ...base, cpuCpus: 0.25, name: 'web1', id: 'x', csm: 'small', node: 'node1', readAt: '' }],
      csms: [{ ...base, cpuCpus: null, csm: 'small', node: 'node1', containers: 1, readAt: '' }],
    }
    const t = renderStats(r)
    expect(t).toContain('25.0%')
    expect(t).toContain('1 MiB / -')
    expect(t).toContain('2 / 100')
    expect(t.indexOf('Containers')).toBeLessThan(t.indexOf('CSMs'))
    expect(renderStats({ containers: [], csms: [] })).toBe('Containers\nNo containers.\n\nCSMs\nNo CSMs.')
  })
})

describe('a pull\'s progress on its spinner', () => {
  const v = (node: string, o: Partial<ImagePullProgress> = {}): ImagePullProgress => ({
    node, ref: 'busybox', state: 'pulling', startedAt: '2026-01-01T00:00:00.000Z', layersTotal: 3, layersDone: 1, bytesTotal: 3 * 2 ** 20, bytesDone: 2 ** 20, ...o,
  })

  it('layers and bytes done of the totals, summed over the nodes', () => {
    expect(pullProgressText([])).toBeUndefined()
    expect(pullProgressText([v('node1')])).toBe('1/3 layers, 1 MiB of 3 MiB on node1')
    expect(pullProgressText([v('node1'), v('node2', { layersDone: 3, bytesDone: 3 * 2 ** 20 })])).toBe('4/6 layers, 4 MiB of 6 MiB on 2 nodes')
  })

  it('says when the pulls wait for others, or the manifest is still being read', () => {
    expect(pullProgressText([v('node1', { state: 'waiting', layersTotal: null, bytesTotal: null, layersDone: 0, bytesDone: 0 })])).toBe('waiting for other pulls on node1')
    expect(pullProgressText([v('node1'), v('node2', { layersTotal: null, bytesTotal: null })])).toBe('reading the manifest on 2 nodes')
  })
})
