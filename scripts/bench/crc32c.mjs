#!/usr/bin/env node
// CRC-32C throughput (src/lib/crc32c.ts) on the data path's shape: 1 MiB extents checksummed per
// 4 KiB block, entries of 8 bytes (u32 CRC, u32 flags). Single-threaded, data in cache (one 1 MiB
// extent, reused), so this is the CPU cost of checksums, not of memory or disks.
//   native blocks      crc32cBlocks over the extent: SSE4.2, 4 blocks at once (4 interleaved chains)
//   native verify      crc32cVerifyBlocks over the extent, every block written
//   native blocks 4K   crc32cBlocks of one 4 KiB block per call (a 4 KiB request): single chain + call cost
//   native crc32c 4K   crc32c(block) per 4 KiB block: single chain + call cost
//   addon tables       the addon's table engine (what a CPU without SSE4.2 gets), blocks over the extent
//   js blocks          the pure-JS fallback (slice-by-16), blocks over the extent
//   zlib.crc32 4K      node:zlib crc32 (CRC-32, not -C) per 4 KiB block: what the egroup uses today
// Each is run --reps times for --seconds; the best run is printed (the machine is shared).
// Needs the compiled sources (npx tsc -p tsconfig.json, or npm run build) and, for the native
// rows, the addon (npm ci / npm rebuild).
// Usage: node scripts/bench/crc32c.mjs [--seconds 0.5] [--reps 3] [--json]
import fs from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import zlib from 'node:zlib'

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
const argv = process.argv.slice(2)
const opt = (name, def) => {
  const i = argv.indexOf(`--${name}`)
  return i >= 0 ? argv[i + 1] : def
}
const seconds = Number(opt('seconds', '0.5'))
const reps = Number(opt('reps', '3'))
const json = argv.includes('--json')

const blockBytes = 4096
const extentBytes = 1024 * 1024
const blocks = extentBytes / blockBytes
const entryBytes = 8

const distModule = path.join(repoRoot, 'dist', 'lib', 'crc32c.js')
const distJs = path.join(repoRoot, 'dist', 'lib', 'crc32c-js.js')
if (!fs.existsSync(distModule) || !fs.existsSync(distJs)) {
  console.error(`crc32c bench: ${distModule} is missing: build first (npx tsc -p tsconfig.json, or npm run build)`)
  process.exit(1)
}
delete process.env.TESS_CRC32C // the module's own choice: native when built
const mod = await import(distModule)
const js = await import(distJs)
const addonFile = path.join(repoRoot, 'build', 'Release', 'tess_crc32c.node')
const addon = fs.existsSync(addonFile) ? createRequire(import.meta.url)(addonFile) : undefined

const data = new Uint8Array(extentBytes)
for (let i = 0; i < data.length; i += 4) {
  const x = Math.imul(i + 1, 2654435761) >>> 0
  data[i] = x; data[i + 1] = x >>> 8; data[i + 2] = x >>> 16; data[i + 3] = x >>> 24
}
const views = Array.from({ length: blocks }, (_, i) => data.subarray(i * blockBytes, (i + 1) * blockBytes))
const entries = new Uint8Array(blocks * entryBytes)
js.crc32cBlocks(data, blockBytes, entries, 0, entryBytes)
for (let i = 0; i < blocks; i++) entries[i * entryBytes + 4] = 1
let sink = 0

/** Best GB/s over reps runs of `seconds` each; fn processes one 1 MiB extent. */
function measure(fn) {
  for (let i = 0; i < 20; i++) fn() // warm up (JIT)
  let best = 0
  for (let r = 0; r < reps; r++) {
    let bytes = 0
    const t0 = process.hrtime.bigint()
    const until = t0 + BigInt(Math.round(seconds * 1e9))
    let t = t0
    while (t < until) {
      for (let k = 0; k < 8; k++) fn()
      bytes += 8 * extentBytes
      t = process.hrtime.bigint()
    }
    best = Math.max(best, bytes / (Number(t - t0) / 1e9) / 1e9)
  }
  return best
}

const rows = []
const add = (name, fn) => rows.push({ name, gbPerS: measure(fn) })
if (mod.crc32cImplementation === 'native') {
  add('native blocks', () => mod.crc32cBlocks(data, blockBytes, entries, 0, entryBytes))
  add('native verify', () => { sink ^= mod.crc32cVerifyBlocks(data, blockBytes, entries, 0, entryBytes) })
  add('native blocks 4K', () => { for (let i = 0; i < blocks; i++) mod.crc32cBlocks(views[i], blockBytes, entries, i * entryBytes, entryBytes) })
  add('native crc32c 4K', () => { for (let i = 0; i < blocks; i++) sink ^= mod.crc32c(views[i]) })
  add('addon tables', () => addon.software.blocks(data, blockBytes, entries, 0, entryBytes))
} else {
  console.error(`crc32c bench: the native addon is not loaded (${addonFile}): native rows left out; build it with npm rebuild`)
}
add('js blocks', () => js.crc32cBlocks(data, blockBytes, entries, 0, entryBytes))
add('js verify', () => { sink ^= js.crc32cVerifyBlocks(data, blockBytes, entries, 0, entryBytes) })
if (typeof zlib.crc32 === 'function') add('zlib.crc32 4K', () => { for (let i = 0; i < blocks; i++) sink ^= zlib.crc32(views[i], 0) })

const zl = rows.find((r) => r.name === 'zlib.crc32 4K')?.gbPerS
if (json) {
  console.log(JSON.stringify({ node: process.version, hardware: addon?.hardware ?? null, seconds, reps, rows, sink }, null, 2))
} else {
  console.log(`CRC-32C, 4 KiB blocks of a 1 MiB extent, node ${process.version}, addon ${addon ? (addon.hardware ? 'SSE4.2' : 'tables') : 'not built'}, best of ${reps} x ${seconds} s`)
  console.log('| what | GB/s | vs zlib.crc32 4K |')
  console.log('|---|---:|---:|')
  for (const r of rows) console.log(`| ${r.name} | ${r.gbPerS.toFixed(2)} | ${zl ? (r.gbPerS / zl).toFixed(2) + 'x' : '-'} |`)
  if (sink === 0.5) console.log('') // keep results alive
}
