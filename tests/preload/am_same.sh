#!/bin/bash
# am_same.sh SHIMLIB AM_PROG -- PQAWAIT_ASYNC_MAIN keeps an ordinary
# program's behaviour: every mode of am_prog.c (return/exit status, atexit
# handlers with and without queries, abort, threads, fork with and without
# exec, a signal handler calling PQcancel while main waits in PQexec,
# PQcancel from main, select() over two connections, libev callbacks that
# block in libpq) gives the same stdout and exit status with and without
# the preload; under the preload main really ran as a task, its own
# select() was a cooperative wait, and PQcancel went to the cancel lane.
set -u
shim=$1 prog=$2
: "${PQAWAIT_TEST_HOST:?run through tests/pg/with-pg}"
export PGHOST=$PQAWAIT_TEST_HOST PGPORT=$PQAWAIT_TEST_PORT PGDATABASE=$PQAWAIT_TEST_DB PGUSER=pqa_trust
. "$(dirname "$0")/lib.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for mode in "ret 5" "exit 4" abort atexit-query thread fork signal cancel select libev; do
  name=${mode// /-}
  "$prog" $mode >"$work/$name.plain" 2>"$work/$name.plain.err"
  echo "exit $?" >>"$work/$name.plain"
  LD_PRELOAD=$shim PQAWAIT_ASYNC_MAIN=1 PQAWAIT_STATS=1 "$prog" $mode \
    >"$work/$name.async" 2>"$work/$name.async.err"
  echo "exit $?" >>"$work/$name.async"
  diff -u "$work/$name.plain" "$work/$name.async" >"$work/$name.diff"
  check "$name: same stdout and exit status" $?
  [ -s "$work/$name.diff" ] && cat "$work/$name.diff"
  grep -q "main in task: 1" "$work/$name.async.err"
  check "$name: main ran as a task" $?
  grep -q "main in task: 0" "$work/$name.plain.err"
  check "$name: control: main is no task without the preload" $?
done
grep -q "atexit in task: 1" "$work/atexit-query.async.err"
check "atexit handler ran inside main's task" $?
grep -q "thread in task: 0" "$work/thread.async.err"
check "a thread started by main runs outside tasks" $?
grep -Eq "pqawait: .*prog_waits=[1-9]" "$work/select.async.err"
check "select(): a cooperative wait (stats prog_waits > 0)" $?
grep -Eq "pqawait: .*offloads=[1-9]" "$work/cancel.async.err"
check "PQcancel from main went to the cancel lane (stats offloads > 0)" $?
grep -Eq "pqawait: .*offloads=0" "$work/signal.async.err"
check "PQcancel in a signal handler stayed libpq's own (offloads=0)" $?
grep -Eq "pqawait: tasks=1 calls=[1-9][0-9]* waits=[1-9]" "$work/ret-5.async.err"
check "stats line: tasks=1 calls>0 waits>0" $?
if [ "$pqa_failures" != 0 ]; then
  for f in "$work"/*.err; do echo "--- $f"; cat "$f"; done
fi
finish
