#!/usr/bin/env node
// Development entry point: same as run.js (the project is compiled with tsc; run `npm run build` first).
import { execute } from '@oclif/core'

await execute({ development: true, dir: import.meta.url })
