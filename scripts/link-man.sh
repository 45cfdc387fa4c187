#!/usr/bin/env bash
# Make the man pages of this checkout (man/man1/tess*.1) findable by `man`: symbolic links in
# /usr/local/share/man/man1 (on man-db's default search path), replacing the links an earlier run
# made. Without write access there, it says how to read them instead.
#   scripts/link-man.sh [MANDIR]    default /usr/local/share/man/man1
set -euo pipefail
cd "$(dirname "$0")/.."
mandir="${1:-/usr/local/share/man/man1}"
if ! mkdir -p "$mandir" 2>/dev/null || [[ ! -w "$mandir" ]]; then
  echo "link-man.sh: cannot write $mandir; read the pages with: MANPATH=$PWD/man: man tess" >&2
  exit 0
fi
# only links of ours: a tess page installed otherwise (a real file) is left alone
find "$mandir" -maxdepth 1 -name 'tess*.1' -type l -delete
for page in "$PWD"/man/man1/tess*.1; do
  [[ -e "$mandir/$(basename "$page")" ]] || ln -s "$page" "$mandir/"
done
