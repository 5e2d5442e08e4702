#!/bin/bash
# ev_server.sh SHIMLIB SERVER CLIENT -- PQAWAIT_EV_CALLBACKS on a libev
# server built without pqawait (ev_pq_server.c) whose callbacks run
# blocking PQexec:
#   - 20 requests of 150 ms on 20 connections: without the preload they
#     run one after another (>= 3 s, the control); under the preload
#     concurrently (< 1.5 s), with the same answers;
#   - per-connection order: a second request arrives while the first is
#     suspended in PQexec; answers come in request order, as without the
#     preload (a second, concurrent callback of the same watcher would
#     read it and race the first);
#   - PQAWAIT_STATS: callbacks ran as tasks, some suspended.
set -u
shim=$1 server=$2 client=$3
: "${PQAWAIT_TEST_HOST:?run through tests/pg/with-pg}"
. "$(dirname "$0")/lib.sh"
export PGHOST=$PQAWAIT_TEST_HOST PGPORT=$PQAWAIT_TEST_PORT PGDATABASE=$PQAWAIT_TEST_DB PGUSER=pqa_trust
work=$(mktemp -d)
spid=
trap '[ -n "$spid" ] && kill "$spid" 2>/dev/null; rm -rf "$work"' EXIT
start() { # launcher...
  rm -f "$work/port"
  "$@" "$server" "$work/port" 2>"$work/server.err" &
  spid=$!
  for _ in $(seq 200); do [ -s "$work/port" ] && return 0; sleep 0.02; done
  return 1
}
stop() { kill -TERM "$spid"; wait "$spid"; echo "server exit $?" >>"$work/server.err"; spid=; }
run() { # label, launcher...
  local label=$1; shift
  start "$@" || { check "$label: server started" 1; return; }
  python3 "$client" "$(cat "$work/port")" concurrent 20 150 >"$work/conc.$label" 2>&1
  python3 "$client" "$(cat "$work/port")" ordered >"$work/ord.$label" 2>&1
  stop
  cp "$work/server.err" "$work/server.$label"
}
elapsed() { sed -n 's/^elapsed //p' "$1"; }
run plain
run preload env LD_PRELOAD="$shim" PQAWAIT_EV_CALLBACKS=1 PQAWAIT_STATS=1
python3 -c "import sys; sys.exit(not float(sys.argv[1]) >= 2.9)" "$(elapsed "$work/conc.plain")"
rc=$?
check "control: without the preload 20 slow requests run one after another ($(elapsed "$work/conc.plain") s)" $rc
python3 -c "import sys; sys.exit(not float(sys.argv[1]) < 1.5)" "$(elapsed "$work/conc.preload")"
rc=$?
check "PQAWAIT_EV_CALLBACKS: they run concurrently ($(elapsed "$work/conc.preload") s)" $rc
diff <(grep -v elapsed "$work/conc.plain") <(grep -v elapsed "$work/conc.preload") &&
  [ "$(grep -c '^conn [0-9]*: c[0-9]* c[0-9]*$' "$work/conc.preload")" = 20 ]
check "concurrent: the same 20 answers" $?
diff <(grep -v elapsed "$work/ord.plain") <(grep -v elapsed "$work/ord.preload") &&
  grep -q '^conn 0: x0-1 x0-1 | x0-2 x0-2 | x0-3 x0-3$' "$work/ord.preload"
check "per-connection order kept while a callback is suspended" $?
cat "$work/ord.preload"
grep -Eq '^pqawait: .*cb_tasks=[1-9][0-9]* cb_suspended=[1-9]' "$work/server.preload"
check "stats: callbacks ran as tasks and suspended" $?
grep -q "server exit 0" "$work/server.preload" && grep -q "server exit 0" "$work/server.plain"
check "both servers ended cleanly on SIGTERM" $?
[ "$pqa_failures" = 0 ] || cat "$work"/server.* "$work"/conc.* "$work"/ord.*
finish
