"""The benchmark scripts run (so they can't rot). They assert that every row is printed
with a positive time, never how fast anything is."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import kinds

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
# Every whole-sequence layer of keras_recnorm.kinds.KINDS -> its Keras twin.
LAYER_TWINS = {k.layer.__name__: f"keras.layers.{k.keras_twin}" for k in kinds(layer=True)}


def run(command, **env):
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=ROOT, env={**ENV, **env}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def rows(stdout):
    """`{layer: (twin, train ratio, train ms, infer ratio, infer ms)}` from the table."""
    table = {}
    for line in stdout.splitlines():
        for twin in set(LAYER_TWINS.values()):
            if f" {twin} " in line:
                name, rest = line.split(f" {twin} ")
                fields = rest.split()
                table[name.strip()] = (twin, *map(float, fields[1:3]), *map(float, fields[4:6]))
    return table


def test_quick_run_measures_every_layer_against_its_twin():
    stdout = run([sys.executable, "benchmarks/throughput.py", "--quick"], KERAS_BACKEND="tensorflow")
    assert "backend tensorflow" in stdout
    assert "CPU: " in stdout and " cores" in stdout
    table = rows(stdout)
    expected = {
        **LAYER_TWINS, **{twin: twin for twin in LAYER_TWINS.values()},
        "RNN(LayerNormLSTMCell)": "keras.layers.LSTM", "hand-written LN cell": "keras.layers.LSTM",
    }
    assert {name: row[0] for name, row in table.items()} == expected
    for name, (_, *figures) in table.items():
        assert all(value > 0 for value in figures), name


def test_backend_option_overrides_the_environment():
    stdout = run(
        [sys.executable, "benchmarks/throughput.py", "--quick", "--backend", "jax",
         "--only", "LayerNormLSTM"],
        KERAS_BACKEND="tensorflow",
    )
    assert "backend jax" in stdout
    assert set(rows(stdout)) == {"keras.layers.LSTM", "LayerNormLSTM"}


def test_inference_mode_times_inference_only():
    stdout = run(
        [sys.executable, "benchmarks/throughput.py", "--quick", "--mode", "infer", "--only",
         "BatchNormGRU"],
        KERAS_BACKEND="tensorflow",
    )
    lines = [line for line in stdout.splitlines() if " keras.layers.GRU " in line]
    assert [line.split()[0] for line in lines] == ["keras.layers.GRU", "BatchNormGRU"]
    for line in lines:
        fields = line.split(" keras.layers.GRU ")[1].split()
        assert fields[1:4] == ["-", "-", "-"]  # training not timed
        assert float(fields[4]) > 0 and float(fields[5]) > 0


def test_bad_shape_is_a_clear_error():
    result = subprocess.run(
        [sys.executable, "benchmarks/throughput.py", "--shape", "4,5,3"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=ENV,
    )
    assert result.returncode == 2
    assert "expected B,T,D,U" in result.stderr


@pytest.mark.skipif(not Path("/bin/bash").exists(), reason="needs bash")
def test_gpu_script_smoke_runs_every_kind_on_jax_and_torch_beside_torch_rnn():
    from keras_recnorm.kinds import KINDS

    stdout = run(["bash", "benchmarks/gpu.sh", "--cpu-smoke"], PYTHON=sys.executable)
    summary = stdout.split("=== summary")[1]
    table = {}
    for line in summary.splitlines():
        if line.startswith(("torch ", "jax ")):
            fields = line.split()
            table[fields[0], fields[1]] = (" ".join(fields[2:-6]), *map(float, fields[-6:]))
    twins = sorted({f"keras.layers.{k.keras_twin}" for k in KINDS if k.layer is not None})
    ours = [k.layer.__name__ for k in KINDS if k.layer is not None]
    expected = {(backend, name) for backend in ("torch", "jax") for name in twins + ours}
    # torch's module for each twin: LSTM, GRU, and RNN for SimpleRNN.
    torch_rnns = {("torch", "torch.nn." + twin.split(".")[-1].replace("SimpleRNN", "RNN")) for twin in twins}
    assert set(table) == expected | torch_rnns
    for (backend, name), (cudnn, *figures) in table.items():
        # On a CPU nothing reaches cuDNN; only the twins and torch's RNNs are checked.
        assert cudnn == ("-" if name in ours else "no"), (backend, name)
        assert all(value > 0 for value in figures), (backend, name)
    assert "backend jax: keras_recnorm" in summary and "backend torch: keras_recnorm" in summary


def test_gpu_script_without_wheels_is_a_clear_error(tmp_path):
    result = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--wheels", str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=ENV,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"gpu.sh: no wheels in '{tmp_path}': make them with 'make gpu-wheels' (they travel in .whl)."
    )


def test_profile_script_runs():
    stdout = run(
        [sys.executable, "benchmarks/profile_small.py", "--layer", "LayerNormGRU", "--shape",
         "2,3,2,4", "--repeats", "1", "--jit-compile", "off"]
    )
    lines = [line for line in stdout.splitlines() if line.endswith("]")]
    names = [line[:32].strip() for line in lines]
    assert names == ["LayerNormGRU forward", "LayerNormGRU train", "GRU forward", "GRU train",
                     "matmul floor forward"]
