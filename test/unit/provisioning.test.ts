import { describe, expect, it } from 'vitest'
import { checkProvision, parsePoolPatch, withProvisioning } from '../../src/cvm/pool/provisioning.js'
import { TessError } from '../../src/lib/errors.js'
import type { PoolInfo, VdiskRecord } from '../../src/lib/types.js'

/**
 * Thin provisioning (provisioning.ts): what the vDisks promise (size x RF of every ready vDisk) is
 * held to (used + free) x the overcommit limit; a vDisk or a growth past it is refused with
 * TESS_E_CAPACITY and a hint; the setting is checked before it is stored.
 */
const GiB = 1024 ** 3
const pool: PoolInfo = { capacityBytes: 100 * GiB, usedBytes: 10 * GiB, freeBytes: 70 * GiB, reservedBytes: 5 * GiB, otherBytes: 15 * GiB, disks: [] }
const vd = (name: string, sizeGiB: number, rf: number, state: VdiskRecord['state'] = 'ready'): VdiskRecord =>
  ({ id: name, name, sizeBytes: sizeGiB * GiB, rf, createdAt: '2026-12-07T00:00:00Z', state })

function refusal(fn: () => void): TessError {
  try {
    fn()
  } catch (e) {
    return e as TessError
  }
  throw new Error('not refused')
}

describe('thin provisioning', () => {
  it('counts every ready vDisk\'s size times its RF against (used + free) x overcommit', () => {
    const p = withProvisioning(pool, [vd('a', 30, 2), vd('b', 10, 1), vd('gone', 500, 3, 'deleting')], { overcommitMax: 1 })
    expect(p).toMatchObject({ provisionedBytes: 70 * GiB, provisionLimitBytes: 80 * GiB, overcommitMax: 1 })
    // a vDisk larger than the free space is fine while the promise stays within the limit
    const roomy = withProvisioning({ ...pool, freeBytes: 5 * GiB, usedBytes: 75 * GiB }, [], { overcommitMax: 1 })
    expect(() => checkProvision('cannot create vDisk "big"', 60 * GiB, roomy)).not.toThrow()
    expect(() => checkProvision('cannot create vDisk "c"', 10 * GiB, p)).not.toThrow()
    const e = refusal(() => checkProvision('cannot create vDisk "d" (11 GiB x RF 1)', 11 * GiB, p))
    expect(e.code).toBe('TESS_E_CAPACITY')
    expect(e.message).toMatch(/cannot create vDisk "d".*would promise 81 GiB .*70 GiB provisioned, 11 GiB asked.*limit of 80 GiB/)
    expect(e.hint).toMatch(/--overcommit-max/)
    // overcommit 2: twice the usable space
    const p2 = withProvisioning(pool, [vd('a', 30, 2), vd('b', 10, 1)], { overcommitMax: 2 })
    expect(p2.provisionLimitBytes).toBe(160 * GiB)
    expect(() => checkProvision('x', 90 * GiB, p2)).not.toThrow()
    expect(() => checkProvision('x', 91 * GiB, p2)).toThrow(TessError)
  })

  it('takes only a number within bounds, and no other setting', () => {
    expect(parsePoolPatch({ overcommitMax: 2.5 })).toEqual({ overcommitMax: 2.5 })
    for (const bad of [{ overcommitMax: 0 }, { overcommitMax: 1000 }, { overcommitMax: '2' }, { overcommitMax: null }, {}]) {
      expect(refusal(() => parsePoolPatch(bad)).code).toBe('TESS_E_INVALID')
    }
    expect(refusal(() => parsePoolPatch({ overcommitMax: 2, spare: 1 })).code).toBe('TESS_E_BAD_REQUEST')
  })
})
