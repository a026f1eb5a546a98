#!/usr/bin/env bash
# The main job: install what is missing, build the DeepSeek V3 example converter, generate the
# built-in small DeepSeek-V3-architecture checkpoint, convert it HF -> MCore -> HF and verify
# the round trip byte for byte.
# Usage: scripts/demo.sh [work-dir]   (default: build/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCKB_TEST_PYTHON="$PWD/.venv/bin/python" >/dev/null
cmake --build build -j"$(nproc)" --target ckbridge_convert make_tiny_checkpoint
exec bash examples/deepseek_v3/round_trip.sh build "${1:-build/demo}"
