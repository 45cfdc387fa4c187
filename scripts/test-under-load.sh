#!/usr/bin/env bash
# The test suite with both cores busy: `stress-ng --cpu N` (N = the number of cores) runs beside
# vitest, and the suite is run several times in a row; each run's result is printed, and the exit
# code is 0 only when every run passed. Tests must hold on a loaded machine (no timing assertion
# without a margin that survives this).
#   bash scripts/test-under-load.sh [--runs N] [vitest args...]     (default: 3 runs of the whole suite)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3
if [[ "${1:-}" == --runs ]]; then
  [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "test-under-load: --runs needs a whole number >= 1" >&2; exit 2; }
  runs=$2
  shift 2
fi
bash scripts/install-deps.sh test
npx tsc -p tsconfig.test.json
cores=$(nproc)
stress-ng --cpu "$cores" --quiet &
stress_pid=$!
# end only the load this script started, by its pid
trap 'kill "$stress_pid" 2>/dev/null || true; wait "$stress_pid" 2>/dev/null || true' EXIT
failed=0
for ((i = 1; i <= runs; i++)); do
  echo "test-under-load: run $i of $runs with stress-ng --cpu $cores beside it" >&2
  if npx vitest run "$@"; then
    echo "test-under-load: run $i passed" >&2
  else
    echo "test-under-load: run $i FAILED" >&2
    failed=$((failed + 1))
  fi
done
echo "test-under-load: $((runs - failed)) of $runs run(s) passed" >&2
((failed == 0))
