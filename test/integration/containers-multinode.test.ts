import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { ContainerView, CsmInfo, ImageInfo } from '../../src/lib/csm-types.js'
import { runTess, waitFor, withJson, type TessResult } from '../helpers/cluster.js'
import { buildBusyboxImage, exec, haveCommands, pushImage, startDockerRegistry, type DockerRegistry } from '../helpers/registry.js'
import { createTestHosts, type TestHosts } from '../helpers/testhosts.js'

/**
 * Containers on a 3-node cluster of test hosts: every CVM serves the container API and routes
 * each operation to the node that holds the CSM; a volume moves with its container; the loss of a
 * node is survived (RF 2 needs a third node to re-replicate writes to). The registry listens on the
 * hosts' bridge.
 */
const missing = haveCommands('docker-registry', 'umoci', 'skopeo', 'busybox', 'runc', 'etcd', 'sshd')

describe.skipIf(missing.length > 0 || process.getuid?.() !== 0)('containers and volumes on three nodes', () => {
  let th: TestHosts
  let reg: DockerRegistry | undefined
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-ctr-mn-'))
  const env = { TESS_CONFIG_DIR: path.join(root, 'config') }
  const tess = (args: string[]): Promise<TessResult> => runTess(args, env, { timeoutMs: 240_000 })
  async function ok(args: string[]): Promise<any> {
    const r = await tess(withJson(args))
    if (r.code !== 0) throw new Error(`tess ${args.join(' ')} exited ${r.code}: ${r.stdout} ${r.stderr}`)
    return r.json
  }
  let image: string
  let node1: string
  let node2: string
  let clusterId: string | undefined

  beforeAll(async () => {
    th = await createTestHosts(3)
    reg = await startDockerRegistry(th.bridgeAddress)
    image = `${reg.host}/test/busybox:v1`
    await pushImage(await buildBusyboxImage(path.join(root, 'build'), 'v1'), image)
    const hosts = th.hosts.map((h) => h.address).join(',')
    const c = await tess(['cluster', 'create', '--name', 'ctrmn', '--hosts', hosts, '--ssh-key', th.keyFile, '--known-hosts', th.knownHostsFile, '--json'])
    if (c.code !== 0) throw new Error(`cluster create: ${c.stdout} ${c.stderr}`)
    clusterId = c.json.id as string
    const names = (c.json.nodes as Array<{ name: string, address: string }>)
    node1 = names.find((n) => n.address === th.hosts[0]!.address)!.name
    node2 = names.find((n) => n.address === th.hosts[1]!.address)!.name
  }, 180_000)

  afterAll(async () => {
    try {
      await tess(['cluster', 'destroy', '--yes'])
    } finally {
      await reg?.cleanup().catch(() => undefined)
      await th?.destroy()
      fs.rmSync(root, { recursive: true, force: true })
    }
    // A killed test host cannot clean up like a power loss would: the cgroups of its CSM (empty:
    // every process of the host was killed) are removed here, deepest first.
    if (clusterId !== undefined) {
      const parent = `tess-${clusterId.replace(/[^a-zA-Z0-9]/g, '').slice(0, 12)}`
      for (const h of fs.readdirSync('/sys/fs/cgroup')) {
        const top = path.join('/sys/fs/cgroup', h, parent)
        if (!fs.existsSync(top)) continue
        const dirs: string[] = []
        const walk = (d: string) => {
          for (const e of fs.readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) walk(path.join(d, e.name))
          dirs.push(d)
        }
        walk(top)
        for (const d of dirs) fs.rmdirSync(d)
      }
    }
    // the loop devices of the hosts' volumes (killed host 2's too) clear themselves with their mounts
    const loops = (await exec('losetup', ['-l', '-n', '-O', 'NAME,BACK-FILE'])).stdout.split('\n').filter((l) => / (\/disk|\/var\/lib\/tess\/\S*)$/.test(l))
    expect(loops).toEqual([])
  }, 180_000)

  it('runs a container on the other node through the first node\'s API; the scheduler spreads CSMs; a lost node is reported', async () => {
    await ok(['registry', 'add', 'local', `http://${reg!.host}`, '--insecure'])
    // the API answering is node 1 (first endpoint of the context); the CSM goes to node 2
    const far = await ok(['csm', 'create', 'far', '--cpus', '0.5', '--memory', '128M', '--node', node2]) as CsmInfo
    expect(far).toMatchObject({ node: node2, state: 'running' })
    // without --host the scheduler picks the node with the most free room: node 1 now
    const near = await ok(['csm', 'create', 'near', '--cpus', '0.5', '--memory', '128M']) as CsmInfo
    expect(near.node).toBe(node1)
    // its daemon runs on node 2, under node 2's supervisor
    const st = await ok(['cluster', 'status'])
    const n2 = st.nodes.find((n: { name: string }) => n.name === node2)
    await waitFor('node 2 reporting its CSM daemon', async () => {
      const s = await ok(['cluster', 'status'])
      return s.nodes.find((n: { name: string }) => n.name === node2).daemons.some((d: { name: string, healthy: boolean }) => d.name === 'csm-far' && d.healthy) ? true : undefined
    }, 15_000, 1000)
    expect(n2).toBeDefined()

    // a pull without --host lands on every node
    const p = await ok(['image', 'pull', image])
    expect(p.nodes).toHaveLength(3)
    expect((await ok(['image', 'list']) as ImageInfo[]).map((i) => i.node)).toContain(node2)

    const v = await ok(['container', 'run', image, '--name', 'remote', '--csm', 'far', '--', 'sh', '-c', 'echo "hello from $(hostname)"; busybox sleep 1000']) as ContainerView
    expect(v).toMatchObject({ node: node2, csm: 'far', status: 'running' })
    await waitFor('the log of the remote container', async () => (await tess(['container', 'logs', 'remote'])).stdout === 'hello from remote\n' ? true : undefined, 15_000, 300)
    // its process belongs to test host 2, not host 1
    expect(await th.pids(th.hosts[1]!)).toContain(v.pid)
    expect(await th.pids(th.hosts[0]!)).not.toContain(v.pid)
    expect((await ok(['container', 'stats', 'remote'])).containers[0]).toMatchObject({ name: 'remote', node: node2, csm: 'far' })
    // pause/resume go to node 2 as well
    expect((await ok(['container', 'pause', 'remote'])).status).toBe('paused')
    expect((await ok(['container', 'resume', 'remote'])).status).toBe('running')
    // names are unique across nodes
    const dup = await tess(['container', 'run', image, '--name', 'remote', '--csm', 'near', '--json', '--', 'true'])
    expect(dup.code).toBe(4)

    // a volume (RF 2) written on node 1 moves with its container to node 2; the vDisk's owner follows
    await ok(['volume', 'create', 'shared', '--size', '128M', '--rf', '2'])
    const script = 'busybox test -f /data/blob || busybox dd if=/dev/urandom of=/data/blob bs=1M count=4 conv=fsync 2>/dev/null; busybox sha256sum /data/blob; busybox sleep 1000'
    await ok(['container', 'run', image, '--name', 'mover', '--csm', 'near', '--volume', 'shared:/data', '--env', 'MOVER_SECRET=s3cr3t-env', '--', 'sh', '-c', script])
    const shaOf = async (): Promise<string> => waitFor('the blob\'s checksum', async () => {
      const m = /^([a-f0-9]{64}) {2}\/data\/blob$/m.exec((await tess(['container', 'logs', 'mover'])).stdout)
      return m?.[1]
    }, 60_000, 300)
    const sum = await shaOf()
    expect((await ok(['vdisk', 'show', 'vol-shared'])).owner).toBe(node1)
    const moved = await ok(['container', 'move', 'mover', '--csm', 'far']) as ContainerView & { from: { node: string } }
    // its environment, sealed in etcd, is opened by the node that moves it and given to the new CSM
    expect((moved as ContainerView & { env: string[] }).env).toContain('MOVER_SECRET=s3cr3t-env')
    expect(moved).toMatchObject({ node: node2, csm: 'far', from: { node: node1 } })
    expect(await shaOf()).toBe(sum)
    expect((await ok(['vdisk', 'show', 'vol-shared'])).owner).toBe(node2)
    expect((await ok(['volume', 'show', 'shared'])).attachments).toMatchObject([{ container: 'mover', node: node2 }])

    // node 2 is lost: its CSM shows down, its container's state unknown; --force forgets it
    await th.kill(th.hosts[1]!)
    const down = await waitFor('node 2 down', async () => {
      const s = await ok(['csm', 'show', 'far']) as CsmInfo
      return s.state === 'down' ? s : undefined
    }, 60_000, 1000)
    expect(down.node).toBe(node2)
    const unknown = await ok(['container', 'show', 'remote']) as ContainerView
    expect(unknown.status).toBe('unknown')
    expect(unknown.exitNote).toContain(node2)
    const refused = await tess(['container', 'remove', 'remote', '--yes', '--json'])
    expect(refused.code).toBe(6)
    expect((await ok(['container', 'remove', 'remote', '--yes', '--force'])).node).toBe(node2)
    // the owner of the volume died with node 2: the container moves back to node 1, which takes
    // ownership once node 2's lease has expired; the journal is replayed and the fsynced blob is there
    const t0 = Date.now()
    const back = await ok(['container', 'move', 'mover', '--csm', 'near', '--force']) as ContainerView
    expect(back.node).toBe(node1)
    expect(await shaOf()).toBe(sum)
    console.log(`owner failover of a volume: its container ran again on node 1 with its data ${Date.now() - t0} ms after the move began`)
    expect((await ok(['vdisk', 'show', 'vol-shared'])).owner).toBe(node1)
    await ok(['container', 'remove', 'mover', '--force', '--yes'])

    // node 1 still runs containers
    expect((await ok(['container', 'run', image, '--name', 'local1', '--csm', 'near', '--', 'busybox', 'sleep', '100'])).node).toBe(node1)
    await ok(['container', 'remove', 'local1', '--force', '--yes'])

    // the lost node cannot be removed while it has a CSM (its containers would be left on a node
    // that is gone); once the CSM is deleted (marked: the node is down), the removal takes it along
    const refusedRemove = await tess(['host', 'remove', node2, '--yes', '--json'])
    expect(refusedRemove.code, refusedRemove.stdout + refusedRemove.stderr).toBe(4)
    expect(refusedRemove.json.error.message).toBe(`cannot remove host "${node2}": it runs CSM(s) far`)
    expect((await ok(['csm', 'delete', 'far', '--force', '--yes'])).node).toBe(node2)
    const removed = await ok(['host', 'remove', node2, '--yes'])
    expect(removed.node).toBe(node2)
    expect((await tess(['csm', 'show', 'far', '--json'])).code).toBe(3)
  })
})
