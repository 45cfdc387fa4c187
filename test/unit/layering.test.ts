import fs from 'node:fs'
import path from 'node:path'
import ts from 'typescript'
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

/** Functions longer than this many lines (declaration to closing brace) need a `long-function:` comment. */
const functionLinesMax = 70

/**
 * The functions of a source text longer than functionLinesMax lines whose line before the
 * declaration has no comment `long-function: <reason>`: function declarations, methods,
 * constructors and accessors, and the arrow functions and function expressions given a name
 * (a variable, a property, an assignment). Counted from the line of the declaration (after its
 * doc comment: the marker goes between the two) to the line of the closing brace.
 */
function longFunctions(file: string, text: string): string[] {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.ES2022, true)
  const lines = text.split('\n')
  const marked = (line: number) => /^\s*(\/\/|\/\*|\*).*long-function:\s*\S/.test(lines[line - 1] ?? '')
  const out: string[] = []
  const visit = (n: ts.Node): void => {
    let decl: ts.Node | undefined
    let name = ''
    if ((ts.isFunctionDeclaration(n) || ts.isMethodDeclaration(n) || ts.isConstructorDeclaration(n) || ts.isGetAccessorDeclaration(n) || ts.isSetAccessorDeclaration(n)) && n.body !== undefined) {
      decl = n
      name = n.name?.getText(sf) ?? 'constructor'
    } else if (ts.isArrowFunction(n) || ts.isFunctionExpression(n)) {
      const p = n.parent
      if (ts.isVariableDeclaration(p) && p.initializer === n) {
        // `const f = () => {...}`: from the statement (its `export const`) when it declares only f
        const list = p.parent
        decl = ts.isVariableDeclarationList(list) && list.declarations.length === 1 && ts.isVariableStatement(list.parent) ? list.parent : p
        name = p.name.getText(sf)
      } else if ((ts.isPropertyAssignment(p) || ts.isPropertyDeclaration(p)) && p.initializer === n) {
        decl = p
        name = p.name.getText(sf)
      } else if (ts.isBinaryExpression(p) && p.right === n && p.operatorToken.kind === ts.SyntaxKind.EqualsToken) {
        decl = ts.isExpressionStatement(p.parent) ? p.parent : p
        name = p.left.getText(sf)
      }
    }
    if (decl !== undefined) {
      const start = sf.getLineAndCharacterOfPosition(decl.getStart(sf)).line
      const count = sf.getLineAndCharacterOfPosition(n.getEnd()).line - start + 1
      if (count > functionLinesMax && !marked(start)) out.push(`${file}:${start + 1} ${name} (${count} lines)`)
    }
    ts.forEachChild(n, visit)
  }
  visit(sf)
  return out
}

describe('function length', () => {
  const body = (n: number) => Array.from({ length: n }, (_, i) => `  x += ${i}`).join('\n')

  it('finds a long function of each kind, and takes a marked one (the check is not vacuous)', () => {
    const long = body(69) // with its first and last line: 71 lines
    const text = [
      `function a() {\n${long}\n}`,
      `class C {\n  m() {\n${long}\n  }\n  private f = () => {\n${long}\n  }\n}`,
      `/** doc */\nexport const g = async () => {\n${long}\n}`,
      `const o = { h: function () {\n${long}\n} }`,
      `// long-function: one linear sequence, read in one place\nfunction marked() {\n${long}\n}`,
      `function short() {\n${body(68)}\n}`,
    ].join('\n')
    expect(longFunctions('t.ts', text).map((s) => s.replace(/^t\.ts:\d+ /, ''))).toEqual(['a (71 lines)', 'm (71 lines)', 'f (71 lines)', 'g (71 lines)', 'h (71 lines)'])
  })

  it(`no function in src/ is over ${functionLinesMax} lines unless the line before it says why (// long-function: <reason>)`, () => {
    const long = files(src).flatMap((f) => longFunctions(path.relative(src, f), fs.readFileSync(f, 'utf8')))
    expect(long).toEqual([])
  })
})
