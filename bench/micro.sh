# shellcheck shell=bash disable=SC2154  # sourced by script/bench, which sets the globals
# bench/micro.sh -- sourced by script/bench --micro: the runtime's own
# benchmarks (bench-switch, bench-pingpong, bench-tasks; bench/README.md).
#
# Each binary times its variant against its baseline in interleaved rounds
# in one process and prints medians and the ratio; this adds the numbers
# that do not depend on load: system calls (strace -c) and user-space
# instructions (callgrind) per operation, from runs at N and 2N operations
# subtracted so setup cancels out.  Uses from script/bench: $bin, $tmp,
# $do_syscalls, $do_callgrind, BENCH_MICRO_ROUNDS (default 9).

# Append a verdict to lines that carry a target: "(target <= X)" or "(target ~0)".
micro_verdict() {
    awk '{
        v = $0; if (match(v, /  +\(/)) v = substr(v, 1, RSTART - 1);
        n = split(v, f, " "); val = (f[n] ~ /^-?[0-9.]+$/) ? f[n] : "";
        tag = "";
        if (match($0, /\(target <= [0-9.]+\)/)) {
            lim = substr($0, RSTART + 11, RLENGTH - 12) + 0;
            tag = (val != "" && val + 0 <= lim) ? "  ok" : "  MISSED";
        } else if (index($0, "(target ~0)")) {
            tag = (val != "" && val + 0 <= 0.05) ? "  ok" : "  MISSED";
        }
        print $0 tag; fflush();
    }'
}

# strace_calls FILE SYSCALL -> count (0 if absent); SYSCALL "total" for all.
strace_calls() {
    awk -v s="$2" '$NF == s && $4 ~ /^[0-9]+$/ { c = $4 } END { print c + 0 }' "$1"
}

# micro_syscalls BENCH VARIANT N UNIT WATCH...
micro_syscalls() {
    local bench=$1 variant=$2 n=$3 unit=$4 s detail="" tot exe=$bin/bench-$1
    shift 4
    if ! timeout 120 strace -f -c -o "$tmp/s1" "$exe" -o "$variant" -n "$n" >/dev/null 2>&1 ||
        ! timeout 120 strace -f -c -o "$tmp/s2" "$exe" -o "$variant" -n $((2 * n)) >/dev/null 2>&1; then
        printf '%-9s %-40s %10s\n' "$bench" "$variant syscalls/$unit" FAILED
        return
    fi
    for s in "$@"; do
        detail+=$(awk -v a="$(strace_calls "$tmp/s1" "$s")" -v b="$(strace_calls "$tmp/s2" "$s")" \
            -v n="$n" -v s="$s" 'BEGIN { printf "%s %.3f ", s, (b - a) / n }')
    done
    tot=$(awk -v a="$(strace_calls "$tmp/s1" total)" -v b="$(strace_calls "$tmp/s2" total)" \
        -v n="$n" 'BEGIN { printf "%.3f", (b - a) / n }')
    printf '%-9s %-40s %10s  (%s)\n' "$bench" "$variant syscalls/$unit" "$tot" "${detail% }"
    if [ "$bench/$variant" = pingpong/task ]; then
        printf '%-9s %-40s %10.3f  (target ~0)\n' "$bench" "task epoll_ctl/$unit" \
            "$(awk -v a="$(strace_calls "$tmp/s1" epoll_ctl)" -v b="$(strace_calls "$tmp/s2" epoll_ctl)" \
                -v n="$n" 'BEGIN { print (b - a) / n }')" | micro_verdict
    fi
}

declare -A micro_instr
# micro_callgrind BENCH VARIANT N UNIT
micro_callgrind() {
    local bench=$1 variant=$2 n=$3 unit=$4 a b v exe=$bin/bench-$1
    if timeout 300 valgrind --tool=callgrind --callgrind-out-file="$tmp/c1" "$exe" -o "$variant" -n "$n" >/dev/null 2>&1 &&
        timeout 300 valgrind --tool=callgrind --callgrind-out-file="$tmp/c2" "$exe" -o "$variant" -n $((2 * n)) >/dev/null 2>&1; then
        a=$(awk '/^summary:/ { print $2 }' "$tmp/c1")
        b=$(awk '/^summary:/ { print $2 }' "$tmp/c2")
        v=$(awk -v a="$a" -v b="$b" -v n="$n" 'BEGIN { printf "%.1f", (b - a) / n }')
        micro_instr[$bench/$variant]=$v
        printf '%-9s %-40s %10s  (callgrind)\n' "$bench" "$variant instr/$unit" "$v"
    else
        printf '%-9s %-40s %10s\n' "$bench" "$variant instr/$unit" FAILED
    fi
}
micro_ratio() {
    local bench=$1 a=$2 b=$3
    [ -n "${micro_instr[$bench/$a]:-}" ] && [ -n "${micro_instr[$bench/$b]:-}" ] || return 0
    printf '%-9s %-40s %10s\n' "$bench" "$a/$b instr ratio" \
        "$(awk -v a="${micro_instr[$bench/$a]}" -v b="${micro_instr[$bench/$b]}" 'BEGIN { printf "%.2f", a / b }')"
}

micro_phase() {
    local b st rounds=${BENCH_MICRO_ROUNDS:-9}
    echo "# runtime micro-benchmarks (interleaved rounds in one process; medians)"
    for b in switch pingpong tasks; do
        timeout 300 "$bin/bench-$b" -r "$rounds" | micro_verdict
        st=${PIPESTATUS[0]}
        [ "$st" -eq 0 ] || printf '%-9s %s\n' "$b" "FAILED (exit $st)"
    done
    if [ "$do_syscalls" = 1 ] && command -v strace >/dev/null; then
        echo "# syscalls per operation (strace -c -f, runs at N and 2N subtracted)"
        micro_syscalls switch awaitlet 20000 switch rt_sigprocmask
        micro_syscalls switch swapcontext 20000 switch rt_sigprocmask
        micro_syscalls pingpong callback 2000 roundtrip epoll_ctl epoll_wait read write
        micro_syscalls pingpong task 2000 roundtrip epoll_ctl epoll_wait read write
        micro_syscalls tasks task 20000 op mmap munmap mprotect
        micro_syscalls tasks yield-task 5000 op epoll_wait mmap munmap
        micro_syscalls tasks idle-callback 5000 op epoll_wait
    fi
    if [ "$do_callgrind" = 1 ] && command -v valgrind >/dev/null; then
        echo "# instructions per operation (callgrind, user space only, runs at N and 2N subtracted)"
        micro_callgrind switch awaitlet 100000 switch
        micro_callgrind switch swapcontext 20000 switch
        micro_ratio switch awaitlet swapcontext
        micro_callgrind pingpong callback 2000 roundtrip
        micro_callgrind pingpong task 2000 roundtrip
        micro_ratio pingpong task callback
        micro_callgrind tasks task 20000 op
        micro_callgrind tasks call 20000 op
        micro_ratio tasks task call
        micro_callgrind tasks yield-task 5000 op
        micro_callgrind tasks idle-callback 5000 op
        micro_ratio tasks yield-task idle-callback
    fi
}
