import { TessError } from './errors.js'

export const namePattern = /^[a-z0-9][a-z0-9-]{0,62}$/

/** Names of vDisks, clusters, nodes, CSMs, ...: `[a-z0-9][a-z0-9-]{0,62}`. */
export function checkName(kind: string, name: string): string {
  if (!namePattern.test(name)) {
    throw new TessError('TESS_E_INVALID', `invalid ${kind} name "${name}"`, 'names are 1-63 characters: lowercase letters, digits and "-", starting with a letter or digit')
  }
  return name
}

/** An NBD export name: a vDisk's name, or VDISK@SNAPSHOT for one of its snapshots. */
export function checkExportName(name: string): string {
  const [vdisk, snapshot, ...rest] = name.split('@')
  if (rest.length > 0) throw new TessError('TESS_E_INVALID', `invalid export name "${name}"`, 'an export is VDISK or VDISK@SNAPSHOT')
  checkName('vDisk', vdisk!)
  if (snapshot !== undefined) checkName('snapshot', snapshot)
  return name
}
