import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { isNodeProcess, removeStalePidfiles, runningSupervisor } from '../../src/supervisor/running.js'
import { nodeUnit } from '../../src/supervisor/services.js'

describe('which processes belong to a node, stale pidfiles', () => {
  const children: ChildProcess[] = []
  const dirs: string[] = []
  afterEach(() => {
    for (const c of children.splice(0)) c.kill('SIGKILL')
    for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true })
  })

  const dataDir = () => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-boot-'))
    dirs.push(d)
    fs.mkdirSync(path.join(d, 'run'))
    return d
  }
  /** a process whose command line names `dir` (as a daemon's --data-dir does) */
  const daemonOf = (dir: string) => {
    const c = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)', '--', '--data-dir', dir], { stdio: 'ignore' })
    children.push(c)
    return c.pid!
  }
  const deadPid = () => {
    const c = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' })
    return new Promise<number>((resolve) => c.on('exit', () => resolve(c.pid!)))
  }

  it('a live process naming the data dir is the node\'s; one naming another dir, or a dead pid, is not', async () => {
    const d = dataDir()
    const other = dataDir()
    expect(isNodeProcess(daemonOf(d), d)).toBe(true)
    expect(isNodeProcess(daemonOf(other), d)).toBe(false)
    expect(isNodeProcess(daemonOf(`${d}-sibling`), d)).toBe(false)
    expect(isNodeProcess(await deadPid(), d)).toBe(false)
    // this process (vitest) does not name the dir
    expect(isNodeProcess(process.pid, d)).toBe(false)
  })

  it('runningSupervisor reads the pidfile and checks the process', async () => {
    const d = dataDir()
    const pidFile = path.join(d, 'run', 'supervisor.pid')
    expect(runningSupervisor(d)).toBeUndefined()
    fs.writeFileSync(pidFile, 'garbage\n')
    expect(runningSupervisor(d)).toBeUndefined()
    fs.writeFileSync(pidFile, `${await deadPid()}\n`)
    expect(runningSupervisor(d)).toBeUndefined()
    const live = daemonOf(d)
    fs.writeFileSync(pidFile, `${live}\n`)
    expect(runningSupervisor(d)).toBe(live)
  })

  it('removes the pidfiles of gone or foreign processes and keeps the live ones', async () => {
    const d = dataDir()
    const live = daemonOf(d)
    fs.writeFileSync(path.join(d, 'run', 'cvm.pid'), `${live}\n`)
    fs.writeFileSync(path.join(d, 'run', 'etcd.pid'), `${await deadPid()}\n`)
    fs.writeFileSync(path.join(d, 'run', 'supervisor.pid'), `${daemonOf(dataDir())}\n`)
    fs.writeFileSync(path.join(d, 'run', 'csm-a.pid'), '\n')
    fs.writeFileSync(path.join(d, 'run', 'supervisor.json'), '{}\n')
    expect(removeStalePidfiles(d).sort()).toEqual(['csm-a.pid', 'etcd.pid', 'supervisor.pid'])
    expect(fs.readdirSync(path.join(d, 'run')).sort()).toEqual(['cvm.pid', 'supervisor.json'])
    expect(removeStalePidfiles(path.join(d, 'missing'))).toEqual([])
  })

  it('the systemd unit runs the bundle\'s supervisor in the foreground, after the network, restarted on failure, at boot', () => {
    const u = nodeUnit('/usr/bin/node', '/var/lib/tess')
    expect(u).toContain('ExecStart=/usr/bin/node /var/lib/tess/bundle/current/dist/supervisor/supervisor.js --data-dir /var/lib/tess\n')
    expect(u).toMatch(/^After=network-online\.target local-fs\.target$/m)
    expect(u).toMatch(/^RequiresMountsFor=\/var\/lib\/tess$/m)
    expect(u).toMatch(/^Restart=on-failure$/m)
    expect(u).toMatch(/^KillMode=process$/m)
    expect(u).toMatch(/^StandardOutput=append:\/var\/lib\/tess\/logs\/supervisor\.log$/m)
    expect(u).toMatch(/\[Install\]\nWantedBy=multi-user\.target\n$/)
  })
})
