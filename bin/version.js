// `tess --version` answered before oclif loads (a Node start and one small file instead of the
// framework: the version is what scripts ask most often). Text as oclif prints it
// (NAME/VERSION PLATFORM-ARCH node-vX); with --json, {"name", "version", "platform", "arch",
// "node"} on stdout. Returns false for any other command line.
import fs from 'node:fs'

export function versionJson(argv) {
  if (argv[0] !== '--version' || argv.some((a) => a !== '--version' && a !== '--json')) return false
  const pkg = JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8'))
  if (!argv.includes('--json')) {
    process.stdout.write(`${pkg.name}/${pkg.version} ${process.platform}-${process.arch} node-${process.version}\n`)
    return true
  }
  process.stdout.write(JSON.stringify({ name: pkg.name, version: pkg.version, platform: process.platform, arch: process.arch, node: process.version }, null, 2) + '\n')
  return true
}
