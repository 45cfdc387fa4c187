import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runTess, waitFor, type TessResult } from '../helpers/cluster.js'
import { run } from '../helpers/run.js'
import { createTestHosts, nbdBurstInHost, type TestHosts } from '../helpers/testhosts.js'

const MiB = 1024 * 1024

/**
 * `host add` growing etcd: a 2-node cluster (1 etcd member) gets a third host, after which the
 * second and third nodes are members too (3 members); the third comes back by itself from a
 * network partition, and the cluster survives losing the first.
 */
describe('host add grows etcd from 1 to 3 members', () => {
  let th: TestHosts
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-grow-'))
  const env = { TESS_CONFIG_DIR: path.join(root, 'config') }
  const tess = (args: string[]): Promise<TessResult> => runTess(args, env, { timeoutMs: 240_000 })
  // NBD on TCP requires TLS: a client certificate from `tess vdisk credentials`, made after create
  const creds = path.join(root, 'nbd-creds')
  // the data written to the vDisks g (and joined, late, fresh: 24 MiB), part (16 MiB) and fill (192 MiB)
  const src = path.join(root, 'g.bin')
  const during = path.join(root, 'part.bin')
  const fill = path.join(root, 'fill.bin')
  const uri = (i: number, v: string) => `nbds://${th.hosts[i]!.address}:10809/${v}?tls-certificates=${creds}`

  beforeAll(async () => {
    th = await createTestHosts(3)
  }, 60_000)

  afterAll(async () => {
    try {
      await tess(['cluster', 'destroy', '--yes'])
    } finally {
      await th?.destroy()
      fs.rmSync(root, { recursive: true, force: true })
    }
  }, 180_000)

  // about 100 s on a quiet 2-core machine (three bootstraps, an etcd member added and promoted, a
  // host lost and its member removed): its timeout leaves room for a machine whose cores are both busy
  it('adds the third host as an etcd member, promotes the second, survives the loss of the first, then removes it from etcd', async () => {
    const two = th.hosts.slice(0, 2).map((h) => h.address).join(',')
    const c = await tess(['cluster', 'create', '--name', 'grow', '--hosts', two, '--ssh-key', th.keyFile, '--known-hosts', th.knownHostsFile, '--json'])
    expect(c.code, c.stdout + c.stderr).toBe(0)
    expect(c.json.plan.etcdMembers).toEqual([th.hosts[0]!.name])
    expect((await tess(['vdisk', 'create', 'g', '--size', '64M', '--rf', '2', '--json'])).code).toBe(0)
    fs.writeFileSync(src, crypto.randomBytes(24 * MiB))
    // first contact (issue 20): right after create, 64 writes in flight through host 2 all succeed
    const first = await nbdBurstInHost(th, th.hosts[1]!, src, 'g')
    expect(first.code, first.stderr).toBe(0)
    const cr = await tess(['vdisk', 'credentials', '--user', 'ci', '--out', creds, '--json'])
    expect(cr.code, cr.stdout + cr.stderr).toBe(0)

    const add = await tess(['host', 'add', th.hosts[2]!.address, '--json'])
    expect(add.code, add.stdout + add.stderr).toBe(0)
    expect(add.json.etcdMember).toBe(true)
    // ... and right after host add (which restarted host 2's daemons to make it an etcd member),
    // through the new host, for a new RF 2 vDisk
    expect((await tess(['vdisk', 'create', 'joined', '--size', '64M', '--rf', '2', '--json'])).code).toBe(0)
    const joined = await nbdBurstInHost(th, th.hosts[2]!, src, 'joined')
    expect(joined.code, joined.stderr).toBe(0)
    const jout = path.join(root, 'joined-out.bin')
    expect((await run('nbdcopy', [uri(1, 'joined'), jout])).code).toBe(0)
    expect(fs.readFileSync(jout).subarray(0, 24 * MiB).equals(fs.readFileSync(src))).toBe(true)
    const st = await waitFor('3 healthy etcd members', async () => {
      const s = await tess(['cluster', 'status', '--json'])
      const ok = s.json?.nodes?.length === 3 && s.json.nodes.every((n: any) => n.daemons.some((d: any) => d.name === 'etcd' && d.healthy))
      return ok ? s : undefined
    }, 60_000, 1000)
    expect(st.json.nodes.map((n: any) => n.state)).toEqual(['up', 'up', 'up'])

    // a network partition of host 3 (its link down, its processes go on): writes through host 2
    // to a new RF 2 vDisk succeed meanwhile (host 1 takes the copies); when the link is back, host 3
    // rejoins by itself (its etcd member and its CVM), serves the data, and nothing is under-replicated
    await th.partition(th.hosts[2]!)
    fs.writeFileSync(during, crypto.randomBytes(16 * MiB))
    try {
      await waitFor('host 3 shown down', async () => {
        const s = await tess(['cluster', 'status', '--json'])
        return s.json?.nodes?.[2]?.state === 'down' ? true : undefined
      }, 60_000, 1000)
      expect((await tess(['vdisk', 'create', 'part', '--size', '64M', '--rf', '2', '--json'])).code).toBe(0)
      const w = await nbdBurstInHost(th, th.hosts[1]!, during, 'part')
      expect(w.code, w.stderr).toBe(0)
    } finally {
      await th.heal(th.hosts[2]!)
    }
    await waitFor('host 3 back with its etcd member', async () => {
      const s = await tess(['cluster', 'status', '--json'])
      const ok = s.json?.nodes?.length === 3 && s.json.nodes.every((n: any) => n.state === 'up' && n.daemons.some((d: any) => d.name === 'etcd' && d.healthy))
      return ok ? true : undefined
    }, 120_000, 1000)
    const pout = path.join(root, 'part-out.bin')
    const pr = await run('nbdcopy', [uri(2, 'part'), pout], { timeoutMs: 120_000 })
    if (pr.code !== 0) pr.stderr += `\n--- CVM log of host 3 ---\n${(await th.exec(th.hosts[2]!, ['sh', '-c', 'tail -n 60 /var/lib/tess/logs/cvm.log'])).stdout}`
    expect(pr.code, pr.stderr).toBe(0)
    expect(fs.readFileSync(pout).subarray(0, 16 * MiB).equals(fs.readFileSync(during))).toBe(true)
    await waitFor('healthy after the partition', async () => {
      const h = await tess(['cluster', 'health', '--json'])
      return h.json?.state === 'healthy' ? true : undefined
    }, 120_000, 2000)

    const master0 = (await tess(['cluster', 'health', '--json'])).json?.curator?.master
    expect(th.hosts.map((h) => h.name)).toContain(master0)

    // the first node (the original single member) dies: etcd keeps quorum with 2 of 3
    await th.kill(th.hosts[0]!)
    const out = path.join(root, 'g-out.bin')
    const r = await run('nbdcopy', [uri(1, 'g'), out], { timeoutMs: 120_000 })
    expect(r.code, r.stderr).toBe(0)
    expect(fs.readFileSync(out).subarray(0, 24 * MiB).equals(fs.readFileSync(src))).toBe(true)
    let lastAnswer = ''
    const v = await waitFor('a vDisk created after the loss', async () => {
      const x = await tess(['vdisk', 'create', 'after', '--size', '16M', '--rf', '2', '--json'])
      lastAnswer = `exit ${x.code}: ${x.stdout}${x.stderr}`
      return x.code === 0 ? x : undefined
    }, 60_000, 2000).catch((e: unknown) => {
      // the last refusal says why (a timeout alone does not)
      throw new Error(`${String(e)}; last answer: ${lastAnswer}`)
    })
    expect(v.json.name).toBe('after')
    const down = await waitFor('node 1 shown down', async () => {
      const s = await tess(['cluster', 'status', '--json'])
      return s.json?.nodes?.[0]?.state === 'down' ? s : undefined
    }, 60_000, 1000)
    expect(down.json.nodes.map((n: any) => n.state)).toEqual(['down', 'up', 'up'])

    // remove the dead first node: it leaves etcd (2 live members remain), its data has copies elsewhere
    const rm = await tess(['host', 'remove', th.hosts[0]!.name, '--yes', '--json'])
    expect(rm.code, rm.stdout + rm.stderr).toBe(0)
    expect(rm.json.etcdMemberRemoved).toBe(true)
    expect(rm.json.cleaned).toBe(false) // unreachable: only forgotten
    const after = await tess(['host', 'list', '--json'])
    expect(after.json.map((h: any) => h.name)).toEqual([th.hosts[1]!.name, th.hosts[2]!.name])
    expect((await tess(['vdisk', 'create', 'later', '--size', '16M', '--rf', '2', '--json'])).code).toBe(0)
    // the curator master is on a live node (elected again if it was on the first), and it copies
    // what the removed node held to the two left: every extent group has its 2 copies again
    const healthy = await waitFor('every vDisk re-protected after the removal', async () => {
      const r = await tess(['cluster', 'health', '--json'])
      return r.json?.state === 'healthy' && r.json.total.egroups > 0 ? r : undefined
    }, 180_000, 2000)
    expect([th.hosts[1]!.name, th.hosts[2]!.name]).toContain(healthy.json.curator.master)
    if (master0 === th.hosts[0]!.name) console.log(`curator master moved from ${master0} to ${healthy.json.curator.master}`)
    const out2 = path.join(root, 'g-out2.bin')
    expect((await run('nbdcopy', [uri(2, 'g'), out2], { timeoutMs: 120_000 })).code).toBe(0)
    expect(fs.readFileSync(out2).subarray(0, 24 * MiB).equals(fs.readFileSync(src))).toBe(true)

    // a second disk on host 2: the curator moves half of host 2's replicas to it (a move within a
    // node, through the data port when the vDisk's owner is host 3); every byte reads back after
    const groupsOn = async (dir: string) => Number((await th.exec(th.hosts[1]!, ['sh', '-c', `ls ${dir}/egroups 2>/dev/null | grep -c "\\.eg$" || true`])).stdout.trim())
    fs.writeFileSync(fill, crypto.randomBytes(192 * MiB))
    expect((await tess(['vdisk', 'create', 'fill', '--size', '256M', '--rf', '2', '--json'])).code).toBe(0)
    const fw = await run('nbdcopy', ['--flush', fill, uri(2, 'fill')], { timeoutMs: 120_000 })
    expect(fw.code, fw.stderr).toBe(0)
    const n = await groupsOn('/var/lib/tess/disks/d0')
    expect(n).toBeGreaterThanOrEqual(8) // 6 of fill (32 MiB each) and those of g, joined, part
    expect((await th.exec(th.hosts[1]!, ['mkdir', '-p', '/var/lib/tess/disks/d1'])).code).toBe(0)
    const add2 = await tess(['disk', 'add', '/var/lib/tess/disks/d1', '--node', th.hosts[1]!.name, '--json'])
    expect(add2.code, add2.stdout + add2.stderr).toBe(0)
    await waitFor('host 2\'s disks balanced', async () => {
      const h = await tess(['cluster', 'health', '--json'])
      return (h.json?.curator?.lastBalanceMoved?.egroups ?? 0) > 0 && h.json.curator.balancing === false && h.json.state === 'healthy' ? true : undefined
    }, 120_000, 2000)
    const [a, b] = [await groupsOn('/var/lib/tess/disks/d0'), await groupsOn('/var/lib/tess/disks/d1')]
    expect(a + b, 'each group once on host 2').toBe(n)
    expect(Math.abs(a - b), `${a} and ${b} groups on host 2's disks`).toBeLessThanOrEqual(1)
    for (const v of ['g', 'part', 'joined', 'fill']) {
      const bout = path.join(root, `${v}-balanced.bin`)
      const want = v === 'part' ? during : v === 'fill' ? fill : src
      const size = v === 'part' ? 16 * MiB : v === 'fill' ? 192 * MiB : 24 * MiB
      const br = await run('nbdcopy', [uri(1, v), bout], { timeoutMs: 120_000 })
      expect(br.code, br.stderr).toBe(0)
      expect(fs.readFileSync(bout).subarray(0, size).equals(fs.readFileSync(want)), `vDisk ${v} through host 2`).toBe(true)
    }
  }, 600_000)

  // the cluster left by the test above: hosts 2 and 3, both etcd members, RF 2 vDisks on 3 disks
  it('restores the metadata from a backup after every etcd member lost its data, then renews the node certificates', async () => {
    const [h2, h3] = [th.hosts[1]!, th.hosts[2]!]
    const file = path.join(root, 'grow.tbk')
    const bk = await tess(['cluster', 'backup', file, '--json'])
    expect(bk.code, bk.stdout + bk.stderr).toBe(0)
    expect(bk.json.etcdMembers.sort()).toEqual([h2.name, h3.name].sort())
    const names = (await tess(['vdisk', 'list', '--json'])).json.map((v: { name: string }) => v.name).sort()
    expect(bk.json.counts.vdisks).toBe(names.length)
    // after the backup: a vDisk that the restore forgets
    expect((await tess(['vdisk', 'create', 'late', '--size', '32M', '--rf', '2', '--json'])).code).toBe(0)
    expect((await nbdBurstInHost(th, h2, src, 'late')).code).toBe(0)

    // every member loses its data at once (etcd and the CVM killed, etcd's data dir removed)
    const lose = 'kill -9 $(cat /var/lib/tess/run/etcd.pid) $(cat /var/lib/tess/run/cvm.pid); rm -rf /var/lib/tess/etcd'
    await Promise.all([h2, h3].map((h) => th.exec(h, ['sh', '-c', lose])))
    await waitFor('the cluster to stop answering', async () => (await tess(['vdisk', 'list', '--json'])).code === 6 || undefined, 90_000, 1000)

    const r = await tess(['cluster', 'restore', file, '--yes', '--json'])
    expect(r.code, r.stdout + r.stderr).toBe(0)
    expect(r.json.nodes.map((n: { node: string, etcdMember: boolean }) => [n.node, n.etcdMember]).sort()).toEqual([[h2.name, true], [h3.name, true]].sort())
    expect(r.json.vdisks).toBe(names.length)
    const st = await waitFor('2 healthy etcd members', async () => {
      const s = await tess(['cluster', 'status', '--json'])
      return s.json?.nodes?.length === 2 && s.json.nodes.every((n: any) => n.state === 'up' && n.daemons.some((d: any) => d.name === 'etcd' && d.healthy)) ? s : undefined
    }, 120_000, 1000)
    expect(st.json.nodes.map((n: any) => n.name).sort()).toEqual([h2.name, h3.name].sort())
    expect((await tess(['vdisk', 'list', '--json'])).json.map((v: { name: string }) => v.name).sort()).toEqual(names)
    // both CVMs serve NBD (a CI run once found host 2's port closed right after it reported up: its
    // CVM log is printed if that lasts)
    for (const i of [1, 2]) {
      const served = await waitFor(`host ${i + 1}'s NBD port`, async () => {
        const c = await run('nbdinfo', ['--size', uri(i, 'g')], { timeoutMs: 30_000 })
        return c.code === 0 ? c : undefined
      }, 60_000, 1000).catch(async (e: unknown) => {
        throw new Error(`${String(e)}\n--- CVM log of host ${i + 1} ---\n${(await th.exec(th.hosts[i]!, ['sh', '-c', 'tail -n 60 /var/lib/tess/logs/cvm.log'])).stdout}`)
      })
      expect(served.code).toBe(0)
    }
    const after = (await tess(['cluster', 'status', '--json'])).json
    console.log(`after the restore: ${after.nodes.map((n: any) => `${n.name} cvm restarts ${n.daemons.find((d: any) => d.name === 'cvm')?.restarts}`).join(', ')}`)
    // every byte of the backup's vDisks, through both hosts
    for (const [v, i] of [['g', 1], ['fill', 2], ['part', 1], ['joined', 2]] as const) {
      const want = v === 'part' ? during : v === 'fill' ? fill : src
      const size = v === 'part' ? 16 * MiB : v === 'fill' ? 192 * MiB : 24 * MiB
      const out = path.join(root, `${v}-restored.bin`)
      // a read right after the restore failed once in CI with an I/O error (the replicas' node not
      // reachable yet?): the failures are printed and the read tried again for up to 60 s; the
      // bytes must be the backup's exactly
      const failures: string[] = []
      const rr = await waitFor(`vDisk ${v} to read through host ${i + 1}`, async () => {
        const x = await run('nbdcopy', [uri(i, v), out], { timeoutMs: 120_000 })
        if (x.code !== 0) failures.push(x.stderr.trim())
        return x.code === 0 ? x : undefined
      }, 60_000, 2000).catch((e: unknown) => { throw new Error(`${String(e)}: ${failures.join(' | ')}`) })
      if (failures.length > 0) console.log(`after the restore, vDisk ${v} through host ${i + 1}: ${failures.length} failed read(s) before it read: ${failures.join(' | ')}`)
      expect(rr.code).toBe(0)
      expect(fs.readFileSync(out).subarray(0, size).equals(fs.readFileSync(want)), `vDisk ${v} through host ${i + 1}`).toBe(true)
    }
    // new vDisks and extent groups after the restore, and the cluster healthy again
    expect((await tess(['vdisk', 'create', 'fresh', '--size', '32M', '--rf', '2', '--json'])).code).toBe(0)
    expect((await nbdBurstInHost(th, h3, src, 'fresh')).code).toBe(0)
    const fo = path.join(root, 'fresh-out.bin')
    expect((await run('nbdcopy', [uri(1, 'fresh'), fo], { timeoutMs: 120_000 })).code).toBe(0)
    expect(fs.readFileSync(fo).subarray(0, 24 * MiB).equals(fs.readFileSync(src))).toBe(true)
    await waitFor('healthy after the restore', async () => {
      const h = await tess(['cluster', 'health', '--json'])
      return h.json?.state === 'healthy' ? true : undefined
    }, 120_000, 2000)

    // new node certificates over SSH, one node at a time, with nothing restarted
    const cvms = await Promise.all([h2, h3].map(async (h) => (await th.exec(h, ['cat', '/var/lib/tess/run/cvm.pid'])).stdout.trim()))
    const rot = await tess(['cluster', 'rotate-certs', '--json'])
    expect(rot.code, rot.stdout + rot.stderr).toBe(0)
    expect(rot.json.nodes.map((n: { node: string, etcdChecked: boolean }) => [n.node, n.etcdChecked])).toEqual([[h2.name, true], [h3.name, true]])
    expect(await Promise.all([h2, h3].map(async (h) => (await th.exec(h, ['cat', '/var/lib/tess/run/cvm.pid'])).stdout.trim()))).toEqual(cvms)
    // the nodes reach each other with the new certificates: an RF 2 write through host 3 and a read through host 2
    expect((await tess(['vdisk', 'create', 'rotated', '--size', '32M', '--rf', '2', '--json'])).code).toBe(0)
    expect((await nbdBurstInHost(th, h3, src, 'rotated')).code).toBe(0)
    const ro = path.join(root, 'rotated-out.bin')
    expect((await run('nbdcopy', [uri(1, 'rotated'), ro], { timeoutMs: 120_000 })).code).toBe(0)
    expect(fs.readFileSync(ro).subarray(0, 24 * MiB).equals(fs.readFileSync(src))).toBe(true)
  }, 420_000)
})
