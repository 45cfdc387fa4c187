import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { repoRoot } from '../helpers/cluster.js'

/**
 * The import direction between the process folders, from the sources (relative imports only):
 * what runs in one process does not reach into the code of the process above it.
 */
const src = path.join(repoRoot, 'src')

function files(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name)
    return e.isDirectory() ? files(p) : e.name.endsWith('.ts') ? [p] : []
  })
}

/** [importing file, imported file], both relative to src/, for every relative import */
const edges: Array<[string, string]> = files(src).flatMap((f) => {
  const text = fs.readFileSync(f, 'utf8')
  const out: Array<[string, string]> = []
  for (const m of text.matchAll(/(?:from|import)\s*\(?\s*'(\.{1,2}\/[^']+)'/g)) {
    const target = path.resolve(path.dirname(f), m[1]!).replace(/\.js$/, '.ts')
    out.push([path.relative(src, f), path.relative(src, target)])
  }
  return out
})

const under = (p: string, ...dirs: string[]) => dirs.some((d) => p === d || p.startsWith(`${d}/`))

function violations(from: string[], to: string[]): string[] {
  return edges.filter(([a, b]) => under(a, ...from) && under(b, ...to)).map(([a, b]) => `${a} -> ${b}`)
}

/**
 * The process folders from top to bottom (docs/architecture.md): a file may import its own folder
 * and the ones below it, never one above. lib/ is below every process.
 */
const order = ['cli', 'bootstrap', 'supervisor', 'cvm', 'csm', 'lib'] as const
const folderOf = (p: string) => order.findIndex((d) => under(p, d))

describe('import direction between the process folders', () => {
  it('reads the imports (the test is not vacuous)', () => {
    expect(edges.length).toBeGreaterThan(500)
    expect(edges).toContainEqual(['cli/base.ts', 'lib/apiclient.ts'])
  })

  it('every source file is in one of the process folders or lib/', () => {
    expect(files(src).map((f) => path.relative(src, f)).filter((f) => folderOf(f) < 0)).toEqual([])
  })

  it('imports only go down the list: cli, bootstrap, supervisor, cvm, csm, lib', () => {
    const up = edges.filter(([a, b]) => folderOf(b) < folderOf(a)).map(([a, b]) => `${a} -> ${b}`)
    expect(up).toEqual([])
  })

  it('nothing outside the CLI imports the CLI: daemons and bootstrap never do', () => {
    expect(violations(['bootstrap', 'supervisor', 'cvm', 'csm', 'lib'], ['cli'])).toEqual([])
  })

  it('the CSM daemon never imports the CVM, and lib/ imports no process folder', () => {
    expect(violations(['csm'], ['cvm', 'supervisor', 'bootstrap', 'cli'])).toEqual([])
    expect(violations(['lib'], ['cli', 'bootstrap', 'supervisor', 'cvm', 'csm'])).toEqual([])
  })

  it('the CVM imports from the CSM only what its node agent needs: cgroups and the process probe; wire types and limits are in lib/', () => {
    // NodeAgent (cvm/control/agent.ts) makes and removes its node's CSM cgroups (CgroupHost in
    // csm/runtime/cgroups.ts) and waits for a deleted CSM's daemon to exit (isProcessAlive in
    // csm/runtime/runc.ts). The container spec, the replies of the CSM daemon, its client and the
    // limits both sides check are in lib/ (container-spec.ts, csm-types.ts, rpc/, limits.ts).
    const allowed = ['cvm/control/agent.ts -> csm/runtime/cgroups.ts', 'cvm/control/agent.ts -> csm/runtime/runc.ts']
    const fromCvm = violations(['cvm'], ['csm'])
    expect(fromCvm).toContain(allowed[0])
    expect(fromCvm.filter((e) => !allowed.includes(e))).toEqual([])
  })

  it('the data path (NBD, vDisks, replication, pool) never imports the control plane, the API or image pulls', () => {
    expect(violations(['cvm/nbd', 'cvm/vdisk', 'cvm/replication', 'cvm/pool'], ['cvm/api', 'cvm/control', 'cvm/images', 'lib/images', 'bootstrap'])).toEqual([])
  })

  it('the supervisor imports only lib/', () => {
    expect(violations(['supervisor'], ['cli', 'bootstrap', 'cvm', 'csm'])).toEqual([])
  })
})
