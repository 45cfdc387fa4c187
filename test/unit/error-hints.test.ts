import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import ts from 'typescript'
import { describe, expect, it } from 'vitest'

/**
 * Every coded error tells the operator what to do: each `new TessError(code, message, hint)` in
 * src/ gives a hint that is not empty (a literal '' or a missing argument fails this test; a hint
 * computed at run time is trusted to be non-empty).
 */
const srcDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src')

function sourceFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name)
    if (e.isDirectory()) return sourceFiles(p)
    return e.name.endsWith('.ts') ? [p] : []
  })
}

function errorsWithoutHint(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8')
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.ES2022, true)
  const out: string[] = []
  const visit = (node: ts.Node): void => {
    if (ts.isNewExpression(node) && ts.isIdentifier(node.expression) && node.expression.text === 'TessError') {
      const hint = node.arguments?.[2]
      const empty = hint === undefined || ((ts.isStringLiteral(hint) || ts.isNoSubstitutionTemplateLiteral(hint)) && hint.text.trim() === '')
      if (empty) out.push(`${path.relative(srcDir, file)}:${sf.getLineAndCharacterOfPosition(node.getStart()).line + 1}`)
    }
    ts.forEachChild(node, visit)
  }
  visit(sf)
  return out
}

describe('coded errors', () => {
  it('every TessError in src/ has a hint', () => {
    const files = sourceFiles(srcDir)
    expect(files.length).toBeGreaterThan(50)
    const missing = files.flatMap(errorsWithoutHint)
    expect(missing).toEqual([])
  })
})
