"""examples/sequential_mnist.py: pixel-sequence data, the model's set-up, a tiny comparison run."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples import sequential_mnist  # noqa: E402
from examples.common.cells import TITLES  # noqa: E402
from examples.common import pixel_sequences  # noqa: E402
from examples.common.pixel_sequences import (  # noqa: E402
    load_digits_sequences,
    load_mnist_sequences,
    pixel_permutation,
)


# --- data -------------------------------------------------------------------


def test_digits_are_64_step_pixel_sequences_in_unit_range():
    data = load_digits_sequences(seed=0)
    assert data.timesteps == 64
    sizes = [len(data.train), len(data.valid), len(data.test)]
    assert sizes == [1197, 300, 300]
    for split in (data.train, data.valid, data.test):
        assert split.x.shape == (len(split), 64, 1)
        assert split.x.dtype == np.float32
        assert split.x.min() >= 0.0 and split.x.max() <= 1.0
        assert set(np.unique(split.y)) == set(range(10))  # stratified: all classes
    assert data.train.x.max() == 1.0  # scaled by the data's maximum, 16


def test_digits_split_is_fixed_by_the_seed_and_disjoint():
    first, again, other = (load_digits_sequences(seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(first.test.x, again.test.x)
    np.testing.assert_array_equal(first.train.y, again.train.y)
    assert not np.array_equal(first.test.x, other.test.x)
    rows = {split: {x.tobytes() for x in getattr(first, split).x}
            for split in ("train", "valid", "test")}
    # Duplicated images exist in the data set; the splits share at most those.
    assert len(rows["test"] & rows["train"]) <= 2
    assert len(rows["valid"] & rows["test"]) <= 2


def test_permutation_is_a_fixed_bijection_applied_to_time_steps():
    perm = pixel_permutation(784, seed=3)
    np.testing.assert_array_equal(np.sort(perm), np.arange(784))
    np.testing.assert_array_equal(perm, pixel_permutation(784, seed=3))
    assert not np.array_equal(perm, pixel_permutation(784, seed=4))
    assert not np.array_equal(perm, np.arange(784))

    data = load_digits_sequences(seed=0)
    perm = pixel_permutation(64, seed=0)
    permuted = data.permuted(perm)
    np.testing.assert_array_equal(permuted.test.x[:, 5, 0], data.test.x[:, perm[5], 0])
    np.testing.assert_array_equal(permuted.test.y, data.test.y)
    # The same pixels, reordered: each sequence keeps its multiset of values.
    np.testing.assert_array_equal(np.sort(permuted.train.x, axis=1),
                                  np.sort(data.train.x, axis=1))


def test_mnist_path_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        data = load_mnist_sequences(data_dir=tmp_path)
    assert data.timesteps == 784
    # One sixth of the training split validates (10k of 60k for the real data).
    assert [len(data.train), len(data.valid), len(data.test)] == [10, 2, 12]
    for split in (data.train, data.valid, data.test):
        assert split.x.shape[1:] == (784, 1)
        assert split.x.dtype == np.float32
        assert 0.0 <= split.x.min() and split.x.max() <= 1.0
        assert split.y.dtype == np.int32 and split.y.min() >= 0 and split.y.max() <= 9


def test_mnist_unprepared_and_offline_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pixel_sequences, "network_reachable", lambda *a, **k: False)
    output = tmp_path / "run"
    status = sequential_mnist.main(
        ["--dataset", "mnist", "--data-dir", str(tmp_path / "tfds"),
         "--output-dir", str(output)])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "MNIST is not prepared" in err and "--data-dir" in err
    assert not output.exists()


@pytest.mark.parametrize("argv", [
    ["--units", "0"],
    ["--epochs", "-1"],
    ["--learning-rate", "0"],
    ["--cell", "gru"],
    ["--data-dir", "x"],  # digits needs no data directory
])
def test_bad_arguments_exit_2(argv, tmp_path, capsys):
    assert sequential_mnist.main(argv + ["--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sequential_mnist.py: error: argument {argv[0]}")
    assert err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_cell_names_and_their_aliases():
    args = sequential_mnist.parse_args(["--cell", "batch_norm", "--output-dir", "unused"])
    assert args.cells == ["batch_norm_lstm"]
    args = sequential_mnist.parse_args(["--cell", "layer_norm_lstm", "--output-dir", "unused"])
    assert args.cells == ["layer_norm_lstm"]
    assert sequential_mnist.parse_args(["--output-dir", "unused"]).cells == [
        "lstm", "layer_norm_lstm", "batch_norm_lstm"]
    help_text = " ".join(sequential_mnist.build_parser().format_help().split())
    assert "older names: layer_norm = layer_norm_lstm, batch_norm = batch_norm_lstm" in help_text


# --- model ------------------------------------------------------------------


def test_recurrent_kernel_is_identity_on_the_candidate_block():
    args = sequential_mnist.parse_args(["--units", "6", "--output-dir", "unused"])
    _, model = sequential_mnist.build_models("layer_norm_lstm", 10, 10, args)
    (kernel,) = [w for w in model.weights if w.name == "recurrent_kernel"]
    i, f, g, o = np.split(np.asarray(kernel), 4, axis=1)
    np.testing.assert_allclose(g, np.eye(6), atol=1e-6)
    gates = np.concatenate([i, f, o], axis=1)
    np.testing.assert_allclose(gates @ gates.T, np.eye(6), atol=1e-5)


def test_bn_initial_state_noise_only_in_training():
    args = sequential_mnist.parse_args(["--units", "5", "--output-dir", "unused"])
    train_model, model = sequential_mnist.build_models("batch_norm_lstm", 8, 10, args)
    assert train_model is not model
    (noise,) = [layer for layer in train_model.layers if layer.name == "initial_states"]
    assert "initial_states" not in [layer.name for layer in model.layers]
    x = np.zeros((400, 8, 1), "float32")
    h, c, step = noise(x, training=True)
    assert np.std(np.asarray(h)) == pytest.approx(0.1, rel=0.1)
    assert not np.any(np.asarray(c)) and not np.any(np.asarray(step))
    assert [tuple(s.shape) for s in (h, c, step)] == [(400, 5), (400, 5), (400, 1)]
    assert not any(np.any(np.asarray(s)) for s in noise(x, training=False))

    args = sequential_mnist.parse_args(["--h0-noise", "0", "--output-dir", "unused"])
    train_model, model = sequential_mnist.build_models("batch_norm_lstm", 8, 10, args)
    assert train_model is model


# --- a tiny `make demo`: --cell all, export, one request ---------------------


def _export_present():
    try:
        import keras_recnorm.export  # noqa: F401
    except ImportError:
        return False
    return (ROOT / "export" / "predict.py").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny demo run shared by the tests below (training is the slow part).

    Without the export code (a partial checkout) only the training script runs.
    """
    import contextlib
    import io

    output = tmp_path_factory.mktemp("demo") / "run"
    training = ["--epochs", "2", "--units", "4", "--batch-size", "20",
                "--max-examples", "40", "--verbose", "0"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        if _export_present():
            from examples import demo

            status = demo.main(["--output-dir", str(output), "--", *training])
        else:
            status = sequential_mnist.main(training + ["--output-dir", str(output)])
    return status, output, printed.getvalue()


def test_tiny_cell_all_run_writes_table_plot_and_models(tiny_run):
    import keras

    status, output, printed = tiny_run
    assert status == 0

    metrics = json.loads((output / "metrics.json").read_text())
    assert list(metrics["cells"]) == ["lstm", "layer_norm_lstm", "batch_norm_lstm"]
    assert metrics["timesteps"] == 64 and metrics["wall_seconds"] > 0
    for cell, m in metrics["cells"].items():
        assert len(m["history"]["val_accuracy"]) == 2
        assert m["best_valid_accuracy"] == max(m["history"]["val_accuracy"])
        assert m["best_epoch"] in (1, 2)
        assert 0.0 <= m["test_accuracy"] <= 1.0
        assert m["seconds_per_epoch"] > 0

    table = (output / "table.md").read_text()
    for title in ("| LSTM |", "| LN-LSTM |", "| BN-LSTM |", "98.9%", "99.0%"):
        assert title in table
        assert title in printed

    assert (output / "validation_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    x = np.random.default_rng(0).random((3, 64, 1)).astype("float32")
    for cell in metrics["cells"]:
        model = keras.saving.load_model(output / cell / "model.keras")
        probabilities = model.predict(x, verbose=0)
        assert probabilities.shape == (3, 10)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # The BN-LSTM was saved with statistics recomputed from training data, not the
    # initial ones (variance 1), and without the training-only noise layer.
    (variance,) = [w for w in model.weights if w.name == "recurrent_moving_variance"]
    assert np.all(np.asarray(variance) < 0.9)
    assert "initial_states" not in [layer.name for layer in model.layers]


def test_demo_exports_the_best_cell_and_serves_one_digit(tiny_run):
    if not _export_present():
        pytest.skip("keras_recnorm.export or export/predict.py is not present")
    status, output, printed = tiny_run
    assert status == 0
    metrics = json.loads((output / "metrics.json").read_text())
    cells = metrics["cells"]
    best = max(cells, key=lambda c: cells[c]["best_valid_accuracy"])
    assert f"best validation accuracy: {TITLES[best]}" in printed
    assert (output / "export" / "1" / "saved_model.pb").exists()
    served = [line for line in printed.splitlines() if "export/predict.py on the first" in line]
    assert len(served) == 1 and "predicted" in served[0]
    for where in ("table.md", "validation_accuracy.png", "export/1"):
        assert where in printed
