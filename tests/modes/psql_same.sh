#!/bin/sh
# psql_same.sh SHIMLIB -- psql behaves identically with libpqawait preloaded:
# the same script (queries, an error, COPY out and in, \lo_import and
# \lo_export, a notice) gives byte-identical output and exit status.
set -u
shim=$1
: "${PQAWAIT_TEST_HOST:?run through tests/pg/with-pg}"
command -v psql >/dev/null || { echo "psql not installed"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -c 100000 /dev/urandom | od -An -tx1 >"$work/blob"
cat >"$work/script.sql" <<SQL
\set ON_ERROR_STOP 0
SELECT 1 AS one, 'x' AS two;
SELECT * FROM generate_series(1, 5) g;
SELECT 1/0;
DO \$\$ BEGIN RAISE NOTICE 'hello from the server'; END \$\$;
CREATE TEMP TABLE t(a int, b text);
\copy t from stdin
1	one
2	two
\.
\copy t to stdout
BEGIN;
\lo_import $work/blob
\lo_export :LASTOID $work/blob.out
ROLLBACK;
SELECT count(*) FROM t;
SQL
run() {
  psql -X -h "$PQAWAIT_TEST_HOST" -p "$PQAWAIT_TEST_PORT" -U pqa_trust -d "$PQAWAIT_TEST_DB" \
       -f "$work/script.sql" >"$work/$1.out" 2>&1
  echo "exit $?" >>"$work/$1.out"
  # a new large object's OID is the one thing that differs run to run
  sed -i 's/^lo_import [0-9]*$/lo_import OID/' "$work/$1.out"
  cmp -s "$work/blob" "$work/blob.out" && echo "lo roundtrip ok" >>"$work/$1.out"
  rm -f "$work/blob.out"
}
run plain
LD_PRELOAD=$shim run preload
if ! diff -u "$work/plain.out" "$work/preload.out"; then
  echo "FAIL: psql output differs with libpqawait preloaded"; exit 1
fi
grep -q "lo roundtrip ok" "$work/plain.out" || { echo "FAIL: script did not run"; cat "$work/plain.out"; exit 1; }
grep -q "division by zero" "$work/plain.out" || { echo "FAIL: script did not run"; exit 1; }
# the preloaded shim was really loaded into psql
LD_PRELOAD=$shim LD_DEBUG=files psql -X -h "$PQAWAIT_TEST_HOST" -p "$PQAWAIT_TEST_PORT" -U pqa_trust \
  -d "$PQAWAIT_TEST_DB" -c 'select 1' 2>&1 | grep -q "libpqawait" || { echo "FAIL: shim not loaded"; exit 1; }
echo "psql output identical with and without LD_PRELOAD ($(wc -l <"$work/plain.out") lines)"
