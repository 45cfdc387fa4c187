import type { Etcd3 } from 'etcd3'
import { TessError } from '../../lib/errors.js'
import { etcdCall, getJson, keys } from '../../lib/etcd.js'
import { bodyObject, int } from '../../lib/http-server.js'
import {
  curatorNodeDownGraceMs, curatorNodeDownGraceMsMax, curatorNodeDownGraceMsMin, repairBytesPerSecMax, repairBytesPerSecMin, scrubBytesPerSecDefault,
  scrubBytesPerSecMax, scrubBytesPerSecMin,
} from '../../lib/limits.js'
import type { ClusterSettings, CuratorConfig } from '../../lib/types.js'

/** The curator's settings with the defaults filled in (GET /v1/cluster/config). */
export function settingsOf(cfg: CuratorConfig | undefined): ClusterSettings {
  return {
    nodeDownGraceMs: cfg?.nodeDownGraceMs ?? curatorNodeDownGraceMs,
    repairBytesPerSec: cfg?.repairBytesPerSec ?? null,
    scrubBytesPerSec: cfg?.scrubBytesPerSec ?? scrubBytesPerSecDefault,
  }
}

export async function readSettings(etcd: Etcd3): Promise<ClusterSettings> {
  return settingsOf(await etcdCall('read the curator settings', () => getJson<CuratorConfig>(etcd, keys.curatorConfig)))
}

/**
 * A change of the settings from a request body (PATCH /v1/cluster/config): each field within its
 * bounds; repairBytesPerSec null removes the repair's limit. Nothing else is accepted.
 */
export function parseSettingsPatch(body: unknown): CuratorConfig & { repairUnlimited?: boolean } {
  const b = bodyObject(body)
  for (const k of Object.keys(b)) {
    if (!['nodeDownGraceMs', 'repairBytesPerSec', 'scrubBytesPerSec'].includes(k)) throw new TessError('TESS_E_BAD_REQUEST', `unknown setting "${k.slice(0, 40)}"`, 'nodeDownGraceMs, repairBytesPerSec, scrubBytesPerSec')
  }
  const nodeDownGraceMs = int(b, 'nodeDownGraceMs', curatorNodeDownGraceMsMin, curatorNodeDownGraceMsMax, false)
  const unlimited = b.repairBytesPerSec === null
  const repairBytesPerSec = unlimited ? undefined : int(b, 'repairBytesPerSec', repairBytesPerSecMin, repairBytesPerSecMax, false)
  const scrubBytesPerSec = int(b, 'scrubBytesPerSec', scrubBytesPerSecMin, scrubBytesPerSecMax, false)
  return {
    ...(nodeDownGraceMs !== undefined ? { nodeDownGraceMs } : {}),
    ...(repairBytesPerSec !== undefined ? { repairBytesPerSec } : {}),
    ...(scrubBytesPerSec !== undefined ? { scrubBytesPerSec } : {}),
    ...(unlimited ? { repairUnlimited: true } : {}),
  }
}

/** Apply a change to /tess/curator/config (a compare-and-swap, so two changes never lose one). */
export async function updateSettings(etcd: Etcd3, patch: CuratorConfig & { repairUnlimited?: boolean }): Promise<ClusterSettings> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const cur = await etcdCall('read the curator settings', () => etcd.get(keys.curatorConfig).string())
    const { repairUnlimited, ...set } = patch
    const next: CuratorConfig = { ...(cur !== null ? JSON.parse(cur) as CuratorConfig : {}), ...set }
    if (repairUnlimited === true) delete next.repairBytesPerSec
    const value = JSON.stringify(next)
    const res = await etcdCall('store the curator settings', () => (cur === null
      ? etcd.if(keys.curatorConfig, 'Create', '==', 0)
      : etcd.if(keys.curatorConfig, 'Value', '==', cur)).then(etcd.put(keys.curatorConfig).value(value)).commit())
    if (res.succeeded) return settingsOf(next)
  }
  throw new TessError('TESS_E_CONFLICT', 'the curator settings kept changing under this update', 'try again')
}
