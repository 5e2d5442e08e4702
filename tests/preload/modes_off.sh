#!/bin/bash
# modes_off.sh SHIMLIB AM_PROG -- item 5: the variables are read once at
# start-up; a value other than 0/1 gets one line on stderr naming the
# variable and counts as off; without PQAWAIT_ASYNC_MAIN and
# PQAWAIT_EV_CALLBACKS the preloaded library changes nothing -- same
# output and the same system calls, apart from loading, for psql and for
# a libev+libpq program.
set -u
shim=$1 prog=$2
: "${PQAWAIT_TEST_HOST:?run through tests/pg/with-pg}"
. "$(dirname "$0")/lib.sh"
export PGHOST=$PQAWAIT_TEST_HOST PGPORT=$PQAWAIT_TEST_PORT PGDATABASE=$PQAWAIT_TEST_DB PGUSER=pqa_trust
bin=$(pg_config --bindir 2>/dev/null)
[ -x "$bin/psql" ] || bin=/usr/lib/postgresql/15/bin
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ---- warnings ----
for var in PQAWAIT_ASYNC_MAIN PQAWAIT_EV_CALLBACKS PQAWAIT_STATS; do
  for bad in yes 2 "" " 1" true; do
    env LD_PRELOAD="$shim" "$var=$bad" /usr/bin/psql -X -Atc 'SELECT 1' >"$work/out" 2>"$work/err"
    rc=$?
    [ "$rc" = 0 ] && [ "$(cat "$work/out")" = 1 ] && [ "$(wc -l <"$work/err")" = 1 ] &&
      grep -q "^pqawait: $var=\"$bad\" is neither 0 nor 1; treated as 0 (off)$" "$work/err"
    check "$var='$bad': one line naming it (through pg_wrapper), the program runs" $?
  done
  env LD_PRELOAD="$shim" "$var=0" /usr/bin/psql -X -Atc 'SELECT 1' >/dev/null 2>"$work/err"
  [ ! -s "$work/err" ]
  check "$var=0: silent" $?
done
env LD_PRELOAD="$shim" PQAWAIT_ASYNC_MAIN=on "$prog" ret 0 >/dev/null 2>"$work/err"
grep -q "main in task: 0" "$work/err"
check "PQAWAIT_ASYNC_MAIN=on counts as off" $?
env LD_PRELOAD="$shim" PQAWAIT_ASYNC_MAIN=1 "$prog" ret 0 >/dev/null 2>"$work/err"
grep -q "main in task: 1" "$work/err"
check "PQAWAIT_ASYNC_MAIN=1 is on (control)" $?
env LD_PRELOAD="$shim" PQAWAIT_STATS=1 "$prog" ret 0 >/dev/null 2>"$work/err"
grep -q "^pqawait: tasks=0 calls=0 waits=0 " "$work/err"
check "PQAWAIT_STATS=1 alone: the line, nothing cooperative" $?
env LD_PRELOAD="$shim" PQAWAIT_STATS=1 /bin/true 2>"$work/err"
[ ! -s "$work/err" ]
check "PQAWAIT_STATS=1 in a process without libpq (pg_wrapper, a shell): no line" $?

# ---- nothing changes: output and system calls ----
if command -v strace >/dev/null; then
  # from libc's start-up (getrandom follows the last library loaded) on;
  # addresses, numbers, random bytes and what the server sent (a backend
  # PID inside a notification) normalised; brk left out: when the heap
  # grows depends on what the loaded libraries allocated, not on what the
  # program does; a timer's epoll_wait timeout (and an early wake-up
  # repeating it) depends on the clock
  norm() {
    awk '/^getrandom/{f=1} f' "$1" | grep -v '^brk(' |
      sed -E 's/0x[0-9a-f]+/ADDR/g; s/[0-9]{4,}/N/g; s/getrandom\("[^"]*"/getrandom("R"/;
              s/(u32|u64)=[0-9]+/\1=N/g; s/^(recvfrom\([0-9]+, )".*", N, /\1"DATA", N, /
              s/^(epoll_wait\([0-9]+, \[\], [0-9]+, )[0-9]+\)/\1T)/' | uniq
  }
  cmp_calls() { # label, command...
    local label=$1; shift
    strace -qq -o "$work/sc.plain" "$@" >"$work/o.plain" 2>&1
    echo "exit $?" >>"$work/o.plain"
    strace -qq -o "$work/sc.pre" -E LD_PRELOAD="$shim" "$@" >"$work/o.pre" 2>&1
    echo "exit $?" >>"$work/o.pre"
    norm "$work/sc.plain" >"$work/n.plain"
    norm "$work/sc.pre" >"$work/n.pre"
    diff -u "$work/o.plain" "$work/o.pre"
    check "$label: same output with the preload, modes off" $?
    [ -s "$work/n.plain" ] && diff -u "$work/n.plain" "$work/n.pre" | head -20
    check "$label: same system calls after loading ($(wc -l <"$work/n.plain") compared)" "${PIPESTATUS[0]}"
  }
  # (no error query: the server flushes an error and its ReadyForQuery
  # separately, so how many reads it takes depends on the scheduler)
  cmp_calls "psql" "$bin/psql" -X -c 'SELECT 1 AS a' -c 'SELECT pg_sleep(0.05)' -c 'SELECT 2'
  cmp_calls "libev+libpq program" "$prog" libev
  cmp_calls "program's own select()" "$prog" select
else
  check "strace installed" 1
fi
finish
