#!/usr/bin/env bash
# Our layers against cuDNN on one GPU, on the backends a lent GPU machine has (JAX and torch,
# with no TensorFlow and no Keras installed): for each backend, every layer of
# keras_recnorm.kinds.KINDS against its Keras twin (keras.layers.LSTM / GRU / SimpleRNN) on that backend,
# plus plain torch.nn.LSTM / GRU / RNN (cuDNN) with the same model and steps, training and
# inference, at the three standard shapes and at (64, 100, 512, 512); and whether each Keras
# twin's steps call cuDNN. One table at the end (benchmarks/throughput.py --summarize).
#
# Usage (from anywhere; it runs from the repository root):
#   bash benchmarks/gpu.sh                     # on a machine with a CUDA GPU
#   bash benchmarks/gpu.sh --wheels .whl       # installs Keras from those wheels first
#   bash benchmarks/gpu.sh --cpu-smoke         # no GPU: tiny shape, both backends, a few steps
#   bash benchmarks/gpu.sh --download-wheels .whl   # here: the wheels the GPU machine lacks
#   bash benchmarks/gpu.sh --budget 400 --repeats 20  # other options go to throughput.py
# --budget: seconds for the measurements (default 480), torch first (at most 2/5 of it),
# then JAX; a backend still running at its share is stopped, and the table shows the
# shapes it finished. --results FILE keeps the rows as JSON lines (else a temporary file).
# Environment: PYTHON (default python3), the interpreter with torch and JAX (and Keras, or
# give --wheels; a folder .whl is used by itself where PYTHON has no Keras).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3

# Packages of Keras's dependency tree that the lent machines' image already has (its
# package list): --download-wheels fetches Keras and the rest of the tree.
IMAGE_HAS="absl-py numpy rich h5py ml-dtypes packaging typing-extensions markdown-it-py pygments"
# The lent machines: CPython 3.12 on x86-64 Linux.
WHEEL_TARGET=(--only-binary=:all: --no-deps --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

fail() {
    echo "gpu.sh: $*" >&2
    exit 2
}

# Keras at the version $PYTHON has, and each package it needs (on Python 3.12, Linux) that
# the image lacks, at the version $PYTHON has, into $1 (emptied of wheels first: two
# versions of one package stop the install there).
download_wheels() {
    local folder="$1"
    "$PYTHON" -c 'import keras, packaging' 2>/dev/null ||
        fail "--download-wheels takes the versions from PYTHON=$PYTHON, which lacks Keras; set PYTHON to the project's venv."
    mkdir -p "$folder"
    rm -f "$folder"/*.whl
    "$PYTHON" - "$folder" "$IMAGE_HAS" "${WHEEL_TARGET[@]}" <<'EOF'
import glob, importlib.metadata as metadata, subprocess, sys, zipfile
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

folder, image_has, target = sys.argv[1], set(sys.argv[2].split()), sys.argv[3:]
machine = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
queue, fetched = ["keras"], set()
while queue:
    name = queue.pop(0)
    if name in fetched or name in image_has:
        continue
    fetched.add(name)
    try:
        spec = f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:  # needed there only: the newest
        spec = name
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", *target, "-d", folder, spec], check=True)
    print(spec)
    wheel = next(w for w in glob.glob(f"{folder}/*.whl")
                 if canonicalize_name(w.split("/")[-1].split("-")[0]) == name)
    with zipfile.ZipFile(wheel) as z:
        text = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            requirement = Requirement(line.split(":", 1)[1])
            if requirement.marker is None or requirement.marker.evaluate({**machine, "extra": ""}):
                queue.append(canonicalize_name(requirement.name))
EOF
    ls -l "$folder"/*.whl
    echo "$(du -ch "$folder"/*.whl | tail -1 | cut -f1) in $folder"
}

smoke=0 wheels="" budget=480 results="" options=()
while (($#)); do
    case "$1" in
        --cpu-smoke) smoke=1 ;;
        --wheels) wheels="${2:?--wheels needs a folder}"; shift ;;
        --download-wheels) download_wheels "${2:?--download-wheels needs a folder}"; exit ;;
        --budget) budget="${2:?--budget needs seconds}"; shift ;;
        --results) results="${2:?--results needs a file}"; shift ;;
        *) options+=("$1") ;;
    esac
    shift
done
[[ "$budget" =~ ^[1-9][0-9]*$ ]] || fail "--budget takes a positive number of seconds, got '$budget'."

# No Keras here but wheels in .whl (as on a lent machine): use them.
if [[ -z "$wheels" && -d .whl ]] &&
    ! "$PYTHON" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("keras") is None)'; then
    wheels=.whl
fi
site="" scratch=""
trap 'rm -rf "$site" "$scratch"' EXIT  # the temporary install and results, not --results
if [[ -n "$wheels" ]]; then
    compgen -G "$wheels/*.whl" >/dev/null ||
        fail "no wheels in '$wheels': make them with 'make gpu-wheels' (they travel in .whl)."
    site=$(mktemp -d "${TMPDIR:-/tmp}/gpu-site.XXXXXX")
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
    echo "installed into $site: $(cd "$wheels" && echo *.whl)"
fi
# The working tree's keras_recnorm first, then the wheels, then what was there.
export PYTHONPATH="$PWD${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"

if ((smoke)); then
    # One thread: on a busy CPU, torch's spinning threads make a tiny step 10x slower.
    export CUDA_VISIBLE_DEVICES="" JAX_PLATFORMS=cpu OMP_NUM_THREADS=1
    options=(--quick "${options[@]}")
else
    options=(--shape standard --shape 64,100,512,512 --repeats 10 --trials 1 --require-gpu "${options[@]}")
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    fi
    "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' ||
        fail "torch sees no CUDA GPU; run it where one is (or pass --cpu-smoke to check the script on CPU)."
fi

if [[ -z "$results" ]]; then
    scratch=$(mktemp "${TMPDIR:-/tmp}/gpu-results.XXXXXX")
    results="$scratch"
fi
: >"$results"
start=$SECONDS failed=""
for backend in torch jax; do
    left=$((budget - (SECONDS - start)))
    share=$([[ $backend == torch ]] && echo $((budget * 2 / 5)) || echo "$left")
    share=$((share < left ? share : left))
    share=$((share > 0 ? share : 1))  # timeout 0 would mean no limit
    extra=(--cudnn-check)
    [[ $backend == torch ]] && extra+=(--torch-rnn)
    echo "[$((SECONDS - start)) s] $backend: at most $share s" >&2
    status=0
    timeout --kill-after=10 "$share" "$PYTHON" benchmarks/throughput.py --backend "$backend" --kinds \
        "${extra[@]}" --results "$results" "${options[@]}" || status=$?
    if ((status == 124 || status == 137)); then
        echo "gpu.sh: $backend stopped at its $share s; the table has the shapes it finished." >&2
    elif ((status)); then
        failed+=" $backend"  # the other backend still runs: one lease gives what it can
    fi
done
echo "[$((SECONDS - start)) s] done" >&2
echo
echo "=== summary ($(date -u +%F), benchmarks/gpu.sh) ==="
"$PYTHON" benchmarks/throughput.py --summarize "$results"
[[ -z "$failed" ]] || fail "failed:$failed (its error is above)."
