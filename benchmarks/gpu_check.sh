#!/usr/bin/env bash
# GPU check for one lent H200 (no internet there). Prepare here first:
#     bash benchmarks/gpu_check.sh --prepare     # wheels of what the GPU machine lacks -> cache/gpu_wheels
# then, through the device tool, with carry ["cache/gpu_wheels"]:
#     bash benchmarks/gpu_check.sh               # installs from cache/gpu_wheels, runs, writes $OUT/gpu_check.json
# Finishes within 5 minutes (the run itself is capped at 270 s).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=cache/gpu_wheels
if [ "${1:-}" = "--prepare" ]; then
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    # torch, torchvision, onnxruntime, numpy and click are on the GPU machine already.
    python3 -m pip download --quiet --no-deps --dest "$WHEELS" --only-binary=:all: --python-version 3.11 \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        zarr numcodecs donfig crc32c google-crc32c typing_extensions packaging lightgbm timm safetensors huggingface_hub \
        pyyaml tqdm onnx onnxscript onnx_ir ml_dtypes protobuf
    python3 -m pip wheel --quiet --no-deps --wheel-dir "$WHEELS" .
    du -sh "$WHEELS"
    exit 0
fi
python3 -m pip install --quiet --no-index --find-links "$WHEELS" --no-deps "$WHEELS"/*.whl 2>&1 | tail -3 || true
export TLMIC_CACHE="${TMPDIR:-/tmp}/tlmic-gpu-cache"
timeout 270 python3 benchmarks/gpu_check.py --out "${OUT:-.}/gpu_check.json" "$@"
