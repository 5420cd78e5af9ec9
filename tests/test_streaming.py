"""keras_recnorm/streaming.py: a model run chunk by chunk equals the whole-sequence model;
what can't stream is refused; the streaming exports (SavedModel, LiteRT, the scripts).

The chunked-equals-full tests run on every backend (the exports need TensorFlow). Every
kind of the cell table (`keras_recnorm.kinds.KINDS`) is covered, so a new kind is tested
here as soon as it is in the table.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_recnorm.kinds import KINDS
from keras_recnorm.streaming import StreamingModel, initial_states, to_streaming
from tests.conftest import to_numpy, weight_name

UNITS, VOCABULARY, T_MAX, T = 3, 12, 3, 6

# Chunk lengths that add up to T: one step at a time, and uneven chunks with boundaries on
# both sides of T_MAX (steps past it read the last slot), one of them all padding in a row
# of `padded_ids` that had real steps before.
SPLITS = {"one_step_chunks": [1] * T, "uneven": [2, 1, 2, 1]}


def randomize(model, seed):
    """Random weights and population statistics (different per slot), so that a streamed
    step reading the wrong slot, or a state lost between chunks, shows."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        name, shape = weight_name(variable), tuple(variable.shape)
        if "gamma" in name:
            value = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
        elif "variance" in name:
            value = rng.uniform(0.3, 3.0, shape)
        else:
            value = rng.normal(0.0, 0.7, shape)
        variable.assign(value.astype(variable.dtype))


def recurrent(k, units=UNITS, **kwargs):
    """`keras.layers.RNN` of one cell of kind `k`."""
    extra = {"max_timesteps": T_MAX} if k.batch_norm else {}
    return keras.layers.RNN(k.cell(units, **extra), **kwargs)


def padded_ids(seed, batch=4, length=T):
    """Token ids with right padding, left padding and a padded stretch inside a row."""
    ids = np.random.default_rng(seed).integers(1, VOCABULARY, (batch, length))
    ids[1, length - 2 :] = 0
    ids[2, :2] = 0
    ids[3, 3:5] = 0
    return ids.astype("int32")


def whole(model, x):
    """The whole-sequence model's outputs. Called as a function: `predict` computes the same
    (inference mode) but traces the model first, which costs seconds per model."""
    return to_numpy(model(x, training=False))


def stream(streaming, x, lengths, run=None):
    """Runs `x` through the streaming model in chunks of `lengths` steps (with `run`,
    default calling the model); returns each chunk's outputs and the final states."""
    run = run or (lambda inputs: streaming(inputs, training=False))
    states = initial_states(streaming, x.shape[0])
    outputs, start = [], 0
    for length in lengths:
        result = run([x[:, start : start + length], *states])
        outputs.append(to_numpy(result[0]))
        states = [to_numpy(s) for s in result[1:]]
        start += length
    return outputs, states


def kind_model(k):
    """Token ids -> Embedding(mask_zero) -> RNN(cell) -> LayerNormalization ->
    RNN(StackedRNNCells) -> Dropout -> the whole-sequence layer (where there is one) ->
    Dense, every recurrent layer returning sequences."""
    extra = {"max_timesteps": T_MAX} if k.batch_norm else {}
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(VOCABULARY, 3, mask_zero=True)(ids)
    x = recurrent(k, return_sequences=True)(x)
    x = keras.layers.LayerNormalization()(x)
    stacked = keras.layers.StackedRNNCells([k.cell(UNITS, **extra), k.cell(2, **extra)])
    x = keras.layers.RNN(stacked, return_sequences=True)(x)
    x = keras.layers.Dropout(0.5)(x)
    if k.layer is not None:
        x = k.layer(UNITS, return_sequences=True, **extra)(x)
    model = keras.Model(ids, keras.layers.Dense(2)(x))
    randomize(model, seed=len(k.name))
    return model


@pytest.mark.parametrize("k", KINDS, ids=lambda k: k.name)
def test_chunks_give_the_whole_sequence_outputs_for_every_kind(k):
    model = kind_model(k)
    streaming = to_streaming(model)
    x = padded_ids(seed=1)
    want = whole(model, x)
    assert np.abs(want).max() > 0.1
    for split, lengths in SPLITS.items():
        outputs, states = stream(streaming, x, lengths)
        got = np.concatenate(outputs, axis=1)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=split)
    # The step counters: each sample's real steps, exact, also past T_MAX.
    counters = [s for spec, s in zip(streaming.state_layout, states) if spec.name.endswith("step")]
    assert len(counters) == (3 + (k.layer is not None) if k.batch_norm else 0)
    for counter in counters:
        np.testing.assert_array_equal(counter[:, 0], (x != 0).sum(axis=1))


@pytest.mark.parametrize("k", KINDS, ids=lambda k: k.name)
def test_last_output_after_each_chunk_is_the_output_for_the_sequence_so_far(k):
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(VOCABULARY, 3, mask_zero=True)(ids)
    x = recurrent(k)(x)  # return_sequences=False
    model = keras.Model(ids, keras.layers.Dense(2)(keras.layers.Dropout(0.5)(x)))
    randomize(model, seed=2)
    x = padded_ids(seed=3)
    outputs, _ = stream(to_streaming(model), x, SPLITS["uneven"])
    ends = np.cumsum(SPLITS["uneven"])
    for end, got in zip(ends, outputs):
        want = whole(model, x[:, :end])
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=f"after {end} steps")


def test_sequential_float_features_nested_model_and_keras_layers(tmp_path):
    """A Sequential model on float features with a nested Sequential block, Keras's own GRU
    beside ours, per-step layers; the streaming model's inputs, states and layout, and its
    .keras file."""
    k = KINDS[0]
    block = keras.Sequential([keras.layers.Dense(3, activation="relu"),
                              keras.layers.GRU(2, return_sequences=True)])
    model = keras.Sequential(
        [
            keras.Input((None, 2)),
            block,
            recurrent(k, return_sequences=True),
            keras.layers.TimeDistributed(keras.layers.Dense(2)),
        ]
    )
    randomize(model, seed=4)
    streaming = to_streaming(model)
    assert isinstance(streaming, StreamingModel)
    assert [x.name for x in streaming.inputs] == ["inputs"] + [
        f"state_{i}" for i in range(len(streaming.inputs) - 1)
    ]
    layout = streaming.state_layout
    assert [(s.index, s.layer, s.name) for s in layout[:2]] == [(0, block.layers[1].name, "h"),
                                                               (1, model.layers[1].name, "h")]
    x = np.random.default_rng(5).normal(size=(2, 6, 2)).astype("float32")
    outputs, _ = stream(streaming, x, [1, 4, 1])
    want = model.predict(x, verbose=0)
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), want, atol=1e-5, rtol=1e-5)
    streaming.save(tmp_path / "streaming.keras")
    loaded = keras.saving.load_model(tmp_path / "streaming.keras")
    assert loaded.state_layout == layout
    np.testing.assert_allclose(stream(loaded, x, [6])[0][0], want, atol=1e-5, rtol=1e-5)
    # The copy is taken once: retraining the model leaves the streaming model as it was.
    block.layers[0].kernel.assign(block.layers[0].kernel * 2.0)
    again, _ = stream(streaming, x, [6])
    np.testing.assert_allclose(again[0], want, atol=1e-5, rtol=1e-5)


def test_initial_states_are_zeros_in_their_dtypes():
    k = next(k for k in KINDS if k.batch_norm)
    model = keras.Sequential([keras.Input((None, 2)), recurrent(k, return_sequences=True)])
    streaming = to_streaming(model)
    states = initial_states(streaming, batch_size=3)
    assert [s.shape for s in states] == [(3, spec.size) for spec in streaming.state_layout]
    assert [s.dtype.name for s in states] == [spec.dtype for spec in streaming.state_layout]
    assert all(not s.any() for s in states)
    with pytest.raises(ValueError, match="expected a positive integer, got 0"):
        initial_states(streaming, 0)
    with pytest.raises(ValueError, match="made by to_streaming, got Sequential"):
        initial_states(model, 1)


def test_mixed_bfloat16_counter_counts_past_256(float32_policy_afterwards):
    """Under mixed_bfloat16 the step counter of a BN cell and of a BN layer crosses 256
    exactly, between chunks too (bfloat16 rounds 257 to 256: a chunk starting at step
    257 would read slot 256's statistics)."""
    keras.config.set_dtype_policy("mixed_bfloat16")
    cell_kind = next(k for k in KINDS if k.batch_norm)
    layer_kind = next(k for k in KINDS if k.batch_norm and k.layer is not None)
    model = keras.Sequential(
        [
            keras.Input((None, 2)),
            keras.layers.RNN(cell_kind.cell(2, max_timesteps=257), return_sequences=True),
            layer_kind.layer(2, max_timesteps=300, return_sequences=True),
            keras.layers.Dense(1, dtype="float32"),
        ]
    )
    randomize(model, seed=6)
    streaming = to_streaming(model)
    layout = streaming.state_layout
    assert {s.dtype for s in layout if s.name != "step"} == {"bfloat16"}
    assert [s.dtype for s in layout if s.name == "step"] == ["float32", "float32"]
    x = np.random.default_rng(7).normal(size=(2, 262, 2)).astype("float32")
    want = model.predict(x, verbose=0)
    # predict_on_batch: a compiled loop over the 257 steps (on TensorFlow and JAX).
    outputs, states = stream(streaming, x, [257, 5], run=streaming.predict_on_batch)
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), want, atol=1e-5, rtol=1e-5)
    for spec, state in zip(layout, states):
        if spec.name == "step":
            assert state.dtype == np.float32 and (state == 262).all()


# ------------------------------------------------------------------------------ refusals


def _lstm(**kwargs):
    return recurrent(KINDS[0], **kwargs)


def _time_mixing_models():
    """(id, model builder, the message's reason) for every kind of refusal."""
    seq = lambda: keras.Input((None, 2))  # noqa: E731
    fixed = lambda: keras.Input((5, 2))  # noqa: E731

    def chain(inputs, *layers):
        x = inputs
        for layer in layers:
            x = layer(x)
        return keras.Model(inputs, x)

    def summary_times_steps():
        inputs = seq()
        steps = _lstm(return_sequences=True)(inputs)
        last = keras.layers.Reshape((1, UNITS))(_lstm()(steps))
        return keras.Model(inputs, keras.layers.Multiply()([steps, last]))

    def attention():
        inputs = seq()
        steps = _lstm(return_sequences=True)(inputs)
        return keras.Model(inputs, keras.layers.MultiHeadAttention(1, 2)(steps, steps))

    return [
        ("bidirectional", lambda: chain(seq(), keras.layers.Bidirectional(_lstm(), name="both")),
         "layer 'both' (Bidirectional) reads each sequence backward from its end"),
        ("go_backwards", lambda: chain(seq(), _lstm(go_backwards=True, name="back")),
         "layer 'back' (RNN) has go_backwards=True: it reads each sequence from its end"),
        ("pooling", lambda: chain(seq(), _lstm(return_sequences=True),
                                  keras.layers.GlobalAveragePooling1D(name="pool")),
         "layer 'pool' (GlobalAveragePooling1D) pools over time steps"),
        ("convolution", lambda: chain(seq(), keras.layers.Conv1D(2, 3, name="conv"), _lstm()),
         "layer 'conv' (Conv1D) convolves over time steps"),
        ("attention", attention, "(MultiHeadAttention) attends over time steps"),
        ("flatten", lambda: chain(fixed(), _lstm(return_sequences=True),
                                  keras.layers.Flatten(name="flat")),
         "layer 'flat' (Flatten) flattens the time axis into the features"),
        ("normalization_over_time", lambda: chain(
            fixed(), _lstm(return_sequences=True),
            keras.layers.LayerNormalization(axis=1, name="ln")),
         "layer 'ln' (LayerNormalization) acts along axis [1], which includes the time axis"),
        ("lambda", lambda: chain(seq(), keras.layers.Lambda(lambda t: t * 2, name="double"),
                                 _lstm()),
         "layer 'double' (Lambda) runs a function that streaming can't inspect"),
        ("whole_sequence_value", summary_times_steps,
         "(Multiply) combines the time steps with a value computed from the whole sequence"),
        ("no_recurrence", lambda: chain(seq(), keras.layers.Dense(2)),
         "it has no recurrent layer"),
    ]


@pytest.mark.parametrize("case", _time_mixing_models(), ids=lambda case: case[0])
def test_what_cannot_stream_is_refused_in_one_line_naming_the_layer(case):
    _, build, reason = case
    model = build()
    with pytest.raises(ValueError) as error:
        to_streaming(model)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"Cannot stream model {model.name!r}: ")
    assert reason in message


class Halve(keras.layers.Layer):
    """A per-step layer streaming can't know about."""

    def call(self, x):
        return x * 0.5


def test_a_layer_of_ones_own_streams_once_declared_per_step():
    inputs = keras.Input((None, 2))
    model = keras.Model(inputs, _lstm(return_sequences=True)(Halve(name="halve")(inputs)))
    with pytest.raises(ValueError, match=r"layer 'halve' \(Halve\) is not known to act on each "
                                         r"time step alone; if it does, pass its class in "
                                         r"`per_step_layers`"):
        to_streaming(model)
    x = np.random.default_rng(8).normal(size=(2, 5, 2)).astype("float32")
    outputs, _ = stream(to_streaming(model, per_step_layers=[Halve]), x, [2, 3])
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), whole(model, x),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="expected Keras layer classes, got 'Halve'"):
        to_streaming(model, per_step_layers=["Halve"])


def test_models_streaming_cannot_read_are_refused():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.rnn = _lstm()

        def call(self, x):
            return self.rnn(x)

    subclassed = Subclassed()
    subclassed(np.zeros((1, 2, 2), "float32"))
    with pytest.raises(ValueError, match="a subclassed model .* doesn't show its layers' order"):
        to_streaming(subclassed)
    a, b = keras.Input((None, 2)), keras.Input((None, 2))
    two = keras.Model([a, b], _lstm()(keras.layers.Add()([a, b])))
    with pytest.raises(ValueError, match="one input and one output, .* it has 2 inputs"):
        to_streaming(two)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="a model on strings runs on TensorFlow (elsewhere in tf.data)")
def test_text_model_streams_from_token_ids():
    vectorizer = keras.layers.TextVectorization(max_tokens=VOCABULARY)
    vectorizer.adapt(["a warm film", "a dull script", "the actors enjoy it"])
    sentences = keras.Input((), dtype="string")
    ids = vectorizer(sentences)
    x = keras.layers.Embedding(VOCABULARY, 3, mask_zero=True)(ids)
    model = keras.Model(sentences, keras.layers.Dense(2)(_lstm(return_sequences=True)(x)))
    randomize(model, seed=9)
    streaming = to_streaming(model)
    assert keras.backend.standardize_dtype(streaming.inputs[0].dtype) == "int64"
    text = np.array(["a warm film", "the actors enjoy a dull script"], dtype=object)
    tokens = to_numpy(vectorizer(text))
    outputs, _ = stream(streaming, tokens, [1, tokens.shape[1] - 1])
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), model.predict(text, verbose=0),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="streams from token ids, not strings: a streaming model "
                                         "starts after the model's TextVectorization layer"):
        streaming([np.array([["a warm film"]]), *initial_states(streaming, 1)])

    bag = keras.Model(sentences, keras.layers.TextVectorization(output_mode="multi_hot",
                                                                vocabulary=["a"])(sentences))
    with pytest.raises(ValueError, match="has output_mode='multi_hot': no sequence of token ids"):
        to_streaming(bag)


# -------------------------------------------------------------------------------- export

ROOT = Path(__file__).resolve().parents[1]
EXPORT_MODEL, PREDICT = ROOT / "export" / "export_model.py", ROOT / "export" / "predict.py"
needs_tensorflow = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="export needs the TensorFlow backend"
)


def run_script(script, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


def export_kinds():
    """A BN kind as a cell in keras.layers.RNN and an LN kind as its whole-sequence layer:
    both families, both containers, a counter past T_MAX."""
    bn = next(k for k in KINDS if k.batch_norm)
    ln = next(k for k in KINDS if not k.batch_norm and k.layer is not None)
    return bn, ln


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A token-id model, saved, exported by `export_model.py --streaming` (SavedModel checked
    in a fresh process, LiteRT for one step of a batch of 4 checked in the interpreter)."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("export needs the TensorFlow backend")
    bn, ln = export_kinds()
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(VOCABULARY, 3, mask_zero=True)(ids)
    x = recurrent(bn, return_sequences=True)(x)
    x = ln.layer(UNITS, return_sequences=True)(x)
    model = keras.Model(ids, keras.layers.Dense(2)(x))
    randomize(model, seed=10)
    directory = tmp_path_factory.mktemp("streaming_export")
    model.save(directory / "model.keras")
    result = run_script(EXPORT_MODEL, directory / "model.keras", directory / "serving",
                        "--streaming", "--litert", directory / "step.tflite", "--batch-size", 4)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checked in a fresh process" in result.stdout
    assert "checked in the LiteRT interpreter" in result.stdout
    return {"model": model, "saved_model": directory / "serving" / "1",
            "litert": directory / "step.tflite", "directory": directory}


@needs_tensorflow
def test_saved_model_signature_names_states_and_streams(exported):
    import tensorflow as tf

    model = exported["model"]
    layout = to_streaming(model).state_layout
    names = [f"state_{i}" for i in range(len(layout))]
    signature = tf.saved_model.load(str(exported["saved_model"])).signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    assert sorted(inputs) == sorted(["inputs", *names])
    assert sorted(signature.structured_outputs) == sorted(["outputs", *names])
    assert inputs["inputs"].shape.as_list() == [None, None]  # batch, chunk length
    assert [inputs[n].shape.as_list() for n in names] == [[None, s.size] for s in layout]
    x = padded_ids(seed=11)
    states = {n: tf.zeros((len(x), s.size), s.dtype) for n, s in zip(names, layout)}
    pieces, start = [], 0
    for length in SPLITS["uneven"]:
        result = signature(inputs=tf.constant(x[:, start : start + length]), **states)
        pieces.append(result["outputs"].numpy())
        states = {n: result[n] for n in names}
        start += length
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), model.predict(x, verbose=0),
                               atol=1e-5, rtol=1e-5)


@needs_tensorflow
def test_litert_file_steps_one_at_a_time_with_built_in_ops_only(exported):
    from keras_recnorm import export

    interpreter = export.litert_interpreter(model_path=str(exported["litert"]))
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "FULLY_CONNECTED" in ops
    assert not [op for op in ops if op.startswith("Flex") or "CUSTOM" in op or "TensorList" in op]
    runner = interpreter.get_signature_runner("serve")
    details = runner.get_input_details()
    assert list(details["inputs"]["shape"]) == [4, 1]
    x = padded_ids(seed=12)
    states = {n: np.zeros(d["shape"], d["dtype"]) for n, d in details.items() if n != "inputs"}
    pieces = []
    for t in range(x.shape[1]):
        result = export.run_litert(interpreter, {"inputs": x[:, t : t + 1], **states})
        pieces.append(result.pop("outputs"))
        states = result
    np.testing.assert_allclose(np.concatenate(pieces, axis=1),
                               exported["model"].predict(x, verbose=0), atol=1e-5, rtol=1e-5)


@needs_tensorflow
def test_verification_compares_the_states_from_mid_sequence():
    """What the fresh process and the interpreter are checked on: a second chunk that starts
    from the states the first one left, and every state compared."""
    from keras_recnorm import export
    from keras_recnorm.export import verification

    bn, _ = export_kinds()
    streaming = to_streaming(keras.Sequential([keras.Input((None, 2)), recurrent(bn)]))
    specs = export.streaming_input_specs(streaming)
    first, second = verification.streaming_probes(None, streaming, specs)
    names = ["inputs"] + [f"state_{i}" for i in range(len(specs) - 1)]
    assert list(first) == names and not any(first[n].any() for n in names[1:])
    assert second["state_2"].min() == first["inputs"].shape[1]  # the counter after chunk 1
    expected = verification._reference_outputs(streaming, second)
    assert list(expected) == ["outputs"] + names[1:]


@needs_tensorflow
def test_predict_script_streams_a_request_chunk_by_chunk(exported, tmp_path, capsys):
    from keras_recnorm import export

    spec = importlib.util.spec_from_file_location("export_predict_streaming", PREDICT)
    predict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(predict)
    x = padded_ids(seed=13)
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"inputs": x.tolist()}))
    assert predict.main([str(exported["saved_model"]), "--file", str(request),
                         "--chunk-length", "2"]) == 0
    answer = json.loads(capsys.readouterr().out)["outputs"]
    np.testing.assert_allclose(np.array(answer["outputs"]),
                               exported["model"].predict(x, verbose=0), atol=1e-5, rtol=1e-5)
    assert answer["state_2"] == [[float(n)] for n in (x != 0).sum(axis=1)]  # the counters

    plain = export.export_saved_model(exported["model"], tmp_path / "plain", verify=False)
    for target, body, message in [
        (exported["saved_model"], {"instances": ["a film"]}, "takes token ids, not text"),
        (plain, {"instances": x.tolist()}, "--chunk-length needs a streaming export"),
    ]:
        code = predict.main([str(target), "--json", json.dumps(body), "--chunk-length", "1"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], err


@needs_tensorflow
def test_export_refuses_what_a_streaming_model_cannot_be(tmp_path):
    from keras_recnorm import export

    bn, _ = export_kinds()
    streaming = to_streaming(keras.Sequential([keras.Input((None, 2)), recurrent(bn)]))
    with pytest.raises(ValueError, match="export_onnx doesn't take a streaming model"):
        export.export_onnx(streaming, tmp_path / "m.onnx")
    (tmp_path / "m.keras").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip archive
    result = run_script(EXPORT_MODEL, tmp_path / "m.keras", tmp_path / "out", "--streaming",
                        "--onnx", tmp_path / "m.onnx")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1
    assert "--onnx: a streaming model can't be exported to ONNX" in lines[0]
    for script, option in [(EXPORT_MODEL, "--streaming"), (PREDICT, "--chunk-length")]:
        assert option in run_script(script, "--help").stdout


# ------------------------------------------------------------------------------ example


@needs_tensorflow
def test_streaming_example_runs_with_tiny_settings(tmp_path):
    from tests.conftest import run_example

    argv = ["--sequences", 8, "--length", 6, "--epochs", 1, "--units", 4, "--batch-size", 4,
            "--stream-length", 9, "--output-dir", tmp_path / "run"]
    stdout = run_example("streaming.py", argv, "tensorflow", cwd=tmp_path)
    assert "per-step latency: median" in stdout and "p99" in stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 9 and metrics["max_abs_difference"] < 1e-5
    assert metrics["latency_ms_median"] <= metrics["latency_ms_p99"]
    assert (tmp_path / "run" / "streaming.png").stat().st_size > 0
    assert (tmp_path / "run" / "streaming.tflite").stat().st_size > 0


def test_addons_compatible_cells_stream():
    """Models rebuilt with the Addons-compatible cells (normalized carry) stream too."""
    from keras_recnorm import addons

    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(VOCABULARY, 3, mask_zero=True)(ids)
    x = keras.layers.RNN(addons.LayerNormLSTMCell(UNITS), return_sequences=True)(x)
    x = keras.layers.RNN(addons.LayerNormSimpleRNNCell(UNITS), return_sequences=True)(x)
    model = keras.Model(ids, keras.layers.Dense(2)(x))
    randomize(model, seed=4)
    x = padded_ids(seed=5)
    want = whole(model, x)
    outputs, _ = stream(to_streaming(model), x, SPLITS["uneven"])
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), want, atol=1e-5, rtol=1e-5)
