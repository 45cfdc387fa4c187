import { describe, expect, it } from 'vitest'
// @ts-expect-error: a plain .mjs build script without type declarations
import { sortManifest } from '../../scripts/sort-manifest.mjs'

describe('sort-manifest (deterministic oclif.manifest.json)', () => {
  it('orders commands by id whatever order oclif found them in, and keeps everything else', () => {
    const a = { commands: { 'vdisk:list': { id: 'vdisk:list' }, setup: { id: 'setup' }, 'cluster:create': { id: 'cluster:create' } }, version: '1' }
    const b = { commands: { setup: { id: 'setup' }, 'cluster:create': { id: 'cluster:create' }, 'vdisk:list': { id: 'vdisk:list' } }, version: '1' }
    const sa = JSON.stringify(sortManifest(a), null, 2)
    expect(sa).toBe(JSON.stringify(sortManifest(b), null, 2))
    expect(Object.keys(sortManifest(a).commands)).toEqual(['cluster:create', 'setup', 'vdisk:list'])
    expect(sortManifest(a).version).toBe('1')
    expect(JSON.stringify(sortManifest(sortManifest(a)), null, 2)).toBe(sa)
  })
})
