#!/usr/bin/env bash
# Install what tess needs on this machine: Debian packages (only when missing), npm packages, the build.
#   scripts/install-deps.sh runtime   etcd + openssl (enough to run the embedded cluster)
#   scripts/install-deps.sh test      + the real NBD clients, fio, nbdkit, man (what the tests use)
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:-runtime}"

# binary -> Debian package
declare -A pkgs=([etcd]=etcd-server [etcdctl]=etcd-client [openssl]=openssl)
if [[ "$kind" == test ]]; then
  pkgs+=([qemu-img]=qemu-utils [qemu-io]=qemu-utils [qemu-nbd]=qemu-utils [nbdinfo]=libnbd-bin [nbdcopy]=libnbd-bin
         [fio]=fio [nbdkit]=nbdkit [man]=man-db [groff]=groff-base [hyperfine]=hyperfine)
fi
missing=()
for bin in "${!pkgs[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("${pkgs[$bin]}")
done
if [[ "$kind" == test ]] && ! /usr/bin/python3 -c 'import nbd' 2>/dev/null; then missing+=(python3-libnbd); fi
if ((${#missing[@]} > 0)); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "installing Debian packages: ${missing[*]}" >&2
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm packages: a clean install when the lockfile changed since the last one
stamp=node_modules/.tess-lock-stamp
if [[ ! -f "$stamp" ]] || ! cmp -s package-lock.json "$stamp"; then
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
fi
npm run --silent build
