import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

/**
 * The first directory at or above `from` that holds a package.json: the package's root (where
 * package.json, dist/ and build/ are).
 */
export function findPackageRoot(from: string): string {
  for (let dir = path.resolve(from); ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir
    assert(path.dirname(dir) !== dir, `no package.json at or above ${from}`)
  }
}

/**
 * This package's root, found from this module's own place, which differs by how it runs: dist/lib/
 * (tsc's output, as the daemons run it), dist/cli-bundle/chunks/ (the CLI's bundle) or src/lib/
 * (the tests). Paths to other files of the package start here, never at `import.meta.url`.
 */
export const packageRoot = findPackageRoot(path.dirname(fileURLToPath(import.meta.url)))

/** where tsc's output is: the daemons' scripts */
export const distDir = path.join(packageRoot, 'dist')

/** a native addon or helper built by node-gyp (build/Release/NAME) */
export function nativeBuildFile(name: string): string {
  return path.join(packageRoot, 'build', 'Release', name)
}
