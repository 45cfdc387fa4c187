import { createRequire } from 'node:module'
import { errorMessage } from '../../lib/errors.js'
import { nativeBuildFile } from '../../lib/packageroot.js'

/** native/mount.c as node-gyp builds it (build/Release/tess_mount.node) */
export interface MountBinding {
  idmapBind(source: string, target: string, usernsPath: string): void
  /** mount(2) of an overlay; throws an Error whose code is the errno name (missing in an addon built before it) */
  overlayMount?(target: string, options: string): void
}

export const mountAddonFile = nativeBuildFile('tess_mount.node')

/**
 * The mount addon, or why it is not there. `TESS_NATIVE_MOUNT=0` leaves it out: overlays are then
 * mounted by the mount command (as without the addon, and as for options
 * with relative paths: test/integration/runtime.test.ts mounts both ways), and --userns is refused.
 */
export const mountAddon: { binding: MountBinding | undefined, error: string | undefined } = load()

function load(): { binding: MountBinding | undefined, error: string | undefined } {
  if (process.env.TESS_NATIVE_MOUNT === '0') return { binding: undefined, error: 'TESS_NATIVE_MOUNT=0' }
  try {
    return { binding: createRequire(import.meta.url)(mountAddonFile) as MountBinding, error: undefined }
  } catch (e) {
    // not built (no g++ at npm ci): the commands do the overlay mounts, and --userns is refused
    return { binding: undefined, error: errorMessage(e) }
  }
}
