#!/bin/bash
# run-blocks.sh SRCROOT PQAWAIT_SO AWAITLET_SO MD...
#
# Every ```c block of the given Markdown files is a whole program: compile
# it exactly as a user would link it (libpqawait before libpq, libawaitlet,
# libev), with -Wall -Wextra -Werror, then run it against the test server
# (PG* variables from tests/pg/with-pg).  A block that fails to compile, or
# a program that exits non-zero, fails the test, so the documentation
# cannot drift from the code.  Programs read their connection parameters
# from the environment (PQconnectdb("") uses PGHOST, PGPORT...).
set -uo pipefail
root=$1 shim=$2 rt=$3
shift 3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
n=0 bad=0
for md in "$@"; do
  # awk: number the blocks, write each to its own file
  awk -v dir="$work" -v base="$(basename "$md" .md)" '
    /^```c[ \t]*$/ { inblk = 1; k++; f = sprintf("%s/%s-%02d.c", dir, base, k); printf "" > f; next }
    /^```/ && inblk { inblk = 0; close(f); next }
    inblk { print >> f }' "$md"
done
for src in "$work"/*.c; do
  [ -e "$src" ] || continue
  n=$((n + 1))
  name=$(basename "$src" .c)
  if ! grep -q 'main *(' "$src"; then
    echo "FAIL $name: not a whole program (no main)"; bad=$((bad + 1)); continue
  fi
  if ! cc -std=gnu11 -Wall -Wextra -Werror -I"$root/include" $(pkg-config --cflags libpq) \
        -o "$work/$name" "$src" "$shim" "$rt" $(pkg-config --libs libpq) -lev -lpthread \
        -Wl,-rpath,"$(dirname "$shim")":"$(dirname "$rt")" 2>"$work/$name.cc"; then
    echo "FAIL $name: does not compile"; cat "$work/$name.cc"; bad=$((bad + 1)); continue
  fi
  start=$(date +%s.%N)
  if ! timeout 60 "$work/$name" >"$work/$name.out" 2>&1; then
    echo "FAIL $name: exit status non-zero"; cat "$work/$name.out"; bad=$((bad + 1)); continue
  fi
  awk -v a="$start" -v b="$(date +%s.%N)" -v n="$name" 'BEGIN { printf "ok   %s (%.2f s)\n", n, b - a }'
done
[ "$n" -gt 0 ] || { echo "FAIL: no C blocks found"; exit 1; }
echo "$n C blocks, $bad failed"
[ "$bad" -eq 0 ]
