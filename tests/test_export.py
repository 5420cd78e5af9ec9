"""Tests of keras_recnorm/export/ and of the export/ command-line tools.

Exports are expensive (tracing, and ~10 s for each fresh verifying process), so the
module-scoped fixtures export each model once and verify all the text models in one fresh
process; the tests then look at those exports.
"""

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_recnorm
from keras_recnorm import export
from keras_recnorm.export import litert, saved_model, verification
from tests.conftest import kinds, randomize_weights

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="export needs the TensorFlow backend"
)

ROOT = Path(__file__).resolve().parents[1]
EXPORT_MODEL = ROOT / "export" / "export_model.py"
PREDICT = ROOT / "export" / "predict.py"

UNITS = 4
MAX_TIMESTEPS = 5  # below the long probe's 12 words: slots past T_max are served too
VOCABULARY = 40
CORPUS = [
    "the film is a quiet triumph",
    "a dull and lifeless script",
    "the actors seem to enjoy every scene",
    "it never finds its rhythm",
    "a warm funny and moving story",
    "the plot is thin but the jokes land",
    "nothing here is worth the ticket",
    "an honest film about growing up",
]


def _family_makers():
    """Every cell and layer of keras_recnorm.kinds.KINDS (cells first): its class name, and
    how to make the recurrent layer that goes into Bidirectional from the class."""
    cells, layers = {}, {}
    for kind in kinds():
        extra = {"max_timesteps": MAX_TIMESTEPS} if kind.batch_norm else {}
        cells[kind.cell.__name__] = lambda cls, extra=extra: keras.layers.RNN(cls(UNITS, **extra))
        if kind.layer is not None:
            layers[kind.layer.__name__] = lambda cls, extra=extra: cls(UNITS, **extra)
    return {**cells, **layers}


FAMILIES = _family_makers()


def recurrent_layer(family):
    cls = getattr(keras_recnorm, family, None)
    if cls is None:
        pytest.skip(f"keras_recnorm.{family} has not landed yet")
    return FAMILIES[family](cls)


def randomize_recurrent_weights(model, seed):
    """Random weights, and random population statistics for the BN families, so that a
    served model using batch statistics (or ignoring a gain) would disagree."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Bidirectional):
            randomize_weights(layer.forward_layer, rng)
            randomize_weights(layer.backward_layer, rng)
        elif isinstance(layer, keras.layers.RNN):
            randomize_weights(layer, rng)


def text_model(rnn, string_shape=()):
    """TextVectorization -> Embedding(mask_zero) -> Bidirectional(rnn) -> Dense."""
    vectorizer = keras.layers.TextVectorization(max_tokens=VOCABULARY)
    vectorizer.adapt(CORPUS)
    sentences = keras.Input(shape=string_shape, dtype="string")
    x = keras.layers.Embedding(VOCABULARY, 6, mask_zero=True)(vectorizer(sentences))
    x = keras.layers.Bidirectional(rnn)(x)
    return keras.Model(sentences, keras.layers.Dense(3)(x))


def token_model(rnn, bidirectional=True):
    """Token ids (int32, dynamic batch and time) -> Embedding(mask_zero) -> rnn -> Dense."""
    ids = keras.Input(shape=(None,), dtype="int32")
    x = keras.layers.Embedding(VOCABULARY, 6, mask_zero=True)(ids)
    x = keras.layers.Bidirectional(rnn)(x) if bidirectional else rnn(x)
    return keras.Model(ids, keras.layers.Dense(2)(x))


def run_script(script, *args, cwd=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def stderr_lines(result):
    return [line for line in result.stderr.splitlines() if line.strip()]


# ---------------------------------------------------------------- every family, text in


@pytest.fixture(scope="module")
def text_exports(tmp_path_factory):
    """Each available family as a text model, exported, then all checked against
    model.predict in one fresh process in which keras_recnorm can't be imported."""
    base = tmp_path_factory.mktemp("text_exports")
    keras.utils.set_random_seed(0)  # the embeddings and heads, whichever test comes first
    exports, jobs = {}, []
    for i, family in enumerate(FAMILIES):
        cls = getattr(keras_recnorm, family, None)
        if cls is None:
            continue
        # Both ways of declaring one string per example: shape () and shape (1,).
        model = text_model(FAMILIES[family](cls), string_shape=() if i % 2 else (1,))
        randomize_recurrent_weights(model, seed=i)
        before = [w.copy() for w in model.get_weights()]
        path = export.export_saved_model(model, base / family, verify=False)
        unchanged = all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
        probes = verification._default_probes(model, export.serving_input_spec(model))
        exports[family] = {"model": model, "path": path, "probes": probes, "unchanged": unchanged}
        jobs.append((model, path, probes))
    errors = verification.verify_saved_models(jobs) if jobs else []
    for entry, error in zip(exports.values(), errors):
        entry["error"] = error
    return exports


def family_export(text_exports, family):
    if family not in text_exports:
        pytest.skip(f"keras_recnorm.{family} has not landed yet")
    return text_exports[family]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_text_export_matches_predict_where_package_cannot_be_imported(text_exports, family):
    entry = family_export(text_exports, family)
    word_counts = [max(len(s.split()) for s in probe) for probe in entry["probes"]]
    assert word_counts[0] < MAX_TIMESTEPS < word_counts[1]  # two lengths, past T_max
    assert entry["error"] is None, str(entry["error"])
    assert entry["unchanged"], "exporting changed the model's weights"
    assert sorted(os.listdir(os.path.dirname(entry["path"]))) == ["1"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_served_outputs_are_per_example_and_deterministic(text_exports, family):
    """Population statistics, not batch statistics: an example's output is the same alone
    as in a batch; and two calls give the same bits."""
    import tensorflow as tf

    entry = family_export(text_exports, family)
    serve = tf.saved_model.load(entry["path"]).signatures["serving_default"]
    sentences = ["the film is a quiet triumph", "a dull and lifeless script",
                 "it never finds its rhythm", "an honest film about growing up"]
    batch = serve(inputs=tf.constant(sentences))["outputs"].numpy()
    again = serve(inputs=tf.constant(sentences))["outputs"].numpy()
    alone = np.concatenate(
        [serve(inputs=tf.constant([s]))["outputs"].numpy() for s in sentences]
    )
    assert batch.shape == (4, 3)
    np.testing.assert_array_equal(batch, again)
    # float32 rounding differs between batch sizes (up to ~6e-7 here); batch statistics
    # would differ by ~1e-1.
    np.testing.assert_allclose(batch, alone, rtol=1e-5, atol=1e-5)
    expected = entry["model"].predict(np.array(sentences, dtype=object), verbose=0)
    np.testing.assert_allclose(batch, expected, rtol=1e-5, atol=1e-5)
    assert np.ptp(batch, axis=0).max() > 1e-3  # the examples differ: not a constant model


def test_verifying_process_cannot_import_the_package(tmp_path):
    """The hiding at the top of the verifying process is what keeps keras_recnorm away
    (it is installed, editable, in this environment)."""
    prefix = verification._VERIFY_CHILD.split("import numpy as np")[0]
    probe = "import importlib.util; print(importlib.util.find_spec('keras_recnorm') is None)"
    hidden = subprocess.run(
        [sys.executable, "-c", prefix + probe], capture_output=True, text=True, cwd=tmp_path
    )
    plain = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path
    )
    assert (hidden.returncode, hidden.stdout.strip()) == (0, "True"), hidden.stderr
    assert (plain.returncode, plain.stdout.strip()) == (0, "False"), plain.stderr


def test_text_signature_takes_raw_strings(text_exports):
    import tensorflow as tf

    entry = next(iter(text_exports.values()), None)
    if entry is None:
        pytest.skip("no family of keras_recnorm has landed yet")
    loaded = tf.saved_model.load(entry["path"])
    assert {"serving_default", "serve"} <= set(loaded.signatures)
    for name in ("serving_default", "serve"):
        signature = loaded.signatures[name]
        spec = signature.structured_input_signature[1]["inputs"]
        assert spec.dtype == tf.string and spec.shape.as_list() == [None]
        assert list(signature.structured_outputs) == ["outputs"]


# ------------------------------------------------------------ versions, atomic writing


@pytest.fixture(scope="module")
def ids_model():
    keras.utils.set_random_seed(0)  # module fixtures run before the test's own seeding
    cls = getattr(keras_recnorm, "LayerNormLSTMCell", None)
    cell = cls(UNITS) if cls is not None else keras.layers.LSTMCell(UNITS)
    return token_model(keras.layers.RNN(cell), bidirectional=False)


@pytest.fixture(scope="module")
def ids_export(ids_model, tmp_path_factory):
    return export.export_saved_model(ids_model, tmp_path_factory.mktemp("ids"), verify=False)


def test_saved_model_cli_lists_serving_default_with_dynamic_dims(ids_export):
    cli = Path(sys.executable).parent / "saved_model_cli"
    if not cli.exists():
        pytest.skip("saved_model_cli is not installed next to this Python")
    result = subprocess.run(
        [str(cli), "show", "--all", "--dir", ids_export], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    assert "signature_def['serve']" in text
    block = text.split("signature_def['serving_default']:")[1].split("signature_def[")[0]
    inputs, outputs = block.split("contains the following output(s):")
    assert "inputs['inputs'] tensor_info:" in inputs
    assert "dtype: DT_INT32" in inputs and "shape: (-1, -1)" in inputs  # batch, time
    assert "outputs['outputs'] tensor_info:" in outputs and "shape: (-1, 2)" in outputs
    assert "tensorflow/serving/predict" in block


def test_versions_count_up_from_the_largest(ids_model, tmp_path):
    base = tmp_path / "model"
    assert export.next_version(base) == 1
    first = export.export_saved_model(ids_model, base, verify=False)
    assert first == str(base / "1") and (base / "1" / "saved_model.pb").is_file()
    assert (base / "1" / "variables").is_dir()
    (base / "7").mkdir()
    (base / "notes").mkdir()
    (base / "12").write_text("a file, not a version")
    assert export.export_saved_model(ids_model, base, verify=False) == str(base / "8")
    assert sorted(os.listdir(base)) == ["1", "12", "7", "8", "notes"]


def test_existing_version_is_never_overwritten_by_default(ids_model, tmp_path):
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "marker").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export.export_saved_model(ids_model, tmp_path, version=3, verify=False)
    assert os.listdir(tmp_path) == ["3"]
    assert os.listdir(tmp_path / "3") == ["marker"]


def test_overwrite_replaces_the_version(ids_model, tmp_path):
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "marker").write_text("old")
    path = export.export_saved_model(ids_model, tmp_path, version=3, overwrite=True, verify=False)
    assert path == str(tmp_path / "3")
    assert os.listdir(tmp_path) == ["3"]  # no leftover temporary directory
    assert "marker" not in os.listdir(path) and "saved_model.pb" in os.listdir(path)


@pytest.mark.parametrize("base_exists", [False, True])
def test_failure_midway_leaves_no_version_directory(ids_model, tmp_path, monkeypatch, base_exists):
    base = tmp_path / "model"
    if base_exists:
        (base / "1").mkdir(parents=True)

    def write_half_then_fail(model, serve, directory):
        Path(directory, "saved_model.pb").write_bytes(b"half")
        Path(directory, "variables").mkdir()
        raise RuntimeError("disk full (injected)")

    monkeypatch.setattr(saved_model, "write_saved_model", write_half_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        export.export_saved_model(ids_model, base, verify=False)
    if base_exists:
        assert os.listdir(base) == ["1"]
    else:
        assert not base.exists()


def test_disagreement_raises_with_the_difference_and_leaves_nothing(ids_model, tmp_path, monkeypatch):
    """The real fresh-process check, against references shifted by 0.5."""
    reference = verification._reference_outputs

    def shifted(model, batch):
        return {k: v + 0.5 for k, v in reference(model, batch).items()}

    monkeypatch.setattr(verification, "_reference_outputs", shifted)
    with pytest.raises(export.ExportVerificationError, match=r"max \|difference\| 0\.5"):
        export.export_saved_model(ids_model, tmp_path / "model", version=2)
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("version", [0, -1, "2", 1.5, True])
def test_invalid_version_is_refused(ids_model, tmp_path, version):
    with pytest.raises(ValueError, match="`version`"):
        export.export_saved_model(ids_model, tmp_path, version=version, verify=False)
    assert os.listdir(tmp_path) == []


def test_other_backends_get_a_clear_error(ids_model, tmp_path, monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match="KERAS_BACKEND=tensorflow"):
        export.export_saved_model(ids_model, tmp_path)
    with pytest.raises(RuntimeError, match="TensorFlow backend"):
        export.export_onnx(ids_model, tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_model_with_two_inputs_is_refused(tmp_path):
    a, b = keras.Input((3,)), keras.Input((3,))
    model = keras.Model([a, b], keras.layers.Add()([a, b]))
    with pytest.raises(ValueError, match="several inputs"):
        export.export_saved_model(model, tmp_path, verify=False)


# ------------------------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def onnx_tools():
    for name in ("tf2onnx", "onnxruntime", "onnx"):
        pytest.importorskip(name, reason="the `onnx` extra is not installed")
    import onnxruntime

    return onnxruntime


@pytest.fixture(scope="module")
def onnx_export(onnx_tools, tmp_path_factory):
    """One model with a branch per family (Embedding(mask_zero) -> family -> Dense, one named
    output each; the BN layer also backwards, in Bidirectional), random weights and
    population statistics, exported to ONNX once (one conversion instead of one per family:
    the conversion takes most of the time) and run at two lengths, padded."""
    ids = keras.Input(shape=(None,), dtype="int32")
    embedded = keras.layers.Embedding(VOCABULARY, 6, mask_zero=True)(ids)
    branches = {family: recurrent_layer(family) for family in FAMILIES}
    branches["Bidirectional(BatchNormLSTM)"] = keras.layers.Bidirectional(
        recurrent_layer("BatchNormLSTM"))
    outputs = {name: keras.layers.Dense(2)(layer(embedded)) for name, layer in branches.items()}
    model = keras.Model(ids, outputs)
    randomize_recurrent_weights(model, seed=7)
    directory = tmp_path_factory.mktemp("onnx")
    # The tests below compare it with the model (export_onnx's own check runs the same).
    path = export.export_onnx(model, directory / "model.onnx", verify=False)
    session = onnx_tools.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    runs = []
    for length in (3, 11):
        ids = rng.integers(1, VOCABULARY, size=(5, length)).astype(np.int32)
        ids[1, length - 1 :] = 0  # padding
        ids[2, 1:] = 0
        names = [o.name for o in session.get_outputs()]
        served = dict(zip(names, session.run(names, {"inputs": ids})))
        runs.append((served, model.predict(ids, verbose=0)))
    return {"files": os.listdir(directory), "session": session, "runs": runs}


def test_onnx_graph_takes_inputs_and_names_each_output(onnx_export):
    assert onnx_export["files"] == ["model.onnx"]
    session = onnx_export["session"]
    (inputs,) = session.get_inputs()
    assert (inputs.name, inputs.shape, inputs.type) == ("inputs", ["batch", "time"], "tensor(int32)")
    assert {(o.name, tuple(o.shape)) for o in session.get_outputs()} == {
        (family, ("batch", 2)) for family in [*FAMILIES, "Bidirectional(BatchNormLSTM)"]}


@pytest.mark.parametrize("family", [*FAMILIES, "Bidirectional(BatchNormLSTM)"])
def test_onnx_matches_predict_at_two_lengths(onnx_export, family):
    for served, expected in onnx_export["runs"]:
        np.testing.assert_allclose(served[family], expected[family], rtol=1e-5, atol=1e-5)


def test_onnx_single_output_is_named_outputs(onnx_tools, ids_model, tmp_path):
    path = export.export_onnx(ids_model, tmp_path / "model.onnx")
    session = onnx_tools.InferenceSession(path, providers=["CPUExecutionProvider"])
    (outputs,) = session.get_outputs()
    assert outputs.name == "outputs" and outputs.shape == ["batch", 2]


def test_onnx_refuses_raw_string_models_and_existing_files(onnx_tools, ids_model, tmp_path):
    strings = keras.Input(shape=(), dtype="string")
    vectorizer = keras.layers.TextVectorization(max_tokens=10)
    vectorizer.adapt(CORPUS)
    model = keras.Model(strings, keras.layers.Embedding(10, 2)(vectorizer(strings)))
    with pytest.raises(ValueError, match="TextVectorization"):
        export.export_onnx(model, tmp_path / "text.onnx")
    (tmp_path / "ids.onnx").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export.export_onnx(ids_model, tmp_path / "ids.onnx")
    assert sorted(os.listdir(tmp_path)) == ["ids.onnx"]


# ------------------------------------------------------------------------ export/ tools


@pytest.fixture(scope="module")
def predict_module():
    spec = importlib.util.spec_from_file_location("export_predict", PREDICT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def served_text(text_exports):
    for family in ("BatchNormLSTMCell", "LayerNormLSTMCell"):
        if family in text_exports:
            return text_exports[family]
    pytest.skip("neither BatchNormLSTMCell nor LayerNormLSTMCell has landed yet")


def test_predict_answers_like_tf_serving(served_text):
    sentences = ["a warm funny and moving story", "dull"]
    base_dir = os.path.dirname(served_text["path"])  # the highest version answers
    result = run_script(PREDICT, base_dir, "--json", json.dumps({"instances": sentences}))
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout)
    assert list(answer) == ["predictions"]
    expected = served_text["model"].predict(np.array(sentences, dtype=object), verbose=0)
    np.testing.assert_allclose(np.array(answer["predictions"]), expected, rtol=1e-6, atol=1e-6)


def test_predict_columnar_format_and_b64(served_text, predict_module, capsys, tmp_path):
    request = tmp_path / "request.json"
    # "ZHVsbA==" is base64 for "dull", as TF Serving accepts binary strings.
    request.write_text(json.dumps({"inputs": ["a warm funny and moving story", {"b64": "ZHVsbA=="}]}))
    assert predict_module.main([served_text["path"], "--file", str(request)]) == 0
    answer = json.loads(capsys.readouterr().out)
    expected = served_text["model"].predict(
        np.array(["a warm funny and moving story", "dull"], dtype=object), verbose=0
    )
    np.testing.assert_allclose(np.array(answer["outputs"]), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "request_body, message",
    [
        ({"instances": [1, 2]}, "expects strings, got 1 at instances[0]"),
        ({"instances": [["a film"], ["a story"]]}, "expects rank 1"),
        ({"instances": []}, "non-empty list"),
        ({"examples": ["a film"]}, 'exactly one of "instances"'),
    ],
)
def test_predict_rejects_bad_requests(served_text, predict_module, capsys, request_body, message):
    code = predict_module.main([served_text["path"], "--json", json.dumps(request_body)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("predict.py: error:") and message in lines[0]


def test_predict_rejects_token_ids_of_the_wrong_dtype(ids_export, predict_module, capsys):
    code = predict_module.main([ids_export, "--json", '{"instances": [[1, 2.5, 3]]}'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "expects int32 numbers, got 2.5 at instances[0][1]" in err[0]
    code = predict_module.main([ids_export, "--json", '{"instances": [[1, 2, 3], [4]]}'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "rows of different lengths" in err[0]


def test_predict_names_the_failing_ops_message(ids_export, predict_module, capsys):
    # A token id past the embedding's vocabulary: TensorFlow's error starts with "Graph
    # execution error:" and a stack trace; the one line names the op's own message.
    code = predict_module.main([ids_export, "--json", '{"instances": [[1, 2, 100]]}'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"indices[0,2] = 100 is not in [0, {VOCABULARY})" in err[0]
    assert "GatherV2" in err[0] and "Graph execution error" not in err[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--json", '{"instances": ['], "is not valid JSON"),
        (["--json", "[1, 2]"], "must be a JSON object"),
        ([], "one of the arguments --json --file is required"),
    ],
)
def test_predict_script_bad_input_is_one_line_and_status_2(ids_export, args, message):
    result = run_script(PREDICT, ids_export, *args)
    assert result.returncode == 2 and result.stdout == ""
    lines = stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith("predict.py: error:") and message in lines[0]


def test_export_model_script_exports_a_saved_bn_model(tmp_path, onnx_tools):
    """The one-command path, .keras -> verified SavedModel (+ ONNX, + LiteRT), with a BN model whose
    population statistics are not the initial ones."""
    model = token_model(recurrent_layer("BatchNormLSTMCell"), bidirectional=False)
    randomize_recurrent_weights(model, seed=11)
    model.save(tmp_path / "model.keras")
    # A dynamic time dimension needs --sequence-length for LiteRT: refused, nothing written.
    args = [tmp_path / "model.keras", tmp_path / "serving", "--onnx", tmp_path / "m.onnx",
            "--litert", tmp_path / "m.tflite"]
    result = run_script(EXPORT_MODEL, *args)
    assert result.returncode == 2 and "pass --sequence-length T" in stderr_lines(result)[0]
    assert sorted(os.listdir(tmp_path)) == ["model.keras"]

    result = run_script(EXPORT_MODEL, *args, "--sequence-length", "7", "--batch-size", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checked in a fresh process" in result.stdout and "onnxruntime" in result.stdout
    assert "checked in the LiteRT interpreter" in result.stdout
    assert os.listdir(tmp_path / "serving") == ["1"]
    assert (tmp_path / "serving" / "1" / "saved_model.pb").is_file()
    assert (tmp_path / "m.onnx").is_file()

    import tensorflow as tf

    serve = tf.saved_model.load(str(tmp_path / "serving" / "1")).signatures["serving_default"]
    ids = np.array([[3, 4, 5, 6, 7, 8, 9], [5, 6, 0, 0, 0, 0, 0]], dtype=np.int32)
    np.testing.assert_allclose(
        serve(inputs=tf.constant(ids))["outputs"].numpy(),
        model.predict(ids, verbose=0),
        rtol=1e-5,
        atol=1e-5,
    )
    lite = export.run_litert(export.litert_interpreter(model_path=str(tmp_path / "m.tflite")), ids)
    np.testing.assert_allclose(lite["outputs"], model.predict(ids, verbose=0), rtol=1e-5, atol=1e-5)


def test_export_model_script_bad_input_is_one_line_and_status_2(tmp_path):
    (tmp_path / "corrupt.keras").write_bytes(b"not a zip archive")
    with zipfile.ZipFile(tmp_path / "empty.keras", "w"):
        pass  # a zip archive, but no model in it
    (tmp_path / "served" / "4").mkdir(parents=True)
    cases = [
        ([tmp_path / "missing.keras", tmp_path / "out"], "does not exist"),
        ([tmp_path / "corrupt.keras", tmp_path / "out"], "is not a Keras model file"),
        ([tmp_path / "empty.keras", tmp_path / "served", "--version", "4"], "already exists"),
        ([tmp_path / "empty.keras", tmp_path / "out", "--version", "0"], "positive integer"),
        ([tmp_path / "empty.keras", tmp_path / "out"], "cannot load model file"),
    ]
    for args, message in cases:
        result = run_script(EXPORT_MODEL, *args)
        assert result.returncode == 2, (args, result.stderr)
        lines = stderr_lines(result)
        assert len(lines) == 1 and message in lines[0], (args, lines)
    assert sorted(os.listdir(tmp_path)) == ["corrupt.keras", "empty.keras", "served"]
    assert os.listdir(tmp_path / "served" / "4") == []


def test_scripts_explain_every_option():
    for script, options in [
        (EXPORT_MODEL, ["MODEL.keras", "BASE_DIR", "--version", "--overwrite", "--onnx",
                        "--opset", "--litert", "--batch-size", "--sequence-length",
                        "--no-verify"]),
        (PREDICT, ["EXPORT_DIR", "--json", "--file", "--signature"]),
    ]:
        result = run_script(script, "--help")
        assert result.returncode == 0
        for option in options:
            assert option in result.stdout, (script.name, option)


def test_probe_argument_takes_one_batch_or_several(ids_model, text_exports):
    spec = export.serving_input_spec(ids_model)
    (one,) = verification.as_probe_list([[1, 2, 3], [4, 5, 0]], ids_model, spec)
    assert one.dtype == np.int32 and one.shape == (2, 3)
    two = verification.as_probe_list([np.ones((2, 3)), np.ones((1, 7))], ids_model, spec)
    assert [b.shape for b in two] == [(2, 3), (1, 7)]
    if text_exports:
        entry = next(iter(text_exports.values()))
        text_spec = export.serving_input_spec(entry["model"])
        (sentences,) = verification.as_probe_list(["a film", "the plot"], entry["model"], text_spec)
        assert sentences.tolist() == ["a film", "the plot"]


# --------------------------------------------------------------------------- LiteRT

LITERT_BATCH, LITERT_LENGTH = 3, 7  # T above MAX_TIMESTEPS: the last slot serves the rest


@pytest.fixture(scope="module")
def litert_export(tmp_path_factory):
    """One model with a branch per family (Embedding(mask_zero) -> family -> Dense, one
    named output each; the BN layer also backwards, in Bidirectional), random weights and
    population statistics, exported once (one conversion instead of ten), run once."""
    keras.utils.set_random_seed(0)
    ids = keras.Input(shape=(None,), dtype="int32")
    embedded = keras.layers.Embedding(VOCABULARY, 6, mask_zero=True)(ids)
    branches = {}
    for family, make in FAMILIES.items():
        cls = getattr(keras_recnorm, family, None)
        if cls is not None:
            branches[family] = make(cls)
    if "BatchNormLSTM" in branches:
        branches["Bidirectional(BatchNormLSTM)"] = keras.layers.Bidirectional(
            FAMILIES["BatchNormLSTM"](keras_recnorm.BatchNormLSTM)
        )
    outputs = {name: keras.layers.Dense(2)(layer(embedded)) for name, layer in branches.items()}
    model = keras.Model(ids, outputs)
    randomize_recurrent_weights(model, seed=5)
    path = tmp_path_factory.mktemp("litert") / "model.tflite"
    export.export_litert(model, path, batch_size=LITERT_BATCH, sequence_length=LITERT_LENGTH)

    x = np.random.default_rng(7).integers(1, VOCABULARY, (LITERT_BATCH, LITERT_LENGTH))
    x[1, 5:] = 0  # right padding
    x[2, :3] = 0  # left padding: a BN sample's first real step reads slot 0
    x = x.astype("int32")
    served = export.run_litert(export.litert_interpreter(model_path=str(path)), x)
    return {"path": path, "served": served, "expected": model.predict(x, verbose=0)}


@pytest.mark.parametrize("family", [*FAMILIES, "Bidirectional(BatchNormLSTM)"])
def test_litert_matches_predict_for_every_cell_and_layer(litert_export, family):
    if family not in litert_export["expected"]:
        pytest.skip(f"{family} has not landed yet")
    want = litert_export["expected"][family]
    np.testing.assert_allclose(litert_export["served"][family], want, rtol=1e-5, atol=1e-5)
    assert np.abs(want).max() > 0.1  # not trivially zero


def test_litert_uses_built_in_ops_only(litert_export):
    interpreter = export.litert_interpreter(model_path=str(litert_export["path"]))
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "FULLY_CONNECTED" in ops and "TANH" in ops
    # Select-TF ops appear as Flex* (or custom ops); TensorLists mark an un-unrolled loop.
    assert not [op for op in ops if op.startswith("Flex") or "CUSTOM" in op or "TensorList" in op]
    (details,) = interpreter.get_input_details()
    assert list(details["shape"]) == [LITERT_BATCH, LITERT_LENGTH]


def test_litert_takes_the_time_dimension_the_model_declares(tmp_path):
    inputs = keras.Input((6, 3))
    model = keras.Model(inputs, keras_recnorm.BatchNormGRU(UNITS, max_timesteps=4)(inputs))
    randomize_recurrent_weights(model, seed=3)
    path = export.export_litert(model, tmp_path / "m.tflite", batch_size=2)
    x = np.random.default_rng(0).standard_normal((2, 6, 3)).astype("float32")
    served = export.run_litert(export.litert_interpreter(model_path=path), x)
    np.testing.assert_allclose(served["outputs"], model.predict(x, verbose=0), atol=1e-5, rtol=1e-5)


def test_litert_refuses_what_it_cannot_export(ids_model, text_exports, tmp_path):
    with pytest.raises(ValueError, match="pass sequence_length=T"):
        export.export_litert(ids_model, tmp_path / "a.tflite")
    text = next(iter(text_exports.values()))["model"]
    with pytest.raises(ValueError, match="raw strings to LiteRT"):
        export.export_litert(text, tmp_path / "b.tflite", sequence_length=4)
    (tmp_path / "c.tflite").write_bytes(b"old")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export.export_litert(ids_model, tmp_path / "c.tflite", sequence_length=4)
    assert (tmp_path / "c.tflite").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tflite"]


def test_litert_disagreement_raises_and_leaves_nothing(ids_model, tmp_path, monkeypatch):
    real = export.run_litert
    monkeypatch.setattr(
        litert, "run_litert", lambda *a: {k: v + 1e-3 for k, v in real(*a).items()}
    )
    with pytest.raises(export.ExportVerificationError, match="LiteRT model .* disagrees"):
        export.export_litert(ids_model, tmp_path / "m.tflite", sequence_length=4)
    assert list(tmp_path.iterdir()) == []



# ------------------------------------------------- dtypes LiteRT can't take, out-of-range requests


def float_model(dtype=None):
    """Float inputs (B, T, 3) -> LayerNormLSTM -> Dense, in `dtype` (a dtype or policy)."""
    inputs = keras.Input((6, 3))
    hidden = keras_recnorm.LayerNormLSTM(UNITS, dtype=dtype)(inputs)
    return keras.Model(inputs, keras.layers.Dense(1, dtype=dtype)(hidden))


@pytest.mark.parametrize("dtype", ["float64", "mixed_float16", "mixed_bfloat16"])
def test_litert_refuses_dtypes_it_cannot_take_in_one_line(tmp_path, dtype):
    """Before the converter runs (whose error is a dump of 10⁵ characters that never says
    the dtype), and leaving nothing on disk, not even the new parent directory."""
    compute = {"float64": "float64", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
    with pytest.raises(ValueError) as raised:
        export.export_litert(float_model(dtype), tmp_path / "new" / "m.tflite")
    message = str(raised.value)
    assert "\n" not in message and len(message) < 400, message
    assert f"computes in {compute[dtype]}" in message and "layer_norm_lstm" in message
    assert list(tmp_path.iterdir()) == []


def test_failed_litert_export_removes_the_directories_it_made(ids_model, tmp_path, monkeypatch):
    real = export.run_litert
    monkeypatch.setattr(
        litert, "run_litert", lambda *a: {k: v + 1e-3 for k, v in real(*a).items()}
    )
    with pytest.raises(export.ExportVerificationError):
        export.export_litert(ids_model, tmp_path / "a" / "b" / "m.tflite", sequence_length=4)
    assert list(tmp_path.iterdir()) == []


def test_export_model_script_refuses_a_float64_model_for_litert(tmp_path):
    float_model("float64").save(tmp_path / "model.keras")
    result = run_script(EXPORT_MODEL, tmp_path / "model.keras", tmp_path / "serving",
                        "--litert", tmp_path / "lite" / "m.tflite")
    assert result.returncode == 2 and result.stdout == ""
    lines = stderr_lines(result)
    assert len(lines) == 1 and "--litert" in lines[0] and "float64" in lines[0], lines
    assert sorted(os.listdir(tmp_path)) == ["model.keras"]


@pytest.fixture(scope="module")
def float_export(tmp_path_factory):
    keras.utils.set_random_seed(0)
    return export.export_saved_model(float_model(), tmp_path_factory.mktemp("float"), verify=False)


def test_predict_refuses_numbers_beyond_the_input_dtype(float_export, predict_module, capsys):
    """1e40 would become inf in float32 (NumPy only warns) and be served."""
    rows = np.zeros((1, 6, 3)).tolist()
    rows[0][2][1] = 1e40
    code = predict_module.main([float_export, "--json", json.dumps({"instances": rows})])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "instances[0][2][1] = 1e+40 is out of the range of float32" in lines[0]
    rows[0][2][1] = 3e38  # within range: answered
    assert predict_module.main([float_export, "--json", json.dumps({"instances": rows})]) == 0
    assert "predictions" in json.loads(capsys.readouterr().out)


def test_export_model_script_failing_litert_export_leaves_no_directory(ids_model, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("export_model_script", EXPORT_MODEL)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    ids_model.save(tmp_path / "model.keras")
    real = export.run_litert
    monkeypatch.setattr(
        litert, "run_litert", lambda *a: {k: v + 1e-3 for k, v in real(*a).items()}
    )
    code = script.main([str(tmp_path / "model.keras"), str(tmp_path / "serving"), "--litert",
                        str(tmp_path / "lite" / "new" / "m.tflite"), "--sequence-length", "4"])
    assert code == 1
    assert sorted(os.listdir(tmp_path)) == ["model.keras"]
