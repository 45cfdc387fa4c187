import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { ContainerView, VolumeInfo } from '../../src/lib/csm-types.js'
import { TestCluster, alive, waitFor, withJson, type TessResult } from '../helpers/cluster.js'
import { buildBusyboxImage, exec, haveCommands, pushImage, startDockerRegistry, type DockerRegistry } from '../helpers/registry.js'
import { filesHolding } from '../helpers/files.js'

/**
 * Volumes on the embedded cluster: a vDisk served by the CVM's NBD server, exposed as a file by
 * nbdfuse, a loop device with direct I/O, ext4, bind-mounted into containers run by runc.
 */
const missing = haveCommands('docker-registry', 'umoci', 'skopeo', 'busybox', 'runc', 'etcd', 'nbdfuse', 'losetup', 'mkfs.ext4', 'blkid')
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe.skipIf(missing.length > 0 || process.getuid?.() !== 0 || !fs.existsSync('/dev/fuse'))('volumes: vDisks attached to containers through nbdfuse, loop and ext4', () => {
  const c = new TestCluster('vol')
  let reg: DockerRegistry | undefined
  let work: string
  let image: string

  async function ok(args: string[]): Promise<any> {
    const r = await c.tess(withJson(args), { timeoutMs: 120_000 })
    if (r.code !== 0) throw new Error(`tess ${args.join(' ')} exited ${r.code}: ${r.stdout} ${r.stderr}`)
    return r.json
  }
  async function fails(args: string[], exit: number, code: string): Promise<{ message: string, hint: string }> {
    const r: TessResult = await c.tess(withJson(args), { timeoutMs: 120_000 })
    expect(r.code, `${args.join(' ')}: ${r.stdout} ${r.stderr}`).toBe(exit)
    expect(r.json?.error?.code, r.stdout).toBe(code)
    return r.json.error
  }
  const logs = async (name: string) => (await c.tess(['container', 'logs', name])).stdout
  const waitExit = (name: string) => waitFor(`${name} to exit`, async () => {
    const s = await ok(['container', 'show', name]) as ContainerView
    return s.status === 'exited' ? s : undefined
  }, 60_000, 200)
  /** what of the volume chain is left on the machine: loop devices, mounts and nbdfuse processes of this cluster */
  const leftovers = async () => {
    const loops = (await exec('losetup', ['-l', '-n', '-O', 'NAME,BACK-FILE'])).stdout.split('\n').filter((l) => l.includes(c.root))
    const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(c.root) && !l.includes('/rootfs '))
    const procs = fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((p) => {
      try {
        const cmd = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8')
        return cmd.startsWith('nbdfuse') && cmd.includes(c.root)
      } catch {
        return false
      }
    })
    return { loops, mounts, procs }
  }
  const noLeftovers = async () => expect(await leftovers()).toEqual({ loops: [], mounts: [], procs: [] })

  beforeAll(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-vol-it-'))
    reg = await startDockerRegistry()
    image = `${reg.host}/test/busybox:v1`
    await pushImage(await buildBusyboxImage(path.join(work, 'build'), 'v1'), image)
    await c.create()
    await ok(['registry', 'add', 'local', `http://${reg.host}`, '--insecure'])
    await ok(['csm', 'create', 'apps', '--cpus', '1', '--memory', '512M'])
    await ok(['image', 'pull', image])
  }, 180_000)

  afterAll(async () => {
    await c.destroy()
    await reg?.cleanup().catch(() => undefined)
    if (work !== undefined) fs.rmSync(work, { recursive: true, force: true })
  }, 120_000)

  it('create, list, show; bad sizes and names are refused', async () => {
    await fails(['volume', 'create', 'tiny', '--size', '1M'], 2, 'TESS_E_INVALID')
    await fails(['volume', 'create', 'Bad', '--size', '64M'], 2, 'TESS_E_INVALID')
    await fails(['volume', 'create', 'many', '--size', '64M', '--rf', '2'], 5, 'TESS_E_TOO_FEW_NODES')
    const v = await ok(['volume', 'create', 'data', '--size', '256M']) as VolumeInfo
    expect(v).toMatchObject({ name: 'data', vdisk: 'vol-data', sizeBytes: 256 * 2 ** 20, rf: 1, formatted: false, attachments: [] })
    await fails(['volume', 'create', 'data', '--size', '256M'], 4, 'TESS_E_EXISTS')
    expect((await ok(['volume', 'list']) as VolumeInfo[]).map((x) => x.name)).toEqual(['data'])
    expect((await ok(['vdisk', 'show', 'vol-data'])).sizeBytes).toBe(256 * 2 ** 20)
    await fails(['volume', 'show', 'nope'], 3, 'TESS_E_NOT_FOUND')
    await fails(['container', 'run', image, '--name', 'x', '--csm', 'apps', '--volume', 'nope:/data', '--', 'true'], 3, 'TESS_E_NOT_FOUND')
    await fails(['container', 'run', image, '--name', 'x', '--csm', 'apps', '--volume', 'data:relative', '--', 'true'], 2, 'TESS_E_INVALID')
    await fails(['container', 'run', image, '--name', 'x', '--csm', 'apps', '--volume', 'data:/proc', '--', 'true'], 2, 'TESS_E_INVALID')
    await fails(['container', 'show', 'x'], 3, 'TESS_E_NOT_FOUND')
  })

  it('formats on the first attach; the next container sees every byte; read-write is exclusive, read-only is shared; nothing leaks', async () => {
    await ok(['container', 'run', image, '--name', 'writer', '--csm', 'apps', '--volume', 'data:/data', '--',
      'sh', '-c', 'busybox dd if=/dev/urandom of=/data/blob bs=1M count=8 conv=fsync 2>/dev/null && busybox sha256sum /data/blob && echo written; busybox sleep 1000'])
    await waitFor('the writer to write', async () => (await logs('writer')).includes('written'), 30_000, 200)
    const sum = (await logs('writer')).split(' ')[0]!
    expect(sum).toMatch(/^[a-f0-9]{64}$/)
    // the chain reaches the node's CVM through its NBD Unix socket (root only, not through TCP)
    const fuse = (await leftovers()).procs.map((p) => fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').join(' '))
    expect(fuse).toHaveLength(1)
    expect(fuse[0]).toContain(`nbd+unix:///vol-data?socket=${path.join(c.dataDir, 'run', 'nbd.sock')}`)
    expect((await ok(['volume', 'show', 'data']) as VolumeInfo)).toMatchObject({ formatted: true, attachments: [{ container: 'writer', readOnly: false, target: '/data' }] })
    expect((await ok(['container', 'show', 'writer']) as ContainerView).volumes).toEqual([{ name: 'data', target: '/data', readOnly: false }])
    expect((await ok(['volume', 'show', 'data']) as VolumeInfo).allocatedBytes).toBeGreaterThan(8 * 2 ** 20)
    // a second read-write attach names the holder; read-only is refused too while a writer holds it
    const e = await fails(['container', 'run', image, '--name', 'second', '--csm', 'apps', '--volume', 'data:/data', '--', 'true'], 4, 'TESS_E_CONFLICT')
    expect(e.message).toContain('container "writer"')
    await fails(['container', 'run', image, '--name', 'second', '--csm', 'apps', '--volume', 'data:/data:ro', '--', 'true'], 4, 'TESS_E_CONFLICT')
    await fails(['container', 'show', 'second'], 3, 'TESS_E_NOT_FOUND')
    await fails(['volume', 'delete', 'data', '--yes'], 4, 'TESS_E_CONFLICT')
    await fails(['volume', 'delete', 'data', '--dry-run'], 4, 'TESS_E_CONFLICT') // the same check

    await ok(['container', 'remove', 'writer', '--force', '--yes'])
    await noLeftovers()
    expect((await ok(['volume', 'show', 'data']) as VolumeInfo).attachments).toEqual([])

    // two readers share it read-only and see the same bytes; writes are refused
    for (const n of ['r1', 'r2']) {
      await ok(['container', 'run', image, '--name', n, '--csm', 'apps', '--volume', 'data:/data:ro', '--',
        'sh', '-c', 'busybox sha256sum /data/blob; echo x > /data/new || echo refused; busybox sleep 1000'])
    }
    for (const n of ['r1', 'r2']) {
      await waitFor(`${n} output`, async () => (await logs(n)).includes('refused'), 30_000, 200)
      expect(await logs(n)).toContain(`${sum}  /data/blob`)
    }
    expect((await ok(['volume', 'show', 'data']) as VolumeInfo).attachments.map((a) => a.container).sort()).toEqual(['r1', 'r2'])
    for (const n of ['r1', 'r2']) await ok(['container', 'remove', n, '--force', '--yes'])
    await noLeftovers()
  })

  it('an encrypted volume: containers read back what they wrote, and the disks hold no plaintext of it', async () => {
    const marker = `tessera-volume-marker-${Math.random().toString(36).slice(2)}`
    const v = await ok(['volume', 'create', 'sealed', '--size', '64M', '--encrypted']) as VolumeInfo
    expect(v.encrypted).toBe(true)
    await ok(['container', 'run', image, '--name', 'sw', '--csm', 'apps', '--volume', 'sealed:/data', '--',
      'sh', '-c', `for i in $(busybox seq 1 2000); do echo ${marker}; done > /data/m && busybox sync && echo written; busybox sleep 1000`])
    await waitFor('the writer', async () => (await logs('sw')).includes('written'), 30_000, 200)
    await ok(['container', 'remove', 'sw', '--force', '--yes'])
    await ok(['container', 'run', image, '--name', 'sr', '--csm', 'apps', '--volume', 'sealed:/data:ro', '--',
      'sh', '-c', `busybox grep -c ${marker} /data/m; busybox sleep 1000`])
    await waitFor('the reader', async () => /^2000$/m.test(await logs('sr')), 30_000, 200)
    await ok(['container', 'remove', 'sr', '--force', '--yes'])
    await noLeftovers()
    expect(filesHolding(path.join(c.dataDir, 'disks'), marker)).toEqual([])
    await ok(['volume', 'delete', 'sealed', '--yes'])
  })

  it('a container stopped and started again re-attaches its volume', async () => {
    await ok(['container', 'run', image, '--name', 'cycler', '--csm', 'apps', '--volume', 'data:/data', '--',
      'sh', '-c', 'busybox sha256sum /data/blob; echo run >> /data/runs; busybox sync; busybox cat /data/runs | busybox wc -l; busybox sleep 1000'])
    await waitFor('first run', async () => /^1$/m.test(await logs('cycler')), 30_000, 200)
    await ok(['container', 'stop', 'cycler', '--timeout', '0'])
    expect((await leftovers()).procs).toEqual([])
    await ok(['container', 'start', 'cycler'])
    await waitFor('second run', async () => /^2$/m.test(await logs('cycler')), 30_000, 200)
    await ok(['container', 'remove', 'cycler', '--force', '--yes'])
    await noLeftovers()
  })

  it('a copy of the mounted volume in a mount namespace made meanwhile (unshare, ip netns exec) does not keep it attached', async () => {
    await ok(['volume', 'create', 'pinvol', '--size', '64M'])
    await ok(['container', 'run', image, '--name', 'pinned', '--csm', 'apps', '--volume', 'pinvol:/data', '--', 'sh', '-c', 'echo up; busybox sleep 1000'])
    await waitFor('pinned to run', async () => /^up$/m.test(await logs('pinned')), 30_000, 200)
    // a private copy of every mount of the machine, the volume's ext4 and FUSE mounts among them:
    // our unmount does not propagate into it
    const holder = spawn('unshare', ['--mount', '--propagation', 'private', 'sleep', '600'], { stdio: 'ignore', detached: true })
    try {
      const copies = () => (fs.readFileSync(`/proc/${holder.pid}/mountinfo`, 'utf8').match(new RegExp(`${c.root}\\S*/volumes/pinvol/(mnt|fuse) `, 'g')) ?? []).length
      const ns = (pid: number | string) => fs.readlinkSync(`/proc/${pid}/ns/mnt`)
      await waitFor('the copy', async () => ns(holder.pid!) !== ns('self') && copies() === 2, 10_000, 50)
      await ok(['container', 'remove', 'pinned', '--force', '--yes'])
      await noLeftovers()
      expect(copies()).toBe(0)
    } finally {
      holder.kill('SIGKILL')
    }
    await ok(['volume', 'delete', 'pinvol', '--yes'])
  })

  it('snapshots while a container writes: its filesystem frozen for the instant; a clone mounts elsewhere with the data; restore and delete are refused while it is in use', async () => {
    const marker = `unsynced-${Math.random().toString(36).slice(2)}`
    await ok(['volume', 'create', 'snapvol', '--size', '128M'])
    // /data/a is written and never synced: only the freeze puts it on the vDisk before the
    // snapshot (the page cache would hold it for up to 30 s); /data/count grows all the time
    await ok(['container', 'run', image, '--name', 'sw', '--csm', 'apps', '--volume', 'snapvol:/data', '--',
      'sh', '-c', `echo ${marker} > /data/a && echo written; i=0; while true; do i=$((i+1)); echo $i >> /data/count; echo tick $i; busybox usleep 20000; done`])
    await waitFor('the writer', async () => (await logs('sw')).includes('written'), 30_000, 200)
    const snap = await ok(['volume', 'snapshot', 'create', 'snapvol', 's1'])
    expect(snap).toMatchObject({ volume: 'snapvol', name: 's1', vdisk: 'vol-snapvol', frozen: { container: 'sw', node: expect.any(String) } })
    // thawed: the writer goes on. (`container logs` without --follow of a container that never
    // stops writing ends at the size the log had when it was asked: it once read on and on)
    const ticks = async () => (await logs('sw')).split('\n').filter((l) => l.startsWith('tick')).length
    const t0 = await ticks()
    await waitFor('writes after the snapshot', async () => (await ticks()) > t0 + 5, 30_000, 200)
    expect((await ok(['volume', 'snapshot', 'list', 'snapvol'])).map((x: any) => x.name)).toEqual(['s1'])
    expect((await ok(['volume', 'snapshot', 'list'])).map((x: any) => `${x.volume}@${x.name}`)).toEqual(['snapvol@s1'])
    await fails(['volume', 'snapshot', 'create', 'snapvol', 's1'], 4, 'TESS_E_EXISTS')
    await fails(['volume', 'snapshot', 'create', 'nope', 's1'], 3, 'TESS_E_NOT_FOUND')

    // a clone of the snapshot, read-write in another container: the unsynced file is there
    const cl = await ok(['volume', 'clone', 'snapvol@s1', 'snapclone']) as VolumeInfo
    expect(cl).toMatchObject({ name: 'snapclone', vdisk: 'vol-snapclone', sizeBytes: 128 * 2 ** 20, parent: 'snapvol@s1', attachments: [] })
    await ok(['container', 'run', image, '--name', 'cr', '--csm', 'apps', '--volume', 'snapclone:/data', '--',
      'sh', '-c', 'busybox cat /data/a; echo "lines=$(busybox cat /data/count | busybox wc -l)"; echo mine > /data/b && busybox sync && echo clone-written; busybox sleep 1000'])
    await waitFor('the clone\'s reader', async () => (await logs('cr')).includes('clone-written'), 30_000, 200)
    const clText = await logs('cr')
    expect(clText).toContain(`${marker}\n`)
    const lines = Number(/lines=(\d+)/.exec(clText)?.[1])
    expect(lines).toBeGreaterThan(0)
    // a clone without @SNAP takes a frozen snapshot named after it first
    const cl2 = await ok(['volume', 'clone', 'snapvol', 'snapclone2']) as VolumeInfo
    expect(cl2.parent).toBe('snapvol@snapclone2')

    // refusals while in use, each naming what holds it
    expect((await fails(['volume', 'snapshot', 'delete', 'snapvol', 's1', '--yes'], 4, 'TESS_E_CONFLICT')).message).toContain('vol-snapclone')
    expect((await fails(['volume', 'restore', 'snapvol', 's1', '--yes'], 4, 'TESS_E_CONFLICT')).message).toContain('container "sw"')
    await ok(['container', 'remove', 'cr', '--force', '--yes'])
    await ok(['volume', 'delete', 'snapclone', '--yes'])
    await ok(['volume', 'delete', 'snapclone2', '--yes'])
    await ok(['volume', 'snapshot', 'delete', 'snapvol', 'snapclone2', '--yes'])

    // stopped, its volume is unmounted: the restore goes through, and the volume holds what s1 held
    await ok(['container', 'stop', 'sw', '--timeout', '0'])
    const snap2 = await ok(['volume', 'snapshot', 'create', 'snapvol', 's2'])
    expect(snap2.frozen).toBeNull()
    const back = await ok(['volume', 'restore', 'snapvol', 's1', '--yes'])
    expect(back.changedExtents).toBeGreaterThan(0)
    await ok(['container', 'remove', 'sw', '--yes'])
    await ok(['container', 'run', image, '--name', 'rr', '--csm', 'apps', '--volume', 'snapvol:/data:ro', '--',
      'sh', '-c', 'busybox cat /data/a; echo "lines=$(busybox cat /data/count | busybox wc -l)"'])
    await waitExit('rr')
    expect(await logs('rr')).toBe(`${marker}\nlines=${lines}\n`)
    await ok(['container', 'remove', 'rr', '--yes'])
    const del = await fails(['volume', 'delete', 'snapvol', '--yes'], 4, 'TESS_E_CONFLICT')
    expect(del.message).toContain('2 snapshots (s1, s2)')
    expect(del.hint).toContain('--force')
    expect((await ok(['volume', 'show', 'snapvol']) as VolumeInfo).name).toBe('snapvol') // the refusal kept it whole
    await ok(['volume', 'delete', 'snapvol', '--force', '--yes'])
    expect((await ok(['vdisk', 'list'])).map((v: any) => v.name)).not.toContain('vol-snapvol')
    expect(await ok(['volume', 'snapshot', 'list'])).toEqual([])
    await noLeftovers()
  })

  it('--userns: the container writes its volume as its own root (an unprivileged user on the node); start again re-attaches; nothing leaks', async () => {
    await ok(['volume', 'create', 'uns', '--size', '64M'])
    const cmd = 'echo "uid=$(busybox id -u)"; echo mine > /data/mine && busybox stat -c "owner=%u" /data/mine; busybox cat /proc/self/uid_map; busybox sync; echo run >> /data/runs; busybox cat /data/runs | busybox wc -l; busybox sleep 1000'
    await ok(['container', 'run', image, '--name', 'unsvol', '--csm', 'apps', '--userns', '--volume', 'uns:/data', '--', 'sh', '-c', cmd])
    await waitFor('first run', async () => /^1$/m.test(await logs('unsvol')), 30_000, 200)
    const text = await logs('unsvol')
    expect(text).toContain('uid=0\n')
    expect(text).toContain('owner=0\n')
    expect(text).toMatch(/^\s*0\s+100000\s+65536$/m)
    expect((await ok(['container', 'show', 'unsvol'])).userns).toBe(true)
    await ok(['container', 'stop', 'unsvol', '--timeout', '0'])
    await ok(['container', 'start', 'unsvol'])
    await waitFor('second run', async () => /^2$/m.test(await logs('unsvol')), 30_000, 200)
    await ok(['container', 'remove', 'unsvol', '--force', '--yes'])
    await noLeftovers()
    // the volume keeps the ids the container saw (idmapped, not chowned): without a user namespace
    // the same file belongs to root, and the volume serves either kind of container
    await ok(['container', 'run', image, '--name', 'unscheck', '--csm', 'apps', '--volume', 'uns:/data:ro', '--', 'sh', '-c', 'busybox stat -c "owner=%u" /data/mine; busybox cat /data/mine'])
    await waitExit('unscheck')
    expect(await logs('unscheck')).toBe('owner=0\nmine\n')
    await ok(['container', 'remove', 'unscheck', '--yes'])
    await ok(['volume', 'delete', 'uns', '--yes'])
    await noLeftovers()
  })

  it('kill -9 of the CSM while a container writes and fsyncs: the container and its volume carry on; everything fsynced is kept', async () => {
    await ok(['container', 'run', image, '--name', 'busy', '--csm', 'apps', '--volume', 'data:/data', '--',
      // paced: unpaced, a fast data path fills the 256 MiB volume before the test is done (ENOSPC)
      'sh', '-c', 'i=0; while :; do i=$((i+1)); busybox dd if=/dev/urandom of=/data/s$i bs=4k count=4 conv=fsync 2>/dev/null && echo done $i || echo fail $i; busybox sleep 0.02; done'])
    await waitFor('some writes', async () => /done 20\n/.test(await logs('busy')), 30_000, 200)
    const pidFile = path.join(c.dataDir, 'run', 'csm-apps.pid')
    const csmPid = Number(fs.readFileSync(pidFile, 'utf8'))
    process.kill(csmPid, 'SIGKILL')
    await waitFor('a new CSM daemon', () => {
      try {
        const p = Number(fs.readFileSync(pidFile, 'utf8'))
        return p !== csmPid && alive(p) ? true : undefined
      } catch {
        return undefined // between the exit and the restart there is no pidfile
      }
    }, 30_000)
    const before = (await logs('busy')).split('\n').filter((l) => l.startsWith('done')).length
    await sleep(1500)
    const text = await logs('busy')
    expect(text).not.toContain('fail')
    expect(text.split('\n').filter((l) => l.startsWith('done')).length).toBeGreaterThan(before)
    const stopped = await ok(['container', 'stop', 'busy', '--timeout', '0']) as ContainerView
    expect(stopped.status).toBe('exited')
    const done = (await logs('busy')).split('\n').filter((l) => l.startsWith('done ')).map((l) => Number(l.slice(5)))
    await ok(['container', 'remove', 'busy', '--yes'])
    await noLeftovers()
    await ok(['container', 'run', image, '--name', 'check1', '--csm', 'apps', '--volume', 'data:/data', '--',
      'sh', '-c', `for i in $(busybox seq 1 ${Math.max(...done)}); do busybox test "$(busybox stat -c %s /data/s$i)" = 16384 || echo missing $i; done; echo checked`])
    await waitExit('check1')
    expect(await logs('check1')).toBe('checked\n')
    await ok(['container', 'remove', 'check1', '--yes'])
  })

  it('kill -9 of the CVM while a container writes and fsyncs: after recovery the volume mounts cleanly with everything fsynced', async () => {
    await ok(['container', 'run', image, '--name', 'busy2', '--csm', 'apps', '--volume', 'data:/data', '--',
      'sh', '-c', 'i=0; while :; do i=$((i+1)); busybox dd if=/dev/urandom of=/data/t$i bs=4k count=4 conv=fsync 2>/dev/null && echo done $i || echo fail $i; busybox sleep 0.02; done'])
    await waitFor('some writes', async () => /done 20\n/.test(await logs('busy2')), 30_000, 200)
    const cvmPid = c.pid('cvm')!
    process.kill(cvmPid, 'SIGKILL')
    // the CVM comes back (the supervisor); the container's NBD connection does not: its I/O fails
    await waitFor('a new CVM', () => {
      const p = c.pid('cvm')
      return p !== undefined && p !== cvmPid && alive(p) ? true : undefined
    }, 30_000)
    const t0 = Date.now()
    await waitFor('the API back', async () => (await c.tess(['container', 'show', 'busy2', '--json'])).code === 0 ? true : undefined, 30_000, 200)
    await ok(['container', 'stop', 'busy2', '--timeout', '0'])
    const done = (await logs('busy2')).split('\n').filter((l) => l.startsWith('done ')).map((l) => Number(l.slice(5)))
    await ok(['container', 'remove', 'busy2', '--yes'])
    await noLeftovers()
    await ok(['container', 'run', image, '--name', 'check2', '--csm', 'apps', '--volume', 'data:/data', '--',
      'sh', '-c', `for i in $(busybox seq 1 ${Math.max(...done)}); do busybox test "$(busybox stat -c %s /data/t$i)" = 16384 || echo missing $i; done; busybox sha256sum /data/blob; echo checked`])
    await waitExit('check2')
    const out = await logs('check2')
    expect(out).toMatch(/checked\n$/)
    expect(out).not.toContain('missing')
    console.log(`CVM kill -9: ${done.length} fsynced writes before it, all there; recovered (stop, remove, new attach) in ${Date.now() - t0} ms after the CVM was back`)
    await ok(['container', 'remove', 'check2', '--yes'])
    await noLeftovers()
  })

  it('delete frees the vDisk; destroy leaves no loop device, mount or process', async () => {
    await ok(['volume', 'create', 'scratch', '--size', '64M'])
    await ok(['container', 'run', image, '--name', 'last', '--csm', 'apps', '--volume', 'scratch:/s', '--', 'busybox', 'sleep', '1000'])
    await ok(['container', 'remove', 'last', '--force', '--yes'])
    // --dry-run: no question, nothing deleted
    expect(await ok(['volume', 'delete', 'scratch', '--dry-run'])).toMatchObject({ name: 'scratch', dryRun: true })
    await ok(['vdisk', 'show', 'vol-scratch'])
    expect((await ok(['volume', 'delete', 'scratch', '--yes'])).name).toBe('scratch')
    await fails(['vdisk', 'show', 'vol-scratch'], 3, 'TESS_E_NOT_FOUND')
    // a CSM deleted with --force takes its containers' attachments with them
    await ok(['csm', 'create', 'spare', '--cpus', '0.2', '--memory', '64M'])
    await ok(['container', 'run', image, '--name', 'onspare', '--csm', 'spare', '--volume', 'data:/data', '--', 'busybox', 'sleep', '1000'])
    expect((await ok(['volume', 'show', 'data']) as VolumeInfo).attachments.map((a) => a.container)).toEqual(['onspare'])
    await ok(['csm', 'delete', 'spare', '--force', '--yes'])
    expect((await ok(['volume', 'show', 'data']) as VolumeInfo).attachments).toEqual([])
    await noLeftovers()
    // one attached when the cluster is destroyed
    await ok(['container', 'run', image, '--name', 'final', '--csm', 'apps', '--volume', 'data:/data', '--', 'busybox', 'sleep', '1000'])
    const r = await c.tess(['cluster', 'destroy', '--yes', '--cluster', c.name], { timeoutMs: 120_000 })
    expect(r.code, r.stderr).toBe(0)
    await noLeftovers()
  })
})
