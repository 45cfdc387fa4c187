#!/usr/bin/env node
// Regenerate the command reference in README.md (between the <!-- commands --> markers) from
// oclif.manifest.json, so the README never drifts from the code. Run by `npm run build`.
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const manifest = JSON.parse(fs.readFileSync(path.join(root, 'oclif.manifest.json'), 'utf8'))
const readmeFile = path.join(root, 'README.md')
const readme = fs.readFileSync(readmeFile, 'utf8')
const start = '<!-- commands -->'
const stop = '<!-- commandsstop -->'
if (!readme.includes(start) || !readme.includes(stop)) {
  console.error('gen-readme: README.md lacks the command markers')
  process.exit(1)
}

const sub = (s, id) => String(s ?? '').replaceAll('<%= config.bin %>', 'tess').replaceAll('<%= command.id %>', id.replaceAll(':', ' '))
const cmds = Object.values(manifest.commands).filter((c) => !c.hidden).sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)) // code point order: the same in every locale
const out = []
out.push('| command | what it does |', '|---|---|')
for (const c of cmds) out.push(`| [\`tess ${c.id.replaceAll(':', ' ')}\`](#tess-${c.id.replaceAll(':', '-')}) | ${c.summary ?? ''} |`)
out.push('')
for (const c of cmds) {
  const id = c.id.replaceAll(':', ' ')
  const args = Object.values(c.args ?? {}).map((a) => (a.required ? a.name.toUpperCase() : `[${a.name.toUpperCase()}]`)).join(' ')
  out.push(`### tess ${c.id.replaceAll(':', '-')}`.replace(/^### tess (.*)$/, (_m, x) => `### \`tess ${id}\`<a id="tess-${x}"></a>`))
  out.push('', c.summary ?? '', '')
  out.push('```', `tess ${id}${args ? ' ' + args : ''} [flags]`)
  const flags = Object.values(c.flags ?? {}).filter((f) => !f.hidden)
  for (const f of flags) {
    const name = `${f.char ? `-${f.char}, ` : ''}--${f.name}${f.type === 'option' ? '=VALUE' : ''}`
    const extra = [f.required ? 'required' : '', f.default !== undefined && f.type === 'option' ? `default: ${f.default}` : '', f.env ? `env: ${f.env}` : ''].filter(Boolean).join('; ')
    out.push(`  ${name.padEnd(30)} ${f.summary ?? f.description ?? ''}${extra ? ` (${extra})` : ''}`)
  }
  out.push('```')
  if (c.description) out.push('', sub(c.description, c.id))
  const ex = (c.examples ?? []).map((e) => (typeof e === 'string' ? sub(e, c.id) : `# ${sub(e.description, c.id)}\n${sub(e.command, c.id)}`))
  if (ex.length > 0) out.push('', 'Examples:', '```sh', ...ex, '```')
  if (c.aliases?.length) out.push('', `Aliases: ${c.aliases.map((a) => `\`tess ${a.replaceAll(':', ' ')}\``).join(', ')}`)
  out.push('')
}
const next = readme.slice(0, readme.indexOf(start) + start.length) + '\n' + out.join('\n') + '\n' + readme.slice(readme.indexOf(stop))
if (next !== readme) fs.writeFileSync(readmeFile, next)
console.error(`gen-readme: ${cmds.length} command(s) in README.md`)
