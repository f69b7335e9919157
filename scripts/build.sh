#!/usr/bin/env bash
# Configures and builds optrec in Release into build/ (or $OPTREC_BUILD_DIR).
# Extra arguments go to CMake's configure step, e.g.
#   scripts/build.sh -DOPTREC_BUILD_SERVER=OFF
# Safe to run again: CMake rebuilds only what changed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${OPTREC_BUILD_DIR:-$root/build}
jobs=${OPTREC_JOBS:-$(nproc)}

generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
if [[ ! -f "$build/build.ninja" && ! -f "$build/Makefile" ]]; then
  # No usable build tree (none yet, or a configure that failed half-way).
  rm -f "$build/CMakeCache.txt"
  cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "$@"
elif [[ $# -gt 0 ]]; then
  cmake -S "$root" -B "$build" "$@"
fi
cmake --build "$build" -j "$jobs"
