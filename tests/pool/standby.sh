#!/usr/bin/env bash
# standby.sh -- a private primary with a streaming standby, for the pool's
# multi-host / target_session_attrs test.
#
#   standby.sh start DIR   primary (tests/pg/pgserver in DIR/primary) plus a
#                          standby made with pg_basebackup -R, started on a
#                          port of its own; writes DIR/env:
#                            PQA_PRIMARY_HOST PQA_PRIMARY_PORT
#                            PQA_STANDBY_HOST PQA_STANDBY_PORT
#   standby.sh stop DIR    stop both and remove everything
#
# Why a script of its own: tests/pg/pgserver starts single servers (another
# part of the tests may grow a standby command there; this one keeps to its
# own files).  The standby's data directory lives beside the primary's, so
# pgserver's own clean-up removes it; its socket directory is ours.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: standby.sh start|stop DIR" >&2; exit 2; }
cmd=$1 dir=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
pgserver=$here/../pg/pgserver
while read -r v; do unset "$v"; done < <(compgen -e | grep '^PG' || true)

as_srv() { if [ -n "$PQA_RUNAS" ]; then (cd / && runuser -u "$PQA_RUNAS" -- "$@"); else (cd / && "$@"); fi; }

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

do_stop() {
  [ -d "$dir" ] || return 0
  if [ -f "$dir/primary/env" ]; then
    # shellcheck disable=SC1091
    . "$dir/primary/env"
    sdata=$(dirname "$PQA_DATA")/standby
    if [ -f "$sdata/postmaster.pid" ]; then
      as_srv "$PQA_BINDIR/pg_ctl" stop -D "$sdata" -m immediate -w -t 20 >/dev/null 2>&1 || true
    fi
  fi
  if [ -f "$dir/env" ]; then
    # shellcheck disable=SC1091
    . "$dir/env"
    case ${PQA_STANDBY_HOST:-} in /tmp/pqa-sock.*) rm -rf -- "$PQA_STANDBY_HOST" ;; esac
  fi
  "$pgserver" stop "$dir/primary" >/dev/null 2>&1 || true
  rm -rf -- "$dir"
}

do_start() {
  mkdir -p "$dir"
  trap 'rc=$?; [ $rc -eq 0 ] || do_stop; exit $rc' EXIT
  "$pgserver" start "$dir/primary" >/dev/null
  # shellcheck disable=SC1091
  . "$dir/primary/env"
  local phost=$PQAWAIT_TEST_HOST pport=$PQAWAIT_TEST_PORT
  echo "local replication all trust" >> "$PQA_DATA/pg_hba.conf"
  as_srv "$PQA_BINDIR/pg_ctl" reload -D "$PQA_DATA" >/dev/null
  local sdata sock sport
  sdata=$(dirname "$PQA_DATA")/standby
  sock=$(mktemp -d /tmp/pqa-sock.XXXXXX)
  chmod 755 "$sock"
  [ -z "$PQA_RUNAS" ] || chown "$PQA_RUNAS" "$sock"
  for _ in $(seq 1 100); do
    sport=$((20000 + RANDOM % 20001))
    port_free "$sport" && break
  done
  {
    echo "export PQA_PRIMARY_HOST='$phost'"
    echo "export PQA_PRIMARY_PORT='$pport'"
    echo "export PQA_STANDBY_HOST='$sock'"
    echo "export PQA_STANDBY_PORT='$sport'"
  } > "$dir/env"
  as_srv "$PQA_BINDIR/pg_basebackup" -h "$phost" -p "$pport" -U postgres -D "$sdata" \
    -R -X stream -c fast >/dev/null
  # the copied configuration names the primary's port and socket directory
  cat >> "$sdata/pqawait.conf" <<CONF
port = $sport
unix_socket_directories = '$sock'
CONF
  as_srv "$PQA_BINDIR/pg_ctl" start -D "$sdata" -w -t 60 -l "$sdata.log" >/dev/null
  # ready only once it replays: a query on the standby answers "t"
  for _ in $(seq 1 100); do
    if [ "$("$PQA_BINDIR/psql" -X -qAt -h "$sock" -p "$sport" -U postgres -d pqawait \
             -c 'select pg_is_in_recovery()' 2>/dev/null)" = t ]; then
      trap - EXIT
      return 0
    fi
    sleep 0.1
  done
  echo "standby.sh: the standby did not come up" >&2
  exit 1
}

case $cmd in
  start) do_start ;;
  stop) do_stop ;;
  *) echo "standby.sh: unknown command $cmd" >&2; exit 2 ;;
esac
