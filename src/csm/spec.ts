import fs from 'node:fs'
import { TessError } from '../lib/errors.js'
import { parseCsmSpec, type CsmSpec } from '../lib/container-spec.js'

/**
 * Read what one CSM daemon runs with: `<dataDir>/csms/NAME/csm.json`, written by the node's CVM
 * (the shape and its check are lib/container-spec.ts: CsmSpec, parseCsmSpec).
 */
export function readCsmSpec(file: string): CsmSpec {
  let raw: unknown
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'))
  } catch (e) {
    throw new TessError('TESS_E_NOT_FOUND', `cannot read CSM spec "${file}": ${e instanceof Error ? e.message : String(e)}`, 'the node\'s CVM writes it when the CSM is created')
  }
  return parseCsmSpec(raw, `CSM spec "${file}"`)
}
