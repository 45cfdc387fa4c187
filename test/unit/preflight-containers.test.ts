import { spawnSync } from 'node:child_process'
import { describe, expect, it } from 'vitest'
import { checkContainers, parseContainerProbe } from '../../src/bootstrap/preflight.js'
import type { RemoteExec } from '../../src/bootstrap/ssh.js'

/** A "host" that is this machine, optionally in a mount namespace without cgroups (as a host without them). */
function localHost(withoutCgroups: boolean): RemoteExec {
  return {
    host: withoutCgroups ? 'no-cgroups' : 'local',
    exec: async (cmd) => {
      const script = `${withoutCgroups ? 'umount -R /sys/fs/cgroup 2>/dev/null; ' : ''}${String(cmd)}`
      const r = spawnSync('unshare', ['-m', 'sh', '-c', script], { encoding: 'utf8', timeout: 30_000 })
      return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr, signal: null } as never
    },
  }
}

describe('pre-flight: what containers need', () => {
  it('parses the probe', () => {
    expect([...parseContainerProbe('cgroup yes\nruntime no\ngarbage\nfuse maybe\n')]).toEqual([['cgroup', true], ['runtime', false]])
  })

  it('is ok on this machine', async () => {
    const r = await checkContainers(localHost(false), { clusterName: 'x', ports: [], disks: [], installDeps: false })
    expect(r.map((c) => c.level)).toEqual(['ok'])
  })

  it('warns for a storage-only node without cgroups, and fails when containers were asked for', async () => {
    const warn = await checkContainers(localHost(true), { clusterName: 'x', ports: [], disks: [], installDeps: false })
    expect(warn).toHaveLength(1)
    expect(warn[0]).toMatchObject({ check: 'containers', subject: 'cgroup', level: 'warn', ok: true })
    expect(warn[0]!.message).toMatch(/no cgroup .*serves storage/)
    expect(warn[0]!.hint).toMatch(/cgroup2/)
    const fail = await checkContainers(localHost(true), { clusterName: 'x', ports: [], disks: [], installDeps: false, containers: 'fail' })
    expect(fail[0]).toMatchObject({ level: 'fail', ok: false })
  })
})
