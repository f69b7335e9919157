#!/usr/bin/env bash
# The test command: installs dependencies, builds in Release, runs every
# test with CTest. Tests that need ../shared/data skip with a message when it
# is absent. Safe to run again.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/install-deps.sh"
bash "$root/scripts/build.sh"
build=${OPTREC_BUILD_DIR:-$root/build}
cd "$build"
ctest --output-on-failure -j "${OPTREC_JOBS:-$(nproc)}"
