#!/usr/bin/env bash
# test-port.sh -- port.sh's pick (used by pgserver and pgbouncer) never
# lands where a client's source port could take it, and the premise holds:
# on this kernel a connect()'s source port blocks a SO_REUSEADDR listener's
# bind on the same address (what made a CI standby fail to start when the
# pick was 20000-40000, a third of it inside 32768-60999).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/port.sh"
read -r elo ehi < /proc/sys/net/ipv4/ip_local_port_range
fail=0
for _ in $(seq 1 100); do
  p=$(pick_port)
  if [ "$p" -ge "$elo" ] && [ "$p" -le "$ehi" ]; then
    echo "FAIL: picked $p, inside the ephemeral range $elo-$ehi"; fail=1; break
  fi
  [ "$p" -ge 1024 ] || { echo "FAIL: picked $p, a privileged port"; fail=1; break; }
done
# the premise: a listener cannot bind a port a client holds as its source
python3 - <<'PY' || fail=1
import socket, sys
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
c = socket.create_connection(l.getsockname()); p = c.getsockname()[1]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(('127.0.0.1', p))
except OSError:
    sys.exit(0)
print('note: this kernel let a listener bind client port %d (the rule is moot here)' % p)
PY
[ "$fail" = 0 ] && echo "ok: 100 picks outside $elo-$ehi"
exit "$fail"
