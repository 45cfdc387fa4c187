/** `node cleanup-main.js --data-dir DIR`: remove a stopped node's containers and CSM cgroups (run by cluster destroy). */
import { makeLogger } from '../lib/log.js'
import { argValue } from '../lib/process.js'
import { cleanNodeContainers } from './cleanup.js'

const dataDir = argValue('--data-dir')
if (dataDir === undefined) {
  process.stderr.write('usage: cleanup-main --data-dir DIR\n')
  process.exit(2)
}
const r = await cleanNodeContainers(dataDir, makeLogger('csm-cleanup'))
process.stdout.write(`${JSON.stringify(r)}\n`)
process.exit(r.errors.length > 0 ? 1 : 0)
