import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { fsyncTree } from '../../src/lib/fsutil.js'

describe('fsyncTree', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-fsync-'))
  afterAll(() => fs.rmSync(root, { recursive: true, force: true }))

  it('syncs every regular file and directory, and opens no FIFO, symlink or device', async () => {
    fs.mkdirSync(path.join(root, 'a/b/c'), { recursive: true })
    for (const f of ['x', 'a/y', 'a/b/z', 'a/b/c/w']) fs.writeFileSync(path.join(root, f), f)
    fs.symlinkSync('/nonexistent/target', path.join(root, 'a/dangling'))
    // opening a FIFO for reading would block until a writer came: fsyncTree must not open it
    execFileSync('mkfifo', [path.join(root, 'a/b/fifo')])
    // root, a, a/b, a/b/c and the four files
    expect(await fsyncTree(root, 3)).toBe(8)
  })

  it('fails on a tree it cannot read', async () => {
    await expect(fsyncTree(path.join(root, 'missing'))).rejects.toThrow(/ENOENT/)
  })
})
