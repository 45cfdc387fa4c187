import { TessError } from './errors.js'

export const namePattern = /^[a-z0-9][a-z0-9-]{0,62}$/

/** Names of vDisks, clusters, nodes, CSMs, ...: `[a-z0-9][a-z0-9-]{0,62}`. */
export function checkName(kind: string, name: string): string {
  if (!namePattern.test(name)) {
    throw new TessError('TESS_E_INVALID', `invalid ${kind} name "${name}"`, 'names are 1-63 characters: lowercase letters, digits and "-", starting with a letter or digit')
  }
  return name
}
