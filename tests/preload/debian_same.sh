#!/bin/bash
# debian_same.sh SHIMLIB -- Debian's own psql, pg_dump, pg_restore and
# pgbench behave identically under LD_PRELOAD=libpqawait.so with
# PQAWAIT_ASYNC_MAIN=1, and really take the cooperative path:
#   psql     a script with COPY FROM STDIN, \copy both ways, \lo_import and
#            \lo_export, errors, \encoding, a transaction with savepoints,
#            notices and warnings, LISTEN/NOTIFY, \watch stopped after three
#            runs: same output (PIDs, OIDs and \watch's clock normalised),
#            same exit status, same data left behind; run through
#            /usr/bin/psql, Debian's Perl pg_wrapper, which the hook must
#            leave alone
#   Ctrl-C   SIGINT during SELECT pg_sleep(10): "Cancel request sent" and
#            the 57014 error, exactly as without the preload
#   pg_dump/pg_restore  a database with large objects, custom and
#            directory formats, serial and parallel (-j 3): restored
#            contents identical to the source and between the two modes
#   pgbench  -i, then tpcb runs with a fixed seed, one and two threads:
#            every transaction processed, none failed, same balances
#   proof    strace: no poll()/ppoll() that can block is left in psql (its
#            waits are epoll_wait via the loop), while the plain run has
#            libpq's poll(..., -1); PQAWAIT_STATS=1 says calls>0 waits>0
set -u
shim=$1
: "${PQAWAIT_TEST_HOST:?run through tests/pg/with-pg}"
. "$(dirname "$0")/lib.sh"
export PGHOST=$PQAWAIT_TEST_HOST PGPORT=$PQAWAIT_TEST_PORT PGUSER=pqa_trust
unset PGDATABASE
bin=$(pg_config --bindir 2>/dev/null)
[ -x "$bin/pg_dump" ] || bin=/usr/lib/postgresql/15/bin
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tag=pqa$$
ASYNC=(env LD_PRELOAD="$shim" PQAWAIT_ASYNC_MAIN=1)
sql() { "$bin/psql" -X -q -v ON_ERROR_STOP=1 -d "$@"; }
mkdb() { sql postgres -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1"; }
dropdbs() { for d in "$@"; do sql postgres -c "DROP DATABASE IF EXISTS $d"; done; }

# ---- psql ----
head -c 70000 /dev/urandom | od -An -tx1 >"$work/blob"
cat >"$work/script.sql" <<SQL
\\set ON_ERROR_STOP 0
CREATE TABLE t(a int, b text);
COPY t FROM STDIN;
1	one
2	two
\\.
\\copy t from stdin
3	three
\\.
\\copy t to stdout
COPY t TO STDOUT WITH (FORMAT csv, HEADER);
SELECT 1/0;
SELECT * FROM no_such_table;
\\encoding LATIN1
\\encoding
SELECT 'caf' || chr(233) AS latin1;
\\encoding UTF8
BEGIN;
INSERT INTO t VALUES (10, 'kept');
SAVEPOINT s1;
INSERT INTO t VALUES (11, 'rolled back');
SELECT 1/0;
ROLLBACK TO SAVEPOINT s1;
SAVEPOINT s2;
INSERT INTO t VALUES (12, 'kept too');
RELEASE SAVEPOINT s2;
COMMIT;
DO \$\$ BEGIN RAISE NOTICE 'a notice'; RAISE WARNING 'a warning'; END \$\$;
LISTEN ch_$tag;
NOTIFY ch_$tag, 'payload';
SELECT pg_notify('ch_$tag', 'second');
BEGIN;
\\lo_import $work/blob
\\lo_export :LASTOID $work/blob.out
SELECT lo_unlink(:LASTOID);
COMMIT;
CREATE TEMP SEQUENCE w;
SELECT CASE WHEN nextval('w') > 3 THEN 1/(4 - currval('w')) ELSE currval('w') END AS n \\watch 0.05
SELECT pg_sleep(0.1), count(*) FROM t;
SQL
run_psql() { # label, launcher...
  local label=$1; shift
  mkdb "${tag}_$label"
  "$@" /usr/bin/psql -X -d "${tag}_$label" -f "$work/script.sql" >"$work/psql.$label" 2>&1
  echo "exit $?" >>"$work/psql.$label"
  sed -i -E -e 's/^lo_import [0-9]+$/lo_import OID/' \
    -e 's/server process with PID [0-9]+/server process with PID N/' \
    -e 's/^[A-Z][a-z]{2} [A-Z][a-z]{2} [ 0-9]{2} [0-9:]{8} [0-9]{4} \(every/DATE (every/' \
    "$work/psql.$label"
  cmp -s "$work/blob" "$work/blob.out" && echo "lo roundtrip ok" >>"$work/psql.$label"
  rm -f "$work/blob.out"
  sql "${tag}_$label" -Atc "SELECT a, b FROM t ORDER BY a" >"$work/data.$label"
}
run_psql plain
run_psql async "${ASYNC[@]}"
diff -u "$work/psql.plain" "$work/psql.async"
check "psql script: identical output and exit status" $?
diff -u "$work/data.plain" "$work/data.async"
check "psql script: identical data left behind" $?
grep -q "lo roundtrip ok" "$work/psql.plain" && grep -q "division by zero" "$work/psql.plain" &&
  grep -q "a warning" "$work/psql.plain" && grep -q 'Asynchronous notification' "$work/psql.plain" &&
  grep -q "kept too" "$work/data.plain" && ! grep -q "rolled back" "$work/data.plain" &&
  [ "$(grep -c 'DATE (every' "$work/psql.plain")" = 3 ]
check "psql script: the script really exercised everything" $?

# strace: libpq's waits are the loop's now; the control has them
if command -v strace >/dev/null; then
  st() { strace -f -qq -e trace=poll,ppoll,epoll_wait,select,pselect6 -o "$work/st.$1" "${@:2}" \
           "$bin/psql" -X -d "${tag}_plain" -Atc 'SELECT pg_sleep(0.05)' >/dev/null 2>&1; }
  st plain
  st async "${ASYNC[@]}"
  blocking='(poll|ppoll)\(.*\], [0-9]+, (-1|[1-9][0-9]*|\{tv_sec=[0-9]+, tv_nsec=[0-9]+\}|NULL)'
  grep -Eq "$blocking" "$work/st.plain"
  check "strace control: plain psql waits in libpq's poll()" $?
  ! grep -E "$blocking" "$work/st.async" | grep -vq 'tv_sec=0, tv_nsec=0'
  check "strace: no blocking poll()/ppoll() left under PQAWAIT_ASYNC_MAIN" $?
  grep -q "epoll_wait" "$work/st.async"
  check "strace: psql waits in the loop's epoll_wait" $?
else
  check "strace installed" 1
fi
PQAWAIT_STATS=1 "${ASYNC[@]}" "$bin/psql" -X -d "${tag}_plain" -Atc 'SELECT 1' >/dev/null 2>"$work/stats"
grep -Eq '^pqawait: tasks=1 calls=[1-9][0-9]* waits=[1-9][0-9]* max_stall_ms=[0-9.]+ offloads=0' "$work/stats"
check "PQAWAIT_STATS=1: psql's line says tasks=1 calls>0 waits>0" $?
[ "$(grep -c '^pqawait:' "$work/stats")" = 1 ]
check "PQAWAIT_STATS=1: exactly one line (not one from pg_wrapper's Perl too)" $?
PQAWAIT_STATS=1 "${ASYNC[@]}" /usr/bin/psql -X -d "${tag}_plain" -Atc 'SELECT 1' >/dev/null 2>"$work/stats2"
[ "$(grep -c '^pqawait:' "$work/stats2")" = 1 ]
check "PQAWAIT_STATS=1 through pg_wrapper: one line, from psql" $?

# ---- Ctrl-C ----
sigint() { # label, launcher...
  local label=$1; shift
  "$@" "$bin/psql" -X -d "${tag}_plain" -c "SELECT pg_sleep(10) /* $tag-$label */" \
    >"$work/int.$label" 2>&1 &
  local pid=$! i
  for i in $(seq 100); do
    sql "${tag}_plain" -Atc "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%$tag-$label */'" \
      | grep -q '^1$' && break
    sleep 0.05
  done
  kill -INT "$pid"
  wait "$pid"
  echo "exit $?" >>"$work/int.$label"
}
sigint plain
sigint async "${ASYNC[@]}"
diff -u "$work/int.plain" "$work/int.async"
check "SIGINT during pg_sleep: identical (cancel request, 57014)" $?
grep -q "Cancel request sent" "$work/int.async" && grep -q "canceling statement due to user request" "$work/int.async"
check "SIGINT: psql said Cancel request sent and got the cancel error" $?

# ---- pg_dump -> pg_restore ----
src=${tag}_src
mkdb "$src"
sql "$src" >/dev/null <<'SQL'
CREATE TABLE t(a int PRIMARY KEY, b text);
INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
CREATE TABLE u AS SELECT a, b || b AS bb FROM t;
CREATE INDEX ON u (bb);
SELECT lo_from_bytea(0, 'hello'::bytea);
SELECT lo_from_bytea(0, decode(repeat('ab', 100000), 'hex'));
COMMENT ON TABLE t IS 'the source';
SQL
content() { # db -> normalised contents
  "$bin/pg_dump" -Fp --no-owner -d "$1" | grep -v -E '^(-- (Dumped|Started|Completed)|\\(un)?restrict )' |
    sed -E 's/lo_(open|create)\([0-9]+/lo_\1(OID/; s/LARGE OBJECT [0-9]+/LARGE OBJECT OID/'
  sql "$1" -Atc "SELECT md5(string_agg(md5(lo_get(oid)), ',' ORDER BY md5(lo_get(oid)))) FROM pg_largeobject_metadata"
}
content "$src" >"$work/src.content"
for sc in "c serial serial" "c serial par" "d par par" "d serial serial"; do
  set -- $sc
  fmt=$1 dj=$2 rj=$3
  for label in plain async; do
    launch=()
    [ $label = async ] && launch=("${ASYNC[@]}")
    arch=$work/arch.$fmt.$dj.$label
    dst=${tag}_dst_$label
    mkdb "$dst"
    dopt=() ropt=()
    [ "$dj" = par ] && dopt=(-j 3)
    [ "$rj" = par ] && ropt=(-j 3)
    "${launch[@]}" "$bin/pg_dump" -F"$fmt" "${dopt[@]}" -f "$arch" -d "$src" >"$work/dump.$label" 2>&1
    echo "dump exit $?" >>"$work/dump.$label"
    "${launch[@]}" "$bin/pg_restore" "${ropt[@]}" -d "$dst" "$arch" >>"$work/dump.$label" 2>&1
    echo "restore exit $?" >>"$work/dump.$label"
    content "$dst" >"$work/dst.$label"
  done
  diff -u "$work/dump.plain" "$work/dump.async" && diff -u "$work/src.content" "$work/dst.plain" &&
    diff -u "$work/dst.plain" "$work/dst.async"
  check "pg_dump -F$fmt ($dj) -> pg_restore ($rj): same messages, status and restored contents" $?
done
[ "$(grep -c "lo_open(" "$work/src.content")" = 2 ]
check "the dumped database had its two large objects" $?
rm -rf "$work/par"
"${ASYNC[@]}" PQAWAIT_STATS=1 "$bin/pg_dump" -Fd -j 3 -f "$work/par" -d "$src" 2>"$work/par.stats"
grep -Eq 'prog_waits=[1-9]' "$work/par.stats"
check "parallel pg_dump: the leader's select() on its workers was cooperative" $?
[ "$(grep -Ec '^pqawait: tasks=1 calls=[1-9]' "$work/par.stats")" -ge 4 ]
check "parallel pg_dump: the forked workers worked in their copy of main's task" $?

# ---- pgbench ----
bench=${tag}_bench
mkdb "$bench"
pgb() { # label, launcher...
  local label=$1; shift
  "$@" "$bin/pgbench" -q -i -s 1 "$bench" >/dev/null 2>&1
  echo "init exit $?" >"$work/pgb.$label"
  for j in 1 2; do
    "$@" "$bin/pgbench" -n --random-seed=7 -c 4 -j $j -t 100 "$bench" >"$work/pgb.out" 2>&1
    echo "run -j$j exit $?" >>"$work/pgb.$label"
    grep -E "^(number of transactions actually processed|number of failed transactions)" \
      "$work/pgb.out" >>"$work/pgb.$label"
  done
  sql "$bench" -Atc "SELECT sum(abalance), count(*) FROM pgbench_accounts" \
    -c "SELECT count(*), sum(delta) FROM pgbench_history" >>"$work/pgb.$label"
}
pgb plain
pgb async "${ASYNC[@]}" PQAWAIT_STATS=1
diff -u "$work/pgb.plain" "$work/pgb.async"
check "pgbench: init, every transaction processed, none failed, same balances" $?
grep -q "processed: 400/400" "$work/pgb.plain"
check "pgbench: the runs really ran" $?
"${ASYNC[@]}" PQAWAIT_STATS=1 "$bin/pgbench" -n -c 4 -j 1 -t 20 "$bench" >/dev/null 2>"$work/pgb.stats"
grep -Eq 'prog_waits=[1-9]' "$work/pgb.stats"
check "pgbench's own ppoll() waits were cooperative (prog_waits > 0)" $?

dropdbs "${tag}_plain" "${tag}_async" "$src" "${tag}_dst_plain" "${tag}_dst_async" "$bench"
finish
