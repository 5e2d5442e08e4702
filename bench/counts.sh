# shellcheck shell=bash disable=SC2154  # sourced by script/bench, which sets the globals
# bench/counts.sh -- sourced by script/bench: the numbers that do not depend
# on load.  System calls per query (perf stat's syscall tracepoints, and
# strace -c -f as a cross-check), client instructions per query (callgrind,
# user space only), epoll_ctl per query under connection churn, and memory
# per session with 10,000 sessions through pgbouncer.
#
# Calls and instructions come from count-mode runs (bench-pg --count) at N
# and 2N operations, subtracted: connecting, preparing and exiting cancel
# out, what is left is the steady state.  perf counts at full speed; strace
# stops the client at every call, which lets the server run ahead and makes
# each epoll_wait return more ready sockets, so at 16 sessions it shows
# slightly fewer epoll_waits per query than the real run: the targets use
# perf when it works here, strace otherwise (the records say which).
#
# Uses from script/bench: $bin, $tmp, $pg_host, $pg_port, $bouncer_host,
# $bouncer_port, record, progress.

counts_ci() {
    echo "host='$pg_host' port=$pg_port user=pqa_trust dbname=pqawait"
}

# The syscalls listed one by one; "other" is the rest.
counts_calls="epoll_wait epoll_ctl sendto recvfrom poll read write futex"

# counts_run_tool TOOL OUT EXE ARGS...: one count-mode run under perf/strace.
counts_run_tool() {
    local tool=$1 out=$2 ev s
    shift 2
    case $tool in
    perf)
        ev=raw_syscalls:sys_enter
        for s in $counts_calls; do ev+=",syscalls:sys_enter_$s"; done
        timeout 120 perf stat -x, -e "$ev" -o "$out" -- "$@" >/dev/null 2>"$tmp/err"
        ;;
    strace) timeout 120 strace -f -c -o "$out" "$@" >/dev/null 2>"$tmp/err" ;;
    esac
}

# counts_get TOOL FILE NAME -> calls (NAME "total" for all of them).
counts_get() {
    case $1 in
    perf)
        awk -F, -v s="$3" '
            { e = $3; sub(/^raw_syscalls:sys_enter$/, "total", e); sub(/^syscalls:sys_enter_/, "", e) }
            e == s && $1 ~ /^[0-9]+$/ { c = $1 } END { print c + 0 }' "$2"
        ;;
    strace) awk -v s="$3" '$NF == s && $4 ~ /^[0-9]+$/ { c = $4 } END { print c + 0 }' "$2" ;;
    esac
}

# counts_syscalls TOOL EXE VARIANT WORKLOAD SESSIONS N: calls per query, by
# name.  With several sessions the count depends on how many sockets each
# epoll_wait finds ready, which timing decides: 3 pairs of runs, the median
# of each figure.
counts_syscalls() {
    local tool=$1 exe=$2 v=$3 w=$4 n=$5 N=$6 rec s k reps=1 args
    local -A vals=()
    progress "syscalls ($tool): $v $w $n sessions"
    [ "$n" -gt 1 ] && reps=3
    args=(--variant "$v" --workload "$w" --sessions "$n" --conninfo "$(counts_ci)")
    for ((k = 0; k < reps; k++)); do
        if ! counts_run_tool "$tool" "$tmp/k1" "$bin/$exe" "${args[@]}" --count "$N" ||
            ! counts_run_tool "$tool" "$tmp/k2" "$bin/$exe" "${args[@]}" --count $((2 * N)); then
            record "kind=syscalls tool=$tool exe=$exe variant=$v workload=$w sessions=$n status=failed"
            printf '%s\n' "$tool $exe $v $w $n: $(head -1 "$tmp/err")" >>"$tmp/failures"
            return
        fi
        for s in total $counts_calls; do
            vals[$s]+=" $(awk -v a="$(counts_get "$tool" "$tmp/k1" "$s")" -v b="$(counts_get "$tool" "$tmp/k2" "$s")" \
                -v n="$N" 'BEGIN { printf "%.4f", (b - a) / n }')"
        done
    done
    rec="kind=syscalls tool=$tool exe=$exe variant=$v workload=$w sessions=$n n=$N reps=$reps status=ok"
    for s in total $counts_calls; do
        rec+=" $s=$(tr ' ' '\n' <<<"${vals[$s]}" | grep . | sort -g |
            awk '{ x[NR] = $1 } END { printf "%.3f", NR % 2 ? x[(NR + 1) / 2] : (x[NR / 2] + x[NR / 2 + 1]) / 2 }')"
    done
    # "other": whatever the listed calls leave of the total (from the medians).
    rec+=" other=$(awk '{ for (i = 1; i <= NF; i++) if (split($i, kv, "=") == 2) v[kv[1]] = kv[2] }
        END { o = v["total"]; split("'"$counts_calls"'", c, " "); for (i in c) o -= v[c[i]]; printf "%.3f", o }' <<<"$rec")"
    record "$rec"
}

# counts_instr EXE VARIANT WORKLOAD SESSIONS N
counts_instr() {
    local exe=$1 v=$2 w=$3 n=$4 N=$5 a b k arg=$2
    [ "$v" = f ] && arg=a # the floor is variant a of bench-pg-floor
    progress "instructions (callgrind): $exe $v $w $n sessions"
    for k in 1 2; do
        timeout 300 valgrind --tool=callgrind --callgrind-out-file="$tmp/cg$k" "$bin/$exe" \
            --variant "$arg" --workload "$w" --sessions "$n" --count $((k * N)) --conninfo "$(counts_ci)" \
            >/dev/null 2>"$tmp/err" || {
            record "kind=instr exe=$exe variant=$v workload=$w sessions=$n status=failed"
            printf '%s\n' "callgrind $exe $v $w $n: $(grep -m1 -v '^==' "$tmp/err")" >>"$tmp/failures"
            return
        }
    done
    a=$(awk '/^summary:/ { print $2 }' "$tmp/cg1") b=$(awk '/^summary:/ { print $2 }' "$tmp/cg2")
    record "kind=instr exe=$exe variant=$v workload=$w sessions=$n n=$N status=ok" \
        "per_op=$(awk -v a="$a" -v b="$b" -v n="$N" 'BEGIN { printf "%.1f", (b - a) / n }')"
}

# A timed run of variant a with one more task connecting and disconnecting
# in a loop on the same loop: epoll_ctl on the measured sessions' sockets
# per query should stay 0.
counts_churn() {
    local v=$1 n=$2 line
    progress "epoll_ctl under connection churn: $v $n sessions"
    line=$(timeout 120 "$bin/bench-pg" --variant "$v" --workload select1 --sessions "$n" --churn \
        --warmup "$warmup" --duration "$duration" --conninfo "$(counts_ci)" 2>"$tmp/err" | grep '^result ')
    if [ "${PIPESTATUS[0]}" -eq 0 ] && [ -n "$line" ]; then
        record "kind=churn status=ok ${line#result }"
    else
        record "kind=churn variant=$v sessions=$n status=failed"
        printf '%s\n' "churn $v $n: $(head -1 "$tmp/err")" >>"$tmp/failures"
    fi
}

# 10,000 sessions through pgbouncer: connect all, one query each, read the
# resident set while they all sit idle, then 3 queries each and disconnect.
# a: tasks on one loop (task + PGconn per session); d from bench-pg-plain:
# the same PGconns without tasks, for the split.
counts_memory() {
    local exe=$1 v=$2 n=$3 line
    progress "$n sessions through pgbouncer, held: $v"
    line=$(timeout 300 "$bin/$exe" --variant "$v" --workload select1 --sessions "$n" --hold 3 \
        --conninfo "host='$bouncer_host' port=$bouncer_port user=pqa_trust dbname=pqawait" \
        2>"$tmp/err" | grep '^result ')
    if [ "${PIPESTATUS[0]}" -eq 0 ] && [ -n "$line" ]; then
        record "kind=memory exe=$exe status=ok ${line#result }"
    else
        record "kind=memory exe=$exe variant=$v sessions=$n status=failed ${line#result }"
        printf '%s\n' "memory $exe $v $n: $(head -1 "$tmp/err")" >>"$tmp/failures"
    fi
}
