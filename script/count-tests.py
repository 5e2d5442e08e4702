#!/usr/bin/env python3
"""count-tests.py: turn meson testlog.json files into one `N passed, N failed` line.

Why not just count meson tests: each meson test here is a Check program
holding dozens of checks, so "3 tests OK" would hide how much ran.  Check
prints a summary per runner (`100%: Checks: 25, Failures: 0, Errors: 0`,
with CK_VERBOSITY=normal) into the test's stdout, which meson keeps in
testlog.json.  Rules:

  * every Check summary line counts checks-failures-errors as passed and
    failures+errors as failed;
  * a test whose summary says "all passed" but which meson still calls a
    failure (valgrind/ASan error exit, crash after the summary, timeout)
    adds 1 failed, so such a run can never look clean;
  * a test with no Check line (crash, timeout, or not a Check program)
    counts as 1 passed or 1 failed by meson's result; SKIP counts as neither.

Usage: count-tests.py [-q] TESTLOG.json...
Failing tests are listed on stderr unless -q is given.  A missing or
unreadable file, and every unparsable line, counts as 1 failed.
"""
import json
import re
import sys

# Check's line for a failed check: file:line:F|E:tcase:test:iteration: message
CHECK_FAIL_RE = re.compile(r'^[^\s:]+:\d+:[FE]:[^:]*:[^:]*:\d+: .*$', re.MULTILINE)
CHECK_RE = re.compile(
    r'^\s*(?:\d+%:\s*)?Checks:\s*(\d+),\s*Failures:\s*(\d+),\s*Errors:\s*(\d+)',
    re.MULTILINE)
PASS_RESULTS = {'OK', 'EXPECTEDFAIL'}
NEUTRAL_RESULTS = {'SKIP'}


def output_tail(obj, n=6):
    """The last n non-empty lines of a test's stderr (else stdout), indented:
    a test that died before its summary usually said why there (a FATAL line
    from its set-up, a sanitizer's report, a timeout's last words)."""
    for key in ('stderr', 'stde', 'stdout', 'stdo'):
        val = obj.get(key)
        if isinstance(val, str) and val.strip():
            lines = [l for l in val.splitlines() if l.strip()][-n:]
            return ''.join('\n    | ' + l[:400] for l in lines)
    return ''


def count_test(obj):
    """Return (passed, failed, why) for one testlog.json object."""
    result = str(obj.get('result', 'UNKNOWN')).upper()
    text = ''
    # Newer meson writes stdout/stderr; older versions (and our brief) say stdo/stde.
    for key in ('stdout', 'stderr', 'stdo', 'stde'):
        val = obj.get(key)
        if isinstance(val, str):
            text += val + '\n'
    summaries = CHECK_RE.findall(text)
    if summaries:
        passed = failed = 0
        for checks, failures, errors in summaries:
            c, f, e = int(checks), int(failures), int(errors)
            passed += max(c - f - e, 0)
            failed += f + e
        why = None
        if failed:
            why = '%d check(s) failed' % failed
            # the checks' own messages, so a log that keeps only its tail
            # still says what broke (a few; the full text is in the log)
            lines = CHECK_FAIL_RE.findall(text)
            for line in lines[:5]:
                why += '\n    ' + line[:400]
            if len(lines) > 5:
                why += '\n    ... %d more' % (len(lines) - 5)
        if result not in PASS_RESULTS and result not in NEUTRAL_RESULTS and failed == 0:
            failed += 1
            why = 'checks passed but meson says %s (rc %s)' % (result, obj.get('returncode'))
            why += output_tail(obj)
        return passed, failed, why
    if result in PASS_RESULTS:
        return 1, 0, None
    if result in NEUTRAL_RESULTS:
        return 0, 0, None
    return 0, 1, ('%s (rc %s), no Check summary' % (result, obj.get('returncode'))
                  + output_tail(obj))


def count_file(path, report):
    passed = failed = 0
    try:
        with open(path, encoding='utf-8', errors='replace') as fh:
            lines = fh.readlines()
    except OSError as exc:
        report('%s: %s' % (path, exc.strerror))
        return 0, 1
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError('not an object')
        except ValueError:
            report('%s:%d: unparsable line' % (path, lineno))
            failed += 1
            continue
        p, f, why = count_test(obj)
        passed += p
        failed += f
        if why:
            report('FAILED %s: %s' % (obj.get('name', '?'), why))
    return passed, failed


def main(argv):
    quiet = False
    paths = []
    for arg in argv[1:]:
        if arg == '-q':
            quiet = True
        elif arg in ('-h', '--help'):
            print(__doc__.strip())
            return 0
        else:
            paths.append(arg)

    def report(msg):
        if not quiet:
            print(msg, file=sys.stderr)

    passed = failed = 0
    for path in paths:
        p, f = count_file(path, report)
        passed += p
        failed += f
    print('%d passed, %d failed' % (passed, failed))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
