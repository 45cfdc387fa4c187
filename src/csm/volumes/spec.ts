import path from 'node:path'
import { TessError } from '../../lib/errors.js'
import { checkName } from '../../lib/names.js'
import type { VolumeSpec } from './attach.js'

/** most volumes one container may have */
export const volumesPerContainerMax = 16
const targetLengthMax = 1024

/** Paths a volume may not be mounted over. */
const reservedTargets = ['/', '/proc', '/sys', '/dev', '/etc/hosts', '/etc/hostname', '/etc/resolv.conf']

/** A volume as a container asks for it: the name, where it goes, and how. */
export interface VolumeMountSpec {
  name: string
  target: string
  readOnly: boolean
}

/** Check a container's volumes (from any client): names, targets, no volume twice, no overlapping targets. */
export function checkMountList<T extends VolumeMountSpec>(vols: T[], what: string): Array<T & VolumeMountSpec> {
  if (!Array.isArray(vols)) throw new TessError('TESS_E_BAD_REQUEST', `cannot run ${what}: "volumes" must be an array`, 'give volumes as [{"name": ..., "target": ...}]')
  if (vols.length > volumesPerContainerMax) throw new TessError('TESS_E_INVALID', `cannot run ${what}: ${vols.length} volumes, at most ${volumesPerContainerMax}`, 'put the data of several volumes in one, or split the container')
  const names = new Set<string>()
  const targets: string[] = []
  return vols.map((v) => {
    if (v === null || typeof v !== 'object') throw new TessError('TESS_E_BAD_REQUEST', `cannot run ${what}: a volume entry is not an object`, 'each volume is an object: {"name": ..., "target": ...}')
    checkName('volume', v.name)
    const t = checkVolumeTarget(v.target, what)
    if (names.has(v.name)) throw new TessError('TESS_E_INVALID', `cannot run ${what}: volume "${v.name}" is given twice`, 'attach a volume once per container')
    if (targets.some((x) => x === t || x.startsWith(`${t}/`) || t.startsWith(`${x}/`))) throw new TessError('TESS_E_INVALID', `cannot run ${what}: volume targets overlap at ${t}`, 'give each volume its own directory')
    names.add(v.name)
    targets.push(t)
    return { ...v, target: t, readOnly: v.readOnly === true }
  })
}

/** The CSM's check of what the CVM sends it: the mount list, and each volume's NBD export. */
export function checkVolumes(vols: VolumeSpec[], what: string): VolumeSpec[] {
  return checkMountList(vols, what).map((v) => {
    const nbd = v.nbd
    if (nbd === null || typeof nbd !== 'object' || typeof nbd.host !== 'string' || typeof nbd.export !== 'string' || !Number.isSafeInteger(nbd.port) || nbd.port < 1 || nbd.port > 65535) {
      throw new TessError('TESS_E_BAD_REQUEST', `cannot run ${what}: volume "${v.name}" has no valid NBD export`, 'a bug between the CVM and the CSM: the CVM names the export of every volume it attaches; see cvm.log')
    }
    return { name: v.name, target: v.target, readOnly: v.readOnly, nbd: { host: nbd.host, port: nbd.port, export: nbd.export }, formatted: v.formatted === true }
  })
}

/** An absolute, normalised path inside the container, not over what the runtime provides. */
export function checkVolumeTarget(target: unknown, what: string): string {
  if (typeof target !== 'string' || !target.startsWith('/') || target.length > targetLengthMax || target.includes('\0')) {
    throw new TessError('TESS_E_INVALID', `cannot run ${what}: volume target "${String(target).slice(0, 100)}" is not an absolute path`, 'e.g. --volume data:/var/lib/data')
  }
  const t = path.posix.normalize(target).replace(/\/+$/, '') || '/'
  if (t.split('/').includes('..') || t !== target.replace(/\/+$/, '')) {
    throw new TessError('TESS_E_INVALID', `cannot run ${what}: volume target "${target.slice(0, 100)}" is not a normalised path`, `write ${t}`)
  }
  if (reservedTargets.some((r) => t === r || (r !== '/' && (r === '/proc' || r === '/sys' || r === '/dev') && t.startsWith(`${r}/`)))) {
    throw new TessError('TESS_E_INVALID', `cannot run ${what}: a volume cannot be mounted at ${t}`, 'choose a directory of the container\'s own')
  }
  return t
}
