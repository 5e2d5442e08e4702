#!/usr/bin/env bash
# test_server.sh -- pqawait-server end to end, against a real PostgreSQL.
#
#   test_server.sh SERVER HTTP_LOAD [full|small]
#
# Run through tests/pg/with-pg (PQAWAIT_TEST_* name the server).  Every
# scenario of the issue, each checked exactly -- every response body by
# http_load, the database's own numbers by psql:
#   1. --init seeds the schema
#   2. 1,000 concurrent clients through a pool of 20 all get correct answers
#      (and the server never sees more than 20 of the pool's backends)
#   3. concurrent takes conserve stock exactly, never oversell, and every 200
#      is one committed order; the remaining stock reported is serial
#   4. slow requests overlap; the loop does not stall meanwhile
#   5. pipelined requests come back in order (and run concurrently)
#   6. bad requests get their status codes, and the connection is closed
#   7. killing the pool's backends mid-load costs only the requests then in
#      flight (503), and the service recovers by itself
#   8. SIGTERM under load: exit 0, in-flight requests finished, no
#      acknowledged order lost, no order without its acknowledgement
#   9. --threads 2: two loops, both serving (SO_REUSEPORT), one pool each
#  10. --blocking: the same handlers one request at a time (the contrast)
#  11. a request after "Connection: close" never runs; SIGTERM amid pipelined
#      requests answers every one already read
# "small" (sanitizer builds) shrinks the loads.  The last line is a
# Check-style summary, which script/count-tests.py counts.
set -uo pipefail

server=$1 load=$2 scale=${3:-full}
pass=0 fail=0
tmp=$(mktemp -d /tmp/pqa-srvtest.XXXXXX)
db=pqa_srv_$$
app=pqa_srv_$$
spid=""

if [ "$scale" = small ]; then
  clients=200 requests=3 takers=50 sigterm_clients=30
else
  clients=1000 requests=5 takers=200 sigterm_clients=100
fi

say() { printf '%s\n' "$*"; }
ok() { pass=$((pass + 1)); say "ok   - $*"; }
bad() { fail=$((fail + 1)); say "FAIL - $*"; }
# check DESCRIPTION COMMAND...: ok if the command succeeds
check() { local d=$1; shift; if "$@"; then ok "$d"; else bad "$d"; fi; }

psqlc=(psql -X -qAt -v ON_ERROR_STOP=1 -h "$PQAWAIT_TEST_HOST" -p "$PQAWAIT_TEST_PORT" -U pqa_trust)
q() { "${psqlc[@]}" -d "$db" -c "$1"; }
conninfo="host=$PQAWAIT_TEST_HOST port=$PQAWAIT_TEST_PORT dbname=$db user=pqa_trust application_name=$app"

cleanup() {
  [ -n "$spid" ] && kill -KILL "$spid" 2>/dev/null
  timeout 30 "${psqlc[@]}" -d postgres -c "drop database if exists $db with (force)" >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT

# start_server ARGS...: in the background; sets spid and port
start_server() {
  "$server" --listen 127.0.0.1:0 --db "$conninfo" "$@" >"$tmp/server.out" 2>"$tmp/server.err" &
  spid=$!
  port=""
  for _ in $(seq 1 200); do
    port=$(sed -n 's/^listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$tmp/server.out")
    [ -n "$port" ] && return 0
    kill -0 "$spid" 2>/dev/null || break
    sleep 0.05
  done
  say "server did not start: $(cat "$tmp/server.err")"
  return 1
}

# stop_server: SIGTERM, wait; sets src (its exit status) and stop_secs
stop_server() {
  local t0=$SECONDS
  kill -TERM "$spid"
  wait "$spid"
  src=$?
  stop_secs=$((SECONDS - t0))
  spid=""
}

# field NAME LINE: the value of NAME=... in http_load's output line
field() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$2"; }
stats() { curl -s "http://127.0.0.1:$port/stats"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
lt() { python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) else 1)" "$1" "$2"; }

"${psqlc[@]}" -d postgres -c "create database $db" >/dev/null || { say "cannot create $db"; exit 1; }

# ---- 1. --init ------------------------------------------------------------------
"$server" --db "$conninfo" --init
check "--init exits 0" [ $? -eq 0 ]
check "--init seeds 10000 items of qty 100, no orders" \
  [ "$(q "select count(*), sum(qty), (select count(*) from orders) from items")" = "10000|1000000|0" ]

start_server --pool 20 || exit 1

# ---- 2. a thousand clients -------------------------------------------------------------
out=$("$load" "$port" items clients=$clients requests=$requests)
say "  items: $out"
check "$clients concurrent clients: every answer exact ($((clients * requests)) requests)" \
  test "$(field ok "$out")" = $((clients * requests)) -a "$(field bad "$out")" = 0
check "  ... none failed or dropped" [ "$(field s503 "$out")$(field dropped "$out")" = 00 ]
check "  ... through at most 20 backends (server's count)" \
  [ "$(q "select count(*) <= 20 from pg_stat_activity where application_name = '$app'")" = t ]
check "  ... the pool opened 20 connections, no more" [ "$(stats | json 'd["pool"]["opened"]')" = 20 ]

# ---- 3. concurrent takes ---------------------------------------------------------------
out=$("$load" "$port" take clients=$takers requests=10 lo=1 hi=5 qmax=5 ack="$tmp/ack" seed=7)
say "  takes: $out"
check "takes: no wrong answer, no 503" [ "$(field bad "$out")$(field s503 "$out")$(field sother "$out")" = 000 ]
check "  ... demand beyond stock got 409s" [ "$(field s409 "$out")" -gt 0 ]
check "  ... every 200 is one order row" \
  [ "$(q "select count(*) from orders")" = "$(field s200 "$out")" ]
check "  ... stock + orders = 100 per item, never below 0" \
  [ "$(q "select count(*) from items i where id between 1 and 5 and i.qty >= 0 and
          i.qty + (select coalesce(sum(qty), 0) from orders o where o.item_id = i.id) = 100")" = 5 ]
check "  ... the acknowledged quantities are exactly the orders" python3 - "$tmp/ack" \
  "$(q "select item_id || ':' || sum(qty) from orders group by item_id order by 1")" <<'EOF'
import sys, collections
acked = collections.Counter()
chains = collections.defaultdict(list)
for line in open(sys.argv[1]):
    i, qty, left = map(int, line.split())
    acked[i] += qty
    chains[i].append((left, qty))
db = dict(map(int, kv.split(':')) for kv in sys.argv[2].split())
ok = dict(acked) == db
# serial: sorted by what was left, each take left exactly the previous minus its qty
for i, ch in chains.items():
    prev = 100
    for left, qty in sorted(ch, reverse=True):
        ok &= left == prev - qty
        prev = left
sys.exit(0 if ok else 1)
EOF

# ---- 4. slow requests overlap --------------------------------------------------------------
stall0=$(curl -s "http://127.0.0.1:$port/stats?reset=stall" | json 'd["longest_stall_ms"]')
out=$("$load" "$port" slow clients=20 ms=500)
say "  slow: $out"
check "20 x /slow?ms=500 all answered" [ "$(field ok "$out")" = 20 ]
check "  ... together in under 1.5 s (one after another: 10 s)" lt "$(field elapsed "$out")" 1.5
stall=$(stats | json 'd["longest_stall_ms"]')
check "  ... the loop never stalled for 50 ms meanwhile (longest $stall ms; before: $stall0)" \
  lt "$stall" 50

# ---- 5. pipelining ----------------------------------------------------------------------------
out=$("$load" "$port" pipeline depth=50)
say "  pipeline: $out"
check "50 pipelined requests, answered in order" [ "$(field ok "$out")$(field bad "$out")" = 500 ]
check "  ... run concurrently (25 sleeps of 5..250 ms: 3.2 s in a row)" lt "$(field elapsed "$out")" 2.0

# ---- 6. bad requests -----------------------------------------------------------------------------
check "bad requests get their status codes and the connection is closed" python3 - "$port" <<'EOF'
import re, socket, sys
port = int(sys.argv[1])
def exchange(data):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(data)
    out = b""
    while True:
        d = s.recv(65536)
        if not d:
            break  # closed by the server: required after an error
        out += d
    s.close()
    return out
H = b"Host: t\r\n"
cases = [
    (b"GARBAGE\r\n\r\n", [400]),
    (b"GET /health HTTP/1.1\r\n\r\n", [400]),                       # no Host
    (b"GET health HTTP/1.1\r\n" + H + b"\r\n", [400]),              # not origin-form
    (b"GET /health HTTP/1.1\r\n" + H + b"Bad Header\r\n\r\n", [400]),
    (b"GET /health HTTP/1.1\r\n" + H + b" folded\r\n\r\n", [400]),
    (b"GET /health HTTP/2.0\r\n" + H + b"\r\n", [505]),
    (b"BREW /pot HTTP/1.1\r\n" + H + b"\r\n", [501]),
    (b"POST /items/1/take HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n", [501]),
    (b"POST /items/1/take HTTP/1.1\r\n" + H + b"Content-Length: 999999\r\n\r\n", [413]),
    (b"POST /items/1/take HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", [400]),
    (b"POST /items/1/take HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", [400]),
    (b"GET /health HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n", [431]),
    (b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\n" + H + b"\r\n", [414]),
    # well-formed, refused by the application (then keep-alive: close asked)
    (b"GET /nope HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n", [404]),
    (b"POST /health HTTP/1.1\r\n" + H + b"Content-Length: 0\r\nConnection: close\r\n\r\n", [405]),
    (b"GET /items/abc HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n", [404]),
    (b"GET /items/99999 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n", [404]),
    (b"POST /items/1/take HTTP/1.1\r\n" + H + b"Content-Length: 7\r\nConnection: close\r\n\r\n{qty:1}", [400]),
    (b"GET /slow?ms=-5 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n", [400]),
    # a good request before a bad one is still answered, first
    (b"GET /health HTTP/1.1\r\n" + H + b"\r\nGARBAGE\r\n\r\nGET /health HTTP/1.1\r\n" + H + b"\r\n",
     [200, 400]),
]
ok = True
for data, want in cases:
    out = exchange(data)
    got = [int(c) for c in re.findall(rb"HTTP/1\.1 (\d{3}) ", out)]
    if got != want:
        print("  %r...: got %s, want %s" % (data[:40], got, want))
        ok = False
sys.exit(0 if ok else 1)
EOF

# ---- 7. backends killed mid-load ------------------------------------------------------------
t_load=$(date +%s.%N)
"$load" "$port" items clients=50 seconds=3 >"$tmp/kill.out" &
lpid=$!
sleep 1
t_kill0=$(date +%s.%N)
killed=$(q "select count(pg_terminate_backend(pid)) from pg_stat_activity where application_name = '$app'")
t_kill1=$(date +%s.%N)
wait "$lpid"
out=$(cat "$tmp/kill.out")
k0=$(python3 -c "print('%.3f' % ($t_kill0 - $t_load))") k1=$(python3 -c "print('%.3f' % ($t_kill1 - $t_load))")
say "  killed $killed backends at $k0 .. $k1 s: $out"
check "backends killed mid-load: no wrong answer, nothing dropped" \
  [ "$(field bad "$out")$(field sother "$out")$(field dropped "$out")" = 000 ]
check "  ... only requests then in flight failed: $(field s503 "$out") <= $killed" \
  [ "$(field s503 "$out")" -le "$killed" ]
f503=$(field first503 "$out") l503=$(field last503 "$out")
check "  ... and only right then (503s at $f503 .. $l503 s, kill at $k0 .. $k1 s)" \
  python3 -c "import sys; f,l,a,b=map(float,sys.argv[1:]); sys.exit(0 if f<0 or (f>=a-0.05 and l<b+0.5) else 1)" \
  "$f503" "$l503" "$k0" "$k1"
out=$("$load" "$port" items clients=20 requests=20)
check "  ... the service recovered by itself: $out" [ "$(field ok "$out")" = 400 ]
check "  ... the pool replaced them (lost $(stats | json 'd["pool"]["lost"]'), size $(stats | json 'd["pool"]["size"]'))" \
  [ "$(stats | json 'd["pool"]["lost"] >= 1 and d["pool"]["size"] == 20')" = True ]

# ---- 8. SIGTERM under load -------------------------------------------------------------------
"$load" "$port" take clients=$sigterm_clients seconds=6 lo=100 hi=109 qmax=2 ack="$tmp/ack2" \
  >"$tmp/term.out" &
lpid=$!
sleep 1.5
stop_server
wait "$lpid"
out=$(cat "$tmp/term.out")
say "  SIGTERM after 1.5 s, server stopped in ${stop_secs} s: $out"
check "SIGTERM under load: exit 0 within 5 s" test "$src" = 0 -a "$stop_secs" -le 5
check "  ... no wrong answer" [ "$(field bad "$out")$(field sother "$out")" = 00 ]
check "  ... orders taken meanwhile" [ "$(field s200 "$out")" -gt 0 ]
check "  ... every acknowledged order is in the database, and no other" \
  [ "$(q "select count(*) from orders where item_id between 100 and 109")" = "$(wc -l <"$tmp/ack2")" ]
check "  ... acknowledged quantities = committed quantities = stock taken" \
  test "$(q "select coalesce(sum(qty), 0) from orders where item_id between 100 and 109")" = \
    "$(awk '{s += $2} END {print s + 0}' "$tmp/ack2")" -a \
    "$(q "select sum(100 - qty) from items where id between 100 and 109")" = \
    "$(awk '{s += $2} END {print s + 0}' "$tmp/ack2")"
check "  ... the pool's connections are gone" \
  [ "$(q "select count(*) from pg_stat_activity where application_name = '$app'")" = 0 ]

# ---- 9. --threads 2 ---------------------------------------------------------------------------
start_server --pool 5 --threads 2 || exit 1
out=$("$load" "$port" items clients=$((clients / 5)) requests=$requests)
check "--threads 2: every answer exact ($out)" \
  test "$(field ok "$out")" = $((clients / 5 * requests)) -a "$(field bad "$out")" = 0
st=$(stats)
check "  ... both loops served ($(json 'd["per_thread_requests"]' <<<"$st"))" \
  [ "$(json 'd["threads"] == 2 and min(d["per_thread_requests"]) > 0' <<<"$st")" = True ]
check "  ... a pool each ($(json 'd["pool"]["size"]' <<<"$st") connections)" \
  [ "$(json 'd["pool"]["size"]' <<<"$st")" = 10 ]
stop_server
check "  ... SIGTERM: exit 0" [ "$src" = 0 ]

# ---- 10. --blocking ---------------------------------------------------------------------------
start_server --blocking || exit 1
out=$("$load" "$port" slow clients=4 ms=200)
check "--blocking: answers right ($out)" [ "$(field ok "$out")" = 4 ]
check "  ... one at a time: 4 x 200 ms take >= 0.78 s" lt 0.78 "$(field elapsed "$out")"
check "  ... and stall the loop (longest $(stats | json 'd["longest_stall_ms"]') ms)" \
  lt 190 "$(stats | json 'd["longest_stall_ms"]')"
out=$("$load" "$port" items clients=10 requests=10)
check "  ... items exact ($out)" [ "$(field ok "$out")" = 100 ]
stop_server
check "  ... SIGTERM: exit 0" [ "$src" = 0 ]

# ---- 11. what was read is answered, what was not answered never ran -------------------------
# A request with "Connection: close" is the last one: a take pipelined behind it is not run.
# SIGTERM while pipelined requests run: every one already read is finished and answered.
start_server --pool 5 || exit 1
check "a take pipelined behind Connection: close is neither run nor answered" python3 - "$port" <<'EOF'
import re, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"GET /slow?ms=100 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
          b"POST /items/300/take HTTP/1.1\r\nHost: t\r\nContent-Length: 9\r\n\r\n{\"qty\":1}")
out = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    out += d
codes = re.findall(rb"HTTP/1\.1 (\d{3}) ", out)
sys.exit(0 if codes == [b"200"] else 1)
EOF
check "  ... no order for it" [ "$(q "select count(*) from orders where item_id = 300")" = 0 ]
python3 - "$port" "$tmp/pipeterm.sent" >"$tmp/pipeterm.out" <<'EOF' &
import re, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
req = b"GET /slow?ms=600 HTTP/1.1\r\nHost: t\r\n\r\n"
for i in range(301, 306):
    req += b"POST /items/%d/take HTTP/1.1\r\nHost: t\r\nContent-Length: 9\r\n\r\n{\"qty\":1}" % i
s.sendall(req)
open(sys.argv[2], "w").close()  # sent: now the shell may stop the server
out = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    out += d
print(" ".join(c.decode() for c in re.findall(rb"HTTP/1\.1 (\d{3}) ", out)))
EOF
ppid=$!
for _ in $(seq 1 200); do [ -e "$tmp/pipeterm.sent" ] && break; sleep 0.025; done
sleep 0.3 # the requests are read; the /slow (600 ms) runs
stop_server
wait "$ppid"
codes=$(cat "$tmp/pipeterm.out")
check "SIGTERM amid pipelined requests: all six read were answered ($codes), exit $src" \
  [ "$codes" = "200 200 200 200 200 200" -a "$src" = 0 ]
check "  ... and their five orders are in the database" \
  [ "$(q "select count(*) from orders where item_id between 301 and 305")" = 5 ]

total=$((pass + fail))
pct=$(( total ? 100 * pass / total : 0 ))
say "$pct%: Checks: $total, Failures: $fail, Errors: 0"
[ "$fail" -eq 0 ]
