#!/usr/bin/env bash
# Installs optrec's build and run-time dependencies from Debian's packages.
# Safe to run more than once: apt-get skips what is already installed.
# Needs root (or sudo); set OPTREC_SKIP_APT=1 to skip when the packages are
# known to be present.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git clang-format
  # The frozen LM: LibTorch (CPU build) and a fast BLAS for it. Without
  # libopenblas0-pthread, LibTorch runs on the reference BLAS, ~13x slower.
  libtorch-dev libopenblas0-pthread
  # Core: checkpoint metadata, tokenizer patterns, SentencePiece models,
  # hashing for model fingerprints.
  nlohmann-json3-dev libre2-dev libsentencepiece-dev libxxhash-dev libicu-dev
  libabsl-dev
  # Service (gRPC) and retrieval index.
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libfaiss-dev
  # Tests.
  libgtest-dev libgmock-dev
  # The Python client example (scripts/demo_client.py).
  python3 python3-grpcio python3-protobuf
)

if [[ "${OPTREC_SKIP_APT:-0}" == "1" ]]; then
  echo "install-deps: OPTREC_SKIP_APT=1, not installing packages"
  exit 0
fi

as_root=(env DEBIAN_FRONTEND=noninteractive)
if [[ "$(id -u)" != "0" ]]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "install-deps: not root and sudo is missing; run as root:" >&2
    echo "  apt-get install ${packages[*]}" >&2
    exit 1
  fi
  as_root=(sudo DEBIAN_FRONTEND=noninteractive)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
      grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
"${as_root[@]}" apt-get update -q
"${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
