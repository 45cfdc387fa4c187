/**
 * CRC-32C (Castagnoli) for the data path: the checksum of every 4 KiB block of every extent.
 *
 * Two implementations with the same results and argument checks:
 *   native  the addon build/Release/tess_crc32c.node (native/crc32c.c, built by node-gyp during
 *           `npm ci` / `npm install`): SSE4.2 crc32 instruction, 4 blocks at once in the block
 *           functions; a table-driven path in the addon when the CPU lacks SSE4.2
 *   js      src/lib/crc32c-js.ts (slice-by-16 tables)
 * Chosen once, at load, by TESS_CRC32C:
 *   unset   native if the addon loads (and passes a self-test), else js, silently
 *   js      js (tests and CI use it to exercise the fallback)
 *   native  native, or this module throws at load naming the reason (no silent fallback)
 * The addon is found at <repo>/build/Release relative to this file, the same from src/ (vitest runs
 * the TypeScript sources) and from dist/ (compiled output; the node bundle carries build/Release).
 */
import { createRequire } from 'node:module'
import * as js from './crc32c-js.js'
import { TessError, errorMessage } from './errors.js'
import { nativeBuildFile } from './packageroot.js'

interface Engine {
  crc32c(buf: Uint8Array): number
  blocks(data: Uint8Array, blockBytes: number, out: Uint8Array, outOffset: number, strideBytes: number): void
  verify(data: Uint8Array, blockBytes: number, expected: Uint8Array, expectedOffset: number, strideBytes: number): number
}

interface Binding extends Engine {
  /** true: SSE4.2; false: the addon's table-driven path */
  hardware: boolean
  software: Engine
}

const addonFile = nativeBuildFile('tess_crc32c.node')
const checkInput = new TextEncoder().encode('123456789')
const checkCrc = 0xe3069283

function loadNative(): Binding {
  const b = createRequire(import.meta.url)(addonFile) as Binding
  for (const e of [b, b.software]) {
    const got = e.crc32c(checkInput)
    if (got !== checkCrc) throw new Error(`self-test failed: crc32c("123456789") = ${got.toString(16)}, expected ${checkCrc.toString(16)}`)
  }
  return b
}

function choose(): Binding | undefined {
  const requested = process.env.TESS_CRC32C ?? ''
  if (requested !== '' && requested !== 'js' && requested !== 'native') {
    throw new TessError('TESS_E_INVALID', `TESS_CRC32C="${requested}" is not one of js, native`, 'unset it (native when built, else js), or set it to js or native')
  }
  if (requested === 'js') return undefined
  try {
    return loadNative()
  } catch (e) {
    if (requested === 'native') {
      throw new TessError('TESS_E_PRECONDITION', `cannot load the native CRC-32C addon ${addonFile} (TESS_CRC32C=native): ${errorMessage(e)}`,
        'build it with npm rebuild (or npm ci) in the repo root: needs g++, make and python3; or unset TESS_CRC32C to use the JS fallback')
    }
    return undefined
  }
}

const binding = choose()
const impl: Engine = binding ?? { crc32c: js.crc32c, blocks: js.crc32cBlocks, verify: js.crc32cVerifyBlocks }

export const crc32cImplementation: 'native' | 'js' = binding ? 'native' : 'js'

/** CRC-32C of buf (standard: init ~0, final xor ~0; crc32c("123456789") === 0xe3069283) */
export function crc32c(buf: Uint8Array): number {
  return impl.crc32c(buf)
}

/** For i in [0, data.length/blockBytes): write crc32c(block i) as u32 LE at out[outOffset + i*strideBytes]. data.length must be a multiple of blockBytes. */
export function crc32cBlocks(data: Uint8Array, blockBytes: number, out: Uint8Array, outOffset: number, strideBytes: number): void {
  impl.blocks(data, blockBytes, out, outOffset, strideBytes)
}

/** Compare crc32c of each block with the u32 LE at expected[expectedOffset + i*strideBytes], only for blocks whose mask bit is set: i.e. skip block i when (u32 LE at expected[expectedOffset + i*strideBytes + 4] & 1) === 0. Returns the index of the first mismatching block, or -1. */
export function crc32cVerifyBlocks(data: Uint8Array, blockBytes: number, expected: Uint8Array, expectedOffset: number, strideBytes: number): number {
  return impl.verify(data, blockBytes, expected, expectedOffset, strideBytes)
}
