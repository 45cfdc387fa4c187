import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { runTess } from '../helpers/cluster.js'

/**
 * Shell completion (`tess autocomplete`, @oclif/plugin-autocomplete): the bash function it writes
 * completes topics, verbs and flags of the space-separated grammar. Its cache goes to a temp dir.
 */
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-ac-'))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))
const env = { XDG_CACHE_HOME: path.join(dir, 'cache'), TESS_CONFIG_DIR: path.join(dir, 'config'), TESS_CLUSTER: '' }

describe('shell completion', () => {
  it('bash completes topics, verbs and flags', async () => {
    const setup = await runTess(['autocomplete', 'script', 'bash'], env)
    expect(setup.code).toBe(0)
    const m = /TESS_AC_BASH_SETUP_PATH=(\S+)/.exec(setup.stdout)
    expect(m).not.toBeNull()
    expect((await runTess(['autocomplete', '--refresh-cache'], env)).code).toBe(0)
    const fn = path.join(env.XDG_CACHE_HOME, 'tess', 'autocomplete', 'functions', 'bash', 'tess.bash')
    expect(fs.existsSync(fn)).toBe(true)
    // what bash would offer at <TAB> after each line
    const script = `source ${JSON.stringify(fn)}
comp() { COMP_LINE="$1"; COMP_POINT=\${#COMP_LINE}; read -ra COMP_WORDS <<< "$1"; [[ "$1" == *" " ]] && COMP_WORDS+=(""); COMP_CWORD=$((\${#COMP_WORDS[@]}-1)); COMPREPLY=(); _tess_autocomplete; echo "\${COMPREPLY[*]}"; }
comp "tess vdisk "; comp "tess vdisk cr"; comp "tess vdisk create --s"; comp "tess vdisk list -"`
    const r = spawnSync('bash', ['-c', script], { encoding: 'utf8', env: { ...process.env, ...env } })
    expect(r.status).toBe(0)
    const [verbs, cr, size, flags] = r.stdout.split('\n')
    expect(verbs!.split(' ')).toEqual(expect.arrayContaining(['create', 'delete', 'list', 'show', 'resize']))
    expect(cr!.split(' ').sort()).toEqual(['create', 'credentials'])
    expect(size).toBe('--size')
    expect(flags!.split(' ')).toEqual(expect.arrayContaining(['--json', '--output', '--quiet', '--no-headers']))
  })
})
