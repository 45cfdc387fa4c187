import type { Campaign, Election, Etcd3, Watcher } from 'etcd3'
import { realClock, type Clock } from '../../lib/clock.js'
import { errorMessage } from '../../lib/errors.js'
import type { EventSink, NewEvent } from '../../lib/event-types.js'
import { etcdCall, getJson, keys, listJson } from '../../lib/etcd.js'
import { curatorCampaignRetryMs, curatorElectionTtlSec, curatorNodeDownGraceMs, curatorScanIntervalMs, gcIntervalMs, gcMinAgeMs, scrubBytesPerSecDefault, scrubIntervalMs } from '../../lib/limits.js'
import type { Logger } from '../../lib/log.js'
import type { BalanceMoved, CsmFailover, CuratorConfig, CuratorStatus, GcFound, NodeRecord, ReplicaMove, ScrubFound, VdiskRecord } from '../../lib/types.js'
import type { ScrubResult } from '../vdisk/vdisk.js'
import type { EgroupRecord } from '../vdisk/owner.js'
import { planBalance } from './balance.js'
import { assessHealth, liveness, replicaUp, upNodes, type Liveness } from './health.js'
import { readSettings } from './settings.js'

/** a failed repair is tried again after this */
const curatorRetryMs = 5000
/** the newest failovers kept in the status */
const curatorFailoversKept = 20
/** after a balancing pass that moved replicas, the next scan (and pass) comes this soon */
const balanceRescanMs = 1000
/** replica moves per vdisk.move call: between calls the pass stops when a scan was asked for */
const balanceMovesPerCall = 8

/** what the master asks of a vDisk's owner (through the node operation vdisk.repair) */
export type RepairCall = (node: string, id: string, down: string[], bytesPerSec?: number, lostDisks?: string[]) => Promise<{ egroups: number, bytes: number }>

export interface CuratorOptions {
  nodeName: string
  log: Logger
  /** run one vDisk's repair at `node` (this node: in this process) */
  repair: RepairCall
  /** resolves at the next change of the nodes this CVM follows (the placement view): a scan may be due */
  nodesChanged: () => Promise<void>
  /** the nodes in that view, whether each is up, and its disks registered and reported (a change of any starts a scan: a node or disk lost, back, added or removed) */
  nodesUp: () => Array<{ name: string, up: boolean, disks?: number, disksOnline?: number }>
  /** the container failover (control/csms.ts): called with the nodes down for longer than the grace */
  failover?: (down: string[]) => Promise<CsmFailover[]>
  /** run one vDisk's scrub at `node` at most bytesPerSec (node operation vdisk.scrub) */
  scrub?: (node: string, id: string, bytesPerSec: number) => Promise<ScrubResult>
  /** the time between full scrubs (default scrubIntervalMs) */
  scrubIntervalMs?: number
  /** run the garbage collection of `node`'s disks (node operation pool.gc): after a scan, every gcIntervalMs */
  collectGarbage?: (node: string, minAgeMs: number) => Promise<GcFound>
  /** move replicas of one vDisk to other disks at `node` (node operation vdisk.move): the disk balancing */
  move?: (node: string, id: string, moves: ReplicaMove[], bytesPerSec?: number) => Promise<{ egroups: number, bytes: number, skipped: number }>
  /** default gcIntervalMs, gcMinAgeMs */
  gcIntervalMs?: number
  gcMinAgeMs?: number
  clock?: Clock
  nodeDownGraceMs?: number
  scanIntervalMs?: number
  electionTtlSec?: number
  /** where the master reports what it saw and did (`tess events`): nodes and disks lost and back, repairs, failovers, scrubs */
  events?: EventSink
}

/** A vDisk with extent groups to re-protect, and the nodes whose replicas are to be replaced. */
export interface RepairWork {
  vdisk: VdiskRecord
  /** the nodes down for longer than the grace that hold replicas of its groups */
  down: string[]
  /** the disks (ids) offline for longer than the grace, on nodes that are up, that hold replicas of its groups */
  lostDisks: string[]
  egroups: number
}

/**
 * The extent groups that need copies now, per vDisk: those with a replica on a node down for
 * longer than the grace (`due`) or on a node that is no longer a member (removed while down), and
 * those with fewer than RF replicas (they went on degraded). Groups with no replica on a node that
 * is up are left alone (nothing to copy from).
 */
export function repairWork(vdisks: VdiskRecord[], egroups: EgroupRecord[], live: Liveness, due: ReadonlySet<string>, members: ReadonlySet<string>, dueDisks: ReadonlySet<string> = new Set()): RepairWork[] {
  const byId = new Map(vdisks.filter((v) => v.state === 'ready').map((v) => [v.id, v]))
  const work = new Map<string, RepairWork>()
  for (const eg of egroups) {
    const v = byId.get(eg.vdiskId)
    if (v === undefined) continue
    if (!eg.replicas.some((r) => replicaUp(live, r))) continue
    const onDue = eg.replicas.filter((r) => due.has(r.node) || !members.has(r.node)).map((r) => r.node)
    const onLostDisk = eg.replicas.filter((r) => dueDisks.has(r.diskId) && !due.has(r.node)).map((r) => r.diskId)
    if (onDue.length === 0 && onLostDisk.length === 0 && eg.replicas.length >= v.rf) continue
    let w = work.get(v.id)
    if (w === undefined) work.set(v.id, w = { vdisk: v, down: [], lostDisks: [], egroups: 0 })
    w.egroups++
    for (const n of onDue) if (!w.down.includes(n)) w.down.push(n)
    for (const d of onLostDisk) if (!w.lostDisks.includes(d)) w.lostDisks.push(d)
  }
  return [...work.values()].sort((a, b) => a.vdisk.name.localeCompare(b.vdisk.name))
}

/**
 * The curator: every CVM campaigns in an etcd election; the one elected (the master) scans every
 * extent group on a schedule and whenever the set of nodes that are up changes, and has each
 * under-replicated vDisk repaired by its owner (or by itself when nobody owns it), with no client
 * I/O needed. A node that is down is given a grace period before its replicas are copied elsewhere.
 * The master writes what it found and did to /tess/curator/status after every scan. When the
 * master's node dies its election lease expires and another CVM's campaign wins.
 */
export class Curator {
  private readonly clock: Clock
  /** the default grace (opts, else curatorNodeDownGraceMs); /tess/curator/config may set another */
  private readonly defaultGraceMs: number
  private graceMs: number
  /** the repair's rate from /tess/curator/config (undefined: no limit) */
  private repairBytesPerSec: number | undefined
  private readonly intervalMs: number
  private election: Election | undefined
  /** while master: the watch of /tess/curator/config (a change of the settings scans at once) */
  private settingsWatch: Promise<Watcher | undefined> | undefined
  private campaign: Campaign | undefined
  private leading = false
  private stopped = false
  private timer: NodeJS.Timeout | undefined
  private scanning: Promise<void> | undefined
  private again = false
  /** when the scan that runs wants the next one (a node's grace ends, a repair to retry) */
  private nextDelayMs = 0
  /** per vDisk, why its last repair failed: a repair that keeps failing (tried every 5 s) is one event until it succeeds or fails otherwise */
  private readonly repairFailing = new Map<string, string>()
  /** ... and per CSM, why its failover could not move it */
  private readonly failoverFailing = new Map<string, string>()
  /** when this master first saw each node down */
  private readonly downSince = new Map<string, number>()
  /** ... and each disk offline (on a node that is up) */
  private readonly diskDownSince = new Map<string, number>()
  /** `node:path` of the disks seen offline (the subject of their events, also once they are back) */
  private readonly diskNames = new Map<string, string>()
  /** the nodes (and which are up) as the view showed them at the last check */
  private lastSeen = ''
  private status: CuratorStatus | undefined
  private scrubbing: Promise<void> | undefined
  private scrubTimer: NodeJS.Timeout | undefined
  /** the next garbage collection is due at the first scan from this time (0: the first scan of this master) */
  private gcDueAt = 0

  constructor(private readonly etcd: Etcd3, private readonly opts: CuratorOptions) {
    this.clock = opts.clock ?? realClock
    this.defaultGraceMs = opts.nodeDownGraceMs ?? curatorNodeDownGraceMs
    this.graceMs = this.defaultGraceMs
    this.intervalMs = opts.scanIntervalMs ?? curatorScanIntervalMs
  }

  /** Join the election (under /tess/election/curator/). */
  start(): void {
    this.election = this.etcd.namespace('/tess/').election('curator', this.opts.electionTtlSec ?? curatorElectionTtlSec)
    this.campaignOnce()
  }

  /** the node whose CVM is master now, from the election */
  async master(): Promise<string | undefined> {
    return this.election?.leader()
  }

  get isMaster(): boolean {
    return this.leading
  }

  private campaignOnce(): void {
    if (this.stopped || this.election === undefined) return
    const c = this.election.campaign(this.opts.nodeName)
    this.campaign = c
    c.on('elected', () => {
      if (this.stopped) return
      this.opts.log.info(`curator: elected master on ${this.opts.nodeName}`)
      this.lead()
    })
    c.on('error', (e: Error) => {
      // A campaign reports errors for as long as its lease keeps failing: only its first one counts
      // (each one starting a new campaign made their number double every second while etcd was
      // out of reach, a storm that kept the CVM from coming back after a partition).
      if (this.campaign !== c) return
      // the campaign's lease was lost (etcd unreachable for longer than its TTL): lead no more, campaign again
      this.opts.log.warn(`curator: election campaign failed: ${errorMessage(e)}; campaigning again in ${curatorCampaignRetryMs} ms`)
      this.leading = false
      this.unwatchSettings()
      this.campaign = undefined
      void c.resign().catch(() => undefined) // its lease is gone or going: stop its keep-alives; nothing to undo if that fails
      if (!this.stopped) setTimeout(() => this.campaignOnce(), curatorCampaignRetryMs).unref()
    })
  }

  private lead(): void {
    this.leading = true
    this.downSince.clear()
    this.diskDownSince.clear()
    this.status = {
      master: this.opts.nodeName,
      masterSince: new Date(this.clock.now()).toISOString(),
      lastScanAt: null,
      lastScanFound: { underReplicated: 0, lost: 0 },
      repairing: false,
      repairStartedAt: null,
      repairedEgroups: 0,
      repairedBytes: 0,
      repairBytesPerSec: 0,
      nodeDownGraceMs: this.graceMs,
      repairsDueAt: [],
      waiting: [],
      failovers: [],
      scrubbing: false,
      scrubBytesPerSec: scrubBytesPerSecDefault,
      lastScrubAt: null,
      lastScrubFound: null,
      lastGcAt: null,
      lastGcFound: null,
      balancing: false,
      lastBalanceAt: null,
      lastBalanceMoved: null,
      lastError: null,
    }
    this.gcDueAt = 0
    // what an earlier master reported stays: its failovers and its last scrub (the next is due an interval after it)
    void getJson<CuratorStatus>(this.etcd, keys.curatorStatus).then((prev) => {
      const st = this.status
      if (prev === undefined || st === undefined) return
      if (prev.failovers !== undefined && st.failovers.length === 0) st.failovers = prev.failovers.slice(-curatorFailoversKept)
      if (prev.lastScrubAt !== undefined && st.lastScrubAt === null) {
        st.lastScrubAt = prev.lastScrubAt
        st.lastScrubFound = prev.lastScrubFound ?? null
      }
      // the losses the last master saw, since when: their grace goes on (the first scan drops those back or gone)
      const takeOver = (into: Map<string, number>, from: Record<string, string> | undefined) => {
        for (const [k, at] of Object.entries(from ?? {})) {
          const t = Date.parse(at)
          const cur = into.get(k)
          if (!Number.isNaN(t) && (cur === undefined || t < cur)) into.set(k, t)
        }
      }
      takeOver(this.downSince, prev.nodesDownSince)
      takeOver(this.diskDownSince, prev.disksDownSince)
    }).catch(() => undefined).finally(() => {
      this.requestScan()
      this.scheduleScrub()
    })
    this.lastSeen = this.nodesSeen()
    void this.followNodes()
    this.watchSettings()
  }

  /**
   * A change of the settings (`tess cluster update`: a shorter node-down grace, a new repair rate)
   * takes effect at once: the master scans when the key changes, instead of at its next scheduled
   * scan up to a minute later.
   */
  private watchSettings(): void {
    this.unwatchSettings()
    const w = this.etcd.watch().key(keys.curatorConfig).create().then((watcher) => {
      watcher.on('put', () => this.requestScan())
      // etcd3 re-establishes a watch that failed by itself: nothing to do here
      watcher.on('error', () => undefined)
      return watcher
    }, (e: unknown) => {
      this.opts.log.warn(`curator: cannot watch the settings (a change takes effect at the next scan): ${errorMessage(e)}`)
      return undefined
    })
    this.settingsWatch = w
  }

  private unwatchSettings(): void {
    const w = this.settingsWatch
    this.settingsWatch = undefined
    void w?.then((watcher) => watcher?.cancel()).catch(() => undefined) // a watch that cannot be cancelled ends with the client
  }

  private nodesSeen(): string {
    return this.opts.nodesUp().map((n) => `${n.name}${n.up ? '+' : '-'}${n.disksOnline ?? ''}/${n.disks ?? ''}`).sort().join(',')
  }

  /** A scan whenever the nodes that are up change (a loss starts the grace; a return may let degraded groups get their copies). */
  private async followNodes(): Promise<void> {
    while (this.leading && !this.stopped) {
      // the scheduled scans need no wake-up here: only a change of the view counts
      await this.opts.nodesChanged()
      if (!this.leading || this.stopped) return
      // a node lost or back, added or removed (a removed node's replicas are repaired at once)
      const seen = this.nodesSeen()
      if (seen !== this.lastSeen) {
        this.lastSeen = seen
        this.requestScan()
      }
    }
  }

  /** Scan now (or right after the scan that runs); the next scheduled scan follows it. */
  requestScan(): void {
    if (!this.leading || this.stopped) return
    if (this.scanning) {
      this.again = true
      return
    }
    if (this.timer) clearTimeout(this.timer)
    this.timer = undefined
    this.scanning = this.scan().catch((e: unknown) => {
      this.opts.log.warn(`curator: scan failed: ${errorMessage(e)}`)
      if (this.status) this.status.lastError = `scan: ${errorMessage(e)}`
    }).finally(() => {
      this.scanning = undefined
      if (this.again) {
        this.again = false
        this.requestScan()
      } else {
        this.schedule(this.nextDelayMs)
      }
    })
  }

  private schedule(ms: number): void {
    if (!this.leading || this.stopped) return
    if (this.timer) clearTimeout(this.timer)
    this.timer = setTimeout(() => this.requestScan(), Math.max(0, ms))
    this.timer.unref()
  }

  /** One scan: which groups need copies, then each vDisk's repair at its owner, one at a time. */
  private async scan(): Promise<void> {
    const st = this.status!
    this.nextDelayMs = this.intervalMs
    const [vdisks, egroups, nodes, live, cfg] = await Promise.all([
      etcdCall('list vDisks', () => listJson<VdiskRecord>(this.etcd, keys.vdisksPrefix)),
      etcdCall('list extent groups', () => listJson<EgroupRecord>(this.etcd, keys.egroupsPrefix)),
      etcdCall('list nodes', () => listJson<NodeRecord>(this.etcd, keys.nodesPrefix)),
      liveness(this.etcd),
      etcdCall('read the curator settings', () => getJson<CuratorConfig>(this.etcd, keys.curatorConfig)),
    ])
    const up = live.up
    this.graceMs = cfg?.nodeDownGraceMs ?? this.defaultGraceMs
    this.repairBytesPerSec = cfg?.repairBytesPerSec
    st.nodeDownGraceMs = this.graceMs
    const now = this.clock.now()
    const members = new Set(nodes.map((n) => n.name))
    this.reportChanges(up, members, live.offlineDisks)
    for (const n of [...this.downSince.keys()]) if (up.has(n) || !members.has(n)) this.downSince.delete(n)
    for (const n of members) if (!up.has(n) && !this.downSince.has(n)) this.downSince.set(n, now)
    const due = new Set([...this.downSince].filter(([, t]) => now - t >= this.graceMs).map(([n]) => n))
    // a disk that went offline on a node that is up: its replicas are copied elsewhere after the same grace
    for (const d of [...this.diskDownSince.keys()]) if (!live.offlineDisks.has(d)) this.diskDownSince.delete(d)
    for (const d of live.offlineDisks.keys()) if (!this.diskDownSince.has(d)) this.diskDownSince.set(d, now)
    const dueDisks = new Set([...this.diskDownSince].filter(([, t]) => now - t >= this.graceMs).map(([d]) => d))
    const pending = [...this.downSince].filter(([n]) => !due.has(n))
    const pendingDisks = [...this.diskDownSince].filter(([d]) => !dueDisks.has(d))
    const iso = (m: Map<string, number>) => Object.fromEntries([...m].map(([k, t]) => [k, new Date(t).toISOString()]))
    st.nodesDownSince = iso(this.downSince)
    st.disksDownSince = iso(this.diskDownSince)
    st.repairsDueAt = [
      ...pending.map(([node, t]) => ({ node, at: new Date(t + this.graceMs).toISOString() })),
      ...pendingDisks.map(([d, t]) => {
        const rec = live.offlineDisks.get(d)!
        return { node: rec.node, disk: rec.path, at: new Date(t + this.graceMs).toISOString() }
      }),
    ]
    // the counts `tess cluster health` shows (no extent counts: bytes are not needed here)
    const { total } = assessHealth(vdisks, egroups, live, new Map())
    st.lastScanAt = new Date(now).toISOString()
    st.lastScanFound = { underReplicated: total.underReplicated, lost: total.lost }
    // a vDisk whose RF is more than the nodes that can hold a copy waits for a node (no repair can succeed)
    const usable = nodes.filter((n) => up.has(n.name) && n.draining !== true).map((n) => n.name).sort()
    const all = repairWork(vdisks, egroups, live, due, members, dueDisks)
    // containers first: a CSM of a lost node with containers to restart moves to a live node
    if (due.size > 0 && this.opts.failover !== undefined) {
      const moved = await this.opts.failover([...due].sort()).catch((e: unknown) => {
        this.opts.log.warn(`curator: failover: ${errorMessage(e)}`)
        return [] as CsmFailover[]
      })
      for (const m of moved) this.reportFailover(m)
      if (moved.length > 0) {
        st.failovers = [...st.failovers, ...moved].slice(-curatorFailoversKept)
        if (moved.some((m) => m.to === null)) this.nextDelayMs = Math.min(this.nextDelayMs, curatorRetryMs)
      }
    }
    const work = all.filter((w) => w.vdisk.rf <= usable.length)
    st.waiting = all.filter((w) => w.vdisk.rf > usable.length).map((w) => `vDisk ${w.vdisk.name}: RF ${w.vdisk.rf} needs ${w.vdisk.rf} nodes up, ${usable.length} are (${usable.join(', ') || 'none'})`)
    await this.writeStatus()
    if (work.length > 0) await this.repairAll(work, up)
    if (this.opts.collectGarbage !== undefined && this.clock.now() >= this.gcDueAt) await this.gcPass([...up].filter((n) => members.has(n)).sort())
    // with every node and disk up, none being removed, and nothing to re-protect: the disks' shares of the replicas
    const whole = nodes.every((n) => up.has(n.name) && n.draining !== true) && live.offlineDisks.size === 0 && all.length === 0 && total.underReplicated === 0 && total.lost === 0
    if (whole && this.opts.move !== undefined) await this.balance(vdisks, egroups, nodes, live, up)
    // scan again when the first node (or disk) still in its grace becomes due
    if (pending.length > 0 || pendingDisks.length > 0) {
      const next = Math.min(...[...pending, ...pendingDisks].map(([, t]) => t + this.graceMs)) - this.clock.now()
      this.nextDelayMs = Math.min(this.nextDelayMs, Math.max(0, next) + 100)
    }
  }

  /** A failover's event; one that could not move its CSM is reported again only when it fails otherwise. */
  private reportFailover(m: CsmFailover): void {
    if (m.to === null) {
      const why = m.error ?? 'no node has room'
      if (this.failoverFailing.get(m.csm) === why) return
      this.failoverFailing.set(m.csm, why)
      this.event({ kind: 'failover', severity: 'error', subject: m.csm, message: `CSM ${m.csm} of lost node ${m.from} could not move: ${why}; tried again at the next scan` })
      return
    }
    this.failoverFailing.delete(m.csm)
    this.event({ kind: 'failover', severity: 'warning', subject: m.csm, message: `CSM ${m.csm} moved from lost node ${m.from} to ${m.to}${m.containers.length > 0 ? `; running there: ${m.containers.join(', ')}` : ''}${m.dropped.length > 0 ? `; removed (no restart policy): ${m.dropped.join(', ')}` : ''}${m.notStarted.length > 0 ? `; not started: ${m.notStarted.join(', ')}` : ''}` })
  }

  private event(e: NewEvent): void {
    this.opts.events?.record(e)
  }

  /** Events for the nodes and disks lost and back since the last scan (before the scan updates what it has seen). */
  private reportChanges(up: ReadonlySet<string>, members: ReadonlySet<string>, offlineDisks: Liveness['offlineDisks']): void {
    const grace = `${Math.round(this.graceMs / 1000)} s`
    for (const n of members) {
      if (!up.has(n) && !this.downSince.has(n)) this.event({ kind: 'node-down', severity: 'warning', subject: n, message: `node ${n} is down (its etcd status expired); its replicas are copied elsewhere and its CSMs fail over after ${grace} unless it comes back` })
    }
    for (const n of this.downSince.keys()) {
      if (up.has(n)) this.event({ kind: 'node-up', severity: 'info', subject: n, message: `node ${n} is up again` })
    }
    for (const [d, rec] of offlineDisks) {
      this.diskNames.set(d, `${rec.node}:${rec.path}`)
      if (!this.diskDownSince.has(d)) this.event({ kind: 'disk-offline', severity: 'warning', subject: `${rec.node}:${rec.path}`, message: `disk ${rec.path} of node ${rec.node} is offline; its replicas are copied elsewhere after ${grace} unless it comes back` })
    }
    for (const d of this.diskDownSince.keys()) {
      if (offlineDisks.has(d)) continue
      const name = this.diskNames.get(d) ?? d
      this.diskNames.delete(d)
      this.event({ kind: 'disk-online', severity: 'info', subject: name, message: `disk ${name} is online again (or was removed)` })
    }
  }

  private async repairAll(work: RepairWork[], up: ReadonlySet<string>): Promise<void> {
    const st = this.status!
    st.repairing = true
    st.lastError = null
    st.repairStartedAt = new Date(this.clock.now()).toISOString()
    await this.writeStatus()
    const start = this.clock.now()
    let bytes = 0
    try {
      for (const w of work) {
        if (!this.leading || this.stopped) return
        const at = await this.workerFor(w.vdisk.id, up)
        const what = `${w.egroups} extent group(s) to re-protect${w.down.length > 0 ? ` (replicas on ${w.down.join(', ')}, down for over ${this.graceMs} ms)` : ''}${w.lostDisks.length > 0 ? ` (replicas on offline disk(s) ${w.lostDisks.join(', ')})` : ''}`
        this.opts.log.info(`curator: vDisk ${w.vdisk.name}: ${what}; repair at ${at}`)
        if (!this.repairFailing.has(w.vdisk.id)) this.event({ kind: 'repair-started', severity: 'info', subject: w.vdisk.name, message: `${what}; the repair runs on ${at}` })
        try {
          const r = await this.opts.repair(at, w.vdisk.id, w.down, this.repairBytesPerSec, w.lostDisks)
          st.repairedEgroups += r.egroups
          st.repairedBytes += r.bytes
          bytes += r.bytes
          const secs = (this.clock.now() - start) / 1000
          if (secs > 0 && bytes > 0) st.repairBytesPerSec = Math.round(bytes / secs)
          this.opts.log.info(`curator: vDisk ${w.vdisk.name}: ${r.egroups} extent group(s) re-protected (${r.bytes} bytes)`)
          this.repairFailing.delete(w.vdisk.id)
          this.event({ kind: 'repair-finished', severity: 'info', subject: w.vdisk.name, message: `${r.egroups} extent group(s) re-protected (${r.bytes} bytes)` })
        } catch (e) {
          st.lastError = `vDisk ${w.vdisk.name}: ${errorMessage(e)}`
          this.opts.log.warn(`curator: repair of vDisk ${w.vdisk.name} at ${at} failed: ${errorMessage(e)}; the next scan tries again`)
          if (this.repairFailing.get(w.vdisk.id) !== errorMessage(e)) this.event({ kind: 'repair-failed', severity: 'error', subject: w.vdisk.name, message: `the repair on ${at} failed: ${errorMessage(e)}; it is tried again every ${curatorRetryMs / 1000} s (reported again when it fails otherwise)` })
          this.repairFailing.set(w.vdisk.id, errorMessage(e))
          this.nextDelayMs = Math.min(this.nextDelayMs, curatorRetryMs)
        }
        await this.writeStatus()
      }
    } finally {
      st.repairing = false
      await this.writeStatus()
    }
  }

  /**
   * The disk balancing (balance.ts): replicas move from disks that hold more than their share to
   * disks that hold less (after a disk add, or a node that joined), each vDisk's moves at its
   * owner, at the repair's pace (yielding to client I/O), a few at a time; a scan asked for
   * meanwhile (a node or disk lost or back) ends the pass. A pass moves at most balanceMovesMax;
   * when it moved any, the next scan comes soon and plans the rest.
   */
  private async balance(vdisks: VdiskRecord[], egroups: EgroupRecord[], nodes: NodeRecord[], live: Liveness, up: ReadonlySet<string>): Promise<void> {
    const st = this.status!
    const draining = new Set(nodes.filter((n) => n.draining === true).map((n) => n.name))
    const disks = (live.onlineDisks ?? []).filter((d) => up.has(d.node) && !draining.has(d.node))
    const plan = planBalance(disks, egroups, vdisks)
    if (plan.length === 0) return
    const byId = new Map(vdisks.map((v) => [v.id, v]))
    const moved: BalanceMoved = { planned: plan.reduce((a, w) => a + w.moves.length, 0), egroups: 0, bytes: 0 }
    st.balancing = true
    await this.writeStatus()
    try {
      for (const w of plan) {
        const name = byId.get(w.vdiskId)?.name ?? w.vdiskId
        const at = await this.workerFor(w.vdiskId, up)
        // a few moves per call: a scan asked for meanwhile (a node or disk lost) is not kept waiting
        for (let i = 0; i < w.moves.length; i += balanceMovesPerCall) {
          if (!this.leading || this.stopped || this.again) return
          const batch = w.moves.slice(i, i + balanceMovesPerCall)
          try {
            const r = await this.opts.move!(at, w.vdiskId, batch, this.repairBytesPerSec)
            moved.egroups += r.egroups
            moved.bytes += r.bytes
            this.opts.log.info(`curator: vDisk ${name}: ${r.egroups} of ${batch.length} replica(s) moved to balance the disks (${r.bytes} bytes)${r.skipped > 0 ? `, ${r.skipped} skipped (changed since the plan, or failed)` : ''}`)
          } catch (e) {
            st.lastError = `balance vDisk ${name}: ${errorMessage(e)}`
            this.opts.log.warn(`curator: balancing of vDisk ${name} at ${at} failed: ${errorMessage(e)}; the next scan plans again`)
            break
          }
        }
      }
    } finally {
      st.balancing = false
      if (moved.egroups > 0) {
        st.lastBalanceAt = new Date(this.clock.now()).toISOString()
        st.lastBalanceMoved = moved
        this.nextDelayMs = Math.min(this.nextDelayMs, balanceRescanMs)
      }
      await this.writeStatus()
    }
  }

  /**
   * The garbage collection of every node that is up, one at a time (gc.ts: stale replicas and files
   * no record names). A node that fails is tried again at the next pass.
   */
  private async gcPass(nodes: string[]): Promise<void> {
    const st = this.status!
    const collect = this.opts.collectGarbage!
    this.gcDueAt = this.clock.now() + (this.opts.gcIntervalMs ?? gcIntervalMs)
    const found: GcFound = { files: 0, bytes: 0, staleEntries: 0 }
    for (const n of nodes) {
      if (!this.leading || this.stopped) return
      try {
        const r = await collect(n, this.opts.gcMinAgeMs ?? gcMinAgeMs)
        found.files += r.files
        found.bytes += r.bytes
        found.staleEntries += r.staleEntries
        if (r.files > 0 || r.staleEntries > 0) this.opts.log.info(`curator: garbage on ${n}: ${r.files} file(s) removed (${r.bytes} bytes), ${r.staleEntries} stale replica entries dropped`)
      } catch (e) {
        st.lastError = `gc on ${n}: ${errorMessage(e)}`
        this.opts.log.warn(`curator: garbage collection on ${n} failed: ${errorMessage(e)}; the next pass tries again`)
      }
    }
    st.lastGcAt = new Date(this.clock.now()).toISOString()
    st.lastGcFound = found
    await this.writeStatus()
  }

  /** Where a vDisk's repair or scrub runs: at its owner, which serves it; when nobody (or a dead node) owns it, here (this node takes it for the work). */
  private workerFor(vdiskId: string, up: ReadonlySet<string>): Promise<string> {
    return ownerOrSelf(this.etcd, vdiskId, (n) => up.has(n), this.opts.nodeName)
  }

  private async writeStatus(): Promise<void> {
    if (!this.status || !this.leading) return
    const rec = JSON.stringify(this.status)
    await etcdCall('write the curator status', () => this.etcd.put(keys.curatorStatus).value(rec)).catch((e: unknown) => {
      this.opts.log.warn(`curator: cannot write its status: ${errorMessage(e)}`)
    })
  }

  /** The next full scrub: an interval after the last one ended (a cluster's first: an interval after its master was elected). */
  private scheduleScrub(): void {
    if (!this.leading || this.stopped || this.opts.scrub === undefined) return
    const last = this.status?.lastScrubAt ? Date.parse(this.status.lastScrubAt) : this.clock.now()
    this.scrubAt(last + (this.opts.scrubIntervalMs ?? scrubIntervalMs))
  }

  private scrubAt(dueAt: number): void {
    if (this.scrubTimer) clearTimeout(this.scrubTimer)
    // setTimeout waits at most 2^31-1 ms: a later scrub waits again when that ends
    const wait = Math.min(2 ** 31 - 1, Math.max(0, dueAt - this.clock.now()))
    this.scrubTimer = setTimeout(() => {
      if (!this.leading || this.stopped) return
      if (this.clock.now() + 1000 >= dueAt) this.scrubNow()
      else this.scrubAt(dueAt)
    }, wait)
    this.scrubTimer.unref()
  }

  /**
   * A full scrub now (on its schedule, or `tess cluster scrub`): every vDisk at its owner (or here
   * when nobody owns it), one at a time, at the rate in /tess/curator/config. Answers false when
   * this CVM is not the master or a scrub runs already.
   */
  scrubNow(): boolean {
    if (!this.leading || this.stopped || this.opts.scrub === undefined || this.scrubbing !== undefined) return false
    this.scrubbing = this.scrubPass().catch((e: unknown) => {
      this.opts.log.warn(`curator: scrub failed: ${errorMessage(e)}`)
      if (this.status) this.status.lastError = `scrub: ${errorMessage(e)}`
    }).finally(() => {
      this.scrubbing = undefined
      if (this.status) this.status.scrubbing = false
      void this.writeStatus()
      this.scheduleScrub()
    })
    return true
  }

  private async scrubPass(): Promise<void> {
    const st = this.status!
    const scrub = this.opts.scrub!
    const rate = (await readSettings(this.etcd)).scrubBytesPerSec
    const [vdisks, up] = await Promise.all([
      etcdCall('list vDisks', () => listJson<VdiskRecord>(this.etcd, keys.vdisksPrefix)),
      upNodes(this.etcd),
    ])
    st.scrubbing = true
    st.scrubBytesPerSec = rate
    await this.writeStatus()
    const found: ScrubFound = { vdisks: 0, extents: 0, bytesChecked: 0, badBlocks: 0, repairedBlocks: 0, unreadable: 0, failedVdisks: [] }
    this.opts.log.info(`curator: scrub of ${vdisks.length} vDisk(s) at ${rate} bytes/s`)
    for (const v of vdisks.filter((x) => x.state === 'ready').sort((a, b) => a.name.localeCompare(b.name))) {
      if (!this.leading || this.stopped) return
      const at = await this.workerFor(v.id, up)
      try {
        const r = await scrub(at, v.id, rate)
        found.vdisks++
        found.extents += r.extents
        found.bytesChecked += r.bytesChecked
        found.badBlocks += r.badBlocks
        found.repairedBlocks += r.repairedBlocks
        found.unreadable += r.unreadable
        if (r.badBlocks > 0) {
          this.opts.log.warn(`curator: scrub of vDisk ${v.name}: ${r.badBlocks} bad block copies, ${r.repairedBlocks} rewritten from good copies`)
          this.event({ kind: 'scrub', severity: 'warning', subject: v.name, message: `the scrub found ${r.badBlocks} bad block copies and rewrote ${r.repairedBlocks} from good copies` })
        }
      } catch (e) {
        found.failedVdisks.push(v.name)
        found.unreadable++
        this.opts.log.warn(`curator: scrub of vDisk ${v.name} at ${at} failed: ${errorMessage(e)}`)
      }
    }
    st.lastScrubAt = new Date(this.clock.now()).toISOString()
    st.lastScrubFound = found
    this.opts.log.info(`curator: scrub done: ${found.vdisks} vDisk(s), ${found.bytesChecked} bytes checked, ${found.badBlocks} bad block copies, ${found.repairedBlocks} repaired`)
  }

  /** Leave the election (another CVM takes over at once) and stop scanning. */
  async stop(): Promise<void> {
    this.stopped = true
    this.leading = false
    this.unwatchSettings()
    if (this.timer) clearTimeout(this.timer)
    if (this.scrubTimer) clearTimeout(this.scrubTimer)
    try {
      await this.campaign?.resign()
    } catch { /* etcd may be gone: the lease expires */ }
  }
}

/**
 * Where work on a vDisk's extent groups runs: the node whose CVM owns the vDisk when that node is
 * up, else `self` (which takes the vDisk for the work).
 */
export async function ownerOrSelf(etcd: Etcd3, vdiskId: string, isUp: (node: string) => boolean, self: string): Promise<string> {
  const owner = (await etcdCall('read a vDisk owner', () => etcd.get(keys.vdiskOwner(vdiskId)).string()))?.split('/')[0]
  return owner !== undefined && isUp(owner) ? owner : self
}
