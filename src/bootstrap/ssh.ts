/**
 * The SSH transport bootstrap uses to reach a node: ssh2's Client with pinned host keys, bounded
 * command output, SFTP uploads and atomic file writes, and errors that name the host and say what to
 * check (TESS_E_UNREACHABLE, TESS_E_AUTH, TESS_E_TIMEOUT, TESS_E_IO).
 *
 * Host keys (pinned; SECURITY.md): the key the server offers is looked up in known_hosts
 * files (knownhosts.ts).
 *   strict      the key must be recorded already;
 *   accept-new  an unknown host's key is accepted and recorded in tess's known_hosts;
 *   ask         `ask(host, fingerprint)` decides for an unknown host; an accepted key is recorded.
 * A host whose recorded key differs (a CHANGED key) or is @revoked is refused under every policy.
 * When a host is known, only its recorded key types are offered in the key exchange (as ssh does), so
 * a server that also has keys of other types never looks "changed".
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import ssh2 from 'ssh2'
import type { ClientChannel, ConnectConfig, SFTPWrapper, ServerHostKeyAlgorithm, Stats } from 'ssh2'
import { TessError, assert, errorMessage, isTessError, type ErrorCode } from '../lib/errors.js'
import { KnownHosts, appendKnownHost, defaultKnownHostsFile, fingerprintSha256, hostKeyName, keyTypeOfBlob, type KnownKey } from './knownhosts.js'

const { Client, utils: sshUtils } = ssh2
type SshClient = InstanceType<typeof Client>

// ------------------------------------------------------------------------------------- limits

/** stdout and stderr of one remote command are each captured up to this many bytes. */
export const sshExecOutputMaxBytes = 16 * 1024 * 1024
export const sshReadyTimeoutMsDefault = 20_000
export const sshExecTimeoutMsDefault = 10 * 60_000
/** ssh2 keepalives: a silent peer is declared dead after interval × count. */
export const sshKeepaliveIntervalMs = 15_000
export const sshKeepaliveCountMax = 4
/** Concurrent exec channels per connection (sshd's MaxSessions defaults to 10; SFTP takes one). */
export const sshChannelsMax = 8
export const sshReadFileMaxBytesDefault = 64 * 1024 * 1024
export const sshCloseTimeoutMs = 2_000
export const clockProbeTimeoutMs = 30_000
/** SFTP write request size for writeFile. */
const sftpWriteChunkBytes = 32 * 1024
/** Characters of a command quoted in an error message. */
const cmdInMessageMaxChars = 200
/** Lines of stderr quoted in execOk's error. */
const stderrTailLines = 15

// ---------------------------------------------------------------------------------------- types

export type HostKeyPolicy = 'strict' | 'accept-new' | 'ask'

export interface SshConnectOptions {
  host: string
  port?: number
  username: string
  /** a path to a private key file, or the key itself */
  privateKey: string | Buffer
  passphrase?: string
  /**
   * known_hosts file(s) a key must be found in. Default: tess's own file (defaultKnownHostsFile()).
   * Under accept-new and ask, the record file is consulted too.
   */
  knownHostsFile?: string | readonly string[]
  /** where accept-new and ask record new keys; default tess's own file */
  recordKnownHostsFile?: string
  hostKeyPolicy: HostKeyPolicy
  /** for 'ask': decide about an unknown host's key (interactive use). Time spent here does not count against readyTimeoutMs. */
  ask?: (host: string, fingerprint: string, keyType: string) => Promise<boolean>
  /** TCP connect + SSH handshake + authentication; default 20 s */
  readyTimeoutMs?: number
  /** record new keys hashed (HashKnownHosts) */
  hashKnownHosts?: boolean
  /** clock for deadlines, injectable */
  now?: () => number
}

export interface SshExecOptions {
  /** default 10 min; on expiry the remote command is sent SIGKILL and TESS_E_TIMEOUT is thrown */
  timeoutMs?: number
  /** written to the command's stdin, then EOF (stdin always gets EOF) */
  input?: string | Buffer
  /** exported before the command runs (names: [A-Za-z_][A-Za-z0-9_]*) */
  env?: Record<string, string>
  /** per stream; default sshExecOutputMaxBytes */
  maxOutputBytes?: number
}

export interface SshExecResult {
  /** exit status; 128 + signal number style is not guessed: -1 when the command died by a signal */
  code: number
  signal: string | undefined
  stdout: string
  stderr: string
  /** stdout kept its first, stderr its last maxOutputBytes */
  truncated: boolean
}

export interface SshExecOkOptions extends SshExecOptions {
  /** what the command does, for the error message (default: the command itself) */
  what?: string
  /** the code of the error thrown on a non-zero exit; default TESS_E_IO */
  errorCode?: ErrorCode
  hint?: string
}

export interface SshUploadOptions {
  /** default 0o644 */
  mode?: number
  onProgress?: (sentBytes: number, totalBytes: number) => void
}

/** A command: a shell string, or an argv that is quoted for the remote shell. */
export type RemoteCommand = string | readonly string[]

/** One reading of a remote clock: local time before asking, remote time, local time after the answer. */
export interface ClockSample { sentAtMs: number, remoteMs: number, receivedAtMs: number }

/** What preflight and bundle need of a transport (tests can fake it). */
export interface RemoteExec {
  /** host as connected to (name or address) */
  readonly host: string
  exec(cmd: RemoteCommand, opts?: SshExecOptions): Promise<SshExecResult>
  /** read the remote clock over one open channel (no process start inside the round trip) */
  clockSamples?(count: number, localClock: () => number): Promise<ClockSample[]>
}

// -------------------------------------------------------------------------------------- helpers

/** Quote one word for a POSIX shell. */
export function shellQuote(s: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(s)) return s
  return `'${s.replace(/'/g, `'\\''`)}'`
}

export function commandString(cmd: RemoteCommand): string {
  return typeof cmd === 'string' ? cmd : cmd.map(shellQuote).join(' ')
}

function shortCmd(cmd: string): string {
  const oneLine = cmd.replace(/\s+/g, ' ').trim()
  return oneLine.length > cmdInMessageMaxChars ? `${oneLine.slice(0, cmdInMessageMaxChars)}…` : oneLine
}

function tailLines(s: string, n: number): string {
  return s.trimEnd().split('\n').slice(-n).join('\n')
}

/** ssh2 host key algorithms that produce keys of these known_hosts key types. */
export function hostKeyAlgorithmsFor(keyTypes: readonly string[]): ServerHostKeyAlgorithm[] {
  const out: ServerHostKeyAlgorithm[] = []
  const add = (...a: ServerHostKeyAlgorithm[]): void => { for (const x of a) if (!out.includes(x)) out.push(x) }
  for (const t of keyTypes) {
    if (t === 'ssh-ed25519') add('ssh-ed25519')
    else if (t === 'ecdsa-sha2-nistp256' || t === 'ecdsa-sha2-nistp384' || t === 'ecdsa-sha2-nistp521') add(t)
    else if (t === 'ssh-rsa') add('rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa')
    else if (t === 'ssh-dss') add('ssh-dss')
  }
  return out
}

/** Bytes of one stream: keeps the head or the tail, at most `max`. */
class Capture {
  private chunks: Buffer[] = []
  private size = 0
  truncated = false
  constructor(private readonly max: number, private readonly keep: 'head' | 'tail') {}

  push(b: Buffer): void {
    if (this.keep === 'head') {
      const room = this.max - this.size
      if (room <= 0) {
        this.truncated = true
        return
      }
      const part = b.length > room ? b.subarray(0, room) : b
      if (part.length < b.length) this.truncated = true
      this.chunks.push(part)
      this.size += part.length
      return
    }
    this.chunks.push(b)
    this.size += b.length
    while (this.size > this.max && this.chunks.length > 0) {
      this.truncated = true
      const first = this.chunks[0]!
      const excess = this.size - this.max
      if (first.length <= excess) {
        this.chunks.shift()
        this.size -= first.length
      } else {
        this.chunks[0] = first.subarray(excess)
        this.size -= excess
      }
    }
  }

  text(): string {
    return Buffer.concat(this.chunks).toString('utf8')
  }
}

/** What to do with a host key the server offered, under the policy: the known_hosts lookup's verdict. */
type HostKeyDecision = { kind: 'accept' } | { kind: 'refuse', error: TessError } | { kind: 'record' } | { kind: 'ask' }

function hostKeyDecision(c: {
  label: string, host: string, port: number, keyType: string, fp: string, blob: Buffer, known: KnownHosts,
  knownKeys: Array<{ keyType: string, fingerprint: string, source: string, line: number }>, policy: HostKeyPolicy, files: string[], recordFile: string
}): HostKeyDecision {
  const { label, host, port, keyType, fp } = c
  const status = c.known.lookup(host, port, keyType, c.blob)
  if (status === 'match') return { kind: 'accept' }
  if (status === 'revoked') {
    const e = c.known.revokedEntry(host, port, c.blob)
    return {
      kind: 'refuse',
      error: new TessError('TESS_E_AUTH', `refusing ${label}: its host key ${keyType} ${fp} is marked @revoked${e ? ` in "${e.source}" line ${e.line}` : ''}`,
        'the host must get a new host key; then record the new key'),
    }
  }
  if (status === 'mismatch') {
    const rec = c.knownKeys.map((k) => `${k.keyType} ${k.fingerprint} ("${k.source}" line ${k.line})`).join(', ')
    const first = c.knownKeys[0]
    return {
      kind: 'refuse',
      error: new TessError('TESS_E_AUTH',
        `refusing ${label}: its host key has CHANGED: it offered ${keyType} ${fp}, but known_hosts records ${rec}`,
        `if ${host} was reinstalled or got a new host key, verify the new fingerprint out of band, remove the old entry (ssh-keygen -R '${hostKeyName(host, port)}' -f ${first?.source ?? c.recordFile}) and connect again; otherwise someone may be intercepting the connection`),
    }
  }
  // unknown host
  if (c.policy === 'strict') {
    return {
      kind: 'refuse',
      error: new TessError('TESS_E_AUTH', `refusing ${label}: its host key ${keyType} ${fp} is not in known_hosts (${c.files.map((f) => `"${f}"`).join(', ')})`,
        `verify the fingerprint out of band, then add it (ssh-keyscan -p ${port} -t ${keyType} ${host} >> ${c.files[0] ?? c.recordFile}), or pass --accept-new-host-keys to record new hosts' keys`),
    }
  }
  return c.policy === 'accept-new' ? { kind: 'record' } : { kind: 'ask' }
}

/** The error for an ssh2 client failure during the handshake, with what to check. */
function sshClientError(e: Error & { level?: string, code?: string }, c: {
  label: string, host: string, port: number, username: string, keyLabel: string, keyPath: string, algorithms: string[], knownTypes: string[],
  knownKeys: Array<{ source: string }>, recordFile: string
}): TessError {
  const { label, host, port } = c
  if (e.level === 'client-socket' || typeof e.code === 'string') return sshSocketError(e, label, host, port)
  if (e.level === 'client-authentication') {
    return new TessError('TESS_E_AUTH', `cannot log in to ${label} as ${c.username}: the server refused ${c.keyLabel}`,
      `is the public key (ssh-keygen -y -f ${c.keyPath}) in ${c.username}'s authorized_keys on ${host}` +
      `${c.username === 'root' ? ' (/root/.ssh/authorized_keys), and does sshd allow root login by key (PermitRootLogin prohibit-password)' : ''}?`)
  }
  if (e.level === 'client-timeout') {
    return new TessError('TESS_E_UNREACHABLE', `cannot connect to ${label} over SSH: ${e.message}`, `is ${host} up, and is sshd on port ${port} answering?`)
  }
  if (c.algorithms.length > 0 && /host key/i.test(e.message)) {
    return new TessError('TESS_E_AUTH',
      `refusing ${label}: it offers no host key of the type(s) recorded in known_hosts (${c.knownTypes.join(', ')}): the host key may have CHANGED (${e.message})`,
      `verify the host's keys out of band; if it was reinstalled, remove the old entry (ssh-keygen -R '${hostKeyName(host, port)}' -f ${c.knownKeys[0]?.source ?? c.recordFile}) and connect again`)
  }
  return new TessError('TESS_E_UNREACHABLE', `SSH handshake with ${label} failed: ${e.message}`, `is an SSH server listening on ${label}? its sshd log may say why`)
}

/** The error for a socket-level failure of an SSH connection to `label`, with what to check. */
function sshSocketError(e: Error & { code?: string }, label: string, host: string, port: number): TessError {
  switch (e.code) {
    case 'ECONNREFUSED':
      return new TessError('TESS_E_UNREACHABLE', `cannot connect to ${label}: connection refused`, `is sshd running on ${host}:${port}?`)
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'EHOSTDOWN':
    case 'ENETDOWN':
      return new TessError('TESS_E_UNREACHABLE', `cannot connect to ${label}: no route to host (${e.code})`, `is ${host} up, and is its address right?`)
    case 'ETIMEDOUT':
      return new TessError('TESS_E_UNREACHABLE', `cannot connect to ${label}: timed out`, `is ${host} up, and does a firewall let port ${port} through?`)
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EAI_NONAME':
      return new TessError('TESS_E_UNREACHABLE', `cannot connect to ${label}: cannot resolve "${host}" (${e.code})`, 'check the host name (DNS, /etc/hosts) or give an address')
    case 'ECONNRESET':
    case 'EPIPE':
      return new TessError('TESS_E_UNREACHABLE', `connection to ${label} was reset during the SSH handshake`, `is it an SSH server, and is sshd on ${host} accepting connections (MaxStartups)? its sshd log may say why`)
    default:
      return new TessError('TESS_E_UNREACHABLE', `cannot connect to ${label}: ${e.message}`, `is ${host} up and sshd running on port ${port}?`)
  }
}

/** A counting semaphore with a FIFO queue. */
class Semaphore {
  private waiting: Array<() => void> = []
  private used = 0
  constructor(private readonly max: number) {}
  async acquire(): Promise<() => void> {
    if (this.used >= this.max) await new Promise<void>((r) => this.waiting.push(r))
    else this.used++
    let released = false
    return () => {
      if (released) return
      released = true
      const next = this.waiting.shift()
      if (next) next()
      else this.used--
    }
  }
}

function sftpErrorText(e: unknown): string {
  const code = (e as { code?: unknown }).code
  const msg = errorMessage(e)
  return typeof code === 'number' && code === 2 ? 'no such file or directory' : msg
}

function isNoSuchFile(e: unknown): boolean {
  return (e as { code?: unknown }).code === 2
}

function readPrivateKey(key: string | Buffer, passphrase: string | undefined): { data: Buffer, label: string } {
  let data: Buffer
  let label: string
  if (Buffer.isBuffer(key)) {
    data = key
    label = 'the given private key'
  } else {
    label = key
    try {
      data = fs.readFileSync(key)
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code
      throw new TessError(code === 'ENOENT' ? 'TESS_E_NOT_FOUND' : 'TESS_E_IO', `cannot read SSH private key "${key}": ${errorMessage(e)}`,
        'pass the private key file with --ssh-key PATH')
    }
  }
  const parsed = sshUtils.parseKey(data, passphrase)
  const err = parsed instanceof Error ? parsed : Array.isArray(parsed) && parsed[0] instanceof Error ? parsed[0] : undefined
  if (err) {
    const encrypted = /passphrase|encrypted/i.test(err.message)
    throw new TessError('TESS_E_AUTH', `cannot use SSH private key ${label === key ? `"${label}"` : label}: ${err.message}`,
      encrypted ? 'the key is encrypted: give its passphrase, or use a key without one (ssh-keygen -p to remove it)' : 'use an OpenSSH or PEM private key (ssh-keygen -t ed25519 makes one)')
  }
  const k = Array.isArray(parsed) ? parsed[0] : parsed
  if (k && typeof k === 'object' && 'isPrivateKey' in k && typeof k.isPrivateKey === 'function' && !k.isPrivateKey()) {
    throw new TessError('TESS_E_AUTH', `SSH key ${label === key ? `"${label}"` : label} is a public key`, 'pass the private key (the file without .pub)')
  }
  return { data, label }
}

// ------------------------------------------------------------------------------------ transport

/**
 * The known_hosts files a connection consults (under accept-new and ask, the record file too),
 * what they hold for this host, and the host key algorithms to ask the server for.
 */
function knownHostsFor(o: SshConnectOptions, host: string, port: number): {
  recordFile: string, files: string[], known: KnownHosts, knownKeys: KnownKey[], knownTypes: string[], algorithms: ServerHostKeyAlgorithm[]
} {
  const recordFile = o.recordKnownHostsFile ?? defaultKnownHostsFile()
  const files = o.knownHostsFile === undefined ? [recordFile] : typeof o.knownHostsFile === 'string' ? [o.knownHostsFile] : [...o.knownHostsFile]
  if (o.hostKeyPolicy !== 'strict' && !files.includes(recordFile)) files.push(recordFile)
  const known = KnownHosts.load(files)
  const knownKeys = known.knownKeys(host, port)
  const knownTypes = [...new Set(knownKeys.map((k) => k.keyType))]
  const algorithms = hostKeyAlgorithmsFor(knownTypes)
  return { recordFile, files, known, knownKeys, knownTypes, algorithms }
}

/** ssh2's options for a connection over `sock`: key authentication only, our own deadline, keepalives. */
function sshConnectConfig(o: SshConnectOptions, sock: net.Socket, privateKey: Buffer, hostVerifier: (blob: Buffer, verify: (ok: boolean) => void) => void,
  algorithms: ServerHostKeyAlgorithm[]): ConnectConfig {
  const cfg: ConnectConfig = {
    sock,
    username: o.username,
    privateKey,
    passphrase: o.passphrase,
    readyTimeout: 0, // our own deadline, paused while asking
    keepaliveInterval: sshKeepaliveIntervalMs,
    keepaliveCountMax: sshKeepaliveCountMax,
    hostVerifier,
    tryKeyboard: false,
  }
  if (algorithms.length > 0) cfg.algorithms = { serverHostKey: algorithms }
  return cfg
}

interface Pending { reject: (e: TessError) => void }

/** The deadline of an SSH handshake: it runs while we wait for the host, not while an operator answers a question. */
class HandshakeDeadline {
  private timer: NodeJS.Timeout | undefined
  private remainingMs: number
  private startedAt = 0

  constructor(timeoutMs: number, private readonly now: () => number, private readonly onExpire: () => void) {
    this.remainingMs = timeoutMs
  }

  get running(): boolean {
    return this.timer !== undefined
  }

  start(): void {
    this.startedAt = this.now()
    this.timer = setTimeout(this.onExpire, Math.max(0, this.remainingMs))
  }

  pause(): void {
    if (this.timer) clearTimeout(this.timer)
    this.timer = undefined
    this.remainingMs -= this.now() - this.startedAt
  }

  clear(): void {
    if (this.timer) clearTimeout(this.timer)
    this.timer = undefined
  }
}

interface HostKeyCheckOptions {
  label: string
  host: string
  port: number
  known: KnownHosts
  knownKeys: ReturnType<KnownHosts['knownKeys']>
  files: string[]
  recordFile: string
  policy: HostKeyPolicy
  ask: SshConnectOptions['ask']
  hashKnownHosts: boolean
}

/**
 * ssh2's host verifier for one connection: the known_hosts verdict under the policy (accept,
 * refuse, record, or ask the operator with the deadline paused), then, on a re-key, only the key
 * verified at connect. `failure` says why a key was refused; `offered` is the key the host showed.
 */
class HostKeyCheck {
  failure: TessError | undefined
  offered: { keyType: string, fingerprint: string } | undefined
  private verifiedBlob: Buffer | undefined

  constructor(private readonly o: HostKeyCheckOptions, private readonly deadline: HandshakeDeadline, private readonly settled: () => boolean) {}

  verify(blob: Buffer, verify: (ok: boolean) => void): void {
    const { label, host, port } = this.o
    // a re-key shows the host key again: the key verified at connect passes, any other fails
    if (this.verifiedBlob) {
      verify(this.verifiedBlob.equals(blob))
      return
    }
    const accept = (): void => {
      this.verifiedBlob = Buffer.from(blob)
      verify(true)
    }
    const refuse = (e: TessError): void => {
      this.failure = e
      verify(false)
    }
    let keyType: string
    try {
      keyType = keyTypeOfBlob(blob)
    } catch (e) {
      refuse(new TessError('TESS_E_AUTH', `${label} offered a malformed host key: ${errorMessage(e)}`, 'is this an SSH server?'))
      return
    }
    const fp = fingerprintSha256(blob)
    this.offered = { keyType, fingerprint: fp }
    const decision = hostKeyDecision({ label, host, port, keyType, fp, blob, known: this.o.known, knownKeys: this.o.knownKeys, policy: this.o.policy, files: this.o.files, recordFile: this.o.recordFile })
    if (decision.kind === 'accept') {
      accept()
      return
    }
    if (decision.kind === 'refuse') {
      refuse(decision.error)
      return
    }
    const record = async (): Promise<void> => {
      await appendKnownHost(this.o.recordFile, host, port, blob, { hash: this.o.hashKnownHosts })
    }
    if (decision.kind === 'record') {
      record().then(accept, (e: unknown) => {
        refuse(isTessError(e) ? e : new TessError('TESS_E_IO', `cannot record the host key of ${label} in "${this.o.recordFile}": ${errorMessage(e)}`, 'check the file and its directory'))
      })
      return
    }
    // ask: the time the operator takes does not count against the deadline
    this.deadline.pause()
    const askFn = this.o.ask!
    Promise.resolve()
      .then(() => askFn(label, fp, keyType))
      .then(async (ok) => {
        if (this.settled()) return
        this.deadline.start()
        if (!ok) {
          refuse(new TessError('TESS_E_AUTH', `refusing ${label}: its host key ${keyType} ${fp} was not accepted`, 'verify the fingerprint and accept it, or add it to known_hosts'))
          return
        }
        await record()
        accept()
      })
      .catch((e: unknown) => {
        if (this.settled()) return
        if (!this.deadline.running) this.deadline.start()
        refuse(isTessError(e) ? e : new TessError('TESS_E_AUTH', `refusing ${label}: asking about its host key failed: ${errorMessage(e)}`, 'add the key to known_hosts'))
      })
  }
}

export class SshTransport implements RemoteExec {
  private sftpChannel: Promise<SFTPWrapper> | undefined
  private readonly channels = new Semaphore(sshChannelsMax)
  private readonly pending = new Set<Pending>()
  private closedFlag = false
  private lastError: Error | undefined
  private closeWaiters: Array<() => void> = []

  private constructor(
    private readonly client: SshClient,
    private readonly sock: net.Socket,
    readonly host: string,
    readonly port: number,
    readonly username: string,
    /** the verified host key's type and SHA256 fingerprint */
    readonly hostKey: { keyType: string, fingerprint: string },
  ) {
    client.on('error', (e: Error) => { this.lastError = e })
    client.on('close', () => {
      this.closedFlag = true
      const err = this.lostError('the connection closed')
      for (const p of [...this.pending]) p.reject(err)
      this.pending.clear()
      for (const w of this.closeWaiters.splice(0)) w()
      sock.destroy()
    })
  }

  /** `host` or `host:port`, for messages */
  get label(): string {
    return this.port === 22 ? this.host : `${this.host}:${this.port}`
  }

  get connected(): boolean {
    return !this.closedFlag
  }

  /** Connect, verify the host key under the policy, authenticate with the key. */
  static async connect(o: SshConnectOptions): Promise<SshTransport> {
    const port = o.port ?? 22
    const host = o.host
    assert(host !== '', 'ssh host is not empty')
    assert(Number.isInteger(port) && port > 0 && port < 65536, 'ssh port is 1..65535')
    assert(o.hostKeyPolicy !== 'ask' || typeof o.ask === 'function', "hostKeyPolicy 'ask' comes with an ask function")
    const label = port === 22 ? host : `${host}:${port}`
    const timeoutMs = o.readyTimeoutMs ?? sshReadyTimeoutMsDefault
    const now = o.now ?? Date.now
    const key = readPrivateKey(o.privateKey, o.passphrase)

    const { recordFile, files, known, knownKeys, knownTypes, algorithms } = knownHostsFor(o, host, port)

    return new Promise<SshTransport>((resolve, reject) => {
      const sock = new net.Socket()
      const client = new Client()
      let settled = false
      const fail = (err: TessError): void => {
        if (settled) return
        settled = true
        deadline.clear()
        try {
          client.end()
        } catch { /* not connected */ }
        sock.destroy()
        // errors after this point (socket teardown) have a listener and go nowhere
        reject(err)
      }
      const deadline = new HandshakeDeadline(timeoutMs, now, () => {
        fail(new TessError('TESS_E_UNREACHABLE', `cannot connect to ${label} over SSH: no answer within ${timeoutMs} ms`,
          `is ${host} up and reachable, and is sshd listening on port ${port}?`))
      })
      const check = new HostKeyCheck({ label, host, port, known, knownKeys, files, recordFile, policy: o.hostKeyPolicy, ask: o.ask, hashKnownHosts: o.hashKnownHosts === true }, deadline, () => settled)
      const hostVerifier = (blob: Buffer, verify: (ok: boolean) => void): void => check.verify(blob, verify)
      const verifyFailure = (): TessError | undefined => check.failure

      const onSockError = (e: Error): void => fail(sshSocketError(e, label, host, port))
      const onClientError = (e: Error): void => fail(verifyFailure() ?? sshClientError(e, { label, host, port, username: o.username, keyLabel: key.label === o.privateKey ? `key "${key.label}"` : key.label, keyPath: typeof o.privateKey === 'string' ? o.privateKey : 'KEY', algorithms, knownTypes, knownKeys, recordFile }))
      const onClientClose = (): void => fail(verifyFailure() ?? new TessError('TESS_E_UNREACHABLE', `connection to ${label} closed during the SSH handshake`, `is sshd on ${host} accepting connections? its sshd log may say why`))
      sock.on('error', onSockError)
      client.on('error', onClientError)
      client.on('close', onClientClose)
      client.once('ready', () => {
        if (settled) {
          client.end()
          return
        }
        settled = true
        deadline.clear()
        client.removeListener('error', onClientError)
        client.removeListener('close', onClientClose)
        sock.removeListener('error', onSockError)
        sock.on('error', () => { /* reported by ssh2 as a client error */ })
        const offered = check.offered
        assert(offered !== undefined, 'host key was verified before ready')
        resolve(new SshTransport(client, sock, host, port, o.username, offered))
      })

      deadline.start()
      sock.connect({ host, port }, () => {
        if (settled) return
        const cfg = sshConnectConfig(o, sock, key.data, hostVerifier, algorithms)
        try {
          client.connect(cfg)
        } catch (e) {
          fail(new TessError('TESS_E_AUTH', `cannot start SSH to ${label}: ${errorMessage(e)}`, 'check the SSH key and options'))
        }
      })
    })
  }

  private lostError(what: string): TessError {
    const why = this.lastError ? `: ${this.lastError.message}` : ''
    return new TessError('TESS_E_UNREACHABLE', `connection to ${this.label} lost (${what}${why})`, `is ${this.host} still up? connect again to retry`)
  }

  private ensureOpen(): void {
    if (this.closedFlag) throw this.lostError('it is closed')
  }

  /** Run `fn` with a rejection hook that fires if the connection drops. */
  private guarded<T>(fn: (onLost: Pending) => Promise<T>): Promise<T> {
    this.ensureOpen()
    let p: Pending | undefined
    const lost = new Promise<never>((_, reject) => {
      p = { reject }
      this.pending.add(p)
    })
    return Promise.race([fn(p!), lost]).finally(() => {
      if (p) this.pending.delete(p)
    })
  }

  // ------------------------------------------------------------------------------------ exec

  /** Run a command; never throws on a non-zero exit (see execOk). */
  async exec(cmd: RemoteCommand, opts: SshExecOptions = {}): Promise<SshExecResult> {
    const command = commandString(cmd)
    const full = this.envPrefix(opts.env ?? {}) + command
    const timeoutMs = opts.timeoutMs ?? sshExecTimeoutMsDefault
    const max = opts.maxOutputBytes ?? sshExecOutputMaxBytes
    const release = await this.channels.acquire()
    try {
      return await this.guarded(() => this.execChannel(full, command, opts.input, timeoutMs, max))
    } finally {
      release()
    }
  }

  /** `export NAME='value'; ` for each variable, for the front of a command line; a name that is not one throws. */
  private envPrefix(env: Record<string, string>): string {
    let prefix = ''
    for (const [k, v] of Object.entries(env)) {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new TessError('TESS_E_INVALID', `bad environment variable name "${k}" for a command on ${this.label}`, 'use letters, digits and _')
      prefix += `export ${k}=${shellQuote(v)}; `
    }
    return prefix
  }

  /**
   * Run `full` (the command line; `command` is its part for messages) on one exec channel: its
   * output captured up to `max` bytes each, killed after `timeoutMs`, `input` written to its stdin.
   */
  private execChannel(full: string, command: string, input: SshExecOptions['input'], timeoutMs: number, max: number): Promise<SshExecResult> {
    return new Promise<SshExecResult>((resolve, reject) => {
      const out = new Capture(max, 'head')
      const err = new Capture(max, 'tail')
      let code: number | undefined
      let signal: string | undefined
      let done = false
      let stream: ClientChannel | undefined
      const timer = setTimeout(() => {
        if (done) return
        done = true
        try {
          stream?.signal('KILL')
          stream?.close()
        } catch { /* channel gone */ }
        reject(new TessError('TESS_E_TIMEOUT', `command on ${this.label} did not finish within ${timeoutMs} ms: ${shortCmd(command)}`,
          tailLines(err.text(), 3) || 'the command may be waiting for input or a lock'))
      }, timeoutMs)
      const finish = (f: () => void): void => {
        if (done) return
        done = true
        clearTimeout(timer)
        f()
      }
      try {
        this.client.exec(full, (e, s) => {
          if (e) {
            finish(() => reject(new TessError('TESS_E_UNREACHABLE', `cannot run a command on ${this.label}: ${e.message}`, `is sshd on ${this.host} limiting sessions (MaxSessions)?`)))
            return
          }
          stream = s
          if (done) {
            s.close()
            return
          }
          s.on('data', (d: Buffer) => out.push(d))
          s.stderr.on('data', (d: Buffer) => err.push(d))
          s.on('exit', (c: number | null, sig?: string) => {
            if (typeof c === 'number') code = c
            else {
              code = -1
              signal = sig
            }
          })
          s.on('close', () => {
            if (code === undefined) {
              finish(() => reject(this.lostError(`while running: ${shortCmd(command)}`)))
              return
            }
            finish(() => resolve({ code: code!, signal, stdout: out.text(), stderr: err.text(), truncated: out.truncated || err.truncated }))
          })
          s.on('error', () => { /* reported through close */ })
          if (input !== undefined) s.end(input)
          else s.end()
        })
      } catch (e) {
        finish(() => reject(this.lostError(errorMessage(e))))
      }
    })
  }

  /**
   * Read the remote clock `count` times through one channel running a loop that answers each line
   * with `date +%s%N`: a sample's round trip is the network plus one `date`, not a session start.
   */
  async clockSamples(count: number, localClock: () => number = Date.now): Promise<ClockSample[]> {
    assert(Number.isInteger(count) && count > 0 && count <= 100, 'clock samples 1..100')
    const release = await this.channels.acquire()
    try {
      return await this.guarded(() => new Promise<ClockSample[]>((resolve, reject) => {
        const samples: ClockSample[] = []
        let buf = ''
        let sentAt = 0
        let stream: ClientChannel | undefined
        const timer = setTimeout(() => {
          stream?.close()
          reject(new TessError('TESS_E_TIMEOUT', `reading the clock of ${this.label} took more than ${clockProbeTimeoutMs} ms`, `is ${this.host} overloaded?`))
        }, clockProbeTimeoutMs)
        const ask = (): void => {
          sentAt = localClock()
          stream!.write('\n')
        }
        try {
          this.client.exec('while read -r _; do date +%s%N; done', (e, s) => {
            if (e) {
              clearTimeout(timer)
              reject(new TessError('TESS_E_UNREACHABLE', `cannot read the clock of ${this.label}: ${e.message}`, `is sshd on ${this.host} limiting sessions (MaxSessions)?`))
              return
            }
            stream = s
            s.stderr.resume()
            s.on('data', (d: Buffer) => {
              buf += d.toString('latin1')
              let i: number
              while ((i = buf.indexOf('\n')) >= 0) {
                const line = buf.slice(0, i).trim()
                buf = buf.slice(i + 1)
                const receivedAt = localClock()
                if (!/^\d{10,}$/.test(line)) {
                  clearTimeout(timer)
                  s.close()
                  reject(new TessError('TESS_E_IO', `cannot read the clock of ${this.label}: date +%s%N printed "${line.slice(0, 40)}"`, 'is GNU date there (coreutils)?'))
                  return
                }
                const ns = BigInt(line)
                samples.push({ sentAtMs: sentAt, remoteMs: Number(ns / 1_000_000n) + Number(ns % 1_000_000n) / 1e6, receivedAtMs: receivedAt })
                if (samples.length >= count) {
                  clearTimeout(timer)
                  s.end()
                  s.close()
                  resolve(samples)
                  return
                }
                ask()
              }
            })
            s.on('close', () => {
              clearTimeout(timer)
              if (samples.length < count) reject(this.lostError('while reading the clock'))
            })
            s.on('error', () => { /* reported through close */ })
            ask()
          })
        } catch (e) {
          clearTimeout(timer)
          reject(this.lostError(errorMessage(e)))
        }
      }))
    } finally {
      release()
    }
  }

  /** Run a command and require exit 0; the error names the host, the command and stderr's tail. */
  async execOk(cmd: RemoteCommand, opts: SshExecOkOptions = {}): Promise<SshExecResult> {
    const r = await this.exec(cmd, opts)
    if (r.code !== 0) {
      const what = opts.what ?? shortCmd(commandString(cmd))
      const tail = tailLines(r.stderr, stderrTailLines) || tailLines(r.stdout, stderrTailLines)
      const status = r.signal ? `was killed by SIG${r.signal}` : `exited with ${r.code}`
      throw new TessError(opts.errorCode ?? 'TESS_E_IO', `on ${this.label}: ${what} ${status}${tail ? `:\n${tail}` : ''}`,
        opts.hint ?? `run it by hand to see more: ssh ${this.username}@${this.host}${this.port === 22 ? '' : ` -p ${this.port}`} ${shellQuote(shortCmd(commandString(cmd)))}`)
    }
    return r
  }

  // ------------------------------------------------------------------------------------ sftp

  private sftp(): Promise<SFTPWrapper> {
    this.ensureOpen()
    if (!this.sftpChannel) {
      this.sftpChannel = new Promise<SFTPWrapper>((resolve, reject) => {
        try {
          this.client.sftp((e, s) => {
            if (e) {
              reject(new TessError('TESS_E_PRECONDITION', `cannot start SFTP on ${this.label}: ${e.message}`, `enable the SFTP subsystem in ${this.host}'s sshd_config (Subsystem sftp internal-sftp)`))
              return
            }
            s.on('close', () => { this.sftpChannel = undefined })
            s.on('error', () => { /* per-request callbacks report */ })
            resolve(s)
          })
        } catch (e) {
          reject(this.lostError(errorMessage(e)))
        }
      })
      this.sftpChannel.catch(() => { this.sftpChannel = undefined })
    }
    return this.sftpChannel
  }

  private async sftpCall<T>(_what: string, fn: (s: SFTPWrapper, cb: (e: Error | undefined | null, v?: T) => void) => void): Promise<T> {
    const s = await this.sftp()
    return this.guarded(() => new Promise<T>((resolve, reject) => {
      try {
        fn(s, (e, v) => {
          if (e) reject(e)
          else resolve(v as T)
        })
      } catch (e) {
        reject(e)
      }
    }))
  }

  private ioError(action: string, remotePath: string, e: unknown): TessError {
    if (isTessError(e)) return e
    return new TessError('TESS_E_IO', `cannot ${action} ${this.label}:${remotePath}: ${sftpErrorText(e)}`, `check the path and permissions on ${this.host}`)
  }

  /** stat a remote path; undefined when it does not exist. */
  async stat(remotePath: string): Promise<Stats | undefined> {
    try {
      return await this.sftpCall<Stats>('stat', (s, cb) => s.stat(remotePath, cb))
    } catch (e) {
      if (isNoSuchFile(e)) return undefined
      throw this.ioError('stat', remotePath, e)
    }
  }

  private tempPathFor(remotePath: string): string {
    return path.posix.join(path.posix.dirname(remotePath), `.${path.posix.basename(remotePath)}.tess-tmp-${crypto.randomBytes(6).toString('hex')}`)
  }

  /** rename over an existing target: posix-rename@openssh.com, else `mv -f`. */
  private async renameOver(from: string, to: string): Promise<void> {
    try {
      await this.sftpCall<void>('rename', (s, cb) => s.ext_openssh_rename(from, to, (e) => cb(e)))
    } catch (e) {
      if (isTessError(e) && e.code === 'TESS_E_UNREACHABLE') throw e
      if (/not supported|unsupported/i.test(errorMessage(e))) {
        await this.execOk(['mv', '-f', '--', from, to], { what: `renaming ${from} to ${to}` })
        return
      }
      throw e
    }
  }

  private async unlinkQuiet(remotePath: string): Promise<void> {
    try {
      await this.sftpCall<void>('unlink', (s, cb) => s.unlink(remotePath, (e) => cb(e)))
    } catch { /* best effort */ }
  }

  /** Upload a local file (SFTP, temp name + rename: readers never see half a file). */
  async upload(localPath: string, remotePath: string, opts: SshUploadOptions = {}): Promise<{ sizeBytes: number }> {
    const mode = opts.mode ?? 0o644
    let size: number
    try {
      size = fs.statSync(localPath).size
    } catch (e) {
      throw new TessError('TESS_E_NOT_FOUND', `cannot upload "${localPath}" to ${this.label}: ${errorMessage(e)}`, 'check the local path')
    }
    const tmp = this.tempPathFor(remotePath)
    try {
      await this.sftpCall<void>('upload', (s, cb) => s.fastPut(localPath, tmp, {
        mode,
        step: (sent, _chunk, total) => opts.onProgress?.(sent, total),
      }, (e) => cb(e)))
      await this.sftpCall<void>('chmod', (s, cb) => s.chmod(tmp, mode, (e) => cb(e)))
      await this.renameOver(tmp, remotePath)
    } catch (e) {
      if (!this.closedFlag) await this.unlinkQuiet(tmp)
      throw this.ioError(`upload "${localPath}" to`, remotePath, e)
    }
    opts.onProgress?.(size, size)
    return { sizeBytes: size }
  }

  /** Write a remote file atomically (temp + fsync + rename) with `mode` (default 0600). */
  async writeFile(remotePath: string, data: string | Buffer, mode = 0o600): Promise<void> {
    const buf = typeof data === 'string' ? Buffer.from(data) : data
    const tmp = this.tempPathFor(remotePath)
    let handle: Buffer | undefined
    try {
      handle = await this.sftpCall<Buffer>('open', (s, cb) => s.open(tmp, 'wx', { mode }, cb))
      const h = handle
      for (let off = 0; off < buf.length; off += sftpWriteChunkBytes) {
        const len = Math.min(sftpWriteChunkBytes, buf.length - off)
        await this.sftpCall<void>('write', (s, cb) => s.write(h, buf, off, len, off, (e) => cb(e)))
      }
      await this.sftpCall<void>('fchmod', (s, cb) => s.fchmod(h, mode, (e) => cb(e)))
      try {
        await this.sftpCall<void>('fsync', (s, cb) => s.ext_openssh_fsync(h, (e) => cb(e)))
      } catch (e) {
        if (isTessError(e)) throw e // connection lost; an unsupported fsync extension is tolerated
      }
      handle = undefined
      await this.sftpCall<void>('close', (s, cb) => s.close(h, (e) => cb(e)))
      await this.renameOver(tmp, remotePath)
    } catch (e) {
      if (!this.closedFlag) {
        const h = handle
        if (h) await this.sftpCall<void>('close', (s, cb) => s.close(h, (err) => cb(err))).catch(() => undefined) // closing the remote file handle after an error that is thrown below
        await this.unlinkQuiet(tmp)
      }
      throw this.ioError('write', remotePath, e)
    }
  }

  /** Read a remote file (at most maxBytes, default 64 MiB). */
  async readFile(remotePath: string, opts: { maxBytes?: number } = {}): Promise<Buffer> {
    const max = opts.maxBytes ?? sshReadFileMaxBytesDefault
    const st = await this.stat(remotePath)
    if (!st) throw new TessError('TESS_E_NOT_FOUND', `cannot read ${this.label}:${remotePath}: no such file`, `check the path on ${this.host}`)
    if (!st.isFile()) throw new TessError('TESS_E_INVALID', `cannot read ${this.label}:${remotePath}: not a regular file`, `check the path on ${this.host}`)
    if (st.size > max) throw new TessError('TESS_E_INVALID', `cannot read ${this.label}:${remotePath}: ${st.size} bytes, more than the ${max} allowed`, 'read it in another way')
    try {
      const b = await this.sftpCall<Buffer>('readFile', (s, cb) => s.readFile(remotePath, cb))
      if (b.length > max) throw new TessError('TESS_E_INVALID', `cannot read ${this.label}:${remotePath}: it grew past ${max} bytes while read`, 'read it in another way')
      return b
    } catch (e) {
      throw this.ioError('read', remotePath, e)
    }
  }

  /** mkdir -p over SFTP; new directories get `mode` (default 0755). An existing non-directory is an error. */
  async mkdirp(remotePath: string, mode = 0o755): Promise<void> {
    assert(remotePath.startsWith('/'), 'mkdirp takes an absolute path')
    const parts = path.posix.normalize(remotePath).split('/').filter(Boolean)
    let cur = ''
    for (const p of parts) {
      cur += `/${p}`
      const st = await this.stat(cur)
      if (st) {
        if (!st.isDirectory()) throw new TessError('TESS_E_PRECONDITION', `cannot create directory ${this.label}:${remotePath}: ${cur} exists and is not a directory`, `remove or move ${cur} on ${this.host}`)
        continue
      }
      try {
        await this.sftpCall<void>('mkdir', (s, cb) => s.mkdir(cur, { mode }, (e) => cb(e)))
        await this.sftpCall<void>('chmod', (s, cb) => s.chmod(cur, mode, (e) => cb(e)))
      } catch (e) {
        const again = await this.stat(cur) // created by someone else meanwhile?
        if (again?.isDirectory()) continue
        throw this.ioError('create directory', cur, e)
      }
    }
  }

  /** Close the connection (idempotent); waits briefly for the socket to go, then destroys it. */
  async close(): Promise<void> {
    if (this.closedFlag) return
    const closed = new Promise<void>((r) => this.closeWaiters.push(r))
    try {
      this.client.end()
    } catch { /* already gone */ }
    const t = setTimeout(() => {
      this.sock.destroy()
      this.client.destroy()
    }, sshCloseTimeoutMs)
    await Promise.race([closed, new Promise<void>((r) => setTimeout(r, sshCloseTimeoutMs + 100))])
    clearTimeout(t)
    this.closedFlag = true
    this.sock.destroy()
  }
}
