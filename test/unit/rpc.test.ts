import fs from 'node:fs'
import type net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createCa, createNodeCert } from '../../src/bootstrap/pki.js'
import { keyNodeOps } from '../../src/cvm/api/keys-routes.js'
import type { NodeAgent } from '../../src/cvm/control/agent.js'
import { containerNodeOps } from '../../src/cvm/control/ops.js'
import type { KeyKeeper } from '../../src/cvm/vdisk/keykeeper.js'
import type { ContainerInfo, ContainerSpec, CsmQuota } from '../../src/lib/container-spec.js'
import { TessError } from '../../src/lib/errors.js'
import { ApiServer } from '../../src/lib/http-server.js'
import { jsonRequest, type JsonTarget } from '../../src/lib/jsonhttp.js'
import type { Logger } from '../../src/lib/log.js'
import { CsmClient, registerCsmApi, type CsmApi, type CsmLogQuery } from '../../src/lib/rpc/csm.js'
import { dispatchNodeOp, nodeCaller, nodeOpRequests, registerNodeOps, type NodeCall, type NodeHandlers } from '../../src/lib/rpc/node-ops.js'

/**
 * The RPC layer with real sockets: node operations through the real route (HTTPS, node
 * certificates) into the real handler table of the container side with a fake node agent, and
 * the CSM daemon's API (unix socket) between CsmClient and registerCsmApi with a fake CSM. A
 * typed request arrives typed at the other end; a malformed one is refused at the boundary with a
 * code and never reaches a handler.
 */
const quiet: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined }
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-rpc-'))
const token = 'operator-token-0123456789'

const info = (name: string, spec: Partial<ContainerSpec> = {}): ContainerInfo => ({
  id: '0123456789ab', name, csm: 'web', image: spec.image ?? 'img', imageDigest: 'sha256:00', runtime: 'runc', status: 'running',
  createdAt: '2024-01-01T00:00:00.000Z', stopSignal: 'SIGTERM', layers: [],
  spec: { image: spec.image ?? 'img', env: spec.env ?? [], pidsMax: 10, network: spec.network ?? 'none', rlimits: [], ...(spec.cpus !== undefined ? { cpus: spec.cpus } : {}) },
})

/** A CSM that records what it is asked. */
class FakeCsm implements CsmApi {
  calls: Array<[string, ...unknown[]]> = []
  async health() {
    this.calls.push(['health'])
    return { csm: 'web', id: '1', pid: 1, containers: 0 }
  }

  async list() {
    this.calls.push(['list'])
    return [info('a')]
  }

  async run(spec: ContainerSpec) {
    this.calls.push(['run', spec])
    return info(spec.name ?? 'c-1', spec)
  }

  async inspect(ref: string) {
    this.calls.push(['inspect', ref])
    return info(ref)
  }

  async op(ref: string, op: string, timeoutMs?: number) {
    this.calls.push(['op', ref, op, timeoutMs])
    return info(ref)
  }

  async remove(ref: string, force: boolean) {
    this.calls.push(['remove', ref, force])
    return info(ref)
  }

  async logs(ref: string, q: CsmLogQuery) {
    this.calls.push(['logs', ref, q])
    return { data: Buffer.from('hi').toString('base64'), offset: 2, running: true }
  }

  async stats() {
    this.calls.push(['stats'])
    const u = { cpuUsageNs: 1, cpuCpus: 0.1, cpuThrottledPeriods: 0, cpuLimitCpus: 1, memoryUsageBytes: 1, memoryLimitBytes: 2, oomKills: 0, pidsCurrent: 1, pidsLimit: 10 }
    return { csm: { ...u, containers: 1 }, containers: [{ ...u, id: '0123456789ab', name: 'a' }], readAt: 'now' }
  }

  async setLimits(q: CsmQuota) {
    this.calls.push(['setLimits', q])
    return { cpus: q.cpus, memoryBytes: q.memoryBytes }
  }

  async freezeVolume(ref: string, volume: string, frozen: boolean) {
    this.calls.push(['freezeVolume', ref, volume, frozen])
    return { mounted: true, frozen }
  }

  held = true
  async confirmPlacement() {
    this.calls.push(['confirmPlacement'])
    const wasHeld = this.held
    this.held = false
    return { wasHeld }
  }
}

/** The parts of a NodeAgent the node operations use. */
function fakeAgent(csm: FakeCsm, state: { containers: boolean, images: boolean }) {
  const seen: Array<[string, ...unknown[]]> = []
  const agent = {
    requireContainers() {
      if (!state.containers) throw new TessError('TESS_E_PRECONDITION', 'containers are unavailable on node n2: no cgroups', 'fix it')
    },
    requireImageStore() {
      if (!state.images) throw new TessError('TESS_E_PRECONDITION', 'the image store is unavailable', 'fix it')
    },
    capacity: async () => ({ cpus: 8, memoryBytes: 2 ** 34 }),
    ensure: async (name: string) => {
      seen.push(['ensure', name])
      return { pid: 42 }
    },
    removeLocal: async (name: string, force: boolean) => {
      seen.push(['removeLocal', name, force])
      return ['a']
    },
    setLimits: async (name: string, cpus: number, memoryBytes: number) => { seen.push(['setLimits', name, cpus, memoryBytes]) },
    status: async () => [{ name: 'web', pid: 7, up: true, containers: [info('a')] }],
    pull: async (ref: string) => ({ ref, digest: 'sha256:1', sizeBytes: 1, layers: 1, platform: 'linux/amd64', downloadedBytes: 1, seconds: 0.1 }),
    images: async () => [],
    pulls: () => [],
    removeImage: async (ref: string) => ref.endsWith(':old'),
    ensureImage: async (ref: string) => `docker.io/library/${ref}:latest`,
    csm: (name: string) => {
      seen.push(['csm', name])
      return csm
    },
    stats: async (name?: string) => [{ name: name ?? 'web', ...await csm.stats() }],
  }
  return { agent: agent as unknown as NodeAgent, seen }
}

let creds: { cert: Buffer, key: Buffer, ca: Buffer }
let server: ApiServer
let port = 0
const csm = new FakeCsm()
const state = { containers: true, images: true }
const { agent, seen } = fakeAgent(csm, state)
const unlocked: string[] = []
const keeper = { unlock: async (k: Buffer) => { unlocked.push(k.toString('base64')) }, current: Buffer.alloc(32, 7) } as unknown as KeyKeeper
const handlers: NodeHandlers = { ...containerNodeOps(agent), ...keyNodeOps(keeper), 'vdisk.release': async ({ name }) => ({ released: name === 'idle' }),
  'vdisk.clients': async ({ name }) => ({ connections: name === 'busy' ? 2 : name === 'busy@s1' ? 1 : 0 }),
  'vdisk.snapshot': async ({ id, name, op }) => ({ name, epoch: op === 'create' ? Number(id) : -1, createdAt: '2026-12-07T00:00:00.000Z' }),
  'vdisk.deleted': async ({ id }) => ({ shut: id === '7' }),
  'vdisk.repair': async ({ id, down }) => ({ egroups: down.length, bytes: Number(id) }),
  'vdisk.scrub': async ({ id, bytesPerSec }) => ({ extents: Number(id), bytesChecked: bytesPerSec, badBlocks: 0, repairedBlocks: 0, unreadable: 0 }),
  'pool.gc': async ({ minAgeMs }) => ({ files: 1, bytes: minAgeMs, staleEntries: 2 }),
  'vdisk.move': async ({ id, moves, bytesPerSec }) => ({ egroups: moves.length, bytes: bytesPerSec ?? 0, skipped: Number(id) + (moves[0]?.to.diskId === '12' && moves[0].from.node === 'n1' ? 100 : 0) }),
  'curator.scrub': async () => ({ started: true, master: 'n2' }),
  'pki.reload': async () => ({ node: 'n1', subject: 'O=tessera, CN=n1', notAfter: '2036-12-07T00:00:00.000Z', serial: '0A', fingerprint256: 'AB:CD' }),
}
let target: JsonTarget
let call: NodeCall

beforeAll(async () => {
  const ca = createCa(path.join(dir, 'pki'), 'rpc')
  const n = createNodeCert(path.join(dir, 'pki'), ca, 'n1', ['127.0.0.1'])
  creds = { cert: fs.readFileSync(n.cert), key: fs.readFileSync(n.key), ca: fs.readFileSync(ca.caCert) }
  server = new ApiServer({ ...creds, token, log: quiet })
  registerNodeOps(server, handlers)
  await server.listen(0, '127.0.0.1')
  port = ((server as unknown as { server: net.Server }).server.address() as net.AddressInfo).port
  target = { endpoint: `https://127.0.0.1:${port}`, ca: creds.ca, cert: creds.cert, key: creds.key, what: 'the CVM of node n2' }
  // this node is n1: calls to n2 go over the route
  call = nodeCaller({ self: 'n1', handlers, target: async () => target })
})
afterAll(async () => {
  await server.close()
  fs.rmSync(dir, { recursive: true, force: true })
})

/** The coded refusal of a promise. */
async function refused(p: Promise<unknown>): Promise<TessError> {
  const e = await p.then(() => undefined, (x: unknown) => x)
  expect(e, 'refused').toBeInstanceOf(TessError)
  return e as TessError
}

describe('node operations over the real route', () => {
  it('a typed request arrives typed, and its typed reply comes back', async () => {
    csm.calls.length = 0
    const c = await call('n2', 'container.run', { csm: 'web', spec: { name: 'a', image: 'busybox', cpus: 0.5, env: ['A=1'], network: 'none' } })
    expect(c.spec.cpus).toBe(0.5)
    // the node pulled (here: named) the image and gave the CSM its canonical reference
    expect(csm.calls).toEqual([['run', { name: 'a', image: 'docker.io/library/busybox:latest', cpus: 0.5, env: ['A=1'], network: 'none' }]])
    expect(await call('n2', 'container.op', { csm: 'web', id: '0123456789ab', op: 'stop', timeoutMs: 2000 })).toMatchObject({ name: '0123456789ab' })
    expect(csm.calls.at(-1)).toEqual(['op', '0123456789ab', 'stop', 2000])
    expect(await call('n2', 'container.logs', { csm: 'web', id: '0123456789ab', tail: 5 })).toEqual({ data: 'aGk=', offset: 2, running: true })
    expect(csm.calls.at(-1)).toEqual(['logs', '0123456789ab', { tail: 5 }])
    await call('n2', 'container.logs', { csm: 'web', id: '0123456789ab', offset: 7, sinceMs: 1_765_000_000_000, timestamps: true })
    expect(csm.calls.at(-1)).toEqual(['logs', '0123456789ab', { offset: 7, sinceMs: 1_765_000_000_000, timestamps: true }])
    expect(await call('n2', 'container.freeze', { csm: 'web', id: '0123456789ab', volume: 'data', frozen: true })).toEqual({ mounted: true, frozen: true })
    expect(csm.calls.at(-1)).toEqual(['freezeVolume', '0123456789ab', 'data', true])
    await call('n2', 'container.remove', { csm: 'web', id: '0123456789ab', force: true })
    expect(csm.calls.at(-1)).toEqual(['remove', '0123456789ab', true])
    expect((await call('n2', 'csm.remove', { name: 'web', force: false })).removed).toEqual(['a'])
    expect(await call('n2', 'csm.limits', { name: 'web', cpus: 1.5, memoryBytes: 2 ** 28 })).toEqual({})
    expect(seen).toContainEqual(['setLimits', 'web', 1.5, 2 ** 28])
    expect((await call('n2', 'stats', {}))[0]!.csm.containers).toBe(1)
    expect((await call('n2', 'image.remove', { ref: 'x:old' })).removed).toBe(true)
    expect((await call('n2', 'vdisk.release', { name: 'idle' })).released).toBe(true)
    expect((await call('n2', 'vdisk.clients', { name: 'busy' })).connections).toBe(2)
    expect((await call('n2', 'vdisk.clients', { name: 'busy@s1' })).connections).toBe(1)
    expect((await call('n2', 'vdisk.snapshot', { id: '5', name: 's1', op: 'create' })).epoch).toBe(5)
    expect((await call('n2', 'vdisk.deleted', { id: '7' })).shut).toBe(true)
    expect(await call('n2', 'vdisk.repair', { id: '9', down: ['n3', 'n4'] })).toEqual({ egroups: 2, bytes: 9 })
    expect((await call('n2', 'vdisk.scrub', { id: '4', bytesPerSec: 2 ** 20 })).bytesChecked).toBe(2 ** 20)
    expect(await call('n2', 'curator.scrub', {})).toEqual({ started: true, master: 'n2' })
    expect(await call('n2', 'pki.reload', {})).toMatchObject({ node: 'n1', serial: '0A', fingerprint256: 'AB:CD' })
    expect(await call('n2', 'pool.gc', { minAgeMs: 600_000 })).toEqual({ files: 1, bytes: 600_000, staleEntries: 2 })
    const move = { egroupId: '31', from: { node: 'n1', diskId: '11' }, to: { node: 'n1', diskId: '12' } }
    expect(await call('n2', 'vdisk.move', { id: '4', moves: [move, move], bytesPerSec: 1048576 })).toEqual({ egroups: 2, bytes: 1048576, skipped: 104 })
    expect(await call('n2', 'keys.get', {})).toEqual({ key: Buffer.alloc(32, 7).toString('base64') })
    expect(await call('n2', 'keys.unlock', { key: 'a2V5' })).toEqual({ unlocked: true })
    expect(unlocked).toEqual(['a2V5'])
  })

  it('malformed requests are refused at the route with a code, and reach no handler', async () => {
    const raw = (op: string, body: unknown) => jsonRequest(target, 'POST', `/v1/node-ops/${op}`, body, 10_000)
    const before = [csm.calls.length, seen.length]
    const cases: Array<[string, unknown, string, RegExp]> = [
      ['no.such', {}, 'TESS_E_NOT_FOUND', /no node operation "no.such"/],
      ['constructor', {}, 'TESS_E_NOT_FOUND', /no node operation/],
      ['container.run', [], 'TESS_E_BAD_REQUEST', /request body must be a JSON object/],
      ['container.run', { csm: 'web', spec: 'nope' }, 'TESS_E_BAD_REQUEST', /node operation container.run: field "spec" must be an object, got "nope"/],
      ['container.run', { csm: 'web', spec: { image: 'x', cpus: 0 } }, 'TESS_E_INVALID', /field "spec": field "cpus" = 0 is out of range 0.01..4096/],
      ['container.run', { csm: '../x', spec: { image: 'x' } }, 'TESS_E_INVALID', /invalid CSM name/],
      ['container.logs', { csm: 'web', id: '../../etc' }, 'TESS_E_BAD_REQUEST', /bad container id "..\/..\/etc"/],
      ['container.freeze', { csm: 'web', id: '0123456789ab', volume: '../x', frozen: true }, 'TESS_E_INVALID', /invalid volume name/],
      ['container.freeze', { csm: 'web', id: '0123456789ab', volume: 'data', frozen: 'yes' }, 'TESS_E_BAD_REQUEST', /field "frozen" must be true or false/],
      ['container.logs', { csm: 'web', id: '0123456789ab', tail: -1 }, 'TESS_E_INVALID', /field "tail" = -1 is out of range/],
      ['container.op', { csm: 'web', id: '0123456789ab', op: 'explode' }, 'TESS_E_INVALID', /field "op" = "explode" is not one of start, stop, pause, resume/],
      ['container.op', { csm: 'web', id: '0123456789ab', op: 'stop', timeoutMs: 1e12 }, 'TESS_E_INVALID', /field "timeoutMs"/],
      ['csm.limits', { name: 'web', cpus: '1', memoryBytes: 2 ** 30 }, 'TESS_E_INVALID', /field "cpus" must be a number, got "1"/],
      ['csm.limits', { name: 'web', cpus: 1, memoryBytes: 1 }, 'TESS_E_INVALID', /field "memoryBytes" = 1 is out of range/],
      ['csm.remove', { name: 'web', force: 'yes' }, 'TESS_E_BAD_REQUEST', /field "force" must be true or false/],
      ['image.pull', { ref: 'x'.repeat(5000) }, 'TESS_E_INVALID', /field "ref" is 5000 characters long/],
      ['vdisk.release', { name: 'A B' }, 'TESS_E_INVALID', /invalid vDisk name/],
      ['vdisk.clients', { name: '../x' }, 'TESS_E_INVALID', /invalid vDisk name/],
      ['vdisk.clients', { name: 'x@../s' }, 'TESS_E_INVALID', /invalid snapshot name/],
      ['vdisk.clients', { name: 'x@s@t' }, 'TESS_E_INVALID', /invalid export name/],
      ['vdisk.snapshot', { id: '3', name: 'S!', op: 'create' }, 'TESS_E_INVALID', /invalid snapshot name/],
      ['vdisk.snapshot', { id: '3', name: 's1', op: 'rollback' }, 'TESS_E_INVALID', /not one of create, delete, restore/],
      ['vdisk.snapshot', { id: '../3', name: 's1', op: 'create' }, 'TESS_E_BAD_REQUEST', /bad vDisk id/],
      ['vdisk.deleted', { id: '1/../2' }, 'TESS_E_BAD_REQUEST', /bad vDisk id/],
      ['vdisk.deleted', { id: 7 }, 'TESS_E_BAD_REQUEST', /field "id" must be a string/],
      ['vdisk.repair', { id: '3', down: 'n3' }, 'TESS_E_BAD_REQUEST', /field "down" must be a list/],
      ['vdisk.repair', { id: '3', down: ['n3', 4] }, 'TESS_E_BAD_REQUEST', /field "down" must be a list/],
      ['vdisk.repair', { id: '3', down: ['../n3'] }, 'TESS_E_INVALID', /invalid node name/],
      ['vdisk.repair', { id: 'x', down: [] }, 'TESS_E_BAD_REQUEST', /bad vDisk id/],
      ['vdisk.scrub', { id: '3', bytesPerSec: 10 }, 'TESS_E_INVALID', /bytesPerSec/],
      ['vdisk.scrub', { id: '3' }, 'TESS_E_BAD_REQUEST', /bytesPerSec/],
      ['pool.gc', { minAgeMs: -1 }, 'TESS_E_INVALID', /minAgeMs/],
      ['pool.gc', {}, 'TESS_E_BAD_REQUEST', /minAgeMs/],
      ['vdisk.move', { id: '3' }, 'TESS_E_BAD_REQUEST', /"moves" is required/],
      ['vdisk.move', { id: '3', moves: [{ egroupId: '1', from: { node: 'n1', diskId: '2' } }] }, 'TESS_E_BAD_REQUEST', /"to" is required/],
      ['vdisk.move', { id: '3', moves: [{ egroupId: '1', from: { node: 'n1', diskId: '2' }, to: { node: 'n2', diskId: 'x/..' } }] }, 'TESS_E_BAD_REQUEST', /to.diskId/],
      ['vdisk.move', { id: '3', moves: [{ egroupId: '1', from: { node: '../n1', diskId: '2' }, to: { node: 'n2', diskId: '3' } }] }, 'TESS_E_INVALID', /invalid node name/],
      ['vdisk.move', { id: '3', moves: [{ egroupId: 'abc', from: { node: 'n1', diskId: '2' }, to: { node: 'n2', diskId: '3' } }] }, 'TESS_E_BAD_REQUEST', /extent group id/],
      ['vdisk.move', { id: '3', moves: Array.from({ length: 65 }, () => ({ egroupId: '1', from: { node: 'n1', diskId: '2' }, to: { node: 'n2', diskId: '3' } })) }, 'TESS_E_INVALID', /at most 64/],
      ['keys.unlock', { key: 'not base64!' }, 'TESS_E_INVALID', /the cluster key must be base64/],
      // the caller's protocol: a bad one, or one older than this release works beside (protocolVersionOldest is 1 today)
      ['csm.status?protocol=abc', {}, 'TESS_E_BAD_REQUEST', /bad protocol "abc"/],
      ['csm.status?protocol=0', {}, 'TESS_E_BAD_REQUEST', /bad protocol "0"/],
    ]
    for (const [op, body, code, message] of cases) {
      const e = await refused(raw(op, body))
      expect([op, e.code], e.message).toEqual([op, code])
      expect(e.message).toMatch(message)
      expect(e.hint.length).toBeGreaterThan(0)
    }
    expect([csm.calls.length, seen.length]).toEqual(before)
    expect(unlocked).toEqual(['a2V5'])
  })

  it('an operator token, even a valid one, cannot call node operations', async () => {
    const e = await refused(jsonRequest({ endpoint: target.endpoint, ca: creds.ca, token, what: 'the CVM' }, 'POST', '/v1/node-ops/csm.status', {}, 10_000))
    expect(e.code).toBe('TESS_E_FORBIDDEN')
  })

  it('a call to this node runs in-process, checked the same way', async () => {
    expect((await call('n1', 'node.capacity', {})).cpus).toBe(8)
    const e = await refused(call('n1', 'csm.limits', { name: 'web', cpus: 0, memoryBytes: 2 ** 30 }))
    expect(e.message).toMatch(/^node operation csm.limits: field "cpus" = 0 is out of range/)
  })

  it('a node whose container side did not start refuses container operations, and still serves images when its store is up', async () => {
    state.containers = false
    try {
      expect((await refused(call('n2', 'csm.status', {}))).code).toBe('TESS_E_PRECONDITION')
      expect((await refused(call('n2', 'container.get', { csm: 'web', id: '0123456789ab' }))).message).toMatch(/containers are unavailable on node n2/)
      expect(await call('n2', 'image.list', {})).toEqual([])
      state.images = false
      expect((await refused(call('n2', 'image.list', {}))).code).toBe('TESS_E_PRECONDITION')
    } finally {
      state.containers = true
      state.images = true
    }
  })

  it('random bodies for every operation: a value or a coded refusal, never a crash', async () => {
    const atoms: unknown[] = [null, 0, -1, 1.5, 1e300, '', 'web', '0123456789ab', '../x', 'stop', true, [], {}, { image: 'x' }, ['a'], 'a'.repeat(300)]
    const fields = ['name', 'csm', 'id', 'op', 'spec', 'force', 'cpus', 'memoryBytes', 'ref', 'offset', 'tail', 'timeoutMs', 'key']
    let n = 7
    const next = () => (n = (n * 1103515245 + 12345) % 2 ** 31) / 2 ** 31
    for (const op of Object.keys(nodeOpRequests)) {
      for (let i = 0; i < 200; i++) {
        const body: Record<string, unknown> = {}
        for (const f of fields) if (next() < 0.4) body[f] = atoms[Math.floor(next() * atoms.length)]
        try {
          await dispatchNodeOp(handlers, op, body)
        } catch (e) {
          if (!(e instanceof TessError) || e.hint === '') throw new Error(`${op}(${JSON.stringify(body)}) threw ${String(e)}`)
        }
      }
    }
  })
})

describe('the CSM daemon API: CsmClient against registerCsmApi on a unix socket', () => {
  const sock = path.join(dir, 'csm.sock')
  const daemon = new FakeCsm()
  const api = new ApiServer({ log: quiet })
  let client: CsmClient
  beforeAll(async () => {
    registerCsmApi(api, daemon, 'CSM "web"')
    await api.listenUnix(sock)
    client = CsmClient.over(sock, 'CSM "web" on node n1')
  })
  afterAll(() => api.close())

  it('every call arrives typed at the daemon', async () => {
    expect((await client.health(2000)).csm).toBe('web')
    await client.list()
    await client.run({ name: 'a', image: 'img', command: ['true'], volumes: [{ name: 'v', target: '/v', readOnly: true, formatted: true, nbd: { host: '::1', port: 10809, export: 'vol-v' } }] })
    await client.inspect('a')
    await client.op('0123456789ab', 'stop', 1500)
    await client.op('0123456789ab', 'pause')
    await client.remove('a', true)
    await client.logs('a', { offset: 10, tail: 3 })
    await client.stats()
    expect(await client.setLimits({ cpus: 2, memoryBytes: 2 ** 30 })).toEqual({ cpus: 2, memoryBytes: 2 ** 30 })
    expect(await client.confirmPlacement()).toEqual({ wasHeld: true })
    expect(await client.confirmPlacement()).toEqual({ wasHeld: false })
    expect(await client.freezeVolume('db', 'data', true)).toEqual({ mounted: true, frozen: true })
    expect(await client.freezeVolume('db', 'data', false)).toEqual({ mounted: true, frozen: false })
    expect(daemon.calls).toEqual([
      ['health'], ['list'],
      ['run', { name: 'a', image: 'img', command: ['true'], volumes: [{ name: 'v', target: '/v', readOnly: true, formatted: true, nbd: { host: '::1', port: 10809, export: 'vol-v' } }] }],
      ['inspect', 'a'], ['op', '0123456789ab', 'stop', 1500], ['op', '0123456789ab', 'pause', undefined], ['remove', 'a', true],
      ['logs', 'a', { offset: 10, tail: 3 }], ['stats'], ['setLimits', { cpus: 2, memoryBytes: 2 ** 30 }], ['confirmPlacement'], ['confirmPlacement'],
      ['freezeVolume', 'db', 'data', true], ['freezeVolume', 'db', 'data', false],
    ])
  })

  it('the daemon refuses what does not fit the shared schema, with the same messages as the CVM', async () => {
    const raw = (method: 'GET' | 'POST' | 'PUT' | 'DELETE', p: string, body?: unknown) => jsonRequest({ endpoint: sock, what: 'CSM "web"' }, method, p, body, 5000)
    const before = daemon.calls.length
    const cases: Array<[Promise<unknown>, string, RegExp]> = [
      [raw('POST', '/v1/containers', { image: 'x', cpus: 5000 }), 'TESS_E_INVALID', /^CSM "web": cannot run the container: field "cpus" = 5000 is out of range 0.01..4096/],
      [raw('POST', '/v1/containers', { image: 'x', volumes: [{ name: 'v', target: '/v' }] }), 'TESS_E_BAD_REQUEST', /field "nbd" is required/],
      [raw('POST', '/v1/containers', 'x'), 'TESS_E_BAD_REQUEST', /body must be a JSON object/],
      [raw('POST', '/v1/containers/0123456789ab/explode', {}), 'TESS_E_NOT_FOUND', /no container operation "explode"/],
      [raw('POST', '/v1/containers/0123456789ab/stop', { timeoutMs: -5 }), 'TESS_E_INVALID', /field "timeoutMs" = -5/],
      [raw('GET', '/v1/containers/..%2F..%2Fetc'), 'TESS_E_BAD_REQUEST', /bad container id or name "..\/..\/etc"/],
      [raw('GET', '/v1/containers/a/logs?tail=-1'), 'TESS_E_INVALID', /query parameter "tail"/],
      [raw('GET', '/v1/containers/a/logs?since=soon'), 'TESS_E_INVALID', /query parameter "since"/],
      [raw('GET', '/v1/containers/a/logs?timestamps=yes'), 'TESS_E_BAD_REQUEST', /timestamps=yes/],
      [raw('PUT', '/v1/limits', { cpus: 0.001, memoryBytes: 2 ** 30 }), 'TESS_E_INVALID', /cannot change its limits: field "cpus" = 0.001 is out of range/],
      [raw('PUT', '/v1/limits', { cpus: 1 }), 'TESS_E_BAD_REQUEST', /field "memoryBytes" is required/],
      [raw('POST', '/v1/containers/db/volumes/..%2Fx/freeze', { frozen: true }), 'TESS_E_INVALID', /invalid volume name/],
      [raw('POST', '/v1/containers/db/volumes/data/freeze', { frozen: 1 }), 'TESS_E_BAD_REQUEST', /field "frozen" must be true or false/],
    ]
    for (const [p, code, message] of cases) {
      const e = await refused(p)
      expect(e.code, e.message).toBe(code)
      expect(e.message).toMatch(message)
    }
    expect(daemon.calls.length).toBe(before)
  })
})
