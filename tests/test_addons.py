"""keras_recnorm.addons: TensorFlow Addons 0.23's cells, for weights trained with them.

Two independent checks: the fixtures in tests/fixtures/addons/ were made by the real
Addons 0.23 under TensorFlow 2.15 (make_fixtures.py there), and every model rebuilt here
in Keras 3 code must take their weights and predict what Addons predicted; the equations
are checked against the NumPy reference of Addons' cells in tests/reference.py (outputs,
states, and gradients against autodiff of that reference).
"""

import doctest
import json
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from keras_recnorm import addons
from keras_recnorm.addons import LayerNormLSTMCell, LayerNormSimpleRNNCell
from tests import reference
from tests.conftest import assert_padded_states_match_alone, to_numpy
from tests.test_degenerate_inputs import gradients

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "addons"
BACKEND = keras.backend.backend()
B, T, D, U = 3, 6, 4, 5

# -- the fixtures' models, rebuilt in Keras 3 code as a user would ---------------------
# The same architectures as make_fixtures.py, `tfa.rnn.X` replaced by `addons.X`.

STEPS, FEATURES, VOCABULARY = 5, 3, 9


def _sequence_model(rnn):
    inputs = keras.Input((STEPS, FEATURES))
    return keras.Model(inputs, keras.layers.Dense(2)(rnn(inputs)))


def _bidirectional_masked():
    ids = keras.Input((STEPS + 1,), dtype="int32")
    embedded = keras.layers.Embedding(VOCABULARY, 3, mask_zero=True)(ids)
    both = keras.layers.Bidirectional(
        keras.layers.RNN(LayerNormLSTMCell(3), return_sequences=True))(embedded)
    return keras.Model(ids, keras.layers.Dense(2)(both))


REBUILT = {
    "lstm_sequences": lambda: _sequence_model(
        keras.layers.RNN(LayerNormLSTMCell(4), return_sequences=True)),
    "lstm_last": lambda: _sequence_model(keras.layers.RNN(LayerNormLSTMCell(4))),
    "lstm_options": lambda: _sequence_model(keras.layers.RNN(LayerNormLSTMCell(
        3, activation="softsign", recurrent_activation="hard_sigmoid",
        unit_forget_bias=False, norm_epsilon=0.05), return_sequences=True)),
    "simple_rnn": lambda: _sequence_model(keras.layers.RNN(LayerNormSimpleRNNCell(
        4, activation="relu", layernorm_epsilon=0.02), return_sequences=True)),
    "stacked": lambda: _sequence_model(keras.layers.RNN(keras.layers.StackedRNNCells(
        [LayerNormLSTMCell(4), LayerNormSimpleRNNCell(3)]), return_sequences=True)),
    "bidirectional_masked": _bidirectional_masked,
}
SAVED_FILES = [(name, suffix) for name in REBUILT for suffix in (".weights.h5", ".h5", ".keras")
               if (FIXTURES / f"{name}{suffix}").exists()]


def assert_predicts_what_addons_predicted(model, name):
    stored = np.load(FIXTURES / f"{name}.npz")
    with warnings.catch_warnings():
        # e.g. Keras 3 warns at every call when a model's input structure is off.
        warnings.simplefilter("error", UserWarning)
        got = to_numpy(model(stored["inputs"]))
    assert got.shape == stored["outputs"].shape
    np.testing.assert_allclose(got, stored["outputs"], atol=1e-5, rtol=0)


def test_the_fixtures_cover_what_they_should():
    assert {name for name, _ in SAVED_FILES} == set(REBUILT)
    for name in REBUILT:
        assert {".weights.h5", ".h5"} <= {s for n, s in SAVED_FILES if n == name}, name
    assert sum(f.stat().st_size for f in FIXTURES.iterdir()) < 1_000_000


@pytest.mark.parametrize("name,suffix", SAVED_FILES, ids=["".join(c) for c in SAVED_FILES])
def test_load_weights_predicts_what_addons_predicted(name, suffix):
    model = REBUILT[name]()
    model.load_weights(FIXTURES / f"{name}{suffix}")
    assert_predicts_what_addons_predicted(model, name)


@pytest.mark.parametrize("name", list(REBUILT))
def test_load_model_of_an_addons_h5(name):
    model = addons.load_model(FIXTURES / f"{name}.h5")
    assert_predicts_what_addons_predicted(model, name)
    cells = [layer.cell for layer in _walk(model) if isinstance(layer, keras.layers.RNN)]
    assert cells and all(type(cell).__module__ == "keras_recnorm.addons"
                         or isinstance(cell, keras.layers.StackedRNNCells) for cell in cells)


def _walk(layer):
    yield layer
    for inner in getattr(layer, "layers", []) + [getattr(layer, "forward_layer", None)]:
        if inner is not None:
            yield from _walk(inner)


@pytest.mark.parametrize("name", ["stacked", "bidirectional_masked"])
def test_load_model_of_an_older_keras_2_h5(name, tmp_path):
    """Keras 2 before 2.13 wrote a registered class as `{"class_name": "Addons>...",
    "config": ...}`, without `module` and `registered_name`."""
    import h5py

    def older(node):
        if isinstance(node, list):
            return [older(item) for item in node]
        if not isinstance(node, dict):
            return node
        node = {key: older(value) for key, value in node.items()
                if key not in ("module", "registered_name", "build_config")}
        if node.get("class_name") in ("LayerNormLSTMCell", "LayerNormSimpleRNNCell"):
            node["class_name"] = "Addons>" + node["class_name"]
        return node

    path = tmp_path / f"{name}.h5"
    path.write_bytes((FIXTURES / f"{name}.h5").read_bytes())
    with h5py.File(path, "r+") as stored:
        config = json.loads(stored.attrs["model_config"])
        stored.attrs["model_config"] = json.dumps(older(config))
    assert '"Addons>LayerNormLSTMCell"' in json.dumps(older(config))
    assert_predicts_what_addons_predicted(addons.load_model(path), name)


def test_load_model_leaves_the_file_as_it_was(tmp_path):
    original = (FIXTURES / "lstm_last.h5").read_bytes()
    copy = tmp_path / "lstm_last.h5"
    copy.write_bytes(original)
    addons.load_model(copy)
    assert copy.read_bytes() == original


@pytest.mark.parametrize("what,path,expected", [
    ("Keras 2 .keras", FIXTURES / "lstm_sequences.keras", "load_weights("),
    ("weights only", FIXTURES / "lstm_last.weights.h5", "load_weights("),
    ("SavedModel directory", FIXTURES, "save_weights('model.weights.h5')"),
])
def test_load_model_says_what_to_do_with_what_keras_3_cannot_load(what, path, expected):
    with pytest.raises(ValueError) as error:
        addons.load_model(path)
    message = str(error.value)
    assert "\n" not in message
    assert expected in message and "rebuild" in message and addons.GUIDE in message
    assert (Path(__file__).resolve().parents[1] / addons.GUIDE).exists()


def test_load_model_of_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.h5"):
        addons.load_model(tmp_path / "nothing.h5")


# -- the equations, against tests/reference.py ---------------------------------------------

NORMS = ("kernel_norm", "recurrent_norm", "state_norm", "layernorm")
CELLS = {"lstm": (LayerNormLSTMCell, reference.addons_ln_lstm, 2),
         "simple_rnn": (LayerNormSimpleRNNCell, reference.addons_ln_simple_rnn, 1)}
EPSILON_ARGUMENT = {"lstm": "norm_epsilon", "simple_rnn": "layernorm_epsilon"}
DEFAULT_EPSILON = {"lstm": 1e-3, "simple_rnn": 1e-5}


def weight_names(cell):
    """A compatible cell's weights by the names the reference takes: `kernel`, ...,
    `kernel_norm/gamma` (the cell's own weights, then its sublayers', Addons' order)."""
    names = []
    for variable in cell.weights:
        parts = variable.path.split("/")
        names.append("/".join(parts[-2:]) if parts[-2] in NORMS else parts[-1])
    return names


def randomize(cell, rng):
    """Random weights with gains in ±[0.5, 1.5] and shifts away from 0; returns them."""
    values = {}
    for name, variable in zip(weight_names(cell), cell.weights):
        shape = tuple(variable.shape)
        if name.endswith("gamma"):
            value = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
        else:
            value = rng.normal(0.0, 0.5, shape)
        variable.assign(value.astype(variable.dtype))
        values[name] = value
    return values


def built(kind, rng, x, dtype=None, cell_kwargs=None, **rnn_kwargs):
    cell = CELLS[kind][0](U, dtype=dtype, **(cell_kwargs or {}))
    layer = keras.layers.RNN(cell, dtype=dtype, **rnn_kwargs)
    layer(x)
    return layer, randomize(cell, rng)


def reference_kwargs(kind, cell_kwargs):
    epsilon = cell_kwargs.get(EPSILON_ARGUMENT[kind], DEFAULT_EPSILON[kind])
    return {"epsilon": epsilon}


@pytest.mark.parametrize("kind", list(CELLS))
def test_weights_in_addons_order_with_addons_defaults(kind):
    layer = keras.layers.RNN(CELLS[kind][0](U))
    layer(np.zeros((B, T, D), "float32"))
    cell = layer.cell
    values = dict(zip(weight_names(cell), (to_numpy(v) for v in cell.weights)))
    if kind == "lstm":
        assert list(values) == ["kernel", "recurrent_kernel", "bias"] + [
            f"{norm}/{w}" for norm in NORMS[:3] for w in ("gamma", "beta")]
        np.testing.assert_array_equal(values["bias"], np.repeat([0.0, 1.0, 0.0, 0.0], U))
        assert [n.epsilon for n in (cell.kernel_norm, cell.recurrent_norm, cell.state_norm)] \
            == [1e-3] * 3
        no_forget_bias = keras.layers.RNN(LayerNormLSTMCell(U, unit_forget_bias=False))
        no_forget_bias(np.zeros((B, T, D), "float32"))
        np.testing.assert_array_equal(to_numpy(no_forget_bias.cell.bias), 0.0)
    else:
        assert list(values) == ["kernel", "recurrent_kernel", "bias", "layernorm/gamma"]
        assert cell.layernorm.epsilon == 1e-5
    for name, value in values.items():
        if name.endswith("gamma"):
            np.testing.assert_array_equal(value, 1.0)
        if name.endswith("beta"):
            np.testing.assert_array_equal(value, 0.0)


OPTIONS = {
    "defaults": {},
    "epsilon_activation": {"epsilon": 0.3, "activation": "softsign"},
    "no_bias": {"use_bias": False},
}


def cell_options(kind, options):
    kwargs = dict(OPTIONS[options])
    if "epsilon" in kwargs:
        kwargs[EPSILON_ARGUMENT[kind]] = kwargs.pop("epsilon")
    return kwargs


def reference_activation(name):
    return {"softsign": lambda a: a / (1.0 + np.abs(a))}.get(name)


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("batch", [B, 1])
def test_matches_reference(kind, options, batch, rng):
    x = rng.normal(0, 1, (batch, T, D)).astype("float32")
    kwargs = cell_options(kind, options)
    layer, weights = built(kind, rng, x, cell_kwargs=kwargs, return_sequences=True,
                           return_state=True)
    initial = [rng.normal(0, 0.5, (batch, U)).astype("float32") for _ in range(CELLS[kind][2])]
    outputs, *states = layer(x, initial_state=initial)
    want, want_states = CELLS[kind][1](
        weights, x, *initial, activation=reference_activation(kwargs.get("activation")),
        **reference_kwargs(kind, kwargs))
    np.testing.assert_allclose(to_numpy(outputs), want, atol=1e-5, rtol=0)
    for got, expected in zip(states, want_states):
        np.testing.assert_allclose(to_numpy(got), expected, atol=1e-5, rtol=0)


def test_lstm_carries_the_normalized_cell_state(rng):
    # Addons' c is state_norm's output: (c − β)/γ has mean 0 over the units of a sample.
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer, weights = built("lstm", rng, x, return_state=True)
    _, _, c = layer(x)
    standardized = (to_numpy(c) - weights["state_norm/beta"]) / weights["state_norm/gamma"]
    np.testing.assert_allclose(standardized.mean(axis=-1), 0.0, atol=1e-5)


def test_all_zero_inputs_match_reference(rng):
    # LN of a zero vector is its shift β: defined, finite, what Addons computes.
    x = np.zeros((2, T, D), "float32")
    for kind in CELLS:
        layer, weights = built(kind, rng, x, return_sequences=True)
        want, _ = CELLS[kind][1](weights, x)
        np.testing.assert_allclose(to_numpy(layer(x)), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", list(CELLS))
def test_gradients_match_autodiff_of_the_reference(kind, rng):
    """The cell's gradients in Keras's loop (the backend's autodiff), for the input and
    every weight, against the float64 reference differentiated by TensorFlow (run in
    `tf.experimental.numpy`: eager, no compilation; TensorFlow is installed with every
    backend)."""
    import tensorflow as tf

    dtype = "float32" if BACKEND == "jax" else "float64"
    x = rng.normal(0, 1, (B, T, D)).astype(dtype)
    probe = rng.normal(0, 1, (B, T, U))
    layer, weights = built(kind, rng, x, dtype=dtype, return_sequences=True)
    got = gradients(layer, x, lambda outputs: ops.sum(outputs * ops.cast(probe, dtype)))
    names = weight_names(layer.cell)
    variables = [tf.constant(x, tf.float64)] + [tf.constant(weights[n], tf.float64) for n in names]
    with tf.GradientTape() as tape:
        tape.watch(variables)
        outputs, _ = CELLS[kind][1](dict(zip(names, variables[1:])), variables[0],
                                    xp=tf.experimental.numpy, epsilon=DEFAULT_EPSILON[kind])
        loss = tf.reduce_sum(outputs * probe)
    want = [g.numpy() for g in tape.gradient(loss, variables)]
    assert len(got) == len(want) == 1 + len(names)
    # float32 on JAX (no float64 by default); on torch, Keras's matmul returns float32 for
    # float64 inputs (tests/test_layers.py says more): float32 tolerances for both.
    tolerance = 1e-7 if BACKEND == "tensorflow" else 1e-4
    for name, a, b in zip(["x"] + names, got, want):
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance * np.abs(b).max(),
                                   err_msg=name)


def test_masked_steps_keep_the_state(rng):
    # Right- and left-padded rows end in the states of their sequences run alone.
    sequences = [rng.normal(0, 1, (n, D)).astype("float32") for n in (T, 3, 4)]
    padded = np.zeros((3, T, D), "float32")
    padded[0], padded[1, :3], padded[2, 2:] = sequences
    inputs = keras.Input((None, D))
    masked = keras.layers.Masking(0.0)(inputs)
    rnn = keras.layers.RNN(LayerNormLSTMCell(U), return_state=True)
    model = keras.Model(inputs, rnn(masked))
    randomize(rnn.cell, rng)
    assert_padded_states_match_alone(model, padded, sequences)


def test_bidirectional_with_mask_matches_reference(rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    mask = np.ones((B, T), bool)
    mask[0, 4:] = False
    mask[2, :2] = False
    layer = keras.layers.Bidirectional(
        keras.layers.RNN(LayerNormLSTMCell(U), return_sequences=True))
    layer(x, mask=mask)
    forward = randomize(layer.forward_layer.cell, rng)
    backward = randomize(layer.backward_layer.cell, rng)
    got = to_numpy(layer(x, mask=mask))
    # Bidirectional zeroes the outputs of masked steps; the backward half reads the
    # sequence reversed, padding included, and is reversed back.
    want_forward, _ = reference.addons_ln_lstm(forward, x, mask=mask, zero_output_for_mask=True)
    want_backward, _ = reference.addons_ln_lstm(backward, x[:, ::-1], mask=mask[:, ::-1],
                                                zero_output_for_mask=True)
    np.testing.assert_allclose(got[..., :U], want_forward, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[..., U:], want_backward[:, ::-1], atol=1e-5, rtol=0)


def test_stacked_cells_match_reference(rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer = keras.layers.RNN(keras.layers.StackedRNNCells(
        [LayerNormLSTMCell(U), LayerNormSimpleRNNCell(3, layernorm_epsilon=0.01)]),
        return_sequences=True)
    layer(x)
    lstm, simple = (randomize(cell, rng) for cell in layer.cell.cells)
    first, _ = reference.addons_ln_lstm(lstm, x)
    want, _ = reference.addons_ln_simple_rnn(simple, first, epsilon=0.01)
    np.testing.assert_allclose(to_numpy(layer(x)), want, atol=1e-5, rtol=0)


# -- Keras conventions: config, saving, training, export, arguments ------------------------


def test_hard_sigmoid_means_keras_2s(rng):
    cell = LayerNormLSTMCell(U, recurrent_activation="hard_sigmoid")
    assert cell.recurrent_activation is addons.keras2_hard_sigmoid
    a = np.array([-3.0, -1.0, 0.0, 1.0, 3.0])
    np.testing.assert_allclose(to_numpy(addons.keras2_hard_sigmoid(a)), np.clip(0.2 * a + 0.5, 0, 1))
    assert LayerNormSimpleRNNCell(U, activation="hard_sigmoid").activation \
        is addons.keras2_hard_sigmoid


@pytest.mark.parametrize("kind", list(CELLS))
def test_get_config_round_trip(kind):
    kwargs = {"lstm": {"norm_epsilon": 0.01, "unit_forget_bias": False, "dropout": 0.25,
                       "norm_gamma_initializer": "zeros", "recurrent_activation": "hard_sigmoid"},
              "simple_rnn": {"layernorm_epsilon": 0.01, "gamma_regularizer": "l2",
                             "recurrent_dropout": 0.25, "activation": "relu"}}[kind]
    cell = CELLS[kind][0](U, **kwargs)
    config = cell.get_config()
    for name, value in kwargs.items():
        if name.endswith("_initializer") or name.endswith("_regularizer"):
            assert config[name]["class_name"].lower().startswith(value.lower()[:2]), name
        elif name.endswith("activation"):
            assert keras.activations.get(config[name]) is getattr(cell, name), name
        else:
            assert config[name] == value, name
    assert "epsilon" not in config and "beta_initializer" not in config
    again = CELLS[kind][0].from_config(config)
    assert again.get_config() == config


def test_keras_file_round_trip(tmp_path, rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    inputs = keras.Input((T, D))
    outputs = keras.layers.Bidirectional(keras.layers.RNN(keras.layers.StackedRNNCells(
        [LayerNormLSTMCell(U, recurrent_activation="hard_sigmoid"),
         LayerNormSimpleRNNCell(3)])))(inputs)
    model = keras.Model(inputs, outputs)
    for layer in (model.layers[1].forward_layer, model.layers[1].backward_layer):
        for cell in layer.cell.cells:
            randomize(cell, rng)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(to_numpy(loaded(x)), to_numpy(model(x)), atol=1e-6, rtol=0)
    cells = loaded.layers[1].forward_layer.cell.cells
    assert [type(c) for c in cells] == [LayerNormLSTMCell, LayerNormSimpleRNNCell]
    assert cells[0].recurrent_activation is addons.keras2_hard_sigmoid


def test_fit_with_dropout(rng):
    x = rng.normal(0, 1, (8, T, D)).astype("float32")
    y = x[:, -2:].sum(axis=(1, 2))[:, None]
    model = keras.Sequential([
        keras.Input((T, D)),
        keras.layers.RNN(keras.layers.StackedRNNCells([
            LayerNormLSTMCell(U, dropout=0.2, recurrent_dropout=0.2),
            LayerNormSimpleRNNCell(U, dropout=0.2, recurrent_dropout=0.2)])),
        keras.layers.Dense(1)])
    # Eagerly: tracing the training step takes longer than two eager steps.
    model.compile(optimizer="adam", loss="mse", run_eagerly=True)
    before = [to_numpy(v) for v in model.trainable_weights]
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    moved = [not np.allclose(a, to_numpy(v)) for a, v in zip(before, model.trainable_weights)]
    assert all(moved), [v.path for v, m in zip(model.trainable_weights, moved) if not m]


def test_under_mixed_precision(rng, float32_policy_afterwards):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    keras.config.set_dtype_policy("mixed_float16")
    layer = keras.layers.RNN(LayerNormLSTMCell(U), return_sequences=True)
    layer(x)
    weights = randomize(layer.cell, rng)
    assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in layer.weights)
    outputs = to_numpy(layer(x))
    assert outputs.dtype == np.float16
    want, _ = reference.addons_ln_lstm(weights, x)
    np.testing.assert_allclose(outputs.astype("float64"), want, atol=2e-2, rtol=0)


@pytest.mark.parametrize("cell_class,argument", [
    (LayerNormLSTMCell, "norm_epsilon"), (LayerNormSimpleRNNCell, "layernorm_epsilon")])
def test_bad_epsilon_names_the_argument(cell_class, argument):
    with pytest.raises(ValueError, match=f"`{argument}`.*got 0"):
        cell_class(U, **{argument: 0})


def test_arguments_addons_did_not_take_are_refused():
    with pytest.raises(TypeError):
        LayerNormLSTMCell(U, gamma_regularizer="l2")
    with pytest.raises(TypeError):
        LayerNormSimpleRNNCell(U, beta_initializer="ones")


@pytest.mark.skipif(BACKEND != "tensorflow", reason="outputs print TF shapes")
def test_docstring_examples_run():
    result = doctest.testmod(addons, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.skipif(BACKEND != "tensorflow", reason="SavedModel export needs TensorFlow")
def test_export_saved_model(tmp_path, rng):
    from keras_recnorm.export import export_saved_model

    model = keras.Sequential([
        keras.Input((None, D)),
        keras.layers.RNN(keras.layers.StackedRNNCells(
            [LayerNormLSTMCell(U), LayerNormSimpleRNNCell(3)]), return_sequences=True),
        keras.layers.Dense(2)])
    for cell in model.layers[0].cell.cells:
        randomize(cell, rng)
    # verify=True reloads the export in a fresh process without Keras and compares it
    # with model.predict at two sequence lengths.
    path = export_saved_model(model, tmp_path / "served")
    assert Path(path, "saved_model.pb").exists()


# -- the migration guide's claims (docs/migrating_from_addons.md) --------------------------


def test_simple_rnn_weights_move_to_the_paper_exact_cell_unchanged(rng):
    import keras_recnorm

    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    old, _ = built("simple_rnn", rng, x, cell_kwargs={"layernorm_epsilon": 0.01},
                   return_sequences=True)
    new = keras.layers.RNN(keras_recnorm.LayerNormSimpleRNNCell(U, epsilon=0.01),
                           return_sequences=True)
    new.build((None, None, D))
    new.set_weights(old.get_weights())
    np.testing.assert_allclose(to_numpy(new(x)), to_numpy(old(x)), atol=1e-6, rtol=0)


def test_lstm_weight_map_agrees_until_the_carry_differs(rng):
    """The guide's warm start: the first step (from c = 0) agrees exactly; later steps
    don't, because Addons carries the normalized cell state."""
    import keras_recnorm

    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    old, _ = built("lstm", rng, x, return_sequences=True)
    new = keras.layers.RNN(keras_recnorm.LayerNormLSTMCell(U, epsilon=1e-3),
                           return_sequences=True)
    new.build((None, None, D))
    a, b = old.cell, new.cell
    b.kernel.assign(a.kernel)
    b.recurrent_kernel.assign(a.recurrent_kernel)
    b.bias.assign(a.bias + a.kernel_norm.beta + a.recurrent_norm.beta)
    b.input_gamma.assign(a.kernel_norm.gamma)
    b.recurrent_gamma.assign(a.recurrent_norm.gamma)
    b.cell_gamma.assign(a.state_norm.gamma)
    b.cell_beta.assign(a.state_norm.beta)
    got, want = to_numpy(new(x)), to_numpy(old(x))
    np.testing.assert_allclose(got[:, 0], want[:, 0], atol=1e-6, rtol=0)
    assert np.abs(got[:, 1:] - want[:, 1:]).max() > 1e-2
