#!/bin/sh
# run-native.sh -- build and run switch_test.c on this machine, once with the
# assembly switch for the host CPU and once with the ucontext fallback.
# Usage: run-native.sh [bench_pairs]  (default 10000000)
# Exit 0 when both pass.  CC defaults to cc; extra flags via CFLAGS.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
lib=$here/../../lib
out=${TMPDIR:-/tmp}/awaitlet-switch-native.$$
mkdir -p "$out"
trap 'rm -rf "$out"' EXIT INT TERM
cc=${CC:-cc}
flags="-std=gnu11 -O2 -g -Wall -Wextra -Werror -D_GNU_SOURCE -I$lib ${CFLAGS:-}"
pairs=${1:-10000000}

case $(uname -m) in
x86_64) asm=$lib/switch_x86_64.S ;;
aarch64) asm=$lib/switch_aarch64.S ;;
*) asm= ;;
esac

if [ -n "$asm" ] && command -v readelf >/dev/null 2>&1; then
    echo "== unwind info of $(basename "$asm")"
    $cc -c -o "$out/switch.o" "$asm"
    case $(uname -m) in
    x86_64) regs="rbx rbp r12 r13 r14 r15 ra" ;;
    aarch64) regs="x19 x20 x21 x22 x23 x24 x25 x26 x27 x28 x29 ra v8 v9 v10 v11 v12 v13 v14 v15" ;;
    esac
    # shellcheck disable=SC2086
    "$here/check-cfi.sh" readelf "$out/switch.o" $regs
fi
if [ -n "$asm" ]; then
    echo "== $cc, asm switch ($(basename "$asm"))"
    $cc $flags -o "$out/asm" "$here/switch_test.c" "$asm"
    "$out/asm" "$pairs"
fi
echo "== $cc, ucontext switch"
$cc $flags -DAWAITLET_SWITCH_UCONTEXT -o "$out/uc" "$here/switch_test.c" "$lib/switch_ucontext.c"
"$out/uc" "$(( pairs / 100 ))"
