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
         [fio]=fio [nbdkit]=nbdkit [man]=man-db [groff]=groff-base [hyperfine]=hyperfine
         [sshd]=openssh-server [ssh]=openssh-client [ip]=iproute2 [tmux]=tmux
         [docker-registry]=docker-registry [umoci]=umoci [skopeo]=skopeo [busybox]=busybox-static
         [runc]=runc [crun]=crun)
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

# npm packages: a clean install when the lockfile changed since the last one
stamp=node_modules/.tess-lock-stamp
if [[ ! -f "$stamp" ]] || ! cmp -s package-lock.json "$stamp"; then
  cp package-lock.json /tmp/tess-lock-$$.json
  # npm 11 sometimes leaves other platforms' optional packages (rollup's) out of the lockfile and
  # then `npm ci` refuses it as out of sync; `npm install` honours the same lockfile versions.
  if ! npm ci --no-audit --no-fund --loglevel=error 2>/tmp/tess-npm-ci-$$.log; then
    echo "install-deps: npm ci refused the lockfile ($(grep -m1 -o 'Missing: [^ ]*' /tmp/tess-npm-ci-$$.log || echo see npm log)); using npm install" >&2
    npm install --no-audit --no-fund --loglevel=error
  fi
  rm -f /tmp/tess-npm-ci-$$.log
  cp /tmp/tess-lock-$$.json "$stamp" && rm -f /tmp/tess-lock-$$.json
fi
npm run --silent build
