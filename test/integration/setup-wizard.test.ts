import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { KnownHosts } from '../../src/bootstrap/knownhosts.js'
import { repoRoot, runTess, tessBin } from '../helpers/cluster.js'
import { createTestHosts, type TestHosts } from '../helpers/testhosts.js'

/**
 * `tess setup`, the interactive wizard, driven through a real terminal: a tmux session on its own
 * socket runs the built CLI; the test types answers with `send-keys` and reads the screen with
 * `capture-pane`. Two test hosts are bootstrapped for real (bundle, etcd, CVMs), checked with
 * `cluster status --json`, then destroyed.
 */

const tmuxBin = '/usr/bin/tmux'
const pollMs = 200
const promptTimeoutMs = 20_000
/** pre-flight of two hosts */
const preflightTimeoutMs = 60_000
/** bundle build and install, daemons started, disks registered */
const createTimeoutMs = 120_000

let th: TestHosts | undefined
let tmp: string
let configDir: string
let sock: string
let session = ''
const sessions: string[] = []

const env = (): Record<string, string> => ({ TESS_CONFIG_DIR: configDir })

function tmux(...args: string[]): { code: number, stdout: string, stderr: string } {
  const r = spawnSync(tmuxBin, ['-S', sock, ...args], { encoding: 'utf8', timeout: 10_000 })
  return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' }
}

/** Start `tess setup` in a new detached 200x50 session; the pane stays after it exits, showing EXIT=<code>. */
function startWizard(name: string, cfg: string): void {
  session = `${name}-${process.pid}`
  const cmd = `TESS_CONFIG_DIR='${cfg}' '${process.execPath}' '${tessBin}' setup; echo EXIT=$? ; sleep 600`
  const started = tmux('new-session', '-d', '-s', session, '-x', '200', '-y', '50', cmd)
  expect(started.code, started.stderr).toBe(0)
  sessions.push(session)
}

function endWizard(): void {
  tmux('kill-session', '-t', session)
  expect(tmux('has-session', '-t', session).code).not.toBe(0)
  sessions.splice(sessions.indexOf(session), 1)
}

/** The whole pane, history included, wrapped lines joined. */
function screen(): string {
  const r = tmux('capture-pane', '-p', '-J', '-S', '-', '-t', session)
  if (r.code !== 0) throw new Error(`tmux capture-pane failed: ${r.stderr}`)
  return r.stdout
}

/** Type text literally (no key-name lookup), then optionally Enter. */
function type(text: string, enter = true): void {
  if (text) expect(tmux('send-keys', '-t', session, '-l', text).code).toBe(0)
  if (enter) expect(tmux('send-keys', '-t', session, 'Enter').code).toBe(0)
}

function key(name: string): void {
  expect(tmux('send-keys', '-t', session, name).code).toBe(0)
}

/** Wait until the screen matches `re` (at least `times` times); the screen on success, a dump on timeout. */
async function waitFor(re: RegExp, timeoutMs = promptTimeoutMs, times = 1): Promise<string> {
  const g = new RegExp(re.source, re.flags.includes('g') ? re.flags : re.flags + 'g')
  const deadline = Date.now() + timeoutMs
  let s = ''
  for (;;) {
    s = screen()
    if ((s.match(g)?.length ?? 0) >= times) return s
    if (/EXIT=\d+/.test(s) && !/EXIT=/.test(re.source)) throw new Error(`the wizard exited while waiting for ${re}:\n${s}`)
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${re}; the screen:\n${s}`)
    await new Promise((r) => setTimeout(r, pollMs))
  }
}

const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')

beforeAll(async () => {
  if (!fs.existsSync(path.join(repoRoot, 'dist', 'cli', 'commands', 'setup.js'))) throw new Error('dist/cli/commands/setup.js is missing: run `npm run build` first')
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-setup-'))
  configDir = path.join(tmp, 'config')
  sock = path.join(tmp, 'tmux.sock')
  th = await createTestHosts(2)
})

afterAll(async () => {
  if (sessions.length > 0) {
    for (const s of sessions) tmux('kill-session', '-t', s)
    // the server exits with its last session; make sure of it (our own socket only)
    if (tmux('has-session').code === 0) tmux('kill-server')
  }
  try {
    // a failed run may have left a cluster (on the hosts, or the embedded one here): stop its daemons before the hosts go
    for (const cfg of configDir ? [configDir, path.join(tmp, 'config-solo')] : []) {
      if (!fs.existsSync(path.join(cfg, 'contexts.json'))) continue
      const l = await runTess(['cluster', 'list', '--json'], { TESS_CONFIG_DIR: cfg })
      if (Array.isArray(l.json) && l.json.length > 0) await runTess(['cluster', 'destroy', '--yes'], { TESS_CONFIG_DIR: cfg }, { timeoutMs: 60_000 })
    }
  } finally {
    await th?.destroy()
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true })
  }
}, 120_000)

describe('tess setup', () => {
  it('refuses without a terminal, and with --json, pointing at cluster create', async () => {
    const r = await runTess(['setup'], env())
    expect(r.code).toBe(2)
    expect(r.stderr).toContain('[TESS_E_USAGE]')
    expect(r.stderr).toContain('needs a terminal')
    expect(r.stderr).toContain('tess cluster create --hosts')
    expect(r.stdout).toBe('')

    const j = await runTess(['setup', '--json'], env())
    expect(j.code).toBe(2)
    expect(j.json?.error?.code).toBe('TESS_E_USAGE')
    expect(j.json.error.hint).toContain('tess cluster create --hosts')
    expect(j.json.error.hint).toContain('--json')
  })

  it('creates a 2-node cluster from answers typed into a real terminal', async () => {
    const [h1, h2] = th!.hosts
    const name = 'wizard'
    const fingerprint = (address: string): string => {
      const k = KnownHosts.load(th!.knownHostsFile).knownKeys(address, 22)[0]
      if (!k) throw new Error(`the harness's known_hosts has no key for ${address}`)
      return k.fingerprint
    }

    startWizard('tess-setup', configDir)

    // cluster name: a bad one first, then a good one
    await waitFor(/\? Cluster name/)
    type('Bad_Name!')
    await waitFor(/invalid cluster name "Bad_Name!"/)
    key('C-u')
    type(name)
    // where: hosts over SSH (the first choice)
    await waitFor(/\? Where does the cluster run\?/)
    type('')

    await waitFor(/\? SSH user on the hosts/)
    type('root')

    // the key: a path that does not exist, then the harness key
    await waitFor(/\? SSH private key file/)
    const missing = path.join(tmp, 'no-such-key')
    type(missing)
    await waitFor(new RegExp(`${esc(missing)} does not exist`))
    key('C-u')
    type(th!.keyFile)

    // no known_hosts file: every new host key is shown and confirmed
    await waitFor(/\? known_hosts file \(empty: ask for each new host key\)/)
    type('')

    await waitFor(/\? Hosts \(addresses or names, comma-separated\)/)
    type(`${h1!.address},${h2!.address}`)
    for (const h of [h1!, h2!]) {
      const s = await waitFor(new RegExp(`\\? ${esc(h.address)} is a new host: its ssh-ed25519 key fingerprint is (SHA256:\\S+)\\. Trust it`))
      expect(s).toContain(fingerprint(h.address))
      type('y')
      await waitFor(new RegExp(`✔ ${esc(h.address)}: logged in as root; host name ${esc(h.name)}`))
    }

    await waitFor(/\? Disk directories on every host/)
    type('')
    await waitFor(/\? Replication factor.*\(1-2\)/)
    type('2')
    await waitFor(/\? Install missing packages/)
    type('n')

    // the pre-flight through createRemoteCluster's dry run, then the plan
    const plan = await waitFor(/\? Create the cluster\?/, preflightTimeoutMs)
    expect(plan).toContain('Pre-flight checks passed on 2 host(s)')
    expect(plan).toContain(`Plan for cluster "${name}" (nothing has been changed yet):`)
    expect(plan).toMatch(new RegExp(`${esc(h1!.address)}: node ${esc(h1!.name)}, etcd member, disks /var/lib/tess/disks/d0`))
    expect(plan).toMatch(new RegExp(`${esc(h2!.address)}: node ${esc(h2!.name)}, disks /var/lib/tess/disks/d0`))
    expect(plan).toContain('RF 2;')
    expect(plan).toContain(`tess cluster create --name ${name} --hosts ${h1!.address},${h2!.address} --ssh-user root --ssh-key ${th!.keyFile}`)
    // nothing is set up before the answer: no context yet
    expect((await runTess(['cluster', 'list', '--json'], env())).json).toEqual([])
    type('y')

    const done = await waitFor(/EXIT=\d+/, createTimeoutMs)
    expect(done, done).toContain('EXIT=0')
    expect(done).toContain(`Cluster "${name}" is running and is now the current context.`)

    // accepted host keys are pinned in tess's known_hosts
    const tessKnown = KnownHosts.load(path.join(configDir, 'known_hosts'))
    for (const h of [h1!, h2!]) expect(tessKnown.knownKeys(h.address, 22).map((k) => k.fingerprint)).toEqual([fingerprint(h.address)])

    const st = await runTess(['cluster', 'status', '--json'], env())
    expect(st.code, st.stderr).toBe(0)
    expect(st.json.name).toBe(name)
    expect(st.json.nodes).toHaveLength(2)
    expect(st.json.nodes.map((n: { address: string }) => n.address).sort()).toEqual([h1!.address, h2!.address].sort())
    for (const n of st.json.nodes) {
      expect(n.state).toBe('up')
      expect(n.daemons.find((d: { name: string }) => d.name === 'cvm')?.healthy).toBe(true)
    }

    const d = await runTess(['cluster', 'destroy', '--yes'], env(), { timeoutMs: 60_000 })
    expect(d.code, d.stderr).toBe(0)
    expect((await runTess(['cluster', 'list', '--json'], env())).json).toEqual([])

    endWizard()
  }, 170_000)

  it('Ctrl-C at the host key question cancels cleanly: exit 2, nothing changed, no key recorded', async () => {
    const [h1] = th!.hosts
    const cfg = path.join(tmp, 'config-cancel')
    startWizard('tess-setup-cancel', cfg)
    await waitFor(/\? Cluster name/)
    type('cancelled')
    await waitFor(/\? Where does the cluster run\?/)
    type('')
    await waitFor(/\? SSH user on the hosts/)
    type('root')
    await waitFor(/\? SSH private key file/)
    type(th!.keyFile)
    await waitFor(/\? known_hosts file/)
    type('')
    await waitFor(/\? Hosts/)
    type(h1!.address)
    await waitFor(new RegExp(`\\? ${esc(h1!.address)} is a new host`))
    key('C-c')
    const s = await waitFor(/EXIT=\d+/)
    expect(s).toContain('EXIT=2')
    expect(s).toContain('setup cancelled at the prompt [TESS_E_USAGE]')
    expect(s).toContain('Hint: nothing was changed')
    expect(fs.existsSync(path.join(cfg, 'known_hosts')) ? fs.readFileSync(path.join(cfg, 'known_hosts'), 'utf8').trim() : '').toBe('')
    expect(fs.existsSync(path.join(cfg, 'clusters', 'cancelled'))).toBe(false)
    expect((await runTess(['cluster', 'list', '--json'], { TESS_CONFIG_DIR: cfg })).json).toEqual([])
    endWizard()
  })

  it('creates the embedded cluster on this machine: a data directory that holds something is refused with the reason, then the plan, then the cluster', async () => {
    const name = 'solo'
    const cfg = path.join(tmp, 'config-solo')
    const busy = path.join(tmp, 'busy')
    fs.mkdirSync(busy, { recursive: true })
    fs.writeFileSync(path.join(busy, 'something'), 'x')
    const dataDir = path.join(tmp, 'solo-data')
    startWizard('tess-setup-solo', cfg)
    await waitFor(/\? Cluster name/)
    type(name)
    await waitFor(/\? Where does the cluster run\?/)
    key('Down')
    type('')
    await waitFor(/\? Data directory/)
    type(busy)
    await waitFor(new RegExp(`data dir ${esc(busy)} exists and is not empty`), preflightTimeoutMs)
    await waitFor(/\? What now\?/)
    type('')
    await waitFor(new RegExp(`\\? Data directory.*\\(${esc(busy)}\\)`)) // asked again, the last answer as its default
    key('C-u')
    type(dataDir)
    const plan = await waitFor(/\? Create the cluster\?/, preflightTimeoutMs)
    expect(plan).toContain(`Plan for cluster "${name}" on this machine (nothing has been changed yet):`)
    expect(plan).toContain(`its first disk ${dataDir}/disks/d0`)
    expect(plan).toContain(`tess cluster create --local --name ${name} --data-dir ${dataDir}`)
    expect((await runTess(['cluster', 'list', '--json'], { TESS_CONFIG_DIR: cfg })).json).toEqual([])
    expect(fs.existsSync(dataDir)).toBe(false)
    type('y')
    const done = await waitFor(/EXIT=\d+/, createTimeoutMs)
    expect(done, done).toContain('EXIT=0')
    expect(done).toContain(`Cluster "${name}" is running and is now the current context.`)
    expect(done).toMatch(new RegExp(`data dir:\\s+${esc(dataDir)}`))
    const st = await runTess(['cluster', 'status', '--json'], { TESS_CONFIG_DIR: cfg })
    expect(st.code, st.stderr).toBe(0)
    expect(st.json).toMatchObject({ name, nodes: [{ state: 'up' }] })
    const d = await runTess(['cluster', 'destroy', '--yes'], { TESS_CONFIG_DIR: cfg }, { timeoutMs: 60_000 })
    expect(d.code, d.stderr).toBe(0)
    endWizard()
  }, 170_000)
})
