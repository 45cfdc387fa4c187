import { spawn } from 'node:child_process'

export interface RunResult { code: number, stdout: string, stderr: string }

/** Run a program (a real NBD client, fio, ...) and collect its output; never throws on exit code. */
export function run(cmd: string, args: string[], opts: { timeoutMs?: number, env?: Record<string, string>, input?: string } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, PATH: `/usr/bin:/bin:/usr/sbin:/sbin:${process.env.PATH ?? ''}`, ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => { stdout += d })
    child.stderr.on('data', (d) => { stderr += d })
    const t = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000)
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(t)
      resolve({ code: code ?? (signal ? 128 : -1), stdout, stderr })
    })
    child.stdin.on('error', () => { /* the child may exit before reading its input */ })
    child.stdin.end(opts.input ?? '')
  })
}

/** fio prints a line before its JSON: parse from the first '{'. */
export function parseFioJson(out: string): any {
  return JSON.parse(out.slice(out.indexOf('{')))
}


/**
 * qemu-img arguments for an NBD export over TLS, with the credentials `tess vdisk credentials`
 * wrote to `creds`: `--object` (put it before the images) and the image's option string.
 */
export function qemuNbdTls(creds: string, host: string, port: number, exportName: string): { object: string[], image: string } {
  return {
    object: ['--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${creds}`],
    image: `driver=nbd,host=${host},port=${port},export=${exportName},tls-creds=tls0`,
  }
}

/** copy a local file into an NBD export over TLS with qemu-img (the export keeps its size) */
export function qemuImgToNbdTls(file: string, creds: string, host: string, port: number, exportName: string, timeoutMs = 300_000): Promise<RunResult> {
  const t = qemuNbdTls(creds, host, port, exportName)
  return run('qemu-img', ['convert', '-n', '-f', 'raw', ...t.object, '--target-image-opts', file, t.image], { timeoutMs })
}

/** copy an NBD export over TLS into a local raw file with qemu-img */
export function qemuImgFromNbdTls(creds: string, host: string, port: number, exportName: string, file: string, timeoutMs = 300_000): Promise<RunResult> {
  const t = qemuNbdTls(creds, host, port, exportName)
  return run('qemu-img', ['convert', '-O', 'raw', ...t.object, '--image-opts', t.image, file], { timeoutMs })
}

/**
 * Run `fn` while an NBD client (libnbd's Python binding) holds a connection to `uri` (a URI with
 * `tls-certificates` too: local files are allowed). `write`: it writes 1 MiB at offset 0 and
 * flushes first. The client is gone when this returns.
 */
export async function holdingNbdClient(uri: string, fn: () => Promise<void>, opts: { write?: boolean, timeoutMs?: number } = {}): Promise<void> {
  const script = [
    'import nbd, sys',
    'h = nbd.NBD()',
    'h.set_uri_allow_local_file(True)', // the URI may name the client certificate directory
    'h.connect_uri(sys.argv[1])',
    ...(opts.write === true ? ['h.pwrite(b"x" * 1048576, 0)', 'h.flush()'] : []),
    'print("ready", flush=True)',
    'sys.stdin.read()',
  ].join('\n')
  const child = spawn('/usr/bin/python3', ['-c', script, uri], { stdio: ['pipe', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout.on('data', (d) => { out += d })
  child.stderr.on('data', (d) => { err += d })
  const exited = new Promise<void>((resolve) => child.on('close', () => resolve()))
  try {
    const deadline = Date.now() + (opts.timeoutMs ?? 60_000)
    while (!out.includes('ready')) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the NBD client did not connect to ${uri}: ${err}`)
      await new Promise((r) => setTimeout(r, 20))
    }
    await fn()
  } finally {
    child.stdin.end()
    await exited
  }
}
