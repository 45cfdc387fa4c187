import { test } from 'vitest'
import { execFile, spawn } from 'node:child_process'
import { NbdServer } from '../../src/cvm/nbd/server.js'
import { MemoryExportProvider } from '../helpers/memdevice.js'
function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((res) => execFile(cmd, args, { maxBuffer: 1 << 26 }, (e, so, se) => res(so + se)))
}
async function fio(uri: string, rw: string, bs: string, depth: number, jobs = 1) {
  const out = await run('fio', ['--name=b', `--rw=${rw}`, `--bs=${bs}`, `--iodepth=${depth}`, `--numjobs=${jobs}`, '--group_reporting', '--ioengine=nbd', `--uri=${uri}`, '--size=256m', '--time_based', '--runtime=3', '--output-format=json'])
  const j = JSON.parse(out.slice(out.indexOf('{'))).jobs[0]
  const r = rw.includes('read') ? j.read : j.write
  return `${rw} ${bs} qd${depth} j${jobs}: ${(r.bw / 1024).toFixed(0)} MiB/s ${r.iops.toFixed(0)} iops`
}
test('bench', async () => {
  const p = new MemoryExportProvider()
  p.add('disk', 256 * 1024 * 1024)
  const s = new NbdServer({ provider: p, log: { info() {}, warn() {}, error() {} } })
  await s.listen(0, '127.0.0.1')
  const ours = `nbd://127.0.0.1:${s.address.port}/disk`
  const kit = spawn('nbdkit', ['-f', '-p', '10899', '-i', '127.0.0.1', 'memory', '256M'], { stdio: 'ignore' })
  await new Promise((r) => setTimeout(r, 500))
  const theirs = 'nbd://127.0.0.1:10899/'
  for (const [rw, bs, d, j] of [['write', '1m', 8, 1], ['read', '1m', 8, 1], ['randwrite', '4k', 32, 1], ['randread', '4k', 32, 1], ['randread', '4k', 16, 4]] as const) {
    console.log('ours  ', await fio(ours, rw, bs, d, j))
    console.log('nbdkit', await fio(theirs, rw, bs, d, j))
  }
  kit.kill()
  await s.close()
}, 120000)
