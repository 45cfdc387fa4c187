// `tess --version --json` (oclif answers --version in text only): prints
// {"name", "version", "platform", "arch", "node"} on stdout and returns true; false for any other command line.
import fs from 'node:fs'

export function versionJson(argv) {
  if (argv[0] !== '--version' || !argv.includes('--json')) return false
  const pkg = JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8'))
  process.stdout.write(JSON.stringify({ name: pkg.name, version: pkg.version, platform: process.platform, arch: process.arch, node: process.version }, null, 2) + '\n')
  return true
}
