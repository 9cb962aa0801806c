#!/usr/bin/env bash
# Installs the Debian packages occult builds and tests with, only those that are missing.
# Idempotent and quick when everything is present (one dpkg query, no network).
# Usage: scripts/bootstrap.sh [--peer]
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libopenmpi-dev openmpi-bin       # Communicator (MPI all-to-all-v)
  libopenblas-dev                  # reference/fallback GEMMs (cblas_sgemm)
  libdnnl-dev                      # oneDNN matmul: the default GEMM path (F32, BF16 on AVX512-BF16)
  libmetis-dev                     # the metis partitioner
  libcli11-dev                     # command-line parsing
  nlohmann-json3-dev               # placement / config JSON, safetensors headers
  libfmt-dev                       # formatting of messages and tables
  libpcre2-dev                     # tokenizer pre-tokenizer regexes (PCRE2, JIT)
  libutf8proc-dev                  # tokenizer NFC normalization
  libgtest-dev libgmock-dev        # unit tests
  libbenchmark-dev                 # micro-benchmarks under bench/
  iproute2                         # bench/cluster.sh: network namespaces + htb shaping
  gnuplot-nox                      # plots in bench/
)

# --peer: also the benchmark peers' packages (bench/moe/peer.sh), never needed to build or test.
if [ "${1:-}" = "--peer" ]; then
  packages+=(python3-torch)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "bootstrap: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
