import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { distDir, findPackageRoot, nativeBuildFile, packageRoot } from '../../src/lib/packageroot.js'

const dirs: string[] = []
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true })
})

describe('packageRoot', () => {
  it('is the first directory at or above a module that holds a package.json', () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-pkgroot-'))
    dirs.push(root)
    fs.writeFileSync(path.join(root, 'package.json'), '{}')
    const deep = path.join(root, 'dist', 'cli-bundle', 'chunks')
    fs.mkdirSync(deep, { recursive: true })
    expect(findPackageRoot(deep)).toBe(root)
    expect(findPackageRoot(root)).toBe(root)
    // a nearer package.json wins
    fs.writeFileSync(path.join(root, 'dist', 'package.json'), '{}')
    expect(findPackageRoot(deep)).toBe(path.join(root, 'dist'))
  })

  it('is this repository when run from src/ (the tests), and names dist/ and build/Release under it', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { name: string }
    expect(pkg.name).toBe('tessera')
    expect(fs.existsSync(path.join(packageRoot, 'src', 'lib', 'packageroot.ts'))).toBe(true)
    expect(distDir).toBe(path.join(packageRoot, 'dist'))
    expect(nativeBuildFile('tess_io.node')).toBe(path.join(packageRoot, 'build', 'Release', 'tess_io.node'))
  })

  it('throws when no directory up to / holds a package.json', () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-pkgroot-'))
    dirs.push(root)
    // os.tmpdir() has no package.json above it on these machines; skip the check where one has
    let above = false
    for (let d = path.dirname(root); ; d = path.dirname(d)) {
      if (fs.existsSync(path.join(d, 'package.json'))) above = true
      if (path.dirname(d) === d) break
    }
    if (above) expect(findPackageRoot(root)).not.toBe(root)
    else expect(() => findPackageRoot(root)).toThrow(/no package.json at or above/)
  })
})
