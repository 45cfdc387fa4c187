import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { TestHosts, TestHostsInfo, createTestHosts, destroyTestHosts, uniquePrefix } from '../helpers/testhosts.js'

// test lane: local
// (bare test hosts, no cluster: it runs beside the files of the other lane; see scripts/test.sh)

/**
 * The test-host harness itself (scripts/testhosts.sh through test/helpers/testhosts.ts): three hosts
 * with their own network, mount and UTS namespaces and sshd; node loss; complete teardown.
 */

const upBudgetMs = 10_000

function sh(cmd: string, args: string[]): { code: number, stdout: string, stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 30_000 })
  return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' }
}

/** Live (not zombie) process? */
function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
    return state !== 'Z' && state !== 'X'
  } catch {
    return false
  }
}

function nsInode(pid: number, kind: 'net' | 'mnt' | 'uts'): number | undefined {
  try {
    return fs.statSync(`/proc/${pid}/ns/${kind}`).ino
  } catch {
    return undefined
  }
}

/** Pids of live processes in any of the given namespaces (by nsfs inode). */
function processesIn(inodes: Set<number>): number[] {
  const found: number[] = []
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue
    const pid = Number(e)
    for (const kind of ['net', 'mnt', 'uts'] as const) {
      const ino = nsInode(pid, kind)
      if (ino !== undefined && inodes.has(ino) && alive(pid)) {
        found.push(pid)
        break
      }
    }
  }
  return found
}

/** Mounts anywhere on the machine (every process's mountinfo) that pin one of these namespaces. */
function nsfsMountsOf(inodes: Set<number>): string[] {
  const hits = new Set<string>()
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue
    let text: string
    try {
      text = fs.readFileSync(`/proc/${e}/mountinfo`, 'utf8')
    } catch {
      continue
    }
    for (const line of text.split('\n')) {
      const m = /(?:net|mnt|uts):\[(\d+)\]/.exec(line)
      if (m && inodes.has(Number(m[1]))) hits.add(line)
    }
  }
  return [...hits]
}

describe('test hosts (scripts/testhosts.sh)', () => {
  const prefix = uniquePrefix()
  let th: TestHosts
  let upMs = 0

  beforeAll(async () => {
    const t0 = Date.now()
    th = await createTestHosts(3, { prefix })
    upMs = Date.now() - t0
  })

  afterAll(async () => {
    // also when createTestHosts or a test failed half-way: down is idempotent
    await destroyTestHosts(prefix)
  })

  it(`creates 3 hosts on one private /24 in under ${upBudgetMs} ms`, () => {
    expect(th.hosts.map((h) => h.name)).toEqual([`${prefix}1`, `${prefix}2`, `${prefix}3`])
    const base = th.subnet.replace(/\.0\/24$/, '')
    expect(th.subnet).toMatch(/^\d+\.\d+\.\d+\.0\/24$/)
    expect(th.hosts.map((h) => h.address)).toEqual([`${base}.11`, `${base}.12`, `${base}.13`])
    expect(th.bridgeAddress).toBe(`${base}.1`)
    expect(th.hosts.every((h) => h.sshPort === 22)).toBe(true)
    expect(fs.statSync(th.keyFile).mode & 0o777).toBe(0o600)
    expect(upMs).toBeLessThan(upBudgetMs)
  })

  it('each host\'s sshd answers with its pinned host key, root by key only, inside the host', async () => {
    for (const h of th.hosts) {
      const r = sh('ssh', ['-F', '/dev/null', '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=yes',
        '-o', `UserKnownHostsFile=${th.knownHostsFile}`, '-o', 'GlobalKnownHostsFile=/dev/null', '-o', 'IdentitiesOnly=yes',
        '-i', th.keyFile, '-p', String(h.sshPort), `root@${h.address}`, 'id -u; hostname; ip -4 -o addr show dev eth0'])
      expect(r.stderr).toBe('')
      expect(r.code).toBe(0)
      const [uid, hostname, addr] = r.stdout.trim().split('\n')
      expect(uid).toBe('0')
      expect(hostname).toBe(h.name)
      expect(addr).toContain(`inet ${h.address}/24`)
    }
    // the pin is real: host 1's key presented as host 2's is refused
    const lines = fs.readFileSync(th.knownHostsFile, 'utf8').trim().split('\n')
    const key1 = lines.find((l) => l.startsWith(`${th.hosts[0]!.name},`))!.split(' ').slice(1).join(' ')
    const wrong = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tess-kh-')), 'known_hosts')
    fs.writeFileSync(wrong, `${th.hosts[1]!.name},${th.hosts[1]!.address} ${key1}\n`)
    const bad = sh('ssh', ['-F', '/dev/null', '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=yes',
      '-o', `UserKnownHostsFile=${wrong}`, '-o', 'GlobalKnownHostsFile=/dev/null', '-i', th.keyFile, `root@${th.hosts[1]!.address}`, 'true'])
    fs.rmSync(path.dirname(wrong), { recursive: true, force: true })
    expect(bad.code).toBe(255)
    expect(bad.stderr).toMatch(/host key/i)
    // and no password login: without the key, sshd offers only publickey
    const nokey = sh('ssh', ['-F', '/dev/null', '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=yes',
      '-o', `UserKnownHostsFile=${th.knownHostsFile}`, '-o', 'IdentitiesOnly=yes', '-o', 'IdentityFile=/dev/null',
      `root@${th.hosts[0]!.address}`, 'true'])
    expect(nokey.code).toBe(255)
    expect(nokey.stderr).toContain('Permission denied (publickey)')
  })

  it('hosts reach each other by name and address, and the machine at the bridge address, nothing else', async () => {
    const [h1, h2, h3] = th.hosts as [typeof th.hosts[0], typeof th.hosts[0], typeof th.hosts[0]]
    const sshOpts = ['-F', '/dev/null', '-i', th.keyFile, '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=yes',
      '-o', `UserKnownHostsFile=${th.knownHostsFile}`, '-o', 'ConnectTimeout=5']
    const byName = await th.exec(h1, ['ssh', ...sshOpts, `root@${h2.name}`, 'hostname'])
    expect(byName.stderr).toBe('')
    expect(byName.stdout.trim()).toBe(h2.name)
    const byAddress = await th.exec(h2, ['ssh', ...sshOpts, `root@${h3.address}`, 'hostname'])
    expect(byAddress.stdout.trim()).toBe(h3.name)
    // the machine is reachable at the bridge address (bind services for the hosts there, not to 127.0.0.1)
    const server = net.createServer((c) => c.end('hello from the machine\n'))
    await new Promise<void>((resolve) => server.listen(0, th.bridgeAddress, resolve))
    try {
      const port = (server.address() as net.AddressInfo).port
      const r = await th.exec(h3, ['timeout', '5', 'bash', '-c', `exec 3<>/dev/tcp/${th.bridgeAddress}/${port}; cat <&3`])
      expect(r.stdout).toBe('hello from the machine\n')
    } finally {
      server.close()
    }
    const routes = await th.exec(h1, ['ip', '-4', 'route'])
    expect(routes.code).toBe(0)
    expect(routes.stdout).not.toContain('default')
    const out = await th.exec(h1, ['ip', 'route', 'get', '192.0.2.200'])
    expect(out.code).not.toBe(0)
    expect(out.stderr).toMatch(/unreachable/i)
  })

  it('/var/lib/tess, /etc/tess and /run are each host\'s own', async () => {
    const [h1, h2] = th.hosts as [typeof th.hosts[0], typeof th.hosts[0]]
    for (const dir of ['/var/lib/tess', '/etc/tess', '/run']) {
      const file = `${dir}/testhosts-probe-${prefix}`
      const w = await th.exec(h1, ['sh', '-c', `echo written-in-${h1.name} > ${file} && cat ${file}`])
      expect(w.code).toBe(0)
      expect(w.stdout.trim()).toBe(`written-in-${h1.name}`)
      // sshd sessions live in the host's mount namespace too
      const viaSsh = await th.ssh(h1, `cat ${file}`)
      expect(viaSsh.stdout.trim()).toBe(`written-in-${h1.name}`)
      const other = await th.exec(h2, ['test', '-e', file])
      expect(other.code).toBe(1)
      expect(fs.existsSync(file)).toBe(false)
    }
  })

  it('kill(host 2) kills every process started in it and takes its link down', async () => {
    const [h1, h2, h3] = th.hosts as [typeof th.hosts[0], typeof th.hosts[0], typeof th.hosts[0]]
    // a daemon started through exec (detached from us), and one through an ssh session
    const a = await th.exec(h2, ['sh', '-c', 'setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!'])
    const daemonPid = Number(a.stdout.trim())
    const b = await th.ssh(h2, 'nohup sleep 1001 </dev/null >/dev/null 2>&1 & echo $!')
    const sshChildPid = Number(b.stdout.trim())
    expect(daemonPid).toBeGreaterThan(1)
    expect(sshChildPid).toBeGreaterThan(1)
    expect(alive(daemonPid) && alive(sshChildPid)).toBe(true)
    const before = await th.pids(h2)
    expect(before).toEqual(expect.arrayContaining([daemonPid, sshChildPid]))
    const sshdPid = (await th.info()).hosts[1]!.sshdPid
    expect(before).toContain(sshdPid)
    expect((await th.ssh(h1, `ssh -F /dev/null -i ${th.keyFile} -o BatchMode=yes -o UserKnownHostsFile=${th.knownHostsFile} root@${h2.name} true`)).code).toBe(0)

    await th.kill(h2)

    expect(alive(daemonPid)).toBe(false)
    expect(alive(sshChildPid)).toBe(false)
    expect(alive(sshdPid!)).toBe(false)
    expect(await th.pids(h2)).toEqual([])
    expect(sh('ip', ['-o', 'link', 'show', h2.link]).stdout).toMatch(/state DOWN/)
    const info = await th.info()
    expect(info.hosts[1]).toMatchObject({ linkState: 'down', sshdPid: null })
    // host 1 can no longer reach host 2 (TCP to its sshd times out) but still reaches host 3
    const tcp = await th.exec(h1, ['timeout', '3', 'bash', '-c', `exec 3<>/dev/tcp/${h2.address}/22`])
    expect(tcp.code).not.toBe(0)
    const toHost3 = await th.exec(h1, ['ssh', '-F', '/dev/null', '-i', th.keyFile, '-o', 'BatchMode=yes',
      '-o', `UserKnownHostsFile=${th.knownHostsFile}`, `root@${h3.name}`, 'hostname'])
    expect(toHost3.stdout.trim()).toBe(h3.name)

    // revive: link up, sshd back, the host's own files kept
    await th.revive(h2)
    const back = await th.ssh(h2, 'hostname')
    expect(back.stdout.trim()).toBe(h2.name)
  })

  it('destroy leaves no process, namespace, link, mount or state dir behind, and is idempotent', async () => {
    const info: TestHostsInfo = await th.info()
    const recorded = info.hosts.flatMap((h) => [h.holderPid, h.sshdPid]).filter((p): p is number => p !== null)
    expect(recorded).toHaveLength(6)
    // a stray daemon in host 3 must go too
    const stray = Number((await th.exec(th.hosts[2]!, ['sh', '-c', 'setsid sleep 1002 </dev/null >/dev/null 2>&1 & echo $!'])).stdout.trim())
    expect(alive(stray)).toBe(true)
    const inodes = new Set<number>()
    for (const h of info.hosts) {
      for (const kind of ['net', 'mnt', 'uts'] as const) {
        const ino = nsInode(h.holderPid!, kind)
        expect(ino).toBeDefined()
        inodes.add(ino!)
      }
    }
    expect(processesIn(inodes).length).toBeGreaterThanOrEqual(7)

    await th.destroy()

    expect(sh('ip', ['netns', 'list']).stdout).not.toContain(`tess-${prefix}`)
    const links = sh('ip', ['-o', 'link']).stdout
    expect(links).not.toContain(`tv-${prefix}`)
    expect(links).not.toContain(`tessbr-${prefix}`)
    const mounts = fs.readFileSync('/proc/mounts', 'utf8')
    expect(mounts).not.toContain(info.stateDir)
    expect(mounts).not.toContain(`tess-${prefix}`)
    for (const pid of [...recorded, stray]) expect(alive(pid), `pid ${pid}`).toBe(false)
    expect(processesIn(inodes)).toEqual([])
    expect(nsfsMountsOf(inodes)).toEqual([])
    expect(fs.existsSync(info.stateDir)).toBe(false)
    expect(sh('ip', ['-4', 'route']).stdout).not.toContain(info.subnet)

    await th.destroy()
  })
})
