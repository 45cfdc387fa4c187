/**
 * What this process runs: the tess release (package.json's version) and, when it runs from a bundle
 * installed on a node (`<data-dir>/bundle/<version>/`), that bundle's sha256. A CVM reports it in
 * its status record (`tess cluster status` shows each node's), and `tess cluster upgrade` compares
 * it with the bundle it installs.
 */
import fs from 'node:fs'
import path from 'node:path'
import { packageRoot } from './packageroot.js'

/** The file bootstrap writes into a bundle's version directory: the bundle's full sha256. */
export const bundleMarkerFile = '.tess-bundle-sha256'

/**
 * The protocol between CVMs (node operations, the data port, the records in etcd): raised when a
 * release changes what it sends in a way the one before would not take, together with
 * `protocolVersionOldest` when this release no longer takes what an older one sends.
 * docs/releases.md has the rule.
 */
export const protocolVersion = 1
/** the oldest protocol of a peer this release works beside (during an upgrade) */
export const protocolVersionOldest = 1

export interface ProtocolRange {
  current: number
  oldest: number
}

export interface TessVersion {
  /** package.json's version */
  tess: string
  /** sha256 of the bundle these files came from; null when tess runs from its own install (the embedded cluster) */
  bundle: string | null
  /** the protocol it speaks and the oldest it works beside (absent: a CVM from before versions were reported, protocol 1) */
  protocol?: ProtocolRange
}

/** What a node that reports no protocol speaks: the first one. */
export const protocolOfOlderCvms: ProtocolRange = { current: 1, oldest: 1 }

/** A bundle as people are shown it: the first 12 hex digits of its sha256 ('none' when there is none). */
export function bundleLabel(sha256: string | null | undefined): string {
  return sha256 == null ? 'none' : sha256.slice(0, 12)
}

/** A version as messages show it: `0.1.0 (bundle 1a2b3c4d5e6f)`. */
export function versionLabel(v: TessVersion): string {
  return `${v.tess} (bundle ${bundleLabel(v.bundle)})`
}

/** Can two releases with these protocols run in one cluster (each speaks one the other takes)? */
export function protocolsCompatible(a: ProtocolRange, b: ProtocolRange): boolean {
  return a.current >= b.oldest && b.current >= a.oldest
}


function readOr(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8')
  } catch {
    return undefined
  }
}

/** Read once per process: the files a process runs from do not change under it (a new bundle gets a new directory). */
let cached: TessVersion | undefined

export function runningVersion(): TessVersion {
  if (cached !== undefined) return cached
  let tess = 'unknown'
  try {
    const pkg = JSON.parse(readOr(path.join(packageRoot, 'package.json')) ?? '{}') as { version?: unknown }
    if (typeof pkg.version === 'string') tess = pkg.version
  } catch { /* a package.json that does not parse: "unknown" */ }
  const marker = readOr(path.join(packageRoot, bundleMarkerFile))?.trim()
  cached = { tess, bundle: marker !== undefined && /^[0-9a-f]{64}$/.test(marker) ? marker : null, protocol: { current: protocolVersion, oldest: protocolVersionOldest } }
  return cached
}
