#!/bin/sh
# Prepares a wine prefix for running x86_64-pc-windows-gnu test binaries:
# creates it quietly and installs the bcryptprimitives.dll shim that
# Debian's wine 8.0 lacks (Rust std imports ProcessPrng from it).
# Usage: WINEPREFIX=/tmp/krypton-wine .ci/wine/setup.sh
set -eu
: "${WINEPREFIX:?set WINEPREFIX}"
export WINEDEBUG=-all
here=$(cd "$(dirname "$0")" && pwd)
sys32="$WINEPREFIX/drive_c/windows/system32"
if [ ! -d "$sys32" ]; then
    wineboot --init >/dev/null 2>&1 || true
    wineserver -w || true
fi
if [ ! -f "$sys32/bcryptprimitives.dll" ]; then
    x86_64-w64-mingw32-gcc -O2 -shared -o "$sys32/bcryptprimitives.dll" \
        "$here/bcryptprimitives.c" "$here/bcryptprimitives.def" -ladvapi32
fi
