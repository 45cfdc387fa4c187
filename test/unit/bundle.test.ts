import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildBundle, productionPackages } from '../../src/bootstrap/bundle.js'

/**
 * The node bundle: production closure only, reproducible tarball, cache by input hash, and an
 * extracted bundle runs on its own (no node_modules above it).
 */

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')

function sh(cmd: string, args: string[], opts: { cwd?: string, timeoutMs?: number } = {}): { code: number, stdout: string, stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', cwd: opts.cwd, timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024 })
  return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' }
}

function write(file: string, data: string, mode = 0o644): void {
  fs.mkdirSync(path.dirname(file), { recursive: true })
  fs.writeFileSync(file, data, { mode })
  fs.chmodSync(file, mode)
}

function tarList(file: string): string[] {
  const r = sh('tar', ['-tzf', file])
  expect(r.code, r.stderr).toBe(0)
  return r.stdout.split('\n').filter(Boolean)
}

let tmp: string

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-bundle-'))
})

afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true })
})

describe('a small repo', () => {
  let root: string
  let out: string

  beforeAll(() => {
    root = path.join(tmp, 'fake')
    out = path.join(tmp, 'fake-out')
    write(path.join(root, 'package.json'), JSON.stringify({ name: 'fake', type: 'module', dependencies: { a: '1' }, devDependencies: { b: '1' } }))
    write(path.join(root, 'package-lock.json'), JSON.stringify({
      lockfileVersion: 3,
      packages: {
        '': { name: 'fake' },
        'node_modules/a': { version: '1.0.0' },
        'node_modules/a/node_modules/c': { version: '1.0.0' },
        'node_modules/b': { version: '1.0.0', dev: true },
        'node_modules/b/node_modules/d': { version: '1.0.0', dev: true },
        'node_modules/e': { version: '1.0.0', devOptional: true },
        'node_modules/@types/x': { version: '1.0.0' },
        'node_modules/opt-missing': { version: '1.0.0', optional: true },
      },
    }))
    write(path.join(root, 'node_modules/a/package.json'), JSON.stringify({ name: 'a', main: 'index.js' }))
    write(path.join(root, 'node_modules/a/index.js'), "module.exports = 'a+' + require('c')\n")
    write(path.join(root, 'node_modules/a/node_modules/c/package.json'), JSON.stringify({ name: 'c', main: 'index.js' }))
    write(path.join(root, 'node_modules/a/node_modules/c/index.js'), "module.exports = 'c'\n")
    write(path.join(root, 'node_modules/a/node_modules/stray/index.js'), '// not in the lockfile\n')
    write(path.join(root, 'node_modules/b/index.js'), '// dev\n')
    write(path.join(root, 'node_modules/b/node_modules/d/index.js'), '// dev\n')
    write(path.join(root, 'node_modules/e/index.js'), '// dev optional\n')
    write(path.join(root, 'node_modules/@types/x/index.d.ts'), 'export {}\n')
    fs.mkdirSync(path.join(root, 'node_modules/.bin'), { recursive: true })
    fs.symlinkSync('../b/index.js', path.join(root, 'node_modules/.bin/b'))
    write(path.join(root, 'dist/main.js'), "import a from 'a'\nconsole.log('main ' + a)\n")
    write(path.join(root, 'bin/run.js'), '#!/usr/bin/env node\nimport "../dist/main.js"\n', 0o755)
    write(path.join(root, 'oclif.manifest.json'), '{"commands":{}}\n')
    write(path.join(root, 'src/main.ts'), '// sources stay out\n')
    // node-gyp output: the built addons go in, the objects and makefiles do not
    write(path.join(root, 'build/Release/fake.node'), 'not really an addon\n', 0o755)
    write(path.join(root, 'build/Release/obj.target/fake/native/fake.o'), 'object\n')
    write(path.join(root, 'build/Makefile'), 'all:\n')
    write(path.join(root, 'native/fake.c'), '/* sources stay out */\n')
  })

  it('takes the production closure from package-lock.json', async () => {
    expect(await productionPackages(root)).toEqual(['node_modules/a', 'node_modules/a/node_modules/c'])
  })

  it('packs dist, bin, package.json, the manifest and production packages only', async () => {
    const b = await buildBundle(root, out)
    expect(b.cached).toBe(false)
    expect(b.sha256).toMatch(/^[0-9a-f]{64}$/)
    expect(b.sizeBytes).toBe(fs.statSync(b.file).size)
    expect(sh('sha256sum', [b.file]).stdout.split(' ')[0]).toBe(b.sha256)
    expect(tarList(b.file).sort()).toEqual([
      'bin/run.js', 'build/Release/fake.node', 'dist/main.js',
      'node_modules/a/index.js', 'node_modules/a/node_modules/c/index.js', 'node_modules/a/node_modules/c/package.json', 'node_modules/a/package.json',
      'oclif.manifest.json', 'package.json',
    ])
    const v = sh('tar', ['-tvzf', b.file]).stdout
    expect(v).toMatch(/-rwxr-xr-x 0\/0 .* bin\/run\.js/)

    const x = path.join(tmp, 'fake-x')
    fs.mkdirSync(x)
    expect(sh('tar', ['-xzf', b.file, '-C', x]).code).toBe(0)
    const r = sh('node', [path.join(x, 'bin/run.js')])
    expect(r.stderr).toBe('')
    expect(r.stdout.trim()).toBe('main a+c')
  })

  it('reuses a bundle with the same inputs, rebuilds it byte for byte, and follows changes', async () => {
    const first = await buildBundle(root, out)
    const again = await buildBundle(root, out)
    expect(again.cached).toBe(true)
    expect(again.sha256).toBe(first.sha256)
    // a damaged cache entry is rebuilt, and the rebuild is identical (reproducible tarball)
    fs.appendFileSync(first.file, 'x')
    const rebuilt = await buildBundle(root, out)
    expect(rebuilt.cached).toBe(false)
    expect(rebuilt.sha256).toBe(first.sha256)
    // an input change (contents or mode) is a new bundle
    write(path.join(root, 'dist/main.js'), "import a from 'a'\nconsole.log('main2 ' + a)\n")
    const changed = await buildBundle(root, out)
    expect(changed.cached).toBe(false)
    expect(changed.inputHash).not.toBe(first.inputHash)
    expect(changed.sha256).not.toBe(first.sha256)
    fs.chmodSync(path.join(root, 'bin/run.js'), 0o700)
    const modeChanged = await buildBundle(root, out)
    expect(modeChanged.inputHash).not.toBe(changed.inputHash)
    fs.chmodSync(path.join(root, 'bin/run.js'), 0o755)
    write(path.join(root, 'dist/main.js'), "import a from 'a'\nconsole.log('main ' + a)\n")
    const back = await buildBundle(root, out)
    expect(back.cached).toBe(true)
    expect(back.sha256).toBe(first.sha256)
  })

  it('refuses when a production package or the build is missing', async () => {
    fs.renameSync(path.join(root, 'node_modules/a'), path.join(root, 'node_modules/a.away'))
    try {
      await expect(buildBundle(root, out)).rejects.toMatchObject({ code: 'TESS_E_PRECONDITION', message: expect.stringMatching(/node_modules\/a is not installed/) })
    } finally {
      fs.renameSync(path.join(root, 'node_modules/a.away'), path.join(root, 'node_modules/a'))
    }
    fs.renameSync(path.join(root, 'dist'), path.join(root, 'dist.away'))
    try {
      await expect(buildBundle(root, out)).rejects.toMatchObject({ code: 'TESS_E_PRECONDITION', hint: expect.stringMatching(/npm run build/) })
    } finally {
      fs.renameSync(path.join(root, 'dist.away'), path.join(root, 'dist'))
    }
  })
})

describe('the tessera repo', () => {
  let file: string

  beforeAll(async () => {
    if (!fs.existsSync(path.join(repoRoot, 'dist', 'lib', 'units.js')) || !fs.existsSync(path.join(repoRoot, 'dist', 'lib', 'crc32c.js'))) {
      const r = sh('npm', ['run', 'build'], { cwd: repoRoot, timeoutMs: 300_000 })
      expect(r.code, r.stderr).toBe(0)
    }
    const b = await buildBundle(repoRoot, path.join(tmp, 'repo-out'))
    file = b.file
  }, 300_000)

  it('has dist and production dependencies, and no dev dependencies', async () => {
    const list = tarList(file)
    const has = (p: string): boolean => list.includes(p)
    for (const p of ['package.json', 'oclif.manifest.json', 'bin/run.js', 'dist/lib/units.js', 'dist/supervisor/services.js',
      'node_modules/ssh2/package.json', 'node_modules/@oclif/core/package.json', 'node_modules/etcd3/package.json', 'node_modules/conf/package.json']) {
      expect(has(p), p).toBe(true)
    }
    const dev = list.filter((p) => /^node_modules\/(typescript|vitest|vite|oclif|@types|@vitest|esbuild|rollup)\//.test(p) || p.includes('/.bin/') || p.startsWith('node_modules/.'))
    expect(dev).toEqual([])
    expect(list.some((p) => p.startsWith('src/') || p.startsWith('test/'))).toBe(false)
    const pkgs = await productionPackages(repoRoot)
    expect(pkgs).toContain('node_modules/ssh2')
    expect(pkgs.some((p) => /node_modules\/(typescript|vitest|oclif|@types\/)/.test(p))).toBe(false)
  })

  it('runs from where it is extracted', () => {
    const x = path.join(tmp, 'repo-x')
    fs.mkdirSync(x)
    expect(sh('tar', ['-xzf', file, '-C', x]).code).toBe(0)
    const units = sh('node', ['-e', `import(${JSON.stringify(path.join(x, 'dist/lib/units.js'))}).then((m) => console.log(m.parseSize('1G')))`], { cwd: x })
    expect(units.stderr).toBe('')
    expect(units.stdout.trim()).toBe('1073741824')
    // a module with production dependencies (conf) resolves them inside the bundle
    const ctx = sh('node', ['-e', `import(${JSON.stringify(path.join(x, 'dist/lib/contexts.js'))}).then((m) => console.log(typeof m.configDir))`], { cwd: '/' })
    expect(ctx.stderr).toBe('')
    expect(ctx.stdout.trim()).toBe('function')
    const svc = sh('node', ['-e', `import(${JSON.stringify(path.join(x, 'dist/supervisor/services.js'))}).then((m) => console.log(Object.keys(m).length > 0))`], { cwd: '/' })
    expect(svc.stderr).toBe('')
    expect(svc.stdout.trim()).toBe('true')
  })

  it('carries the native addons when they are built, and they load there', () => {
    const built = fs.existsSync(path.join(repoRoot, 'build/Release/tess_crc32c.node'))
    expect(tarList(file).includes('build/Release/tess_crc32c.node')).toBe(built)
    const ioBuilt = fs.existsSync(path.join(repoRoot, 'build/Release/tess_io.node'))
    expect(tarList(file).includes('build/Release/tess_io.node')).toBe(ioBuilt)
    const loggerBuilt = fs.existsSync(path.join(repoRoot, 'build/Release/tess-logger'))
    expect(tarList(file).includes('build/Release/tess-logger')).toBe(loggerBuilt)
    const x = path.join(tmp, 'repo-x-addon')
    fs.mkdirSync(x)
    expect(sh('tar', ['-xzf', file, '-C', x]).code).toBe(0)
    const code = `import(${JSON.stringify(path.join(x, 'dist/lib/crc32c.js'))}).then((m) => console.log(m.crc32cImplementation, m.crc32c(Buffer.from('123456789')).toString(16)))`
    const r = spawnSync('node', ['-e', code], { cwd: '/', encoding: 'utf8', env: { ...process.env, TESS_CRC32C: built ? 'native' : '' } })
    expect(r.stderr).toBe('')
    expect(r.stdout.trim()).toBe(`${built ? 'native' : 'js'} e3069283`)
    const io = spawnSync('node', ['-e', `import(${JSON.stringify(path.join(x, 'dist/lib/nativeio.js'))}).then((m) => console.log(m.nativeIoEngine))`],
      { cwd: '/', encoding: 'utf8', env: { ...process.env, TESS_IO: ioBuilt ? 'native' : '' } })
    expect(io.stderr).toBe('')
    expect(io.stdout.trim()).toBe(ioBuilt ? 'native' : 'pool')
  })
})
