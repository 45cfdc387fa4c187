#!/usr/bin/env node
// Data port benchmark (issue 12: data path speed). Two processes on loopback: this one runs the
// data port clients (PeerClient, as an owner does), a child runs a DataServer (as a replica's CVM
// does) whose vDisk I/O handler keeps nothing, so only the transport is measured. 1 MiB frames,
// like egWrite, with a small answer; and 1 MiB answers, like egRead. Rounds alternate between
//   tls  - everything inside mutual TLS (data port mode tls)
//   bulk - the bulk connection of mode crc: plain TCP, CRC-32C per frame
//   tcp  - a bare TCP socket that only counts bytes: the ceiling of this machine's loopback
// and the best round of each is reported, with the ratios, as a Markdown table.
// Needs `npm run build` (uses dist/). Usage: node scripts/bench/dataport.mjs [--mib 512] [--rounds 3] [--qd 8]
import { fork } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { checkArgs, opt, repoRoot } from './common.mjs'

checkArgs('usage: node scripts/bench/dataport.mjs [--mib 512] [--rounds 3] [--qd 8]', ['mib', 'rounds', 'qd'], [])

const dist = (p) => path.join(repoRoot, 'dist', p)
const { PeerClient } = await import(dist('cvm/replication/client.js'))
const { ops } = await import(dist('cvm/replication/protocol.js'))
const { crc32c, crc32cImplementation } = await import(dist('lib/crc32c.js'))

const MiB = 1024 * 1024
const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined }

if (process.argv[2] === '--serve') {
  // the replica side: a real DataServer (TLS and bulk on one port) and a bare TCP sink
  const { DataServer } = await import(dist('cvm/replication/server.js'))
  const pem = JSON.parse(process.argv[3])
  const creds = { cert: Buffer.from(pem.cert), key: Buffer.from(pem.key), ca: Buffer.from(pem.ca) }
  const readReply = Buffer.alloc(MiB, 0x5a)
  const vdisks = {
    io: async (_name, op) => (op === 'read' ? readReply : undefined),
    evacuate: async () => 0,
  }
  const server = new DataServer({ creds, store: {}, vdisks, log: quiet, mode: 'crc' })
  await server.listen(0, '127.0.0.1')
  // bare TCP: every MiB received is answered with one byte
  const sink = net.createServer((s) => {
    s.setNoDelay(true)
    let held = 0
    s.on('data', (d) => {
      held += d.length
      while (held >= MiB) {
        held -= MiB
        s.write(Buffer.alloc(1))
      }
    })
    s.on('error', () => undefined)
  })
  await new Promise((r) => sink.listen(0, '127.0.0.1', r))
  process.send({ port: server.address().port, sinkPort: sink.address().port })
  process.on('disconnect', () => process.exit(0))
} else {
  const totalMiB = Number(opt('mib', '512'))
  const rounds = Number(opt('rounds', '3'))
  const qd = Number(opt('qd', '8'))
  const { createCa, createNodeCert } = await import(dist('bootstrap/pki.js'))
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tess-bench-dp-'))
  try {
    const ca = createCa(path.join(dir, 'pki'), 'bench')
    const cert = (name) => {
      const c = createNodeCert(path.join(dir, 'pki'), ca, name, ['127.0.0.1'])
      return { cert: fs.readFileSync(c.cert), key: fs.readFileSync(c.key), ca: fs.readFileSync(ca.caCert) }
    }
    const serverCreds = cert('replica')
    const clientCreds = cert('owner')
    const child = fork(new URL(import.meta.url).pathname, ['--serve', JSON.stringify({ cert: serverCreds.cert.toString(), key: serverCreds.key.toString(), ca: serverCreds.ca.toString() })], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    const { port, sinkPort } = await new Promise((resolve, reject) => {
      child.once('message', resolve)
      child.once('exit', (code) => reject(new Error(`the server process exited (${code})`)))
    })

    const payload = Buffer.alloc(MiB, 0xa5)
    const run = async (kind, dir) => {
      if (kind === 'tcp') return bareTcp(sinkPort, totalMiB, qd, payload)
      const c = new PeerClient('replica', '127.0.0.1', port, clientCreds, { mode: kind === 'tls' ? 'tls' : 'crc', log: quiet })
      const one = () => dir === 'write'
        ? c.request(ops.vdiskIo, { name: 'bench', op: 'write', offset: 0, length: MiB }, payload)
        : c.request(ops.vdiskIo, { name: 'bench', op: 'read', offset: 0, length: MiB })
      await one() // connect (and for bulk: ticket, hello) before the clock starts
      if (kind === 'bulk' && !c.bulkUp) throw new Error('no bulk connection was made')
      const t0 = process.hrtime.bigint()
      let next = 0
      await Promise.all(Array.from({ length: qd }, async () => {
        while (next < totalMiB) {
          next++
          const f = await one()
          if (dir === 'read' && f.data.length !== MiB) throw new Error('short read')
        }
      }))
      const s = Number(process.hrtime.bigint() - t0) / 1e9
      c.close()
      return totalMiB / s
    }

    const kinds = ['tls', 'bulk', 'tcp']
    const best = {}
    for (const dirn of ['write', 'read']) {
      for (const k of kinds) best[`${k} ${dirn}`] = 0
      for (let r = 0; r < rounds; r++) {
        for (const k of kinds) {
          if (k === 'tcp' && dirn === 'read') continue
          const v = await run(k, dirn)
          best[`${k} ${dirn}`] = Math.max(best[`${k} ${dirn}`], v)
        }
      }
    }
    child.disconnect()

    // the checksum's own speed on this thread (the bulk connection computes one per MiB on each side)
    const b = Buffer.alloc(MiB, 7)
    for (let i = 0; i < 10; i++) crc32c(b)
    const t0 = process.hrtime.bigint()
    for (let i = 0; i < 200; i++) crc32c(b)
    const crcMiBs = 200 / (Number(process.hrtime.bigint() - t0) / 1e9)

    const f = (x) => x.toFixed(0)
    const rt = (a, b) => (b > 0 ? (a / b).toFixed(2) : '-')
    console.log(`data port, loopback, 2 processes, 1 MiB frames, ${qd} in flight, best of ${rounds} rounds of ${totalMiB} MiB; ${os.cpus().length} CPUs, load ${os.loadavg()[0].toFixed(1)}`)
    console.log(`crc32c implementation: ${crc32cImplementation}, ${f(crcMiBs)} MiB/s on one thread`)
    console.log('')
    console.log('| direction | tls MiB/s | bulk MiB/s | bare TCP MiB/s | bulk / tls | tls / TCP | bulk / TCP |')
    console.log('|---|---|---|---|---|---|---|')
    // the bare TCP figure is one direction; loopback is symmetric, so it is the ceiling of both
    const tcp = best['tcp write']
    for (const d of ['write', 'read']) {
      const t = best[`tls ${d}`]
      const u = best[`bulk ${d}`]
      console.log(`| ${d === 'write' ? 'to the replica (egWrite-like)' : 'from the replica (egRead-like)'} | ${f(t)} | ${f(u)} | ${d === 'write' ? f(tcp) : `(${f(tcp)})`} | ${rt(u, t)} | ${rt(t, tcp)} | ${rt(u, tcp)} |`)
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

/** MiB/s of 1 MiB writes on a bare TCP socket, `qd` MiB ahead of the answers. */
async function bareTcp(port, totalMiB, qd, payload) {
  const s = net.connect(port, '127.0.0.1')
  await new Promise((r) => s.once('connect', r))
  s.setNoDelay(true)
  const t0 = process.hrtime.bigint()
  let sent = 0
  let acked = 0
  await new Promise((done) => {
    const pump = () => {
      while (sent < totalMiB && sent - acked < qd) {
        s.write(payload)
        sent++
      }
    }
    s.on('data', (d) => {
      acked += d.length
      if (acked >= totalMiB) done()
      else pump()
    })
    pump()
  })
  const secs = Number(process.hrtime.bigint() - t0) / 1e9
  s.destroy()
  return totalMiB / secs
}
