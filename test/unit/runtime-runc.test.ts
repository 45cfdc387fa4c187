import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { TessError } from '../../src/lib/errors.js'
import { CgroupHost } from '../../src/csm/runtime/cgroups.js'
import { tailOffset } from '../../src/csm/runtime/containers.js'
import {
  OciRuntime, crunCgroupProblem, isProcessAlive, normaliseSignal, parseProcStat, readExitStatus, runtimeErrors, shimScript,
} from '../../src/csm/runtime/runc.js'
import { builtLogger, parseStamps } from '../../src/csm/runtime/logindex.js'

let dir: string
beforeAll(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-runc-unit-')) })
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

/** Wait (generously) for a file the child writes; not a timing assertion. */
async function waitForFile(file: string): Promise<void> {
  for (let i = 0; i < 500 && !fs.existsSync(file); i++) await new Promise((r) => setTimeout(r, 20))
}

describe('signals and process facts', () => {
  it('normalises signal names and numbers', () => {
    expect(normaliseSignal('TERM')).toBe('SIGTERM')
    expect(normaliseSignal('sigkill')).toBe('SIGKILL')
    expect(normaliseSignal(9)).toBe('SIGKILL')
    expect(normaliseSignal('15')).toBe('SIGTERM')
    expect(() => normaliseSignal('SIGNOPE')).toThrow(TessError)
    expect(() => normaliseSignal(999)).toThrow(TessError)
  })

  it('parses /proc/<pid>/stat, including a command with spaces and parentheses', () => {
    const stat = '4242 (tess (shim) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 254711 2445312 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n'
    expect(parseProcStat(stat)).toEqual({ state: 'S', startTime: '254711' })
    expect(parseProcStat('garbage')).toBeUndefined()
  })

  it('knows a live process from a dead one and a recycled pid', async () => {
    expect(await isProcessAlive(process.pid)).toBe(true)
    const own = parseProcStat(fs.readFileSync(`/proc/${process.pid}/stat`, 'utf8'))!
    expect(await isProcessAlive(process.pid, own.startTime)).toBe(true)
    expect(await isProcessAlive(process.pid, '1')).toBe(false)
    expect(await isProcessAlive(2 ** 22 + 1)).toBe(false)
  })
})

describe('crun on cgroup v1 hybrid', () => {
  it('names the controllers crun would refuse', () => {
    expect(crunCgroupProblem('hybrid', ['hugetlb'])).toMatch(/hybrid mode .* hugetlb/)
    expect(crunCgroupProblem('hybrid', [])).toBeUndefined()
    expect(crunCgroupProblem('v1', ['hugetlb'])).toBeUndefined()
    expect(crunCgroupProblem('v2', ['cpu', 'memory'])).toBeUndefined()
  })

  it('check() refuses crun with a clear error and the mount command as the hint', async () => {
    // a fake hybrid host whose cgroup2 hierarchy offers hugetlb, and a fake crun that only prints a version
    const unified = path.join(dir, 'unified')
    fs.mkdirSync(unified, { recursive: true })
    fs.writeFileSync(path.join(unified, 'cgroup.controllers'), 'hugetlb\n')
    const fakeCrun = path.join(dir, 'fake-crun')
    fs.writeFileSync(fakeCrun, '#!/bin/sh\necho "crun version 1.8.1"\n', { mode: 0o755 })
    const host = new CgroupHost({ mode: 'hybrid', v1: { cpu: '/sys/fs/cgroup/cpu', memory: '/sys/fs/cgroup/memory' }, unified })
    const rt = new OciRuntime({ name: 'crun', bin: fakeCrun, root: path.join(dir, 'crun-root'), cgroups: host })
    const e = await rt.check().catch((x: unknown) => x) as TessError
    expect(e).toBeInstanceOf(TessError)
    expect(e.code).toBe('TESS_E_PRECONDITION')
    expect(e.message).toBe('cannot use crun on this host: crun refuses cgroup v1 hybrid mode while controllers are available on the cgroup2 hierarchy: hugetlb')
    expect(e.hint).toContain('mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb')
    // runc is not affected, and a runtime that is not installed is named
    const runcLike = new OciRuntime({ name: 'runc', bin: fakeCrun, root: path.join(dir, 'runc-root'), cgroups: host })
    expect(await runcLike.check()).toBe('crun version 1.8.1')
    const absent = new OciRuntime({ name: 'runc', bin: path.join(dir, 'no-such-runc'), root: path.join(dir, 'x') })
    await expect(absent.check()).rejects.toMatchObject({ code: 'TESS_E_PRECONDITION' })
  })
})

describe('delete', () => {
  it('runs the runtime only for a container it has state for (ROOT/ID), and then always', async () => {
    // a fake runtime that logs every call
    const calls = path.join(dir, 'delete-calls')
    const fake = path.join(dir, 'fake-runc-delete')
    fs.writeFileSync(fake, `#!/bin/sh\necho "$*" >> ${calls}\nexit 0\n`, { mode: 0o755 })
    const root = path.join(dir, 'delete-root')
    const rt = new OciRuntime({ name: 'runc', bin: fake, root })
    await rt.delete('0123456789ab', { force: true })
    expect(fs.existsSync(calls)).toBe(false)
    fs.mkdirSync(path.join(root, '0123456789ab'), { recursive: true })
    await rt.delete('0123456789ab', { force: true })
    expect(fs.readFileSync(calls, 'utf8')).toBe(`--root ${root} delete --force 0123456789ab\n`)
  })
})

describe('the shim', () => {
  it('records the exit status of what it runs, atomically', async () => {
    const exit = path.join(dir, 'exit-a')
    const child = spawn('/bin/sh', ['-c', shimScript, 'tess-shim', exit, '/bin/sh', '-c', 'echo out; echo err >&2; exit 42'], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    child.stdout.on('data', (d: Buffer) => { out += d.toString() })
    await new Promise((r) => child.on('close', r))
    expect(out).toBe('out\n')
    expect(fs.readFileSync(exit, 'utf8')).toBe('42\n')
    expect(fs.existsSync(`${exit}.tmp`)).toBe(false)
    const st = await readExitStatus(exit)
    expect(st?.status).toBe(42)
    expect(st?.at).toBeInstanceOf(Date)
    expect(await readExitStatus(path.join(dir, 'absent'))).toBeUndefined()
    fs.writeFileSync(path.join(dir, 'garbled'), 'x\n')
    expect(await readExitStatus(path.join(dir, 'garbled'))).toBeUndefined()
  })

  it('runDetached: the runtime runs in its own session with stdio on the log file and its status is recorded', async () => {
    // a fake runtime: writes the pid file it is given, prints, exits 5 (as runc does with the container's status)
    const fake = path.join(dir, 'fake-runc')
    fs.writeFileSync(fake, '#!/bin/sh\nif [ "$1" = --version ]; then echo "runc version 0"; exit 0; fi\nwhile [ $# -gt 0 ]; do if [ "$1" = --pid-file ]; then echo $$ > "$2"; fi; shift; done\necho "container output"; echo "container error" >&2; exit 5\n', { mode: 0o755 })
    // without tess-logger the runtime writes the log itself; with it, through a pipe, with the index
    for (const logger of [undefined, builtLogger()]) {
      const cdir = path.join(dir, logger === undefined ? 'ctr' : 'ctr-logged')
      fs.mkdirSync(cdir)
      const files = { dir: cdir, log: path.join(cdir, 'container.log'), exit: path.join(cdir, 'exit'), pid: path.join(cdir, 'pid'), runtimeLog: path.join(cdir, 'runtime.log'), logIndex: path.join(cdir, 'container.log.idx') }
      const rt = new OciRuntime({ name: 'runc', bin: fake, root: path.join(dir, 'rt-root'), ...(logger !== undefined ? { logger } : {}) })
      const shim = await rt.runDetached('0123456789ab', path.join(cdir, 'bundle'), files)
      expect(shim.pid).toBeGreaterThan(0)
      await waitForFile(files.exit)
      expect((await readExitStatus(files.exit))?.status).toBe(5)
      // the shim ends once the log is written
      for (let i = 0; i < 200 && await isProcessAlive(shim.pid); i++) await new Promise((r) => setTimeout(r, 20))
      expect(fs.readFileSync(files.log, 'utf8')).toBe('container output\ncontainer error\n')
      expect(Number(fs.readFileSync(files.pid, 'utf8'))).toBeGreaterThan(0)
      if (logger === undefined) expect(fs.existsSync(files.logIndex)).toBe(false)
      else expect(parseStamps(fs.readFileSync(files.logIndex))[0]?.offset).toBe(0)
    }
    expect(builtLogger(), 'npm ci builds tess-logger').toBeDefined()
  })

  it('reads the error lines of a runtime log', async () => {
    const f = path.join(dir, 'runtime.log')
    fs.writeFileSync(f, '{"level":"info","msg":"starting"}\n{"level":"error","msg":"runc run failed: exec: \\"nope\\": executable file not found in $PATH","time":"x"}\nplain text line\n')
    expect(await runtimeErrors(f)).toEqual(['plain text line', 'runc run failed: exec: "nope": executable file not found in $PATH'])
    expect(await runtimeErrors(path.join(dir, 'none.log'))).toEqual([])
  })
})

describe('log tail', () => {
  it('finds the start of the last N lines', async () => {
    const f = path.join(dir, 'log')
    fs.writeFileSync(f, 'one\ntwo\nthree\n')
    expect(await tailOffset(f, 1)).toBe('one\ntwo\n'.length)
    expect(await tailOffset(f, 2)).toBe('one\n'.length)
    expect(await tailOffset(f, 3)).toBe(0)
    expect(await tailOffset(f, 10)).toBe(0)
    expect(await tailOffset(f, 0)).toBe(fs.statSync(f).size)
    fs.writeFileSync(f, 'one\ntwo\npartial')
    expect(await tailOffset(f, 1)).toBe('one\ntwo\n'.length)
    expect(await tailOffset(f, 2)).toBe('one\n'.length)
    // longer than one read chunk
    const big = Array.from({ length: 20_000 }, (_, i) => `line ${i}`).join('\n') + '\n'
    fs.writeFileSync(f, big)
    const off = await tailOffset(f, 3)
    expect(fs.readFileSync(f, 'utf8').slice(off)).toBe('line 19997\nline 19998\nline 19999\n')
    expect(await tailOffset(path.join(dir, 'missing'), 5)).toBe(0)
  })
})
