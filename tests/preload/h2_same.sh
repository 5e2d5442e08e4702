#!/bin/bash
# h2_same.sh SHIMLIB -- unmodified third-party libev programs from Debian
# keep working under PQAWAIT_EV_CALLBACKS=1 (every callback a task):
# nghttpd (HTTP/2 server), nghttpx (proxy: a master process forking a
# worker process with two worker threads; ev_child, ev_signal, ev_async,
# ev_prepare, ev_loop_fork), h2load and nghttp (clients).  Two stacks run
# side by side, plain and preloaded; h2load rounds alternate between them:
# no failed request on either, and the preloaded stack keeps most of its
# speed (median of the rounds >= half the plain one's; the ratio is
# printed).  nghttp fetches a file through each proxy byte for byte; a
# graceful nghttpx shutdown (SIGQUIT) ends both the same way.
set -u
shim=$1
. "$(dirname "$0")/lib.sh"
for p in nghttpd nghttpx h2load nghttp; do
  command -v "$p" >/dev/null || { check "$p installed (script/bootstrap: nghttp2-*)" 1; finish; }
done
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$work"' EXIT
mkdir "$work/www"
head -c 4096 /dev/urandom >"$work/www/small"
head -c 100000 /dev/urandom >"$work/www/big"
PRE=(env LD_PRELOAD="$shim" PQAWAIT_EV_CALLBACKS=1)
# ports below the ephemeral range (tests/pg/port.sh says why), two distinct
. "$(dirname "${BASH_SOURCE[0]}")/../pg/port.sh"
wait_port() { for _ in $(seq 250); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.02; done; return 1; }
declare -A dport xport xpid
for mode in plain pre; do
  launch=()
  [ $mode = pre ] && launch=("${PRE[@]}")
  dport[$mode]=$(pick_port)
  while xport[$mode]=$(pick_port); [ "${xport[$mode]}" = "${dport[$mode]}" ]; do :; done
  "${launch[@]}" nghttpd --no-tls -d "$work/www" "${dport[$mode]}" >/dev/null 2>"$work/nghttpd.$mode" &
  pids+=($!)
  "${launch[@]}" nghttpx --conf=/dev/null -f"127.0.0.1,${xport[$mode]};no-tls" -b"127.0.0.1,${dport[$mode]};;proto=h2" \
    --workers=2 --log-level=WARN --accesslog-file=/dev/null \
    >"$work/nghttpx-out.$mode" 2>&1 &
  xpid[$mode]=$!
  pids+=($!)
  wait_port "${dport[$mode]}" && wait_port "${xport[$mode]}"
  check "$mode: nghttpd and nghttpx listen" $?
done

# byte for byte through the proxy
for mode in plain pre; do
  launch=()
  [ $mode = pre ] && launch=("${PRE[@]}")
  "${launch[@]}" nghttp "http://127.0.0.1:${xport[$mode]}/big" >"$work/got.$mode" 2>"$work/nghttp.$mode"
  cmp -s "$work/www/big" "$work/got.$mode"
  check "$mode: nghttp through nghttpx got the file byte for byte" $?
done

# interleaved h2load rounds
rps() { sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$1"; }
for round in 1 2 3 4 5; do
  for mode in plain pre; do
    launch=()
    [ $mode = pre ] && launch=("${PRE[@]}")
    "${launch[@]}" h2load -n 2000 -c 8 -m 8 "http://127.0.0.1:${dport[$mode]}/small" >"$work/h.$mode" 2>&1
    rps "$work/h.$mode" >>"$work/direct.$mode"
    grep -E '^requests:' "$work/h.$mode" >>"$work/req.$mode"
    "${launch[@]}" h2load -n 300 -c 6 -m 4 -t 2 "http://127.0.0.1:${xport[$mode]}/big" >"$work/h.$mode" 2>&1
    rps "$work/h.$mode" >>"$work/proxy.$mode"
    grep -E '^requests:' "$work/h.$mode" >>"$work/req.$mode"
  done
done
for mode in plain pre; do
  n=$(grep -c ' 0 failed, 0 errored, 0 timeout$' "$work/req.$mode")
  [ "$n" = 10 ] && ! grep -qv -E 'succeeded, 0 failed, 0 errored, 0 timeout$' "$work/req.$mode" &&
    ! grep -E '^requests:' "$work/req.$mode" | grep -qv -E '^requests: ([0-9]+) total, \1 started, \1 done, \1 succeeded'
  check "$mode: h2load, 10 runs, every request succeeded" $?
done
median() { sort -g "$1" | sed -n 3p; }
for kind in direct proxy; do
  a=$(median "$work/$kind.plain") b=$(median "$work/$kind.pre")
  ratio=$(python3 -c "print('%.2f' % (float('$b') / float('$a')))" 2>/dev/null || echo 0)
  echo "h2load $kind: plain $a req/s, PQAWAIT_EV_CALLBACKS $b req/s, ratio $ratio"
  python3 -c "import sys; sys.exit(not float('$ratio') >= 0.5)"
  check "h2load $kind: the preloaded stack keeps most of its speed (ratio $ratio)" $?
done

# graceful shutdown of the proxy (master signals its worker, ev_child)
for mode in plain pre; do
  kill -QUIT "${xpid[$mode]}"
  wait "${xpid[$mode]}"
  echo "exit $?" >"$work/quit.$mode"
done
diff "$work/quit.plain" "$work/quit.pre" && grep -q "exit 0" "$work/quit.pre"
rc=$?
check "nghttpx: graceful shutdown (SIGQUIT) ends both the same way ($(cat "$work/quit.pre"))" $rc
! grep -qiE "error|fatal" "$work/nghttpx-out.pre" "$work/nghttpd.pre"
check "no error in the preloaded servers' logs" $?
[ "$pqa_failures" = 0 ] || tail -n 5 "$work"/nghttpx* "$work"/nghttpd.* "$work"/nghttp.*
finish
