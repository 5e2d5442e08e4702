#!/bin/bash
# bench_evcb.sh SHIMLIB BENCH -- the cost per callback of PQAWAIT_EV_CALLBACKS
# in plain libev programs (no libpq): bench_evcb.c's three shapes, plain
# and preloaded, 5 interleaved rounds each, medians and their ratio.
# Numbers only (docs/preload.md quotes them); it fails only if a run fails.
set -u
shim=$1 bench=$2
for shape in "ring 100 100000" "idle 1000000" "timers 1000000"; do
  : >/tmp/pqa-bench.$$.plain
  : >/tmp/pqa-bench.$$.pre
  for _ in 1 2 3 4 5; do
    "$bench" $shape | awk '{print $2}' >>/tmp/pqa-bench.$$.plain || exit 1
    LD_PRELOAD=$shim PQAWAIT_EV_CALLBACKS=1 "$bench" $shape | awk '{print $2}' >>/tmp/pqa-bench.$$.pre || exit 1
  done
  a=$(sort -n /tmp/pqa-bench.$$.plain | sed -n 3p)
  b=$(sort -n /tmp/pqa-bench.$$.pre | sed -n 3p)
  printf '%-7s plain %6d ns/callback   PQAWAIT_EV_CALLBACKS %6d ns/callback   ratio %s\n' \
    "${shape%% *}" "$a" "$b" "$(python3 -c "print('%.2f' % ($b / $a))")"
done
rm -f /tmp/pqa-bench.$$.*
