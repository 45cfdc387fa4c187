import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import { fileURLToPath } from 'node:url'
import { TessError, errorCodes, errorMessage, type ErrorCode } from '../../lib/errors.js'
import type { Logger } from '../../lib/log.js'
import { imageWorkerNice, imageWorkerPullsMax, imageWorkerStopMs } from '../../lib/images/limits.js'
import type { PullProgressView } from '../../lib/csm-types.js'
import type { PullPolicy, PullResult } from './puller.js'
import type { RegistryConfig } from './registry.js'
import type { FromWorker, ToWorker, WorkerError } from './worker-main.js'

export interface WorkerPullRequest {
  ref: string
  contentRoot: string
  layersRoot: string
  registries: Record<string, RegistryConfig>
  defaultRegistry: string
  policy: PullPolicy
}

export interface ImageWorkerOptions {
  /** the worker's entry script (default: worker-main.js next to this module) */
  entry?: string
  /** nice value of the worker (default imageWorkerNice) */
  nice?: number
  log?: Pick<Logger, 'info' | 'warn'>
}

interface Pending {
  ref: string
  /** what the pull reports of itself (GET /v1/images/pulls) */
  view: PullProgressView
  policy: PullPolicy
  resolve: (r: PullResult) => void
  reject: (e: unknown) => void
}

/** `nice` from coreutils, where it is (an essential package on Debian) */
function niceBinary(): string | undefined {
  return ['/usr/bin/nice', '/bin/nice'].find((p) => fs.existsSync(p))
}

/**
 * The CVM's side of the image worker (worker-main.ts): one child process, started at the first
 * pull, running every pull of the node at a lower CPU priority. A pull's policy question comes
 * back to the CVM, which decides with its rules. If the worker dies, the pulls it was running
 * fail with TESS_E_IO and the next pull starts a new worker. At most imageWorkerPullsMax pulls run
 * at once; the rest wait their turn.
 */
export class ImageWorker {
  private child: ChildProcess | undefined
  private nextId = 1
  private readonly pending = new Map<number, Pending>()
  private readonly waiting: Array<() => void> = []
  /** every pull asked for and not ended, waiting for its turn or running */
  private readonly active = new Set<PullProgressView>()
  private running = 0
  private stopped = false
  private readonly entry: string
  private readonly nice: number

  constructor(private readonly opts: ImageWorkerOptions = {}) {
    this.entry = opts.entry ?? fileURLToPath(new URL('./worker-main.js', import.meta.url))
    this.nice = opts.nice ?? imageWorkerNice
  }

  /** pid of the running worker, if one runs */
  get pid(): number | undefined {
    return this.child?.pid
  }

  /** The pulls of this node not ended yet, oldest first: how far each is. */
  progress(): PullProgressView[] {
    return [...this.active].map((v) => ({ ...v }))
  }

  async pull(req: WorkerPullRequest): Promise<PullResult> {
    if (this.stopped) throw new TessError('TESS_E_UNREACHABLE', `cannot pull image ${req.ref}: the node's image worker is stopping`, 'the CVM is shutting down; pull again once it is back')
    const view: PullProgressView = { ref: req.ref, state: 'waiting', startedAt: new Date().toISOString(), layersTotal: null, layersDone: 0, bytesTotal: null, bytesDone: 0 }
    this.active.add(view)
    try {
      if (this.running >= imageWorkerPullsMax) await new Promise<void>((resolve) => this.waiting.push(resolve))
      return await this.run(req, view)
    } finally {
      this.active.delete(view)
    }
  }

  private async run(req: WorkerPullRequest, view: PullProgressView): Promise<PullResult> {
    this.running++
    view.state = 'pulling'
    try {
      return await new Promise<PullResult>((resolve, reject) => {
        const child = this.ensureChild()
        const id = this.nextId++
        this.pending.set(id, { ref: req.ref, view, policy: req.policy, resolve, reject })
        const msg: ToWorker = {
          type: 'pull', id, ref: req.ref, contentRoot: req.contentRoot, layersRoot: req.layersRoot,
          registries: req.registries, defaultRegistry: req.defaultRegistry,
        }
        child.send(msg, (err) => {
          if (err !== null && err !== undefined && this.pending.delete(id)) reject(this.workerGone(req.ref, `cannot send it the pull: ${errorMessage(err)}`))
        })
      })
    } finally {
      this.running--
      this.waiting.shift()?.()
    }
  }

  /** End the worker (pulls it runs fail); waits for it to exit, killing it after imageWorkerStopMs. */
  async stop(): Promise<void> {
    this.stopped = true
    const child = this.child
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
    child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), imageWorkerStopMs)
    await exited
    clearTimeout(timer)
  }

  private ensureChild(): ChildProcess {
    if (this.child !== undefined) return this.child
    const nice = niceBinary()
    if (nice === undefined) this.opts.log?.warn('image worker: `nice` (coreutils) not found; pulls run at the CVM\'s priority')
    const [cmd, args] = nice !== undefined
      ? [nice, ['-n', String(this.nice), process.execPath, this.entry]]
      : [process.execPath, [this.entry]]
    const child = spawn(cmd, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    this.child = child
    child.on('message', (m: FromWorker) => this.onMessage(child, m))
    child.on('error', (e) => this.onGone(child, `could not be started: ${errorMessage(e)}`))
    child.on('exit', (code, signal) => this.onGone(child, signal !== null ? `was killed by ${signal}` : `exited with code ${code ?? '?'}`))
    this.opts.log?.info(`image worker started (pid ${child.pid ?? '?'}, nice ${nice !== undefined ? this.nice : 0})`)
    return child
  }

  private onMessage(child: ChildProcess, m: FromWorker): void {
    const p = this.pending.get(m.id)
    if (p === undefined) return
    if (m.type === 'policy') {
      Promise.resolve(p.policy(m.input)).then(
        (rule) => child.send({ type: 'policy-answer', id: m.id, rule: rule ?? null } satisfies ToWorker),
        (e: unknown) => {
          // the rules could not be read: the pull fails here, and the worker's question is answered
          // with a refusal so that it downloads nothing
          this.pending.delete(m.id)
          p.reject(e)
          child.send({ type: 'policy-answer', id: m.id, rule: '(registry rules unavailable)' } satisfies ToWorker)
        })
    } else if (m.type === 'progress') {
      Object.assign(p.view, progressFields(m.progress))
    } else if (m.type === 'done') {
      this.pending.delete(m.id)
      p.resolve(m.result as PullResult)
    } else if (m.type === 'failed') {
      this.pending.delete(m.id)
      p.reject(toError(m.error))
    }
  }

  private onGone(child: ChildProcess, how: string): void {
    if (this.child !== child) return
    this.child = undefined
    const lost = [...this.pending.values()]
    this.pending.clear()
    if (lost.length > 0 || !this.stopped) this.opts.log?.warn(`image worker (pid ${child.pid ?? '?'}) ${how}${lost.length > 0 ? `; ${lost.length} pull(s) failed` : ''}`)
    for (const p of lost) p.reject(this.workerGone(p.ref, how))
  }

  private workerGone(ref: string, how: string): TessError {
    return new TessError('TESS_E_IO', `cannot pull image ${ref}: the node's image worker ${how}`,
      'pull again: a new worker starts, and what was downloaded is kept and resumed')
  }
}

/** The totals of a progress message, each a count or null (the worker is ours, but a message is still checked before it is shown). */
function progressFields(p: unknown): Partial<PullProgressView> {
  const o = (typeof p === 'object' && p !== null ? p : {}) as Record<string, unknown>
  const count = (v: unknown) => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : null)
  return { layersTotal: count(o.layersTotal), layersDone: count(o.layersDone) ?? 0, bytesTotal: count(o.bytesTotal), bytesDone: count(o.bytesDone) ?? 0 }
}

function toError(e: WorkerError): Error {
  if (typeof e.code === 'string' && e.code in errorCodes) return new TessError(e.code as ErrorCode, e.message, e.hint ?? '')
  return new Error(e.message)
}
