#!/usr/bin/env node
// CLI start benchmark (issue 17, point 8). On the embedded cluster, with hyperfine (runs
// alternating targets is hyperfine's job per command; the commands run one after another):
//   tess --version            the CLI's start with nothing to do (answered before the framework)
//   tess vdisk list           a typical read: start, context, one API call over TLS, a table
//   tess vdisk list --json    the same for scripts
//   tess vdisk list -o yaml   the same with the YAML library loaded
// and the peers in the same run: `node -e 0` (the floor of any Node program), `etcdctl get` of one
// key on the cluster's own etcd (a Go CLI that talks to a cluster over TLS, as ours does).
// `--base DIR`: the same tess commands from another built checkout too (e.g. a git worktree of an
// older commit with its dist built), against this cluster, for a before/after in one run.
// Prints a Markdown table: median, mean, min and max in ms, and ratios to etcdctl.
// Usage: node scripts/bench/cli.mjs [--runs 30] [--dir DIR] [--base DIR]   (root)
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { checkArgs, localCluster, opt, ratio, sh, tess } from './common.mjs'

checkArgs('usage: node scripts/bench/cli.mjs [--runs 30] [--dir DIR] [--base DIR]', ['runs', 'dir', 'base'], [])

const runs = Number(opt('runs', '30'))
const base = opt('dir', '/var/tmp')
const other = opt('base', '')
if (other && !fs.existsSync(path.join(other, 'bin', 'run.js'))) {
  console.error(`--base ${other}: no bin/run.js there`)
  process.exit(2)
}
if (spawnSync('hyperfine', ['--version']).status !== 0) {
  console.error('hyperfine is missing: apt-get install hyperfine (scripts/install-deps.sh test installs it)')
  process.exit(2)
}
const root = fs.mkdtempSync(path.join(base, 'tess-bench-cli-'))
let cluster
try {
  console.error(`bench dir ${root} (${runs} runs per command) on ${os.cpus().length} cores`)
  cluster = await localCluster(root, 'benchcli')
  for (const v of ['db1', 'db2', 'web']) cluster.tess(['vdisk', 'create', v, '--size', '1G'])
  const pki = path.join(root, 'data', 'pki')
  const q = (s) => `'${s.replace(/'/g, "'\\''")}'`
  const node = q(process.execPath)
  const cmds = [
    ['node -e 0', `${node} -e 0`],
    ['etcdctl get (one key, TLS)', `etcdctl --endpoints https://127.0.0.1:${cluster.ports.ec} --cacert ${q(path.join(pki, 'ca.crt'))} --cert ${q(path.join(pki, 'node.crt'))} --key ${q(path.join(pki, 'node.key'))} get /tess/cluster`],
  ]
  const tessCmds = (label, bin) => [
    [`${label}tess --version`, `${node} ${q(bin)} --version`],
    [`${label}tess vdisk list`, `${node} ${q(bin)} vdisk list`],
    [`${label}tess vdisk list --json`, `${node} ${q(bin)} vdisk list --json`],
    [`${label}tess vdisk list -o yaml`, `${node} ${q(bin)} vdisk list -o yaml`],
  ]
  cmds.push(...tessCmds('', tess))
  if (other) cmds.push(...tessCmds('base: ', path.join(other, 'bin', 'run.js')))
  const out = path.join(root, 'hyperfine.json')
  sh('hyperfine', ['--runs', String(runs), '--warmup', '3', '-N', '--export-json', out, '--style', 'none', ...cmds.flatMap(([name, cmd]) => ['-n', name, cmd])],
    { env: { ...process.env, TESS_CONFIG_DIR: path.join(root, 'config'), NO_COLOR: '1', ETCDCTL_API: '3' } })
  const results = JSON.parse(fs.readFileSync(out, 'utf8')).results
  const ms = (s) => (s * 1000).toFixed(1)
  const etcdctl = results.find((r) => r.command.startsWith('etcdctl'))
  console.log(`| command | median ms | mean ms | min ms | max ms | / etcdctl get |`)
  console.log('|---|---|---|---|---|---|')
  for (const r of results) console.log(`| ${r.command} | ${ms(r.median)} | ${ms(r.mean)} | ${ms(r.min)} | ${ms(r.max)} | ${ratio(r.median, etcdctl?.median)} |`)
} finally {
  try {
    cluster?.destroy()
  } finally {
    fs.rmSync(root, { recursive: true, force: true })
  }
}
