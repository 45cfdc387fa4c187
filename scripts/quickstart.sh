#!/usr/bin/env bash
# The main job on the embedded default: install, build, create the local single-node cluster,
# create a vDisk and show the status. Safe to run again: it reuses a running local cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh runtime
npm link --no-audit --no-fund --loglevel=error >/dev/null   # puts `tess` on PATH
bash scripts/link-man.sh                                   # `man tess`, `man tess-vdisk-create`, ...
if ! tess cluster status --cluster local >/dev/null 2>&1; then
  tess cluster create --local
fi
tess vdisk show demo --cluster local >/dev/null 2>&1 || tess vdisk create demo --size 1G --cluster local
tess vdisk list --cluster local
tess cluster status --cluster local
