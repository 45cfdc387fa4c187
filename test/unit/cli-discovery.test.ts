import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { editDistance, suggestCommand } from '../../src/cli/hooks/not-found.js'
import { setHeadersOff, table } from '../../src/cli/output.js'
import { runTess } from '../helpers/cluster.js'

/** a config dir of its own, empty: no cluster context (some commands create the directory) */
const configDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-cli-'))
afterAll(() => fs.rmSync(configDir, { recursive: true, force: true }))
/** the built CLI (dist/), with no cluster context: these commands never reach one */
const tess = (args: string[]) => runTess(args, { TESS_CONFIG_DIR: configDir })

describe('suggestions for unknown commands', () => {
  it('edit distance', () => {
    expect(editDistance('vdsk', 'vdisk')).toBe(1)
    expect(editDistance('', 'abc')).toBe(3)
    expect(editDistance('list', 'list')).toBe(0)
    expect(editDistance('kitten', 'sitting')).toBe(3)
  })

  it('the closest command over the words typed, or none when nothing is near', () => {
    const cmds = ['vdisk list', 'vdisk create', 'volume list', 'csm list', 'container run', 'cluster status']
    expect(suggestCommand('vdsk list', cmds)).toBe('vdisk list')
    expect(suggestCommand('vdisk lst', cmds)).toBe('vdisk list')
    expect(suggestCommand('contaner run', cmds)).toBe('container run')
    expect(suggestCommand('vdsk', cmds)).toBe('vdisk')
    expect(suggestCommand('zzzzzz', cmds)).toBeUndefined()
    expect(suggestCommand('', cmds)).toBeUndefined()
  })
})

describe('discovery through the built CLI', () => {
  it('an unknown command is a usage error (exit 2) with a suggestion, as JSON under --json', async () => {
    const j = await tess(['vdsk', 'list', '--json'])
    expect(j.code).toBe(2)
    const body = JSON.parse(j.stdout) as { error: { code: string, message: string, hint: string } }
    expect(body.error).toEqual({ code: 'TESS_E_USAGE', message: 'unknown command "tess vdsk list"', hint: 'did you mean `tess vdisk list`? See `tess --help` for every command' })
    const t = await tess(['vdsk', 'list'])
    expect(t.code).toBe(2)
    expect(t.stdout).toBe('')
    expect(t.stderr).toContain('did you mean `tess vdisk list`?')
    expect(t.stderr).not.toContain('vdsk:list')
  })

  it('--version --json, tess help TOPIC and -h', async () => {
    const v = await tess(['--version', '--json'])
    expect(v.code).toBe(0)
    expect(JSON.parse(v.stdout)).toMatchObject({ name: 'tessera', version: expect.stringMatching(/^\d+\.\d+\.\d+/), node: process.version })
    // answered before the framework loads, in the framework's words
    const t = await tess(['--version'])
    expect(t.code).toBe(0)
    expect(t.stdout).toBe(`tessera/${JSON.parse(v.stdout).version} ${process.platform}-${process.arch} node-${process.version}\n`)
    const h = await tess(['help', 'vdisk'])
    expect(h.code).toBe(0)
    expect(h.stdout).toContain('tess vdisk COMMAND')
    const hv = await tess(['help', 'vdisk', 'create'])
    expect(hv.code).toBe(0)
    expect(hv.stdout).toContain('Create a vDisk')
    const short = await tess(['vdisk', 'list', '-h'])
    expect(short.code).toBe(0)
    expect(short.stdout).toContain('tess vdisk list')
  })
})

describe('one name for a node: --node', () => {
  it('--node is the flag; --host still works for now, with a warning', async () => {
    const n = await tess(['csm', 'create', 'x', '--cpus', '1', '--memory', '64M', '--node', 'Bad Name', '--json'])
    expect(n.code).toBe(2)
    expect(JSON.parse(n.stdout).error.message).toBe('invalid --node "Bad Name": not a node name')
    const h = await tess(['image', 'pull', 'busybox:1', '--host', 'Bad Name', '--json'])
    expect(h.code).toBe(2)
    expect(JSON.parse(h.stdout).error.message).toBe('invalid --node "Bad Name": not a node name')
    expect(h.stderr).toContain('Use "--node" instead')
  })
})

describe('tables', () => {
  it('piped: plain columns aligned with spaces, no box characters, no trailing blanks', () => {
    const out = table(['name', 'size', 'owner'], [['db1', '10 GiB', 'node1'], ['a-longer-name', '512 MiB', '-']], false)
    expect(out.split('\n')).toEqual([
      'name           size     owner',
      'db1            10 GiB   node1',
      'a-longer-name  512 MiB  -',
    ])
    // what a script does with it
    expect(out.split('\n').slice(1).map((l) => l.split(/\s+/)[1])).toEqual(['10', '512'])
  })

  it('--no-headers: the rows only', async () => {
    setHeadersOff(true)
    try {
      expect(table(['name', 'size'], [['db1', '10 GiB'], ['a-longer-name', '1 GiB']], false).split('\n')).toEqual(['db1            10 GiB', 'a-longer-name  1 GiB'])
    } finally {
      setHeadersOff(false)
    }
    // the flag through the built CLI: accepted by a list command (no contexts saved here: its own message)
    const r = await tess(['cluster', 'list', '--no-headers'])
    expect(r.code).toBe(0)
    expect(r.stderr).not.toContain('Nonexistent flag')
  })

  it('on a terminal: boxed', () => {
    expect(table(['name'], [['x']], true)).toMatch(/[┌│└]/)
  })
})
