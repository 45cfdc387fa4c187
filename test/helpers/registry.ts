import { spawn } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import zlib from 'node:zlib'
import { writeTar, type TarWriteEntry } from '../../src/lib/images/tar.js'

/**
 * Registries for the image tests:
 * - FakeRegistry: an in-process node:http registry (127.0.0.1, ephemeral port) serving images
 *   built in memory, with switches for auth (Bearer token or Basic), failures (5xx, cut
 *   connections), tampered bytes and Range support.
 * - startDockerRegistry(): the real Debian `docker-registry` on 127.0.0.1 with a temp storage
 *   dir, stopped by its pid; buildBusyboxImage() builds an OCI image with umoci from busybox-static
 *   and pushImage() pushes it with skopeo.
 */

export const sha256 = (b: Uint8Array): string => `sha256:${crypto.createHash('sha256').update(b).digest('hex')}`

export interface TestLayer {
  /** the blob as served (gzip unless asked otherwise) */
  blob: Buffer
  digest: string
  diffId: string
  mediaType: string
}

/** A layer from tar entries (mtime 0, owner 0:0 unless given). */
export function makeLayer(entries: Array<Partial<TarWriteEntry> & { name: string, type: TarWriteEntry['type'] }>, opts: { gzip?: boolean } = {}): TestLayer {
  const tar = writeTar(entries.map((e) => ({ mode: e.type === 'dir' ? 0o755 : 0o644, uid: 0, gid: 0, mtime: 1_700_000_000, ...e })))
  const gzip = opts.gzip ?? true
  const blob = gzip ? zlib.gzipSync(tar) : tar
  return {
    blob,
    digest: sha256(blob),
    diffId: sha256(tar),
    mediaType: gzip ? 'application/vnd.oci.image.layer.v1.tar+gzip' : 'application/vnd.oci.image.layer.v1.tar',
  }
}

export function file(name: string, content: string, extra: Partial<TarWriteEntry> = {}): TarWriteEntry & { data: Buffer } {
  return { name, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: 1_700_000_000, data: Buffer.from(content), ...extra }
}

export interface BuiltImage {
  manifest: Buffer
  manifestDigest: string
  config: Buffer
  configDigest: string
  layers: TestLayer[]
}

export function makeImage(layers: TestLayer[], opts: { os?: string, architecture?: string, docker?: boolean } = {}): BuiltImage {
  const config = Buffer.from(JSON.stringify({
    architecture: opts.architecture ?? 'amd64',
    os: opts.os ?? 'linux',
    config: { Cmd: ['/bin/sh'] },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
  }))
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: opts.docker === true ? 'application/vnd.docker.distribution.manifest.v2+json' : 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: opts.docker === true ? 'application/vnd.docker.container.image.v1+json' : 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
    layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.blob.length })),
  }))
  return { manifest, manifestDigest: sha256(manifest), config, configDigest: sha256(config), layers }
}

export function makeIndex(entries: Array<{ image: BuiltImage, os: string, architecture: string, variant?: string }>, opts: { docker?: boolean } = {}): { bytes: Buffer, digest: string } {
  const bytes = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: opts.docker === true ? 'application/vnd.docker.distribution.manifest.list.v2+json' : 'application/vnd.oci.image.index.v1+json',
    manifests: entries.map((e) => ({
      mediaType: JSON.parse(e.image.manifest.toString()).mediaType as string,
      digest: e.image.manifestDigest,
      size: e.image.manifest.length,
      platform: { os: e.os, architecture: e.architecture, ...(e.variant !== undefined ? { variant: e.variant } : {}) },
    })),
  }))
  return { bytes, digest: sha256(bytes) }
}

export interface RequestLog {
  method: string
  url: string
  headers: http.IncomingHttpHeaders
}

/** An in-process registry for unit tests. */
export class FakeRegistry {
  private server: http.Server | undefined
  port = 0
  readonly requests: RequestLog[] = []
  /** repo -> reference (tag or digest) -> manifest */
  private readonly manifests = new Map<string, Map<string, { bytes: Buffer, mediaType: string }>>()
  readonly blobs = new Map<string, Buffer>()
  /** bytes served instead of a blob's real bytes */
  readonly tampered = new Map<string, Buffer>()
  /** answer the next N requests (matching `failPath`, if set) with this status */
  failNext = 0
  failStatus = 503
  failPath: RegExp | undefined
  /** cut the connection after this many body bytes of the next GET of each listed blob */
  readonly cutBlobAfter = new Map<string, number>()
  /** send this many body bytes of the next GET of each listed blob, then the rest once `release` resolves (a download in progress) */
  readonly holdBlobAfter = new Map<string, { bytes: number, release: Promise<void> }>()
  rangeSupport = true
  sendDigestHeader = true
  auth: { kind: 'basic', username: string, password: string } | { kind: 'bearer', username?: string, password?: string, expiresIn?: number } | undefined
  tokensIssued = 0
  private readonly validTokens = new Set<string>()

  get host(): string {
    return `127.0.0.1:${this.port}`
  }

  async start(): Promise<this> {
    this.server = http.createServer((req, res) => this.handle(req, res))
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve))
    this.port = (this.server.address() as net.AddressInfo).port
    return this
  }

  async stop(): Promise<void> {
    const s = this.server
    if (s === undefined) return
    s.closeAllConnections()
    await new Promise<void>((resolve) => s.close(() => resolve()))
    this.server = undefined
  }

  /**
   * A two-layer image (a small first layer, a second of about `secondBytes`) whose second layer's
   * download stops after `holdBytes` until `release()`: a pull in progress, for as long as a test needs.
   */
  addHeldImage(repo: string, tag: string, o: { secondBytes: number, holdBytes: number }): { first: TestLayer, second: TestLayer, release: () => void } {
    const first = makeLayer([file('one', 'first layer\n')])
    const second = makeLayer([file('two', crypto.randomBytes(Math.ceil(o.secondBytes * 3 / 4)).toString('base64'))])
    this.addImage(repo, tag, makeImage([first, second]))
    let release!: () => void
    this.holdBlobAfter.set(second.digest, { bytes: o.holdBytes, release: new Promise<void>((r) => { release = r }) })
    return { first, second, release }
  }

  addImage(repo: string, tag: string | undefined, image: BuiltImage): void {
    for (const l of image.layers) this.blobs.set(l.digest, l.blob)
    this.blobs.set(image.configDigest, image.config)
    const mediaType = JSON.parse(image.manifest.toString()).mediaType as string
    this.putManifest(repo, image.manifestDigest, image.manifest, mediaType)
    if (tag !== undefined) this.putManifest(repo, tag, image.manifest, mediaType)
  }

  addIndex(repo: string, tag: string, index: { bytes: Buffer, digest: string }, images: BuiltImage[]): void {
    for (const im of images) this.addImage(repo, undefined, im)
    const mediaType = JSON.parse(index.bytes.toString()).mediaType as string
    this.putManifest(repo, tag, index.bytes, mediaType)
    this.putManifest(repo, index.digest, index.bytes, mediaType)
  }

  private putManifest(repo: string, ref: string, bytes: Buffer, mediaType: string): void {
    let m = this.manifests.get(repo)
    if (m === undefined) this.manifests.set(repo, m = new Map())
    m.set(ref, { bytes, mediaType })
  }

  blobGets(digest: string): RequestLog[] {
    return this.requests.filter((r) => r.method === 'GET' && r.url.endsWith(`/blobs/${digest}`))
  }

  private error(res: http.ServerResponse, status: number, code: string, extra: Record<string, string> = {}): void {
    res.writeHead(status, { 'content-type': 'application/json', ...extra })
    res.end(JSON.stringify({ errors: [{ code, message: code.toLowerCase() }] }))
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = req.url ?? '/'
    this.requests.push({ method: req.method ?? '', url, headers: req.headers })
    if (url.startsWith('/token')) return this.token(req, res)
    if (this.failNext > 0 && (this.failPath === undefined || this.failPath.test(url))) {
      this.failNext--
      return this.error(res, this.failStatus, 'UNAVAILABLE')
    }
    if (!this.authorised(req, res)) return
    if (url === '/v2/') {
      res.writeHead(200, { 'content-type': 'application/json' })
      return void res.end('{}')
    }
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(url)
    if (m === null) return this.error(res, 404, 'NOT_FOUND')
    const [, repo, kind, ref] = m as unknown as [string, string, string, string]
    if (kind === 'manifests') {
      const repoManifests = this.manifests.get(repo)
      if (repoManifests === undefined) return this.error(res, 404, 'NAME_UNKNOWN')
      const man = repoManifests.get(ref)
      if (man === undefined) return this.error(res, 404, 'MANIFEST_UNKNOWN')
      const headers: Record<string, string | number> = { 'content-type': man.mediaType, 'content-length': man.bytes.length }
      if (this.sendDigestHeader) headers['docker-content-digest'] = sha256(man.bytes)
      res.writeHead(200, headers)
      return void res.end(req.method === 'HEAD' ? undefined : man.bytes)
    }
    const real = this.blobs.get(ref)
    if (real === undefined) return this.error(res, 404, 'BLOB_UNKNOWN')
    const blob = this.tampered.get(ref) ?? real
    let start = 0
    const range = /^bytes=(\d+)-$/.exec(String(req.headers.range ?? ''))
    if (range !== null && this.rangeSupport) {
      start = Number(range[1])
      if (start >= blob.length) return this.error(res, 416, 'RANGE_INVALID')
      res.writeHead(206, { 'content-type': 'application/octet-stream', 'content-length': blob.length - start, 'content-range': `bytes ${start}-${blob.length - 1}/${blob.length}` })
    } else {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': blob.length, 'docker-content-digest': ref })
    }
    if (req.method === 'HEAD') return void res.end()
    const hold = this.holdBlobAfter.get(ref)
    if (hold !== undefined) {
      this.holdBlobAfter.delete(ref)
      res.write(blob.subarray(start, start + hold.bytes))
      void hold.release.then(() => res.end(blob.subarray(start + hold.bytes)))
      return
    }
    const cut = this.cutBlobAfter.get(ref)
    if (cut !== undefined) {
      this.cutBlobAfter.delete(ref)
      res.write(blob.subarray(start, start + cut), () => setTimeout(() => res.destroy(), 20))
      return
    }
    res.end(blob.subarray(start))
  }

  private authorised(req: http.IncomingMessage, res: http.ServerResponse): boolean {
    const a = this.auth
    if (a === undefined) return true
    const h = req.headers.authorization ?? ''
    if (a.kind === 'basic') {
      if (h === `Basic ${Buffer.from(`${a.username}:${a.password}`).toString('base64')}`) return true
      this.error(res, 401, 'UNAUTHORIZED', { 'www-authenticate': 'Basic realm="fake"' })
      return false
    }
    if (h.startsWith('Bearer ') && this.validTokens.has(h.slice(7))) return true
    const m = /^\/v2\/(.+)\/(?:manifests|blobs)\//.exec(req.url ?? '')
    const scope = m !== null ? `,scope="repository:${m[1]}:pull"` : ''
    this.error(res, 401, 'UNAUTHORIZED', { 'www-authenticate': `Bearer realm="http://${this.host}/token",service="fake-registry"${scope}` })
    return false
  }

  private token(req: http.IncomingMessage, res: http.ServerResponse): void {
    const a = this.auth
    if (a?.kind !== 'bearer') return this.error(res, 404, 'NOT_FOUND')
    const u = new URL(req.url ?? '/', `http://${this.host}`)
    if (u.searchParams.get('service') !== 'fake-registry') return this.error(res, 400, 'BAD_SERVICE')
    if (a.username !== undefined) {
      const want = `Basic ${Buffer.from(`${a.username}:${a.password ?? ''}`).toString('base64')}`
      if (req.headers.authorization !== want) return this.error(res, 401, 'UNAUTHORIZED')
    }
    const token = crypto.randomBytes(8).toString('hex')
    this.validTokens.add(token)
    this.tokensIssued++
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ token, expires_in: a.expiresIn ?? 300 }))
  }
}

// ---- the real docker-registry ----

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.on('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo
      s.close(() => resolve(port))
    })
  })
}

export function haveCommands(...cmds: string[]): string[] {
  const dirs = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin']
  return cmds.filter((c) => !dirs.some((d) => fs.existsSync(path.join(d, c))))
}

export interface DockerRegistry {
  host: string
  port: number
  pid: number
  storageDir: string
  /** path of a blob's bytes in the registry's storage */
  blobDataPath(digest: string): string
  /** stop it (SIGTERM, then SIGKILL), leave the storage until cleanup() */
  stop(): Promise<void>
  /** stop and remove the temp dir */
  cleanup(): Promise<void>
}

/** Start Debian's docker-registry (`docker-registry serve CONFIG`) on 127.0.0.1 and a free port. */
/** Start Debian's docker-registry (plain HTTP, no auth) on `address` (default loopback) and a free port. */
export async function startDockerRegistry(address = '127.0.0.1'): Promise<DockerRegistry> {
  const missing = haveCommands('docker-registry')
  if (missing.length > 0) throw new Error('docker-registry is not installed (apt-get install -y docker-registry)')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-registry-'))
  const storageDir = path.join(dir, 'storage')
  fs.mkdirSync(storageDir)
  const port = await freePort()
  const configFile = path.join(dir, 'config.yml')
  fs.writeFileSync(configFile, [
    'version: 0.1',
    'log:',
    '  level: warn',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${storageDir}`,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: ${address}:${port}`,
    `  secret: ${crypto.randomBytes(16).toString('hex')}`,
    '',
  ].join('\n'))
  const log = fs.openSync(path.join(dir, 'registry.log'), 'a')
  const child = spawn('docker-registry', ['serve', configFile], { stdio: ['ignore', log, log] })
  fs.closeSync(log)
  const pid = child.pid
  if (pid === undefined) throw new Error('docker-registry did not start')
  let exited = false
  const exitedP = new Promise<void>((resolve) => child.on('exit', () => { exited = true; resolve() }))
  const deadline = Date.now() + 20_000
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const req = http.get(`http://${address}:${port}/v2/`, (res) => { res.resume(); resolve(res.statusCode === 200) })
      req.on('error', () => resolve(false))
      req.setTimeout(1000, () => { req.destroy(); resolve(false) })
    })
    if (ok) break
    if (exited || Date.now() > deadline) {
      if (!exited) process.kill(pid, 'SIGKILL')
      throw new Error(`docker-registry did not come up on ${address}:${port}: ${fs.readFileSync(path.join(dir, 'registry.log'), 'utf8').slice(-2000)}`)
    }
    await new Promise((r) => setTimeout(r, 100))
  }
  const stop = async () => {
    if (exited) return
    process.kill(pid, 'SIGTERM')
    const t = setTimeout(() => { if (!exited) process.kill(pid, 'SIGKILL') }, 5000)
    await exitedP
    clearTimeout(t)
  }
  return {
    host: `${address}:${port}`,
    port,
    pid,
    storageDir,
    blobDataPath: (digest) => {
      const hex = digest.slice('sha256:'.length)
      return path.join(storageDir, 'docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data')
    },
    stop,
    cleanup: async () => {
      await stop()
      fs.rmSync(dir, { recursive: true, force: true })
    },
  }
}

export interface ExecResult { code: number, stdout: string, stderr: string }

/** Run a program with no stdin (a child that exits at once cannot EPIPE us); never throws on exit code. */
export function exec(cmd: string, args: string[], timeoutMs = 120_000): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PATH: `/usr/sbin:/usr/bin:/sbin:/bin:${process.env.PATH ?? ''}` } })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
    const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('error', (e) => { clearTimeout(t); reject(e) })
    child.on('close', (code, signal) => {
      clearTimeout(t)
      resolve({ code: code ?? (signal !== null ? 128 : -1), stdout, stderr })
    })
  })
}

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await exec(cmd, args)
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr || r.stdout}`)
  return r.stdout
}

export interface BusyboxImage {
  /** OCI layout directory */
  layout: string
  /** tag inside the layout */
  tag: string
}

function layoutHasTag(layout: string, tag: string): boolean {
  if (!fs.existsSync(path.join(layout, 'index.json'))) return false
  const index = JSON.parse(fs.readFileSync(path.join(layout, 'index.json'), 'utf8')) as { manifests?: Array<{ annotations?: Record<string, string> }> }
  return (index.manifests ?? []).some((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag)
}

/**
 * Build a 3-layer OCI image with umoci: (1) busybox-static with sh/ls/cat/... symlinks,
 * /etc/hello and /etc/doomed; (2) /etc/doomed deleted (a whiteout); (3) /etc/added added, plus
 * `extraFile` when given. Images built in the same `workDir` share layers 1 and 2.
 */
export async function buildBusyboxImage(workDir: string, tag = 'v1', extraFile?: { name: string, content: string }): Promise<BusyboxImage> {
  const missing = haveCommands('umoci', 'busybox')
  if (missing.length > 0) throw new Error(`missing ${missing.join(', ')} (apt-get install -y umoci busybox-static)`)
  const layout = path.join(workDir, 'layout')
  const busybox = fs.existsSync('/bin/busybox') ? '/bin/busybox' : '/usr/bin/busybox'
  const bundle = (n: string) => path.join(workDir, `bundle-${tag}-${n}`)
  if (!layoutHasTag(layout, 'busybox-l2')) {
    fs.mkdirSync(workDir, { recursive: true })
    await must('umoci', ['init', '--layout', layout])
    await must('umoci', ['new', '--image', `${layout}:base`])
    await must('umoci', ['unpack', '--image', `${layout}:base`, bundle('1')])
    const root1 = path.join(bundle('1'), 'rootfs')
    fs.mkdirSync(path.join(root1, 'bin'), { recursive: true })
    fs.mkdirSync(path.join(root1, 'etc'), { recursive: true })
    fs.copyFileSync(busybox, path.join(root1, 'bin/busybox'))
    fs.chmodSync(path.join(root1, 'bin/busybox'), 0o755)
    for (const c of ['sh', 'ls', 'cat', 'echo', 'test']) fs.symlinkSync('busybox', path.join(root1, 'bin', c))
    fs.writeFileSync(path.join(root1, 'etc/hello'), 'hello from layer 1\n')
    fs.writeFileSync(path.join(root1, 'etc/doomed'), 'deleted by layer 2\n')
    await must('umoci', ['repack', '--image', `${layout}:busybox-l1`, bundle('1')])
    await must('umoci', ['unpack', '--image', `${layout}:busybox-l1`, bundle('2')])
    fs.rmSync(path.join(bundle('2'), 'rootfs/etc/doomed'))
    await must('umoci', ['repack', '--image', `${layout}:busybox-l2`, bundle('2')])
  }
  await must('umoci', ['unpack', '--image', `${layout}:busybox-l2`, bundle('3')])
  fs.writeFileSync(path.join(bundle('3'), 'rootfs/etc/added'), 'added by layer 3\n')
  if (extraFile !== undefined) fs.writeFileSync(path.join(bundle('3'), 'rootfs', extraFile.name), extraFile.content)
  await must('umoci', ['repack', '--image', `${layout}:${tag}`, bundle('3')])
  await must('umoci', ['config', '--image', `${layout}:${tag}`, '--config.cmd', '/bin/sh'])
  for (const n of ['1', '2', '3']) fs.rmSync(bundle(n), { recursive: true, force: true })
  return { layout, tag }
}

/** Push an OCI layout image to a registry with skopeo (plain HTTP). */
export async function pushImage(image: BusyboxImage, dest: string): Promise<void> {
  const missing = haveCommands('skopeo')
  if (missing.length > 0) throw new Error('skopeo is not installed (apt-get install -y skopeo)')
  await must('skopeo', ['copy', '--insecure-policy', '--dest-tls-verify=false', `oci:${image.layout}:${image.tag}`, `docker://${dest}`])
}
