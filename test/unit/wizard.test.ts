import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { PreflightCheck, PreflightResult } from '../../src/bootstrap/preflight.js'
import type { RemotePlan } from '../../src/bootstrap/remote.js'
import {
  equivalentLocalCommand, formatLocalPlan, validateDataDir,
  checkHost, equivalentCreateCommand, expandPath, formatPlan, hostCheckHint, missingPackagesOnly, parseDisks, parseHosts, rfBounds,
  validateClusterName, validateKnownHostsFile, validatePrivateKeyFile, validateRf, validateSshUser, wizardHostsMax, type WizardAnswers,
} from '../../src/cli/wizard.js'

/** The pure helpers of `tess setup`: answer validation, list parsing, plan text, equivalent command. */

let tmp: string
let keyFile: string

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-wizard-'))
  keyFile = path.join(tmp, 'id_ed25519')
  const r = spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', keyFile], { encoding: 'utf8' })
  expect(r.status, r.stderr).toBe(0)
})

afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true })
})

const answers = (over: Partial<WizardAnswers> = {}): WizardAnswers => ({
  name: 'prod', sshUser: 'root', sshKey: '/root/.ssh/id_ed25519', sshPort: 22, knownHostsFile: '',
  hosts: ['10.0.0.11', '10.0.0.12'], disks: ['/var/lib/tess/disks/d0'], rf: 2, installDeps: false, ...over,
})

describe('cluster name', () => {
  it('accepts a valid free name and trims it', () => {
    expect(validateClusterName(' prod ', () => false)).toBe(true)
  })
  it('refuses bad names with the rule', () => {
    expect(validateClusterName('Bad_Name!', () => false)).toMatch(/invalid cluster name "Bad_Name!".*lowercase/)
    expect(validateClusterName('', () => false)).toMatch(/name/)
    expect(validateClusterName('-x', () => false)).toMatch(/invalid/)
    expect(validateClusterName('a'.repeat(64), () => false)).toMatch(/invalid/)
  })
  it('refuses the name of a saved context', () => {
    expect(validateClusterName('prod', (n) => n === 'prod')).toMatch(/context named "prod" exists already/)
  })
})

describe('ssh user and key', () => {
  it('checks the user name', () => {
    expect(validateSshUser('root')).toBe(true)
    expect(validateSshUser('deploy_1')).toBe(true)
    expect(validateSshUser('')).toMatch(/give the SSH user/)
    expect(validateSshUser('a b')).toMatch(/not a user name/)
    expect(validateSshUser('root@h')).toMatch(/not a user name/)
  })
  it('expands ~ and makes paths absolute', () => {
    expect(expandPath('~/.ssh/k', '/home/u', '/w')).toBe('/home/u/.ssh/k')
    expect(expandPath('~', '/home/u', '/w')).toBe('/home/u')
    expect(expandPath('k', '/home/u', '/w')).toBe('/w/k')
  })
  it('accepts a private key; refuses a missing file, a public key, a directory, junk and an encrypted key', () => {
    expect(validatePrivateKeyFile(keyFile)).toBe(true)
    expect(validatePrivateKeyFile(path.join(tmp, 'nope'))).toMatch(/does not exist/)
    expect(validatePrivateKeyFile('')).toMatch(/give the path/)
    expect(validatePrivateKeyFile(`${keyFile}.pub`)).toMatch(/public key/)
    expect(validatePrivateKeyFile(tmp)).toMatch(/not a file/)
    const junk = path.join(tmp, 'junk')
    fs.writeFileSync(junk, 'hello\n')
    expect(validatePrivateKeyFile(junk)).toMatch(/not a private key/)
    const enc = path.join(tmp, 'enc')
    expect(spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', 'secret', '-f', enc]).status).toBe(0)
    expect(validatePrivateKeyFile(enc)).toMatch(/passphrase/)
  })
})

describe('known_hosts file', () => {
  it('is optional', () => {
    expect(validateKnownHostsFile('')).toBe(true)
    expect(validateKnownHostsFile('   ')).toBe(true)
  })
  it('must exist and hold host keys', () => {
    expect(validateKnownHostsFile(path.join(tmp, 'nope'))).toMatch(/does not exist.*empty/)
    const empty = path.join(tmp, 'kh-empty')
    fs.writeFileSync(empty, '# nothing\n')
    expect(validateKnownHostsFile(empty)).toMatch(/records no host keys/)
    const pub = fs.readFileSync(`${keyFile}.pub`, 'utf8').trim().split(' ')
    const good = path.join(tmp, 'kh')
    fs.writeFileSync(good, `10.0.0.11 ${pub[0]} ${pub[1]}\n`)
    expect(validateKnownHostsFile(good)).toBe(true)
  })
})

describe('hosts', () => {
  it('splits on commas (blanks around them dropped), or on blanks when there is no comma', () => {
    expect(parseHosts('10.0.0.11, 10.0.0.12 ,node3.example.com,fe80::1')).toEqual({ hosts: ['10.0.0.11', '10.0.0.12', 'node3.example.com', 'fe80::1'] })
    expect(parseHosts(' 10.0.0.11  10.0.0.12 ')).toEqual({ hosts: ['10.0.0.11', '10.0.0.12'] })
  })
  it('refuses a comma-separated list with a blank inside an item, naming it (not two hosts)', () => {
    expect(parseHosts('127.0.0.2,bad host')).toEqual({ error: '"bad host" has a blank in it: separate the hosts with commas (or give them separated by blanks only)' })
  })
  it('refuses empty lists, duplicates, user@host, host:port and junk', () => {
    expect(parseHosts(' , ')).toHaveProperty('error')
    expect(parseHosts('a,A')).toEqual({ error: 'A is listed twice' })
    expect(checkHost('root@h1')).toMatch(/SSH user at its own prompt/)
    expect(checkHost('h1:2222')).toMatch(/--ssh-port/)
    expect(checkHost('[fe80::1]')).toMatch(/without brackets/)
    expect(checkHost('bad_name')).toMatch(/neither an IP address nor a host name/)
    expect(parseHosts(Array.from({ length: wizardHostsMax + 1 }, (_, i) => `h${i}`).join(','))).toHaveProperty('error')
  })
})

describe('disks', () => {
  it('parses absolute paths and normalizes them', () => {
    expect(parseDisks('/d/a/, /d/b')).toEqual({ disks: ['/d/a', '/d/b'] })
  })
  it('refuses relative paths, duplicates and /', () => {
    expect(parseDisks('d/a')).toEqual({ error: '"d/a" is not an absolute path' })
    expect(parseDisks('/d/a,/d/a/')).toEqual({ error: '/d/a is listed twice' })
    expect(parseDisks('/')).toHaveProperty('error')
    expect(parseDisks('')).toHaveProperty('error')
  })
})

describe('replication factor', () => {
  it('is 1..min(3, n), default min(2, n)', () => {
    expect(rfBounds(1)).toEqual({ min: 1, max: 1, default: 1 })
    expect(rfBounds(2)).toEqual({ min: 1, max: 2, default: 2 })
    expect(rfBounds(5)).toEqual({ min: 1, max: 3, default: 2 })
    expect(validateRf(2, 2)).toBe(true)
    expect(validateRf(3, 2)).toMatch(/RF 3 needs 3 hosts/)
    expect(validateRf(4, 5)).toMatch(/RF is 1 to 3/)
    expect(validateRf(0, 5)).toMatch(/RF is 1 to 3/)
    expect(validateRf(undefined, 2)).toMatch(/whole number/)
    expect(validateRf(1.5, 2)).toMatch(/whole number/)
  })
})

describe('pre-flight, plan, equivalent command', () => {
  const check = (c: Partial<PreflightCheck>): PreflightCheck => ({ check: 'os', ok: true, level: 'ok', message: '', hint: '', ...c })
  it('sees when only packages are missing', () => {
    const r: PreflightResult = {
      ok: false,
      hosts: [
        { host: 'h1', ok: false, installed: [], checks: [check({}), check({ check: 'binary', subject: 'etcd', ok: false, level: 'fail' }), check({ check: 'binary', subject: 'etcdctl', ok: false, level: 'fail' })] },
        { host: 'h2', ok: true, installed: [], checks: [check({ check: 'clock', level: 'warn' })] },
      ],
    }
    expect(missingPackagesOnly(r)).toEqual(new Map([['h1', ['etcd-server', 'etcd-client']]]))
    r.hosts[1]!.checks.push(check({ check: 'port', ok: false, level: 'fail' }))
    expect(missingPackagesOnly(r)).toBeUndefined()
    expect(missingPackagesOnly({ ok: true, hosts: [] })).toBeUndefined()
  })
  it('prints the cluster create command that does the same, quoted for a shell', () => {
    expect(equivalentCreateCommand(answers())).toBe('tess cluster create --name prod --hosts 10.0.0.11,10.0.0.12 --ssh-user root --ssh-key /root/.ssh/id_ed25519 --disk /var/lib/tess/disks/d0 --rf 2')
    expect(equivalentCreateCommand(answers({ sshPort: 2222, knownHostsFile: '/k h', installDeps: true, disks: ['/a', '/b'] })))
      .toBe("tess cluster create --name prod --hosts 10.0.0.11,10.0.0.12 --ssh-user root --ssh-key /root/.ssh/id_ed25519 --ssh-port 2222 --known-hosts '/k h' --disk /a --disk /b --rf 2 --install-deps")
  })
  it('shows the plan', () => {
    const plan: RemotePlan = {
      cluster: 'prod', clusterId: 'id', rf: 2, etcdMembers: ['n1'],
      ports: { api: 9440, nbd: 10809, etcdClient: 2379, etcdPeer: 2380, data: 10810 },
      nodes: [
        { host: '10.0.0.11', name: 'n1', etcdMember: true, disks: ['/d0'], state: 'new' },
        { host: '10.0.0.12', name: 'n2', etcdMember: false, disks: ['/d0'], state: 'configured' },
      ],
    }
    const text = formatPlan(plan, answers(), '/cfg/known_hosts', new Map([['10.0.0.12', ['etcd-server']]]))
    expect(text).toContain('Plan for cluster "prod" (nothing has been changed yet):')
    expect(text).toContain('10.0.0.11: node n1, etcd member, disks /d0\n')
    expect(text).toContain('10.0.0.12: node n2, disks /d0 (configured earlier: resumed)')
    expect(text).toContain('RF 2; ports API 9440')
    expect(text).toContain('host keys pinned in /cfg/known_hosts')
    expect(text).toContain('10.0.0.12: packages installed during the pre-flight: etcd-server')
  })
  it('turns flag hints into wizard hints', () => {
    expect(hostCheckHint('refusing h: its host key ssh-ed25519 SHA256:x is not in known_hosts ("/k")', 'pass --accept-new-host-keys', '/k')).toMatch(/add the key to \/k/)
    expect(hostCheckHint('refusing h: its host key ... was not accepted', 'x', '')).toMatch(/fingerprint/)
    expect(hostCheckHint('other', 'is h up?', '')).toBe('is h up?')
  })
})

describe('the embedded cluster', () => {
  it('takes an absolute data directory (~ expanded), not / and not empty', () => {
    expect(validateDataDir('/var/lib/tess')).toBe(true)
    expect(validateDataDir('~/tess')).toBe(true)
    expect(validateDataDir('relative/dir')).toBe(true) // made absolute against the working directory
    expect(validateDataDir('')).toMatch(/give the directory/)
    expect(validateDataDir('/')).toMatch(/root directory/)
    expect(validateDataDir('/tmp/a\nb')).toMatch(/control character/)
  })
  it('says what it will do, and the command that does the same', () => {
    const plan = formatLocalPlan({ name: 'solo', dataDir: '/srv/tess', bind: '127.0.0.1', apiPort: 9540, nbdPort: 10809, dataPort: 10810, etcdClientPort: 2379, etcdPeerPort: 2380 })
    expect(plan).toContain('Plan for cluster "solo" on this machine (nothing has been changed yet):')
    expect(plan).toContain('its first disk /srv/tess/disks/d0')
    expect(plan).toContain('RF 1')
    expect(plan).toContain('API 9540, NBD 10809, data 10810, etcd 2379/2380')
    expect(equivalentLocalCommand('solo', '/srv/my tess')).toBe("tess cluster create --local --name solo --data-dir '/srv/my tess'")
  })
})
