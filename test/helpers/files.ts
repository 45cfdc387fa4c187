import fs from 'node:fs'
import path from 'node:path'

/**
 * Files under `dir` whose bytes contain `needle` (a search of the disks for plaintext). A file or
 * directory that goes while the search runs is skipped: the CVM renames and removes files of its
 * own meanwhile (a spare extent group being filled is `*.tmp` until it is whole).
 */
export function filesHolding(dir: string, needle: Buffer | string): string[] {
  const want = typeof needle === 'string' ? Buffer.from(needle) : needle
  const out: string[] = []
  let entries: fs.Dirent[]
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true })
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return out
    throw e
  }
  for (const e of entries) {
    const p = path.join(dir, e.name)
    if (e.isDirectory()) {
      out.push(...filesHolding(p, want))
      continue
    }
    if (!e.isFile()) continue
    try {
      if (fs.readFileSync(p).includes(want)) out.push(p)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
  }
  return out
}
