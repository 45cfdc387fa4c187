#!/usr/bin/env node
// Generate roff man pages (section 1) from oclif.manifest.json.
//
//   node scripts/gen-man.mjs [--manifest FILE] [--out DIR] [--package FILE]
//
// Defaults: <repo>/oclif.manifest.json, <repo>/man/man1 and <repo>/package.json.
// Also read from the environment: TESS_MAN_MANIFEST, TESS_MAN_OUT, TESS_MAN_PACKAGE
// (command-line options win).
//
// Writes one page per visible command (tess-<id with ':' and spaces replaced by '-'>.1) and an
// overview page (tess.1), and deletes stale tess-*.1 pages that no longer match a command. The
// output depends only on the manifest and package.json: the .TH date field is the package version,
// never the current date, so builds are reproducible.
//
// Only Node built-ins are used. The manifest format is @oclif/core's Manifest
// (lib/interfaces/manifest.d.ts): { version, commands: { [id]: Command.Cached } }.

import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..')

/** Exit codes of the CLI (see src/lib/errors.ts). */
const EXIT_STATUS = [
  ['0', 'Success.'],
  ['1', 'Runtime failure: an I/O error or an unexpected internal error.'],
  ['2', 'Usage error: unknown flag, missing argument, or a malformed or out-of-range value.'],
  ['3', 'Not found: the named object or cluster does not exist.'],
  ['4', 'Already exists, or the request conflicts with the current state.'],
  ['5', 'Precondition not met (for example: not enough capacity, too few nodes, ports in use).'],
  ['6', 'Unreachable or timed out: a host, daemon or store could not be reached in time.'],
  ['7', 'Authentication refused: credentials are missing or wrong, or permission was denied.'],
]

const LINE_FEED = /\r\n|\n|\r/

// ---------------------------------------------------------------------------------------------
// roff escaping

/**
 * Escape one line of text for roff. The result never starts with a control character and contains
 * no raw backslashes, so it can be emitted as a text line or inside a quoted macro argument.
 */
function esc(text) {
  let out = ''
  let col = 0
  for (const ch of String(text)) {
    const cp = ch.codePointAt(0)
    let piece
    switch (ch) {
      case '\\':
        piece = '\\e'
        break
      case '-':
        piece = '\\-'
        break
      case "'":
        piece = '\\(aq'
        break
      case '`':
        piece = '\\(ga'
        break
      case '^':
        piece = '\\(ha'
        break
      case '~':
        piece = '\\(ti'
        break
      case '"':
        piece = '\\(dq'
        break
      case '\t': {
        const n = 8 - (col % 8)
        out += ' '.repeat(n)
        col += n
        continue
      }
      default:
        if (cp < 0x20 || cp === 0x7f) continue // other control characters: drop
        if (cp > 0x7e) piece = `\\[u${cp.toString(16).toUpperCase().padStart(4, '0')}]`
        else piece = ch
    }
    out += piece
    col++
  }
  // A '.' (or ''', already escaped above) at the start of a line would be read as a request.
  if (out.startsWith('.')) out = '\\&' + out
  return out
}

const bold = (s) => `\\fB${esc(s)}\\fR`
const ital = (s) => `\\fI${esc(s)}\\fR`
/** A quoted macro argument. */
const arg = (s) => `"${esc(s)}"`

// ---------------------------------------------------------------------------------------------
// text blocks

const BULLET = /^\s*(?:[-*+]|\u2022)\s+/

function expandTabs(line) {
  let out = ''
  for (const ch of line) out += ch === '\t' ? ' '.repeat(8 - (out.length % 8)) : ch
  return out
}

/**
 * Split free text into paragraphs (blank-line separated) and each paragraph into blocks:
 * text (filled), list (lines starting with -, *, + or •; following lines continue the item) and
 * literal (indented lines, kept as they are).
 */
function parseBlocks(text) {
  const paragraphs = []
  let para = []
  for (const raw of String(text ?? '').split(LINE_FEED)) {
    const line = expandTabs(raw).replace(/\s+$/, '')
    if (line === '') {
      if (para.length > 0) paragraphs.push(para)
      para = []
      continue
    }
    const cur = para.at(-1)
    if (BULLET.test(line)) {
      const item = [line.replace(BULLET, '')]
      if (cur?.type === 'list') cur.items.push(item)
      else para.push({ items: [item], type: 'list' })
    } else if (cur?.type === 'list') {
      cur.items.at(-1).push(line.trim())
    } else if (/^\s/.test(line)) {
      if (cur?.type === 'literal') cur.lines.push(line)
      else para.push({ lines: [line], type: 'literal' })
    } else if (cur?.type === 'text') {
      cur.lines.push(line)
    } else {
      para.push({ lines: [line], type: 'text' })
    }
  }
  if (para.length > 0) paragraphs.push(para)
  return paragraphs
}

function dedent(lines) {
  const n = Math.min(...lines.map((l) => l.match(/^ */)[0].length))
  return lines.map((l) => l.slice(n))
}

/**
 * Render free text (a description) into roff lines. `first` means nothing precedes it in its
 * section (no paragraph macro needed); `nested` renders inside a .TP body, where paragraphs use
 * .IP and lists and literal blocks keep the body's indentation.
 */
function renderText(text, { nested = false, first = true } = {}) {
  const out = []
  let started = !first
  parseBlocks(text).forEach((blocks) => {
    blocks.forEach((block, b) => {
      // A new paragraph gets vertical space; a block inside the same paragraph only a line break.
      const open = () => {
        if (started) out.push(b === 0 ? (nested ? '.IP' : '.PP') : nested ? '.br' : '.PP')
        started = true
      }
      if (block.type === 'text') {
        open()
        for (const l of block.lines) out.push(esc(l.trim()))
      } else if (block.type === 'literal') {
        if (nested) {
          open()
          out.push('.nf', ...dedent(block.lines).map((l) => esc(`  ${l}`)), '.fi')
        } else {
          if (started) out.push('.PP')
          started = true
          out.push('.RS 4', '.nf', ...dedent(block.lines).map((l) => esc(l)), '.fi', '.RE')
        }
      } else if (nested) {
        block.items.forEach((item, i) => {
          if (i === 0) open()
          else out.push('.br')
          out.push(`\\(bu ${esc(item.map((l) => l.trim()).join(' '))}`)
        })
      } else {
        block.items.forEach((item, i) => {
          if (i === 1) out.push('.PD 0')
          out.push('.IP \\(bu 2', ...item.map((l) => esc(l.trim())))
        })
        if (block.items.length > 1) out.push('.PD')
        started = true
      }
    })
  })
  return out
}

// ---------------------------------------------------------------------------------------------
// manifest helpers

function readJson(file, what) {
  let text
  try {
    text = readFileSync(file, 'utf8')
  } catch (error) {
    fail(`cannot read ${what} ${file}: ${error.message}`)
  }
  try {
    return JSON.parse(text)
  } catch (error) {
    fail(`${what} ${file} is not valid JSON: ${error.message}`)
  }
}

function fail(message, code = 1) {
  process.stderr.write(`gen-man: ${message}\n`)
  process.exit(code)
}

const castArray = (v) => (v === undefined || v === null ? [] : Array.isArray(v) ? v : [v])

/** Same ordering as oclif's help: flags with a short char first, then by name. */
function sortFlags(flags) {
  const key = (f) => [f.char ? 0 : 1, f.char ?? '', f.name]
  return [...flags].sort((a, b) => {
    const ka = key(a)
    const kb = key(b)
    for (let i = 0; i < ka.length; i++) {
      if (ka[i] < kb[i]) return -1
      if (ka[i] > kb[i]) return 1
    }
    return 0
  })
}

function formatDefault(value) {
  if (value === undefined || value === null || value === '' || value === false) return undefined
  if (Array.isArray(value)) return value.length > 0 ? value.map(String).join(',') : undefined
  if (typeof value === 'object') return JSON.stringify(value)
  return String(value)
}

// ---------------------------------------------------------------------------------------------
// page generation

class Generator {
  constructor({ manifest, pjson }) {
    const oclif = pjson.oclif ?? {}
    this.version = String(pjson.version ?? manifest.version ?? '0.0.0')
    this.pkgName = String(pjson.name ?? 'tess')
    this.bin = String(oclif.bin ?? Object.keys(typeof pjson.bin === 'object' ? pjson.bin : {})[0] ?? 'tess')
    this.dirname = String(oclif.dirname ?? this.bin)
    this.sep = oclif.topicSeparator ?? ':'
    this.topics = oclif.topics ?? {}
    this.description = String(pjson.description ?? '')
    this.warnings = new Set()

    const all = Object.entries(manifest.commands ?? {}).map(([key, c]) => ({ ...c, id: c.id ?? key }))
    this.commands = all.filter((c) => !c.hidden).sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    this.byPage = new Map()
    for (const c of this.commands) {
      const page = this.pageName(c.id)
      const other = this.byPage.get(page)
      if (other) fail(`commands "${other.id}" and "${c.id}" would both be written to ${page}.1`)
      this.byPage.set(page, c)
    }
  }

  /** Command id as the user types it (topic separator from package.json, a space for tess). */
  displayId(id) {
    return this.sep === ':' ? id : id.replaceAll(':', this.sep)
  }

  pageName(id) {
    const page = `${this.bin}-${id.trim().replace(/[\s:]+/g, '-')}`
    if (/[/\\]/.test(page) || page.startsWith('.')) fail(`command id "${id}" cannot be used as a file name`)
    return page
  }

  /** Substitute oclif's ejs placeholders (<%= config.bin %>, <%= command.id %>, ...). */
  render(text, cmd) {
    const values = {
      'config.bin': this.bin,
      'config.name': this.pkgName,
      'config.dirname': this.dirname,
      'config.version': this.version,
      'config.topicSeparator': this.sep,
      'command.id': cmd ? this.displayId(cmd.id) : '',
    }
    return String(text ?? '').replace(/<%[=-]?\s*([\w.]+)\s*[-_]?%>/g, (match, key) => {
      if (Object.hasOwn(values, key) && (cmd || !key.startsWith('command.'))) return values[key]
      this.warnings.add(`unknown placeholder ${match}${cmd ? ` in ${cmd.id}` : ''}`)
      return match
    })
  }

  summary(cmd) {
    const s = cmd.summary ?? String(cmd.description ?? '').split(LINE_FEED)[0] ?? ''
    const line = this.render(s, cmd).split(LINE_FEED)[0].trim()
    if (line) return line
    this.warnings.add(`command ${cmd.id} has neither a summary nor a description`)
    return `the ${this.bin} ${this.displayId(cmd.id)} command`
  }

  th(title) {
    // .TH title section date source manual; the "date" is the version: reproducible.
    return `.TH ${arg(title.toUpperCase())} 1 ${arg(this.version)} ${arg(`${this.pkgName} ${this.version}`)} ${arg('Tess Manual')}`
  }

  header(source) {
    return [
      `.\\" Generated by scripts/gen-man.mjs from ${source}; do not edit.`,
      `.\\" ${this.pkgName} ${this.version}`,
    ]
  }

  synopsis(cmd) {
    const name = bold(`${this.bin} ${this.displayId(cmd.id)}`)
    const hasFlags = Object.values(cmd.flags ?? {}).some((f) => !f.hidden)
    const flagsPart = hasFlags ? ` [${ital('flags')}]` : ''
    const usages = castArray(cmd.usage)
    if (usages.length > 0) {
      // Custom usage strings, as oclif's help shows them: "<%= command.id %> ..." or "id ...".
      const ids = [cmd.id, this.displayId(cmd.id)]
      return usages.flatMap((u, i) => {
        let rest = String(u).replace(/<%[=-]?\s*command\.id\s*%>/, '').trim()
        for (const id of ids) if (rest.startsWith(id + ' ') || rest === id) rest = rest.slice(id.length).trim()
        rest = this.render(rest, cmd)
        return [...(i > 0 ? ['.br'] : []), rest ? `${name} ${esc(rest)}` : name]
      })
    }
    const args = Object.entries(cmd.args ?? {})
      .map(([key, a]) => ({ ...a, name: a.name ?? key }))
      .filter((a) => !a.hidden)
    const parts = args.map((a) => {
      const variadic = a.multiple || cmd.strict === false ? '...' : ''
      const n = `${ital(a.name.toUpperCase())}${variadic}`
      return a.required ? n : `[${n}]`
    })
    if (args.length === 0 && cmd.strict === false) parts.push(`[${ital('ARGS')}...]`)
    return [[name, ...parts].join(' ') + flagsPart]
  }

  argumentsSection(cmd) {
    const args = Object.entries(cmd.args ?? {})
      .map(([key, a]) => ({ ...a, name: a.name ?? key }))
      .filter((a) => !a.hidden)
    if (!args.some((a) => a.description || a.options || formatDefault(a.default) !== undefined)) return []
    const out = ['.SH ARGUMENTS']
    for (const a of args) {
      out.push('.TP', `${ital(a.name.toUpperCase())}${a.multiple ? '...' : ''}${a.required ? ' (required)' : ''}`)
      const body = renderText(this.render(a.description ?? '', cmd), { nested: true })
      out.push(...body)
      const extra = []
      if (a.options?.length) extra.push(`Possible values: ${a.options.map((o) => bold(String(o))).join(', ')}.`)
      const def = formatDefault(a.default)
      if (def !== undefined) extra.push(`Default: ${bold(def)}.`)
      extra.forEach((line, i) => out.push(...(body.length > 0 || i > 0 ? ['.br'] : []), line))
    }
    return out
  }

  flagLabel(f, cmd) {
    let label
    if (f.helpLabel) {
      label = esc(this.render(f.helpLabel, cmd))
    } else {
      const names = []
      if (f.char) names.push(bold(`-${f.char}`))
      names.push(f.type === 'boolean' && f.allowNo ? `${bold('--')}[${bold('no-')}]${bold(f.name)}` : bold(`--${f.name}`))
      label = names.join(', ')
    }
    if (f.type !== 'boolean') {
      const hv = castArray(f.helpValue)
      const value = hv.length > 0 ? hv.map((v) => String(v).replace(/^<(.*)>$/, '$1').toUpperCase()).join(' ') : 'VALUE'
      label += `=${ital(value)}${f.multiple ? '...' : ''}`
    }
    if (f.required) label += ' (required)'
    return label
  }

  flagEntry(f, cmd) {
    const out = ['.TP', this.flagLabel(f, cmd)]
    const texts = [f.summary, f.description].filter((t) => t && String(t).trim())
    const uniq = texts.length === 2 && texts[0].trim() === texts[1].trim() ? [texts[0]] : texts
    let first = true
    for (const t of uniq) {
      const lines = renderText(this.render(t, cmd), { nested: true, first })
      out.push(...lines)
      if (lines.length > 0) first = false
    }
    const extra = []
    if (f.type !== 'boolean' && f.options?.length) extra.push(`Possible values: ${f.options.map((o) => bold(String(o))).join(', ')}.`)
    const def = formatDefault(f.default)
    if (def !== undefined && f.type !== 'boolean') extra.push(`Default: ${bold(def)}.`)
    if (f.type === 'boolean' && f.default === true) extra.push(`Default: ${bold('true')}.`)
    if (f.multiple) extra.push(f.delimiter ? `May be repeated, or given as a ${esc(f.delimiter)}\\-separated list.` : 'May be repeated.')
    if (f.env) extra.push(`Environment variable: ${bold(f.env)}.`)
    const aliases = [...castArray(f.charAliases).map((c) => `-${c}`), ...castArray(f.aliases).map((a) => `--${a}`)]
    if (aliases.length > 0) extra.push(`Alias${aliases.length > 1 ? 'es' : ''}: ${aliases.map((a) => bold(a)).join(', ')}.`)
    if (f.deprecated) {
      const d = f.deprecated === true ? {} : f.deprecated
      let msg = d.message ?? `Deprecated${d.version ? ` and will be removed in version ${d.version}` : ''}${d.to ? `; use --${d.to} instead` : ''}.`
      extra.push(esc(this.render(msg, cmd)))
    }
    for (const line of extra) {
      if (!first) out.push('.br')
      out.push(line)
      first = false
    }
    return out
  }

  optionsSection(cmd) {
    const flags = Object.entries(cmd.flags ?? {})
      .map(([key, f]) => ({ ...f, name: f.name ?? key }))
      .filter((f) => !f.hidden)
    if (flags.length === 0) return []
    const out = ['.SH OPTIONS']
    const main = sortFlags(flags.filter((f) => !f.helpGroup))
    const groups = new Map()
    for (const f of flags.filter((f) => f.helpGroup)) {
      if (!groups.has(f.helpGroup)) groups.set(f.helpGroup, [])
      groups.get(f.helpGroup).push(f)
    }
    for (const f of main) out.push(...this.flagEntry(f, cmd))
    for (const [group, list] of groups) {
      out.push(`.SS ${arg(`${group.toUpperCase()} FLAGS`)}`)
      for (const f of sortFlags(list)) out.push(...this.flagEntry(f, cmd))
    }
    return out
  }

  isCommandLine(line) {
    const l = line.trim()
    return l.startsWith(`${this.bin} `) || l === this.bin || l.startsWith(`$ ${this.bin}`)
  }

  formatCommandLine(line) {
    const l = line.trim()
    return l.startsWith('$ ') ? l : this.isCommandLine(l) ? `$ ${l}` : l
  }

  literal(lines) {
    return ['.RS 4', '.nf', ...lines.map((l) => esc(l)), '.fi', '.RE']
  }

  examplesSection(cmd) {
    const examples = castArray(cmd.examples ?? cmd.example)
    if (examples.length === 0) return []
    const out = ['.SH EXAMPLES']
    examples.forEach((ex, i) => {
      let description
      let commands
      if (typeof ex === 'string') {
        const lines = this.render(ex, cmd).split(LINE_FEED).filter((l) => l.trim() !== '')
        if (lines.length >= 2 && !this.isCommandLine(lines[0]) && lines.slice(1).every((l) => this.isCommandLine(l))) {
          description = lines[0]
          commands = lines.slice(1)
        } else if (lines.length > 0 && lines.every((l) => !this.isCommandLine(l))) {
          description = lines.join('\n')
          commands = []
        } else {
          commands = lines
        }
      } else if (ex && typeof ex === 'object') {
        description = ex.description ? this.render(ex.description, cmd) : undefined
        commands = ex.command ? [this.render(ex.command, cmd)] : []
      } else return
      if (description) out.push(...renderText(description, { first: i === 0 }))
      else if (i > 0) out.push('.PP')
      if (commands.length > 0) {
        // One command may span several lines: continue them with a backslash, as oclif does.
        const lines = commands.flatMap((c) => {
          const parts = String(c).split(LINE_FEED).filter((l) => l.trim() !== '')
          return parts.map((p, j) => {
            const text = j === 0 ? this.formatCommandLine(p) : `  ${p.trim()}`
            return j < parts.length - 1 && !text.endsWith('\\') ? `${text} \\` : text
          })
        })
        out.push(...this.literal(lines))
      }
    })
    return out
  }

  exitStatusSection() {
    const out = ['.SH "EXIT STATUS"']
    EXIT_STATUS.forEach(([code, what], i) => {
      if (i === 1) out.push('.PD 0')
      out.push('.TP', bold(code), esc(what))
    })
    out.push('.PD')
    return out
  }

  topicOf(id) {
    const i = id.lastIndexOf(':')
    return i < 0 ? '' : id.slice(0, i)
  }

  seeAlso(cmd) {
    const topic = this.topicOf(cmd.id)
    // The parent command (if the topic is also a command), the siblings and the subcommands.
    const related = this.commands.filter(
      (c) =>
        c.id !== cmd.id &&
        ((topic !== '' && (c.id === topic || this.topicOf(c.id) === topic)) || this.topicOf(c.id) === cmd.id),
    )
    const refs = [this.bin, ...related.map((c) => this.pageName(c.id))]
    return ['.SH "SEE ALSO"', refs.map((r) => `${bold(r)}(1)`).join(',\n')]
  }

  commandPage(cmd) {
    const page = this.pageName(cmd.id)
    const out = [...this.header('oclif.manifest.json'), this.th(page)]
    out.push('.SH NAME', `${esc(page)} \\- ${esc(this.summary(cmd))}`)
    out.push('.SH SYNOPSIS', ...this.synopsis(cmd))

    const desc = this.render(cmd.description || cmd.summary || '', cmd)
    const descLines = renderText(desc)
    const notes = []
    if (cmd.state === 'deprecated' || cmd.deprecationOptions) {
      const d = cmd.deprecationOptions ?? {}
      notes.push(
        d.message
          ? this.render(d.message, cmd)
          : `This command is deprecated${d.version ? ` and will be removed in version ${d.version}` : ''}.${d.to ? ` Use "${this.bin} ${this.displayId(d.to)}" instead.` : ''}`,
      )
    } else if (cmd.state) notes.push(`This command is in ${cmd.state}.`)
    if (descLines.length > 0 || notes.length > 0) {
      out.push('.SH DESCRIPTION', ...descLines)
      for (const n of notes) out.push(...renderText(n, { first: descLines.length === 0 && n === notes[0] }))
    }

    out.push(...this.argumentsSection(cmd))
    out.push(...this.optionsSection(cmd))

    const aliases = castArray(cmd.aliases).filter((a) => !castArray(cmd.hiddenAliases).includes(a))
    if (aliases.length > 0) {
      out.push('.SH ALIASES', ...this.literal(aliases.map((a) => `${this.bin} ${this.displayId(a)}`)))
    }
    out.push(...this.examplesSection(cmd))
    out.push(...this.exitStatusSection())
    out.push(...this.seeAlso(cmd))
    return out.join('\n') + '\n'
  }

  overviewPage() {
    const out = [...this.header('oclif.manifest.json and package.json'), this.th(this.bin)]
    const summary = this.render(this.description.split(LINE_FEED)[0] || `the ${this.bin} command-line interface`)
    out.push('.SH NAME', `${esc(this.bin)} \\- ${esc(summary)}`)
    out.push('.SH SYNOPSIS', `${bold(this.bin)} ${ital('COMMAND')} [${ital('flags')}]`, '.br', `${bold(this.bin)} ${ital('COMMAND')} ${bold('--help')}`)
    out.push('.SH DESCRIPTION', ...renderText(this.render(this.description)))
    out.push(
      ...renderText(
        `Each command has its own manual page, named after the command with dashes: "${this.bin} ${
          this.commands[0] ? this.displayId(this.commands[0].id) : 'COMMAND'
        }" is described in ${this.commands[0] ? this.pageName(this.commands[0].id) : `${this.bin}-COMMAND`}(1).`,
        { first: this.description.trim() === '' },
      ),
    )

    // Group by the first topic; a command that is also a topic goes with its subcommands.
    const groups = new Map()
    for (const c of this.commands) {
      const head = c.id.split(':')[0]
      const key = c.id.includes(':') || this.commands.some((o) => o.id.startsWith(`${c.id}:`)) ? head : ''
      if (!groups.has(key)) groups.set(key, [])
      groups.get(key).push(c)
    }
    const keys = [...groups.keys()].filter((k) => k !== '').sort()
    if (groups.has('')) keys.push('')
    out.push('.SH COMMANDS')
    const named = keys.some((k) => k !== '')
    for (const key of keys) {
      if (named) {
        out.push(`.SS ${arg(key === '' ? 'Other commands' : `${this.bin} ${this.displayId(key)}`)}`)
        const td = this.topics[key]?.description
        if (key !== '' && td) out.push(...renderText(this.render(td)))
      }
      for (const c of groups.get(key)) {
        out.push('.TP', bold(`${this.bin} ${this.displayId(c.id)}`))
        out.push(esc(this.summary(c) || '(no summary)'))
      }
    }
    if (this.commands.length === 0) out.push('No commands.')
    out.push(...this.exitStatusSection())
    out.push('.SH "SEE ALSO"', this.commands.map((c) => `${bold(this.pageName(c.id))}(1)`).join(',\n') || bold(this.bin))
    return out.join('\n') + '\n'
  }
}

// ---------------------------------------------------------------------------------------------
// main

function main() {
  let values
  try {
    ;({ values } = parseArgs({
      options: {
        manifest: { type: 'string' },
        out: { type: 'string' },
        package: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }))
  } catch (error) {
    fail(`${error.message}\nusage: node scripts/gen-man.mjs [--manifest FILE] [--out DIR] [--package FILE]`, 2)
  }
  if (values.help) {
    process.stdout.write('usage: node scripts/gen-man.mjs [--manifest FILE] [--out DIR] [--package FILE]\n')
    return
  }
  const manifestFile = resolve(values.manifest ?? process.env.TESS_MAN_MANIFEST ?? join(repoRoot, 'oclif.manifest.json'))
  const outDir = resolve(values.out ?? process.env.TESS_MAN_OUT ?? join(repoRoot, 'man', 'man1'))
  const pjsonFile = resolve(values.package ?? process.env.TESS_MAN_PACKAGE ?? join(repoRoot, 'package.json'))

  const manifest = readJson(manifestFile, 'manifest')
  if (!manifest || typeof manifest !== 'object' || typeof manifest.commands !== 'object' || manifest.commands === null) {
    fail(`manifest ${manifestFile} has no "commands" object (run "oclif manifest" first)`)
  }
  const pjson = readJson(pjsonFile, 'package.json')
  const gen = new Generator({ manifest, pjson })

  mkdirSync(outDir, { recursive: true })
  const written = new Set()
  const write = (name, content) => {
    const file = join(outDir, name)
    const old = existsSync(file) ? readFileSync(file, 'utf8') : undefined
    if (old !== content) writeFileSync(file, content)
    written.add(name)
  }
  for (const [page, cmd] of gen.byPage) write(`${page}.1`, gen.commandPage(cmd))
  write(`${gen.bin}.1`, gen.overviewPage())

  const removed = []
  for (const name of readdirSync(outDir)) {
    if (name.startsWith(`${gen.bin}-`) && name.endsWith('.1') && !written.has(name)) {
      rmSync(join(outDir, name), { force: true })
      removed.push(name)
    }
  }

  for (const w of gen.warnings) process.stderr.write(`gen-man: warning: ${w}\n`)
  process.stdout.write(
    `gen-man: ${written.size} page(s) in ${outDir}${removed.length ? `, removed stale: ${removed.sort().join(', ')}` : ''}\n`,
  )
}

main()
