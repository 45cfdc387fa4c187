import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type Conf from 'conf'
import { TessError } from './errors.js'

/** A saved cluster context: where the API is, the CA to pin, the credentials. */
export interface ClusterContext {
  name: string
  endpoints: string[]
  caCert: string
  token: string
  createdAt: string
  /** set for an embedded (`--local`) cluster: the daemons run on this machine */
  local?: { dataDir: string }
  /** set for a cluster bootstrapped over SSH: how to reach its hosts (no secrets: the key is a path) */
  remote?: {
    sshUser: string
    sshKey: string
    sshPort: number
    knownHostsFile?: string
    hosts: Array<{ name: string, address: string }>
    ports?: { api: number, nbd: number, etcdClient: number, etcdPeer: number, data: number }
  }
}

interface Store {
  current?: string
  clusters: Record<string, ClusterContext>
}

/** The directory holding the contexts file: TESS_CONFIG_DIR, else the user's config dir. */
export function configDir(): string {
  if (process.env.TESS_CONFIG_DIR) return process.env.TESS_CONFIG_DIR
  const base = process.env.XDG_CONFIG_HOME ?? path.join(os.homedir(), '.config')
  return path.join(base, 'tess')
}

/** conf keeps the contexts in `<configName>.json` (plain JSON) */
const contextsConfigName = 'contexts'

/**
 * The contexts as stored, read without conf: every command reads them, few change them, and
 * loading conf (and its schema validator) costs more than the rest of a command's start.
 */
function readStore(): Store {
  const file = path.join(configDir(), `${contextsConfigName}.json`)
  let text: string
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { clusters: {} }
    throw new TessError('TESS_E_IO', `cannot read the cluster contexts ${file}: ${(e as Error).message}`, 'check the file\'s owner and mode (0600)')
  }
  let s: unknown
  try {
    s = JSON.parse(text)
  } catch (e) {
    throw new TessError('TESS_E_INVALID', `the cluster contexts file ${file} is not valid JSON: ${(e as Error).message}`, 'repair it, or move it away and create the context again (tess cluster create)')
  }
  if (typeof s !== 'object' || s === null || Array.isArray(s)) throw new TessError('TESS_E_INVALID', `the cluster contexts file ${file} holds no object`, 'repair it, or move it away')
  const o = s as Partial<Store>
  const clusters = typeof o.clusters === 'object' && o.clusters !== null ? o.clusters : {}
  return { ...(typeof o.current === 'string' ? { current: o.current } : {}), clusters }
}

/** conf, for the commands that change the contexts (loaded only then) */
async function store(): Promise<Conf<Store>> {
  const dir = configDir()
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  const { default: ConfClass } = await import('conf')
  const conf = new ConfClass<Store>({ cwd: dir, configName: contextsConfigName, configFileMode: 0o600, defaults: { clusters: {} } })
  // conf writes with the mode only when it creates the file: enforce it on every open.
  try {
    fs.chmodSync(conf.path, 0o600)
  } catch { /* not written yet */ }
  return conf
}

export function listContexts(): { current: string | undefined, contexts: ClusterContext[] } {
  const s = readStore()
  return { current: s.current, contexts: Object.values(s.clusters) }
}

export function findContext(name: string): ClusterContext | undefined {
  return readStore().clusters[name]
}

/** The context a command works on: --cluster, else TESS_CLUSTER (oclif maps it to the flag), else the current one. */
export function resolveContext(name: string | undefined): ClusterContext {
  const s = readStore()
  const clusters = s.clusters
  const want = name ?? s.current
  if (!want) {
    throw new TessError('TESS_E_NO_CLUSTER', 'no cluster context is saved', 'create one with `tess cluster create --local`, or pass --cluster NAME')
  }
  const ctx = clusters[want]
  if (!ctx) {
    const known = Object.keys(clusters)
    throw new TessError('TESS_E_NO_CLUSTER', `no cluster context named "${want}"`, known.length > 0 ? `known clusters: ${known.join(', ')}` : 'create one with `tess cluster create --local`')
  }
  return ctx
}

/** Make a saved context the current one (the one commands use without --cluster or TESS_CLUSTER). */
export async function useContext(name: string): Promise<ClusterContext> {
  const ctx = resolveContext(name)
  const s = await store()
  s.set('current', ctx.name)
  fs.chmodSync(s.path, 0o600)
  return ctx
}

export async function saveContext(ctx: ClusterContext, makeCurrent = true): Promise<void> {
  const s = await store()
  const clusters = { ...s.get('clusters'), [ctx.name]: ctx }
  s.set('clusters', clusters)
  if (makeCurrent) s.set('current', ctx.name)
  fs.chmodSync(s.path, 0o600)
}

export async function deleteContext(name: string): Promise<void> {
  const s = await store()
  const clusters = { ...s.get('clusters') }
  delete clusters[name]
  s.set('clusters', clusters)
  if (s.get('current') === name) {
    const rest = Object.values(clusters).sort((a, b) => b.createdAt.localeCompare(a.createdAt))
    if (rest[0]) s.set('current', rest[0].name)
    else s.delete('current')
  }
}
