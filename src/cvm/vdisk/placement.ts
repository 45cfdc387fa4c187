/**
 * Where new extent groups go, as this CVM sees it. The view holds the node, node status and disk
 * records of etcd and follows them with watches (a snapshot of each prefix, then every change
 * after it), so placement never decides from a cache that has not caught up. A placement that
 * finds too few healthy nodes waits (bounded by `placementWaitMs`) for them, re-reading etcd
 * directly meanwhile, and fails only when a fresh read still shows too few; its error names the
 * nodes that are up, the ones it could use and why each other one cannot be used.
 */
import type { Etcd3, IKeyValue, Watcher } from 'etcd3'
import { realClock, type Clock } from '../../lib/clock.js'
import { TessError, errorMessage } from '../../lib/errors.js'
import { keys } from '../../lib/etcd.js'
import { placementRecheckMs, placementWaitMs } from '../../lib/limits.js'
import type { Logger } from '../../lib/log.js'
import type { DiskRecord, NodeRecord, NodeStatusRecord, PlacementInfo, PlacementNodeInfo } from '../../lib/types.js'
import { DeviceError, nbdErrno } from '../nbd/device.js'
import { PeerError } from '../replication/protocol.js'

/** The records placement decides from. */
export interface ViewRecords {
  /** node records by node name */
  nodes: Map<string, NodeRecord>
  /** status records by node name; one exists while the node's CVM holds its lease */
  statuses: Map<string, NodeStatusRecord>
  /** disk records by disk id */
  disks: Map<string, DiskRecord>
}

export type ViewKind = keyof ViewRecords
type ViewValue<K extends ViewKind> = ViewRecords[K] extends Map<string, infer V> ? V : never

export const viewKinds: readonly ViewKind[] = ['nodes', 'statuses', 'disks']
export const viewPrefixes: Record<ViewKind, string> = { nodes: keys.nodesPrefix, statuses: keys.nodeStatusPrefix, disks: keys.disksPrefix }

export function emptyRecords(): ViewRecords {
  return { nodes: new Map(), statuses: new Map(), disks: new Map() }
}

/** A node left out of a placement by the caller, and why (for the error message). */
export interface Exclusion {
  reason: string
  /** left out because none of its disks has room: a shortfall made only of these is ENOSPC */
  noSpace?: boolean
}

/** Every node's standing for placement, as the CVM of `self` sees it (sorted by name). */
export function describeNodes(r: ViewRecords, self: string): PlacementNodeInfo[] {
  const names = new Set([...r.nodes.keys(), ...r.statuses.keys()])
  const diskCount = new Map<string, number>()
  for (const d of r.disks.values()) diskCount.set(d.node, (diskCount.get(d.node) ?? 0) + 1)
  return [...names].sort().map((name) => {
    const rec = r.nodes.get(name)
    const st = r.statuses.get(name)
    const up = name === self || st !== undefined
    const draining = rec?.draining === true
    const disks = diskCount.get(name) ?? 0
    const freeBytes = st ? Object.values(st.disks).reduce((a, d) => a + d.freeBytes, 0) : 0
    let reason: string | null = null
    if (!rec) reason = 'not a member of the cluster: no node record'
    else if (!up) reason = 'down: no status record, its CVM is not running or its lease expired'
    else if (draining) reason = 'draining: being removed'
    else if (disks === 0) reason = 'no disk registered'
    const disksOnline = st ? Object.keys(st.disks).length : 0
    return { name, up, draining, disks, disksOnline, freeBytes, placeable: reason === null, reason }
  })
}

/**
 * Up to `rf` distinct nodes for a new extent group: this node first (reads stay local), then the
 * others with the most free space.
 */
export function pickNodes(nodes: PlacementNodeInfo[], rf: number, self: string, exclude: ReadonlyMap<string, Exclusion> = new Map()): string[] {
  const ok = nodes.filter((n) => n.placeable && !exclude.has(n.name))
  const here = ok.filter((n) => n.name === self)
  const others = ok.filter((n) => n.name !== self).sort((a, b) => b.freeBytes - a.freeBytes || a.name.localeCompare(b.name))
  return [...here, ...others].slice(0, rf).map((n) => n.name)
}

/** Too few nodes for a placement: TESS_E_TOO_FEW_NODES (EIO), or TESS_E_CAPACITY (ENOSPC) when only full disks are missing. */
export class PlacementError extends TessError {
  constructor(message: string, hint: string, readonly noSpace: boolean) {
    super(noSpace ? 'TESS_E_CAPACITY' : 'TESS_E_TOO_FEW_NODES', message, hint)
    this.name = 'PlacementError'
  }
}

/**
 * The errno an NBD client gets when no extent group could be made for its write: ENOSPC only when
 * disks are full (TESS_E_CAPACITY), EIO for everything else, including too few healthy nodes (the
 * pool has room: a "disk full" would mislead a filesystem into thinking it does not).
 */
export function placementErrno(e: unknown): number {
  if (e instanceof DeviceError) return e.errno
  if (e instanceof TessError && e.code === 'TESS_E_CAPACITY') return nbdErrno.ENOSPC
  if (e instanceof PeerError && e.errno === nbdErrno.ENOSPC) return nbdErrno.ENOSPC
  if ((e as NodeJS.ErrnoException | undefined)?.code === 'ENOSPC') return nbdErrno.ENOSPC
  return nbdErrno.EIO
}

/** Did a disk pick (local, or a peer's over the data port) fail because no disk has room? */
export function isNoSpace(e: unknown): boolean {
  return placementErrno(e) === nbdErrno.ENOSPC
}

function shortfall(nodes: PlacementNodeInfo[], picked: string[], rf: number, exclude: ReadonlyMap<string, Exclusion>, what: string, waitedMs: number): PlacementError {
  const up = nodes.filter((n) => n.up).map((n) => n.name)
  const unusable = nodes.filter((n) => !picked.includes(n.name)).map((n) => `${n.name} (${exclude.get(n.name)?.reason ?? n.reason ?? 'not needed'})`)
  const full = [...exclude.values()].filter((x) => x.noSpace).length
  const noSpace = full > 0 && picked.length + full >= rf
  const msg = `${what} needs ${rf} healthy node${rf === 1 ? '' : 's'}, ${picked.length} available (${picked.join(', ') || 'none'})` +
    `${waitedMs > 0 ? ` after waiting ${waitedMs} ms` : ''}; nodes up: ${up.join(', ') || 'none'}; not usable: ${unusable.join(', ') || 'none'}`
  const hint = noSpace ? 'add disks with `tess disk add`, or free space' : 'bring the nodes that are down back (see `tess cluster status`), register disks on them (`tess disk add`), or add nodes (`tess host add`)'
  return new PlacementError(msg, hint, noSpace)
}

export interface PlacementViewOptions {
  /** this node's name */
  self: string
  log: Logger
  /** a direct read of every record (fresh from etcd), used while a placement waits */
  read: () => Promise<ViewRecords>
  clock?: Clock
  waitMs?: number
  recheckMs?: number
}

/**
 * This CVM's view of nodes and disks. Filled and kept current by an `EtcdViewFollower` (or by a
 * test through reset/put/delete). Per key it keeps the revision of the last change applied, so a
 * re-read snapshot never undoes a newer change that a watch delivered first.
 */
export class PlacementView {
  private readonly records = emptyRecords()
  /** revision of the last change applied per `kind/key` (deleted keys included) */
  private readonly revisions = new Map<string, number>()
  private readonly synced = new Set<ViewKind>()
  private waiters: Array<() => void> = []
  private readonly clock: Clock
  private readonly waitMs: number
  private readonly recheckMs: number
  /** called when a direct read of etcd found this view behind (the follower re-reads its snapshots) */
  onStale: (() => void) | undefined

  constructor(private readonly opts: PlacementViewOptions) {
    this.clock = opts.clock ?? realClock
    this.waitMs = opts.waitMs ?? placementWaitMs
    this.recheckMs = opts.recheckMs ?? placementRecheckMs
  }

  /** The deadline of a placement that starts now. */
  deadlineFromNow(): number {
    return this.clock.now() + this.waitMs
  }

  /** Every watch is connected and its snapshot read. */
  get watching(): boolean {
    return viewKinds.every((k) => this.synced.has(k))
  }

  setSynced(kind: ViewKind, on: boolean): void {
    if (on) this.synced.add(kind)
    else this.synced.delete(kind)
  }

  /** Replace one kind of record with a snapshot read at `revision` (changes newer than it are kept). */
  reset<K extends ViewKind>(kind: K, entries: Map<string, ViewValue<K>>, revision: number): void {
    const map = this.records[kind] as Map<string, ViewValue<K>>
    const names = new Set([...map.keys(), ...entries.keys()])
    for (const k of [...this.revisions.keys()]) if (k.startsWith(`${kind}/`)) names.add(k.slice(kind.length + 1))
    for (const name of names) {
      const id = `${kind}/${name}`
      if ((this.revisions.get(id) ?? 0) > revision) continue
      const v = entries.get(name)
      if (v === undefined) map.delete(name)
      else map.set(name, v)
      this.revisions.delete(id)
    }
    this.notify()
  }

  put<K extends ViewKind>(kind: K, name: string, value: ViewValue<K>, revision: number): void {
    const id = `${kind}/${name}`
    if ((this.revisions.get(id) ?? 0) >= revision) return
    this.revisions.set(id, revision);
    (this.records[kind] as Map<string, ViewValue<K>>).set(name, value)
    this.notify()
  }

  delete(kind: ViewKind, name: string, revision: number): void {
    const id = `${kind}/${name}`
    if ((this.revisions.get(id) ?? 0) >= revision) return
    this.revisions.set(id, revision)
    this.records[kind].delete(name)
    this.notify()
  }

  private notify(): void {
    const w = this.waiters
    this.waiters = []
    for (const f of w) f()
  }

  /** Resolves at the next change of the view. */
  changed(): Promise<void> {
    return new Promise((r) => this.waiters.push(r))
  }

  nodes(): PlacementNodeInfo[] {
    return describeNodes(this.records, this.opts.self)
  }

  /** This CVM's readiness to place an extent group at RF `rf` (GET /v1/placement). */
  info(rf: number): PlacementInfo {
    const nodes = this.nodes()
    const placeable = pickNodes(nodes, nodes.length, this.opts.self)
    return { node: this.opts.self, rf, ready: placeable.length >= rf, placeable, nodes, watching: this.watching }
  }

  /**
   * RF distinct nodes for a new extent group (or for `rf` replacement replicas). When the view has
   * too few, wait until `deadline` (default: now + placementWaitMs) for enough: woken by every change
   * the watches bring, and re-reading etcd directly every `placementRecheckMs`. Fails with a
   * PlacementError decided on a fresh read, never on the view alone.
   */
  async place(rf: number, opts: { what: string, exclude?: ReadonlyMap<string, Exclusion>, deadline?: number }): Promise<string[]> {
    const exclude = opts.exclude ?? new Map<string, Exclusion>()
    let nodes = this.nodes()
    let picked = pickNodes(nodes, rf, this.opts.self, exclude)
    if (picked.length >= rf) return picked
    const start = this.clock.now()
    const deadline = opts.deadline ?? start + this.waitMs
    this.opts.log.warn(`${opts.what}: ${picked.length} of ${rf} nodes available (${picked.join(', ') || 'none'}); waiting up to ${Math.max(0, deadline - start)} ms for more`)
    for (;;) {
      // Decide on a fresh read: the view may lag etcd (a watch reconnecting).
      try {
        const fresh = describeNodes(await this.opts.read(), this.opts.self)
        const again = pickNodes(fresh, rf, this.opts.self, exclude)
        if (again.length > pickNodes(this.nodes(), rf, this.opts.self, exclude).length) {
          this.opts.log.warn(`${opts.what}: the placement view was behind etcd; re-reading it`)
          this.onStale?.()
        }
        nodes = fresh
        picked = again
      } catch (e) {
        this.opts.log.warn(`${opts.what}: cannot read etcd (${errorMessage(e)}); deciding from the watched view`)
        nodes = this.nodes()
        picked = pickNodes(nodes, rf, this.opts.self, exclude)
      }
      if (picked.length >= rf) {
        this.opts.log.info(`${opts.what}: placed on ${picked.join(', ')} after waiting ${this.clock.now() - start} ms`)
        return picked
      }
      const left = deadline - this.clock.now()
      if (left <= 0) {
        const err = shortfall(nodes, picked, rf, exclude, opts.what, this.clock.now() - start)
        this.opts.log.error(err.message)
        throw err
      }
      await Promise.race([this.changed(), this.clock.sleep(Math.min(this.recheckMs, left))])
      // a change: the view may have enough now (no read needed)
      nodes = this.nodes()
      picked = pickNodes(nodes, rf, this.opts.self, exclude)
      if (picked.length >= rf) {
        this.opts.log.info(`${opts.what}: placed on ${picked.join(', ')} after waiting ${this.clock.now() - start} ms`)
        return picked
      }
    }
  }
}

function parse<T>(kv: IKeyValue): T | undefined {
  try {
    return JSON.parse(kv.value.toString()) as T
  } catch {
    return undefined
  }
}

/** Read every record placement needs, straight from etcd. */
export async function readViewRecords(etcd: Etcd3): Promise<ViewRecords> {
  const out = emptyRecords()
  await Promise.all(viewKinds.map(async (kind) => {
    const res = await etcd.getAll().prefix(viewPrefixes[kind]).exec()
    for (const kv of res.kvs) {
      const v = parse<never>(kv)
      if (v !== undefined) (out[kind] as Map<string, unknown>).set(kv.key.toString().slice(viewPrefixes[kind].length), v)
    }
  }))
  return out
}

/** how long a failed watch waits before it is set up again */
const rewatchDelayMs = 1000

/**
 * Keeps a PlacementView in step with etcd: per prefix, a snapshot (its revision R), then a watch
 * from R+1. After a watch reconnects, the snapshot is read again (the per-key revisions make that
 * safe); a watch etcd cancels (e.g. its revision was compacted) is set up again.
 */
export class EtcdViewFollower {
  private readonly watchers = new Map<ViewKind, Watcher>()
  private stopped = false

  constructor(private readonly etcd: Etcd3, private readonly view: PlacementView, private readonly log: Logger) {
    view.onStale = () => { for (const k of viewKinds) void this.resync(k) }
  }

  async start(): Promise<void> {
    await Promise.all(viewKinds.map((k) => this.follow(k)))
  }

  async stop(): Promise<void> {
    this.stopped = true
    const ws = [...this.watchers.values()]
    this.watchers.clear()
    await Promise.all(ws.map((w) => w.cancel().catch(() => undefined))) // stopping: a watch that cannot cancel ends with the client
  }

  private async snapshot(kind: ViewKind): Promise<number> {
    const prefix = viewPrefixes[kind]
    const res = await this.etcd.getAll().prefix(prefix).exec()
    const entries = new Map<string, never>()
    for (const kv of res.kvs) {
      const v = parse<never>(kv)
      if (v !== undefined) entries.set(kv.key.toString().slice(prefix.length), v)
    }
    const rev = Number(res.header.revision)
    this.view.reset(kind, entries, rev)
    return rev
  }

  private async resync(kind: ViewKind): Promise<void> {
    try {
      await this.snapshot(kind)
      if (this.watchers.has(kind)) this.view.setSynced(kind, true)
    } catch (e) {
      this.log.warn(`placement view: cannot re-read ${viewPrefixes[kind]}: ${errorMessage(e)}`)
    }
  }

  private async follow(kind: ViewKind): Promise<void> {
    const prefix = viewPrefixes[kind]
    const rev = await this.snapshot(kind)
    const w = await this.etcd.watch().prefix(prefix).startRevision(String(rev + 1)).create()
    if (this.stopped) {
      await w.cancel().catch(() => undefined) // stopped already: a watch that cannot cancel ends with the client
      return
    }
    this.watchers.set(kind, w)
    this.view.setSynced(kind, true)
    let lost = false
    const name = (kv: IKeyValue) => kv.key.toString().slice(prefix.length)
    w.on('put', (kv) => {
      const v = parse<never>(kv)
      if (v === undefined) this.log.warn(`placement view: unreadable record ${kv.key.toString()}`)
      else this.view.put(kind, name(kv), v, Number(kv.mod_revision))
    })
    w.on('delete', (kv) => this.view.delete(kind, name(kv), Number(kv.mod_revision)))
    w.on('disconnected', () => {
      lost = true
      this.view.setSynced(kind, false)
    })
    w.on('connected', () => {
      if (!lost) return
      lost = false
      this.log.info(`placement view: the watch of ${prefix} reconnected; re-reading it`)
      void this.resync(kind)
    })
    w.on('error', (e) => {
      if (this.stopped) return
      this.log.warn(`placement view: the watch of ${prefix} ended (${errorMessage(e)}); setting it up again`)
      this.view.setSynced(kind, false)
      this.watchers.delete(kind)
      void w.cancel().catch(() => undefined) // replaced: a watch that cannot cancel ends with the client
      void this.rewatch(kind)
    })
  }

  private async rewatch(kind: ViewKind): Promise<void> {
    while (!this.stopped) {
      await new Promise((r) => setTimeout(r, rewatchDelayMs))
      if (this.stopped) return
      try {
        await this.follow(kind)
        return
      } catch (e) {
        this.log.warn(`placement view: cannot watch ${viewPrefixes[kind]}: ${errorMessage(e)}`)
      }
    }
  }
}

/** A placement failure as the NBD client gets it: the errno of placementErrno, the message naming the nodes. */
export function placementDeviceError(e: unknown): DeviceError {
  return e instanceof DeviceError ? e : new DeviceError(placementErrno(e), errorMessage(e))
}
