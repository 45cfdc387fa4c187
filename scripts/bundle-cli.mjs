#!/usr/bin/env node
// Bundle the tess CLI from tsc's output (dist/cli) into dist/cli-bundle, run by `npm run build`
// after tsc. Every command is an entry point (dist/cli-bundle/commands/<topic>/<verb>.js, where
// package.json's oclif.commands points), with the not-found hook and the framework's entry
// (src/cli/framework.ts, which bin/run.js imports); code they share goes into
// dist/cli-bundle/chunks/ once. oclif and cli-table3 are bundled with what they import: resolving
// and compiling their hundreds of small CommonJS modules was most of every command's start.
// Every other package stays an import of node_modules, so a package one command needs (ssh2 for
// bootstrap, etcd3, the prompts and the spinner, loaded lazily) costs nothing to the others.
// The daemons (CVM, CSM, supervisor) run from dist/ as tsc wrote it; nothing here changes them.
// Code in the bundle finds the package's files through src/lib/packageroot.ts, never relative to
// import.meta.url (its place differs in the bundle).
import { build } from 'esbuild'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const dist = path.join(root, 'dist', 'cli')
const out = path.join(root, 'dist', 'cli-bundle')
/** packages bundled into the CLI (with everything they import); all others stay external */
const bundled = new Set(['@oclif/core', 'cli-table3'])
/** never bundled even when a bundled package asks for it: oclif loads typescript only to run .ts sources */
const neverBundled = new Set(['typescript'])

const entryPoints = { framework: path.join(dist, 'framework.js'), 'hooks/not-found': path.join(dist, 'hooks', 'not-found.js') }
const walk = (dir) => {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name)
    if (e.isDirectory()) walk(p)
    else if (e.name.endsWith('.js')) entryPoints[path.relative(dist, p).slice(0, -'.js'.length)] = p
  }
}
walk(path.join(dist, 'commands'))
for (const [name, file] of Object.entries(entryPoints)) {
  if (!fs.existsSync(file)) {
    console.error(`bundle-cli: ${file} (entry ${name}) is missing: run tsc -p tsconfig.json first`)
    process.exit(1)
  }
}

const packageOf = (spec) => spec.split('/').slice(0, spec.startsWith('@') ? 2 : 1).join('/')

fs.rmSync(out, { recursive: true, force: true })
await build({
  absWorkingDir: root,
  entryPoints,
  outdir: out,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  chunkNames: 'chunks/[name]-[hash]',
  minifySyntax: true,
  minifyWhitespace: true,
  legalComments: 'none',
  logLevel: 'warning',
  // the bundled CommonJS packages call require(): give every output file one of its own
  banner: { js: "import { createRequire as __tessCreateRequire } from 'node:module'; const require = __tessCreateRequire(import.meta.url);" },
  plugins: [{
    name: 'tess-externals',
    setup(b) {
      b.onResolve({ filter: /^[^./]/ }, (a) => {
        if (a.path.startsWith('node:') || neverBundled.has(packageOf(a.path))) return { external: true }
        // what a bundled package imports is bundled with it; our code's packages only if listed
        if (a.importer.includes(`${path.sep}node_modules${path.sep}`)) return undefined
        return bundled.has(packageOf(a.path)) ? undefined : { external: true }
      })
    },
  }],
})

// A path made from a module's own place (`new URL('../x', import.meta.url)`, or its directory and
// then '..') points elsewhere once the module is in a chunk: refuse to ship such a bundle.
const misplaced = /new URL\([^()]*import\.meta\.url\)|fileURLToPath\w*\(import\.meta\.url\)\)\s*,\s*["']\.\./
const check = (dir) => {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name)
    if (e.isDirectory()) check(p)
    else if (misplaced.test(fs.readFileSync(p, 'utf8'))) {
      console.error(`bundle-cli: ${path.relative(root, p)} makes a path from its own place (import.meta.url): use packageRoot (src/lib/packageroot.ts)`)
      process.exit(1)
    }
  }
}
check(out)
