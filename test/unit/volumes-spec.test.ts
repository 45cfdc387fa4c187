import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { parseVolumeFlag } from '../../src/cli/csm-input.js'
import { checkVolumeTarget, parseVolumeMounts, parseVolumeSpecs } from '../../src/lib/container-spec.js'
import { volumeNbdUri } from '../../src/csm/volumes/attach.js'

const nbd = { host: '127.0.0.1', port: 10809, export: 'vol-a' }

describe('volume specs', () => {
  it('parses --volume NAME:/path[:ro|:rw] and refuses the rest with a hint', () => {
    expect(parseVolumeFlag('data:/var/lib/data')).toEqual({ name: 'data', target: '/var/lib/data', readOnly: false })
    expect(parseVolumeFlag('data:/d:ro')).toEqual({ name: 'data', target: '/d', readOnly: true })
    expect(parseVolumeFlag('data:/d:rw')).toEqual({ name: 'data', target: '/d', readOnly: false })
    for (const bad of ['data', ':/d', 'Data:/d', 'data:d', 'data:/d:rx', 'data:/a:b:ro']) expect(() => parseVolumeFlag(bad), bad).toThrow(/--volume/)
  })

  it('targets are absolute, normalised, and not over what the runtime provides', () => {
    expect(checkVolumeTarget('/data')).toBe('/data')
    expect(checkVolumeTarget('/srv/db/')).toBe('/srv/db')
    for (const bad of ['data', '/a/../b', '/a//b', '/', '/proc', '/proc/sys', '/dev/shm', '/sys', '/etc/hosts', '/a\0b', 5]) {
      expect(() => checkVolumeTarget(bad), String(bad)).toThrow()
    }
    expect(checkVolumeTarget('/devices')).toBe('/devices')
  })

  it('a container names each volume once, with targets that do not overlap', () => {
    expect(parseVolumeMounts([{ name: 'a', target: '/a', readOnly: false }, { name: 'b', target: '/b', readOnly: true }], 'c')).toHaveLength(2)
    expect(() => parseVolumeMounts([{ name: 'a', target: '/a', readOnly: false }, { name: 'a', target: '/b', readOnly: true }], 'c')).toThrow(/twice/)
    expect(() => parseVolumeMounts([{ name: 'a', target: '/a', readOnly: false }, { name: 'b', target: '/a/b', readOnly: true }], 'c')).toThrow(/overlap/)
    expect(() => parseVolumeMounts(Array.from({ length: 17 }, (_, i) => ({ name: `v${i}`, target: `/v${i}`, readOnly: false })), 'c')).toThrow(/at most/)
  })

  it('the CSM checks what the CVM sends it as if it came from anyone', () => {
    expect(parseVolumeSpecs([{ name: 'a', target: '/a', readOnly: false, nbd, formatted: true }], 'c')[0]).toEqual({ name: 'a', target: '/a', readOnly: false, nbd, formatted: true })
    expect(() => parseVolumeSpecs([{ name: 'a', target: '/a', readOnly: false, nbd: { ...nbd, port: 0 }, formatted: false }], 'c')).toThrow(/"nbd": field "port" = 0 is out of range/)
    expect(() => parseVolumeSpecs('x' as never, 'c')).toThrow(/array/)
    expect(() => parseVolumeSpecs([null as never], 'c')).toThrow(/object/)
  })
})

describe('the NBD URI a volume attach connects to', () => {
  const v = { name: 'data', target: '/data', readOnly: false, formatted: true, nbd: { host: '10.0.0.1', port: 10809, export: 'vol-data' } }
  it('is the node CVM\'s Unix socket when it exists, else its TCP listener', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-volnbd-'))
    try {
      const sock = path.join(dir, 'nbd.sock')
      expect(volumeNbdUri(v, sock)).toBe('nbd://10.0.0.1:10809/vol-data')
      expect(volumeNbdUri(v, undefined)).toBe('nbd://10.0.0.1:10809/vol-data')
      fs.writeFileSync(sock, '')
      expect(volumeNbdUri(v, sock)).toBe(`nbd+unix:///vol-data?socket=${sock}`)
      expect(volumeNbdUri({ ...v, nbd: { ...v.nbd, host: '::1' } }, undefined)).toBe('nbd://[::1]:10809/vol-data')
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})
