import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, describe, expect, it } from 'vitest'

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-ctx-'))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

/** the built CLI with its own config dir (no daemon is reached: these commands read contexts only) */
const tess = (args: string[], env: Record<string, string> = {}) => {
  const r = spawnSync(process.execPath, [path.join(repoRoot, 'bin', 'run.js'), ...args], {
    encoding: 'utf8', timeout: 60_000, env: { ...process.env, TESS_CONFIG_DIR: dir, NO_COLOR: '1', TESS_CLUSTER: '', ...env },
  })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

describe('cluster use and cluster current', () => {
  it('switch the context commands use; unknown names and no contexts are TESS_E_NO_CLUSTER', async () => {
    expect(tess(['cluster', 'current', '--json']).code).toBe(3)
    const { saveContext } = await import('../../src/lib/contexts.js')
    process.env.TESS_CONFIG_DIR = dir
    try {
      const ctx = (name: string, at: string) => ({ name, endpoints: [`https://10.0.0.${name.length}:9440`], caCert: 'CA', token: 'secret-token', createdAt: at })
      saveContext(ctx('lab', '2026-01-01T00:00:00.000Z'))
      saveContext(ctx('prod', '2026-01-02T00:00:00.000Z')) // the last created is current
    } finally {
      delete process.env.TESS_CONFIG_DIR
    }
    expect(JSON.parse(tess(['cluster', 'current', '--json']).stdout).name).toBe('prod')
    const used = tess(['cluster', 'use', 'lab', '--json'])
    expect(used.code).toBe(0)
    expect(JSON.parse(used.stdout)).toEqual({ name: 'lab', endpoints: ['https://10.0.0.3:9440'], local: false })
    expect(JSON.parse(tess(['cluster', 'current', '--json']).stdout).name).toBe('lab')
    expect(JSON.parse(tess(['cluster', 'list', '--json']).stdout).filter((c: { current: boolean }) => c.current).map((c: { name: string }) => c.name)).toEqual(['lab'])
    // --cluster and TESS_CLUSTER win over the current one
    expect(JSON.parse(tess(['cluster', 'current', '--cluster', 'prod', '--json']).stdout).name).toBe('prod')
    expect(JSON.parse(tess(['cluster', 'current', '--json'], { TESS_CLUSTER: 'prod' }).stdout).name).toBe('prod')
    const unknown = tess(['cluster', 'use', 'nope', '--json'])
    expect(unknown.code).toBe(3)
    expect(JSON.parse(unknown.stdout).error.hint).toBe('known clusters: lab, prod')
    expect(JSON.parse(tess(['cluster', 'current', '--json']).stdout).name).toBe('lab')
    // no secret in any output
    expect(tess(['cluster', 'current']).stdout).not.toContain('secret-token')
    expect(fs.statSync(path.join(dir, 'contexts.json')).mode & 0o777).toBe(0o600)
  })
})
