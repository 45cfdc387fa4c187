import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { Etcd3 } from 'etcd3'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { etcdGrpcOptions, keys } from '../../src/lib/etcd.js'
import type { Logger } from '../../src/lib/log.js'
import type { DiskRecord, NodeRecord, NodeStatusRecord } from '../../src/lib/types.js'
import { EtcdViewFollower, PlacementView, readViewRecords } from '../../src/cvm/vdisk/placement.js'
import { freePorts, waitFor } from '../helpers/cluster.js'

const node = (name: string, extra: Partial<NodeRecord> = {}): NodeRecord => ({ name, address: '127.0.0.1', apiPort: 1, nbdPort: 2, dataPort: 3, joinedAt: '2026-01-01T00:00:00Z', ...extra })
const status = (name: string): NodeStatusRecord => ({ name, at: '2026-01-01T00:00:00Z', daemons: [], disks: {} })
const disk = (id: string, n: string): DiskRecord => ({ id, node: n, path: `/d/${id}`, addedAt: '2026-01-01T00:00:00Z' })

/**
 * The CVM's placement view against a real etcd (one member on loopback): it follows node, status
 * and disk records by watches, without reading etcd itself, across an etcd restart.
 */
describe('placement view follows etcd', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-view-'))
  let etcdProc: ChildProcess | undefined
  let etcd: Etcd3
  let clientUrl = ''
  let peerUrl = ''
  const lines: string[] = []
  const log: Logger = { info: (m) => lines.push(m), warn: (m) => lines.push(m), error: (m) => lines.push(m) }

  const startEtcd = async () => {
    etcdProc = spawn('etcd', ['--name', 'v', '--data-dir', path.join(root, 'etcd'), '--listen-client-urls', clientUrl, '--advertise-client-urls', clientUrl,
      '--listen-peer-urls', peerUrl, '--initial-advertise-peer-urls', peerUrl, '--initial-cluster', `v=${peerUrl}`], { stdio: ['ignore', 'ignore', fs.openSync(path.join(root, 'etcd.log'), 'a')] })
  }
  const stopEtcd = async () => {
    const p = etcdProc
    etcdProc = undefined
    if (!p || p.exitCode !== null) return
    const exited = new Promise((r) => p.once('exit', r))
    p.kill('SIGTERM')
    await exited
  }

  beforeAll(async () => {
    const [clientPort, peerPort] = await freePorts(2)
    clientUrl = `http://127.0.0.1:${clientPort}`
    peerUrl = `http://127.0.0.1:${peerPort}`
    await startEtcd()
    etcd = new Etcd3({ hosts: clientUrl, defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + 2000 }) })
    await waitFor('etcd', async () => (await etcd.get('x').string().then(() => true, () => false)) || undefined, 20_000, 200)
  }, 30_000)

  afterAll(async () => {
    etcd?.close()
    await stopEtcd()
    fs.rmSync(root, { recursive: true, force: true })
  })

  it('sees nodes, their status and disks come and go, wakes a waiting placement, and resyncs after etcd restarts', async () => {
    const put = (k: string, v: unknown) => etcd.put(k).value(JSON.stringify(v)).exec()
    await put(keys.node('n1'), node('n1'))
    await put(keys.node('n2'), node('n2'))
    await put(keys.nodeStatus('n1'), status('n1'))
    await put(keys.disk('1'), disk('1', 'n1'))
    let reads = 0
    const view = new PlacementView({ self: 'n1', log, read: async () => { reads++; return readViewRecords(etcd) } })
    const follower = new EtcdViewFollower(etcd, view, log)
    await follower.start()
    try {
      expect(view.info(2)).toMatchObject({ ready: false, placeable: ['n1'], watching: true })
      expect(view.nodes().find((n) => n.name === 'n2')?.reason).toMatch(/^down/)

      // n2's CVM comes up (status bound to a lease) and its disk is registered: no read needed
      const lease = etcd.lease(10)
      await lease.put(keys.nodeStatus('n2')).value(JSON.stringify(status('n2')))
      await put(keys.disk('2'), disk('2', 'n2'))
      await waitFor('n2 placeable', () => view.info(2).ready || undefined, 5_000, 20)
      expect(view.info(2).placeable).toEqual(['n1', 'n2'])

      // its lease ends: the status record goes, and with it n2
      await lease.revoke()
      await waitFor('n2 down', () => view.info(2).placeable.length === 1 || undefined, 5_000, 20)
      // a disk removed and a node draining count at once too
      await etcd.delete().key(keys.disk('1'))
      await waitFor('n1 without disk', () => view.info(1).placeable.length === 0 || undefined, 5_000, 20)
      expect(view.nodes().find((n) => n.name === 'n1')?.reason).toBe('no disk registered')
      await put(keys.disk('1'), disk('1', 'n1'))
      await put(keys.node('n1'), node('n1', { draining: true }))
      await waitFor('n1 draining', () => view.nodes().find((n) => n.name === 'n1')?.draining || undefined, 5_000, 20)
      expect(reads).toBe(0)

      // a placement that waits is woken by the change it needs
      const placing = view.place(1, { what: 'a new extent group of vDisk w' })
      setTimeout(() => void put(keys.node('n1'), node('n1')), 300)
      expect(await placing).toEqual(['n1'])

      // etcd restarts: the watches reconnect and the view follows changes made after
      await stopEtcd()
      await waitFor('watch lost', () => !view.watching || undefined, 15_000, 50)
      await startEtcd()
      await waitFor('etcd back', async () => (await etcd.get('x').string().then(() => true, () => false)) || undefined, 20_000, 200)
      await put(keys.nodeStatus('n2'), status('n2'))
      await waitFor('view after restart', () => (view.watching && view.info(2).ready) || undefined, 20_000, 50)
      expect(view.info(2).placeable).toEqual(['n1', 'n2'])
    } finally {
      await follower.stop()
    }
  }, 90_000)

  it('notices a member that goes silent under its watch (its node cut off) and follows again when it answers', async () => {
    // a proxy to etcd that can go silent: it keeps its connections open and passes nothing on, as a
    // member behind a link that went down; when it answers again, the connections it held are cut
    let silent = false
    const held = new Set<net.Socket>()
    const target = new URL(clientUrl)
    const proxy = net.createServer((c) => {
      held.add(c)
      c.on('error', () => undefined) // the client side went away: its pair is closed below
      c.on('close', () => held.delete(c))
      if (silent) return c.pause() // accepted, never answered
      const u = net.connect(Number(target.port), target.hostname)
      u.on('error', () => c.destroy())
      u.on('close', () => c.destroy())
      c.on('close', () => u.destroy())
      c.on('data', (d) => { if (!silent) u.write(d) })
      u.on('data', (d) => { if (!silent) c.write(d) })
    })
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r))
    const port = (proxy.address() as net.AddressInfo).port
    const viaProxy = new Etcd3({ hosts: `http://127.0.0.1:${port}`, grpcOptions: etcdGrpcOptions, defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + 2000 }) })
    const view = new PlacementView({ self: 'n1', log, read: async () => readViewRecords(viaProxy) })
    const follower = new EtcdViewFollower(viaProxy, view, log)
    try {
      await follower.start()
      await etcd.put(keys.node('n3')).value(JSON.stringify(node('n3'))).exec()
      await waitFor('n3 seen', () => view.nodes().some((n) => n.name === 'n3') || undefined, 5_000, 20)
      silent = true
      // the watches' pings go unanswered: the view knows it is no longer following (a watch
      // without pings would wait here for ever, showing what it saw last as current)
      await waitFor('the silent member noticed', () => !view.watching || undefined, 20_000, 50)
      await etcd.delete().key(keys.node('n3')).exec()
      silent = false
      for (const c of held) c.destroy()
      await waitFor('following again, with what changed meanwhile', () => (view.watching && !view.nodes().some((n) => n.name === 'n3')) || undefined, 30_000, 50)
    } finally {
      await follower.stop()
      viaProxy.close()
      proxy.close()
      for (const c of held) c.destroy()
    }
  }, 90_000)
})
