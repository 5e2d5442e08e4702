# lib.sh -- sourced by the preload tests' shell scripts: named checks and a
# Check-style summary line, so script/count-tests.py counts every check
# ("Checks: N, Failures: F, Errors: 0"), not just the script.
pqa_checks=0 pqa_failures=0
# check NAME STATUS: STATUS 0 passes.
check() {
  pqa_checks=$((pqa_checks + 1))
  if [ "$2" = 0 ]; then echo "ok   $1"; else echo "FAIL $1"; pqa_failures=$((pqa_failures + 1)); fi
}
# finish: the summary, and the exit status.
finish() {
  local pct=100
  [ "$pqa_checks" -gt 0 ] && pct=$(( (pqa_checks - pqa_failures) * 100 / pqa_checks ))
  echo "$pct%: Checks: $pqa_checks, Failures: $pqa_failures, Errors: 0"
  [ "$pqa_failures" = 0 ]
  exit
}
