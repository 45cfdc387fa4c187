import type { VdiskInfo } from '../common/types.js'
import { formatBytes } from '../common/units.js'
import { keyValue } from './output.js'

export function renderVdisk(v: VdiskInfo): string {
  return keyValue([
    ['name', v.name],
    ['id', v.id],
    ['size', `${formatBytes(v.sizeBytes)} (${v.sizeBytes} bytes)`],
    ['allocated', `${formatBytes(v.allocatedBytes)} (${v.allocatedBytes} bytes)`],
    ['rf', v.rf],
    ['owner', v.owner ?? '-'],
    ['nbd uri', v.nbdUri],
    ['created', v.createdAt],
  ])
}
