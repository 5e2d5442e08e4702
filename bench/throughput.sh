# shellcheck shell=bash disable=SC2154  # sourced by script/bench, which sets the globals
# bench/throughput.sh -- sourced by script/bench: throughput against
# concurrency, every variant, interleaved rounds.
#
# A cell is (workload, route, sessions); route is "direct" (the server's
# unix socket) or "pgbouncer" (transaction mode, bench/bouncer).  For each
# cell the variants run one after another -- a b c d e1 e2, then again, for
# $rounds rounds -- each in a fresh process with the same connection string,
# warm-up and window, so drift of the shared machine hits them alike and the
# per-round ratios cancel most of it.  Every run is one line in $raw
# (kind=tput ...); bench/report.py takes the medians and ratios.
#
# Uses from script/bench: $bin, $tmp, $raw, $rounds, $warmup, $duration,
# $pg_host, $pg_port, $bouncer_host, $bouncer_port, record, progress.

# The variants a cell runs: b only with more than one session (with one, it
# is a); pgbench cannot run COPY OUT (it aborts on a COPY result) and needs
# clients >= threads.
tput_variants() {
    local w=$1 n=$2 vs="a"
    [ "$n" -gt 1 ] && vs+=" b"
    vs+=" c d"
    if [ "$w" != copy ]; then
        vs+=" e1"
        [ "$n" -gt 1 ] && vs+=" e2"
    fi
    # (f) the floor (bench-pg-floor) where the (a) >= (d) target is read
    case $w/$n in select1/16 | select1/64 | select1/256 | point/16 | point/64 | point/256) vs+=" f" ;; esac
    echo "$vs"
}

# pgbench scripts: the same SQL as bench-pg (bench/pg_work.c).
tput_scripts() {
    echo 'SELECT 1;' >"$tmp/select1.sql"
    printf '\\set aid random(1, 100000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n' \
        >"$tmp/point.sql"
}

# Before a direct run with many sessions: the backends of the previous run
# exit asynchronously, and max_connections is 300.
tput_wait_backends() {
    local _ c
    for _ in $(seq 1 100); do
        c=$(psql -XAtq -h "$pg_host" -p "$pg_port" -U pqa_trust -d pqawait \
            -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'" 2>/dev/null)
        [ -n "$c" ] && [ "$c" -le 8 ] && return 0
        sleep 0.05
    done
}

# pgbench: -T counts from before it connects, and its progress lines (-P 1)
# from the same start, so its window is the per-second lines that begin
# after "initial connection time" plus the warm-up; -T leaves room for the
# connections, estimated from this round's (d), whose sessions connect one
# after another as pgbench -j 1's do (est: 1.5x that, +0.2 s).  pgbench -T
# takes whole seconds only.  A run whose connections took longer than the
# room left has no window: it is retried once with twice the room and one
# second more.  A failed run's output is kept (pgbench-failed.log).
tput_pgbench() {
    local w=$1 route=$2 n=$3 v=$4 r=$5 host port mode script extra=() secs out st try line
    if [ "$route" = direct ]; then host=$pg_host port=$pg_port; else host=$bouncer_host port=$bouncer_port; fi
    [ "$route" = direct ] && [ "$n" -ge 64 ] && tput_wait_backends
    case $w in
    select1) mode=simple script=select1 ;;
    point) mode=prepared script=point ;;
    extended) mode=extended script=point ;;
    storm) mode=simple script=select1 extra=(-C) ;;
    esac
    for try in 1 2; do
        secs=$(awk -v c="${tput_connect_s:-0}" -v w="$warmup" -v d="$duration" -v k="$try" 'BEGIN {
            room = k * (1.5 * c + 0.2) + w; a = int(room); if (a < room) a++
            b = int(d); if (b < d) b++; print a + b + k - 1 }')
        out=$(timeout $((secs + 60)) pgbench -n -M "$mode" "${extra[@]}" -c "$n" -j "${v#e}" -T "$secs" \
            -P 1 -f "$tmp/$script.sql" -h "$host" -p "$port" -U pqa_trust pqawait 2>&1)
        st=$?
        line=$(awk -v st="$st" -v w="$warmup" -v T="$secs" \
            -v pre="kind=tput route=$route round=$r variant=$v workload=$w sessions=$n loops=${v#e}" '
            /^initial connection time = / { conn = $5 / 1000 }
            /^progress: / { t[++k] = $2 + 0; tps[k] = $4 + 0 }
            /^number of transactions actually processed: / { total = $6 }
            /^number of failed transactions: / { failed = $5 }
            /aborted|error/ { bad = 1 }
            END {
                if (st != 0 || bad || failed + 0 > 0) { print pre " status=failed"; exit }
                for (i = 1; i <= k; i++) {
                    start = i > 1 ? t[i - 1] : 0
                    if (start >= conn + w - 0.05) { sum += tps[i] * (t[i] - start); len += t[i] - start }
                    else before += tps[i] * (t[i] - start)
                }
                how = "progress"
                # The last progress line races with the end of the run and may
                # be missing: then the window is the tail after the last line,
                # from the total count (-T ends T seconds after the start).
                if (len == 0 && k > 0 && t[k] >= conn + w - 0.05 && T - t[k] >= 0.5 && total > 0) {
                    sum = total - before; len = T - t[k]; how = "tail"
                }
                if (len == 0) { print pre " status=nowindow"; exit }
                printf "%s mode=timed ops_s=%.1f seconds=%.2f connect_s=%.3f errors=0 window=%s status=ok\n", \
                    pre, sum / len, len, conn, how
            }' <<<"$out")
        case $line in *status=nowindow) continue ;; esac
        break
    done
    line=${line/status=nowindow/status=failed}
    record "$line"
    case $line in
    *status=failed*)
        { echo "== pgbench $w $route $n $v round $r (T=$secs)"; printf '%s\n' "$out"; } >>"$tmp/pgbench-failed.log"
        printf '%s\n' "pgbench $w $route $n $v round $r: $(grep -m1 -iE 'error|abort' <<<"$out" ||
            echo "no window after the connections (T=$secs s)")" >>"$tmp/failures" ;;
    esac
}

tput_bench_pg() {
    local w=$1 route=$2 n=$3 v=$4 r=$5 exe ci line
    if [ "$route" = direct ]; then
        ci="host='$pg_host' port=$pg_port user=pqa_trust dbname=pqawait"
        [ "$n" -ge 64 ] && tput_wait_backends
    else
        ci="host='$bouncer_host' port=$bouncer_port user=pqa_trust dbname=pqawait"
    fi
    local arg=$v
    case $v in a | b) exe=$bin/bench-pg ;; f) exe=$bin/bench-pg-floor arg=a ;; *) exe=$bin/bench-pg-plain ;; esac
    line=$(timeout 120 "$exe" --variant "$arg" --workload "$w" --sessions "$n" --warmup "$warmup" \
        --duration "$duration" --conninfo "$ci" 2>"$tmp/err" | grep '^result ')
    line=${line/ variant=$arg / variant=$v }
    if [ "${PIPESTATUS[0]}" -eq 0 ] && [ -n "$line" ]; then
        record "kind=tput route=$route round=$r status=ok ${line#result }"
        # (d) connects its sessions one after another, as pgbench -j 1 does.
        if [ "$v" = d ]; then tput_connect_s=$(sed -n 's/.* connect_s=\([0-9.]*\).*/\1/p' <<<"$line"); fi
    else
        record "kind=tput route=$route round=$r variant=$v workload=$w sessions=$n status=failed"
        printf '%s\n' "bench-pg $w $route $n $v round $r: $(head -1 "$tmp/err")" >>"$tmp/failures"
    fi
}

# tput_cells CELL... where CELL is "workload route sessions": every round
# of every cell.  The progress line counts runs.
tput_cells() {
    local cell w route n v r
    tput_scripts
    for cell in "$@"; do
        read -r w route n <<<"$cell"
        tput_connect_s=$(awk -v n="$n" 'BEGIN { print n * 0.005 }')
        for ((r = 1; r <= rounds; r++)); do
            for v in $(tput_variants "$w" "$n"); do
                progress "$w $route $n sessions: $v (round $r/$rounds)"
                case $v in
                e*) tput_pgbench "$w" "$route" "$n" "$v" "$r" ;;
                *) tput_bench_pg "$w" "$route" "$n" "$v" "$r" ;;
                esac
            done
        done
    done
}

# How many runs tput_cells will make, for the progress line.
tput_count() {
    local cell w route n k=0 vs
    for cell in "$@"; do
        read -r w route n <<<"$cell"
        read -r -a vs <<<"$(tput_variants "$w" "$n")"
        k=$((k + ${#vs[@]} * rounds))
    done
    echo "$k"
}
