"""examples/sentence_classification.py and examples/common/text_data.py.

Tiny models, one epoch, a few dozen sentences: these check the plumbing (data paths, outputs,
errors, export), not accuracy. TFDS is mocked (`tfds.testing.mock_data`); no network.
"""

import csv
import json
import socket
import time

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
tf = pytest.importorskip("tensorflow")

from examples import sentence_classification as sc  # noqa: E402
from tests.conftest import run_example  # noqa: E402
from examples.common import text_data, tfds_data  # noqa: E402
from examples.common.cells import TITLES  # noqa: E402

TINY = ["--units", "4", "--embedding-dim", "4", "--max-length", "8", "--vocab-size", "60",
        "--epochs", "1", "--batch-size", "8", "--verbose", "0"]

POSITIVE = ["a good and moving film", "great fun , truly great", "fine acting and a fine plot",
            "warm , funny and good", "a great joy to watch"]
NEGATIVE = ["a dull and boring mess", "bad , bad and worse", "tedious plot and poor acting",
            "awful , silly and dull", "a boring waste of time"]


def write_label_sentence(path, n, encoding_break=False):
    lines = []
    for i in range(n):
        label, pool = (1, POSITIVE) if i % 2 else (0, NEGATIVE)
        lines.append(f"{label} {pool[i % 5]} {i}".encode())
    if encoding_break:
        lines.append("1 a caf\xe9 of cr\xe8me , good".encode("latin-1"))  # not UTF-8
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def run_script(argv, capsys):
    status = sc.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def error_line(err):
    lines = [line for line in err.strip().splitlines()
             if line.startswith("sentence_classification.py: error:")]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------ text_data


def test_reads_both_formats_and_latin1(tmp_path):
    plain = write_label_sentence(tmp_path / "plain.txt", 4, encoding_break=True)
    texts, labels, _ = text_data.read_labeled_sentences(plain)
    assert labels == ["0", "1", "0", "1", "1"]
    assert texts[0] == "a dull and boring mess 0"
    assert texts[-1] == "a caf\xe9 of cr\xe8me , good"

    tsv = tmp_path / "train.tsv"
    tsv.write_text("sentence\tlabel\nhide new secretions \t0\nthe greatest musicians \t1\n")
    assert text_data.read_labeled_sentences(tsv) == (
        ["hide new secretions", "the greatest musicians"], ["0", "1"], 0)


def test_bad_lines_and_labels_are_reported(tmp_path):
    # custrev.all has lines holding a label and no sentence: skipped and counted.
    gaps = tmp_path / "gaps.txt"
    gaps.write_text("1 fine\n\n0\n0 dull\n")
    assert text_data.read_labeled_sentences(gaps) == (["fine", "dull"], ["1", "0"], 1)
    unlabeled = tmp_path / "prose.txt"
    unlabeled.write_text("".join(f"word{i} and more words\n" for i in range(30)))
    with pytest.raises(text_data.DataError, match="prose.txt does not look like 'label sentence'"):
        text_data.read_labeled_sentences(unlabeled)
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("sentence\tlabel\ngood\t1\nno label here\n")
    with pytest.raises(text_data.DataError, match=r"bad.tsv:3: expected 2 tab-separated"):
        text_data.read_labeled_sentences(tsv)
    assert text_data.class_names_from(["pos", "neg", "pos"]) == ["neg", "pos"]
    assert text_data.class_names_from(["2", "0"]) == ["0", "1", "2"]
    np.testing.assert_array_equal(text_data.encode_labels(["1", "0", "01"], ["0", "1"]),
                                  [1, 0, 1])
    with pytest.raises(text_data.DataError, match="label '7' is not one of"):
        text_data.encode_labels(["7"], ["0", "1"], source="dev.txt")


def test_stratified_folds_partition_and_keep_class_balance():
    labels = np.array([0] * 30 + [1] * 10)
    folds = text_data.stratified_folds(labels, 5, seed=3)
    tested = np.concatenate([test for _, test in folds])
    np.testing.assert_array_equal(np.sort(tested), np.arange(40))
    for train, test in folds:
        assert len(test) == 8 and not set(train) & set(test)
        assert (labels[test] == 1).sum() == 2
    again = text_data.stratified_folds(labels, 5, seed=3)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again))
    with pytest.raises(text_data.DataError):
        text_data.stratified_folds(labels, 1)


# ------------------------------------------------------------------------ the script


def test_help_explains_every_option(capsys):
    parser = sc.build_parser()
    undocumented = [a.dest for a in parser._actions if not (a.help and a.help.strip())]
    assert undocumented == []
    with pytest.raises(SystemExit) as exited:
        sc.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for option in ("--dataset", "--data-dir", "--text-key", "--label-key", "--train-file",
                   "--cv", "--cell", "--bidirectional", "--units", "--layers", "--vocab-size",
                   "--max-length", "--epochs", "--batch-size", "--learning-rate",
                   "--normalized-learning-rate", "--layer-norm-learning-rate",
                   "--batch-norm-learning-rate", "--seed", "--seeds", "--output-dir",
                   "--distribute", "--cpu-devices", "--coordinator", "--num-processes",
                   "--process-id"):
        assert option in out
    assert ("older names: layer_norm = layer_norm_lstm, batch_norm = batch_norm_lstm"
            in " ".join(out.split()))


def test_tfds_end_to_end_compares_cells_and_exports_a_model_for_sentences(tmp_path, capsys):
    out = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=24):
        status, stdout, err = run_script(
            ["--dataset", "glue/sst2", "--cell", "all", "--output-dir", out, *TINY], capsys)
    assert status == 0, err
    assert "text 'sentence', label 'label'" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["class_names"] == ["negative", "positive"]
    assert set(metrics["cells"]) == {"lstm", "layer_norm_lstm", "batch_norm_lstm"}
    for cell, result in metrics["cells"].items():
        assert 0 <= result["test_accuracy"] <= 1 and result["epochs_trained"] == 1
        assert result["seconds_per_epoch"] > 0
        assert f"{TITLES[cell]} " in stdout  # a row of the comparison table
    assert metrics["best_cell"] in metrics["cells"]
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["cell"] for r in rows) == ["batch_norm_lstm", "layer_norm_lstm", "lstm"]
    for png in ("validation_accuracy.png", "training_loss.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # model.keras takes raw sentences; the SavedModel answers them the same way.
    import keras

    model = keras.saving.load_model(out / "model.keras")
    sentences = np.array(["a fine film", "zzz unknown words here and more than eight tokens"])
    expected = model.predict(sentences.astype(object), verbose=0)
    assert expected.shape == (2, 2)
    np.testing.assert_allclose(expected.sum(axis=1), 1, rtol=1e-5)
    assert metrics["saved_model"] == str(out / "saved_model" / "1")
    serve = tf.saved_model.load(metrics["saved_model"]).signatures["serving_default"]
    served = serve(inputs=tf.constant(sentences))["outputs"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_several_text_features_need_a_choice(tmp_path, capsys, monkeypatch):
    out = tmp_path / "mnli"
    with tfds.testing.mock_data(num_examples=16):
        status, _, err = run_script(["--dataset", "glue/mnli", "--output-dir", out, *TINY],
                                    capsys)
        assert status == 2
        line = error_line(err)
        assert "'premise'" in line and "'hypothesis'" in line and "--text-key" in line
        assert not out.exists()

        # With a choice it trains; GLUE's unlabeled test split (all -1) is not scored.
        real_load = tfds_data.load_text_split

        def unlabeled_test(name, split, *args, **kwargs):
            texts, labels = real_load(name, split, *args, **kwargs)
            return texts, (np.full_like(labels, -1) if split.startswith("test") else labels)

        monkeypatch.setattr(tfds_data, "load_text_split", unlabeled_test)
        status, stdout, err = run_script(
            ["--dataset", "glue/mnli", "--text-key", "hypothesis", "--cell", "lstm",
             "--layers", "2", "--no-export", "--output-dir", out, *TINY], capsys)
    assert status == 0, err
    assert "is unlabeled (all labels -1): not scored" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["class_names"] == ["entailment", "neutral", "contradiction"]
    assert "test_accuracy" not in metrics["cells"]["lstm"]
    assert metrics["arguments"]["layers"] == 2
    assert not (out / "model.keras").exists()


def test_local_files_with_a_tsv_validation_file(tmp_path, capsys):
    train = write_label_sentence(tmp_path / "train.txt", 40, encoding_break=True)
    valid = tmp_path / "dev.tsv"
    valid.write_text("sentence\tlabel\n" + "".join(
        f"{s}\t{1 if s in POSITIVE else 0}\n" for s in POSITIVE + NEGATIVE))
    test = write_label_sentence(tmp_path / "test.txt", 10)
    out = tmp_path / "local"
    status, stdout, err = run_script(
        ["--train-file", train, "--valid-file", valid, "--test-file", test, "--cell",
         "layer_norm", "--bidirectional", "--no-export", "--output-dir", out,
         *TINY], capsys)
    assert status == 0, err
    assert "41 training, 10 validation, 10 test sentences; 2 classes" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["class_names"] == ["0", "1"]
    assert 0 <= metrics["cells"]["layer_norm_lstm"]["test_accuracy"] <= 1  # `layer_norm`: alias


def test_normalized_cells_train_with_their_own_learning_rate(tmp_path, capsys):
    train = write_label_sentence(tmp_path / "train.txt", 40)
    test = write_label_sentence(tmp_path / "test.txt", 10)
    out = tmp_path / "rates"
    status, stdout, err = run_script(
        ["--train-file", train, "--test-file", test, "--cell", "all", "--learning-rate", "2e-4",
         "--normalized-learning-rate", "3e-3", "--no-export", "--output-dir", out, *TINY],
        capsys)
    assert status == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["arguments"]["normalized_learning_rate"] == 3e-3
    # The rates are read back from each cell's optimizer, not copied from the arguments.
    rates = {cell: result["learning_rate"] for cell, result in metrics["cells"].items()}
    assert rates == pytest.approx({"lstm": 2e-4, "layer_norm_lstm": 3e-3, "batch_norm_lstm": 3e-3})
    assert "0.003" in stdout and "0.0002" in stdout  # the table's lr column

    # A cell's own rate overrides the normalized cells' rate, for that cell alone.
    for options, expected in [
            (["--normalized-learning-rate", "3e-3", "--layer-norm-learning-rate", "7e-4"],
             {"lstm": 2e-4, "layer_norm_lstm": 7e-4, "batch_norm_lstm": 3e-3}),
            (["--batch-norm-learning-rate", "5e-3"],
             {"lstm": 2e-4, "layer_norm_lstm": 2e-4, "batch_norm_lstm": 5e-3})]:
        status, _, err = run_script(
            ["--train-file", train, "--cell", "all", "--learning-rate", "2e-4", *options,
             "--no-export", "--output-dir", out, *TINY], capsys)
        assert status == 0, err
        metrics = json.loads((out / "metrics.json").read_text())
        rates = {cell: result["learning_rate"] for cell, result in metrics["cells"].items()}
        assert rates == pytest.approx(expected)

    # Without the option every cell takes --learning-rate.
    status, _, err = run_script(
        ["--train-file", train, "--cell", "layer_norm_lstm", "--learning-rate", "2e-4",
         "--no-export", "--output-dir", out, *TINY], capsys)
    assert status == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cells"]["layer_norm_lstm"]["learning_rate"] == pytest.approx(2e-4)


def test_cross_validation_reports_mean_and_std_over_folds(tmp_path, capsys):
    data = write_label_sentence(tmp_path / "mr.all", 45)
    out = tmp_path / "cv"
    status, stdout, err = run_script(
        ["--train-file", data, "--cv", "3", "--max-examples", "36", "--cell", "lstm",
         "--output-dir", out, *TINY], capsys)
    assert status == 0, err
    assert "3-fold stratified CV of 36 sentences" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cv_folds"] == 3
    lstm = metrics["cells"]["lstm"]
    folds = np.array(lstm["test_accuracy_folds"])
    assert len(folds) == 3 and np.all((0 <= folds) & (folds <= 1))
    assert lstm["test_accuracy_mean"] == pytest.approx(folds.mean())
    assert lstm["test_accuracy_std"] == pytest.approx(folds.std())
    assert f"{100 * folds.mean():.1f} ±" in stdout
    with open(out / "history.csv") as f:
        assert sorted({row["fold"] for row in csv.DictReader(f)}) == ["1", "2", "3"]
    assert not (out / "model.keras").exists()  # the fold models are not kept


def test_seeds_report_mean_and_std_and_each_seed_is_a_real_run(tmp_path, capsys):
    train = write_label_sentence(tmp_path / "train.txt", 40)
    valid = write_label_sentence(tmp_path / "valid.txt", 10)  # the same split for every seed
    test = write_label_sentence(tmp_path / "test.txt", 10)
    common = ["--train-file", train, "--valid-file", valid, "--test-file", test, "--cell", "all",
              *TINY, "--epochs", "2"]
    out = tmp_path / "seeds"
    status, stdout, err = run_script([*common, "--seed", "5", "--seeds", "2", "--no-export",
                                      "--output-dir", out], capsys)
    assert status == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seeds"] == [5, 6]
    for cell, stats in metrics["cells"].items():
        runs = stats["runs"]
        assert [r["seed"] for r in runs] == [5, 6]
        for key in ("best_val_accuracy", "test_accuracy"):
            values = np.array([r[key] for r in runs])
            assert stats[f"{key}_mean"] == pytest.approx(values.mean())
            assert stats[f"{key}_std"] == pytest.approx(values.std())
    lstm = metrics["cells"]["lstm"]
    assert f"{100 * lstm['test_accuracy_mean']:.1f} ± {100 * lstm['test_accuracy_std']:.1f}" \
        in stdout
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(row["cell"], row["seed"]) for row in rows} == {
        (cell, seed) for cell in sc.CELLS for seed in ("5", "6")}
    # Each seed is measured against the LSTM trained with the same seed.
    for cell, stats in metrics["cells"].items():
        for r, lstm_run in zip(stats["runs"], lstm["runs"]):
            curve = [float(row["val_accuracy"]) for row in rows
                     if row["cell"] == cell and row["seed"] == str(r["seed"])]
            assert r["epochs_to_lstm_best"] == sc.epochs_to_reach(
                curve, round(lstm_run["best_val_accuracy"], 6))
    # The two seeds start from different weights: their first epochs differ.
    losses = {row["seed"]: float(row["loss"]) for row in rows
              if row["cell"] == "lstm" and row["epoch"] == "1"}
    assert losses["5"] != losses["6"]
    # The model that would be exported is the run with the best validation accuracy.
    best = metrics["cells"][metrics["best_cell"]]["runs"][metrics["best_seed"] - 5]
    assert best["best_val_accuracy"] == max(
        r["best_val_accuracy"] for stats in metrics["cells"].values() for r in stats["runs"])

    # Seed 6 of the two is the run that --seed 6 alone makes.
    alone = tmp_path / "alone"
    status, _, err = run_script([*common, "--cell", "lstm", "--seed", "6", "--no-export",
                                 "--output-dir", alone], capsys)
    assert status == 0, err
    alone_metrics = json.loads((alone / "metrics.json").read_text())
    assert "seeds" not in alone_metrics
    single = alone_metrics["cells"]["lstm"]
    assert single["seed"] == 6
    assert single["best_val_accuracy"] == pytest.approx(lstm["runs"][1]["best_val_accuracy"])
    assert single["test_accuracy"] == pytest.approx(lstm["runs"][1]["test_accuracy"])


def test_no_network_stops_at_once_with_one_line_and_no_files(tmp_path, capsys, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable (simulated)")

    monkeypatch.setattr(socket, "create_connection", no_network)
    out = tmp_path / "never"
    start = time.perf_counter()
    status, _, err = run_script(["--dataset", "glue/sst2", "--data-dir", tmp_path / "empty",
                                 "--output-dir", out], capsys)
    assert time.perf_counter() - start < 15
    assert status == 2
    line = error_line(err)
    assert "glue/sst2" in line and "--data-dir" in line and "--train-file" in line
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("argv, expected", [
    (["--train-file", "missing.txt"], "argument --train-file: no such file: missing.txt"),
    (["--cell", "layernorm"], "argument --cell: invalid choice: 'layernorm'"),
    (["--units", "0"], "argument --units: expected a positive integer, got 0"),
    (["--cv", "5"], "--cv needs --train-file"),
    (["--train-file", __file__, "--cv", "5", "--seeds", "3"], "--cv already averages over folds"),
    (["--dataset", "imdb_review"], "Did you mean imdb_reviews"),
    (["--train-file", __file__, "--num-processes", "2"],
     "--coordinator and --num-processes need --distribute jax"),
    (["--train-file", __file__, "--cpu-devices", "2"], "--cpu-devices needs --distribute mirrored"),
])
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys, argv, expected):
    out = tmp_path / "never"
    status, _, err = run_script([*argv, "--output-dir", out], capsys)
    assert status == 2
    assert expected in error_line(err)
    assert not out.exists()


# ------------------------------------------------------------------------ --distribute
# Each mode needs its devices set up before TensorFlow/JAX start: a fresh process per run.


def run_distributed(argv, backend, cwd, env=None):
    return run_example("sentence_classification.py", argv, backend, cwd, env)


def test_distribute_mirrored_over_two_cpu_devices(tmp_path):
    data = write_label_sentence(tmp_path / "train.txt", 40)
    out = tmp_path / "out"
    stdout = run_distributed(["--train-file", data, "--cell", "batch_norm_lstm", "--no-export",
                              "--distribute", "mirrored", "--cpu-devices", "2",
                              "--output-dir", out, *TINY], "tensorflow", tmp_path)
    assert "--distribute mirrored: MirroredStrategy over 2 replica(s)" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distribute"] == "MirroredStrategy over 2 replica(s)"
    assert metrics["cells"]["batch_norm_lstm"]["epochs_trained"] == 1


def test_distribute_jax_over_two_devices_saves_the_model(tmp_path):
    data = write_label_sentence(tmp_path / "train.txt", 40)
    out = tmp_path / "out"
    # 36 training and 4 validation sentences: whole batches of 4 on 2 devices.
    argv = ["--train-file", data, "--cell", "batch_norm_lstm", "--distribute", "jax",
            "--output-dir", out, *TINY, "--batch-size", "4"]
    stdout = run_distributed(argv, "jax", tmp_path,
                             {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert "JAX DataParallel over 2 device(s) in 1 process(es)" in stdout
    assert "KERAS_BACKEND=tensorflow python export/export_model.py" in stdout
    model = keras_load(out / "model.keras")
    statistics = [w for w in model.weights if "moving_mean" in w.path]
    assert statistics and all(np.abs(np.asarray(w)).max() > 0 for w in statistics)
    assert json.loads((out / "metrics.json").read_text())["saved_model"] is None


def keras_load(path):
    import keras

    import keras_recnorm  # noqa: F401 (registers the layers)

    return keras.saving.load_model(path)
