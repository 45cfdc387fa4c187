#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need, builds, runs vitest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh test
# the tests are TypeScript too: typecheck them with the sources (strict)
npx tsc -p tsconfig.test.json
npx vitest run "$@"
