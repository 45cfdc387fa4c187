#!/usr/bin/env bash
# Test hosts for multi-node tests: N "hosts" on this machine, each a network namespace on a private
# bridge, with a private mount namespace (own /run, /var/lib/tess, /etc/tess, /etc/hosts), its own
# hostname (UTS namespace) and its own sshd. They share /usr and the PID space with the machine.
# Usage and design: docs/testhosts.md. Run as root.
#
#   testhosts.sh up N [--prefix P]        create hosts P1..PN (default prefix th)
#   testhosts.sh down [--prefix P|--all]  remove them completely (idempotent, works after a partial up)
#   testhosts.sh list [--prefix P] [--json]
#   testhosts.sh exec HOST CMD...         run CMD in the host's network, mount and UTS namespaces
#   testhosts.sh ssh HOST [CMD...]        ssh root@HOST with the harness key and pinned known_hosts
#   testhosts.sh pids HOST                pids of every process in the host (namespace membership)
#   testhosts.sh kill HOST                node loss: kill every process in the host, take its link down
#   testhosts.sh revive HOST              link up again and restart the host's sshd
#   testhosts.sh partition HOST           network partition: take its link down, its processes go on
#   testhosts.sh heal HOST                end the partition: link up
#
# Environment: TESS_TESTHOSTS_SUBNET (a private a.b.c.0/24; default: the first free 10.77.K.0/24),
#              TESS_TESTHOSTS_DIR (state, default /tmp/tess-testhosts), TESS_TESTHOSTS_KEEP=1 (keep
#              the partial state of a failed `up` for debugging).
set -euo pipefail
shopt -s nullglob
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"
export LC_ALL=C

readonly PROG=testhosts.sh
readonly BASE=${TESS_TESTHOSTS_DIR:-/tmp/tess-testhosts}
readonly LOCK_FILE=/run/lock/tess-testhosts.lock
readonly DEFAULT_PREFIX=th
readonly HOSTS_MAX=100                 # addresses .11 .. .110
readonly HOST_ADDRESS_OFFSET=10        # host i gets .(10+i); the bridge gets .1
readonly SSH_PORT=22
readonly MOUNT_POINTS=(/var/lib/tess /etc/tess)
readonly READY_TIMEOUT_MS=5000
readonly KILL_TIMEOUT_MS=5000

die() { echo "$PROG: $*" >&2; exit 1; }
warn() { echo "$PROG: warning: $*" >&2; }

usage() { # exit-code
  sed -n '7,16p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

# ---------------------------------------------------------------------------------------- checks

need_root() {
  [[ $EUID -eq 0 ]] || die "must run as root (network and mount namespaces, bridges and sshd need it); try: sudo $0 $*"
}

[[ $BASE =~ ^/[A-Za-z0-9._/-]+$ ]] || die "TESS_TESTHOSTS_DIR \"$BASE\" must be an absolute path of letters, digits, '.', '_', '-' and '/'"

# Install missing Debian packages quietly, without letting their postinst start services.
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "missing programs; install these packages: $*"
  echo "$PROG: installing Debian packages: $*" >&2
  local policy=/usr/sbin/policy-rc.d created=0 log ok=0
  log=$(mktemp /tmp/tess-testhosts-apt.XXXXXX.log)
  if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 0755 "$policy"; created=1; fi
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o DPkg::Lock::Timeout=120)
  if "${apt[@]}" install --no-install-recommends "$@" >"$log" 2>&1; then ok=1
  elif "${apt[@]}" update >>"$log" 2>&1 && "${apt[@]}" install --no-install-recommends "$@" >>"$log" 2>&1; then ok=1
  fi
  ((created)) && rm -f "$policy"
  ((ok)) || die "apt-get install $* failed; see $log"
  rm -f "$log"
}

need_tools() {
  local -A pkg=([ip]=iproute2 [unshare]=util-linux [nsenter]=util-linux [flock]=util-linux [setsid]=util-linux
                [mount]=mount [sshd]=openssh-server [ssh]=openssh-client [ssh-keygen]=openssh-client)
  local missing=() t
  for t in "${!pkg[@]}"; do command -v "$t" >/dev/null 2>&1 || missing+=("${pkg[$t]}"); done
  if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    apt_install "${missing[@]}"
  fi
  for t in "${!pkg[@]}"; do command -v "$t" >/dev/null 2>&1 || die "\"$t\" not found after installing ${pkg[$t]}"; done
}

# The harness manages hosts from the machine's namespaces; refuse to run inside a test host.
not_inside_host() {
  local mine f
  mine=$(stat -L -c %i /proc/$$/ns/net)
  for f in /run/netns/tess-*; do
    [[ $(stat -L -c %i "$f" 2>/dev/null) != "$mine" ]] || die "run this from the machine, not from inside test host ${f#/run/netns/tess-}"
  done
}

valid_prefix() { [[ $1 =~ ^[a-z]([a-z0-9]{0,6}[a-z])?$ ]]; }
check_prefix() {
  valid_prefix "$1" || die "invalid prefix \"$1\": 1-8 lowercase letters or digits, starting and ending with a letter (hosts are named <prefix>1..N)"
}

# HOST -> sets global H_PREFIX
split_host() {
  [[ $1 =~ ^([a-z][a-z0-9]*[a-z]|[a-z])([1-9][0-9]*)$ ]] || die "invalid host name \"$1\": expected <prefix><number>, e.g. ${DEFAULT_PREFIX}1"
  H_PREFIX=${BASH_REMATCH[1]}
  valid_prefix "$H_PREFIX" || die "invalid host name \"$1\": its prefix \"$H_PREFIX\" is longer than 8 characters"
}

# ------------------------------------------------------------------------------- names and state

state_dir() { echo "$BASE/$1"; }                 # prefix
host_dir() { split_host "$1"; echo "$BASE/$H_PREFIX/$1"; }
netns_of() { echo "tess-$1"; }                   # host
link_of() { echo "tv-$1"; }                      # host: the veth end in the machine's namespace
bridge_of() { echo "tessbr-$1"; }                # prefix

# "PID STARTTIME" identifies a process across pid reuse.
starttime_of() {
  local s
  { s=$(</proc/"$1"/stat); } 2>/dev/null || return 1
  s=${s##*) }
  set -- $s
  [[ $1 != Z && $1 != X ]] || return 1
  echo "${20}"
}

record_pid() { # host name pid
  local hd st
  hd=$(host_dir "$1")
  st=$(starttime_of "$3") || die "$2 of $1 (pid $3) died right after it started; see $hd/*.log"
  local f="$hd/pids"
  { grep -v "^$2 " "$f" 2>/dev/null || true; echo "$2 $3 $st"; } >"$f.tmp"
  mv "$f.tmp" "$f"
}

# Prints the recorded pid of process NAME (holder|sshd) of HOST if it still runs; else fails.
recorded_pid() { # host name
  local hd name pid st
  hd=$(host_dir "$1")
  [[ -r $hd/pids ]] || return 1
  while read -r name pid st; do
    [[ $name == "$2" ]] || continue
    [[ $(starttime_of "$pid" 2>/dev/null) == "$st" ]] && { echo "$pid"; return 0; }
  done <"$hd/pids"
  return 1
}

holder_or_die() {
  local pid
  pid=$(recorded_pid "$1" holder) || die "test host $1 is not up (no live namespace holder; see: $PROG list)"
  echo "$pid"
}

# ---------------------------------------------------------------------------------------- subnet

ip2int() { local IFS=.; set -- $1; echo $(( ($1 << 24) | ($2 << 16) | ($3 << 8) | $4 )); }
int2ip() { echo "$(( ($1 >> 24) & 255 )).$(( ($1 >> 16) & 255 )).$(( ($1 >> 8) & 255 )).$(( $1 & 255 ))"; }
valid_ipv4() { [[ $1 =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] && ((BASH_REMATCH[1] < 256 && BASH_REMATCH[2] < 256 && BASH_REMATCH[3] < 256 && BASH_REMATCH[4] < 256)); }

overlaps() { # net1 len1 net2 len2
  local m=$(( $2 < $4 ? $2 : $4 )) mask
  mask=$(( m == 0 ? 0 : (0xffffffff << (32 - m)) & 0xffffffff ))
  (( ($1 & mask) == ($3 & mask) ))
}

# Succeeds (and names the user) when a route or an address on this machine overlaps NET/24.
subnet_in_use() { # network-int
  local want=$1 line dst net len
  while read -r line; do
    set -- $line
    case $1 in local|broadcast|anycast|multicast|unicast|unreachable|blackhole|prohibit|throw|nat) shift ;; esac
    dst=$1
    [[ $dst == default ]] && continue
    [[ $dst == */* ]] || dst=$dst/32
    valid_ipv4 "${dst%/*}" || continue
    net=$(ip2int "${dst%/*}"); len=${dst#*/}
    if overlaps "$want" 24 "$net" "$len"; then echo "route: $line"; return 0; fi
  done < <(ip -4 -o route show table all 2>/dev/null; true)
  while read -r dst; do
    valid_ipv4 "${dst%/*}" || continue
    if overlaps "$want" 24 "$(ip2int "${dst%/*}")" 32; then echo "address: $dst"; return 0; fi
  done < <(ip -4 -o addr show 2>/dev/null | awk '{print $4}'; true)
  return 1
}

# Checks TESS_TESTHOSTS_SUBNET (when set); prints its network address as an integer.
env_subnet() {
  local s=$TESS_TESTHOSTS_SUBNET net
  [[ $s == */24 ]] && valid_ipv4 "${s%/24}" || die "TESS_TESTHOSTS_SUBNET=\"$s\": expected a private IPv4 /24 such as 10.77.0.0/24"
  net=$(( $(ip2int "${s%/24}") & 0xffffff00 ))
  overlaps "$net" 24 "$(ip2int 10.0.0.0)" 8 || overlaps "$net" 24 "$(ip2int 172.16.0.0)" 12 \
    || overlaps "$net" 24 "$(ip2int 192.168.0.0)" 16 || die "TESS_TESTHOSTS_SUBNET=\"$s\" is not private (10/8, 172.16/12, 192.168/16)"
  echo "$net"
}

# Picks the subnet for a new prefix (call it under the lock); prints the network address (a.b.c.0).
pick_subnet() {
  local net used
  if [[ -n ${TESS_TESTHOSTS_SUBNET:-} ]]; then
    net=$(env_subnet)
    if used=$(subnet_in_use "$net"); then die "subnet $(int2ip "$net")/24 is already used on this machine ($used); choose another TESS_TESTHOSTS_SUBNET"; fi
    int2ip "$net"; return 0
  fi
  local k
  for ((k = 0; k < 64; k++)); do
    net=$(ip2int "10.77.$k.0")
    subnet_in_use "$net" >/dev/null || { int2ip "$net"; return 0; }
  done
  die "no free subnet among 10.77.0.0/24 .. 10.77.63.0/24; set TESS_TESTHOSTS_SUBNET to a free private /24"
}

# ------------------------------------------------------------------------------------------ lock

LOCK_FD=
lock() {
  mkdir -p "${LOCK_FILE%/*}"
  exec {LOCK_FD}>"$LOCK_FILE"
  flock -w 120 "$LOCK_FD" || die "timed out waiting for $LOCK_FILE (another $PROG up/down is running)"
}
unlock() { if [[ -n $LOCK_FD ]]; then exec {LOCK_FD}>&-; LOCK_FD=; fi; }

# ------------------------------------------------------------------------------------- processes

# Pids of every process in HOST: members of its network namespace, of its mount or UTS namespace
# (taken from the holder), and their descendants. Excludes this script, its ancestors and the pids
# in $2. Never matches the namespaces this script runs in.
host_pids() { # host [exclude-pids]
  local h=$1 exclude=" ${2-} " ns t k pid ppid path ino holder
  ns=$(netns_of "$h")
  local -A keys=() member=() children=() skip=()
  if [[ -e /run/netns/$ns ]] && k=$(stat -L -c %i "/run/netns/$ns" 2>/dev/null); then keys[net:$k]=1; fi
  if holder=$(recorded_pid "$h" holder); then
    for t in net mnt uts; do k=$(stat -L -c %i "/proc/$holder/ns/$t" 2>/dev/null) && keys[$t:$k]=1; done
  fi
  for t in net mnt uts; do k=$(stat -L -c %i "/proc/$$/ns/$t"); unset "keys[$t:$k]"; done
  ((${#keys[@]})) || return 0
  pid=$$
  while [[ $pid =~ ^[0-9]+$ ]] && ((pid > 1)); do
    skip[$pid]=1
    ppid=$(awk '{ s = $0; sub(/^.*\) /, "", s); split(s, a, " "); print a[2] }' "/proc/$pid/stat" 2>/dev/null) || break
    pid=$ppid
  done
  skip[$BASHPID]=1
  for pid in $exclude; do skip[$pid]=1; done
  while read -r path ino; do
    t=${path##*/}; pid=${path#/proc/}; pid=${pid%%/*}
    [[ -n ${keys[$t:$ino]-} && -z ${skip[$pid]-} ]] && member[$pid]=1
  done < <(stat -L -c '%n %i' /proc/[0-9]*/ns/net /proc/[0-9]*/ns/mnt /proc/[0-9]*/ns/uts 2>/dev/null; true)
  while read -r pid ppid; do children[$ppid]+=" $pid"; done < <(
    cat /proc/[0-9]*/stat 2>/dev/null | awk '{ s = $0; sub(/^.*\) /, "", s); split(s, a, " "); if (a[1] != "Z" && a[1] != "X") print $1, a[2] }'; true)
  local queue=("${!member[@]}") c
  while ((${#queue[@]})); do
    pid=${queue[0]}; queue=("${queue[@]:1}")
    for c in ${children[$pid]-}; do
      [[ -z ${member[$c]-} && -z ${skip[$c]-} ]] || continue
      member[$c]=1; queue+=("$c")
    done
  done
  ((${#member[@]})) && printf '%s\n' "${!member[@]}" | sort -n
  return 0
}

# SIGKILL every process of HOST (stopping them first so that none can fork or restart another
# between the scan and the kill). With keep_holder=1 the namespace holder survives.
kill_host_procs() { # host keep_holder
  local h=$1 exclude="" deadline pids more
  [[ $2 == 1 ]] && exclude=$(recorded_pid "$h" holder || true)
  deadline=$(( $(date +%s%3N) + KILL_TIMEOUT_MS ))
  while :; do
    mapfile -t pids < <(host_pids "$h" "$exclude")
    ((${#pids[@]})) || return 0
    (( $(date +%s%3N) < deadline )) || { warn "processes of $h survive SIGKILL (uninterruptible I/O?): ${pids[*]}"; return 1; }
    kill -STOP "${pids[@]}" 2>/dev/null || true
    mapfile -t more < <(host_pids "$h" "$exclude")
    kill -KILL "${pids[@]}" "${more[@]}" 2>/dev/null || true
    sleep 0.05
  done
}

kill_recorded() { # host name
  local pid
  if pid=$(recorded_pid "$1" "$2"); then
    kill -KILL "$pid" 2>/dev/null || true
  fi
}

wait_ms() { # deadline-ms command...: retry the command until it succeeds or the deadline passes
  local deadline=$1; shift
  until "$@"; do
    (( $(date +%s%3N) < deadline )) || return 1
    sleep 0.02
  done
}

# --------------------------------------------------------------------------------------------- up

# The holder: a process in the host's network namespace that creates the host's private mount and
# UTS namespaces, mounts the host's own directories there, and then sleeps forever. Its namespaces
# are entered with `nsenter -t HOLDER -m -n -u`. Copies of /run/netns/* mounts are dropped first so
# that this mount namespace does not pin other hosts' network namespaces.
# shellcheck disable=SC2016
readonly HOLDER_SCRIPT='
set -e
hd=$1 host=$2 hosts=$3
awk '\''$5 ~ "^/run/" { print $5 }'\'' /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
mount --bind "$hd/run" /run
mount --bind "$hd/var-lib-tess" /var/lib/tess
mount --bind "$hd/etc-tess" /etc/tess
mount --bind "$hosts" /etc/hosts
hostname "$host"
echo $$ >"$hd/holder.pid"
exec sleep infinity
'

write_sshd_config() { # host address
  local hd sd
  split_host "$1"; sd=$(state_dir "$H_PREFIX"); hd=$sd/$1
  cat >"$hd/sshd/sshd_config" <<EOF
# Generated by scripts/testhosts.sh for test host $1. Root login by key only.
ListenAddress $2:$SSH_PORT
HostKey $hd/sshd/ssh_host_ed25519_key
PidFile /run/sshd.pid
AuthorizedKeysFile $sd/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowAgentForwarding no
AllowTcpForwarding yes
PermitUserEnvironment no
MaxStartups 64:30:128
MaxSessions 64
Subsystem sftp internal-sftp
LogLevel INFO
EOF
  # the test suite keeps few spare extent groups per disk (see vitest.config.ts); daemons started
  # over SSH get the same setting as the local ones
  if [[ -n ${TESS_SPARE_EGROUPS:-} ]]; then
    [[ $TESS_SPARE_EGROUPS =~ ^[0-9]+$ ]] || die "TESS_SPARE_EGROUPS=$TESS_SPARE_EGROUPS is not a whole number"
    echo "SetEnv TESS_SPARE_EGROUPS=$TESS_SPARE_EGROUPS" >>"$hd/sshd/sshd_config"
  fi
}

start_sshd() { # host
  local h=$1 hd holder
  hd=$(host_dir "$h"); holder=$(holder_or_die "$h")
  rm -f "$hd/run/sshd.pid"
  mkdir -p "$hd/run/sshd"; chmod 0755 "$hd/run/sshd"
  nsenter -t "$holder" -m -n -u -- /usr/sbin/sshd -f "$hd/sshd/sshd_config" -E "$hd/sshd/sshd.log" \
    </dev/null >>"$hd/sshd/sshd.log" 2>&1 || die "sshd of $h did not start: $(tail -n 3 "$hd/sshd/sshd.log" 2>/dev/null)"
}

wait_sshd() { # host
  local h=$1 hd pid deadline
  hd=$(host_dir "$h")
  deadline=$(( $(date +%s%3N) + READY_TIMEOUT_MS ))
  wait_ms "$deadline" test -s "$hd/run/sshd.pid" || die "sshd of $h wrote no pid file within ${READY_TIMEOUT_MS} ms; see $hd/sshd/sshd.log"
  pid=$(<"$hd/run/sshd.pid")
  record_pid "$h" sshd "$pid"
  # sshd writes its pid file after it listens; check the port from the machine's namespace anyway
  wait_ms "$deadline" timeout 1 bash -c "exec 3<>/dev/tcp/$(<"$hd/address")/$SSH_PORT" 2>/dev/null \
    || die "sshd of $h does not accept connections on $(<"$hd/address"):$SSH_PORT; see $hd/sshd/sshd.log"
}

UP_PREFIX=
up_exit() {
  local rc=$?
  trap - EXIT
  unlock
  if ((rc != 0)) && [[ -n $UP_PREFIX ]]; then
    if [[ ${TESS_TESTHOSTS_KEEP:-} == 1 ]]; then
      echo "$PROG: up failed; partial state kept in $(state_dir "$UP_PREFIX") (remove it with: $0 down --prefix $UP_PREFIX)" >&2
    else
      echo "$PROG: up failed; removing the partial hosts of prefix $UP_PREFIX (TESS_TESTHOSTS_KEEP=1 keeps them)" >&2
      down_prefix "$UP_PREFIX" || true
    fi
  fi
  exit "$rc"
}

cmd_up() {
  local n="" prefix=$DEFAULT_PREFIX
  while (($#)); do
    case $1 in
      --prefix) (($# >= 2)) || die "--prefix needs a value"; prefix=$2; shift 2 ;;
      --prefix=*) prefix=${1#--prefix=}; shift ;;
      -*) die "up: unknown option $1" ;;
      *) [[ -z $n ]] || die "up: unexpected argument $1"; n=$1; shift ;;
    esac
  done
  [[ $n =~ ^[1-9][0-9]*$ ]] && ((n <= HOSTS_MAX)) || die "up: N must be a number from 1 to $HOSTS_MAX (got \"$n\")"
  check_prefix "$prefix"
  need_root "up $n --prefix $prefix"
  [[ -z ${TESS_TESTHOSTS_SUBNET:-} ]] || env_subnet >/dev/null
  need_tools
  not_inside_host

  local sd bridge base net i h hd ns link addr holder deadline
  sd=$(state_dir "$prefix"); bridge=$(bridge_of "$prefix")

  # Claim the prefix and a subnet, and create the bridge, under the machine-wide lock.
  lock
  if [[ -e $sd ]]; then die "prefix \"$prefix\" is already up (state in $sd); use another --prefix or run: $0 down --prefix $prefix"; fi
  if [[ -e /sys/class/net/$bridge || -n $(ip netns list | sed -n "/^tess-${prefix}[1-9]/p") ]]; then
    die "leftovers of prefix \"$prefix\" exist (bridge $bridge or namespaces tess-${prefix}N); run: $0 down --prefix $prefix"
  fi
  mkdir -p "$BASE"; chmod 0700 "$BASE"
  mkdir -m 0700 "$sd"
  UP_PREFIX=$prefix
  trap up_exit EXIT
  net=$(pick_subnet)
  base=${net%.0}
  echo "$net/24" >"$sd/subnet"
  local mp
  for mp in "${MOUNT_POINTS[@]}"; do
    if [[ ! -d $mp ]]; then mkdir -p "$mp"; echo "$mp" >>"$BASE/.created-mountpoints"; fi
  done
  ip link add name "$bridge" type bridge forward_delay 0 stp_state 0
  sysctl -qw "net.ipv6.conf.$bridge.disable_ipv6=1" 2>/dev/null || true
  ip addr add "$base.1/24" dev "$bridge"
  ip link set "$bridge" up
  unlock

  # Keys: one client key for the harness (authorized in every host), one host key per host.
  ssh-keygen -q -t ed25519 -N '' -C "tess-testhosts-$prefix" -f "$sd/id_ed25519"
  cp "$sd/id_ed25519.pub" "$sd/authorized_keys"
  chmod 0600 "$sd/id_ed25519" "$sd/authorized_keys"
  : >"$sd/known_hosts"
  { cat /etc/hosts; echo "# tess test hosts, prefix $prefix"; echo "$base.1 tess-testhosts-bridge"; } >"$sd/hosts"
  for ((i = 1; i <= n; i++)); do echo "$base.$((HOST_ADDRESS_OFFSET + i)) $prefix$i"; done >>"$sd/hosts"
  chmod 0644 "$sd/hosts"

  for ((i = 1; i <= n; i++)); do
    h=$prefix$i; hd=$sd/$h; ns=$(netns_of "$h"); link=$(link_of "$h"); addr=$base.$((HOST_ADDRESS_OFFSET + i))
    echo "$h" >>"$sd/hostnames"
    mkdir "$hd" "$hd/run" "$hd/run/sshd" "$hd/run/lock" "$hd/var-lib-tess" "$hd/etc-tess" "$hd/sshd"
    chmod 0755 "$hd" "$hd/run" "$hd/run/sshd" "$hd/var-lib-tess" "$hd/etc-tess"
    chmod 1777 "$hd/run/lock"
    chmod 0700 "$hd/sshd"
    echo "$addr" >"$hd/address"
    ssh-keygen -q -t ed25519 -N '' -C "root@$h" -f "$hd/sshd/ssh_host_ed25519_key"
    echo "$h,$addr $(cut -d' ' -f1,2 "$hd/sshd/ssh_host_ed25519_key.pub")" >>"$sd/known_hosts"
    write_sshd_config "$h" "$addr"

    # network: namespace, veth pair (eth0 inside, tv-HOST on the bridge), address, no default route
    ip netns add "$ns"
    ip link add name "$link" type veth peer name eth0 netns "$ns"
    sysctl -qw "net.ipv6.conf.$link.disable_ipv6=1" 2>/dev/null || true
    ip link set "$link" master "$bridge" up
    ip -n "$ns" link set lo up
    nsenter --net="/run/netns/$ns" sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1 2>/dev/null || true
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up

    # mount + UTS namespaces, kept alive by the holder
    rm -f "$hd/holder.pid"
    setsid nsenter --net="/run/netns/$ns" -- unshare --mount --uts --propagation private -- \
      /bin/sh -c "$HOLDER_SCRIPT" holder "$hd" "$h" "$sd/hosts" </dev/null >"$hd/holder.log" 2>&1 &
    deadline=$(( $(date +%s%3N) + READY_TIMEOUT_MS ))
    wait_ms "$deadline" test -s "$hd/holder.pid" || die "namespace holder of $h did not start: $(tail -n 3 "$hd/holder.log")"
    holder=$(<"$hd/holder.pid")
    wait_ms "$deadline" grep -qx sleep "/proc/$holder/comm" 2>/dev/null || die "namespace holder of $h (pid $holder) did not reach its sleep: $(tail -n 3 "$hd/holder.log")"
    record_pid "$h" holder "$holder"

    start_sshd "$h"
  done
  for ((i = 1; i <= n; i++)); do wait_sshd "$prefix$i"; done
  chmod 0644 "$sd/known_hosts"
  trap - EXIT
  UP_PREFIX=
  local names=${prefix}1; ((n == 1)) || names+="..$prefix$n"
  echo "$PROG: $n test host(s) up: $names on $net/24 (bridge $bridge $base.1); key $sd/id_ed25519, known_hosts $sd/known_hosts" >&2
}

# ------------------------------------------------------------------------------------------- down

# Every host of PREFIX that has any trace: state dir, network namespace or veth.
prefix_hosts() { # prefix
  local p=$1 sd d n
  sd=$(state_dir "$p")
  {
    for d in "$sd"/*/; do d=${d%/}; echo "${d##*/}"; done
    [[ -r $sd/hostnames ]] && cat "$sd/hostnames"
    ip netns list 2>/dev/null | awk '{print $1}' | sed -n "s/^tess-\(${p}[1-9][0-9]*\)\$/\1/p"
    for n in /sys/class/net/tv-"$p"*; do n=${n##*/tv-}; echo "$n"; done
  } | grep -E "^${p}[1-9][0-9]*\$" | sort -uV || true
}

down_host() { # host
  local h=$1 ns link rc=0
  ns=$(netns_of "$h"); link=$(link_of "$h")
  kill_host_procs "$h" 0 || rc=1
  kill_recorded "$h" sshd
  kill_recorded "$h" holder
  if [[ -e /run/netns/$ns ]]; then ip netns del "$ns" 2>/dev/null || { warn "cannot delete network namespace $ns"; rc=1; }; fi
  if [[ -e /sys/class/net/$link ]]; then ip link del "$link" 2>/dev/null || true; fi
  return "$rc"
}

down_prefix() { # prefix
  local p=$1 sd bridge h rc=0 m
  sd=$(state_dir "$p"); bridge=$(bridge_of "$p")
  for h in $(prefix_hosts "$p"); do down_host "$h" || rc=1; done
  if [[ -e /sys/class/net/$bridge ]]; then ip link del "$bridge" 2>/dev/null || { warn "cannot delete bridge $bridge"; rc=1; }; fi
  lock
  # nothing is mounted under the state dir in the machine's mount namespace, but be sure
  while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(awk -v d="$sd/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r)
  if [[ -e $sd ]]; then rm -rf --one-file-system "$sd" || { warn "cannot remove $sd"; rc=1; }; fi
  # last prefix gone: remove the mount points the harness created in the machine (if still empty)
  local left=("$BASE"/*/)
  if ((${#left[@]} == 0)) && [[ -d $BASE ]]; then
    if [[ -r $BASE/.created-mountpoints ]]; then
      while read -r m; do rmdir "$m" 2>/dev/null || true; done <"$BASE/.created-mountpoints"
      rm -f "$BASE/.created-mountpoints"
    fi
    rmdir "$BASE" 2>/dev/null || true
  fi
  unlock
  return "$rc"
}

cmd_down() {
  local prefixes=() all=0 p
  while (($#)); do
    case $1 in
      --prefix) (($# >= 2)) || die "--prefix needs a value"; prefixes+=("$2"); shift 2 ;;
      --prefix=*) prefixes+=("${1#--prefix=}"); shift ;;
      --all) all=1; shift ;;
      *) die "down: unexpected argument $1" ;;
    esac
  done
  need_root down
  command -v ip >/dev/null 2>&1 || die "\"ip\" (iproute2) not found"
  not_inside_host
  if ((all)); then
    mapfile -t prefixes < <(all_prefixes)
  elif ((${#prefixes[@]} == 0)); then
    prefixes=("$DEFAULT_PREFIX")
  fi
  local rc=0
  for p in "${prefixes[@]}"; do check_prefix "$p"; down_prefix "$p" || rc=1; done
  ((rc == 0)) || die "down finished with errors (see warnings above)"
}

# Prefixes with any trace on the machine.
all_prefixes() {
  local d n
  {
    for d in "$BASE"/*/; do d=${d%/}; echo "${d##*/}"; done
    for n in /sys/class/net/tessbr-*; do echo "${n##*/tessbr-}"; done
    for n in /sys/class/net/tv-*; do echo "${n##*/tv-}" | sed -n 's/^\(.*[a-z]\)[1-9][0-9]*$/\1/p'; done
    ip netns list 2>/dev/null | awk '{print $1}' | sed -n 's/^tess-\(.*[a-z]\)[1-9][0-9]*$/\1/p'
  } | while read -r n; do valid_prefix "$n" && echo "$n"; done | sort -u || true
}

# ------------------------------------------------------------------------------- list, exec, ssh

json_str() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
json_num_or_null() { if [[ -n $1 ]]; then printf '%s' "$1"; else printf null; fi; }

link_state() { cat "/sys/class/net/$1/operstate" 2>/dev/null || echo absent; }

prefix_json() { # prefix
  local p=$1 sd subnet="" h hd first=1 holder sshd
  sd=$(state_dir "$p")
  [[ -r $sd/subnet ]] && subnet=$(<"$sd/subnet")
  printf '{"prefix":%s,"stateDir":%s,"subnet":%s,"bridge":%s,"bridgeAddress":%s,"keyFile":%s,"knownHostsFile":%s,"hosts":[' \
    "$(json_str "$p")" "$(json_str "$sd")" "$(json_str "$subnet")" "$(json_str "$(bridge_of "$p")")" \
    "$(json_str "${subnet:+${subnet%.0/24}.1}")" "$(json_str "$sd/id_ed25519")" "$(json_str "$sd/known_hosts")"
  for h in $(prefix_hosts "$p" | sort -V); do
    hd=$sd/$h
    holder=$(recorded_pid "$h" holder || true); sshd=$(recorded_pid "$h" sshd || true)
    ((first)) || printf ','; first=0
    printf '{"name":%s,"address":%s,"sshPort":%s,"netns":%s,"link":%s,"linkState":%s,"holderPid":%s,"sshdPid":%s,"stateDir":%s}' \
      "$(json_str "$h")" "$(json_str "$(cat "$hd/address" 2>/dev/null || true)")" "$SSH_PORT" "$(json_str "$(netns_of "$h")")" \
      "$(json_str "$(link_of "$h")")" "$(json_str "$(link_state "$(link_of "$h")")")" \
      "$(json_num_or_null "$holder")" "$(json_num_or_null "$sshd")" "$(json_str "$hd")"
  done
  printf ']}'
}

cmd_list() {
  local prefix="" json=0 p h hd
  while (($#)); do
    case $1 in
      --prefix) (($# >= 2)) || die "--prefix needs a value"; prefix=$2; shift 2 ;;
      --prefix=*) prefix=${1#--prefix=}; shift ;;
      --json) json=1; shift ;;
      *) die "list: unexpected argument $1" ;;
    esac
  done
  local prefixes
  if [[ -n $prefix ]]; then
    check_prefix "$prefix"
    [[ -d $(state_dir "$prefix") ]] || die "no test hosts with prefix \"$prefix\" (state dir $(state_dir "$prefix") missing)"
    prefixes=("$prefix")
  else
    mapfile -t prefixes < <(all_prefixes)
  fi
  if ((json)); then
    if [[ -n $prefix ]]; then prefix_json "$prefix"; echo; return; fi
    local first=1; printf '['
    for p in "${prefixes[@]}"; do ((first)) || printf ','; first=0; prefix_json "$p"; done
    printf ']\n'; return
  fi
  if ((${#prefixes[@]} == 0)); then echo "no test hosts"; return; fi
  printf '%-10s %-16s %-12s %-10s %-9s %-9s %s\n' HOST ADDRESS NETNS LINK HOLDER SSHD DIR
  for p in "${prefixes[@]}"; do
    for h in $(prefix_hosts "$p" | sort -V); do
      hd=$(state_dir "$p")/$h
      printf '%-10s %-16s %-12s %-10s %-9s %-9s %s\n' "$h" "$(cat "$hd/address" 2>/dev/null || echo -)" "$(netns_of "$h")" \
        "$(link_state "$(link_of "$h")")" "$(recorded_pid "$h" holder || echo dead)" "$(recorded_pid "$h" sshd || echo dead)" "$hd"
    done
  done
}

cmd_exec() {
  (($# >= 2)) || die "usage: $PROG exec HOST CMD..."
  local h=$1; shift
  split_host "$h"
  need_root "exec $h ..."
  local holder
  holder=$(holder_or_die "$h")
  # cd to the caller's directory as the host sees it (its /run, /var/lib/tess, /etc/tess are its own)
  exec nsenter -t "$holder" -m -n -u -- /bin/sh -c 'cd "$1" 2>/dev/null || cd /; shift; exec "$@"' sh "$PWD" "$@"
}

ssh_opts() { # prefix -> prints one option per line
  local sd
  sd=$(state_dir "$1")
  printf '%s\n' -F /dev/null -i "$sd/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes \
    -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$sd/known_hosts" -o GlobalKnownHostsFile=/dev/null \
    -o ConnectTimeout=5 -o LogLevel=ERROR -p "$SSH_PORT"
}

cmd_ssh() {
  (($# >= 1)) || die "usage: $PROG ssh HOST [CMD...]"
  local h=$1 hd opts; shift
  split_host "$h"
  hd=$(host_dir "$h")
  [[ -r $hd/address ]] || die "test host $h is not up (no $hd/address; see: $PROG list)"
  mapfile -t opts < <(ssh_opts "$H_PREFIX")
  exec ssh "${opts[@]}" "root@$(<"$hd/address")" "$@"
}

cmd_pids() {
  (($# == 1)) || die "usage: $PROG pids HOST"
  split_host "$1"; need_root "pids $1"
  [[ -d $(host_dir "$1") || -e /run/netns/$(netns_of "$1") ]] || die "test host $1 is not up"
  host_pids "$1" "$(recorded_pid "$1" holder || true)"
}

cmd_kill() {
  (($# == 1)) || die "usage: $PROG kill HOST"
  local h=$1 hd
  split_host "$h"; need_root "kill $h"; not_inside_host
  hd=$(host_dir "$h")
  [[ -d $hd ]] || die "test host $h is not up"
  kill_host_procs "$h" 1 || die "could not kill every process of $h"
  ip link set "$(link_of "$h")" down 2>/dev/null || die "cannot take link $(link_of "$h") of $h down"
  echo "$PROG: $h lost: its processes are killed and link $(link_of "$h") is down (revive: $PROG revive $h)" >&2
}

cmd_revive() {
  (($# == 1)) || die "usage: $PROG revive HOST"
  local h=$1
  split_host "$h"; need_root "revive $h"; need_tools; not_inside_host
  holder_or_die "$h" >/dev/null
  ip link set "$(link_of "$h")" up
  recorded_pid "$h" sshd >/dev/null || { start_sshd "$h"; wait_sshd "$h"; }
  echo "$PROG: $h is back: link $(link_of "$h") up, sshd running" >&2
}

# the link of one host up or down, its processes untouched (partition, heal)
set_host_link() { # command state HOST
  local cmd=$1 state=$2; shift 2
  (($# == 1)) || die "usage: $PROG $cmd HOST"
  local h=$1
  split_host "$h"; need_root "$cmd $h"; not_inside_host
  holder_or_die "$h" >/dev/null
  ip link set "$(link_of "$h")" "$state" 2>/dev/null || die "cannot take link $(link_of "$h") of $h $state"
}

cmd_partition() {
  set_host_link partition down "$@"
  echo "$PROG: $1 partitioned: link $(link_of "$1") is down, its processes go on (heal: $PROG heal $1)" >&2
}

cmd_heal() {
  set_host_link heal up "$@"
  echo "$PROG: $1 healed: link $(link_of "$1") is up" >&2
}

# ------------------------------------------------------------------------------------------- main

(($# >= 1)) || usage
cmd=$1; shift
case $cmd in
  up) cmd_up "$@" ;;
  down) cmd_down "$@" ;;
  list|ls) cmd_list "$@" ;;
  exec) cmd_exec "$@" ;;
  ssh) cmd_ssh "$@" ;;
  pids) cmd_pids "$@" ;;
  kill) cmd_kill "$@" ;;
  revive) cmd_revive "$@" ;;
  partition) cmd_partition "$@" ;;
  heal) cmd_heal "$@" ;;
  -h|--help|help) usage 0 ;;
  *) echo "$PROG: unknown command \"$cmd\"" >&2; usage ;;
esac
