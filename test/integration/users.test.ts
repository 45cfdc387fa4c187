import fs from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { TessError } from '../../src/lib/errors.js'
import { jsonRequest } from '../../src/lib/jsonhttp.js'
import { TestCluster, runTess, withJson, type TessResult } from '../helpers/cluster.js'

/**
 * Users with roles on an embedded cluster, through the CLI with TESS_TOKEN: what each role may do,
 * tokens rotated and deleted without a restart, the audit log, and node operations refused to
 * operators (the CVMs call them with their node certificates).
 */
describe('users, roles and the audit log', () => {
  const c = new TestCluster('users')
  const tokens: Record<string, string> = {}

  const as = (who: string | undefined, args: string[]): Promise<TessResult> => runTess(withJson(args), { ...c.env, ...(who !== undefined ? { TESS_TOKEN: tokens[who] ?? who } : {}) })
  const ok = async (who: string | undefined, args: string[]) => {
    const r = await as(who, args)
    expect(r.code, `${who ?? 'root'}: tess ${args.join(' ')}: ${r.stdout}${r.stderr}`).toBe(0)
    return r.json
  }
  const refused = async (who: string | undefined, args: string[], exit: number, code: string) => {
    const r = await as(who, args)
    expect(r.code, `${who ?? 'root'}: tess ${args.join(' ')}: ${r.stdout}${r.stderr}`).toBe(exit)
    expect(r.json.error.code).toBe(code)
    return r.json.error as { code: string, message: string, hint: string }
  }

  beforeAll(async () => {
    await c.create()
  }, 120_000)

  afterAll(async () => {
    await c.destroy()
  })

  it('viewer reads, operator changes workloads and vDisks, admin the rest; node operations are for nodes only', async () => {
    for (const role of ['viewer', 'operator', 'admin']) {
      const u = await ok(undefined, ['user', 'create', `${role}1`, '--role', role])
      expect(u).toMatchObject({ name: `${role}1`, role })
      expect(u.token).toMatch(/^tess_[A-Za-z0-9_-]{40,}$/)
      tokens[role] = u.token
    }
    const listed = await ok('admin', ['user', 'list'])
    expect(listed.map((u: { name: string }) => u.name)).toEqual(['admin1', 'operator1', 'viewer1'])
    expect(JSON.stringify(listed)).not.toMatch(/tess_|token/i)

    // viewer: reads only
    await ok('viewer', ['vdisk', 'list'])
    await ok('viewer', ['cluster', 'status'])
    const e1 = await refused('viewer', ['vdisk', 'create', 'v1', '--size', '16M'], 7, 'TESS_E_FORBIDDEN')
    expect(e1.message).toContain('user viewer1 (role viewer) may not POST /v1/vdisks')
    expect(e1.hint).toContain('role operator')
    // operator: vDisks and workloads, not registries or users
    await ok('operator', ['vdisk', 'create', 'v1', '--size', '16M'])
    await ok('operator', ['vdisk', 'delete', 'v1', '--yes'])
    await refused('operator', ['registry', 'add', 'r1', 'http://127.0.0.1:5999', '--insecure'], 7, 'TESS_E_FORBIDDEN')
    await refused('operator', ['user', 'list'], 7, 'TESS_E_FORBIDDEN')
    await refused('operator', ['audit', 'list'], 7, 'TESS_E_FORBIDDEN')
    // admin: registries and users
    await ok('admin', ['registry', 'add', 'r1', 'http://127.0.0.1:5999', '--insecure'])
    await ok('admin', ['registry', 'remove', 'r1', '--yes'])
    // a wrong token is nobody
    await refused('tess_not-a-token', ['vdisk', 'list'], 7, 'TESS_E_AUTH')
    // bad input
    await refused(undefined, ['user', 'create', 'root', '--role', 'admin'], 2, 'TESS_E_INVALID')
    await refused(undefined, ['user', 'create', 'viewer1', '--role', 'viewer'], 4, 'TESS_E_EXISTS')
    expect((await as(undefined, ['user', 'create', 'x1', '--role', 'god'])).code).toBe(2)

    // node operations: the CVMs call each other with their node certificates; an operator's token, even root's, is refused
    const ca = fs.readFileSync(path.join(c.dataDir, 'pki', 'ca.crt'))
    const rootToken = fs.readFileSync(path.join(c.dataDir, 'pki', 'api-token'), 'utf8').trim()
    const e2 = await jsonRequest({ endpoint: `https://127.0.0.1:${c.ports.api}`, ca, token: rootToken, what: 'the CVM' }, 'POST', '/v1/node-ops/csm.status', {}, 10_000)
      .catch((e: unknown) => e) as TessError
    expect(e2).toBeInstanceOf(TessError)
    expect(e2.code).toBe('TESS_E_FORBIDDEN')
    expect(e2.message).toContain('needs a node certificate')
    // the node's own certificate is a node
    const asNode = await jsonRequest<unknown[]>({
      endpoint: `https://127.0.0.1:${c.ports.api}`, ca, cert: fs.readFileSync(path.join(c.dataDir, 'pki', 'node.crt')), key: fs.readFileSync(path.join(c.dataDir, 'pki', 'node.key')), what: 'the CVM',
    }, 'POST', '/v1/node-ops/csm.status', {}, 10_000)
    expect(Array.isArray(asNode)).toBe(true)
  })

  it('a rotated or deleted token stops working at once, without a restart; the audit log says who did what', async () => {
    const old = tokens.operator!
    const r = await ok(undefined, ['user', 'rotate', 'operator1'])
    expect(r.token).not.toBe(old)
    expect(r.rotatedAt).not.toBeNull()
    tokens.operator = r.token
    await refused(old, ['vdisk', 'list'], 7, 'TESS_E_AUTH')
    await ok('operator', ['vdisk', 'list'])
    await ok(undefined, ['user', 'delete', 'viewer1', '--yes'])
    await refused('viewer', ['vdisk', 'list'], 7, 'TESS_E_AUTH')
    await refused(undefined, ['user', 'delete', 'viewer1', '--yes'], 3, 'TESS_E_NOT_FOUND')

    const log = await ok('admin', ['audit', 'list', '--limit', '200']) as Array<{ who: string, method: string, path: string, status: number, code?: string, at: string }>
    const has = (who: string, method: string, p: string, status: number) => log.some((e) => e.who === who && e.method === method && e.path === p && e.status === status)
    expect(has('operator1', 'POST', '/v1/vdisks', 201)).toBe(true)
    expect(has('operator1', 'DELETE', '/v1/vdisks/v1', 200)).toBe(true)
    expect(has('viewer1', 'POST', '/v1/vdisks', 403)).toBe(true)
    expect(log.find((e) => e.who === 'viewer1' && e.status === 403)?.code).toBe('TESS_E_FORBIDDEN')
    expect(has('admin1', 'POST', '/v1/registries', 201)).toBe(true)
    expect(has('root', 'POST', '/v1/users/operator1/rotate', 201)).toBe(true)
    expect(has('root', 'DELETE', '/v1/users/viewer1', 200)).toBe(true)
    // reads are not changes
    expect(log.some((e) => e.method === 'GET')).toBe(false)
    // newest first
    expect([...log].sort((a, b) => b.at.localeCompare(a.at))).toEqual(log)
    const mine = await ok('admin', ['audit', 'list', '--user', 'operator1'])
    expect(mine.length).toBeGreaterThan(0)
    expect(mine.every((e: { who: string }) => e.who === 'operator1')).toBe(true)
    const text = await runTess(['audit', 'list', '--limit', '5'], c.env)
    expect(text.code).toBe(0)
    expect(text.stdout).toMatch(/TIME.*WHO.*ROLE.*REQUEST.*STATUS/)
  })

  it('the bootstrap token (user root) rotates too: the context gets the new one, the old one and the nodes\' copy are refused', async () => {
    const fileToken = fs.readFileSync(path.join(c.dataDir, 'pki', 'api-token'), 'utf8').trim()
    const r = await ok(undefined, ['user', 'rotate', 'root'])
    expect(r).toMatchObject({ name: 'root', role: 'admin' })
    expect(r.token).not.toBe(fileToken)
    // the context this command used holds the new token: the CLI goes on working without TESS_TOKEN
    await ok(undefined, ['vdisk', 'list'])
    await refused(fileToken, ['vdisk', 'list'], 7, 'TESS_E_AUTH')
    expect((await ok(undefined, ['user', 'list'])).map((u: { name: string }) => u.name)).toContain('root')
    await refused(undefined, ['user', 'delete', 'root', '--yes'], 2, 'TESS_E_INVALID')
    // root's changes are audited under root
    const rootLog = await ok(undefined, ['audit', 'list', '--user', 'root', '--limit', '5'])
    expect(rootLog[0]).toMatchObject({ who: 'root', method: 'DELETE', path: '/v1/users/root', status: 400, code: 'TESS_E_INVALID' })
    expect(rootLog[1]).toMatchObject({ who: 'root', method: 'POST', path: '/v1/users/root/rotate', status: 201 })
  })
})
