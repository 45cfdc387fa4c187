import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  KnownHosts, appendKnownHost, fingerprintSha256, formatKnownHostLine, hashHostName, hostKeyName,
  keyTypeOfBlob, lookupKnownHost, matchHostPatterns, matchWildcard, parseKnownHosts,
} from '../../src/bootstrap/knownhosts.js'
import { TessError } from '../../src/lib/errors.js'

/**
 * known_hosts parsing, matching and hashing, checked against OpenSSH's own ssh-keygen on fixture
 * files generated here (keys by ssh-keygen, hashing by `ssh-keygen -H`, lookups by `ssh-keygen -F`).
 */

function sh(cmd: string, args: string[]): { code: number, stdout: string, stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 30_000 })
  return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' }
}

interface Key { type: string, blob: Buffer, pubLine: string, file: string }

let dir: string
const keys: Record<string, Key> = {}

function genKey(name: string, args: string[]): Key {
  const file = path.join(dir, name)
  const r = sh('ssh-keygen', ['-q', ...args, '-N', '', '-C', name, '-f', file])
  expect(r.code, r.stderr).toBe(0)
  const pubLine = fs.readFileSync(`${file}.pub`, 'utf8').trim()
  const [type, b64] = pubLine.split(' ') as [string, string]
  return { type, blob: Buffer.from(b64, 'base64'), pubLine: `${type} ${b64}`, file }
}

/** line numbers `ssh-keygen -F name -f file` reports */
function keygenFind(file: string, name: string): number[] {
  const r = sh('ssh-keygen', ['-F', name, '-f', file])
  return [...r.stdout.matchAll(/found: line (\d+)/g)].map((m) => Number(m[1]))
}

let plainFile: string
let plainText: string

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-kh-'))
  keys.ed = genKey('ed', ['-t', 'ed25519'])
  keys.ed2 = genKey('ed2', ['-t', 'ed25519'])
  keys.ec = genKey('ec', ['-t', 'ecdsa', '-b', '256'])
  keys.ec384 = genKey('ec384', ['-t', 'ecdsa', '-b', '384'])
  keys.rsa = genKey('rsa', ['-t', 'rsa', '-b', '2048'])
  const k = (n: string): string => keys[n]!.pubLine
  plainText = [
    '# fixture',
    '',
    `h1.example,10.0.0.1 ${k('ed')} comment words`,
    `[h2.example]:2222 ${k('ec')}`,
    `h3.example ${k('rsa')}`,
    `h3.example ${k('ec384')}`,
    `*.wild.example,!bad.wild.example ${k('ed2')}`,
    `@revoked r.example ${k('ed')}`,
    `r.example ${k('ed')}`,
    `@cert-authority *.ca.example ${k('ec')}`,
    'garbage-line-without-key',
    `h9.example ssh-ed25519 ${keys.ec!.blob.toString('base64')}`,
    `  \tH4.EXAMPLE ${k('ed2')}`,
    '',
  ].join('\n')
  plainFile = path.join(dir, 'known_hosts')
  fs.writeFileSync(plainFile, plainText)
})

afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true })
})

describe('parsing', () => {
  it('reads entries with markers, comments and ports, and reports bad lines', () => {
    const r = parseKnownHosts(plainText, 'fx')
    expect(r.entries.map((e) => e.line)).toEqual([3, 4, 5, 6, 7, 8, 9, 10, 13])
    const first = r.entries[0]!
    expect(first.patterns).toEqual(['h1.example', '10.0.0.1'])
    expect(first.keyType).toBe('ssh-ed25519')
    expect(first.comment).toBe('comment words')
    expect(r.entries.find((e) => e.line === 8)?.marker).toBe('revoked')
    expect(r.entries.find((e) => e.line === 10)?.marker).toBe('cert-authority')
    expect(r.invalid.map((i) => i.line)).toEqual([11, 12])
    expect(r.invalid[1]!.reason).toMatch(/does not match/)
  })

  it('reads the key type from the blob', () => {
    expect(keyTypeOfBlob(keys.ed!.blob)).toBe('ssh-ed25519')
    expect(keyTypeOfBlob(keys.ec!.blob)).toBe('ecdsa-sha2-nistp256')
    expect(keyTypeOfBlob(keys.ec384!.blob)).toBe('ecdsa-sha2-nistp384')
    expect(keyTypeOfBlob(keys.rsa!.blob)).toBe('ssh-rsa')
    expect(() => keyTypeOfBlob(Buffer.from([0, 0]))).toThrow(TessError)
  })

  it('a missing file is empty', () => {
    const kh = KnownHosts.load([path.join(dir, 'nope'), plainFile])
    expect(kh.entries.length).toBe(9)
  })
})

describe('matching', () => {
  const kh = (): KnownHosts => KnownHosts.load(plainFile)

  it('match, mismatch, unknown by name, address and port', () => {
    const e = keys.ed!
    expect(kh().lookup('h1.example', 22, e.type, e.blob)).toBe('match')
    expect(kh().lookup('10.0.0.1', 22, e.type, e.blob)).toBe('match')
    expect(kh().lookup('H1.Example', 22, e.type, e.blob)).toBe('match')
    expect(kh().lookup('h1.example', 22, keys.ed2!.type, keys.ed2!.blob)).toBe('mismatch')
    // another key type for a known host is a change too (the transport offers only known types)
    expect(kh().lookup('h1.example', 22, keys.ec!.type, keys.ec!.blob)).toBe('mismatch')
    expect(kh().lookup('h1.example', 2222, e.type, e.blob)).toBe('unknown')
    expect(kh().lookup('h2.example', 2222, keys.ec!.type, keys.ec!.blob)).toBe('match')
    expect(kh().lookup('h2.example', 22, keys.ec!.type, keys.ec!.blob)).toBe('unknown')
    expect(kh().lookup('nowhere.example', 22, e.type, e.blob)).toBe('unknown')
    expect(kh().lookup('h4.example', 22, keys.ed2!.type, keys.ed2!.blob)).toBe('match')
  })

  it('a host with several keys matches any of them', () => {
    expect(kh().lookup('h3.example', 22, keys.rsa!.type, keys.rsa!.blob)).toBe('match')
    expect(kh().lookup('h3.example', 22, keys.ec384!.type, keys.ec384!.blob)).toBe('match')
    expect(kh().knownKeys('h3.example', 22).map((k) => k.keyType)).toEqual(['ssh-rsa', 'ecdsa-sha2-nistp384'])
  })

  it('wildcards and negation', () => {
    const k = keys.ed2!
    expect(kh().lookup('a.wild.example', 22, k.type, k.blob)).toBe('match')
    expect(kh().lookup('bad.wild.example', 22, k.type, k.blob)).toBe('unknown')
    expect(kh().lookup('wild.example', 22, k.type, k.blob)).toBe('unknown')
    expect(matchWildcard('h?.ex*', 'h1.example')).toBe(true)
    expect(matchWildcard('h?.ex*', 'h12.example')).toBe(false)
    expect(matchWildcard('*', '')).toBe(true)
    expect(matchWildcard('a*b*c', 'axxbyyc')).toBe(true)
    expect(matchWildcard('a*b*c', 'axxbyy')).toBe(false)
    expect(matchHostPatterns(['*.x', '!b.x'], 'a.x')).toBe(true)
    expect(matchHostPatterns(['*.x', '!b.x'], 'b.x')).toBe(false)
    expect(matchHostPatterns(['!b.x'], 'a.x')).toBe(false)
  })

  it('refuses a revoked key and ignores @cert-authority lines', () => {
    expect(kh().lookup('r.example', 22, keys.ed!.type, keys.ed!.blob)).toBe('revoked')
    expect(kh().revokedEntry('r.example', 22, keys.ed!.blob)?.line).toBe(8)
    expect(kh().lookup('x.ca.example', 22, keys.ec!.type, keys.ec!.blob)).toBe('unknown')
  })

  it('finds the same lines as ssh-keygen -F', () => {
    const entries = kh().entries
    for (const [host, port] of [['h1.example', 22], ['10.0.0.1', 22], ['h2.example', 2222], ['h3.example', 22], ['a.wild.example', 22], ['bad.wild.example', 22]] as const) {
      const ours = entries.filter((e) => e.marker === undefined && kh().knownKeys(host, port).some((k) => k.line === e.line)).map((e) => e.line)
      expect(ours, `${host}:${port}`).toEqual(keygenFind(plainFile, hostKeyName(host, port)))
    }
  })
})

describe('hashed entries', () => {
  it('reads a file hashed by ssh-keygen -H with the same results', () => {
    const hashedFile = path.join(dir, 'known_hosts.hashed')
    // ssh-keygen -H refuses files with bad lines: leave those out (same line count, blanked)
    fs.writeFileSync(hashedFile, plainText.split('\n').map((l) => (l.startsWith('garbage') || l.startsWith('h9.') ? '' : l)).join('\n'))
    const r = sh('ssh-keygen', ['-H', '-f', hashedFile])
    expect(r.code, r.stderr).toBe(0)
    const hashed = KnownHosts.load(hashedFile)
    expect(hashed.entries.filter((e) => e.hashed).length).toBeGreaterThanOrEqual(5)
    const plain = KnownHosts.load(plainFile)
    const cases: Array<[string, number, string]> = [
      ['h1.example', 22, 'ed'], ['10.0.0.1', 22, 'ed'], ['h1.example', 22, 'ed2'], ['h2.example', 2222, 'ec'], ['h2.example', 22, 'ec'],
      ['h3.example', 22, 'rsa'], ['h3.example', 22, 'ed'], ['h4.example', 22, 'ed2'], ['r.example', 22, 'ed'], ['a.wild.example', 22, 'ed2'], ['zz', 22, 'ed'],
    ]
    for (const [host, port, k] of cases) {
      const key = keys[k]!
      expect(hashed.lookup(host, port, key.type, key.blob), `${host}:${port} ${k}`).toBe(plain.lookup(host, port, key.type, key.blob))
    }
  })

  it('computes the same HMAC-SHA1 as ssh-keygen for its salt', () => {
    const f = path.join(dir, 'one')
    fs.writeFileSync(f, `[h2.example]:2222 ${keys.ec!.pubLine}\nh1.example ${keys.ed!.pubLine}\n`)
    expect(sh('ssh-keygen', ['-H', '-f', f]).code).toBe(0)
    const lines = fs.readFileSync(f, 'utf8').trim().split('\n')
    for (const [i, name] of [[0, '[h2.example]:2222'], [1, 'h1.example']] as const) {
      const field = lines[i]!.split(' ')[0]!
      const salt = Buffer.from(field.split('|')[2]!, 'base64')
      expect(hashHostName(name, salt)).toBe(field)
    }
  })

  it('entries we hash are found by ssh-keygen -F', async () => {
    const f = path.join(dir, 'ours-hashed')
    expect(await appendKnownHost(f, 'h5.example', 22, keys.ed!.blob, { hash: true })).toBe(true)
    expect(await appendKnownHost(f, '10.1.2.3', 2200, keys.rsa!.blob, { hash: true })).toBe(true)
    expect(fs.readFileSync(f, 'utf8')).toMatch(/^\|1\|/)
    expect(keygenFind(f, 'h5.example')).toEqual([1])
    expect(keygenFind(f, '[10.1.2.3]:2200')).toEqual([2])
    expect(keygenFind(f, '10.1.2.3')).toEqual([])
    expect(lookupKnownHost(f, '10.1.2.3', 2200, 'ssh-rsa', keys.rsa!.blob)).toBe('match')
  })
})

describe('fingerprints', () => {
  it('match ssh-keygen -l', () => {
    for (const k of Object.values(keys)) {
      const r = sh('ssh-keygen', ['-l', '-E', 'sha256', '-f', `${k.file}.pub`])
      expect(r.code).toBe(0)
      expect(r.stdout.split(' ')[1]).toBe(fingerprintSha256(k.blob))
    }
  })
})

describe('appending', () => {
  it('creates the file 0600 (and its directory), skips duplicates, refuses a changed key', async () => {
    const f = path.join(dir, 'sub', 'dir', 'known_hosts')
    expect(await appendKnownHost(f, 'h1.example', 22, keys.ed!.blob)).toBe(true)
    expect(fs.statSync(f).mode & 0o777).toBe(0o600)
    expect(await appendKnownHost(f, 'h1.example', 22, keys.ed!.blob)).toBe(false)
    expect(await appendKnownHost(f, 'h1.example', 2222, keys.ed2!.blob)).toBe(true)
    await expect(appendKnownHost(f, 'h1.example', 22, keys.ed2!.blob)).rejects.toMatchObject({ code: 'TESS_E_AUTH' })
    expect(fs.readFileSync(f, 'utf8')).toBe(`h1.example ${keys.ed!.pubLine}\n[h1.example]:2222 ${keys.ed2!.pubLine}\n`)
    expect(keygenFind(f, '[h1.example]:2222')).toEqual([2])
    expect(fs.readdirSync(path.dirname(f))).toEqual(['known_hosts']) // no temp or lock files left
  })

  it('keeps existing content without a final newline and fixes a loose mode', async () => {
    const f = path.join(dir, 'loose')
    fs.writeFileSync(f, `h1.example ${keys.ed!.pubLine}`, { mode: 0o644 })
    fs.chmodSync(f, 0o644)
    await appendKnownHost(f, 'h2.example', 22, keys.ec!.blob, { comment: 'added by tess' })
    expect(fs.readFileSync(f, 'utf8')).toBe(`h1.example ${keys.ed!.pubLine}\nh2.example ${keys.ec!.pubLine} added by tess\n`)
    expect(fs.statSync(f).mode & 0o777).toBe(0o600)
  })

  it('loses no entry when many appends race', async () => {
    const f = path.join(dir, 'race')
    const n = 25
    const rs = await Promise.all(Array.from({ length: n }, (_, i) => appendKnownHost(f, `n${i}.example`, 22, (i % 2 ? keys.ed : keys.ec)!.blob)))
    expect(rs.every((x) => x)).toBe(true)
    const kh = KnownHosts.load(f)
    expect(kh.entries.length).toBe(n)
    for (let i = 0; i < n; i++) {
      const k = (i % 2 ? keys.ed : keys.ec)!
      expect(kh.lookup(`n${i}.example`, 22, k.type, k.blob)).toBe('match')
    }
  })

  it('formats lines like OpenSSH and rejects non-names', () => {
    expect(formatKnownHostLine('::1', 2222, keys.ed!.blob)).toBe(`[::1]:2222 ${keys.ed!.pubLine}`)
    expect(formatKnownHostLine('Host.Example', 22, keys.ed!.blob)).toBe(`host.example ${keys.ed!.pubLine}`)
    expect(() => formatKnownHostLine('a,b', 22, keys.ed!.blob)).toThrow(TessError)
  })
})
