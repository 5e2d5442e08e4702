#!/usr/bin/env bash
# pgctl.sh -- stop or start (in place: same port, same data) a server that
# tests/pg/pgserver made, for the pool's server-restart test.
#
#   pgctl.sh stop DIR    fast shutdown: every session is terminated
#   pgctl.sh start DIR   start it again on the same port
#
# pgserver itself only starts fresh servers and stops them for good; a
# restart must keep the port so that the pool's conninfo stays valid.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: pgctl.sh stop|start DIR" >&2; exit 2; }
cmd=$1 dir=$2
while read -r v; do unset "$v"; done < <(compgen -e | grep '^PG' || true)
# shellcheck disable=SC1091
. "$dir/env"
data=$PQA_DATA bindir=$PQA_BINDIR runas=$PQA_RUNAS
log=$(dirname "$data")/log
as_srv() { if [ -n "$runas" ]; then (cd / && runuser -u "$runas" -- "$@"); else (cd / && "$@"); fi; }
case $cmd in
  stop)  as_srv "$bindir/pg_ctl" stop -D "$data" -m fast -w -t 30 >/dev/null ;;
  start) as_srv "$bindir/pg_ctl" start -D "$data" -w -t 60 -l "$log" >/dev/null ;;
  *) echo "pgctl.sh: unknown command $cmd" >&2; exit 2 ;;
esac
