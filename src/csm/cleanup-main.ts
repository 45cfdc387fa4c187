/** `node cleanup-main.js --data-dir DIR`: remove a stopped node's containers and CSM cgroups (run by cluster destroy). */
import { makeLogger } from '../lib/log.js'
import { cleanNodeContainers } from './cleanup.js'

const i = process.argv.indexOf('--data-dir')
const dataDir = i >= 0 ? process.argv[i + 1] : undefined
if (dataDir === undefined) {
  process.stderr.write('usage: cleanup-main --data-dir DIR\n')
  process.exit(2)
}
const r = await cleanNodeContainers(dataDir, makeLogger('csm-cleanup'))
process.stdout.write(`${JSON.stringify(r)}\n`)
process.exit(r.errors.length > 0 ? 1 : 0)
