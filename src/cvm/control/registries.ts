import type { RegistryInfo, RegistryPolicyInfo } from '../../lib/csm-types.js'
import { TessError } from '../../lib/errors.js'
import { etcdCall, getJson, keys, listJson } from '../../lib/etcd.js'
import { registryPasswordLengthMax, registryUsernameLengthMax } from '../../lib/limits.js'
import { parseRegistryHost } from '../../lib/images/reference.js'
import { checkName } from '../../lib/names.js'
import { sealSecret } from '../../lib/secretbox.js'
import type { ControlContext } from './context.js'
import { checkPattern, policyRulesMax } from './policy.js'
import type { RegistryPolicyRecord, RegistryRecord } from './records.js'


export interface RegistryAddRequest {
  name: string
  url: string
  insecure: boolean
  username?: string
  password?: string
}

/** `http(s)://host[:port]` and nothing else; plain http only when `insecure`. */
function registryUrl(url: string, insecure: boolean): URL {
  let u: URL
  try {
    u = new URL(url)
  } catch {
    throw new TessError('TESS_E_INVALID', `invalid registry URL "${url.slice(0, 200)}"`, 'e.g. https://registry.example.com or http://127.0.0.1:5000 (with --insecure)')
  }
  if ((u.protocol !== 'http:' && u.protocol !== 'https:') || u.username !== '' || u.password !== '' || (u.pathname !== '/' && u.pathname !== '') || u.search !== '' || u.hash !== '') {
    throw new TessError('TESS_E_INVALID', `invalid registry URL "${url.slice(0, 200)}": give only http(s)://host[:port]`, 'credentials go in --username and --password-stdin')
  }
  if (u.protocol === 'http:' && !insecure) throw new TessError('TESS_E_INVALID', `registry URL ${u.origin} is plain HTTP`, 'add --insecure to use a registry without TLS')
  return u
}

function checkCredentials(req: RegistryAddRequest): void {
  if ((req.username === undefined) !== (req.password === undefined)) throw new TessError('TESS_E_INVALID', 'give both a username and a password, or neither', '--username U --password-stdin')
  if (req.username !== undefined && (req.username.length === 0 || req.username.length > registryUsernameLengthMax || /[\s:]/.test(req.username))) throw new TessError('TESS_E_INVALID', 'invalid registry username', `1-${registryUsernameLengthMax} characters, no spaces or ":"`)
  if (req.password !== undefined && (req.password.length === 0 || req.password.length > registryPasswordLengthMax)) throw new TessError('TESS_E_INVALID', `the registry password must be 1..${registryPasswordLengthMax} characters`, 'give the password on stdin with --password-stdin')
}

/**
 * Image registries (their credentials sealed under the secrets key) and the pull policy: records in
 * etcd, read by every node's agent when it pulls.
 */
export class Registries {
  constructor(private readonly ctx: ControlContext) {}

  async add(req: RegistryAddRequest): Promise<RegistryInfo> {
    const { etcd } = this.ctx
    const name = checkName('registry', req.name)
    const u = registryUrl(req.url, req.insecure)
    const host = parseRegistryHost(u.host, 'registry host')
    checkCredentials(req)
    const same = (await this.list()).find((r) => r.host === host)
    if (same !== undefined) throw new TessError('TESS_E_EXISTS', `cannot add registry "${name}": registry "${same.name}" serves ${host} already`, `remove it first: tess registry remove ${same.name}`)
    const rec: RegistryRecord = { name, url: u.origin, host, insecure: req.insecure, username: req.username ?? null, hasPassword: req.password !== undefined, createdAt: new Date().toISOString() }
    const ops = [etcd.put(keys.registry(name)).value(JSON.stringify(rec))]
    if (req.password !== undefined) ops.push(etcd.put(keys.registrySecret(name)).value(sealSecret(this.ctx.secretsKey, req.password, keys.registrySecret(name))))
    const res = await etcdCall('add the registry', () => etcd.if(keys.registry(name), 'Create', '==', 0).then(...ops).commit())
    if (!res.succeeded) throw new TessError('TESS_E_EXISTS', `cannot add registry "${name}": a registry of that name exists`, 'remove it first, or choose another name')
    return rec
  }

  list(): Promise<RegistryInfo[]> {
    return etcdCall('list registries', () => listJson<RegistryRecord>(this.ctx.etcd, keys.registriesPrefix))
  }

  async remove(name: string): Promise<RegistryInfo> {
    const { etcd } = this.ctx
    checkName('registry', name)
    const r = await etcdCall('read the registry', () => getJson<RegistryRecord>(etcd, keys.registry(name)))
    if (r === undefined) throw new TessError('TESS_E_NOT_FOUND', `no registry named "${name}"`, 'see `tess registry list`')
    await etcdCall('remove the registry', () => etcd.if(keys.registry(name), 'Create', '>', 0).then(etcd.delete().key(keys.registry(name)), etcd.delete().key(keys.registrySecret(name))).commit())
    return r
  }

  async policy(): Promise<RegistryPolicyInfo> {
    return await etcdCall('read the registry policy', () => getJson<RegistryPolicyRecord>(this.ctx.etcd, keys.registryPolicy)) ?? { allow: [], deny: [] }
  }

  /** Add (or with `remove`, drop) an allow or deny rule, in one compare-and-swap of the policy record. */
  async changePolicy(kind: 'allow' | 'deny', pattern: string, remove: boolean): Promise<RegistryPolicyInfo> {
    const { etcd } = this.ctx
    if (kind !== 'allow' && kind !== 'deny') throw new TessError('TESS_E_BAD_REQUEST', 'field "kind" must be "allow" or "deny"', 'use tess registry allow or tess registry deny')
    checkPattern(pattern)
    for (let attempt = 0; attempt < 10; attempt++) {
      const cur = await etcdCall('read the registry policy', () => etcd.get(keys.registryPolicy).exec())
      const kv = cur.kvs[0]
      const p: RegistryPolicyRecord = kv ? JSON.parse(kv.value.toString()) as RegistryPolicyRecord : { allow: [], deny: [] }
      const list = p[kind]
      if (remove) {
        if (!list.includes(pattern)) throw new TessError('TESS_E_NOT_FOUND', `no ${kind} rule "${pattern}"`, 'see `tess registry policy`')
        p[kind] = list.filter((x) => x !== pattern)
      } else if (!list.includes(pattern)) {
        if (p.allow.length + p.deny.length >= policyRulesMax) throw new TessError('TESS_E_CAPACITY', `the registry policy holds ${policyRulesMax} rules already`, 'remove some first')
        p[kind] = [...list, pattern]
      }
      const txn = kv
        ? etcd.if(keys.registryPolicy, 'Mod', '==', kv.mod_revision)
        : etcd.if(keys.registryPolicy, 'Create', '==', 0)
      const res = await etcdCall('write the registry policy', () => txn.then(etcd.put(keys.registryPolicy).value(JSON.stringify(p))).commit())
      if (res.succeeded) return p
    }
    throw new TessError('TESS_E_CONFLICT', 'the registry policy kept changing under this update', 'retry')
  }
}
