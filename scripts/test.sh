#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need, builds, runs vitest.
# A tree that was clean before must be clean after: install, build and tests write scratch files
# to temporary directories only (checked at the end when this is a git checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
before=""
in_git=""
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  in_git=1
  before=$(git status --porcelain)
fi
bash scripts/install-deps.sh test
# the tests are TypeScript too: typecheck them with the sources (strict)
npx tsc -p tsconfig.test.json
if [[ $# -eq 0 ]]; then
  # unit tests and the simulator two files at a time (each uses its own temporary dirs and ports
  # chosen by the kernel)
  npx vitest run test/unit test/sim --fileParallelism --maxWorkers=2 --minWorkers=1
  # the integration tests in two lanes side by side, each one file at a time (vitest.config.ts):
  # the files that build clusters of test hosts (network namespaces, each its own sshd and
  # daemons: scripts/testhosts.sh), and the others (the embedded cluster on this machine, etcd,
  # runc and registries on loopback, ports chosen by the kernel). Nothing is shared between the
  # lanes (test hosts are found by namespace, embedded clusters by their own temporary dirs), and
  # each lane is the other's load: the suite must pass on a busy machine anyway.
  # TESS_TEST_LANES=1 runs them one file at a time in one lane.
  # A file that makes test hosts but no cluster of them can say `// test lane: local` to run in the
  # local lane (the shorter one): test hosts of two lanes never meet (each process its own prefix,
  # each set of hosts the first free subnet, claimed under the script's machine-wide lock).
  mapfile -t hosted < <(grep -l 'createTestHosts' test/integration/*.test.ts | xargs grep -L '^// test lane: local')
  mapfile -t local < <({ grep -L 'createTestHosts' test/integration/*.test.ts; grep -l '^// test lane: local' test/integration/*.test.ts; } | sort -u)
  if [[ ${TESS_TEST_LANES:-2} == 1 ]]; then
    npx vitest run test/integration
  else
    lane() { # label files...: one vitest run, its lines prefixed with the label
      local label=$1; shift
      set -o pipefail
      npx vitest run "$@" 2>&1 | sed -u "s/^/[$label] /"
    }
    lane hosts "${hosted[@]}" & hosts_pid=$!
    lane local "${local[@]}" & local_pid=$!
    rc=0
    wait "$hosts_pid" || rc=$?
    wait "$local_pid" || rc=$?
    if (( rc != 0 )); then echo "test.sh: an integration lane failed (see the [hosts] and [local] lines above)" >&2; exit "$rc"; fi
  fi
else
  npx vitest run "$@"
fi
# the CRC-32C module, page cache reads, the extent group files, the NBD server, the vDisk cipher and the data port's writers again without the native addons
# (the pure-JS CRC-32C, reads through the thread pool only, replies written by the event loop, XTS through node:crypto); the run above used the addons
if [[ $# -eq 0 ]]; then TESS_CRC32C=js TESS_IO=pool npx vitest run test/unit/crc32c.test.ts test/unit/nativeio.test.ts test/unit/egroup.test.ts test/unit/nbd-server.test.ts test/unit/vdisk-crypt.test.ts test/unit/tickwriter.test.ts test/unit/dataport-bulk.test.ts; fi
if [[ -n "$in_git" && -z "$before" ]]; then
  after=$(git status --porcelain)
  if [[ -n "$after" ]]; then
    echo "test.sh: the install, build or tests changed the checkout (they must leave it clean):" >&2
    echo "$after" >&2
    exit 1
  fi
fi
