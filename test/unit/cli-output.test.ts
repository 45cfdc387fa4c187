import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import YAML from 'yaml'
import { formatResult, loadFormat, names, outputFormatOf, wide } from '../../src/cli/format.js'
import { runTess } from '../helpers/cluster.js'

describe('-o/--output and --quiet: formats of a typed result', () => {
  it('reads the format from every spelling, the last one winning, and refuses unknown ones', () => {
    expect(outputFormatOf(['list'])).toBe(undefined)
    expect(outputFormatOf(['-o', 'yaml'])).toBe('yaml')
    expect(outputFormatOf(['-oname'])).toBe('name')
    expect(outputFormatOf(['--output', 'wide'])).toBe('wide')
    expect(outputFormatOf(['--output=json', '-o', 'name'])).toBe('name')
    expect(() => outputFormatOf(['-o', 'xml'])).toThrow(/invalid --output "xml"/)
    expect(() => outputFormatOf(['-o'])).toThrow(/invalid --output ""/)
  })

  it('name: one per line (name, else id); a result without names is refused', () => {
    expect(names([{ name: 'a', sizeBytes: 1 }, { id: '7' }])).toBe('a\n7')
    expect(names({ name: 'db1' })).toBe('db1')
    expect(names([])).toBe('')
    expect(() => names({ healthy: true })).toThrow(/no names/)
  })

  it('wide: every field of every item as a column, nested values as JSON; one object as key: value lines', () => {
    const text = wide([{ name: 'a', sizeBytes: 1 }, { name: 'b', owner: null, tags: ['x'] }])
    const lines = text.split('\n')
    expect(lines[0]!.split(/\s+/)).toEqual(['name', 'sizeBytes', 'owner', 'tags'])
    expect(lines[2]).toMatch(/^b\s+-\s+-\s+\["x"\]$/)
    expect(wide({ name: 'a', replicas: [1, 2] })).toBe('name:     a\nreplicas: [1,2]')
  })

  it('yaml: the same data as JSON', async () => {
    await loadFormat('yaml')
    const r = [{ name: 'a', sizeBytes: 1073741824, owner: null, endpoints: ['x', 'y'] }]
    expect(YAML.parse(formatResult(r, 'yaml'))).toEqual(r)
  })
})

describe('the built CLI with -o and -q', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-out-'))
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))
  const tess = (args: string[]) => runTess(args, { TESS_CONFIG_DIR: dir, TESS_CLUSTER: '' })

  it('prints a list as names, yaml or wide, -q as names; a bad format is a usage error (JSON under --json)', async () => {
    const { saveContext } = await import('../../src/lib/contexts.js')
    process.env.TESS_CONFIG_DIR = dir
    try {
      for (const name of ['lab', 'prod']) await saveContext({ name, endpoints: ['https://10.0.0.1:9440'], caCert: 'CA', token: 'secret-token', createdAt: new Date().toISOString() })
    } finally {
      delete process.env.TESS_CONFIG_DIR
    }
    expect((await tess(['cluster', 'list', '-o', 'name'])).stdout).toBe('lab\nprod\n')
    expect((await tess(['cluster', 'list', '-q'])).stdout).toBe('lab\nprod\n')
    const json = JSON.parse((await tess(['cluster', 'list', '--json'])).stdout)
    expect(YAML.parse((await tess(['cluster', 'list', '-o', 'yaml'])).stdout)).toEqual(json)
    expect(JSON.parse((await tess(['cluster', 'list', '-o', 'json'])).stdout)).toEqual(json)
    expect((await tess(['cluster', 'list', '--output=wide'])).stdout.split('\n')[0]).toMatch(/^name\s+current\s+endpoints/)
    // tables show relative times; JSON and yaml keep ISO 8601
    const text = (await tess(['cluster', 'list'])).stdout
    expect(text).toMatch(/^\s*lab\s.*\d+s ago$/m)
    expect(text).not.toMatch(/\d{4}-\d\d-\d\dT/)
    expect(json[0].createdAt).toMatch(/^\d{4}-\d\d-\d\dT/)
    // not a list: -q prints nothing, and the exit code says it worked
    const quiet = await tess(['cluster', 'use', 'lab', '-q'])
    expect(quiet.code).toBe(0)
    expect(quiet.stdout).toBe('')
    const bad = await tess(['cluster', 'list', '-o', 'xml'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain('invalid --output "xml"')
    const badJson = await tess(['cluster', 'list', '-o', 'xml', '--json'])
    expect(JSON.parse(badJson.stdout).error.code).toBe('TESS_E_USAGE')
    expect((await tess(['cluster', 'list', '-o', 'name'])).stdout).not.toContain('secret-token')
  })
})
