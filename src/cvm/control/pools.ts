import type { CsmPoolInfo } from '../../lib/csm-types.js'
import { TessError } from '../../lib/errors.js'
import { etcdCall, keys } from '../../lib/etcd.js'
import { checkName } from '../../lib/names.js'
import type { ControlContext } from './context.js'
import type { CsmPoolRecord } from './records.js'

const poolSizeMax = 1000

/** CSM pools: named sets of CSMs that containers are scheduled into (records in etcd only). */
export class CsmPools {
  constructor(private readonly ctx: ControlContext) {}

  private async checkMembers(csms: string[], what: string): Promise<string[]> {
    if (csms.length === 0) throw new TessError('TESS_E_INVALID', `${what}: no CSM given`, 'name at least one with --csm')
    if (csms.length > poolSizeMax) throw new TessError('TESS_E_INVALID', `${what}: ${csms.length} CSMs, at most ${poolSizeMax}`, 'use several pools')
    for (const c of csms) checkName('CSM', c)
    const known = new Set((await this.ctx.csmRecords()).filter((r) => r.deleting !== true).map((r) => r.name))
    const unknown = csms.filter((c) => !known.has(c))
    if (unknown.length > 0) throw new TessError('TESS_E_NOT_FOUND', `${what}: no CSM named ${unknown.map((u) => `"${u}"`).join(', ')}`, 'see `tess csm list`')
    return [...new Set(csms)]
  }

  async create(name: string, csms: string[]): Promise<CsmPoolInfo> {
    const { etcd } = this.ctx
    checkName('CSM pool', name)
    const members = await this.checkMembers(csms, `cannot create CSM pool "${name}"`)
    const rec: CsmPoolRecord = { name, csms: members.sort(), createdAt: new Date().toISOString() }
    const res = await etcdCall('create the CSM pool', () => etcd.if(keys.csmPool(name), 'Create', '==', 0).then(etcd.put(keys.csmPool(name)).value(JSON.stringify(rec))).commit())
    if (!res.succeeded) throw new TessError('TESS_E_EXISTS', `cannot create CSM pool "${name}": a pool of that name exists`, 'choose another name, or change it with `tess csm-pool add/remove`')
    return rec
  }

  list(): Promise<CsmPoolInfo[]> {
    return this.ctx.poolRecords()
  }

  show(name: string): Promise<CsmPoolInfo> {
    checkName('CSM pool', name)
    return this.ctx.poolRecord(name)
  }

  async change(name: string, add: string[], remove: string[]): Promise<CsmPoolInfo> {
    checkName('CSM pool', name)
    const p = await this.ctx.poolRecord(name)
    if (add.length > 0) await this.checkMembers(add, `cannot add to CSM pool "${name}"`)
    const notIn = remove.filter((r) => !p.csms.includes(r))
    if (notIn.length > 0) throw new TessError('TESS_E_NOT_FOUND', `cannot remove ${notIn.join(', ')} from CSM pool "${name}": not members`, `its members: ${p.csms.join(', ')}`)
    const next = [...new Set([...p.csms, ...add])].filter((c) => !remove.includes(c)).sort()
    if (next.length === 0) throw new TessError('TESS_E_CONFLICT', `cannot remove every CSM from pool "${name}"`, `delete the pool instead: tess csm-pool delete ${name}`)
    const rec = { ...p, csms: next }
    await etcdCall('update the CSM pool', () => this.ctx.etcd.put(keys.csmPool(name)).value(JSON.stringify(rec)))
    return rec
  }

  async delete(name: string): Promise<CsmPoolInfo> {
    checkName('CSM pool', name)
    const p = await this.ctx.poolRecord(name)
    await etcdCall('delete the CSM pool', () => this.ctx.etcd.delete().key(keys.csmPool(name)))
    return p
  }

  /** A deleted CSM leaves every pool it was in. */
  async dropCsm(csm: string): Promise<void> {
    for (const p of await this.ctx.poolRecords()) {
      if (p.csms.includes(csm)) {
        await etcdCall('update the CSM pool', () => this.ctx.etcd.put(keys.csmPool(p.name)).value(JSON.stringify({ ...p, csms: p.csms.filter((x) => x !== csm) })))
      }
    }
  }
}
