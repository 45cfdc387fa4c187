/**
 * The bundle: one gzip tarball with what a node's daemons need (dist/, bin/, package.json,
 * oclif.manifest.json, the native addons in build/Release/*.node and tess-logger when they were
 * built, and the production dependency closure of node_modules), built on the operator's machine
 * and installed on every node by bootstrap. Nodes run the same Node on the same architecture, so
 * the addons built here load there; each has a JS fallback, so a bundle without them works too
 * (without tess-logger, container logs have no times).
 *
 * Build: the production packages come from package-lock.json (entries not flagged dev/devOptional,
 * type-only @types/* left out), each package without its nested node_modules (nested production
 * packages have their own lock entries). The input hash covers every path, mode and content; a
 * bundle with the same input hash in outDir is reused after its sha256 is verified. The tarball is
 * reproducible (sorted names, fixed owner and mtime, gzip without a timestamp).
 *
 * Install: upload to a temp file, verify sha256 on the node (sha256sum), extract into
 * `<remoteDir>/<sha256 prefix>/` (via a temp dir + rename, with a marker holding the full sha256),
 * then point `<remoteDir>/current` at it by renaming a new symlink over the old one. A version whose
 * marker matches is not uploaded again.
 */
import { spawn } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import { pipeline } from 'node:stream/promises'
import zlib from 'node:zlib'
import { TessError, errorMessage } from '../lib/errors.js'
import { runCommand } from '../lib/process.js'
import { shellQuote, type SshTransport } from './ssh.js'
import { bundleMarkerFile } from '../lib/version.js'

/** Bumped when the bundle layout changes: part of the input hash. */
export const bundleFormatVersion = 1
export const bundleRemoteDirDefault = '/var/lib/tess/bundle'
/** Characters of the sha256 naming a version directory on a node. */
export const bundleVersionPrefixChars = 16
/** Versions kept on a node (the current one always). */
export const bundleVersionsKeptDefault = 3
/** Bundles kept in the local outDir cache. */
export const bundleCacheKeptDefault = 3
/** A bundle larger than this is refused (something odd got in). */
export const bundleInputMaxBytes = 1024 * 1024 * 1024
export const bundleInstallTimeoutMs = 5 * 60_000
/** Exit status of the install script when the uploaded file's sha256 is wrong. */
const shaMismatchExit = 65
/** Fixed mtime of every tar entry (2020-01-01T00:00:00Z): the tarball depends on contents only. */
const tarMtime = '@1577836800'
const tarTimeoutMs = 5 * 60_000
/** Where node-gyp puts the repo's native addons (binding.gyp): only the `.node` files are bundled. */
const nativeAddonDir = 'build/Release'
/** Files up to this size are hashed from one read. */
const smallFileBytes = 4 * 1024 * 1024

export interface Bundle {
  file: string
  sha256: string
  sizeBytes: number
  /** hash of the inputs (paths, modes, contents): the cache key */
  inputHash: string
  /** number of tar entries */
  files: number
  /** true when an existing tarball was reused */
  cached: boolean
}

export interface BundleInstallResult {
  host: string
  /** `<remoteDir>/<sha256 prefix>` */
  dir: string
  /** `<remoteDir>/current` (a symlink to the version directory) */
  current: string
  /** false when this version was already installed and verified */
  uploaded: boolean
  /** versions removed to keep bundleVersionsKeptDefault */
  pruned: string[]
}

interface Entry { rel: string, kind: 'file' | 'symlink', mode: number, size: number, digest: string }

interface LockPackage { dev?: boolean, devOptional?: boolean, optional?: boolean, extraneous?: boolean, link?: boolean }

/** Type-only packages: never needed at run time, even when a production package lists them. */
function isTypeOnly(rel: string): boolean {
  return /(^|\/)node_modules\/@types\/[^/]+$/.test(rel)
}

/**
 * The production dependency closure: package directories (relative to repoRoot, e.g.
 * `node_modules/ssh2`, `node_modules/a/node_modules/b`) from package-lock.json, or, without a lockfile,
 * from `npm ls --omit=dev --all --parseable`. Optional packages missing on disk are skipped.
 */
export async function productionPackages(repoRoot: string): Promise<string[]> {
  const lockFile = path.join(repoRoot, 'package-lock.json')
  let rels: string[]
  if (fs.existsSync(lockFile)) {
    let lock: { lockfileVersion?: number, packages?: Record<string, LockPackage> }
    try {
      lock = JSON.parse(fs.readFileSync(lockFile, 'utf8')) as typeof lock
    } catch (e) {
      throw new TessError('TESS_E_INVALID', `cannot read ${lockFile}: ${errorMessage(e)}`, 'run npm install to rewrite it')
    }
    if (!lock.packages) throw new TessError('TESS_E_INVALID', `${lockFile} has no "packages" (lockfileVersion ${String(lock.lockfileVersion)})`, 'regenerate it with npm 7 or newer (npm install)')
    rels = []
    for (const [rel, p] of Object.entries(lock.packages)) {
      if (rel === '' || !rel.startsWith('node_modules/') && !rel.includes('/node_modules/')) continue
      if (p.dev || p.devOptional || p.extraneous || isTypeOnly(rel)) continue
      if (!fs.existsSync(path.join(repoRoot, rel))) {
        if (p.optional) continue
        throw new TessError('TESS_E_PRECONDITION', `cannot build the bundle: production package ${rel} is not installed`, 'run npm ci (or npm install) first')
      }
      rels.push(rel)
    }
  } else {
    const out = await runCommand('npm', ['ls', '--omit=dev', '--all', '--parseable'], { cwd: repoRoot, timeoutMs: 120_000, tolerateExit: true })
    const root = path.resolve(repoRoot)
    rels = out.split('\n').map((l) => l.trim()).filter((l) => l.startsWith(root + path.sep))
      .map((l) => path.relative(root, l)).filter((r) => r.includes('node_modules') && !isTypeOnly(r))
  }
  // sanity: the root's dev-only dependencies must not be in the closure
  const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { dependencies?: Record<string, string>, devDependencies?: Record<string, string> }
  for (const d of Object.keys(pkg.devDependencies ?? {})) {
    if (pkg.dependencies?.[d] !== undefined) continue
    if (rels.includes(`node_modules/${d}`)) {
      throw new TessError('TESS_E_INVALID', `cannot build the bundle: dev dependency ${d} is in the production closure`, 'package-lock.json is out of date: run npm install')
    }
  }
  return [...new Set(rels)].sort()
}

async function hashFile(file: string): Promise<string> {
  const h = crypto.createHash('sha256')
  await pipeline(fs.createReadStream(file), h)
  return h.digest('hex')
}

/** Every file (and symlink) under `rel`, skipping `<rel>/node_modules` when `skipNested`. */
async function walk(root: string, rel: string, skipNested: boolean, out: Entry[]): Promise<void> {
  const abs = path.join(root, rel)
  const st = fs.lstatSync(abs)
  if (st.isSymbolicLink()) {
    out.push({ rel, kind: 'symlink', mode: 0o777, size: 0, digest: fs.readlinkSync(abs) })
    return
  }
  if (st.isFile()) {
    // small files (nearly all of them) are read whole: a stream per file costs more than the read
    const digest = st.size <= smallFileBytes ? crypto.createHash('sha256').update(fs.readFileSync(abs)).digest('hex') : await hashFile(abs)
    out.push({ rel, kind: 'file', mode: st.mode & 0o7777, size: st.size, digest })
    return
  }
  if (!st.isDirectory()) return // sockets, fifos: never part of a package
  const names = fs.readdirSync(abs).sort()
  for (const n of names) {
    if (skipNested && n === 'node_modules') continue
    await walk(root, path.posix.join(rel, n), false, out)
  }
}

/** The built native addons (`build/Release/*.node`) and tess-logger, relative to repoRoot; none when not built. */
function nativeAddons(repoRoot: string): string[] {
  let names: string[]
  try {
    names = fs.readdirSync(path.join(repoRoot, nativeAddonDir))
  } catch {
    return []
  }
  return names.filter((n) => n.endsWith('.node') || n === 'tess-logger').sort().map((n) => path.posix.join(nativeAddonDir, n))
    .filter((rel) => fs.statSync(path.join(repoRoot, rel)).isFile())
}

/** The bundle's inputs, sorted by path, and their hash. */
async function collectInputs(repoRoot: string): Promise<{ entries: Entry[], inputHash: string }> {
  const need = ['dist', 'bin', 'package.json', 'oclif.manifest.json']
  for (const n of need) {
    if (!fs.existsSync(path.join(repoRoot, n))) {
      throw new TessError('TESS_E_PRECONDITION', `cannot build the bundle: ${path.join(repoRoot, n)} is missing`, `build first: npm run build (in ${repoRoot})`)
    }
  }
  const entries: Entry[] = []
  for (const n of need) await walk(repoRoot, n, false, entries)
  for (const rel of nativeAddons(repoRoot)) await walk(repoRoot, rel, false, entries)
  if (!entries.some((e) => e.rel.startsWith('dist/') && e.rel.endsWith('.js'))) {
    throw new TessError('TESS_E_PRECONDITION', `cannot build the bundle: ${path.join(repoRoot, 'dist')} holds no JavaScript`, `build first: npm run build (in ${repoRoot})`)
  }
  for (const p of await productionPackages(repoRoot)) await walk(repoRoot, p, true, entries)
  entries.sort((a, b) => (a.rel < b.rel ? -1 : a.rel > b.rel ? 1 : 0))
  const total = entries.reduce((s, e) => s + e.size, 0)
  if (total > bundleInputMaxBytes) {
    throw new TessError('TESS_E_INVALID', `cannot build the bundle: its inputs are ${total} bytes, more than the ${bundleInputMaxBytes} allowed`, 'is a large file in dist/ or a production package?')
  }
  const h = crypto.createHash('sha256')
  h.update(`tess-bundle v${bundleFormatVersion}\n`)
  for (const e of entries) h.update(`${e.rel}\0${e.kind}\0${e.mode.toString(8)}\0${e.digest}\n`)
  return { entries, inputHash: h.digest('hex') }
}

interface BundleMeta { sha256: string, sizeBytes: number, inputHash: string, files: number, builtAt: string }

async function writeAtomic(file: string, data: string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`
  await fsp.writeFile(tmp, data, { mode: 0o644 })
  await fsp.rename(tmp, file)
}

/** Build (or reuse) the bundle of the repo at repoRoot into outDir. */
export async function buildBundle(repoRoot: string, outDir: string): Promise<Bundle> {
  const root = path.resolve(repoRoot)
  const { entries, inputHash } = await collectInputs(root)
  await fsp.mkdir(outDir, { recursive: true })
  const base = `tess-bundle-${inputHash.slice(0, bundleVersionPrefixChars)}`
  const file = path.join(path.resolve(outDir), `${base}.tar.gz`)
  const metaFile = path.join(path.resolve(outDir), `${base}.json`)

  // cache: same inputs → same tarball, if it is still what its metadata says
  try {
    const meta = JSON.parse(await fsp.readFile(metaFile, 'utf8')) as BundleMeta
    const st = await fsp.stat(file)
    if (meta.inputHash === inputHash && st.size === meta.sizeBytes && (await hashFile(file)) === meta.sha256) {
      const now = new Date()
      await fsp.utimes(file, now, now).catch(() => undefined) // most recently used, for pruning
      return { file, sha256: meta.sha256, sizeBytes: meta.sizeBytes, inputHash, files: meta.files, cached: true }
    }
  } catch { /* no usable cache entry */ }

  const tmp = `${file}.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`
  const tar = spawn('tar', [
    '--create', '--file=-', '--format=gnu', '--owner=0', '--group=0', '--numeric-owner', `--mtime=${tarMtime}`,
    '-C', root, '--null', '--no-recursion', '--files-from=-',
  ], { stdio: ['pipe', 'pipe', 'pipe'] })
  let tarErr = ''
  tar.stderr.setEncoding('utf8').on('data', (d: string) => { if (tarErr.length < 64 * 1024) tarErr += d })
  const tarExit = new Promise<number | null>((resolve, reject) => {
    tar.on('error', (e) => reject(new TessError('TESS_E_PRECONDITION', `cannot run tar to build the bundle: ${e.message}`, 'install tar')))
    tar.on('close', (code) => resolve(code))
  })
  const killer = setTimeout(() => tar.kill('SIGKILL'), tarTimeoutMs)
  tar.stdin.on('error', () => { /* tar died: reported by its exit */ })
  tar.stdin.end(entries.map((e) => e.rel).join('\0') + '\0')
  const sha = crypto.createHash('sha256')
  let size = 0
  const gzip = zlib.createGzip({ level: 6 })
  gzip.on('data', (d: Buffer) => {
    sha.update(d)
    size += d.length
  })
  try {
    await Promise.all([
      pipeline(tar.stdout, gzip, fs.createWriteStream(tmp, { mode: 0o644 })),
      tarExit.then((code) => {
        if (code !== 0) throw new TessError('TESS_E_IO', `tar failed building the bundle (exit ${String(code)}): ${tarErr.trim().split('\n').slice(-5).join('\n')}`, 'did a file change while the bundle was built? run again')
      }),
    ])
  } catch (e) {
    await fsp.rm(tmp, { force: true })
    throw e
  } finally {
    clearTimeout(killer)
  }
  const sha256 = sha.digest('hex')
  await fsp.rename(tmp, file)
  const meta: BundleMeta = { sha256, sizeBytes: size, inputHash, files: entries.length, builtAt: new Date().toISOString() }
  await writeAtomic(metaFile, JSON.stringify(meta, null, 2) + '\n')
  await pruneCache(path.resolve(outDir), base)
  return { file, sha256, sizeBytes: size, inputHash, files: entries.length, cached: false }
}

/** Keep the newest bundleCacheKeptDefault bundles in outDir (by mtime; `keep` always). */
async function pruneCache(outDir: string, keep: string): Promise<void> {
  const names = (await fsp.readdir(outDir)).filter((n) => /^tess-bundle-[0-9a-f]+\.tar\.gz$/.test(n))
  const withTime = await Promise.all(names.map(async (n) => ({ n, t: (await fsp.stat(path.join(outDir, n)).catch(() => undefined))?.mtimeMs ?? 0 }))) // a bundle removed meanwhile sorts first and is pruned
  withTime.sort((a, b) => b.t - a.t)
  const drop = withTime.filter((x) => !x.n.startsWith(keep + '.')).slice(bundleCacheKeptDefault - 1)
  for (const { n } of drop) {
    await fsp.rm(path.join(outDir, n), { force: true })
    await fsp.rm(path.join(outDir, n.replace(/\.tar\.gz$/, '.json')), { force: true })
  }
}

export interface InstallBundleOptions {
  /** default /var/lib/tess/bundle */
  remoteDir?: string
  /** versions kept on the node, the new current one included (default 3) */
  keepVersions?: number
  onProgress?: (sentBytes: number, totalBytes: number) => void
}

/** What installBundle needs of a transport. */
export type BundleTransport = Pick<SshTransport, 'host' | 'exec' | 'upload' | 'mkdirp'>

/** Install a bundle on a node (idempotent): upload, verify, extract, switch `current`. */
export async function installBundle(t: BundleTransport, bundle: Pick<Bundle, 'file' | 'sha256' | 'sizeBytes'>, opts: InstallBundleOptions = {}): Promise<BundleInstallResult> {
  const remoteDir = (opts.remoteDir ?? bundleRemoteDirDefault).replace(/\/+$/, '')
  if (!remoteDir.startsWith('/') || remoteDir === '') throw new TessError('TESS_E_INVALID', `bundle directory "${remoteDir}" is not absolute`, 'give an absolute path')
  if (!/^[0-9a-f]{64}$/.test(bundle.sha256)) throw new TessError('TESS_E_INVALID', `bad bundle sha256 "${bundle.sha256}"`, 'build the bundle with buildBundle')
  const version = bundle.sha256.slice(0, bundleVersionPrefixChars)
  const dir = `${remoteDir}/${version}`
  const current = `${remoteDir}/current`
  const q = shellQuote

  const marker = await t.exec(`cat ${q(`${dir}/${bundleMarkerFile}`)} 2>/dev/null`, { timeoutMs: 30_000 })
  const present = marker.code === 0 && marker.stdout.trim() === bundle.sha256
  let uploaded = false
  if (!present) {
    await t.mkdirp(remoteDir, 0o755)
    const rand = crypto.randomBytes(6).toString('hex')
    const tmpFile = `${remoteDir}/.upload-${version}-${rand}.tar.gz`
    const tmpDir = `${remoteDir}/.extract-${version}-${rand}`
    try {
      await t.upload(bundle.file, tmpFile, { mode: 0o600, onProgress: opts.onProgress })
      // verify, extract beside the target, mark as complete, then rename into place (one session)
      const r = await t.exec([
        `trap 'rm -rf ${q(tmpFile)} ${q(tmpDir)}' EXIT`,
        'set -e',
        `got=$(sha256sum -b ${q(tmpFile)} | cut -d' ' -f1)`,
        `if [ "$got" != ${bundle.sha256} ]; then echo "$got"; exit ${shaMismatchExit}; fi`,
        `mkdir -m 0755 ${q(tmpDir)}`,
        `tar -xzf ${q(tmpFile)} -C ${q(tmpDir)} --no-same-owner`,
        `echo ${bundle.sha256} > ${q(`${tmpDir}/${bundleMarkerFile}`)}`,
        `sync -f ${q(tmpDir)} 2>/dev/null || true`,
        `rm -rf ${q(dir)}`,
        `mv -T ${q(tmpDir)} ${q(dir)}`,
      ].join('\n'), { timeoutMs: bundleInstallTimeoutMs })
      if (r.code === shaMismatchExit) {
        throw new TessError('TESS_E_IO', `bundle uploaded to ${t.host}:${tmpFile} has sha256 ${r.stdout.trim()}, expected ${bundle.sha256}`, 'the upload was corrupted: run again')
      }
      if (r.code !== 0) {
        throw new TessError('TESS_E_IO', `on ${t.host}: extracting the bundle into ${dir} failed (exit ${r.code}): ${r.stderr.trim().split('\n').slice(-5).join('\n')}`,
          `is there space on ${t.host}'s ${remoteDir} (df -h ${remoteDir})?`)
      }
      uploaded = true
    } catch (e) {
      await t.exec(`rm -rf ${q(tmpFile)} ${q(tmpDir)}`, { timeoutMs: 60_000 }).catch(() => undefined) // cleanup after the failed upload, whose error is thrown below
      throw e
    }
  }
  // point `current` at this version (a new symlink renamed over the old one: atomic), then keep
  // the newest versions by mtime, never the current one
  const keep = Math.max(1, opts.keepVersions ?? bundleVersionsKeptDefault)
  const tmpLink = `.current-${crypto.randomBytes(6).toString('hex')}`
  const sw = await t.exec([
    `cd ${q(remoteDir)} || exit 1`,
    `if [ "$(readlink current 2>/dev/null)" != ${version} ]; then`,
    `  ln -s ${version} ${tmpLink} && mv -T -f ${tmpLink} current || { rm -f ${tmpLink}; exit 1; }`,
    'fi',
    `ls -1t -d -- ${'[0-9a-f]'.repeat(bundleVersionPrefixChars)} 2>/dev/null | grep -vx ${version} | tail -n +${keep} | while read -r d; do rm -rf -- "$d" && echo "pruned=$d"; done`,
    'exit 0',
  ].join('\n'), { timeoutMs: 120_000 })
  if (sw.code !== 0) {
    throw new TessError('TESS_E_IO', `on ${t.host}: pointing ${current} at ${version} failed: ${sw.stderr.trim().split('\n').slice(-5).join('\n')}`, `check ${remoteDir} on ${t.host}`)
  }
  const pruned = sw.stdout.split('\n').filter((l) => l.startsWith('pruned=')).map((l) => l.slice('pruned='.length))
  return { host: t.host, dir, current, uploaded, pruned }
}
