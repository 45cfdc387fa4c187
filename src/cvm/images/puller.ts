import { TessError, errorMessage } from '../../lib/errors.js'
import { imageConfigSizeMaxBytes, layerPullConcurrencyMax, manifestSizeMaxBytes } from '../../lib/images/limits.js'
import {
  defaultPlatform, formatPlatform, parseImageConfig, parseManifestDocument, selectPlatform,
  type Descriptor, type ImageConfig, type ImageManifest, type Platform,
} from '../../lib/images/manifest.js'
import { formatReference, parseReference, type ImageReference } from '../../lib/images/reference.js'
import { RegistryClient, type RegistryClientOptions, type RegistryConfig } from './registry.js'
import type { ContentStore, ImageRecord } from '../../lib/images/store.js'
import type { LayerStore } from '../../lib/images/unpack.js'

/**
 * Pull an image: resolve the reference to a manifest digest, ask the policy, then fetch the
 * config and the layers (in parallel, bounded), verify each against its digest, store them,
 * unpack each layer once, and record the image in images.json.
 *
 * Nothing is downloaded before the policy allowed the image (only the manifest is read, to know
 * its digest). Layers are stored as each verifies, so a pull that fails or is interrupted
 * leaves them for the next try, which skips them (and resumes a partial download from ingest/).
 * Manifests and the config are stored only when every layer verified and unpacked, and the
 * image is recorded last: a failed pull records nothing.
 */

export interface PolicyInput {
  /** canonical reference as given (`registry/repository:tag` or `...@digest`) */
  ref: string
  registry: string
  repository: string
  tag?: string
  /** digest of the image manifest that would be pulled */
  digest: string
  /** digest of the index the reference resolved to, for a multi-platform image */
  indexDigest?: string
}

/** Returns the name of the rule that refuses the image, or undefined to allow it. */
export type PullPolicy = (image: PolicyInput) => string | undefined | Promise<string | undefined>

export type PullProgress =
  | { phase: 'resolved', ref: string, digest: string, indexDigest?: string }
  /** the manifest is read: its layers and their compressed size in total */
  | { phase: 'layers', count: number, bytes: number }
  | { phase: 'download', kind: 'config' | 'layer', digest: string, bytes: number, total?: number }
  | { phase: 'blob-done', kind: 'config' | 'layer', digest: string, size: number, downloadedBytes: number, resumedFrom: number, cached: boolean }
  | { phase: 'unpacked', digest: string, diffId: string, cached: boolean }
  | { phase: 'done', ref: string, digest: string }

export interface PullOptions {
  store: ContentStore
  layers: LayerStore
  /** per-registry settings keyed by `host[:port]`; a registry not listed is HTTPS, anonymous */
  registries?: Record<string, RegistryConfig>
  /** registry for references that name none */
  defaultRegistry?: string
  policy?: PullPolicy
  onProgress?: (p: PullProgress) => void
  /** default linux/amd64 */
  platform?: Platform
  /** layers fetched and unpacked at once (default and maximum: layerPullConcurrencyMax) */
  layerConcurrency?: number
  /** timeouts, retries, injected sleep: passed to every RegistryClient */
  clientOptions?: Partial<RegistryClientOptions>
  signal?: AbortSignal
  /**
   * record the image in the store's images.json (default true); false leaves that to the caller,
   * which gets the record in the result (the image worker: images.json has one writer, the CVM)
   */
  recordImage?: boolean
}

export interface PulledLayer {
  digest: string
  diffId: string
  size: number
  mediaType: string
  /** the unpacked tree, for an overlay lowerdir */
  path: string
}

export interface PullResult {
  ref: string
  digest: string
  indexDigest?: string
  configDigest: string
  layers: PulledLayer[]
  /** manifest + config + compressed layers */
  sizeBytes: number
  platform: string
  /** bytes of config and layer blobs received in this pull (0 when everything was stored already) */
  downloadedBytes: number
  /** what was (or, with recordImage false, is to be) recorded in images.json */
  record: ImageRecord
}

interface PendingDoc {
  digest: string
  bytes: Buffer
}

export async function pullImage(reference: string | ImageReference, opts: PullOptions): Promise<PullResult> {
  const ref = typeof reference === 'string'
    ? parseReference(reference, opts.defaultRegistry !== undefined ? { defaultRegistry: opts.defaultRegistry } : {})
    : reference
  const name = formatReference(ref)
  const platform = opts.platform ?? defaultPlatform
  const progress = opts.onProgress ?? (() => undefined)
  const client = new RegistryClient({ ...opts.clientOptions, ...opts.registries?.[ref.registry], registry: ref.registry })
  const pending: PendingDoc[] = []
  try {
    // 1. resolve to a manifest (kept in memory until the pull succeeds)
    const { manifestDoc, manifest, indexDigest } = await resolveManifest(client, opts.store, ref, name, platform, pending)
    const digest = manifestDoc.digest
    progress({ phase: 'resolved', ref: name, digest, ...(indexDigest !== undefined ? { indexDigest } : {}) })

    // 2. policy, before any blob is downloaded
    if (opts.policy !== undefined) await checkPolicy(opts.policy, ref, name, digest, indexDigest)

    // 3. config (verified, in memory)
    const configBytes = await readConfig(client, opts.store, ref, manifest.config, progress)
    let downloadedBytes = (await opts.store.has(manifest.config.digest)) ? 0 : configBytes.length
    pending.push({ digest: manifest.config.digest, bytes: configBytes })
    const config = parseImageConfig(configBytes, `config ${manifest.config.digest} of ${name}`)
    checkImageConfig(config, manifest, name, platform)

    // 4. layers: fetch, verify, store, unpack; bounded parallelism; the first failure stops the rest
    const pulled = await pullLayers(client, ref, manifest, config.diffIds, opts)
    downloadedBytes += pulled.downloadedBytes
    const layers = pulled.layers

    // 5. store manifests and config, then record the image
    for (const d of pending) {
      await opts.store.putBytes(d.bytes, { digest: d.digest, size: d.bytes.length }, `${ref.registry}/${ref.repository}`)
    }
    const sizeBytes = manifestDoc.bytes.length + configBytes.length + manifest.layers.reduce((n, l) => n + l.size, 0)
    const record = imageRecord(name, digest, indexDigest, manifest, layers, sizeBytes, platform)
    if (opts.recordImage !== false) await opts.store.putImage(record)
    progress({ phase: 'done', ref: name, digest })
    return {
      ref: name,
      digest,
      ...(indexDigest !== undefined ? { indexDigest } : {}),
      configDigest: manifest.config.digest,
      layers,
      sizeBytes,
      platform: formatPlatform(platform),
      downloadedBytes,
      record,
    }
  } finally {
    client.close()
  }
}

/** Ask the registry policy about the image the manifest digest names; a rule that refuses it throws. */
async function checkPolicy(policy: PullPolicy, ref: ImageReference, name: string, digest: string, indexDigest: string | undefined): Promise<void> {
  const input: PolicyInput = { ref: name, registry: ref.registry, repository: ref.repository, digest, ...(ref.tag !== undefined ? { tag: ref.tag } : {}), ...(indexDigest !== undefined ? { indexDigest } : {}) }
  const rule = await policy(input)
  if (rule !== undefined) {
    throw new TessError('TESS_E_FORBIDDEN', `cannot pull image ${name} (${digest}): refused by registry policy rule "${rule}"`,
      'ask an operator to change the allow/deny list, or pull an allowed image')
  }
}

/** The image config is for the platform pulled, and has a diff_id for each layer of the manifest; else throws. */
function checkImageConfig(config: ImageConfig, manifest: ImageManifest, name: string, platform: Platform): void {
  if (config.os !== platform.os || config.architecture !== platform.architecture) {
    throw new TessError('TESS_E_INVALID', `cannot pull image ${name}: it is built for ${config.os}/${config.architecture}, not ${formatPlatform(platform)}`,
      `pull an image built for ${formatPlatform(platform)}`)
  }
  if (config.diffIds.length !== manifest.layers.length) {
    throw new TessError('TESS_E_INVALID', `cannot pull image ${name}: its manifest has ${manifest.layers.length} layers and its config ${config.diffIds.length} diff_ids`,
      'the image is inconsistent; push it again')
  }
}

/** The images.json record of a pulled image, dated now. */
function imageRecord(name: string, digest: string, indexDigest: string | undefined, manifest: ImageManifest, layers: PulledLayer[], sizeBytes: number, platform: Platform): ImageRecord {
  return {
    ref: name,
    digest,
    ...(indexDigest !== undefined ? { indexDigest } : {}),
    mediaType: manifest.mediaType,
    configDigest: manifest.config.digest,
    layers: layers.map((l) => ({ digest: l.digest, diffId: l.diffId, size: l.size, mediaType: l.mediaType })),
    sizeBytes,
    platform: formatPlatform(platform),
    pulledAt: new Date().toISOString(),
  }
}

/**
 * The image manifest of a reference for a platform: the document the reference names, or, for an
 * index, the entry of that platform. Every document read is appended to `pending` (stored only
 * when the whole pull succeeds).
 */
async function resolveManifest(client: RegistryClient, store: ContentStore, ref: ImageReference, name: string, platform: Platform, pending: PendingDoc[]):
  Promise<{ manifestDoc: PendingDoc & { mediaType?: string }, manifest: ImageManifest, indexDigest?: string }> {
  const top = await readManifest(client, store, ref, ref.digest ?? ref.tag ?? 'latest', ref.digest)
  pending.push(top)
  const doc = parseManifestDocument(top.bytes, top.mediaType, `manifest of ${name}`)
  if (doc.kind !== 'index') return { manifestDoc: top, manifest: doc }
  const chosen = selectPlatform(doc, platform)
  if (chosen === undefined) {
    const offered = doc.manifests.map((m) => (m.platform !== undefined ? formatPlatform(m.platform) : '?')).filter((p) => !p.startsWith('unknown/'))
    throw new TessError('TESS_E_NOT_FOUND', `cannot pull image ${name}: it has no ${formatPlatform(platform)} manifest (it has ${offered.join(', ') || 'none'})`,
      `pull an image built for ${formatPlatform(platform)}`)
  }
  const manifestDoc = await readManifest(client, store, ref, chosen.digest, chosen.digest)
  pending.push(manifestDoc)
  const inner = parseManifestDocument(manifestDoc.bytes, manifestDoc.mediaType ?? chosen.mediaType, `manifest ${chosen.digest} of ${name}`)
  if (inner.kind !== 'manifest') {
    throw new TessError('TESS_E_INVALID', `cannot pull image ${name}: the ${formatPlatform(platform)} entry of its index is another index`, 'nested indexes are not supported')
  }
  return { manifestDoc, manifest: inner, indexDigest: top.digest }
}

/** Fetch, verify, store and unpack every layer, a bounded number at once; the first failure stops the rest. */
async function pullLayers(client: RegistryClient, ref: ImageReference, manifest: ImageManifest, diffIds: string[], opts: PullOptions): Promise<{ layers: PulledLayer[], downloadedBytes: number }> {
  const progress = opts.onProgress ?? (() => undefined)
  const abort = new AbortController()
  const onOuterAbort = () => abort.abort(opts.signal?.reason)
  opts.signal?.addEventListener('abort', onOuterAbort, { once: true })
  const layers: PulledLayer[] = new Array<PulledLayer>(manifest.layers.length)
  let downloadedBytes = 0
  progress({ phase: 'layers', count: manifest.layers.length, bytes: manifest.layers.reduce((n, l) => n + l.size, 0) })
  try {
    const concurrency = Math.max(1, Math.min(opts.layerConcurrency ?? layerPullConcurrencyMax, layerPullConcurrencyMax))
    await forEachBounded(manifest.layers, concurrency, abort, async (desc, i) => {
      const diffId = diffIds[i]!
      const got = await client.fetchBlob(ref.repository, desc, opts.store, {
        signal: abort.signal,
        onProgress: (bytes, total) => progress({ phase: 'download', kind: 'layer', digest: desc.digest, bytes, ...(total !== undefined ? { total } : {}) }),
      })
      downloadedBytes += got.downloadedBytes
      progress({ phase: 'blob-done', kind: 'layer', digest: desc.digest, size: got.size, downloadedBytes: got.downloadedBytes, resumedFrom: got.resumedFrom, cached: got.cached })
      const un = await opts.layers.unpack(opts.store.path(desc.digest), diffId, { blobDigest: desc.digest, signal: abort.signal })
      progress({ phase: 'unpacked', digest: desc.digest, diffId, cached: un.cached })
      layers[i] = { digest: desc.digest, diffId, size: desc.size, mediaType: desc.mediaType, path: un.path }
    })
  } finally {
    opts.signal?.removeEventListener('abort', onOuterAbort)
  }
  return { layers, downloadedBytes }
}

/**
 * A manifest by tag or digest: from the store when we hold its digest (a HEAD tells the digest
 * of a tag), else from the registry, verified against the digest when one is known.
 */
async function readManifest(client: RegistryClient, store: ContentStore, ref: ImageReference, reference: string, digest: string | undefined): Promise<PendingDoc & { mediaType?: string }> {
  let known = digest
  if (known === undefined) {
    try {
      known = (await client.resolve(ref.repository, reference))?.digest
    } catch (e) {
      // a registry that cannot HEAD manifests is still read with GET; real failures stop here
      if (!(e instanceof TessError) || e.code !== 'TESS_E_INVALID') throw e
    }
  }
  if (known !== undefined && await store.has(known)) {
    return { digest: known, bytes: await store.readBlob(known, manifestSizeMaxBytes) }
  }
  const m = await client.getManifest(ref.repository, reference, known)
  return { digest: m.digest, bytes: m.bytes, mediaType: m.mediaType }
}

async function readConfig(client: RegistryClient, store: ContentStore, ref: ImageReference, desc: Descriptor, progress: (p: PullProgress) => void): Promise<Buffer> {
  if (await store.has(desc.digest)) {
    const bytes = await store.readBlob(desc.digest, imageConfigSizeMaxBytes)
    progress({ phase: 'blob-done', kind: 'config', digest: desc.digest, size: bytes.length, downloadedBytes: 0, resumedFrom: 0, cached: true })
    return bytes
  }
  const bytes = await client.getBlobBytes(ref.repository, desc, imageConfigSizeMaxBytes)
  progress({ phase: 'blob-done', kind: 'config', digest: desc.digest, size: bytes.length, downloadedBytes: bytes.length, resumedFrom: 0, cached: false })
  return bytes
}

/** Run `fn` over items with at most `limit` at once; the first error aborts the rest and is thrown. */
async function forEachBounded<T>(items: T[], limit: number, abort: AbortController, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  let next = 0
  let firstError: unknown
  const worker = async () => {
    while (firstError === undefined && !abort.signal.aborted) {
      const i = next++
      if (i >= items.length) return
      try {
        await fn(items[i]!, i)
      } catch (e) {
        if (firstError === undefined) {
          firstError = e
          abort.abort(e)
        }
        return
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  if (firstError !== undefined) throw firstError
  if (abort.signal.aborted) {
    throw new TessError('TESS_E_IO', `pull aborted: ${errorMessage(abort.signal.reason)}`, 'pull again: what was downloaded is kept and resumed')
  }
}
