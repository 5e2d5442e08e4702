#!/bin/sh
# test-gdb.sh TARGET SCRIPT -- the gdb script lists suspended tasks with
# backtraces that reach the function each task waits in.
set -u
target=$1 script=$2
command -v gdb >/dev/null || { echo "gdb not installed"; exit 1; }
out=$(gdb -q -batch -nx -ex "source $script" -ex "break gdb_stop_here" -ex run \
      -ex "awaitlet bt" -ex "kill" "$target" 2>&1)
echo "$out"
fail=0
check() { echo "$out" | grep -q -- "$1" || { echo "MISSING: $1"; fail=1; }; }
check 'task #[0-9]* "pipe-reader" state=suspended wait=io fd='
check 'task #[0-9]* "sleeper" state=suspended wait=sleep'
check 'in waits_on_pipe'
check 'in sleeps_long'
check 'in reader_task'
check 'in sleeper_task'
check '2 live task(s)'
# backtraces must end at the task's first frame, not wander into garbage
if echo "$out" | grep -q "Backtrace stopped: previous frame inner\|corrupt stack"; then
    echo "backtrace did not end cleanly"; fail=1
fi
exit $fail
