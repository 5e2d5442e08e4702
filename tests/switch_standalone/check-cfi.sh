#!/bin/sh
# check-cfi.sh READELF OBJECT REG... -- the unwind table (CFI) of
# awaitlet__switch, the first function of OBJECT, must say where every
# callee-saved register REG is saved once the frame is pushed: a debugger or
# unwinder stopped inside the switch needs it to show the suspended side.
# REG names as readelf --debug-dump=frames-interp prints them (ra, x19,
# v8...).  Exit 0 when some row of the first FDE has a rule for all of them.
set -eu
readelf=$1 obj=$2
shift 2
"$readelf" --debug-dump=frames-interp "$obj" | awk -v want="$*" '
    /FDE/ { fde++; next }
    fde == 1 && $1 == "LOC" { for (i = 3; i <= NF; i++) col[$i] = i; next }
    fde == 1 && NF > 2 {
        ok = 1
        n = split(want, w, " ")
        for (k = 1; k <= n; k++)
            if (!(w[k] in col) || $(col[w[k]]) == "u") ok = 0
        if (ok) found = 1
    }
    END {
        if (found) exit 0
        n = split(want, w, " ")
        missing = ""
        for (k = 1; k <= n; k++) if (!(w[k] in col)) missing = missing " " w[k]
        printf "check-cfi: awaitlet__switch: no CFI row saving all of: %s (never described:%s)\n", want, missing > "/dev/stderr"
        exit 1
    }'
echo "check-cfi: $(basename "$obj"): CFI describes $*"
