import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { TestCluster } from '../helpers/cluster.js'
import { run } from '../helpers/run.js'

const MiB = 1024 * 1024

/**
 * Failure isolation: a node whose container side cannot start (here: no cgroup filesystem in its
 * mount namespace, as on a host where none is mounted) still serves storage, says why it runs no
 * containers, and refuses container operations with that reason, without a restart loop.
 */
describe('a node without cgroups', () => {
  const c = new TestCluster('nocg')

  beforeAll(async () => {
    // the CLI, and every daemon it starts, in a private mount namespace without /sys/fs/cgroup
    // (unshare makes the namespace's mounts private: the machine's cgroups stay mounted)
    const script = 'umount -R /sys/fs/cgroup 2>/dev/null || true; ! grep -q " cgroup" /proc/self/mountinfo || { echo "cgroups still mounted" >&2; exit 9; }; exec "$@"'
    await c.create([], ['unshare', '-m', 'sh', '-c', script, 'sh'])
  }, 120_000)

  afterAll(async () => {
    await c.destroy()
  })

  it('serves storage, reports why containers are unavailable, and refuses them with that reason', async () => {
    const st = await c.tess(['cluster', 'status', '--json'])
    expect(st.code, st.stdout + st.stderr).toBe(0)
    const node = st.json.nodes[0]
    expect(node.containers.available).toBe(false)
    expect(node.containers.reason).toMatch(/cgroup/)
    const cvm = node.daemons.find((d: { name: string }) => d.name === 'cvm')
    expect(cvm).toMatchObject({ healthy: true, restarts: 0 })
    const text = await c.tess(['cluster', 'status'])
    expect(text.stdout).toMatch(/containers unavailable on \S+: .*cgroup/)

    // storage works: a vDisk takes bytes over NBD and gives them back
    expect((await c.tess(['vdisk', 'create', 'v', '--size', '64M', '--json'])).code).toBe(0)
    const src = path.join(c.root, 'in.bin')
    const out = path.join(c.root, 'out.bin')
    fs.writeFileSync(src, crypto.randomBytes(8 * MiB))
    const uri = c.nbdUri('v')
    expect((await run('nbdcopy', ['--flush', src, uri])).code).toBe(0)
    const r = await run('nbdcopy', [uri, out])
    expect(r.code, r.stderr).toBe(0)
    expect(fs.readFileSync(out).subarray(0, 8 * MiB).equals(fs.readFileSync(src))).toBe(true)

    // container operations are refused with the reason (exit 5), and nothing is left behind
    const csm = await c.tess(['csm', 'create', 'web', '--cpus', '1', '--memory', '128M', '--json'])
    expect(csm.code, csm.stdout + csm.stderr).toBe(5)
    expect(csm.json.error.code).toBe('TESS_E_PRECONDITION')
    expect(csm.json.error.message).toMatch(/containers are unavailable on node \S+: .*cgroup/)
    expect(csm.json.error.hint.length).toBeGreaterThan(0)
    // on that node by name (with --host, the old name of --node, kept as a deprecated alias): the same reason
    const named = await c.tess(['csm', 'create', 'web', '--cpus', '1', '--memory', '128M', '--host', node.name, '--json'])
    expect(named.code, named.stdout + named.stderr).toBe(5)
    expect(named.json.error.message).toMatch(/containers are unavailable on node \S+: .*cgroup/)
    expect((await c.tess(['csm', 'list', '--json'])).json).toEqual([])

    // no restart loop: the same CVM is still there
    const pid = c.pid('cvm')
    await new Promise((resolve) => setTimeout(resolve, 3000))
    expect(c.pid('cvm')).toBe(pid)
    const again = (await c.tess(['cluster', 'status', '--json'])).json.nodes[0].daemons.find((d: { name: string }) => d.name === 'cvm')
    expect(again).toMatchObject({ healthy: true, restarts: 0 })
  })
})
