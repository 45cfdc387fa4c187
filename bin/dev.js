#!/usr/bin/env node
// Development entry point: same as run.js (the project is compiled with tsc; run `npm run build` first).
import { versionJson } from './version.js'

if (!versionJson(process.argv.slice(2))) {
  // oclif's start checks Node's version against oclif's own package.json, which it cannot find
  // in the bundle, after loading semver for it (about 9 ms of every command): skip that check
  process.env.OCLIF_DISABLE_ENGINE_WARNING ??= '1'
  const { execute } = await import('../dist/cli-bundle/framework.js')
  await execute({ development: true, dir: import.meta.url })
}
