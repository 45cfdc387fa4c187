import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import zlib from 'node:zlib'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { TessError } from '../../src/lib/errors.js'
import { writeTar } from '../../src/lib/images/tar.js'
import { LayerStore, chainId } from '../../src/lib/images/unpack.js'
import { exec, file, makeLayer, sha256, type TestLayer } from '../helpers/registry.js'

const isRoot = process.getuid?.() === 0
const hasOverlay = fs.existsSync('/proc/filesystems') && fs.readFileSync('/proc/filesystems', 'utf8').includes('overlay')

describe('layer unpacking', () => {
  let dir: string
  let layers: LayerStore
  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-unpack-'))
    layers = await new LayerStore(path.join(dir, 'layers')).init()
  })
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }))

  const blobFile = (l: TestLayer) => {
    const p = path.join(dir, l.digest.slice(7))
    fs.writeFileSync(p, l.blob)
    return p
  }

  async function refused(l: TestLayer, re: RegExp): Promise<TessError> {
    let err: unknown
    try {
      await layers.unpack(blobFile(l), l.diffId, { blobDigest: l.digest })
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(TessError)
    const e = err as TessError
    expect(e.code).toBe('TESS_E_INVALID')
    expect(e.message).toMatch(re)
    expect(e.message).toContain(l.digest)
    // nothing unpacked, nothing left half done
    expect(await layers.has(l.diffId)).toBe(false)
    expect(fs.existsSync(path.join(dir, 'layers/sha256', l.diffId.slice(7)))).toBe(false)
    expect(fs.readdirSync(path.join(dir, 'layers/tmp'))).toEqual([])
    return e
  }

  it.skipIf(!isRoot)('unpacks a gzip layer once, keeping modes, owners, mtimes, symlinks and hard links', async () => {
    const l = makeLayer([
      { name: 'bin/', type: 'dir', mode: 0o755, mtime: 1_600_000_000 },
      file('bin/tool', '#!/bin/sh\necho hi\n', { mode: 0o4755, uid: 1000, gid: 1001, mtime: 1_650_000_000 }),
      { name: 'bin/alias', type: 'symlink', linkname: 'tool' },
      { name: 'bin/abs', type: 'symlink', linkname: '/bin/tool' },
      { name: 'bin/hard', type: 'hardlink', linkname: 'bin/tool' },
      { name: 'srv/', type: 'dir', mode: 0o1777, uid: 33, gid: 33 },
      { name: 'srv/fifo', type: 'fifo', mode: 0o600 },
    ])
    const u = await layers.unpack(blobFile(l), l.diffId, { blobDigest: l.digest })
    expect(u.cached).toBe(false)
    expect(u.path).toBe(layers.path(l.diffId))
    const st = fs.statSync(path.join(u.path, 'bin/tool'))
    expect(st.mode & 0o7777).toBe(0o4755)
    expect([st.uid, st.gid]).toEqual([1000, 1001])
    expect(Math.floor(st.mtimeMs / 1000)).toBe(1_650_000_000)
    expect(fs.readlinkSync(path.join(u.path, 'bin/alias'))).toBe('tool')
    expect(fs.readlinkSync(path.join(u.path, 'bin/abs'))).toBe('/bin/tool')
    expect(fs.statSync(path.join(u.path, 'bin/hard')).ino).toBe(st.ino)
    const srv = fs.statSync(path.join(u.path, 'srv'))
    expect(srv.mode & 0o7777).toBe(0o1777)
    expect(srv.uid).toBe(33)
    expect(fs.statSync(path.join(u.path, 'srv/fifo')).isFIFO()).toBe(true)
    expect(Math.floor(fs.statSync(path.join(u.path, 'bin')).mtimeMs / 1000)).toBe(1_600_000_000)
    // the marker records the diff digest; the tree holds no marker of ours
    const marker = JSON.parse(fs.readFileSync(path.join(dir, 'layers/sha256', l.diffId.slice(7), 'layer.json'), 'utf8'))
    expect(marker.diffId).toBe(l.diffId)
    expect(marker.blobDigest).toBe(l.digest)
    expect(fs.readdirSync(u.path).sort()).toEqual(['bin', 'srv'])
    // once: the second call does nothing
    const again = await layers.unpack(blobFile(l), l.diffId)
    expect(again.cached).toBe(true)
    expect((await layers.list()).map((x) => x.diffId)).toEqual([l.diffId])
  })

  it.skipIf(!isRoot)('unpacks uncompressed layers', async () => {
    const l = makeLayer([file('a.txt', 'plain')], { gzip: false })
    const u = await layers.unpack(blobFile(l), l.diffId)
    expect(fs.readFileSync(path.join(u.path, 'a.txt'), 'utf8')).toBe('plain')
  })

  it('checks the uncompressed content against the diff_id', async () => {
    const l = makeLayer([file('a', 'x')])
    const wrong = sha256(Buffer.from('something else'))
    let err: unknown
    try {
      await layers.unpack(blobFile(l), wrong, { blobDigest: l.digest })
    } catch (e) {
      err = e
    }
    expect((err as TessError).code).toBe('TESS_E_INVALID')
    expect((err as TessError).message).toContain(`expected ${wrong}`)
    expect((err as TessError).message).toContain(`actual ${l.diffId}`)
    expect(await layers.has(wrong)).toBe(false)
  })

  describe('refuses what could escape the layer directory', () => {
    const outside = () => path.join(os.tmpdir(), `tess-escape-${process.pid}`)
    afterEach(() => fs.rmSync(outside(), { recursive: true, force: true }))

    it('".." in a name', async () => {
      await refused(makeLayer([file('../escape', 'x')]), /"\.\.\/escape" contains "\.\."/)
      await refused(makeLayer([file('a/../../escape', 'x')]), /contains "\.\."/)
    })

    it('absolute names', async () => {
      await refused(makeLayer([file(`${outside()}/abs`, 'x')]), /is an absolute path/)
      expect(fs.existsSync(outside())).toBe(false)
    })

    it('writing through a symlink of the same layer', async () => {
      await refused(makeLayer([
        { name: 'link', type: 'symlink', linkname: os.tmpdir() },
        file(`link/tess-escape-${process.pid}`, 'x'),
      ]), /under the symlink "link"/)
      expect(fs.existsSync(outside())).toBe(false)
    })

    it('a directory replaced by a symlink, then written through', async () => {
      await refused(makeLayer([
        { name: 'd/', type: 'dir' },
        { name: 'd', type: 'symlink', linkname: os.tmpdir() },
        file(`d/tess-escape-${process.pid}`, 'x'),
      ]), /replaces the directory "d"/)
      expect(fs.existsSync(outside())).toBe(false)
    })

    it('relative symlinks that climb above the layer root', async () => {
      await refused(makeLayer([{ name: 'a/b', type: 'symlink', linkname: '../../etc/shadow' }]), /leaves the layer directory/)
    })

    it('hard links to outside or to missing entries', async () => {
      await refused(makeLayer([{ name: 'h', type: 'hardlink', linkname: '../../etc/passwd' }]), /contains "\.\."/)
      await refused(makeLayer([{ name: 'h', type: 'hardlink', linkname: 'etc/passwd' }]), /not an earlier entry/)
    })

    it('device nodes', async () => {
      await refused(makeLayer([{ name: 'dev/sda', type: 'block', devmajor: 8, devminor: 0 }]), /block device \(8:0\)/)
      await refused(makeLayer([{ name: 'dev/null', type: 'char', devmajor: 1, devminor: 3 }]), /character device/)
      // even 0/0: whiteouts come as .wh. files in OCI layers, never as devices
      await refused(makeLayer([{ name: 'x', type: 'char', devmajor: 0, devminor: 0 }]), /character device/)
    })

    it('whiteouts of "." or ".."', async () => {
      await refused(makeLayer([file('a/.wh...', '')]), /whiteout of its own directory/)
    })
  })

  describe('one parser: what GNU tar extracts is what our reader checked', () => {
    /** a raw ustar header block with any type flag (for crafted archives) */
    function rawHeader(name: string, flag: string, size: number): Buffer {
      const h = Buffer.alloc(512)
      h.write(name, 0, 100, 'utf8')
      h.write('0000644\0', 100, 8, 'latin1')
      h.write('0000000\0', 108, 8, 'latin1')
      h.write('0000000\0', 116, 8, 'latin1')
      h.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 12, 'latin1')
      h.write('14000000000\0', 136, 12, 'latin1')
      h.write(flag, 156, 1, 'latin1')
      h.write('ustar\0', 257, 6, 'latin1')
      h.write('00', 263, 2, 'latin1')
      h.fill(0x20, 148, 156)
      let sum = 0
      for (const b of h) sum += b
      h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1')
      return h
    }
    const padded = (b: Buffer) => Buffer.concat([b, Buffer.alloc((512 - (b.length % 512)) % 512)])
    const paxData = (k: string, v: string) => {
      const body = ` ${k}=${v}\n`
      let n = body.length + 1
      while (String(n).length + body.length !== n) n = String(n).length + body.length
      return Buffer.from(`${n}${body}`)
    }
    /** a layer from raw tar bytes */
    const rawLayer = (tar: Buffer): TestLayer => {
      const blob = zlib.gzipSync(tar)
      return { blob, digest: sha256(blob), diffId: sha256(tar), mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' }
    }
    const walk = (d: string): string[] => fs.readdirSync(d, { withFileTypes: true }).flatMap((e) => e.isDirectory() ? [e.name, ...walk(path.join(d, e.name)).map((x) => `${e.name}/${x}`)] : [e.name])

    it('refuses a regular file whose name ends in "/" (GNU tar would make a directory of it)', async () => {
      await refused(makeLayer([file('evil/', 'not a directory')]), /is a file whose name ends in "\/"/)
    })

    it.skipIf(!isRoot)('a pax global header does not change what is extracted', async () => {
      const g = paxData('path', 'etc/shadow')
      const data = Buffer.from('harmless\n')
      const tar = Buffer.concat([rawHeader('pax_global_header', 'g', g.length), padded(g),
        rawHeader('a.txt', '0', data.length), padded(data), Buffer.alloc(1024)])
      const l = rawLayer(tar)
      const u = await layers.unpack(blobFile(l), l.diffId)
      expect(walk(u.path)).toEqual(['a.txt'])
      expect(fs.readFileSync(path.join(u.path, 'a.txt'), 'utf8')).toBe('harmless\n')
    })

    it.skipIf(!isRoot)('no whiteout marker is ever left in the tree, and no device the reader did not see', async () => {
      const l = makeLayer([
        { name: 'a/', type: 'dir' },
        file('a/.wh.b', ''),
        file('a/b', 'b'),
        file('c/.wh.d', ''), // a directory named only through a marker
      ])
      const u = await layers.unpack(blobFile(l), l.diffId)
      const names = walk(u.path)
      expect(names.filter((n) => n.split('/').pop()!.startsWith('.wh.'))).toEqual([])
      expect(names.sort()).toEqual(['a', 'a/b', 'c', 'c/d'])
      expect(fs.lstatSync(path.join(u.path, 'c/d')).isCharacterDevice()).toBe(true) // the whiteout we made
      expect(fs.lstatSync(path.join(u.path, 'a/b')).isFile()).toBe(true)
    })

    it.skipIf(!isRoot)('accepts what real tools write: an entry named "/" and an archive without its end blocks', async () => {
      const withRoot = makeLayer([{ name: '/', type: 'dir', mode: 0o755 }, file('etc/motd', 'hi')])
      const u = await layers.unpack(blobFile(withRoot), withRoot.diffId)
      expect(fs.readFileSync(path.join(u.path, 'etc/motd'), 'utf8')).toBe('hi')
      const full = writeTar([file('x', 'no end blocks'), file('y', 'y')])
      const noEnd = rawLayer(full.subarray(0, full.length - 1024))
      const v = await layers.unpack(blobFile(noEnd), noEnd.diffId)
      expect(fs.readFileSync(path.join(v.path, 'x'), 'utf8')).toBe('no end blocks')
      // but an archive cut inside an entry is refused
      const cut = rawLayer(full.subarray(0, 512 + 512 + 512 + 100))
      await refused(cut, /ends in the middle of an entry/)
    })

    it.skipIf(!isRoot)('keeps user.* and security.capability xattrs, drops trusted.* ones', async () => {
      const cap = Buffer.from('01000002200000000000000000000000000000000', 'hex')
      const l = makeLayer([file('bin/ping', 'x', { xattrs: { 'user.note': 'kept', 'security.capability': cap, 'trusted.overlay.opaque': 'y' } })])
      const u = await layers.unpack(blobFile(l), l.diffId)
      const f = path.join(u.path, 'bin/ping')
      // the xattr's value as hex, or "none" (python3's os.getxattr; no attr package needed)
      const get = (n: string) => spawnSync('python3', ['-c', 'import os,sys\ntry: print(os.getxattr(sys.argv[1], sys.argv[2]).hex())\nexcept OSError: print("none")', f, n], { encoding: 'utf8' }).stdout.trim()
      expect(get('user.note')).toBe(Buffer.from('kept').toString('hex'))
      expect(get('security.capability')).toBe(cap.toString('hex'))
      expect(get('trusted.overlay.opaque')).toBe('none')
    })
  })

  describe('bounds', () => {
    it('stops a decompression bomb early: too many bytes, or too high a ratio', async () => {
      const bomb = makeLayer([{ ...file('zeros', ''), data: Buffer.alloc(16 * 1024 * 1024) }])
      layers = await new LayerStore(path.join(dir, 'layers'), { limits: { ratioCheckAfterBytes: 1024 * 1024, compressionRatioMax: 50 } }).init()
      await refused(bomb, /more than 50 times/)
      layers = await new LayerStore(path.join(dir, 'layers'), { limits: { uncompressedMaxBytes: 4 * 1024 * 1024 } }).init()
      await refused(bomb, /more than 4194304 bytes uncompressed/)
    })

    it('checks free space before it writes anything', async () => {
      const l = makeLayer([{ ...file('big', ''), data: Buffer.alloc(1024 * 1024, 7) }])
      layers = await new LayerStore(path.join(dir, 'layers'), { freeBytes: async () => 1000 }).init()
      let err: unknown
      try {
        await layers.unpack(blobFile(l), l.diffId)
      } catch (e) {
        err = e
      }
      expect((err as TessError).code).toBe('TESS_E_CAPACITY')
      expect((err as TessError).message).toMatch(/1048576 bytes and the layer store has 1000 bytes free/)
      expect(fs.readdirSync(path.join(dir, 'layers/tmp'))).toEqual([])
      expect(await layers.has(l.diffId)).toBe(false)
    })
  })

  it.skipIf(!isRoot)('reads ustar, GNU and pax archives written by GNU tar (long names, long link targets)', async () => {
    const src = path.join(dir, 'src')
    // 60 + 60 + 90 characters: over ustar's 100-character name, within its 155-character prefix
    const deep = path.join(src, 'a'.repeat(60), 'b'.repeat(60))
    fs.mkdirSync(deep, { recursive: true })
    fs.writeFileSync(path.join(deep, 'f'.repeat(90)), 'deep')
    fs.symlinkSync(`${'x'.repeat(20)}/../${'y'.repeat(120)}`, path.join(src, 'longlink'))
    fs.writeFileSync(path.join(src, 'héllo wörld'), 'utf8 name')
    for (const format of ['ustar', 'gnu', 'pax']) {
      const tarFile = path.join(dir, `${format}.tar`)
      // ustar cannot hold a link target over 100 characters
      const r = await exec('tar', ['--create', `--format=${format}`, '--file', tarFile, ...(format === 'ustar' ? ['--exclude=./longlink'] : []), '-C', src, '.'])
      expect(r.stderr).toBe('')
      expect(r.code).toBe(0)
      const bytes = fs.readFileSync(tarFile)
      const u = await layers.unpack(tarFile, sha256(bytes))
      expect(fs.readFileSync(path.join(u.path, path.relative(src, deep), 'f'.repeat(90)), 'utf8')).toBe('deep')
      expect(fs.readFileSync(path.join(u.path, 'héllo wörld'), 'utf8')).toBe('utf8 name')
      if (format !== 'ustar') expect(fs.readlinkSync(path.join(u.path, 'longlink'))).toBe(`${'x'.repeat(20)}/../${'y'.repeat(120)}`)
    }
  })

  it('refuses zstd and garbage blobs', async () => {
    const zstd = Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.alloc(100)])
    const p = path.join(dir, 'zstd')
    fs.writeFileSync(p, zstd)
    await expect(layers.unpack(p, sha256(zstd))).rejects.toThrow(/zstd-compressed/)
    const g = path.join(dir, 'garbage')
    fs.writeFileSync(g, Buffer.alloc(1024, 7))
    await expect(layers.unpack(g, sha256(Buffer.alloc(1024, 7)))).rejects.toThrow(/malformed tar/)
  })

  it.skipIf(!isRoot)('turns OCI whiteouts into overlay whiteouts (char 0/0) and opaque dirs (xattr)', async () => {
    const l = makeLayer([
      { name: 'd/', type: 'dir' },
      file('d/.wh.old', ''),
      file('d/.wh.samelayer', ''),
      file('d/samelayer', 'kept: the whiteout only hides lower layers'),
      { name: 'o/', type: 'dir', mtime: 1_500_000_000 },
      file('o/.wh..wh..opq', ''),
      file('o/new', 'new'),
      file('.wh..wh.plnk', ''),
    ])
    const u = await layers.unpack(blobFile(l), l.diffId)
    const wh = fs.lstatSync(path.join(u.path, 'd/old'))
    expect(wh.isCharacterDevice()).toBe(true)
    expect(wh.rdev).toBe(0)
    expect(fs.readFileSync(path.join(u.path, 'd/samelayer'), 'utf8')).toMatch(/^kept/)
    expect(fs.readdirSync(path.join(u.path, 'd')).sort()).toEqual(['old', 'samelayer'])
    expect(fs.readdirSync(path.join(u.path, 'o'))).toEqual(['new'])
    expect(fs.readdirSync(u.path).sort()).toEqual(['d', 'o'])
    expect(Math.floor(fs.statSync(path.join(u.path, 'o')).mtimeMs / 1000)).toBe(1_500_000_000)
    const marker = (await layers.get(l.diffId))!
    expect([marker.whiteouts, marker.opaqueDirs]).toEqual([2, 1])
  })

  it.skipIf(!isRoot || !hasOverlay)('whiteouts and opaque dirs hide lower layers in a real overlay mount', async () => {
    const lower = makeLayer([
      { name: 'd/', type: 'dir' }, file('d/old', 'old'), file('d/keep', 'keep'),
      { name: 'o/', type: 'dir' }, file('o/gone1', '1'), { name: 'o/sub/', type: 'dir' }, file('o/sub/gone2', '2'),
    ])
    const upper = makeLayer([
      file('d/.wh.old', ''),
      { name: 'o/', type: 'dir' }, file('o/.wh..wh..opq', ''), file('o/new', 'new'),
    ])
    const l1 = await layers.unpack(blobFile(lower), lower.diffId)
    const l2 = await layers.unpack(blobFile(upper), upper.diffId)
    const mnt = path.join(dir, 'mnt')
    fs.mkdirSync(mnt)
    const m = await exec('mount', ['-t', 'overlay', 'overlay', '-o', `ro,lowerdir=${l2.path}:${l1.path}`, mnt])
    expect(m.stderr).toBe('')
    expect(m.code).toBe(0)
    try {
      expect(fs.readdirSync(path.join(mnt, 'd')).sort()).toEqual(['keep'])
      expect(fs.readdirSync(path.join(mnt, 'o'))).toEqual(['new'])
    } finally {
      expect((await exec('umount', [mnt])).code).toBe(0)
    }
    expect(chainId([lower.diffId])).toBe(lower.diffId)
    expect(chainId([lower.diffId, upper.diffId])).toBe(sha256(Buffer.from(`${lower.diffId} ${upper.diffId}`)))
  })

  it.skipIf(!isRoot)('never leaves a half layer: init() clears tmp/, remove() renames first', async () => {
    const l = makeLayer([file('a', 'x')])
    fs.mkdirSync(path.join(dir, 'layers/tmp/unpack-crashed/fs'), { recursive: true })
    layers = await new LayerStore(path.join(dir, 'layers')).init()
    expect(fs.readdirSync(path.join(dir, 'layers/tmp'))).toEqual([])
    await layers.unpack(blobFile(l), l.diffId)
    expect(await layers.remove(l.diffId)).toBe(true)
    expect(await layers.has(l.diffId)).toBe(false)
    expect(await layers.remove(l.diffId)).toBe(false)
    expect(fs.readdirSync(path.join(dir, 'layers/tmp'))).toEqual([])
  })
})
