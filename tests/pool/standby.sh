#!/usr/bin/env bash
# standby.sh -- a private primary with a streaming standby, for the pool's
# multi-host / target_session_attrs test.
#
#   standby.sh start DIR   primary (tests/pg/pgserver start DIR/primary) and
#                          its streaming standby (pgserver standby, in
#                          DIR/standby); writes DIR/env:
#                            PQA_PRIMARY_HOST PQA_PRIMARY_PORT
#                            PQA_STANDBY_HOST PQA_STANDBY_PORT
#   standby.sh stop DIR    stop both and remove everything
#
# Why over pgserver and not a standby of its own: this script used to take a
# base backup and start the standby itself, on a port probed once and never
# retried; under script/test's parallel phases another test's server took
# that port between the probe and the bind and the standby did not start
# (CI: "pool-standby FAIL, no Check summary" after 3.8 s).  pgserver's
# standby retries the port, waits until the standby streams, and prints the
# server's log when it cannot start.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: standby.sh start|stop DIR" >&2; exit 2; }
cmd=$1 dir=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
pgserver=$here/../pg/pgserver

do_stop() {
  [ -d "$dir" ] || return 0
  "$pgserver" stop "$dir/standby" >/dev/null 2>&1 || true
  "$pgserver" stop "$dir/primary" >/dev/null 2>&1 || true
  rm -rf -- "$dir"
}

# One server's host and port, as `pgserver env` prints them.
addr() {
  (
    eval "$("$pgserver" env "$1")"
    printf "'%s' '%s'" "$PQAWAIT_TEST_HOST" "$PQAWAIT_TEST_PORT"
  )
}

do_start() {
  mkdir -p "$dir"
  trap 'rc=$?; [ $rc -eq 0 ] || do_stop; exit $rc' EXIT
  "$pgserver" start "$dir/primary" >/dev/null
  "$pgserver" standby "$dir/primary" "$dir/standby" >/dev/null
  local p s
  p=$(addr "$dir/primary")
  s=$(addr "$dir/standby")
  {
    eval "set -- $p"; echo "export PQA_PRIMARY_HOST='$1'"; echo "export PQA_PRIMARY_PORT='$2'"
    eval "set -- $s"; echo "export PQA_STANDBY_HOST='$1'"; echo "export PQA_STANDBY_PORT='$2'"
  } > "$dir/env"
  trap - EXIT
}

case $cmd in
  start) do_start ;;
  stop) do_stop ;;
  *) echo "standby.sh: unknown command $cmd" >&2; exit 2 ;;
esac
