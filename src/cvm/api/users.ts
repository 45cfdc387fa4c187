import crypto from 'node:crypto'
import type { Etcd3 } from 'etcd3'
import { TessError, errorMessage } from '../../lib/errors.js'
import { etcdCall, followEtcd, getJson, keys, listJson, trimOldest } from '../../lib/etcd.js'
import type { Logger } from '../../lib/log.js'
import { checkName } from '../../lib/names.js'
import { roles, type ApiServer, type AuditEntry, type Principal, type Role } from '../../lib/http-server.js'

/** users a cluster holds */
export const usersMax = 1000
/** changes the audit log keeps (the oldest go first) */
export const auditRecordsMax = 10_000
/** entries `tess audit list` returns at most at once */
export const auditListMax = 1000
/** audit writes of one CVM between two trims of the log to auditRecordsMax */
const auditTrimEvery = 100
/** how often a CVM reads the users besides watching them (a watch can be lost) */
export const usersRefreshMs = 5_000
/** random bytes of a user's token */
const tokenBytes = 32
/** names a user may not take: root is the cluster's bootstrap token */
const reservedNames = new Set(['root'])

export interface UserRecord {
  name: string
  role: Role
  /** hex SHA-256 of the token: the token itself is shown once, at create and rotate, and kept nowhere */
  tokenSha256: string
  createdAt: string
  rotatedAt: string | null
}

export type UserView = Omit<UserRecord, 'tokenSha256'>

export interface UserWithToken extends UserView {
  /** the user's bearer token: shown this once */
  token: string
}

function view(r: UserRecord): UserView {
  return { name: r.name, role: r.role, createdAt: r.createdAt, rotatedAt: r.rotatedAt }
}

function newToken(): { token: string, sha256: string } {
  const token = `tess_${crypto.randomBytes(tokenBytes).toString('base64url')}`
  return { token, sha256: crypto.createHash('sha256').update(token).digest('hex') }
}

function checkRole(role: unknown): Role {
  if (typeof role !== 'string' || !(roles as readonly string[]).includes(role)) {
    throw new TessError('TESS_E_INVALID', `unknown role "${String(role).slice(0, 40)}"`, `one of ${roles.join(', ')}`)
  }
  return role as Role
}

function checkUserName(name: unknown, allowRoot = false): string {
  const n = checkName('user', String(name ?? ''))
  if (reservedNames.has(n) && !allowRoot) throw new TessError('TESS_E_INVALID', `the user name "${n}" is reserved (the cluster's bootstrap token)`, n === 'root' ? 'choose another name; `tess user rotate root` replaces the bootstrap token' : 'choose another name')
  return n
}

/**
 * The cluster's users (operators), in etcd under /tess/users/: a name, a role and the SHA-256 of
 * a token. Every CVM keeps them in memory by token hash, following etcd by a watch (and a read
 * every few seconds in case the watch is lost): a rotated or deleted token is refused by every
 * node within that time, without a restart.
 */
export class UserDirectory {
  private byHash = new Map<string, Principal>()
  private rootStored = false
  private follower: { stop(): void } | undefined

  constructor(private readonly etcd: Etcd3, private readonly log: Logger) {}

  /** the principal whose token hashes to `sha256`, if any */
  lookup(sha256: Buffer): Principal | undefined {
    return this.byHash.get(sha256.toString('hex'))
  }

  /**
   * Whether user root is in etcd: once `tess user rotate root` ran, its record holds root's token
   * and the bootstrap token in the nodes' pki/api-token is no longer accepted.
   */
  get rootRotated(): boolean {
    return this.rootStored
  }

  async refresh(): Promise<void> {
    const recs = await etcdCall('read the users', () => listJson<UserRecord>(this.etcd, keys.usersPrefix))
    const next = new Map<string, Principal>()
    for (const r of recs) next.set(r.tokenSha256, { kind: 'user', name: r.name, role: r.role })
    this.byHash = next
    this.rootStored = recs.some((r) => r.name === 'root')
  }

  start(): void {
    this.follower = followEtcd(this.etcd, { prefix: keys.usersPrefix }, { what: 'users', log: this.log, pollMs: usersRefreshMs }, () => this.refresh())
  }

  stop(): void {
    this.follower?.stop()
  }

  async list(): Promise<UserView[]> {
    const recs = await etcdCall('read the users', () => listJson<UserRecord>(this.etcd, keys.usersPrefix))
    return recs.map(view).sort((a, b) => a.name.localeCompare(b.name))
  }

  async create(nameIn: unknown, roleIn: unknown): Promise<UserWithToken> {
    const name = checkUserName(nameIn)
    const role = checkRole(roleIn)
    const count = (await this.list()).length
    if (count >= usersMax) throw new TessError('TESS_E_CAPACITY', `cannot create user "${name}": the cluster has ${usersMax} users already`, 'delete users no one uses')
    const t = newToken()
    const rec: UserRecord = { name, role, tokenSha256: t.sha256, createdAt: new Date().toISOString(), rotatedAt: null }
    const res = await etcdCall('store the user', () => this.etcd.if(keys.user(name), 'Create', '==', 0).then(this.etcd.put(keys.user(name)).value(JSON.stringify(rec))).commit())
    if (!res.succeeded) throw new TessError('TESS_E_EXISTS', `cannot create user "${name}": a user of that name exists`, `tess user rotate ${name} gives it a new token`)
    await this.refresh().catch(() => undefined) // the change is in etcd; the watch and the poll bring it if this read fails
    return { ...view(rec), token: t.token }
  }

  /**
   * A new token for the user; the old one is refused from now on (by every node within seconds).
   * root too: its first rotation stores it in etcd like any user, and from then on the bootstrap
   * token is refused.
   */
  async rotate(nameIn: unknown): Promise<UserWithToken> {
    const name = checkUserName(nameIn, true)
    const t = newToken()
    const now = new Date().toISOString()
    const rec = name === 'root' ? await etcdCall('read the user', () => getJson<UserRecord>(this.etcd, keys.user(name))) : await this.get(name)
    const next: UserRecord = rec !== undefined
      ? { ...rec, tokenSha256: t.sha256, rotatedAt: now }
      : { name, role: 'admin', tokenSha256: t.sha256, createdAt: now, rotatedAt: now }
    const cmp = rec !== undefined
      ? this.etcd.if(keys.user(name), 'Value', '==', JSON.stringify(rec))
      : this.etcd.if(keys.user(name), 'Create', '==', 0)
    const res = await etcdCall('store the user', () => cmp.then(this.etcd.put(keys.user(name)).value(JSON.stringify(next))).commit())
    if (!res.succeeded) throw new TessError('TESS_E_CONFLICT', `cannot rotate the token of user "${name}": it changed meanwhile`, 'run the command again')
    await this.refresh().catch(() => undefined) // the change is in etcd; the watch and the poll bring it if this read fails
    return { ...view(next), token: t.token }
  }

  async delete(nameIn: unknown): Promise<UserView> {
    const name = checkUserName(nameIn)
    const rec = await this.get(name)
    await etcdCall('delete the user', () => this.etcd.delete().key(keys.user(name)))
    await this.refresh().catch(() => undefined) // the change is in etcd; the watch and the poll bring it if this read fails
    return view(rec)
  }

  private async get(name: string): Promise<UserRecord> {
    const rec = await etcdCall('read the user', () => getJson<UserRecord>(this.etcd, keys.user(name)))
    if (rec === undefined) throw new TessError('TESS_E_NOT_FOUND', `no user named "${name}"`, 'see `tess user list`')
    return rec
  }
}

/**
 * The audit log: every change made through the API (who, what, when, and how it ended), refused
 * ones included, in etcd under /tess/audit/, so any node shows the whole cluster's. Bounded to
 * auditRecordsMax entries. Writing it never fails a request: a failed write is logged.
 */
export class AuditLog {
  private seq = 0
  private written = 0
  private trimming: Promise<void> | undefined

  constructor(private readonly etcd: Etcd3, private readonly node: string, private readonly log: Logger) {}

  record(e: AuditEntry): void {
    const key = `${keys.auditPrefix}${e.at}-${this.node}-${(this.seq++).toString().padStart(8, '0')}`
    void etcdCall('write the audit log', () => this.etcd.put(key).value(JSON.stringify(e))).then(() => {
      if (++this.written % auditTrimEvery === 0) this.trimming ??= this.trim().finally(() => { this.trimming = undefined })
    }, (err: unknown) => this.log.warn(`audit: cannot record ${e.who} ${e.method} ${e.path} (${e.status}): ${errorMessage(err)}`))
  }

  /** the newest `limit` entries, newest first; `who` keeps one user's */
  async list(limit: number, who?: string): Promise<AuditEntry[]> {
    const all = await etcdCall('read the audit log', () => this.etcd.getAll().prefix(keys.auditPrefix).sort('Key', 'Descend').limit(who === undefined ? limit : auditRecordsMax).strings())
    const out: AuditEntry[] = []
    for (const v of Object.values(all)) {
      const e = JSON.parse(v) as AuditEntry
      if (who !== undefined && e.who !== who) continue
      out.push(e)
      if (out.length >= limit) break
    }
    return out.sort((a, b) => b.at.localeCompare(a.at))
  }

  /** drop the oldest entries beyond auditRecordsMax */
  private async trim(): Promise<void> {
    await trimOldest(this.etcd, keys.auditPrefix, auditRecordsMax).catch((e: unknown) => this.log.warn(`audit: cannot trim the log: ${errorMessage(e)}`))
  }
}

/** The API of users (admin) and of the audit log (admin). */
export function registerUserRoutes(api: ApiServer, users: UserDirectory, audit: AuditLog): void {
  api.route('GET', '/v1/users', async () => users.list(), 'admin')
  api.route('POST', '/v1/users', async (req) => {
    const b = (req.body ?? {}) as { name?: unknown, role?: unknown }
    return users.create(b.name, b.role)
  }, 'admin')
  api.route('POST', '/v1/users/:name/rotate', async (req) => users.rotate(req.params.name), 'admin')
  api.route('DELETE', '/v1/users/:name', async (req) => users.delete(req.params.name), 'admin')
  api.route('GET', '/v1/audit', async (req) => {
    const raw = req.query.get('limit') ?? '50'
    const limit = Number(raw)
    if (!Number.isSafeInteger(limit) || limit < 1 || limit > auditListMax) {
      throw new TessError('TESS_E_INVALID', `bad limit "${raw.slice(0, 20)}"`, `a whole number from 1 to ${auditListMax}`)
    }
    const who = req.query.get('user') ?? undefined
    return audit.list(limit, who)
  }, 'admin')
}
