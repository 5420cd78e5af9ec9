#!/usr/bin/env bash
# One short, prepared GPU run: our layers against cuDNN keras.layers.LSTM / GRU (their twins)
# (TensorFlow picks cuDNN for the Keras layers with their default arguments on a GPU),
# training and inference, the three standard shapes, each model at its faster jit_compile.
# About 5 minutes on one GPU (mostly compiling); the table goes to stdout.
#
# Usage (from the repository root):
#   bash benchmarks/gpu.sh                 # needs a GPU that TensorFlow sees
#   bash benchmarks/gpu.sh --repeats 30    # any further option goes to throughput.py
#   bash benchmarks/gpu.sh --cpu-smoke     # no GPU: a tiny run on CPU that checks the script
# Environment: PYTHON (default: python3), the interpreter with keras_recnorm's dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TF_CPP_MIN_LOG_LEVEL=3
PYTHON="${PYTHON:-python3}"
options=(--backend tensorflow --repeats 15 --trials 3)
if [[ "${1:-}" == "--cpu-smoke" ]]; then
    shift
    export CUDA_VISIBLE_DEVICES=""
    options=(--backend tensorflow --quick --only LayerNormLSTM --only LayerNormGRU)
else
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    fi
    if ! "$PYTHON" -c 'import sys, tensorflow as tf; sys.exit(not tf.config.list_physical_devices("GPU"))'; then
        echo "gpu.sh: TensorFlow sees no GPU; run it where one is (or pass --cpu-smoke to check the script on CPU)." >&2
        exit 1
    fi
fi
exec timeout 900 "$PYTHON" benchmarks/throughput.py "${options[@]}" "$@"
