#!/usr/bin/env node
import { execute } from '@oclif/core'
import { versionJson } from './version.js'

// `tess --version --json`: the version as JSON, like every other command's result under --json
if (!versionJson(process.argv.slice(2))) await execute({ dir: import.meta.url })
