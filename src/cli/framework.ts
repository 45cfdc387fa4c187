/**
 * The CLI framework's entry, as bin/run.js loads it: in the CLI's bundle (scripts/bundle-cli.mjs)
 * this module and every command share one copy of oclif, so a command line loads a few files
 * instead of oclif's hundreds of small modules.
 */
export { execute } from '@oclif/core'
