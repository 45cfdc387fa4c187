import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { Etcd3 } from 'etcd3'
import { freePorts, waitFor } from './cluster.js'

/** A one-member etcd on loopback for a test, with its data under `dir`. */
export interface TestEtcd {
  url: string
  /** a new client (closed by stop()), every unary call with a 2 s deadline */
  connect(): Etcd3
  stop(): Promise<void>
}

export async function startTestEtcd(dir: string): Promise<TestEtcd> {
  const [clientPort, peerPort] = await freePorts(2)
  const url = `http://127.0.0.1:${clientPort}`
  const peerUrl = `http://127.0.0.1:${peerPort}`
  fs.mkdirSync(dir, { recursive: true })
  const proc: ChildProcess = spawn('etcd', ['--name', 't', '--data-dir', path.join(dir, 'etcd'), '--listen-client-urls', url, '--advertise-client-urls', url,
    '--listen-peer-urls', peerUrl, '--initial-advertise-peer-urls', peerUrl, '--initial-cluster', `t=${peerUrl}`], { stdio: ['ignore', 'ignore', fs.openSync(path.join(dir, 'etcd.log'), 'a')] })
  const clients: Etcd3[] = []
  const connect = (): Etcd3 => {
    const c = new Etcd3({ hosts: url, defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + 2000 }) })
    clients.push(c)
    return c
  }
  const stop = async (): Promise<void> => {
    for (const c of clients) c.close()
    if (proc.exitCode !== null || proc.signalCode !== null) return
    const exited = new Promise((r) => proc.once('exit', r))
    proc.kill('SIGTERM')
    await exited
  }
  try {
    const probe = connect()
    await waitFor('etcd', async () => (await probe.get('x').string().then(() => true, () => false)) || undefined, 20_000, 200)
  } catch (e) {
    await stop()
    throw e
  }
  return { url, connect, stop }
}
