/**
 * The image worker: a child process of the CVM that runs image pulls (download, digests,
 * decompression, the tar check and the extraction) so that this work neither runs on the CVM's
 * event loop nor competes at the same priority with the data path. Started by ImageWorker
 * (worker.ts) under `nice`, it talks to its parent only over the IPC channel:
 *
 *   parent -> worker  { type: 'pull', id, ref, contentRoot, layersRoot, registries, defaultRegistry }
 *   worker -> parent  { type: 'policy', id, input }        the parent's registry rules decide
 *   parent -> worker  { type: 'policy-answer', id, rule }  (rule: the refusing rule, or null)
 *   worker -> parent  { type: 'progress', id, progress }   layers and bytes done (at most every 250 ms)
 *   worker -> parent  { type: 'done', id, result } | { type: 'failed', id, error: { code, message, hint } }
 *
 * The worker writes blobs and layers (content addressed, each renamed into place complete); the
 * image index (images.json) has one writer, the CVM, which records the result. When the parent
 * goes away the worker exits: what a pull downloaded is kept and resumed by the next one.
 */
import { TessError, errorMessage, isTessError } from '../../lib/errors.js'
import { PullTally, type PullTallyView } from './progress.js'
import { pullImage, type PolicyInput, type PullProgress } from './puller.js'
import type { RegistryConfig } from './registry.js'
import { ContentStore } from '../../lib/images/store.js'
import { LayerStore } from '../../lib/images/unpack.js'

export interface WorkerPull {
  type: 'pull'
  id: number
  ref: string
  contentRoot: string
  layersRoot: string
  registries: Record<string, RegistryConfig>
  defaultRegistry: string
}
export interface WorkerPolicyAnswer { type: 'policy-answer', id: number, rule: string | null }
export type ToWorker = WorkerPull | WorkerPolicyAnswer

export interface WorkerError { code?: string, message: string, hint?: string }
export type FromWorker =
  | { type: 'policy', id: number, input: PolicyInput }
  | { type: 'progress', id: number, progress: PullTallyView }
  | { type: 'done', id: number, result: unknown }
  | { type: 'failed', id: number, error: WorkerError }

const contentStores = new Map<string, ContentStore>()
const layerStores = new Map<string, LayerStore>()
const policyWaits = new Map<number, (rule: string | undefined) => void>()
/** the least time between two progress messages of a pull (a change of the layer count goes at once) */
const progressEveryMs = 250

function send(m: FromWorker): void {
  process.send?.(m)
}

/** A pull's progress events, told to the parent as running totals. */
function progressReporter(id: number): (p: PullProgress) => void {
  const tally = new PullTally()
  let sentAt = 0
  return (p) => {
    const now = Date.now()
    if (!tally.add(p) && now - sentAt < progressEveryMs) return
    sentAt = now
    send({ type: 'progress', id, progress: tally.view() })
  }
}

async function runPull(m: WorkerPull): Promise<void> {
  try {
    // the CVM created both directories (and cleaned layers/tmp/) before starting the worker;
    // one instance per root keeps the in-process locks of concurrent pulls working together
    let store = contentStores.get(m.contentRoot)
    if (store === undefined) contentStores.set(m.contentRoot, store = new ContentStore(m.contentRoot))
    let layers = layerStores.get(m.layersRoot)
    if (layers === undefined) layerStores.set(m.layersRoot, layers = new LayerStore(m.layersRoot))
    const result = await pullImage(m.ref, {
      store,
      layers,
      registries: m.registries,
      defaultRegistry: m.defaultRegistry,
      recordImage: false,
      onProgress: progressReporter(m.id),
      policy: (input) => new Promise<string | undefined>((resolve) => {
        policyWaits.set(m.id, resolve)
        send({ type: 'policy', id: m.id, input })
      }),
    })
    send({ type: 'done', id: m.id, result })
  } catch (e) {
    const error: WorkerError = isTessError(e) ? { code: e.code, message: e.message, hint: e.hint } : { message: errorMessage(e) }
    send({ type: 'failed', id: m.id, error })
  } finally {
    policyWaits.delete(m.id)
  }
}

function onMessage(raw: unknown): void {
  const m = raw as Partial<ToWorker> | null
  if (m === null || typeof m !== 'object' || typeof m.id !== 'number') {
    console.error(`image worker: ignored a malformed message from the CVM: ${JSON.stringify(raw)?.slice(0, 200)}`)
    return
  }
  if (m.type === 'pull') {
    void runPull(m as WorkerPull)
  } else if (m.type === 'policy-answer') {
    const wait = policyWaits.get(m.id)
    policyWaits.delete(m.id)
    wait?.(typeof m.rule === 'string' ? m.rule : undefined)
  } else {
    console.error(`image worker: ignored a message of unknown type ${JSON.stringify(m.type)}`)
  }
}

if (process.send === undefined) {
  throw new TessError('TESS_E_USAGE', 'the image worker runs only as a child process of the CVM (it has no IPC channel)', 'it is started by the CVM; do not run it by hand')
}
process.on('message', onMessage)
// the CVM went away (stopped or crashed): nothing is left to answer to
process.on('disconnect', () => process.exit(0))
