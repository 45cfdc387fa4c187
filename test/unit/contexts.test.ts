import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { runTess } from '../helpers/cluster.js'

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-ctx-'))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

/** the built CLI with its own config dir (no daemon is reached: these commands read contexts only) */
const tess = (args: string[], env: Record<string, string> = {}) => runTess(args, { TESS_CONFIG_DIR: dir, TESS_CLUSTER: '', ...env })

describe('cluster use and cluster current', () => {
  it('switch the context commands use; unknown names and no contexts are TESS_E_NO_CLUSTER', async () => {
    expect((await tess(['cluster', 'current', '--json'])).code).toBe(3)
    const { saveContext } = await import('../../src/lib/contexts.js')
    process.env.TESS_CONFIG_DIR = dir
    try {
      const ctx = (name: string, at: string) => ({ name, endpoints: [`https://10.0.0.${name.length}:9440`], caCert: 'CA', token: 'secret-token', createdAt: at })
      await saveContext(ctx('lab', '2026-01-01T00:00:00.000Z'))
      await saveContext(ctx('prod', '2026-01-02T00:00:00.000Z')) // the last created is current
    } finally {
      delete process.env.TESS_CONFIG_DIR
    }
    expect(JSON.parse((await tess(['cluster', 'current', '--json'])).stdout).name).toBe('prod')
    const used = await tess(['cluster', 'use', 'lab', '--json'])
    expect(used.code).toBe(0)
    expect(JSON.parse(used.stdout)).toEqual({ name: 'lab', endpoints: ['https://10.0.0.3:9440'], local: false })
    expect(JSON.parse((await tess(['cluster', 'current', '--json'])).stdout).name).toBe('lab')
    expect(JSON.parse((await tess(['cluster', 'list', '--json'])).stdout).filter((c: { current: boolean }) => c.current).map((c: { name: string }) => c.name)).toEqual(['lab'])
    // --cluster and TESS_CLUSTER win over the current one
    expect(JSON.parse((await tess(['cluster', 'current', '--cluster', 'prod', '--json'])).stdout).name).toBe('prod')
    expect(JSON.parse((await tess(['cluster', 'current', '--json'], { TESS_CLUSTER: 'prod' })).stdout).name).toBe('prod')
    const unknown = await tess(['cluster', 'use', 'nope', '--json'])
    expect(unknown.code).toBe(3)
    expect(JSON.parse(unknown.stdout).error.hint).toBe('known clusters: lab, prod')
    expect(JSON.parse((await tess(['cluster', 'current', '--json'])).stdout).name).toBe('lab')
    // no secret in any output
    expect((await tess(['cluster', 'current'])).stdout).not.toContain('secret-token')
    expect(fs.statSync(path.join(dir, 'contexts.json')).mode & 0o777).toBe(0o600)
  })

  it('a contexts file that is not JSON is a coded error naming the file, and it is left as it is', async () => {
    const bad = fs.mkdtempSync(path.join(dir, 'bad-'))
    fs.writeFileSync(path.join(bad, 'contexts.json'), '{"clusters": {', { mode: 0o600 })
    const r = await runTess(['cluster', 'current', '--json'], { TESS_CONFIG_DIR: bad, TESS_CLUSTER: '' })
    expect(r.code).toBe(2)
    const e = JSON.parse(r.stdout).error
    expect(e.code).toBe('TESS_E_INVALID')
    expect(e.message).toContain(path.join(bad, 'contexts.json'))
    expect(e.hint).toContain('move it away')
    expect(fs.readFileSync(path.join(bad, 'contexts.json'), 'utf8')).toBe('{"clusters": {')
  })
})
