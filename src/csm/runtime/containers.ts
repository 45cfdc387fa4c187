import crypto from 'node:crypto'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import { realClock, type Clock } from '../../lib/clock.js'
import { KeyedMutex } from '../../lib/mutex.js'
import { TessError, assert, errorMessage, isTessError } from '../../lib/errors.js'
import { makeLogger, type Logger } from '../../lib/log.js'
import { checkName } from '../../lib/names.js'
import { volumeFrozenMaxMs } from '../../lib/limits.js'
import { imageConfigSizeMaxBytes } from '../../lib/images/limits.js'
import { writeFileAtomic } from '../../lib/images/store.js'
import type { ImageRecord } from '../../lib/images/store.js'
import { formatRestartPolicy, parseVolumeSpecs, type ContainerInfo, type ContainerSpec, type ContainerStatus, type NormalisedSpec } from '../../lib/container-spec.js'
import type { VolumeAttacher } from '../volumes/attach.js'
import {
  buildOciSpec, clampRlimits, hostsFile, imageRuntimeConfig, isMountPoint, mountOverlay, overlayMountPlan, readHostRlimits, resolvConf,
  mountsUnder, resolveExecutable, resolveUser, unmount, writeSpec, type HostRlimits, type ImageRuntimeConfig, type OciMount,
} from './bundle.js'
import { checkLimitsAgainst, type CgroupStats, type CsmCgroup } from './cgroups.js'
import {
  containerKillWaitMs, containerPidsMaxDefault, containerPollMs, containersPerCsmMax, containerStartTimeoutMs, containerStopTimeoutMsDefault,
  containerRestartBackoffMaxMs, containerRestartBackoffMinMs, containerRestartCheckMs, containerRestartResetAfterMs,
  containerStopTimeoutMsMax, logFollowPollMs, logChunkBytesMax, logReadChunkBytes, logTailBytesMax, logTailLinesMax, shimExitGraceMs, stateFileSizeMaxBytes,
} from './limits.js'
import {
  OciRuntime, isProcessAlive, normaliseSignal, readExitStatus, runtimeErrors, type RuntimeName, type ShimFiles,
} from './runc.js'
import { chownToMappedRoot, containerIdMapping, ensureTraversable, idmapBinds, usernsSupport } from './userns.js'
import { builtLogger, offsetSince, stampLines, stampsBetween } from './logindex.js'

/**
 * The containers of one CSM: bundle, OCI runtime, state on disk, logs, stats, re-adoption.
 *
 * Layout under `<stateDir>`:
 *
 *   runc/ (or crun/)                 the runtime's state root for this CSM
 *   containers/<id>/state.json       the container record (written atomically: temp, fsync, rename)
 *   containers/<id>/bundle/          config.json and rootfs/ (the overlay mount point)
 *   containers/<id>/upper, work      the overlay's read-write layer
 *   containers/<id>/l/               short lowerdir links, for images with many layers
 *   containers/<id>/container.log    stdout and stderr of the container (appended)
 *   containers/<id>/exit, pid        written by the shim and the runtime (see runc.ts)
 *   containers/<id>/runtime.log      the runtime's own log
 *   containers/<id>/hosts, hostname, resolv.conf
 *
 * A record is written with status "creating" before anything else is made, so a crash at any
 * point leaves something adopt() recognises and cleans (overlay unmounted, runtime state
 * deleted, directory removed). A failed run() cleans the same way before it throws.
 *
 * Exits are noticed lazily: every read (inspect, list, stats, logs) and adopt() look at the
 * runtime state and the exit file, and an exited container is finalised: its OOM-kill counter
 * read from its (kept) cgroup, its runtime state deleted, its overlay unmounted.
 */

// the spec a container runs with and what its CSM answers about it: one schema, in lib/container-spec.ts
export type { ContainerInfo, ContainerSpec, ContainerStatus, NormalisedSpec }

interface StateFile extends ContainerInfo {
  version: 1
}

export interface ContainerStats extends CgroupStats {
  id: string
  name: string
  readAt: string
}

export interface AdoptReport {
  /** still running (or paused): managed again */
  adopted: string[]
  /** ended while nobody watched: recorded as exited with their status */
  exited: string[]
  /** half-made or half-removed containers, and runtime containers with no record: removed */
  cleaned: string[]
}

/** `pos` when a line starts there, else the start of the next line (or `size`). */
async function lineStartFrom(fh: fsp.FileHandle, pos: number, size: number): Promise<number> {
  const buf = Buffer.alloc(logReadChunkBytes)
  for (let at = pos - 1; at < size;) {
    if (at < 0) return 0
    const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - at), at)
    if (bytesRead === 0) break
    const nl = buf.subarray(0, bytesRead).indexOf(0x0a)
    if (nl >= 0) return at + nl + 1
    at += bytesRead
  }
  return size
}

/**
 * Where what a container's log still holds starts: tess-logger punches out the head of a log
 * that outgrew its cap, and first writes to LOG.start the start of the first whole line it keeps
 * (native/logger.c). 0 when the log was never cut (or the file cannot be read: then everything is read).
 */
export async function logStart(log: string): Promise<number> {
  try {
    const text = await fsp.readFile(`${log}.start`, 'utf8')
    const n = Number(text.trim())
    return /^\d{1,16}\n?$/.test(text) && Number.isSafeInteger(n) ? n : 0
  } catch {
    // never cut (no file), or unreadable: read from the beginning
    return 0
  }
}

/** `pos`, or when it lies before what the log keeps (its head given back), the first line kept. */
async function keptFrom(log: string, pos: number, size: number): Promise<number> {
  const start = await logStart(log)
  return pos < start ? Math.min(start, size) : pos
}

/** A chunk of a container's output (readLog). */
export interface ReadLogOptions {
  /** from this byte of the log (default 0) */
  offset?: number
  /** from the start of the last N lines */
  tail?: number
  maxBytes?: number
  /** not before the first line written at or after this time (ms since the epoch; needs the log's index) */
  sinceMs?: number
  /** each line that starts in the chunk with its time in front (RFC 3339, nanoseconds; needs the log's index) */
  timestamps?: boolean
}

export interface LogOptions {
  /** only the last N lines */
  tail?: number
  /** keep reading as the container writes, until it exits or `signal` aborts */
  follow?: boolean
  signal?: AbortSignal
}

/** What the manager needs from the content store (ContentStore fits). */
export interface ImageSource {
  getImage(ref: string): Promise<ImageRecord | undefined>
  readBlob(digest: string, sizeMaxBytes: number): Promise<Buffer>
}

/** What the manager needs from the layer store (LayerStore fits). */
export interface LayerSource {
  path(diffId: string): string
}

// the clock seam is shared with the CVM; kept exported here for the CSM's callers and tests
export { realClock, type Clock }

export interface ContainerManagerOptions {
  csm: string
  stateDir: string
  /** the CSM's cgroup; containers are created below it */
  cgroup: CsmCgroup
  images: ImageSource
  layers: LayerSource
  runtime?: RuntimeName
  /** the runtime binary (default: the runtime's name on PATH) */
  runtimeBin?: string
  log?: Logger
  clock?: Clock
  /** new container ids (default 12 random hex digits) */
  randomId?: () => string
  /** the host's rlimits (default /proc/self/limits: what the runtime inherits) */
  hostRlimits?: HostRlimits
  /** the host's /etc/hosts and /etc/resolv.conf, for network "host" */
  hostEtc?: { hosts: string, resolvConf: string }
  /** attaches volumes (vDisks) to containers */
  volumes?: VolumeAttacher
  /** tess-logger (default: the one built next to the native addons, if any; null: none, logs without times) */
  logger?: string | null
  /** with tess-logger: each container's log keeps about this many of its last bytes (default containerLogMaxBytes; 0: all) */
  logMaxBytes?: number
}

const idPattern = /^[a-f0-9]{12}$/

/**
 * What a container's restart policy asks now: nothing (no policy, running, stopped by a user,
 * on-failure after a clean exit or its retries used), to schedule its start after the backoff
 * (100 ms doubling with each exit in a row, up to 30 s; back to 100 ms after a run of 10 s), or to
 * start it (its time has come).
 */
export function restartDecision(rec: ContainerInfo, now: number): { action: 'none' } | { action: 'schedule', at: number, streak: number } | { action: 'start' } {
  const p = rec.spec.restart
  if (p === undefined || p.policy === 'no' || rec.stoppedByUser === true || rec.status !== 'exited') return { action: 'none' }
  if (p.policy === 'on-failure' && (rec.exitCode === 0 || (p.maxRetries !== undefined && (rec.restartCount ?? 0) >= p.maxRetries))) return { action: 'none' }
  if (rec.nextRestartAt !== undefined) return Date.parse(rec.nextRestartAt) <= now ? { action: 'start' } : { action: 'none' }
  const ranMs = rec.startedAt !== undefined && rec.finishedAt !== undefined ? Date.parse(rec.finishedAt) - Date.parse(rec.startedAt) : 0
  const streak = ranMs >= containerRestartResetAfterMs ? 0 : (rec.restartStreak ?? 0)
  const wait = Math.min(containerRestartBackoffMaxMs, containerRestartBackoffMinMs * 2 ** Math.min(streak, 20))
  return { action: 'schedule', at: now + wait, streak: streak + 1 }
}

export class ContainerManager {
  readonly csm: string
  readonly stateDir: string
  readonly runtime: OciRuntime
  private readonly cgroup: CsmCgroup
  private readonly images: ImageSource
  private readonly layers: LayerSource
  private readonly log: Logger
  private readonly clock: Clock
  private readonly randomId: () => string
  private readonly hostEtc: { hosts: string, resolvConf: string }
  private readonly volumes: VolumeAttacher | undefined
  private hostRlimits: HostRlimits | undefined
  private readonly records = new Map<string, ContainerInfo>()
  private loaded: Promise<void> | undefined
  private readonly locks = new KeyedMutex()
  private restartTimer: NodeJS.Timeout | undefined
  /** restarts wait until the node's CVM confirms this CSM is still placed on this node (holdRestarts) */
  private restartsHeld = false
  /** volumes frozen for a snapshot (`id/volume`): each thaws by itself after volumeFrozenMaxMs */
  private readonly frozen = new Map<string, NodeJS.Timeout>()

  constructor(opts: ContainerManagerOptions) {
    this.csm = checkName('CSM', opts.csm)
    this.stateDir = path.resolve(opts.stateDir)
    this.cgroup = opts.cgroup
    this.images = opts.images
    this.layers = opts.layers
    this.log = opts.log ?? makeLogger(`csm-${opts.csm}`)
    this.clock = opts.clock ?? realClock
    this.randomId = opts.randomId ?? (() => crypto.randomBytes(6).toString('hex'))
    this.hostRlimits = opts.hostRlimits
    this.hostEtc = opts.hostEtc ?? { hosts: '/etc/hosts', resolvConf: '/etc/resolv.conf' }
    this.volumes = opts.volumes
    const runtime = opts.runtime ?? 'runc'
    const logger = opts.logger === null ? undefined : opts.logger ?? builtLogger()
    this.runtime = new OciRuntime({
      name: runtime,
      root: path.join(this.stateDir, runtime),
      cgroups: opts.cgroup.host,
      ...(opts.runtimeBin !== undefined ? { bin: opts.runtimeBin } : {}),
      ...(logger !== undefined ? { logger } : {}),
      ...(opts.logMaxBytes !== undefined ? { logMaxBytes: opts.logMaxBytes } : {}),
    })
  }

  // ---- paths

  private get containersDir(): string {
    return path.join(this.stateDir, 'containers')
  }

  private dir(id: string): string {
    return path.join(this.containersDir, id)
  }

  private files(id: string): ShimFiles & { state: string, bundle: string, rootfs: string, upper: string, work: string, hosts: string, hostname: string, resolvConf: string } {
    const d = this.dir(id)
    return {
      dir: d,
      state: path.join(d, 'state.json'),
      bundle: path.join(d, 'bundle'),
      rootfs: path.join(d, 'bundle', 'rootfs'),
      upper: path.join(d, 'upper'),
      work: path.join(d, 'work'),
      log: path.join(d, 'container.log'),
      exit: path.join(d, 'exit'),
      pid: path.join(d, 'pid'),
      runtimeLog: path.join(d, 'runtime.log'),
      logIndex: path.join(d, 'container.log.idx'),
      hosts: path.join(d, 'hosts'),
      hostname: path.join(d, 'hostname'),
      resolvConf: path.join(d, 'resolv.conf'),
    }
  }

  private cgroupPath(id: string): string {
    return this.cgroup.containerPath(id)
  }

  // ---- public API

  /**
   * Create and start a container. Refused before anything is made when the image is not pulled,
   * the limits exceed the CSM's, or the command is not in the image; any later failure removes
   * what was made (overlay, runtime state, cgroup, directory) before it is thrown.
   */
  async run(spec: ContainerSpec): Promise<ContainerInfo> {
    await this.ensureLoaded()
    await this.runtime.check()
    const norm = await this.normaliseSpec(spec)
    const image = await this.images.getImage(norm.image)
    if (image === undefined) {
      throw new TessError('TESS_E_NOT_FOUND', `cannot run a container of image ${norm.image} in CSM "${this.csm}": the image is not pulled`, `pull ${norm.image} first`)
    }
    const imageConfig = await this.readImageConfig(image)
    const rec = await this.locks.run('create', async () => {
      const name = spec.name ?? ''
      const live = [...this.records.values()]
      if (live.length >= containersPerCsmMax) {
        throw new TessError('TESS_E_CAPACITY', `cannot run another container in CSM "${this.csm}": it holds ${live.length}, the most it may`, 'remove exited containers')
      }
      let id = this.randomId()
      assert(idPattern.test(id), 'container ids are 12 hex digits')
      for (let i = 0; this.records.has(id) && i < 10; i++) id = this.randomId()
      const finalName = name !== '' ? name : `c-${id.slice(0, 8)}`
      if (live.some((r) => r.name === finalName)) {
        throw new TessError('TESS_E_EXISTS', `cannot run container "${finalName}" in CSM "${this.csm}": a container of that name exists`, 'remove it first, or choose another name')
      }
      const r: ContainerInfo = {
        id,
        name: finalName,
        csm: this.csm,
        image: image.ref,
        imageDigest: image.digest,
        runtime: this.runtime.name,
        status: 'creating',
        createdAt: new Date(this.clock.now()).toISOString(),
        stopSignal: normaliseSignal(imageConfig.stopSignal ?? 'SIGTERM'),
        spec: norm,
        layers: [...image.layers].reverse().map((l) => l.diffId),
      }
      await fsp.mkdir(this.dir(id), { recursive: true, mode: 0o700 })
      await this.save(r)
      this.records.set(id, r)
      return r
    })
    return this.locks.run(rec.id, async () => {
      try {
        await this.build(rec, imageConfig)
        await this.startShim(rec)
      } catch (e) {
        await this.destroy(rec).catch((ce: unknown) => this.log.error(`cannot clean up container ${rec.id} after a failed run: ${errorMessage(ce)}`))
        throw e
      }
      this.log.info(`container ${rec.id} (${rec.name}) started: pid ${rec.pid ?? '?'}`)
      return this.refresh(rec)
    })
  }

  /** Start an exited container again (same rootfs, same config); a user's start ends a stop's hold on its restart policy. */
  async start(idOrName: string): Promise<ContainerInfo> {
    const rec0 = await this.find(idOrName)
    return this.locks.run(rec0.id, async () => {
      const rec = await this.refresh(this.get(rec0.id))
      if (rec.status === 'running' || rec.status === 'paused') return rec
      if (rec.status !== 'exited') throw this.conflict(rec, 'start', `it is ${rec.status}`)
      delete rec.stoppedByUser
      delete rec.restartStreak
      delete rec.nextRestartAt
      return this.startExited(rec)
    })
  }

  /** Start an exited container; the caller holds its lock. */
  private async startExited(rec: ContainerInfo): Promise<ContainerInfo> {
    {
      try {
        await this.mountRootfs(rec)
        await this.attachVolumes(rec)
        await this.startShim(rec)
      } catch (e) {
        await this.runtime.delete(rec.id, { force: true }).catch(() => undefined) // cleanup after the failed start, whose error is thrown below
        await this.detachVolumes(rec).catch((de: unknown) => this.log.warn(errorMessage(de)))
        await unmount(this.files(rec.id).rootfs).catch(() => undefined) // cleanup after the failed start; a rootfs left mounted is unmounted by the next start or remove
        throw e
      }
      return this.refresh(rec)
    }
  }

  /**
   * Restart policies (the CSM daemon calls this after adopting its containers): every
   * containerRestartCheckMs, a container with a policy whose exit file appeared is brought up to
   * date, and an exited one that its policy restarts is started again after its backoff.
   */
  superviseRestarts(): void {
    if (this.restartTimer !== undefined) return
    const tick = () => {
      void this.restartTick().catch((e: unknown) => this.log.warn(`restart check: ${errorMessage(e)}`)).finally(() => {
        if (this.restartTimer !== undefined) this.restartTimer = setTimeout(tick, containerRestartCheckMs)
      })
    }
    this.restartTimer = setTimeout(tick, containerRestartCheckMs)
  }

  /**
   * Hold restarts (the daemon's start): a container of this CSM is not started again until
   * releaseRestarts(). After a node was lost and comes back, its CSMs may have been failed over
   * to other nodes, their containers and volumes running there: the node's CVM, which reads the
   * CSM records in etcd, releases the hold only for a CSM still placed here, and removes the others.
   */
  holdRestarts(): void {
    this.restartsHeld = true
  }

  /** Let restarts go on; whether they were held. */
  releaseRestarts(): boolean {
    const was = this.restartsHeld
    this.restartsHeld = false
    return was
  }

  stopSupervising(): void {
    if (this.restartTimer !== undefined) clearTimeout(this.restartTimer)
    this.restartTimer = undefined
  }

  private async restartTick(): Promise<void> {
    if (this.restartsHeld) return
    for (const id of [...this.records.keys()]) {
      const r0 = this.records.get(id)
      if (r0 === undefined || r0.spec.restart === undefined || r0.stoppedByUser === true) continue
      // a running container is asked about only once its exit file is there (no runtime call per tick)
      if ((r0.status === 'running' || r0.status === 'paused') && !fs.existsSync(this.files(id).exit)) continue
      if (r0.status !== 'running' && r0.status !== 'paused' && r0.status !== 'exited') continue
      await this.locks.run(id, async () => {
        const rec = this.records.get(id)
        if (rec === undefined) return
        await this.refresh(rec)
        const d = restartDecision(rec, this.clock.now())
        if (d.action === 'none') return
        if (d.action === 'schedule') {
          rec.nextRestartAt = new Date(d.at).toISOString()
          rec.restartStreak = d.streak
          await this.save(rec)
          this.log.info(`container ${rec.id} (${rec.name}) exited ${rec.exitCode ?? '(status unknown)'}; restart policy ${formatRestartPolicy(rec.spec.restart)}: starting it again in ${d.at - this.clock.now()} ms`)
          return
        }
        delete rec.nextRestartAt
        rec.restartCount = (rec.restartCount ?? 0) + 1
        try {
          await this.startExited(rec)
          this.log.info(`container ${rec.id} (${rec.name}) started again (restart ${rec.restartCount})`)
        } catch (e) {
          // counted as a restart that ended at once: the next try waits longer
          rec.finishedAt = new Date(this.clock.now()).toISOString()
          rec.exitNote = `restart ${rec.restartCount} failed: ${errorMessage(e)}`
          await this.save(rec)
          this.log.warn(`container ${rec.id} (${rec.name}): restart ${rec.restartCount} failed: ${errorMessage(e)}`)
        }
      })
    }
  }

  /**
   * Stop: the image's stop signal (SIGTERM by default), then SIGKILL after `timeoutMs`. Returns
   * the exited container (exit code, OOM flag).
   */
  async stop(idOrName: string, timeoutMs = containerStopTimeoutMsDefault): Promise<ContainerInfo> {
    if (!Number.isFinite(timeoutMs) || timeoutMs < 0 || timeoutMs > containerStopTimeoutMsMax) {
      throw new TessError('TESS_E_INVALID', `invalid stop timeout ${timeoutMs} ms`, `give 0 to ${containerStopTimeoutMsMax} ms`)
    }
    const rec0 = await this.find(idOrName)
    return this.locks.run(rec0.id, async () => {
      let rec = await this.refresh(this.get(rec0.id))
      // a stop holds the restart policy off until a start (also a restart waiting its backoff)
      if (rec.spec.restart !== undefined && rec.stoppedByUser !== true) {
        rec.stoppedByUser = true
        delete rec.nextRestartAt
        await this.save(rec)
      }
      if (rec.status !== 'running' && rec.status !== 'paused') return rec
      await this.kill(rec, timeoutMs)
      rec = await this.refresh(rec)
      assert(rec.status === 'exited', 'a killed container is exited')
      this.log.info(`container ${rec.id} (${rec.name}) stopped: exit ${rec.exitCode ?? '?'}`)
      return rec
    })
  }

  async pause(idOrName: string): Promise<ContainerInfo> {
    const rec0 = await this.find(idOrName)
    return this.locks.run(rec0.id, async () => {
      const rec = await this.refresh(this.get(rec0.id))
      if (rec.status === 'paused') return rec
      if (rec.status !== 'running') throw this.conflict(rec, 'pause', `it is ${rec.status}`)
      await this.runtime.pause(rec.id)
      rec.status = 'paused'
      await this.save(rec)
      return rec
    })
  }

  async resume(idOrName: string): Promise<ContainerInfo> {
    const rec0 = await this.find(idOrName)
    return this.locks.run(rec0.id, async () => {
      const rec = await this.refresh(this.get(rec0.id))
      if (rec.status === 'running') return rec
      if (rec.status !== 'paused') throw this.conflict(rec, 'resume', `it is ${rec.status}`)
      await this.runtime.resume(rec.id)
      rec.status = 'running'
      await this.save(rec)
      return rec
    })
  }

  /** Remove a container and everything of it; a running one only with `force` (SIGKILL). */
  async remove(idOrName: string, opts: { force?: boolean } = {}): Promise<void> {
    const rec0 = await this.find(idOrName)
    await this.locks.run(rec0.id, async () => {
      let rec = await this.refresh(this.get(rec0.id))
      if (rec.status === 'running' || rec.status === 'paused') {
        if (opts.force !== true) throw this.conflict(rec, 'remove', `it is ${rec.status}`, 'stop it first, or remove it with force')
        await this.kill(rec, 0)
        rec = await this.refresh(rec)
      }
      rec.status = 'removing'
      await this.save(rec)
      await this.destroy(rec)
      this.log.info(`container ${rec.id} (${rec.name}) removed`)
    })
  }

  /**
   * Freeze or thaw a volume a container has attached read-write, for a snapshot of it (the node's
   * CVM thaws it once the snapshot is taken; if that never comes, it thaws after
   * volumeFrozenMaxMs). Not under the container's lock: a stop waiting for a writer that the
   * freeze holds must not keep the thaw out. `mounted`: false when the volume is not mounted now
   * (the container is stopped): there was nothing to freeze.
   */
  async freezeVolume(idOrName: string, volume: string, frozen: boolean): Promise<{ mounted: boolean, frozen: boolean }> {
    const c = await this.find(idOrName)
    const v = (c.spec?.volumes ?? []).find((x) => x.name === volume)
    if (v === undefined) throw new TessError('TESS_E_NOT_FOUND', `container "${c.name}" has no volume "${volume}"`, 'see `tess container show`')
    if (v.readOnly || this.volumes === undefined) return { mounted: false, frozen: false }
    const key = `${c.id}/${volume}`
    clearTimeout(this.frozen.get(key))
    this.frozen.delete(key)
    const dir = this.files(c.id).dir
    const mounted = await this.volumes.freeze(dir, volume, frozen)
    if (mounted && frozen) {
      const t = setTimeout(() => {
        this.frozen.delete(key)
        this.log.warn(`volume ${volume} of container ${c.name}: frozen for ${volumeFrozenMaxMs} ms with no thaw from the CVM; thawing it`)
        this.volumes?.freeze(dir, volume, false).catch((e: unknown) => this.log.warn(`volume ${volume}: ${errorMessage(e)}`))
      }, volumeFrozenMaxMs)
      t.unref()
      this.frozen.set(key, t)
    }
    return { mounted, frozen: mounted && frozen }
  }

  /** One container, its status brought up to date. */
  async inspect(idOrName: string): Promise<ContainerInfo> {
    const rec0 = await this.find(idOrName)
    return this.locks.run(rec0.id, async () => {
      const rec = this.get(rec0.id)
      if (!fs.existsSync(this.files(rec.id).state)) {
        // removed by another manager of the same CSM (only during a hand-over)
        this.records.delete(rec.id)
        return this.get(rec.id)
      }
      return { ...await this.refresh(rec) }
    })
  }

  async list(): Promise<ContainerInfo[]> {
    await this.ensureLoaded()
    const out: ContainerInfo[] = []
    for (const id of [...this.records.keys()]) {
      try {
        out.push(await this.inspect(id))
      } catch (e) {
        if (!(isTessError(e) && e.code === 'TESS_E_NOT_FOUND')) throw e
      }
    }
    return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id))
  }

  /** Wait until the container has exited (or `timeoutMs` passed: TESS_E_TIMEOUT). */
  async wait(idOrName: string, timeoutMs: number): Promise<ContainerInfo> {
    const deadline = this.clock.now() + timeoutMs
    for (;;) {
      const rec = await this.inspect(idOrName)
      if (rec.status === 'exited') return rec
      if (this.clock.now() >= deadline) {
        throw new TessError('TESS_E_TIMEOUT', `container "${rec.name}" did not exit within ${timeoutMs} ms`, 'stop it, or wait longer')
      }
      await this.clock.sleep(Math.max(containerPollMs, 50))
    }
  }

  /** Usage of one running (or paused) container. */
  async stats(idOrName: string): Promise<ContainerStats> {
    const rec = await this.inspect(idOrName)
    if (rec.status !== 'running' && rec.status !== 'paused') throw this.conflict(rec, 'read the stats of', `it is ${rec.status}`, 'stats exist while it runs')
    const s = await this.cgroup.host.stats(this.cgroupPath(rec.id))
    return { ...s, id: rec.id, name: rec.name, readAt: new Date(this.clock.now()).toISOString() }
  }

  /** Usage of all the CSM's containers together (its cgroup). */
  async csmStats(): Promise<CgroupStats> {
    return this.cgroup.stats()
  }

  /**
   * The container's output: everything, or the last `tail` lines; with `follow`, then what it
   * writes until it exits (or `signal` aborts).
   */
  async *logs(idOrName: string, opts: LogOptions = {}): AsyncGenerator<Buffer> {
    const rec = await this.find(idOrName)
    const f = this.files(rec.id)
    if (opts.tail !== undefined && (!Number.isSafeInteger(opts.tail) || opts.tail < 0 || opts.tail > logTailLinesMax)) {
      throw new TessError('TESS_E_INVALID', `invalid tail ${opts.tail}`, `give 0 to ${logTailLinesMax} lines`)
    }
    let pos = opts.tail !== undefined ? await tailOffset(f.log, opts.tail, await logStart(f.log)) : 0
    const buf = Buffer.alloc(logReadChunkBytes)
    const readMore = async function* (): AsyncGenerator<Buffer> {
      let fh: fsp.FileHandle
      try {
        fh = await fsp.open(f.log, 'r')
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return
        throw e
      }
      try {
        const size = (await fh.stat()).size
        if (size < pos) pos = 0 // truncated
        pos = await keptFrom(f.log, pos, size)
        while (pos < size) {
          const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - pos), pos)
          if (bytesRead === 0) break
          pos += bytesRead
          yield Buffer.from(buf.subarray(0, bytesRead))
        }
      } finally {
        await fh.close()
      }
    }
    yield* readMore()
    if (opts.follow !== true) return
    for (;;) {
      if (opts.signal?.aborted === true) return
      const done = fs.existsSync(f.exit) || !this.records.has(rec.id) || this.records.get(rec.id)!.status === 'exited'
      yield* readMore()
      if (done) return
      await this.clock.sleep(logFollowPollMs)
    }
  }

  /**
   * A chunk of a container's output for a reader that polls: from the start of the last `tail`
   * lines when `tail` is given, else from byte `offset` (default 0), at most `maxBytes`. `offset` in the answer is where
   * the next read starts; `running` says more may come.
   */
  async readLog(idOrName: string, opts: ReadLogOptions = {}): Promise<{ data: Buffer, offset: number, running: boolean, sizeBytes: number }> {
    const rec = await this.inspect(idOrName)
    const f = this.files(rec.id)
    const maxBytes = Math.min(opts.maxBytes ?? logChunkBytesMax, logChunkBytesMax)
    if (opts.tail !== undefined && (!Number.isSafeInteger(opts.tail) || opts.tail < 0 || opts.tail > logTailLinesMax)) {
      throw new TessError('TESS_E_INVALID', `invalid tail ${opts.tail}`, `give 0 to ${logTailLinesMax} lines`)
    }
    if (opts.offset !== undefined && (!Number.isSafeInteger(opts.offset) || opts.offset < 0)) {
      throw new TessError('TESS_E_INVALID', `invalid log offset ${opts.offset}`, 'give the offset of the previous answer')
    }
    const running = rec.status === 'running' || rec.status === 'paused' || rec.status === 'creating'
    let fh: fsp.FileHandle
    try {
      fh = await fsp.open(f.log, 'r')
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { data: Buffer.alloc(0), offset: opts.offset ?? 0, running, sizeBytes: 0 }
      throw e
    }
    try {
      const size = (await fh.stat()).size
      const what = `container "${rec.name}"`
      const start = await logStart(f.log)
      let pos = opts.tail !== undefined ? await tailOffset(f.log, opts.tail, start) : opts.offset ?? 0
      // a reader that fell behind the log's cap goes on from the first line still kept
      if (pos < start) pos = Math.min(start, size)
      // --since: not before the first line begun since then (and --tail within those)
      if (opts.sinceMs !== undefined) {
        const since = await offsetSince(f.logIndex, opts.sinceMs, what) ?? size
        if (since > pos) pos = await lineStartFrom(fh, since, size)
      }
      if (pos > size) pos = size
      const n = Math.min(maxBytes, size - pos)
      const data = Buffer.alloc(n)
      const { bytesRead } = n > 0 ? await fh.read(data, 0, n, pos) : { bytesRead: 0 }
      let out: Buffer = data.subarray(0, bytesRead)
      let consumed = bytesRead
      if (opts.timestamps === true) {
        const before = Buffer.alloc(1)
        // (the first line kept of a cut log starts where the byte before it was given back)
        const lineStart = pos === 0 || pos === start || ((await fh.read(before, 0, 1, pos - 1)).bytesRead === 1 && before[0] === 0x0a)
        ;({ data: out, consumed } = stampLines(out, pos, lineStart, await stampsBetween(f.logIndex, pos, pos + bytesRead, what), maxBytes))
      }
      // still running, or more is in the file than one chunk: the reader comes back
      return { data: out, offset: pos + consumed, running: running || pos + consumed < size, sizeBytes: size }
    } finally {
      await fh.close()
    }
  }

  /** All of a container's output so far, as text (tail: last N lines). */
  async logText(idOrName: string, tail?: number): Promise<string> {
    const parts: Buffer[] = []
    for await (const b of this.logs(idOrName, tail !== undefined ? { tail } : {})) parts.push(b)
    return Buffer.concat(parts).toString('utf8')
  }

  /**
   * On daemon start: take the containers of this CSM back. Running ones are managed again,
   * ones that ended meanwhile are recorded as exited with their status, half-made or
   * half-removed ones are cleaned away, and runtime containers without a record are deleted.
   */
  async adopt(): Promise<AdoptReport> {
    this.loaded = undefined
    this.records.clear()
    const report: AdoptReport = { adopted: [], exited: [], cleaned: [] }
    await fsp.mkdir(this.containersDir, { recursive: true, mode: 0o700 })
    await this.runtime.check()
    for (const id of (await fsp.readdir(this.containersDir)).sort()) {
      const rec = await this.load(id)
      if (rec === undefined) {
        await this.destroyDir(id)
        report.cleaned.push(id)
        continue
      }
      this.records.set(id, rec)
      await this.locks.run(id, async () => {
        if (rec.status === 'creating' || rec.status === 'removing') {
          await this.destroy(rec)
          report.cleaned.push(id)
          return
        }
        const wasLive = rec.status === 'running' || rec.status === 'paused'
        const r = await this.refresh(rec)
        if (r.status === 'running' || r.status === 'paused') {
          report.adopted.push(id)
          for (const v of r.spec?.volumes ?? []) {
            if (this.volumes !== undefined && !(await this.volumes.healthy(this.files(id).dir, v.name))) {
              this.log.warn(`container ${r.name}: volume ${v.name} is not whole (nbdfuse or a mount is gone): its I/O fails until the container is restarted`)
            } else if (this.volumes !== undefined && !v.readOnly) {
              // frozen for a snapshot when the daemon before this one died: its thaw timer died with it
              await this.volumes.freeze(this.files(id).dir, v.name, false).catch((e: unknown) => this.log.warn(`container ${r.name}: volume ${v.name}: ${errorMessage(e)}`))
            }
          }
        }
        else if (wasLive) report.exited.push(id)
        else await this.finishExit(r) // an exited one: make sure nothing of it is left mounted
      })
    }
    for (const st of await this.runtime.list()) {
      if (!this.records.has(st.id)) {
        await this.runtime.delete(st.id, { force: true })
        await this.cgroup.host.removeTree(this.cgroupPath(st.id)).catch(() => undefined) // an orphan cgroup that stays is removed at the next start
        report.cleaned.push(st.id)
      }
    }
    this.loaded = Promise.resolve()
    if (report.adopted.length + report.exited.length + report.cleaned.length > 0) {
      this.log.info(`CSM ${this.csm}: adopted ${report.adopted.length}, exited meanwhile ${report.exited.length}, cleaned ${report.cleaned.length}`)
    }
    return report
  }

  // ---- internals

  private async normaliseSpec(spec: ContainerSpec): Promise<NormalisedSpec> {
    if (spec.name !== undefined) checkName('container', spec.name)
    if (typeof spec.image !== 'string' || spec.image === '') throw new TessError('TESS_E_INVALID', 'cannot run a container: no image given', 'name a pulled image')
    const what = `container "${spec.name ?? '?'}" in CSM "${this.csm}"`
    const network = spec.network ?? 'none'
    if (network !== 'none' && network !== 'host') throw new TessError('TESS_E_INVALID', `cannot run ${what}: unknown network "${String(network)}"`, 'use "none" or "host"')
    const env = [...spec.env ?? []]
    const csmLimits = await this.cgroup.limits()
    const cap = await this.cgroup.host.hostCapacity()
    const within = {
      cpus: csmLimits.cpus ?? cap.cpus,
      memoryBytes: csmLimits.memoryBytes ?? cap.memoryBytes,
      ...(csmLimits.pidsMax !== undefined ? { pidsMax: csmLimits.pidsMax } : {}),
    }
    const pidsMax = spec.pidsMax ?? Math.min(containerPidsMaxDefault, csmLimits.pidsMax ?? containerPidsMaxDefault)
    checkLimitsAgainst({ ...(spec.cpus !== undefined ? { cpus: spec.cpus } : {}), ...(spec.memoryBytes !== undefined ? { memoryBytes: spec.memoryBytes } : {}), pidsMax },
      within, what, `CSM "${this.csm}"`)
    this.hostRlimits ??= await readHostRlimits()
    const { rlimits, clamped } = clampRlimits(spec.rlimits ?? [], this.hostRlimits, what)
    if (clamped.length > 0 && spec.rlimits !== undefined) this.log.warn(`${what}: rlimits lowered to the host's hard limits: ${clamped.join(', ')}`)
    const n: NormalisedSpec = { image: spec.image, env, pidsMax, network, rlimits }
    if (spec.command !== undefined) n.command = [...spec.command]
    if (spec.entrypoint !== undefined) n.entrypoint = [...spec.entrypoint]
    if (spec.workingDir !== undefined) n.workingDir = spec.workingDir
    if (spec.user !== undefined) n.user = spec.user
    if (spec.cpus !== undefined) n.cpus = spec.cpus
    if (spec.memoryBytes !== undefined) n.memoryBytes = spec.memoryBytes
    if (spec.volumes !== undefined && spec.volumes.length > 0) {
      if (this.volumes === undefined) throw new TessError('TESS_E_PRECONDITION', `cannot run ${what}: this CSM cannot attach volumes`, 'run it in a CSM daemon')
      n.volumes = parseVolumeSpecs(spec.volumes, `cannot run ${what}`)
    }
    if (spec.restart !== undefined && spec.restart.policy !== 'no') n.restart = { ...spec.restart }
    if (spec.userns !== undefined && typeof spec.userns !== 'boolean') throw new TessError('TESS_E_INVALID', `cannot run ${what}: userns must be true or false`, 'leave it out, or give true or false')
    if (spec.userns === true) {
      const support = usernsSupport()
      if (!support.ok) throw new TessError('TESS_E_PRECONDITION', `cannot run ${what} with --userns: ${support.reason ?? 'not supported here'}`, 'run it without --userns, or on a node that supports it')
      n.userns = { ...containerIdMapping }
    }
    return n
  }

  private async readImageConfig(image: ImageRecord): Promise<ImageRuntimeConfig> {
    const bytes = await this.images.readBlob(image.configDigest, imageConfigSizeMaxBytes)
    let raw: unknown
    try {
      raw = JSON.parse(bytes.toString('utf8'))
    } catch (e) {
      throw new TessError('TESS_E_INVALID', `cannot read the config of image ${image.ref}: ${errorMessage(e)}`, 'pull the image again')
    }
    if (raw === null || typeof raw !== 'object') throw new TessError('TESS_E_INVALID', `cannot read the config of image ${image.ref}: not an object`, 'pull the image again')
    return imageRuntimeConfig(raw as Record<string, unknown>)
  }

  private async mountRootfs(rec: ContainerInfo): Promise<void> {
    const f = this.files(rec.id)
    if (await isMountPoint(f.rootfs)) return
    const lower: string[] = []
    for (const diffId of rec.layers) {
      const p = this.layers.path(diffId)
      try {
        if (!(await fsp.stat(p)).isDirectory()) throw new Error('not a directory')
      } catch {
        throw new TessError('TESS_E_NOT_FOUND', `cannot mount the rootfs of container "${rec.name}": layer ${diffId} of image ${rec.image} is not unpacked (${p})`, `pull ${rec.image} again`)
      }
      lower.push(p)
    }
    for (const d of [f.upper, f.work, f.rootfs]) await fsp.mkdir(d, { recursive: true, mode: 0o755 })
    const userns = rec.spec.userns
    if (userns === undefined) {
      await mountOverlay(overlayMountPlan(lower, f.upper, f.work, f.dir), f.rootfs)
      return
    }
    // each layer through an idmapped mount (its root shows as the container's root); the overlay
    // keeps its own reference to them, so they are detached as soon as it is mounted
    const mapped = lower.map((source, i) => ({ source, target: path.join(f.dir, 'idmap', String(i)) }))
    try {
      await idmapBinds(mapped, userns, `container "${rec.name}"`)
      await chownToMappedRoot(f.upper, userns)
      await ensureTraversable(f.bundle, `container "${rec.name}"`)
      await mountOverlay(overlayMountPlan(mapped.map((m) => m.target), f.upper, f.work, f.dir), f.rootfs)
    } finally {
      for (const m of mapped) await unmount(m.target, 0).catch((e: unknown) => this.log.warn(`container ${rec.id}: ${errorMessage(e)}`))
    }
  }

  /** with --userns, where a volume's idmapped mount goes (its source as the container sees it) */
  private volumeIdmap(id: string, name: string): string {
    return path.join(this.files(id).dir, 'idmap', `volume-${name}`)
  }

  /** rootfs, user, executable check, /etc files, config.json. */
  private async build(rec: ContainerInfo, image: ImageRuntimeConfig): Promise<void> {
    const f = this.files(rec.id)
    const what = `container "${rec.name}"`
    await this.mountRootfs(rec)
    const volumeMounts = await this.attachVolumes(rec)
    const user = await resolveUser(f.rootfs, rec.spec.user ?? image.user, what)
    const swapAccounting = await this.cgroup.host.swapAccounting(this.cgroup.path)
    const overrides = {
      env: rec.spec.env,
      ...(rec.spec.command !== undefined ? { command: rec.spec.command } : {}),
      ...(rec.spec.entrypoint !== undefined ? { entrypoint: rec.spec.entrypoint } : {}),
      ...(rec.spec.workingDir !== undefined ? { workingDir: rec.spec.workingDir } : {}),
    }
    const spec = buildOciSpec({
      hostname: rec.name,
      image,
      overrides,
      user,
      network: rec.spec.network,
      cgroupsPath: this.cgroupPath(rec.id),
      cgroupVersion: this.cgroup.host.version,
      ...(rec.spec.cpus !== undefined ? { cpus: rec.spec.cpus } : {}),
      ...(rec.spec.memoryBytes !== undefined ? { memoryBytes: rec.spec.memoryBytes } : {}),
      swapAccounting,
      pidsMax: rec.spec.pidsMax,
      rlimits: rec.spec.rlimits,
      etcFiles: { hosts: f.hosts, hostname: f.hostname, resolvConf: f.resolvConf },
      extraMounts: volumeMounts,
      annotations: { 'io.tessera.csm': this.csm, 'io.tessera.container.name': rec.name, 'io.tessera.image': rec.image },
      ...(rec.spec.userns !== undefined ? { userns: rec.spec.userns } : {}),
    })
    const argv0 = spec.process.args[0]!
    const exe = await resolveExecutable(f.rootfs, argv0, spec.process.env, spec.process.cwd)
    if (exe === undefined) {
      const where = argv0.includes('/') ? '' : ` (searched PATH=${spec.process.env.find((e) => e.startsWith('PATH='))?.slice(5) ?? ''})`
      throw new TessError('TESS_E_NOT_FOUND', `cannot run ${what}: command "${argv0}" is not an executable file in image ${rec.image}${where}`,
        'check the command, or give its full path inside the image')
    }
    const network = rec.spec.network
    const readHost = async (p: string) => (network === 'host' ? fsp.readFile(p, 'utf8').catch(() => undefined) : undefined) // a host without the file gets the defaults
    await fsp.writeFile(f.hosts, hostsFile(rec.name, network, await readHost(this.hostEtc.hosts)), { mode: 0o644 })
    await fsp.writeFile(f.hostname, `${rec.name}\n`, { mode: 0o644 })
    await fsp.writeFile(f.resolvConf, resolvConf(network, await readHost(this.hostEtc.resolvConf)), { mode: 0o644 })
    await fsp.mkdir(f.bundle, { recursive: true })
    await writeSpec(f.bundle, spec)
  }

  /** Spawn the shim and wait until the container runs (or ran and exited, or failed to start). */
  private async startShim(rec: ContainerInfo): Promise<void> {
    const f = this.files(rec.id)
    for (const p of [f.exit, `${f.exit}.tmp`, f.pid, f.runtimeLog]) await fsp.rm(p, { force: true })
    await this.runtime.delete(rec.id, { force: true })
    // the runtime writes the pid file and the shim the exit file in the container's directory:
    // each wakes the wait below at once (the poll stays, for a file system without notifications)
    const changes = new DirChanges(f.dir)
    try {
      await this.startAndWait(rec, changes)
    } finally {
      changes.close()
    }
  }

  /** startShim's second half: spawn the shim, record it, wait for the pid file (running) or the exit file (failed) */
  private async startAndWait(rec: ContainerInfo, changes: DirChanges): Promise<void> {
    const f = this.files(rec.id)
    const shim = await this.runtime.runDetached(rec.id, f.bundle, f)
    rec.shimPid = shim.pid
    if (shim.startTime !== undefined) rec.shimStartTime = shim.startTime
    else delete rec.shimStartTime
    delete rec.exitCode
    delete rec.oomKilled
    delete rec.exitNote
    delete rec.finishedAt
    await this.save(rec)
    const deadline = this.clock.now() + containerStartTimeoutMs
    for (;;) {
      const exited = await readExitStatus(f.exit)
      const pid = await readPidFile(f.pid)
      if (exited !== undefined && pid === undefined) {
        const errors = await runtimeErrors(f.runtimeLog)
        const msg = errors[0] ?? `${this.runtime.name} exited with status ${exited.status} before the container started`
        const notFound = /executable file not found|no such file or directory/i.test(msg)
        throw new TessError(notFound ? 'TESS_E_NOT_FOUND' : 'TESS_E_IO', `cannot start container "${rec.name}": ${msg}`,
          notFound ? 'check the command and the image' : `the runtime refused the container; its config is ${path.join(f.bundle, 'config.json')}`)
      }
      if (pid !== undefined) {
        rec.pid = pid
        rec.status = 'running'
        rec.startedAt = new Date(this.clock.now()).toISOString()
        await this.save(rec)
        return
      }
      if (this.clock.now() >= deadline) {
        throw new TessError('TESS_E_TIMEOUT', `cannot start container "${rec.name}": not running after ${containerStartTimeoutMs} ms`, 'the host may be overloaded')
      }
      await Promise.race([this.clock.sleep(containerPollMs), changes.next()])
    }
  }

  /** Signal, wait, SIGKILL, wait. The caller holds the lock and refreshes afterwards. */
  private async kill(rec: ContainerInfo, timeoutMs: number): Promise<void> {
    if (rec.status === 'paused') {
      // a frozen process cannot act on a signal: thaw it first
      await this.runtime.resume(rec.id).catch(() => undefined)
    }
    if (timeoutMs > 0) {
      await this.runtime.kill(rec.id, rec.stopSignal)
      if (await this.waitStopped(rec, timeoutMs)) return
    }
    await this.runtime.kill(rec.id, 'SIGKILL')
    if (!await this.waitStopped(rec, containerKillWaitMs)) {
      throw new TessError('TESS_E_TIMEOUT', `cannot stop container "${rec.name}": still running ${containerKillWaitMs} ms after SIGKILL`, 'a process may be stuck in the kernel (D state); look at it on the host')
    }
  }

  private async waitStopped(rec: ContainerInfo, ms: number): Promise<boolean> {
    const f = this.files(rec.id)
    const deadline = this.clock.now() + ms
    for (;;) {
      if (fs.existsSync(f.exit)) return true
      const st = await this.runtime.state(rec.id)
      if (st === undefined || st.status === 'stopped') return true
      if (this.clock.now() >= deadline) return false
      await this.clock.sleep(containerPollMs)
    }
  }

  /** Bring a record up to date with the runtime; finalise an exit. Caller holds the lock. */
  private async refresh(rec: ContainerInfo): Promise<ContainerInfo> {
    if (rec.status !== 'running' && rec.status !== 'paused') return rec
    const f = this.files(rec.id)
    let exit = await readExitStatus(f.exit)
    // the container's init is gone: the runtime can only say "stopped" (it tells by the same pid),
    // so it is not asked (a runtime process less per exit); a live pid (or a reused one) is asked
    const st = rec.pid !== undefined && !await isProcessAlive(rec.pid) ? undefined : await this.runtime.state(rec.id)
    if (st !== undefined && (st.status === 'running' || st.status === 'paused' || st.status === 'created')) {
      let changed = false
      const status = st.status === 'paused' ? 'paused' : 'running'
      if (rec.status !== status) {
        rec.status = status
        changed = true
      }
      if (st.pid > 0 && rec.pid !== st.pid) {
        rec.pid = st.pid
        changed = true
      }
      if (exit !== undefined && rec.exitNote === undefined) {
        // the runtime process died (killed?) while the container lives on: its status will be unknown
        rec.exitNote = 'the runtime process watching this container exited; its exit status will not be known'
        changed = true
      }
      if (changed) await this.save(rec)
      return rec
    }
    if (exit === undefined) {
      // the container just ended: the shim writes the exit file as soon as the runtime returns
      // (read again: it may have done so while we asked the runtime)
      const deadline = this.clock.now() + shimExitGraceMs
      const changes = new DirChanges(f.dir)
      try {
        exit = await readExitStatus(f.exit)
        while (exit === undefined && rec.shimPid !== undefined && this.clock.now() < deadline && await isProcessAlive(rec.shimPid, rec.shimStartTime)) {
          await Promise.race([this.clock.sleep(containerPollMs), changes.next()])
          exit = await readExitStatus(f.exit)
        }
      } finally {
        changes.close()
      }
      exit ??= await readExitStatus(f.exit)
    }
    const oomKills = await this.cgroup.host.oomKills(this.cgroupPath(rec.id)).catch(() => undefined) // no cgroup left to ask: the exit is reported without the OOM flag
    rec.status = 'exited'
    delete rec.pid
    if (exit !== undefined && rec.exitNote === undefined) {
      rec.exitCode = exit.status
      rec.finishedAt = exit.at.toISOString()
    } else {
      delete rec.exitCode
      rec.finishedAt = new Date(this.clock.now()).toISOString()
      rec.exitNote ??= 'the runtime process watching this container was gone: exit status unknown'
    }
    rec.oomKilled = oomKills !== undefined && oomKills > 0
    await this.save(rec)
    await this.finishExit(rec)
    this.log.info(`container ${rec.id} (${rec.name}) exited: ${rec.exitCode ?? 'status unknown'}${rec.oomKilled ? ', OOM-killed' : ''}`)
    return rec
  }

  /** After an exit: delete the runtime state (and with it the cgroup), unmount the rootfs. */
  private async finishExit(rec: ContainerInfo): Promise<void> {
    // the rootfs is unmounted while the runtime deletes its state: no process of the container is
    // left to use it. Both are awaited before either's failure is thrown (an unmount failing first
    // must not be a rejection nobody handles yet)
    const done = await Promise.allSettled([this.releaseRuntime(rec), unmount(this.files(rec.id).rootfs)])
    for (const d of done) if (d.status === 'rejected') throw d.reason
  }

  /** finishExit's runtime side: its state and cgroup, then the volumes */
  private async releaseRuntime(rec: ContainerInfo): Promise<void> {
    await this.runtime.delete(rec.id, { force: true })
    await this.cgroup.host.removeTree(this.cgroupPath(rec.id)).catch((e: unknown) => this.log.warn(`container ${rec.id}: ${errorMessage(e)}`))
    // a volume that cannot be detached now is tried again by the next start, stop or remove
    await this.detachVolumes(rec).catch((e: unknown) => this.log.error(`container ${rec.id} (${rec.name}): ${errorMessage(e)}`))
  }

  /** Attach the container's volumes (each is a no-op when attached already); their bind mounts. */
  private async attachVolumes(rec: ContainerInfo): Promise<OciMount[]> {
    const vols = rec.spec?.volumes ?? []
    if (vols.length === 0) return []
    assert(this.volumes !== undefined, 'volumes were checked at run')
    const mounts: OciMount[] = []
    try {
      for (const v of vols) {
        let { source } = await this.volumes.attach(this.files(rec.id).dir, v)
        const userns = rec.spec.userns
        if (userns !== undefined) {
          // through an idmapped mount: the volume keeps the ids the container sees (its root writes
          // uid 0), so the same volume serves containers with and without a user namespace
          const target = this.volumeIdmap(rec.id, v.name)
          if (!(await isMountPoint(target))) await idmapBinds([{ source, target }], userns, `container "${rec.name}"`)
          source = target
        }
        mounts.push({ destination: v.target, type: 'bind', source, options: ['rbind', 'rprivate', v.readOnly ? 'ro' : 'rw', 'nosuid', 'nodev'] })
      }
    } catch (e) {
      await this.detachVolumes(rec).catch((de: unknown) => this.log.warn(errorMessage(de)))
      throw e
    }
    return mounts
  }

  /** Detach every volume of the container, in reverse order, all of them even after an error. */
  private async detachVolumes(rec: ContainerInfo): Promise<void> {
    const vols = rec.spec?.volumes ?? []
    if (vols.length === 0 || this.volumes === undefined) return
    const errors: string[] = []
    for (const v of [...vols].reverse()) {
      // its idmapped mount (--userns) holds the volume's file system: it goes first
      await unmount(this.volumeIdmap(rec.id, v.name)).catch((e: unknown) => { errors.push(errorMessage(e)) })
      await this.volumes.detach(this.files(rec.id).dir, v.name).catch((e: unknown) => { errors.push(errorMessage(e)) })
    }
    if (errors.length > 0) throw new TessError('TESS_E_IO', errors.join('; '), 'see the CSM log; remove the container again to retry')
  }

  /** Remove every trace of a container. Caller holds the lock. */
  private async destroy(rec: ContainerInfo): Promise<void> {
    await this.runtime.delete(rec.id, { force: true })
    if (rec.shimPid !== undefined) {
      // let the shim record the exit before its directory goes
      const deadline = this.clock.now() + shimExitGraceMs
      while (this.clock.now() < deadline && await isProcessAlive(rec.shimPid, rec.shimStartTime)) await this.clock.sleep(containerPollMs)
    }
    await this.runtime.delete(rec.id, { force: true })
    await this.cgroup.host.removeTree(this.cgroupPath(rec.id)).catch((e: unknown) => this.log.warn(`container ${rec.id}: ${errorMessage(e)}`))
    await this.detachVolumes(rec)
    await this.destroyDir(rec.id)
    this.records.delete(rec.id)
  }

  /** Unmount and delete a container directory (also one with no readable record). */
  private async destroyDir(id: string): Promise<void> {
    const f = this.files(id)
    if (idPattern.test(id)) await this.runtime.delete(id, { force: true }).catch(() => undefined) // no runtime state is the normal case here
    await unmount(f.rootfs)
    if (await isMountPoint(f.rootfs)) throw new TessError('TESS_E_IO', `cannot remove container directory ${f.dir}: its rootfs is still mounted`, `umount ${f.rootfs}`)
    // idmapped mounts (--userns) left by a CSM that died while making them: never removed through
    for (const m of (await mountsUnder(path.join(f.dir, 'idmap'))).reverse()) await unmount(m)
    // never delete recursively through a mount: a volume's files, or a layer's, would go with it
    const mounted = await mountsUnder(f.dir)
    if (mounted.length > 0) throw new TessError('TESS_E_IO', `cannot remove container directory ${f.dir}: ${mounted.join(', ')} still mounted`, `unmount ${mounted[0]!} by hand, then remove again`)
    await fsp.rm(f.dir, { recursive: true, force: true, maxRetries: 3 })
  }

  private conflict(rec: ContainerInfo, action: string, why: string, hint = ''): TessError {
    return new TessError('TESS_E_CONFLICT', `cannot ${action} container "${rec.name}" in CSM "${this.csm}": ${why}`, hint)
  }

  private get(id: string): ContainerInfo {
    const r = this.records.get(id)
    if (r === undefined) throw new TessError('TESS_E_NOT_FOUND', `container ${id} does not exist in CSM "${this.csm}"`, 'list the containers')
    return r
  }

  private async find(idOrName: string): Promise<ContainerInfo> {
    await this.ensureLoaded()
    const r = this.records.get(idOrName) ?? [...this.records.values()].find((x) => x.name === idOrName)
    if (r === undefined) {
      throw new TessError('TESS_E_NOT_FOUND', `container "${idOrName}" does not exist in CSM "${this.csm}"`, 'list the containers of the CSM')
    }
    return r
  }

  /** Read the records on first use (adopt() does the same, and reconciles). */
  private ensureLoaded(): Promise<void> {
    this.loaded ??= (async () => {
      await fsp.mkdir(this.containersDir, { recursive: true, mode: 0o700 })
      for (const id of await fsp.readdir(this.containersDir)) {
        const rec = await this.load(id)
        if (rec !== undefined && !this.records.has(id)) this.records.set(id, rec)
      }
    })().catch((e: unknown) => {
      this.loaded = undefined
      throw e
    })
    return this.loaded
  }

  private async load(id: string): Promise<ContainerInfo | undefined> {
    if (!idPattern.test(id)) return undefined
    try {
      const file = this.files(id).state
      const st = await fsp.stat(file)
      if (st.size > stateFileSizeMaxBytes) return undefined
      const v = JSON.parse(await fsp.readFile(file, 'utf8')) as StateFile
      if (v.version !== 1 || v.id !== id || typeof v.name !== 'string' || typeof v.status !== 'string' || !Array.isArray(v.layers)) return undefined
      const { version: _v, ...rec } = v
      return rec
    } catch {
      return undefined
    }
  }

  private async save(rec: ContainerInfo): Promise<void> {
    const body: StateFile = { version: 1, ...rec }
    await writeFileAtomic(this.files(rec.id).state, `${JSON.stringify(body, null, 2)}\n`, 0o600)
  }
}

async function readPidFile(file: string): Promise<number | undefined> {
  try {
    const t = (await fsp.readFile(file, 'utf8')).trim()
    return /^\d+$/.test(t) ? Number(t) : undefined
  } catch {
    return undefined
  }
}

/**
 * Offset of the start of the last `lines` lines of a file (reading at most logTailBytesMax from its
 * end, and nothing before `from`: a log's head given back).
 */
export async function tailOffset(file: string, lines: number, from = 0): Promise<number> {
  let fh: fsp.FileHandle
  try {
    fh = await fsp.open(file, 'r')
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 0
    throw e
  }
  try {
    const size = (await fh.stat()).size
    if (lines === 0) return size
    const floor = Math.min(size, Math.max(from, size - logTailBytesMax))
    const buf = Buffer.alloc(logReadChunkBytes)
    let end = size
    let newlines = 0
    let first = true
    while (end > floor) {
      const start = Math.max(floor, end - buf.length)
      const { bytesRead } = await fh.read(buf, 0, end - start, start)
      for (let i = bytesRead - 1; i >= 0; i--) {
        if (buf[i] !== 0x0a) {
          first = false
          continue
        }
        // a newline that ends the file does not start a line
        if (first && start + i === size - 1) {
          first = false
          continue
        }
        first = false
        if (++newlines === lines) return start + i + 1
      }
      end = start
    }
    return floor
  } finally {
    await fh.close()
  }
}

/**
 * Wakes a waiter at the next change in a directory (inotify through fs.watch). A directory that
 * cannot be watched never wakes anyone: callers poll beside it.
 */
class DirChanges {
  private readonly watcher: fs.FSWatcher | undefined
  private pending: { promise: Promise<void>, wake: () => void } | undefined

  constructor(dir: string) {
    try {
      this.watcher = fs.watch(dir, { persistent: false }, () => this.wake())
      // an error after the start ends the watching; the callers' poll goes on
      this.watcher.on('error', () => this.close())
    } catch {
      // no watching here (no inotify, too many watches): the callers' poll is the only wake-up
      this.watcher = undefined
    }
  }

  /** settles at the next change after this call (or never) */
  next(): Promise<void> {
    if (this.pending === undefined) {
      let wake = (): void => undefined
      const promise = new Promise<void>((resolve) => {
        wake = resolve
      })
      this.pending = { promise, wake }
    }
    return this.pending.promise
  }

  close(): void {
    this.watcher?.close()
  }

  private wake(): void {
    const p = this.pending
    this.pending = undefined
    p?.wake()
  }
}
