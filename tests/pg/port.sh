# port.sh -- sourced by pgserver and pgbouncer: a free TCP port for a
# private server on 127.0.0.1.
#
# Why below the ephemeral range: a port that some client socket holds as its
# source port (any connect() takes one from ip_local_port_range, 32768-60999
# by default) cannot be bound by a listener on the same address, even with
# SO_REUSEADDR, and no probe sees it (nothing listens there).  The tests
# open thousands of short TCP connections to 127.0.0.1 while other tests
# start servers, so a pick inside that range loses the bind now and then
# (CI once: a standby that did not start).  Picking from 20000 up to just
# below the range leaves only a real listener to race with, which the probe
# sees and the callers' retries cover.

# Is anything listening on 127.0.0.1:$1?  (ss when present, else a connect.)
port_free() {
  local p=$1
  if command -v ss >/dev/null 2>&1; then
    ss -Hltn "sport = :$p" 2>/dev/null | grep -q . && return 1
  fi
  ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null
}

# The range to pick from: 20000 up to the ephemeral range's start, or above
# its end when the range starts too low to leave 1,000 ports below it.
port_range() {
  local lo=32768 hi=60999
  read -r lo hi < /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
  if [ "$lo" -ge 21000 ]; then echo "20000 $((lo - 1))"
  elif [ "$hi" -le 64535 ]; then echo "$((hi + 1)) 65535"
  else echo "20000 40000"; fi
}

# Print a port nothing listens on (200 tries), or fail.
pick_port() {
  local _ p from to
  read -r from to < <(port_range)
  for _ in $(seq 1 200); do
    p=$((from + (RANDOM * 32768 + RANDOM) % (to - from + 1)))
    if port_free "$p"; then echo "$p"; return 0; fi
  done
  echo "no free port found in $from-$to" >&2
  return 1
}
