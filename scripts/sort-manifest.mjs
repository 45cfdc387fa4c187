#!/usr/bin/env node
// `oclif manifest` lists commands in the order the file system returns them, which differs between
// machines and checkouts. Sort them by id, so the committed manifest is the same on every build.
// Usage: node scripts/sort-manifest.mjs [oclif.manifest.json]
import fs from 'node:fs'

export function sortManifest(manifest) {
  const commands = {}
  for (const id of Object.keys(manifest.commands).sort()) commands[id] = manifest.commands[id]
  return { ...manifest, commands }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const file = process.argv[2] ?? 'oclif.manifest.json'
  const manifest = JSON.parse(fs.readFileSync(file, 'utf8'))
  // the same layout oclif writes: two-space indentation, no trailing newline
  fs.writeFileSync(file, JSON.stringify(sortManifest(manifest), null, 2))
}
