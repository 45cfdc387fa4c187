import { TessError } from '../errors.js'
import { parseDigest } from './digest.js'
import { blobSizeMaxBytes, imageLayersMax, indexManifestsMax } from './limits.js'

/** Media types we pull (OCI image spec and the Docker v2 schema 2 formats it grew from). */
export const mediaTypes = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  dockerLayerForeign: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
} as const

/** The Accept header of a manifest request: every manifest and index type we understand. */
export const manifestAccept = [mediaTypes.ociManifest, mediaTypes.ociIndex, mediaTypes.dockerManifest, mediaTypes.dockerManifestList].join(', ')

export const layerMediaTypes: ReadonlySet<string> = new Set([mediaTypes.ociLayer, mediaTypes.ociLayerGzip, mediaTypes.dockerLayerGzip])
const configMediaTypes: ReadonlySet<string> = new Set([mediaTypes.ociConfig, mediaTypes.dockerConfig])

export interface Descriptor {
  mediaType: string
  digest: string
  size: number
  urls?: string[]
  platform?: Platform
  annotations?: Record<string, string>
}

export interface Platform {
  os: string
  architecture: string
  variant?: string
}

export const defaultPlatform: Platform = { os: 'linux', architecture: 'amd64' }

export interface ImageManifest {
  kind: 'manifest'
  mediaType: string
  config: Descriptor
  layers: Descriptor[]
}

export interface ImageIndex {
  kind: 'index'
  mediaType: string
  manifests: Descriptor[]
}

export interface ImageConfig {
  os: string
  architecture: string
  variant?: string
  diffIds: string[]
  /** the parsed document, for the runtime (entrypoint, env, ...) */
  raw: Record<string, unknown>
}

export function isIndexMediaType(t: string): boolean {
  return t === mediaTypes.ociIndex || t === mediaTypes.dockerManifestList
}

export function isManifestMediaType(t: string): boolean {
  return t === mediaTypes.ociManifest || t === mediaTypes.dockerManifest
}

function bad(what: string, why: string, hint = 'the registry served a document that is not an OCI or Docker v2 image manifest'): TessError {
  return new TessError('TESS_E_INVALID', `invalid ${what}: ${why}`, hint)
}

function parseJson(bytes: Buffer, what: string): Record<string, unknown> {
  let v: unknown
  try {
    v = JSON.parse(bytes.toString('utf8'))
  } catch (e) {
    throw bad(what, `not JSON (${e instanceof Error ? e.message : String(e)})`)
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw bad(what, 'not a JSON object')
  return v as Record<string, unknown>
}

function parseDescriptor(v: unknown, what: string): Descriptor {
  if (v === null || typeof v !== 'object') throw bad(what, 'not an object')
  const o = v as Record<string, unknown>
  if (typeof o.mediaType !== 'string' || o.mediaType === '') throw bad(what, 'no mediaType')
  if (typeof o.digest !== 'string') throw bad(what, 'no digest')
  parseDigest(o.digest, `${what} digest`)
  if (typeof o.size !== 'number' || !Number.isSafeInteger(o.size) || o.size < 0 || o.size > blobSizeMaxBytes) {
    throw bad(what, `size ${String(o.size)} is not a whole number from 0 to ${blobSizeMaxBytes}`)
  }
  const d: Descriptor = { mediaType: o.mediaType, digest: o.digest, size: o.size }
  if (Array.isArray(o.urls)) d.urls = o.urls.filter((u): u is string => typeof u === 'string')
  if (o.platform !== null && typeof o.platform === 'object') {
    const p = o.platform as Record<string, unknown>
    if (typeof p.os === 'string' && typeof p.architecture === 'string') {
      d.platform = { os: p.os, architecture: p.architecture }
      if (typeof p.variant === 'string') d.platform.variant = p.variant
    }
  }
  if (o.annotations !== null && typeof o.annotations === 'object') d.annotations = o.annotations as Record<string, string>
  return d
}

/**
 * Parse a manifest or index. The media type comes from the document when it has one, else from
 * the response's Content-Type; they must agree when both are known.
 */
export function parseManifestDocument(bytes: Buffer, contentType: string | undefined, what: string): ImageManifest | ImageIndex {
  const o = parseJson(bytes, what)
  if (o.schemaVersion !== 2) throw bad(what, `schemaVersion ${String(o.schemaVersion)} is not 2`, 'Docker schema 1 manifests are not supported; push the image again with a current tool')
  const ct = contentType?.split(';')[0]?.trim()
  const docType = typeof o.mediaType === 'string' ? o.mediaType : undefined
  let mediaType = docType ?? ct
  if (mediaType === undefined || mediaType === '' || mediaType === 'application/json' || mediaType === 'application/octet-stream') {
    // an OCI document may omit mediaType: tell the two kinds apart by their fields
    mediaType = Array.isArray(o.manifests) ? mediaTypes.ociIndex : mediaTypes.ociManifest
  }
  if (docType !== undefined && ct !== undefined && ct !== '' && ct !== docType && (isIndexMediaType(ct) || isManifestMediaType(ct))) {
    throw bad(what, `mediaType "${docType}" differs from the Content-Type "${ct}" it was served with`)
  }
  if (isIndexMediaType(mediaType)) {
    if (!Array.isArray(o.manifests)) throw bad(what, 'an index without a manifests list')
    if (o.manifests.length > indexManifestsMax) throw bad(what, `${o.manifests.length} manifests, more than ${indexManifestsMax}`)
    return { kind: 'index', mediaType, manifests: o.manifests.map((m, i) => parseDescriptor(m, `${what} manifests[${i}]`)) }
  }
  if (!isManifestMediaType(mediaType)) {
    throw bad(what, `media type "${mediaType}" is not an image manifest or index`, 'only OCI and Docker v2 images can be pulled')
  }
  const config = parseDescriptor(o.config, `${what} config`)
  if (!configMediaTypes.has(config.mediaType)) {
    throw bad(what, `config media type "${config.mediaType}" is not an image config`, 'this is an artifact, not a container image')
  }
  if (!Array.isArray(o.layers)) throw bad(what, 'no layers list')
  if (o.layers.length > imageLayersMax) throw bad(what, `${o.layers.length} layers, more than ${imageLayersMax}`)
  const layers = o.layers.map((l, i) => parseDescriptor(l, `${what} layers[${i}]`))
  for (const [i, l] of layers.entries()) {
    if (l.mediaType === mediaTypes.ociLayerZstd) {
      throw bad(what, `layer ${i} (${l.digest}) is zstd-compressed`, 'zstd layers are not supported yet; push the image with gzip layers')
    }
    if (l.mediaType === mediaTypes.dockerLayerForeign || l.mediaType.includes('nondistributable')) {
      throw bad(what, `layer ${i} (${l.digest}) is a foreign layer (${l.mediaType})`, 'foreign layers live outside the registry and are not pulled')
    }
    if (!layerMediaTypes.has(l.mediaType)) throw bad(what, `layer ${i} (${l.digest}) has media type "${l.mediaType}"`, 'only tar and tar+gzip layers can be unpacked')
  }
  return { kind: 'manifest', mediaType, config, layers }
}

/** Parse an image config: os, architecture and rootfs.diff_ids. */
export function parseImageConfig(bytes: Buffer, what: string): ImageConfig {
  const o = parseJson(bytes, what)
  if (typeof o.os !== 'string' || typeof o.architecture !== 'string') throw bad(what, 'no os or architecture', 'the image config is malformed')
  const rootfs = o.rootfs as Record<string, unknown> | undefined
  if (rootfs === undefined || rootfs === null || typeof rootfs !== 'object' || rootfs.type !== 'layers' || !Array.isArray(rootfs.diff_ids)) {
    throw bad(what, 'no rootfs of type "layers" with diff_ids', 'the image config is malformed')
  }
  const diffIds = rootfs.diff_ids.map((d, i) => {
    if (typeof d !== 'string') throw bad(what, `rootfs.diff_ids[${i}] is not a string`)
    parseDigest(d, `${what} rootfs.diff_ids[${i}]`)
    return d
  })
  const c: ImageConfig = { os: o.os, architecture: o.architecture, diffIds, raw: o }
  if (typeof o.variant === 'string') c.variant = o.variant
  return c
}

/**
 * Pick the manifest for a platform from an index: same os and architecture; when a variant is
 * asked for it must match, else an entry without a variant is preferred (amd64 rarely has one).
 */
export function selectPlatform(index: ImageIndex, platform: Platform = defaultPlatform): Descriptor | undefined {
  const candidates = index.manifests.filter((m) => isManifestMediaType(m.mediaType) &&
    m.platform !== undefined && m.platform.os === platform.os && m.platform.architecture === platform.architecture)
  if (platform.variant !== undefined) return candidates.find((m) => m.platform?.variant === platform.variant)
  return candidates.find((m) => m.platform?.variant === undefined) ?? candidates[0]
}

export function formatPlatform(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant !== undefined ? `/${p.variant}` : ''}`
}
