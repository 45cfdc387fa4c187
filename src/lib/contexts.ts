import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import Conf from 'conf'
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

function store(): Conf<Store> {
  const dir = configDir()
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  const conf = new Conf<Store>({ cwd: dir, configName: 'contexts', configFileMode: 0o600, defaults: { clusters: {} } })
  // conf writes with the mode only when it creates the file: enforce it on every open.
  try {
    fs.chmodSync(conf.path, 0o600)
  } catch { /* not written yet */ }
  return conf
}

export function listContexts(): { current: string | undefined, contexts: ClusterContext[] } {
  const s = store()
  return { current: s.get('current'), contexts: Object.values(s.get('clusters')) }
}

export function findContext(name: string): ClusterContext | undefined {
  return store().get('clusters')[name]
}

/** The context a command works on: --cluster, else TESS_CLUSTER (oclif maps it to the flag), else the current one. */
export function resolveContext(name: string | undefined): ClusterContext {
  const s = store()
  const clusters = s.get('clusters')
  const want = name ?? s.get('current')
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
export function useContext(name: string): ClusterContext {
  const ctx = resolveContext(name)
  const s = store()
  s.set('current', ctx.name)
  fs.chmodSync(s.path, 0o600)
  return ctx
}

export function saveContext(ctx: ClusterContext, makeCurrent = true): void {
  const s = store()
  const clusters = { ...s.get('clusters'), [ctx.name]: ctx }
  s.set('clusters', clusters)
  if (makeCurrent) s.set('current', ctx.name)
  fs.chmodSync(s.path, 0o600)
}

export function deleteContext(name: string): void {
  const s = store()
  const clusters = { ...s.get('clusters') }
  delete clusters[name]
  s.set('clusters', clusters)
  if (s.get('current') === name) {
    const rest = Object.values(clusters).sort((a, b) => b.createdAt.localeCompare(a.createdAt))
    if (rest[0]) s.set('current', rest[0].name)
    else s.delete('current')
  }
}
