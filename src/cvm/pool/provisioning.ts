import type { Etcd3 } from 'etcd3'
import { TessError } from '../../lib/errors.js'
import { etcdCall, getJson, keys } from '../../lib/etcd.js'
import { bodyObject } from '../../lib/http-server.js'
import { overcommitMaxDefault, overcommitMaxMax, overcommitMaxMin } from '../../lib/limits.js'
import type { PoolConfig, PoolInfo, VdiskRecord } from '../../lib/types.js'
import { formatBytes } from '../../lib/units.js'

/**
 * Thin provisioning: a vDisk takes pool space only as it is written, so the pool may promise more
 * than it holds. What it promises (every vDisk's size times its RF: the provisioned bytes) is held
 * to the pool's usable space (used + free) times the overcommit limit the operator sets (default
 * 1: no more than it could hold if every vDisk were written full).
 */
export async function readPoolConfig(etcd: Etcd3): Promise<Required<PoolConfig>> {
  const cfg = await etcdCall('read the pool settings', () => getJson<PoolConfig>(etcd, keys.poolConfig))
  return { overcommitMax: cfg?.overcommitMax ?? overcommitMaxDefault }
}

/** A change of the pool settings from a request body (PATCH /v1/storage-pool). */
export function parsePoolPatch(body: unknown): PoolConfig {
  const b = bodyObject(body)
  for (const k of Object.keys(b)) {
    if (k !== 'overcommitMax') throw new TessError('TESS_E_BAD_REQUEST', `unknown pool setting "${k.slice(0, 40)}"`, 'overcommitMax')
  }
  const v = b.overcommitMax
  if (typeof v !== 'number' || !Number.isFinite(v) || v < overcommitMaxMin || v > overcommitMaxMax) {
    throw new TessError('TESS_E_INVALID', `overcommitMax must be a number from ${overcommitMaxMin} to ${overcommitMaxMax}`, 'e.g. 1 (the default: never promise more than the pool holds), 2 or 3')
  }
  return { overcommitMax: v }
}

export async function updatePoolConfig(etcd: Etcd3, patch: PoolConfig): Promise<Required<PoolConfig>> {
  const next = { ...(await readPoolConfig(etcd)), ...patch }
  await etcdCall('store the pool settings', () => etcd.put(keys.poolConfig).value(JSON.stringify(next)))
  return next
}

/** The pool with what it promises: provisioned bytes, the limit and the overcommit setting. */
export function withProvisioning(pool: PoolInfo, vdisks: VdiskRecord[], cfg: Required<PoolConfig>): PoolInfo {
  const provisionedBytes = vdisks.filter((v) => v.state === 'ready').reduce((a, v) => a + v.sizeBytes * v.rf, 0)
  return { ...pool, provisionedBytes, provisionLimitBytes: Math.floor((pool.usedBytes + pool.freeBytes) * cfg.overcommitMax), overcommitMax: cfg.overcommitMax }
}

/** Refuse a vDisk (or a growth) of `addBytes` more (size x RF) that would take the pool past its provisioning limit. */
export function checkProvision(what: string, addBytes: number, pool: PoolInfo): void {
  const provisioned = pool.provisionedBytes ?? 0
  const limit = pool.provisionLimitBytes ?? pool.freeBytes
  if (provisioned + addBytes <= limit) return
  throw new TessError('TESS_E_CAPACITY',
    `${what}: the pool would promise ${formatBytes(provisioned + addBytes)} (${formatBytes(provisioned)} provisioned, ${formatBytes(addBytes)} asked), over its limit of ${formatBytes(limit)} (${formatBytes(pool.usedBytes + pool.freeBytes)} usable x overcommit ${pool.overcommitMax ?? 1})`,
    'add disks with `tess disk add`, ask for less, or allow more overcommit: tess storage-pool update --overcommit-max N')
}
