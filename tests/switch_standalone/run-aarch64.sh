#!/bin/sh
# run-aarch64.sh -- cross-build switch_test.c with lib/switch_aarch64.S (and
# the ucontext fallback) as static aarch64 binaries and run them under
# qemu-aarch64, so the aarch64 switch is tested on an x86-64 machine.
# Needs: apt-get install gcc-aarch64-linux-gnu qemu-user
# Exit 0 on pass, 77 (meson's "skip") when the cross tools are missing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
lib=$here/../../lib
cc=${AARCH64_CC:-aarch64-linux-gnu-gcc}
if [ "$(uname -m)" = aarch64 ]; then
    qemu=
else
    qemu=$(command -v qemu-aarch64 || command -v qemu-aarch64-static || true)
    if [ -z "$qemu" ]; then
        echo "run-aarch64.sh: qemu-aarch64 not found; skipping" >&2
        exit 77
    fi
fi
if ! command -v "$cc" >/dev/null 2>&1; then
    echo "run-aarch64.sh: $cc not found; skipping" >&2
    exit 77
fi
out=${TMPDIR:-/tmp}/awaitlet-switch-aarch64.$$
mkdir -p "$out"
trap 'rm -rf "$out"' EXIT INT TERM
flags="-std=gnu11 -O2 -g -static -Wall -Wextra -Werror -D_GNU_SOURCE -I$lib"
# Emulated switches are slow and their timing is meaningless: keep it short.
pairs=${1:-100000}

echo "== aarch64, unwind info of the asm switch"
readelf=${AARCH64_READELF:-aarch64-linux-gnu-readelf}
if command -v "$readelf" >/dev/null 2>&1; then
    $cc -c -o "$out/switch.o" "$lib/switch_aarch64.S"
    "$here/check-cfi.sh" "$readelf" "$out/switch.o" \
        x19 x20 x21 x22 x23 x24 x25 x26 x27 x28 x29 ra v8 v9 v10 v11 v12 v13 v14 v15
else
    echo "run-aarch64.sh: $readelf not found; CFI not checked" >&2
fi
echo "== aarch64, asm switch"
$cc $flags -o "$out/asm" "$here/switch_test.c" "$lib/switch_aarch64.S"
$qemu "$out/asm" "$pairs"
echo "== aarch64, ucontext switch"
$cc $flags -DAWAITLET_SWITCH_UCONTEXT -o "$out/uc" "$here/switch_test.c" "$lib/switch_ucontext.c"
$qemu "$out/uc" "$(( pairs / 100 ))"
