#!/usr/bin/env node
import { versionJson } from './version.js'

// `tess --version` (and --version --json) is answered before the framework is loaded: oclif is
// imported only for every other command line
if (!versionJson(process.argv.slice(2))) {
  // oclif's start checks Node's version against oclif's own package.json, which it cannot find
  // in the bundle, after loading semver for it (about 9 ms of every command): skip that check
  process.env.OCLIF_DISABLE_ENGINE_WARNING ??= '1'
  const { execute } = await import('../dist/cli-bundle/framework.js')
  await execute({ dir: import.meta.url })
}
