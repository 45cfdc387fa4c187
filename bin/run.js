#!/usr/bin/env node
import { versionJson } from './version.js'

// `tess --version` (and --version --json) is answered before the framework is loaded: oclif is
// imported only for every other command line
if (!versionJson(process.argv.slice(2))) {
  const { execute } = await import('../dist/cli-bundle/framework.js')
  await execute({ dir: import.meta.url })
}
