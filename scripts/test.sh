#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need, builds, runs vitest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh test
# the tests are TypeScript too: typecheck them with the sources (strict)
npx tsc -p tsconfig.test.json
npx vitest run "$@"
# the CRC-32C module again on its pure-JS fallback (the run above used the native addon when built)
if [[ $# -eq 0 ]]; then TESS_CRC32C=js npx vitest run test/unit/crc32c.test.ts; fi
