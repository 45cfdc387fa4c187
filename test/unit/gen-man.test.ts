import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

const repoRoot = fileURLToPath(new URL('../..', import.meta.url))
const script = join(repoRoot, 'scripts', 'gen-man.mjs')
const fixture = join(repoRoot, 'test', 'fixtures', 'gen-man', 'oclif.manifest.json')
const pkgVersion = (JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version

const have = (cmd: string): boolean => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0
const hasMan = have('man')
const hasGroff = have('groff')

function gen(args: string[]) {
  return spawnSync(process.execPath, [script, ...args], { encoding: 'utf8' })
}

/** Render a page the way a user sees it, as plain ASCII-ish text. */
function renderMan(file: string): string {
  const out = execFileSync('man', ['-l', file], {
    encoding: 'utf8',
    env: { ...process.env, MANWIDTH: '100', LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8', MAN_KEEP_FORMATTING: '', MANPAGER: 'cat', PAGER: 'cat' },
  })
  return out
    .replace(/.\x08/g, '') // overstrike bold/underline, if any
    .replace(/\x1b\[[0-9;]*m/g, '') // SGR, if any
    .replace(/[\u2010\u2011\u2212]/g, '-')
}

describe('scripts/gen-man.mjs', () => {
  let dir: string
  let out: string
  const page = (name: string) => readFileSync(join(out, name), 'utf8')

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'gen-man-'))
    out = join(dir, 'man1')
    // A first run with a stale page and an unrelated file in the output directory.
    execFileSync('mkdir', ['-p', out])
    writeFileSync(join(out, 'tess-removed-command.1'), '.TH OLD 1\n')
    writeFileSync(join(out, 'notes.txt'), 'keep me\n')
    const r = gen(['--manifest', fixture, '--out', out])
    expect(r.stderr).toBe('')
    expect(r.status).toBe(0)
  })

  afterAll(() => {
    rmSync(dir, { recursive: true, force: true })
  })

  it('writes one page per visible command plus tess.1 and deletes stale pages', () => {
    expect(readdirSync(out).sort()).toEqual([
      'notes.txt',
      'tess-cluster-create.1',
      'tess-status.1',
      'tess-vdisk-create.1',
      'tess-vdisk-delete.1',
      'tess-vdisk-list.1',
      'tess.1',
    ])
    expect(existsSync(join(out, 'tess-internal-dump.1'))).toBe(false) // hidden command
  })

  it('has the header and the sections in order', () => {
    const p = page('tess-vdisk-create.1')
    expect(p).toContain(`.TH "TESS\\-VDISK\\-CREATE" 1 "${pkgVersion}" "tessera ${pkgVersion}" "Tess Manual"\n`)
    const sections = p
      .split('\n')
      .filter((l) => l.startsWith('.SH '))
      .map((l) => l.slice(4).replaceAll('"', ''))
    expect(sections).toEqual([
      'NAME',
      'SYNOPSIS',
      'DESCRIPTION',
      'ARGUMENTS',
      'OPTIONS',
      'ALIASES',
      'EXAMPLES',
      'EXIT STATUS',
      'SEE ALSO',
    ])
    expect(p).toContain('.SH NAME\ntess\\-vdisk\\-create \\- Create a vDisk\n')
    expect(p).toContain('.SH SYNOPSIS\n\\fBtess vdisk create\\fR \\fINAME\\fR [\\fIflags\\fR]\n')
  })

  it('documents every visible flag', () => {
    const p = page('tess-vdisk-create.1')
    expect(p).toContain('\\fB\\-s\\fR, \\fB\\-\\-size\\fR=\\fIVALUE\\fR (required)\n')
    expect(p).toContain('\\fB\\-f\\fR, \\fB\\-\\-force\\fR\nDo not ask for confirmation.')
    expect(p).toContain('\\fB\\-\\-\\fR[\\fBno\\-\\fR]\\fBthin\\fR\n')
    expect(p).toContain('\\fB\\-l\\fR, \\fB\\-\\-label\\fR=\\fIKEY=VALUE\\fR...\n')
    expect(p).toContain('Possible values: \\fB1\\fR, \\fB2\\fR, \\fB3\\fR.')
    expect(p).toContain('Default: \\fB2\\fR.')
    expect(p).toContain('Environment variable: \\fBTESS_TOKEN\\fR.')
    expect(p).toContain('.SS "GLOBAL FLAGS"\n.TP\n\\fB\\-\\-json\\fR\n')
    expect(p).not.toContain('debug') // hidden flag
    expect(p).not.toMatch(/\\-\\-force\\fR=/) // booleans take no value
  })

  it('substitutes oclif placeholders and shows ids with spaces', () => {
    const p = page('tess-vdisk-create.1')
    expect(p).not.toContain('<%')
    expect(p).toContain('Use \\(dqtess vdisk create \\-\\-help\\(dq for details.')
    expect(p).toContain('.SH ALIASES\n.RS 4\n.nf\ntess vdisk new\n.fi\n.RE\n')
    // string example, {description, command} example and "description\n$ command" string example
    expect(p).toContain('$ tess vdisk create data \\-\\-size 10G\n')
    expect(p).toContain('Create a thick vDisk with three replicas\n.RS 4\n.nf\n$ tess vdisk create db \\-\\-size 20G \\-\\-no\\-thin \\-\\-replicas 3\n')
    expect(p).toContain('Create with labels\n.RS 4\n.nf\n$ tess vdisk create web \\-\\-size 1G \\-\\-label env=prod \\-\\-label \\(aqteam=web\\(aq\n')
  })

  it('escapes roff specials', () => {
    for (const name of readdirSync(out).filter((n) => n.endsWith('.1'))) {
      const p = page(name)
      expect(p, name).toMatch(/^[\x0a\x20-\x7e]*$/) // plain ASCII: others as \[uXXXX]
      for (const line of p.split('\n')) {
        // the only control lines are comments and the macros we emit
        if (/^[.']/.test(line)) expect(line, `${name}: ${line}`).toMatch(/^\.(\\"|TH|SH|SS|PP|TP|IP|RS|RE|nf|fi|br|PD)( |$)/)
        // every hyphen outside comments is a \- (copy-pasteable options)
        if (!line.startsWith('.\\"')) expect(line.replaceAll('\\-', ''), `${name}: ${line}`).not.toContain('-')
      }
    }
    const p = page('tess-vdisk-create.1')
    expect(p).toContain('\n\\&.dotted line must not become a request\n')
    expect(p).toContain('\n\\(aqquoted line must not become a request\n')
    expect(p).toContain('A backslash \\en stays literal, and so does a tilde \\(ti and a caret \\(ha and caf\\[u00E9] \\[u2014] ok.')
    expect(p).toContain('\\(gatess vdisk list\\(ga')
    // description: paragraphs, a bullet list and an indented literal block
    expect(p).toContain('.PP\nThe size accepts units:\n.IP \\(bu 2\nK, M, G, T (powers of 1024)\n.PD 0\n.IP \\(bu 2\na plain number of bytes\n.PD\n')
    expect(p).toContain('.RS 4\n.nf\ntess vdisk create db \\-\\-size 10G\ntess vdisk create logs \\-\\-size=1T\n.fi\n.RE\n')
  })

  it('lists the exit status table and related pages', () => {
    const p = page('tess-vdisk-create.1')
    for (const code of ['0', '1', '2', '3', '4', '5', '6', '7']) expect(p).toContain(`.TP\n\\fB${code}\\fR\n`)
    expect(p).toMatch(/\.SH "SEE ALSO"\n\\fBtess\\fR\(1\),\n\\fBtess\\-vdisk\\-delete\\fR\(1\),\n\\fBtess\\-vdisk\\-list\\fR\(1\)\n$/)
    expect(page('tess-vdisk-delete.1')).toContain('\\fBtess vdisk delete\\fR \\fINAME\\fR... [\\fIMORE\\fR...]\n')
  })

  it('writes an overview page with every command and its summary', () => {
    const p = page('tess.1')
    expect(p).toContain(`.TH "TESS" 1 "${pkgVersion}" "tessera ${pkgVersion}" "Tess Manual"\n`)
    expect(p).toContain('.SS "tess vdisk"\nManage vDisks: thin\\-provisioned virtual block devices served over NBD\n')
    expect(p).toContain('.TP\n\\fBtess vdisk create\\fR\nCreate a vDisk\n')
    expect(p).toContain('.TP\n\\fBtess vdisk list\\fR\nList vDisks with their size and replicas.\n')
    expect(p).toContain('.TP\n\\fBtess cluster create\\fR\nCreate a cluster\n')
    expect(p).toContain('.SS "Other commands"\n.TP\n\\fBtess status\\fR\n')
    expect(p).not.toContain('tess internal dump')
    expect(p).toContain('.SH "EXIT STATUS"')
  })

  it('is reproducible: no date, same bytes on a second run', () => {
    const before = Object.fromEntries(readdirSync(out).map((n) => [n, page(n)]))
    const r = gen(['--manifest', fixture, '--out', out])
    expect(r.status).toBe(0)
    for (const [n, content] of Object.entries(before)) expect(page(n), n).toBe(content)
    for (const content of Object.values(before)) expect(content).not.toMatch(/\b(19|20)\d\d\b/)
  })

  it.skipIf(!hasGroff)('renders without groff warnings', () => {
    for (const name of readdirSync(out).filter((n) => n.endsWith('.1'))) {
      const r = spawnSync('groff', ['-man', '-Tutf8', '-ww', '-z', join(out, name)], { encoding: 'utf8' })
      expect(r.stderr, name).toBe('')
      expect(r.status, name).toBe(0)
    }
  })

  it.skipIf(!hasMan)('renders NAME, SYNOPSIS, OPTIONS and EXAMPLES with man -l', () => {
    const text = renderMan(join(out, 'tess-vdisk-create.1'))
    for (const heading of ['NAME', 'SYNOPSIS', 'DESCRIPTION', 'OPTIONS', 'EXAMPLES', 'EXIT STATUS', 'SEE ALSO']) {
      expect(text).toMatch(new RegExp(`^${heading}$`, 'm'))
    }
    expect(text).toMatch(/^ +tess-vdisk-create - Create a vDisk$/m)
    expect(text).toMatch(/^ +tess vdisk create NAME \[flags\]$/m)
    expect(text).toMatch(/^ +-s, --size=VALUE \(required\)$/m)
    expect(text).toMatch(/^ +--\[no-\]thin$/m)
    expect(text).toMatch(/^ +\$ tess vdisk create data --size 10G$/m)
    expect(text).toMatch(/^ +\$ tess vdisk create web --size 1G --label env=prod --label 'team=web'$/m)
    expect(text).toMatch(/^ +\.dotted line must not become a request 'quoted line/m)
    expect(text).toContain('café')
    expect(text).not.toContain('<%')
    expect(text).toMatch(/^tessera \S+ +\S+ +TESS-VDISK-CREATE\(1\)$/m)

    const overview = renderMan(join(out, 'tess.1'))
    expect(overview).toMatch(/^ +tess vdisk create\n +Create a vDisk$/m)
  })

  it('fails on an unknown option and on two commands that map to the same page', () => {
    expect(gen(['--bogus']).status).toBe(2)
    const bad = join(dir, 'clash.json')
    const cmd = { aliases: [], args: {}, flags: {}, hiddenAliases: [], summary: 'x' }
    writeFileSync(
      bad,
      JSON.stringify({ version: '0.0.0', commands: { 'a-b:c': { ...cmd, id: 'a-b:c' }, 'a:b-c': { ...cmd, id: 'a:b-c' } } }),
    )
    const r = gen(['--manifest', bad, '--out', join(dir, 'clash')])
    expect(r.status).toBe(1)
    expect(r.stderr).toContain('tess-a-b-c.1')
  })
})
