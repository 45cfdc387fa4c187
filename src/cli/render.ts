import type { VdiskInfo } from '../lib/types.js'
import { formatBytes } from '../lib/units.js'
import { keyValue } from './output.js'

/** The vDisk's URI over TLS, for clients with credentials in DIR (`tess vdisk credentials`). */
export function tlsUri(v: VdiskInfo): string {
  return `${v.nbdUri.replace(/^nbd:/, 'nbds:')}?tls-certificates=DIR`
}

export function renderVdisk(v: VdiskInfo): string {
  return keyValue([
    ['name', v.name],
    ['id', v.id],
    ['size', `${formatBytes(v.sizeBytes)} (${v.sizeBytes} bytes)`],
    ['allocated', `${formatBytes(v.allocatedBytes)} (${v.allocatedBytes} bytes)`],
    ...((v.snapshotBytes ?? 0) > 0 ? [['kept by snapshots', `${formatBytes(v.snapshotBytes!)} (extents written over or trimmed since a snapshot)`] as [string, string]] : []),
    ...(v.sharedBytes !== undefined ? [['shared with parents', `${formatBytes(v.sharedBytes)} (read from the parents' snapshots, stored once; "allocated" is the clone's own)`] as [string, string]] : []),
    ['rf', v.rf],
    ['encrypted', v.encrypted ? (v.locked ? 'yes (locked on this node: tess cluster unlock)' : 'yes') : 'no'],
    ...(v.parent !== undefined ? [['clone of', `${v.parent} (reads it where it has not written; tess vdisk flatten makes it stand alone)`] as [string, string]] : []),
    ['owner', v.owner ?? '-'],
    ['nbd uri', v.nbdUri],
    ['over tls', `${tlsUri(v)}  (DIR from: tess vdisk credentials --user NAME --out DIR)`],
    ['on the node', `nbd+unix:///${v.name}?socket=<data-dir>/run/nbd.sock  (root on a node, no TLS; data-dir is /var/lib/tess unless set)`],
    ['created', v.createdAt],
  ])
}
