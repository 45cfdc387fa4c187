#!/usr/bin/env node
// Development entry point: same as run.js (the project is compiled with tsc; run `npm run build` first).
import { versionJson } from './version.js'

if (!versionJson(process.argv.slice(2))) {
  const { execute } = await import('../dist/cli-bundle/framework.js')
  await execute({ development: true, dir: import.meta.url })
}
