#!/usr/bin/env bash
# The integration tests in two lanes that run side by side, each one file at a time:
#   hosts   the files that use test hosts (test/helpers/testhosts.ts): network namespaces on one
#           private /24 with fixed names, so only one such file may run at a time
#   local   every other file: embedded clusters on ports the kernel picks, in data dirs of their own
# Each lane's lines are prefixed with its name; the exit status is the first failing lane's.
# Usage: bash scripts/integration-lanes.sh   (from scripts/test.sh; root, built, deps installed)
set -euo pipefail
cd "$(dirname "$0")/.."
hosts=()
local_files=()
for f in test/integration/*.test.ts; do
  if grep -q "helpers/testhosts" "$f"; then hosts+=("$f"); else local_files+=("$f"); fi
done
lane() {
  local name=$1
  shift
  # piped, vitest prints whole lines (no live redraw), so the two lanes interleave line by line
  npx vitest run "$@" 2>&1 | sed -u "s/^/[$name] /"
}
status=0
lane hosts "${hosts[@]}" &
hosts_pid=$!
lane local "${local_files[@]}" &
local_pid=$!
wait "$hosts_pid" || status=$?
wait "$local_pid" || { rc=$?; [[ $status -ne 0 ]] || status=$rc; }
if [[ $status -ne 0 ]]; then echo "integration-lanes: a lane failed (exit $status); see the lines marked [hosts] or [local] above" >&2; fi
exit "$status"
