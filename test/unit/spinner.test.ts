import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { setProgressOff, spinnerAllowed, spinnerColumnsMin } from '../../src/cli/output.js'

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')

describe('spinner', () => {
  it('draws only on terminals of a usable width', () => {
    const tty = { isTTY: true }
    const env = {} // no CI, no TERM=dumb: what the terminal allows
    expect(spinnerAllowed(true, tty, { isTTY: true, columns: 80 }, env)).toBe(true)
    expect(spinnerAllowed(false, tty, { isTTY: true, columns: 80 }, env)).toBe(false)
    expect(spinnerAllowed(true, { isTTY: false }, { isTTY: true, columns: 80 }, env)).toBe(false)
    expect(spinnerAllowed(true, tty, { isTTY: false, columns: 80 }, env)).toBe(false)
    expect(spinnerAllowed(true, tty, { isTTY: true, columns: 0 }, env)).toBe(false)
    expect(spinnerAllowed(true, tty, { isTTY: true }, env)).toBe(false)
    expect(spinnerAllowed(true, tty, { isTTY: true, columns: spinnerColumnsMin - 1 }, env)).toBe(false)
  })

  it('draws nothing with TERM=dumb, CI set, or --no-progress', () => {
    const tty = { isTTY: true }
    const wide = { isTTY: true, columns: 80 }
    expect(spinnerAllowed(true, tty, wide, {})).toBe(true)
    expect(spinnerAllowed(true, tty, wide, { TERM: 'dumb' })).toBe(false)
    expect(spinnerAllowed(true, tty, wide, { CI: 'true' })).toBe(false)
    expect(spinnerAllowed(true, tty, wide, { CI: '1' })).toBe(false)
    expect(spinnerAllowed(true, tty, wide, { CI: 'false' })).toBe(true)
    expect(spinnerAllowed(true, tty, wide, { CI: '' })).toBe(true)
    setProgressOff(true)
    try {
      expect(spinnerAllowed(true, tty, wide, {})).toBe(false)
    } finally {
      setProgressOff(false)
    }
  })

  it('on a real terminal that reports 0 columns, a command under a spinner ends and writes almost nothing', () => {
    // the compiled module, in a pseudo-terminal made by script(1); before the fix this never ended
    // and wrote megabytes of escape codes per second
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-spin-'))
    try {
      const prog = path.join(dir, 'spin.mjs')
      fs.writeFileSync(prog, `const m = await import(${JSON.stringify(path.join(repoRoot, 'dist', 'cli', 'output.js'))})
await m.withSpinner(true, 'working', async (s) => { for (let i = 0; i < 3; i++) { s.text('step ' + i + ' of a text wider than any terminal that reports no width at all'); await new Promise((r) => setTimeout(r, 50)) } })
console.log('done')
`)
      for (const cols of [0, 80]) {
        const r = spawnSync('script', ['-qec', `stty cols ${cols} rows 24; ${process.execPath} ${prog}`, '/dev/null'], { encoding: 'utf8', timeout: 60_000, maxBuffer: 64 * 1024 * 1024 })
        expect(r.status, `${cols} columns: ${r.error?.message ?? ''}`).toBe(0)
        expect(r.stdout).toContain('done')
        expect(r.stdout.length).toBeLessThan(10_000)
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})
