#!/usr/bin/env bash
# Install what tess needs on this machine: Debian packages (only when missing), npm packages, the build.
#   scripts/install-deps.sh runtime   etcd + openssl (enough to run the embedded cluster), man
#   scripts/install-deps.sh test      + the real NBD clients, fio, nbdkit, man (what the tests use)
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:-runtime}"

# binary -> Debian package
# g++ and make build the native addons (CRC-32C; page cache reads, the socket sender and aligned memory for direct writes) during npm ci (without them the slower fallbacks are used)
# man-db: `man tess` after the quick start
declare -A pkgs=([etcd]=etcd-server [etcdctl]=etcd-client [openssl]=openssl [g++]=g++ [make]=make [man]=man-db)
if [[ "$kind" == test ]]; then
  pkgs+=([qemu-img]=qemu-utils [qemu-io]=qemu-utils [qemu-nbd]=qemu-utils [nbdinfo]=libnbd-bin [nbdcopy]=libnbd-bin
         [fio]=fio [nbdkit]=nbdkit [groff]=groff-base [hyperfine]=hyperfine
         [sshd]=openssh-server [ssh]=openssh-client [ip]=iproute2 [tmux]=tmux
         [docker-registry]=docker-registry [umoci]=umoci [skopeo]=skopeo [busybox]=busybox-static
         [runc]=runc [crun]=crun [stress-ng]=stress-ng)
fi
export PATH="$PATH:/usr/sbin:/sbin"
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
  # No daemon of these packages may start on this machine (sshd, docker-registry): the tests
  # start their own. policy-rc.d refuses service starts during the install.
  created_policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [[ -n "$created_policy" ]] && $SUDO rm -f /usr/sbin/policy-rc.d
  for bin in "${!pkgs[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || { echo "install-deps: $bin still missing after installing ${pkgs[$bin]}" >&2; exit 1; }
  done
fi

# npm packages: a clean install from the committed lockfile when it changed since the last one.
# `npm ci` never rewrites package-lock.json; if it refuses the lockfile, that is a bug to fix in
# the repository (regenerate the lockfile with `npm install` and commit it), not here.
stamp=node_modules/.tess-lock-stamp
if [[ ! -f "$stamp" ]] || ! cmp -s package-lock.json "$stamp"; then
  if ! npm ci --no-audit --no-fund --loglevel=error; then
    echo "install-deps: npm ci failed (see above); package-lock.json is left as committed" >&2
    exit 1
  fi
  cp package-lock.json "$stamp"
fi
npm run --silent build
