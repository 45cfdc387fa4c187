import { execFileSync, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, describe, expect, it } from 'vitest'

/** scripts/link-man.sh: the quick start makes `man tess` work by linking the checkout's pages */
const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-man-'))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))
const link = (mandir: string) => execFileSync('bash', [path.join(repoRoot, 'scripts', 'link-man.sh'), mandir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })

describe('scripts/link-man.sh', () => {
  it('links every page, replaces its own stale links, leaves other files alone; man finds the pages', () => {
    const mandir = path.join(dir, 'man1')
    fs.mkdirSync(mandir)
    fs.symlinkSync('/nonexistent/tess-gone.1', path.join(mandir, 'tess-gone.1'))
    fs.writeFileSync(path.join(mandir, 'tess-local.1'), 'a page installed otherwise\n')
    link(mandir)
    const pages = fs.readdirSync(path.join(repoRoot, 'man', 'man1')).filter((f) => /^tess.*\.1$/.test(f))
    expect(pages).toContain('tess.1')
    for (const p of pages) expect(fs.readlinkSync(path.join(mandir, p))).toBe(path.join(repoRoot, 'man', 'man1', p))
    expect(fs.existsSync(path.join(mandir, 'tess-gone.1'))).toBe(false)
    expect(fs.readFileSync(path.join(mandir, 'tess-local.1'), 'utf8')).toBe('a page installed otherwise\n')
    link(mandir) // again: the same links, no error
    expect(fs.readlinkSync(path.join(mandir, 'tess.1'))).toBe(path.join(repoRoot, 'man', 'man1', 'tess.1'))
    if (spawnSync('man', ['--version']).status === 0) {
      const where = spawnSync('man', ['-M', dir, '-w', 'tess-vdisk-create'], { encoding: 'utf8' })
      expect(where.status).toBe(0)
      expect(where.stdout).toContain('tess-vdisk-create.1')
    }
  })

  it('without write access it says how to read the pages instead, and succeeds', () => {
    const r = spawnSync('bash', [path.join(repoRoot, 'scripts', 'link-man.sh'), '/proc/tess-no-such-dir/man1'], { encoding: 'utf8' })
    expect(r.status).toBe(0)
    expect(r.stderr).toContain('MANPATH=')
  })
})
