/**
 * Pure helpers of `tess setup`, the interactive setup wizard: answer validation (each returns true
 * or the reason, as inquirer's `validate` wants), parsing of list answers, the plan text and the
 * equivalent `tess cluster create` command. No prompts here; the command drives them.
 */
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import ssh2 from 'ssh2'
import { parseKnownHosts, knownHostsFileMaxBytes } from '../bootstrap/knownhosts.js'
import { defaultPreflightBinaries, type PreflightResult } from '../bootstrap/preflight.js'
import type { RemotePlan } from '../bootstrap/remote.js'
import { shellQuote } from '../bootstrap/ssh.js'
import { rfMax } from '../lib/limits.js'
import { namePattern } from '../lib/names.js'

/** Hosts one wizard run bootstraps (more: use `tess cluster create --hosts`). */
export const wizardHostsMax = 64
/** Disk directories per host. */
export const wizardDisksMax = 16
/** Bytes of a private key file we read to check it. */
export const privateKeyFileMaxBytes = 64 * 1024
export const wizardDiskDefault = '/var/lib/tess/disks/d0'
/** Private keys looked for, in order, to offer as the default. */
export const defaultKeyNames = ['id_ed25519', 'id_ecdsa', 'id_rsa']

export type Validation = true | string

/** The answers of one wizard run. */
export interface WizardAnswers {
  name: string
  sshUser: string
  sshKey: string
  sshPort: number
  /** empty: new host keys were confirmed one by one and recorded in tess's known_hosts */
  knownHostsFile: string
  hosts: string[]
  disks: string[]
  rf: number
  installDeps: boolean
}

/** `~` and `~/x` → the home directory; other paths are made absolute against `cwd`. */
export function expandPath(p: string, home = os.homedir(), cwd = process.cwd()): string {
  const t = p.trim()
  if (t === '~') return home
  if (t.startsWith('~/')) return path.join(home, t.slice(2))
  return path.resolve(cwd, t)
}

/** A cluster name: the name rule, and not the name of a saved context. */
export function validateClusterName(name: string, contextExists: (name: string) => boolean): Validation {
  const n = name.trim()
  if (n === '') return 'give the cluster a name'
  if (!namePattern.test(n)) return `invalid cluster name "${n}": use 1-63 lowercase letters, digits and "-", starting with a letter or digit`
  if (contextExists(n)) return `a cluster context named "${n}" exists already (tess cluster list): choose another name, or destroy that cluster first`
  return true
}

/** A POSIX user name (what sshd accepts in practice). */
export function validateSshUser(user: string): Validation {
  const u = user.trim()
  if (u === '') return 'give the SSH user (root, or a user with passwordless sudo)'
  if (!/^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$/.test(u)) return `"${u}" is not a user name: letters, digits, "_", "." and "-", starting with a letter or "_"`
  return true
}

/** Is `data` a private key ssh2 can use without a passphrase? */
export function checkPrivateKeyData(data: Buffer, label: string): Validation {
  const parsed = ssh2.utils.parseKey(data)
  const err = parsed instanceof Error ? parsed : Array.isArray(parsed) && parsed[0] instanceof Error ? parsed[0] : undefined
  if (err) {
    if (/passphrase|encrypted/i.test(err.message)) {
      return `${label} is protected by a passphrase, which tess cannot use: remove it (ssh-keygen -p -f ${label}) or make a key for tess (ssh-keygen -t ed25519 -N '' -f ~/.ssh/tess_ed25519)`
    }
    return `${label} is not a private key tess can read (${err.message}): give an OpenSSH or PEM private key`
  }
  const k = Array.isArray(parsed) ? parsed[0] : parsed
  if (!k || typeof k !== 'object') return `${label} is not a private key`
  if (!k.isPrivateKey()) return `${label} is a public key: give the private key (the file without .pub)`
  return true
}

/** A private key file: exists, is a regular file of sane size, parses as a private key without passphrase. */
export function validatePrivateKeyFile(answer: string): Validation {
  if (answer.trim() === '') return 'give the path of the private key authorized on the hosts'
  const p = expandPath(answer)
  let st: fs.Stats
  try {
    st = fs.statSync(p)
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT' ? `${p} does not exist` : `cannot read ${p}: ${(e as Error).message}`
  }
  if (!st.isFile()) return `${p} is not a file`
  if (st.size > privateKeyFileMaxBytes) return `${p} is ${st.size} bytes: too big for a private key`
  let data: Buffer
  try {
    data = fs.readFileSync(p)
  } catch (e) {
    return `cannot read ${p}: ${(e as Error).message}`
  }
  return checkPrivateKeyData(data, p)
}

/** The first of ~/.ssh/id_ed25519, id_ecdsa, id_rsa that exists, for the key prompt's default. */
export function defaultPrivateKey(home = os.homedir()): string | undefined {
  for (const n of defaultKeyNames) {
    const p = path.join(home, '.ssh', n)
    if (fs.existsSync(p)) return p
  }
  return undefined
}

/** An optional known_hosts file: empty is fine; else it exists and records at least one host key. */
export function validateKnownHostsFile(answer: string): Validation {
  if (answer.trim() === '') return true
  const p = expandPath(answer)
  let st: fs.Stats
  try {
    st = fs.statSync(p)
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT' ? `${p} does not exist (leave the answer empty to confirm each new host key instead)` : `cannot read ${p}: ${(e as Error).message}`
  }
  if (!st.isFile()) return `${p} is not a file`
  if (st.size > knownHostsFileMaxBytes) return `${p} is larger than ${knownHostsFileMaxBytes} bytes`
  let text: string
  try {
    text = fs.readFileSync(p, 'utf8')
  } catch (e) {
    return `cannot read ${p}: ${(e as Error).message}`
  }
  const r = parseKnownHosts(text, p)
  if (r.entries.length === 0) {
    return `${p} records no host keys${r.invalid[0] ? ` (line ${r.invalid[0].line}: ${r.invalid[0].reason})` : ''}: give an OpenSSH known_hosts file, or leave the answer empty`
  }
  return true
}

const hostLabel = /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/

/** One host: an IPv4 or IPv6 address, or a DNS name. The reason when it is not. */
export function checkHost(h: string): Validation {
  if (h.includes('@')) return `"${h}": give the SSH user at its own prompt, not in the host`
  if (net.isIP(h) !== 0) return true
  if (h.startsWith('[') || (h.includes(':') && net.isIPv6(h.replace(/^\[|\]$/g, '')))) return `"${h}": write an IPv6 address without brackets`
  if (h.includes(':')) return `"${h}": every host is reached on the same SSH port (give it with tess setup --ssh-port N)`
  if (h.length > 253 || !h.split('.').every((l) => hostLabel.test(l))) return `"${h}" is neither an IP address nor a host name`
  return true
}

/** Split a list answer on commas and blanks; empty items dropped. */
/**
 * The items of a list answer: separated by commas (blanks around them dropped) when it holds a
 * comma, else by blanks. With commas, an item with a blank inside is an error, not two items: in
 * `127.0.0.2,bad host` the second host is a typo, not the hosts `bad` and `host`.
 */
export function splitList(answer: string): string[] | { error: string } {
  if (!answer.includes(',')) return answer.split(/\s+/).filter(Boolean)
  const items = answer.split(',').map((s) => s.trim()).filter(Boolean)
  const spaced = items.find((s) => /\s/.test(s))
  if (spaced !== undefined) return { error: `"${spaced}" has a blank in it: separate the hosts with commas (or give them separated by blanks only)` }
  return items
}

/** The hosts answer: 1..wizardHostsMax valid hosts, none twice. */
export function parseHosts(answer: string): { hosts: string[] } | { error: string } {
  const hosts = splitList(answer)
  if (!Array.isArray(hosts)) return hosts
  if (hosts.length === 0) return { error: 'give at least one host (addresses or names, comma-separated)' }
  if (hosts.length > wizardHostsMax) return { error: `${hosts.length} hosts: the wizard takes at most ${wizardHostsMax} (use tess cluster create --hosts for more)` }
  const seen = new Set<string>()
  for (const h of hosts) {
    const v = checkHost(h)
    if (v !== true) return { error: v }
    const k = h.toLowerCase()
    if (seen.has(k)) return { error: `${h} is listed twice` }
    seen.add(k)
  }
  return { hosts }
}

export function validateHosts(answer: string): Validation {
  const r = parseHosts(answer)
  return 'error' in r ? r.error : true
}

/** The disks answer: 1..wizardDisksMax absolute directory paths, none twice (trailing "/" dropped). */
export function parseDisks(answer: string): { disks: string[] } | { error: string } {
  const raw = answer.split(',').map((s) => s.trim()).filter(Boolean)
  if (raw.length === 0) return { error: 'give at least one disk directory' }
  if (raw.length > wizardDisksMax) return { error: `${raw.length} disks: at most ${wizardDisksMax} per host` }
  const disks: string[] = []
  for (const d of raw) {
    if (!d.startsWith('/')) return { error: `"${d}" is not an absolute path` }
    if (/[\0\n]/.test(d)) return { error: `"${d}" holds a control character` }
    const n = path.posix.normalize(d).replace(/\/+$/, '')
    if (n === '') return { error: 'the root directory / cannot be a disk: give a directory under it (a disk\'s mount point)' }
    if (disks.includes(n)) return { error: `${n} is listed twice` }
    disks.push(n)
  }
  return { disks }
}

export function validateDisks(answer: string): Validation {
  const r = parseDisks(answer)
  return 'error' in r ? r.error : true
}

/** RF bounds for n hosts: 1..min(3, n), default min(2, n). */
export function rfBounds(hostCount: number): { min: number, max: number, default: number } {
  const max = Math.max(1, Math.min(rfMax, hostCount))
  return { min: 1, max, default: Math.min(2, max) }
}

export function validateRf(rf: number | undefined, hostCount: number): Validation {
  const b = rfBounds(hostCount)
  if (rf === undefined || !Number.isInteger(rf)) return `give a whole number from ${b.min} to ${b.max}`
  if (rf < b.min || rf > b.max) {
    return rf > b.max && b.max < rfMax ? `RF ${rf} needs ${rf} hosts; with ${hostCount} host(s) the most is ${b.max}` : `RF is ${b.min} to ${b.max}`
  }
  return true
}

/**
 * When a pre-flight failed only because binaries are missing: the Debian packages to install, by
 * host. undefined when any other check failed (installing packages would not be enough).
 */
export function missingPackagesOnly(result: PreflightResult): Map<string, string[]> | undefined {
  const out = new Map<string, string[]>()
  for (const h of result.hosts) {
    for (const c of h.checks) {
      if (c.ok) continue
      const b = c.check === 'binary' ? defaultPreflightBinaries.find((x) => x.binary === c.subject) : undefined
      if (!b) return undefined
      const l = out.get(h.host) ?? []
      if (!l.includes(b.package)) l.push(b.package)
      out.set(h.host, l)
    }
  }
  return out.size > 0 ? out : undefined
}

/** The embedded cluster's data directory: an absolute path (after `~` is expanded), not `/`, no control character. */
export function validateDataDir(answer: string): Validation {
  if (answer.trim() === '') return 'give the directory for the node\'s state, logs, certificates and first disk'
  if (/[\0\n\r]/.test(answer)) return 'the path holds a control character'
  const p = expandPath(answer)
  if (p === '/') return 'the root directory / cannot be the data directory: give a directory under it'
  return true
}

/** `tess cluster create --local ...` doing what the wizard does for the embedded cluster. */
export function equivalentLocalCommand(name: string, dataDir: string, bin = 'tess'): string {
  return [bin, 'cluster', 'create', '--local', '--name', name, '--data-dir', dataDir].map(shellQuote).join(' ')
}

/** The embedded cluster's plan, as lines for people. */
export function formatLocalPlan(o: { name: string, dataDir: string, bind: string, apiPort: number, nbdPort: number, dataPort: number, etcdClientPort: number, etcdPeerPort: number }): string {
  return [
    `Plan for cluster "${o.name}" on this machine (nothing has been changed yet):`,
    `  one node: an etcd member, the node supervisor and the CVM, run from ${o.dataDir}; its first disk ${path.posix.join(o.dataDir, 'disks', 'd0')}`,
    `  RF 1 (one copy: add hosts later with tess host add); listening on ${o.bind}: API ${o.apiPort}, NBD ${o.nbdPort}, data ${o.dataPort}, etcd ${o.etcdClientPort}/${o.etcdPeerPort}`,
  ].join('\n')
}

/** `tess cluster create ...` doing what the wizard does with these answers (for scripts, and to resume). */
export function equivalentCreateCommand(a: WizardAnswers, bin = 'tess'): string {
  const args = ['cluster', 'create', '--name', a.name, '--hosts', a.hosts.join(','), '--ssh-user', a.sshUser, '--ssh-key', a.sshKey]
  if (a.sshPort !== 22) args.push('--ssh-port', String(a.sshPort))
  if (a.knownHostsFile) args.push('--known-hosts', a.knownHostsFile)
  for (const d of a.disks) args.push('--disk', d)
  args.push('--rf', String(a.rf))
  if (a.installDeps) args.push('--install-deps')
  return [bin, ...args.map(shellQuote)].join(' ')
}

/** The plan the pre-flight returned, as lines for people. */
export function formatPlan(plan: RemotePlan, a: WizardAnswers, keysFile: string, installed: ReadonlyMap<string, string[]>): string {
  const lines = [`Plan for cluster "${plan.cluster}" (nothing has been changed yet):`]
  for (const n of plan.nodes) {
    lines.push(`  ${n.host}: node ${n.name}${n.etcdMember ? ', etcd member' : ''}, disks ${n.disks.join(', ')}${n.state === 'new' ? '' : ` (${n.state === 'running' ? 'already running: kept' : 'configured earlier: resumed'})`}`)
  }
  const p = plan.ports
  lines.push(`  RF ${plan.rf}; ports API ${p.api}, NBD ${p.nbd}, data ${p.data}, etcd ${p.etcdClient}/${p.etcdPeer}`)
  lines.push(`  SSH as ${a.sshUser} with key ${a.sshKey}${a.sshPort === 22 ? '' : ` on port ${a.sshPort}`}; host keys pinned in ${keysFile}`)
  lines.push('  On every host: install the daemon bundle in /var/lib/tess, write certificates and node config, start the supervisor (etcd, CVM)')
  for (const [h, pkgs] of installed) lines.push(`  ${h}: packages installed during the pre-flight: ${pkgs.join(' ')}`)
  return lines.join('\n')
}

/**
 * The hint to show under a host that failed its SSH check, for the wizard's choices rather than
 * `cluster create`'s flags.
 */
export function hostCheckHint(message: string, hint: string, knownHostsFile: string): string {
  if (knownHostsFile && /is not in known_hosts/.test(message)) {
    return `check the fingerprint out of band and add the key to ${knownHostsFile}, or change the answers and leave the known_hosts file empty to confirm new host keys here`
  }
  if (/was not accepted/.test(message)) return 'check the fingerprint out of band (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on the host), then try again and accept it'
  return hint.replace(/--accept-new-host-keys/g, 'an empty known_hosts answer').replace(/--ssh-key PATH/g, 'another key')
}
