"""Skip-thought example: sentence splitting, triples, training (local files and mocked TFDS),
resume from a checkpoint, SavedModel export, and the linear probe.

Models are tiny (8 units, a 40-word vocabulary); these tests check behaviour, not quality.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from examples import skip_thoughts, skip_thoughts_eval  # noqa: E402
from tests.conftest import run_example  # noqa: E402
from examples.common.sentences import (  # noqa: E402
    build_triples,
    iter_triples,
    split_sentences,
)

# --------------------------------------------------------------------------------------------
# Sentence splitting and triples
# --------------------------------------------------------------------------------------------


def test_split_drops_speaker_labels_and_ends_sentences_at_paragraphs():
    text = (
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
        "All:\nSpeak, speak.\n\n"
        "First Citizen:\nLet us kill him, and we'll have corn\nat our own price.\nIs't a verdict?\n"
        "\n  \n"
        "MENENIUS:\nWhat work's, my countrymen, in hand? where go you\n"
        "With bats and clubs: the matter; speak\n\n"
        "TITUS:\n\n"
    )
    assert split_sentences(text) == [
        "Before we proceed any further, hear me speak.",
        "Speak, speak.",
        "Let us kill him, and we'll have corn at our own price.",
        "Is't a verdict?",
        "What work's, my countrymen, in hand?",
        "where go you With bats and clubs: the matter; speak",  # paragraph end ends it
    ]
    kept = split_sentences(text, drop_labels=False)
    assert kept[:2] == ["First Citizen: Before we proceed any further, hear me speak.",
                        "All: Speak, speak."]
    assert kept[-1] == "TITUS:"


def test_split_keeps_abbreviations_initials_and_closing_quotes():
    text = ('Mr. Holmes met J. R. Watson at 5 p.m. on Baker St. "Where?" he asked!\r\n'
            "It rained (all day.) Then it stopped... Then, etc. and so on")
    assert split_sentences(text) == [
        'Mr. Holmes met J. R. Watson at 5 p.m. on Baker St. "Where?"',
        "he asked!",
        "It rained (all day.)",
        "Then it stopped...",
        "Then, etc. and so on",
    ]
    # A long label-like first line is speech, not a label.
    assert split_sentences("So, now the gates are ope: now prove good seconds:\nGo.") == [
        "So, now the gates are ope: now prove good seconds: Go."]


def test_triples_never_cross_document_boundaries():
    documents = [["a1", "a2", "a3", "a4"], ["b1", "b2"], [], ["c1", "c2", "c3"]]
    sentences, triples = build_triples(documents)
    assert sentences == ["a1", "a2", "a3", "a4", "b1", "b2", "c1", "c2", "c3"]
    assert triples.dtype == np.int64 and triples.shape == (3, 3)
    assert list(iter_triples(documents)) == [
        ("a1", "a2", "a3"), ("a2", "a3", "a4"), ("c1", "c2", "c3")]
    assert build_triples([])[1].shape == (0, 3)


# --------------------------------------------------------------------------------------------
# Training: a tiny corpus in two files, interrupted after epoch 1 and resumed
# --------------------------------------------------------------------------------------------

WARM = "sun warm light bright gold summer smile sweet".split()
COLD = "rain cold dark storm grey winter frown bitter".split()
COMMON = "the a my your is was and but so very".split()


def synthetic_sentence(rng, topic):
    words = list(rng.choice(topic, size=rng.integers(2, 4))) + list(
        rng.choice(COMMON, size=rng.integers(1, 3)))
    rng.shuffle(words)
    return " ".join(words).capitalize() + rng.choice([".", "!", "?"])


def write_corpus(directory, rng):
    paths = []
    for name in ("first.txt", "second.txt"):
        paragraphs = []
        for _ in range(12):
            topic = WARM if rng.random() < 0.5 else COLD
            paragraphs.append("\n".join(synthetic_sentence(rng, topic) for _ in range(5)))
        path = directory / name
        path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
        paths.append(str(path))
    return paths


def tiny_args(output_dir, *extra):
    return ["--units", "8", "--embedding-dim", "8", "--vocab-size", "40", "--max-length", "6",
            "--batch-size", "16", "--verbose", "0", "--no-export-check",
            "--output-dir", str(output_dir), *extra]


class InterruptAfterFirstEpoch(keras.callbacks.Callback):
    """Stops training with an exception once epoch 0 has been checkpointed."""

    def on_epoch_end(self, epoch, logs=None):
        self.weights = [np.array(w) for w in self.model.get_weights()]
        self.iterations = int(self.model.optimizer.iterations.numpy())
        raise RuntimeError("interrupted on purpose")


class RecordStart(keras.callbacks.Callback):
    """Records the weights fit starts from (after BackupAndRestore) and the epochs it runs."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_train_begin(self, logs=None):
        self.weights = [np.array(w) for w in self.model.get_weights()]
        self.iterations = int(self.model.optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One interrupted and resumed training run on two local text files."""
    root = tmp_path_factory.mktemp("skip_thoughts")
    files = write_corpus(root, np.random.default_rng(0))
    output_dir = root / "run"
    argv = ["--text-files", *files, "--epochs", "2", "--learning-rate", "0.02",
            *tiny_args(output_dir)]

    interrupt = InterruptAfterFirstEpoch()
    with pytest.raises(RuntimeError, match="interrupted on purpose"):
        skip_thoughts.main(argv, extra_callbacks=[interrupt])
    after_interrupt = {
        "history_rows": len(skip_thoughts.read_history(output_dir / "history.csv")),
        "encoder_written": (output_dir / "encoder.keras").exists(),
        "checkpoint": (output_dir / "backup" / "training_metadata.json").exists(),
    }
    resumed = RecordStart()
    assert skip_thoughts.main(argv, extra_callbacks=[resumed]) == 0
    return {"root": root, "files": files, "output_dir": output_dir, "interrupt": interrupt,
            "resumed": resumed, "after_interrupt": after_interrupt}


def test_interrupted_run_resumes_from_its_checkpoint(trained):
    assert trained["after_interrupt"] == {
        "history_rows": 1, "encoder_written": False, "checkpoint": True}
    interrupt, resumed = trained["interrupt"], trained["resumed"]
    # The second run starts at epoch 1 with the weights and optimizer state of epoch 0's end.
    assert resumed.epochs == [1]
    assert resumed.iterations == interrupt.iterations > 0
    for restored, saved in zip(resumed.weights, interrupt.weights):
        np.testing.assert_array_equal(restored, saved)
    history = skip_thoughts.read_history(trained["output_dir"] / "history.csv")
    assert len(history) == 2
    assert all(np.isfinite(row["val_perplexity"]) and row["perplexity"] > 1 for row in history)
    # Training finished: the checkpoint is gone, the outputs are there.
    assert not (trained["output_dir"] / "backup").exists()
    for name in ("encoder.keras", "perplexity.png", "saved_model/1/saved_model.pb"):
        assert (trained["output_dir"] / name).exists(), name


def test_exported_encoder_answers_raw_sentences_like_the_keras_encoder(trained):
    sentences = ["The sun is warm.", "Rain and storm, my bitter winter!",
                 "A word it never saw: zebra.", "", "so so so so so so so so so so so so"]
    encoder = keras.saving.load_model(trained["output_dir"] / "encoder.keras")
    expected = np.asarray(encoder(tf.constant(sentences)))
    serve = tf.saved_model.load(str(trained["output_dir"] / "saved_model" / "1"))
    served = serve.signatures["serving_default"](inputs=tf.constant(sentences))["outputs"]
    assert expected.shape == (len(sentences), 8)
    np.testing.assert_allclose(served.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert np.ptp(expected[:3], axis=0).max() > 1e-3  # different sentences, different vectors


def test_probe_is_deterministic_and_beats_majority(trained, tmp_path):
    rng = np.random.default_rng(1)
    lines = [f"{label} {synthetic_sentence(rng, WARM if label else COLD)}"
             for label in rng.permutation([0] * 45 + [1] * 25)]
    task = tmp_path / "synthetic.all"
    task.write_text("\n".join(lines) + "\n0 \n", encoding="latin-1")  # one empty sentence
    results = []
    for run in range(2):
        output = tmp_path / f"results{run}.json"
        argv = ["--encoder", f"tiny={trained['output_dir'] / 'encoder.keras'}",
                "--task", f"SYN={task}", "--folds", "5", "--output", str(output)]
        assert skip_thoughts_eval.main(argv) == 0
        results.append(json.loads(output.read_text()))
    assert results[0] == results[1]
    syn = results[0]["SYN"]
    assert set(syn) == {"majority", "bow", "tiny"} and len(syn["tiny"]) == 5
    majority = np.mean(syn["majority"])
    assert majority == pytest.approx(45 / 70, abs=0.02)
    assert np.mean(syn["bow"]) > majority + 0.2
    assert np.mean(syn["tiny"]) > majority + 0.1


# Every cell the script offers but the default, which the `trained` fixture trains.
@pytest.mark.parametrize("cell", [
    cell for cell in skip_thoughts.CELLS if cell != skip_thoughts.build_parser().get_default("cell")
])
def test_every_encoder_cell_trains_and_encodes(trained, tmp_path, cell):
    output_dir = tmp_path / cell
    argv = ["--text-files", *trained["files"], "--cell", cell, "--epochs", "1",
            "--steps-per-epoch", "2", *tiny_args(output_dir)]
    assert skip_thoughts.main(argv) == 0
    encoder = keras.saving.load_model(output_dir / "encoder.keras")
    vectors = np.asarray(encoder(tf.constant(["The sun is warm.", "Rain!"])))
    assert vectors.shape == (2, 8) and np.all(np.isfinite(vectors))


# --------------------------------------------------------------------------------------------
# The TFDS path (mocked) and bad input
# --------------------------------------------------------------------------------------------


def test_tfds_documents_train_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(2)
    documents = {  # one document per example; triples must not span two of them
        "train": [" ".join(synthetic_sentence(rng, WARM) for _ in range(n)) for n in (6, 4, 2)],
        "validation": [" ".join(synthetic_sentence(rng, COLD) for _ in range(4))],
    }

    def as_dataset(self, split, **kwargs):
        name = "train" if str(split).startswith("train") else "validation"
        return tf.data.Dataset.from_tensor_slices({"text": documents[name]})

    output_dir = tmp_path / "run"
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        code = skip_thoughts.main(["--dataset", "tiny_shakespeare", "--data-dir", str(tmp_path),
                                   "--epochs", "1", *tiny_args(output_dir)])
    assert code == 0
    assert "6 training triples, 2 validation triples" in capsys.readouterr().out  # 4+2+0, 2
    assert len(skip_thoughts.read_history(output_dir / "history.csv")) == 1
    assert (output_dir / "encoder.keras").exists()


@pytest.mark.parametrize("make_argv, message", [
    (lambda d: ["--text-files", str(d / "missing.txt")], "no such file"),
    (lambda d: ["--text-files", str(d / "short.txt")], "needs at least 3"),
    (lambda d: ["--text-files", str(d / "short.txt"), "--valid-fraction", "1.5"],
     "--valid-fraction"),
])
def test_bad_input_is_one_line_exit_2_and_no_files(tmp_path, capsys, make_argv, message):
    (tmp_path / "short.txt").write_text("Only one sentence here. And two.")
    output_dir = tmp_path / "out"
    assert skip_thoughts.main([*make_argv(tmp_path), "--output-dir", str(output_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not output_dir.exists()


def test_eval_bad_input(tmp_path, capsys):
    assert skip_thoughts_eval.main(["--task", f"X={tmp_path / 'nope.all'}"]) == 2
    assert "nope.all" in capsys.readouterr().err
    (tmp_path / "t.all").write_text("1 good\n0 bad\n")
    assert skip_thoughts_eval.main(["--task", str(tmp_path / "t.all"), "--c-grid", "0,1"]) == 2
    assert "--c-grid" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# --distribute: devices are set up before TensorFlow/JAX start, so each run is a fresh process
# --------------------------------------------------------------------------------------------


def run_distributed(argv, backend, cwd, env=None):
    return run_example("skip_thoughts.py", argv, backend, cwd, env)


@pytest.mark.parametrize("mode, backend, env, message", [
    ("mirrored", "tensorflow", {}, "MirroredStrategy over 2 replica(s)"),
    ("jax", "jax", {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
     "JAX DataParallel over 2 device(s) in 1 process(es)"),
])
def test_batch_norm_encoder_trains_under_distribute(tmp_path, mode, backend, env, message):
    files = write_corpus(tmp_path, np.random.default_rng(0))
    output_dir = tmp_path / "run"
    extra = ["--cpu-devices", "2"] if mode == "mirrored" else []
    argv = ["--text-files", *files, "--cell", "batch_norm_lstm", "--epochs", "1",
            "--distribute", mode, *extra, *tiny_args(output_dir, "--batch-size", "4")]
    stdout = run_distributed(argv, backend, tmp_path, env)
    assert message in stdout
    assert len(skip_thoughts.read_history(output_dir / "history.csv")) == 1
    encoder = keras.saving.load_model(output_dir / "encoder.keras")
    vectors = np.asarray(encoder(tf.constant(["The sun is warm.", "Rain!"])))
    assert vectors.shape == (2, 8) and np.all(np.isfinite(vectors))
    moving = [w for w in encoder.weights if "moving_mean" in w.path]
    assert moving and all(np.abs(np.asarray(w)).max() > 0 for w in moving)


def test_distribute_options_need_their_mode(tmp_path, capsys):
    files = write_corpus(tmp_path, np.random.default_rng(0))
    output_dir = tmp_path / "out"
    assert skip_thoughts.main(["--text-files", *files, "--num-processes", "2",
                               "--output-dir", str(output_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--coordinator and --num-processes need --distribute jax" in err
    assert len(err.splitlines()) == 1 and not output_dir.exists()
