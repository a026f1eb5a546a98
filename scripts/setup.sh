#!/usr/bin/env bash
# Installs what ckbridge's build, tests and examples need on a fresh Debian 12 machine.
# Idempotent: only missing packages are installed. Python packages live in .venv and are used by
# tests only (the library never needs Python).
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(cmake g++ make libeigen3-dev libyaml-cpp-dev rapidjson-dev libboost-test-dev libcli11-dev zlib1g-dev libssl-dev
      libxxhash-dev python3-xxhash  # the manifest's XXH3-128 (and the tests' independent xxhash)
      python3 python3-venv python3-numpy python3-yaml python3-torch bc
      clang libclang-rt-14-dev  # clang + libFuzzer: the fuzz targets scripts/test.sh runs
      libopenmpi-dev openmpi-bin)  # --distributed_convert (ckbridge::mpi) and its mpirun tests
missing=()
for p in "${DEBS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup] installing: ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Test-only Python: Debian's torch (for torch.load checks) + PyPI's safetensors and ml_dtypes.
if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c "import safetensors, ml_dtypes, torch, numpy; assert numpy.__version__ < '2'; torch.from_numpy(numpy.zeros(2))" 2>/dev/null; then
  echo "[setup] creating .venv (test-only Python packages)"
  /usr/bin/python3 -m venv --system-site-packages .venv
  .venv/bin/pip install -q --disable-pip-version-check "numpy<2" "safetensors>=0.4" "ml_dtypes>=0.2"
fi
echo "[setup] ok"
