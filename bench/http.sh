# shellcheck shell=bash disable=SC2154  # sourced by script/bench, which sets the globals
# bench/http.sh -- sourced by script/bench: the HTTP service of
# examples/server under wrk, the server issue's cell of the matrix.
#
# pqawait-server runs the same blocking libpq handlers two ways: as one task
# per request with connections from a pqawait pool ("tasks"), and inline in
# the libev callback, one request at a time per worker ("blocking", what a
# libev server gets from blocking libpq without pqawait).  Each with
# --threads 1 and 2; rounds interleaved (tasks/1 blocking/1 tasks/2
# blocking/2, then again) like the throughput cells.  wrk -t2 -c64 sends
# GET /items/ID (bench/http-items.lua); one line per run in $raw:
# kind=http variant=tasks|blocking threads=T round=R rps=.. p50_ms=..
# p99_ms=.. non2xx=.. sockerr=.. status=ok|failed.  A run with a non-2xx
# answer or a socket error is recorded as failed, never as a number.
#
# Uses from script/bench: $bin (its parent has examples/), $tmp, $raw,
# $rounds, $warmup, $duration, $pg_host, $pg_port, record, progress.

http_variants="tasks/1 blocking/1 tasks/2 blocking/2"

http_count() { [ "$have_wrk" = 1 ] && echo $((4 * rounds)) || echo 0; }

# http_ms "1.23ms" -> 1.23 (wrk prints us, ms or s)
http_ms() {
    awk -v x="$1" 'BEGIN { v = x + 0
        if (x ~ /us$/) v /= 1000; else if (x ~ /[0-9]s$/ && x !~ /ms$/) v *= 1000
        printf "%.3f", v }'
}

http_run() {
    local v=$1 threads=$2 r=$3 srv=$build/examples/pqawait-server db port="" spid out rps p50 p99 non2xx sockerr
    local flags=(--pool 16)
    [ "$v" = blocking ] && flags=(--blocking)
    db="host='$pg_host' port=$pg_port user=pqa_trust dbname=pqawait"
    "$srv" --listen 127.0.0.1:0 --db "$db" --threads "$threads" "${flags[@]}" \
        >"$tmp/http.out" 2>"$tmp/http.err" &
    spid=$!
    for _ in $(seq 1 200); do
        port=$(sed -n 's/^listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$tmp/http.out")
        [ -n "$port" ] && break
        sleep 0.05
    done
    if [ -z "$port" ]; then
        kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
        record "kind=http variant=$v threads=$threads round=$r status=failed"
        printf 'http %s --threads %s round %s: the server did not start: %s\n' "$v" "$threads" "$r" \
            "$(head -1 "$tmp/http.err")" >>"$tmp/failures"
        return
    fi
    # Warm-up: the pool's connections and the backends' caches.
    wrk -t2 -c64 -d"${warmup}s" -s "$repo/bench/http-items.lua" "http://127.0.0.1:$port" >/dev/null 2>&1
    out=$(wrk -t2 -c64 -d"${duration}s" --latency -s "$repo/bench/http-items.lua" "http://127.0.0.1:$port" 2>&1)
    kill -TERM "$spid"
    wait "$spid" 2>/dev/null
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    p50=$(awk '$1 == "50%" { print $2 }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' <<<"$out")
    sockerr=$(awk '/Socket errors:/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' <<<"$out")
    if [ -n "$rps" ] && [ "${non2xx:-0}" = 0 ] && [ "${sockerr:-0}" = 0 ]; then
        record "kind=http variant=$v threads=$threads round=$r rps=$rps p50_ms=$(http_ms "$p50")" \
            "p99_ms=$(http_ms "$p99") non2xx=0 sockerr=0 status=ok"
    else
        record "kind=http variant=$v threads=$threads round=$r rps=${rps:-0} non2xx=${non2xx:-0}" \
            "sockerr=${sockerr:-?} status=failed"
        printf 'http %s --threads %s round %s: %s non-2xx, %s socket errors\n' "$v" "$threads" "$r" \
            "${non2xx:-0}" "${sockerr:-?}" >>"$tmp/failures"
    fi
}

http_cells() {
    [ "$have_wrk" = 1 ] || return 0
    local srv=$build/examples/pqawait-server r vt
    "$srv" --db "host='$pg_host' port=$pg_port user=pqa_trust dbname=pqawait" --init >"$tmp/http-init.log" 2>&1 || {
        cat "$tmp/http-init.log" >&2
        echo "http: pqawait-server --init failed" >>"$tmp/failures"
        return
    }
    for ((r = 1; r <= rounds; r++)); do
        for vt in $http_variants; do
            progress "http ${vt%/*} --threads ${vt#*/} (round $r/$rounds)"
            http_run "${vt%/*}" "${vt#*/}" "$r"
        done
    done
}
