"""keras_recnorm.layer_norm: the layer-normalized cells (Ba, Kiros & Hinton 2016).

The equations are checked against the independent NumPy implementation in
`tests/reference.py`; everything else checks that the cells behave as Keras cells.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_recnorm.kinds import kind as named_kind
from tests import reference
from tests.conftest import (
    assert_padded_states_match_alone,
    kinds,
    randomize_weights,
    set_weights_by_name,
    to_numpy,
    weights_by_name,
)

B, T, D, U = 3, 9, 4, 5

# Every layer-normalized kind of cell (keras_recnorm.kinds.KINDS), and the three whose
# own properties some tests check.
KINDS = kinds(family="layer_norm")
LAYERS = kinds(family="layer_norm", layer=True)
LSTM, GRU, SIMPLE_RNN = map(
    named_kind, ("layer_norm_lstm", "layer_norm_gru", "layer_norm_simple_rnn"))

# recurrence -> the weights DESIGN.md fixes, in creation order (the .keras file order)
EXPECTED_WEIGHTS = {
    "lstm": {"kernel": (D, 4 * U), "recurrent_kernel": (U, 4 * U), "bias": (4 * U,),
             "input_gamma": (4 * U,), "recurrent_gamma": (4 * U,), "cell_gamma": (U,),
             "cell_beta": (U,)},
    "gru": {"kernel": (D, 3 * U), "recurrent_kernel": (U, 3 * U), "bias": (3 * U,),
            "input_gate_gamma": (2 * U,), "recurrent_gate_gamma": (2 * U,),
            "input_candidate_gamma": (U,), "recurrent_candidate_gamma": (U,)},
    "simple_rnn": {"kernel": (D, U), "recurrent_kernel": (U, U), "bias": (U,), "gamma": (U,)},
}


def make_cell(kind, units=U, **kwargs):
    return kind.cell(units, **kwargs)


def reference_run(kind, weights, x, states=None, **kwargs):
    """The reference outputs and final states for `kind`, `states` as Keras orders them."""
    states = [] if states is None else [np.asarray(s) for s in states]
    return reference.for_kind(kind)(weights, np.asarray(x, "float64"), *states, **kwargs)


def random_states(kind, rng, batch=B, units=U):
    return [rng.normal(0, 0.5, (batch, units)).astype("float32")
            for _ in reference.STATES[kind.recurrence]]


def built_rnn(kind, rng, x, cell_kwargs=None, **rnn_kwargs):
    """`keras.layers.RNN(cell)` built on `x`, with random weights. Returns (layer, weights)."""
    layer = keras.layers.RNN(make_cell(kind, **(cell_kwargs or {})), **rnn_kwargs)
    layer(x)
    return layer, randomize_weights(layer, rng)


def assert_states_close(got_states, want_states, atol=1e-5):
    assert len(got_states) == len(want_states)
    for got, want in zip(got_states, want_states):
        np.testing.assert_allclose(to_numpy(got), want, atol=atol, rtol=0)


# -- the equations --------------------------------------------------------------------


def test_weights_have_the_designed_names_and_shapes():
    x = np.zeros((B, T, D), "float32")
    for kind in KINDS:
        layer = keras.layers.RNN(make_cell(kind))
        layer(x)
        got = {name: value.shape for name, value in weights_by_name(layer).items()}
        assert got == EXPECTED_WEIGHTS[kind.recurrence], kind.name
        # Weights are saved by creation order: the design fixes it too.
        assert list(got) == list(EXPECTED_WEIGHTS[kind.recurrence]), kind.name


def test_default_initial_values():
    layer = keras.layers.RNN(make_cell(LSTM))
    layer(np.zeros((B, T, D), "float32"))
    w = weights_by_name(layer)
    for name in ("input_gamma", "recurrent_gamma", "cell_gamma"):
        np.testing.assert_array_equal(w[name], 1.0)
    np.testing.assert_array_equal(w["cell_beta"], 0.0)
    # unit_forget_bias: forget gate (second quarter, order i, f, g, o) starts at 1.
    np.testing.assert_array_equal(w["bias"], np.repeat([0.0, 1.0, 0.0, 0.0], U))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cell_kwargs", [{}, {"epsilon": 0.3}, {"use_bias": False}],
                         ids=["defaults", "epsilon", "no_bias"])
def test_matches_reference(kind, cell_kwargs, rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer, weights = built_rnn(kind, rng, x, cell_kwargs,
                               return_sequences=True, return_state=True)
    if cell_kwargs.get("use_bias") is False:
        assert "bias" not in weights
    initial = random_states(kind, rng)
    outputs, *states = layer(x, initial_state=initial)
    want_outputs, want_states = reference_run(
        kind, weights, x, initial, epsilon=cell_kwargs.get("epsilon", 1e-5))
    np.testing.assert_allclose(to_numpy(outputs), want_outputs, atol=1e-5, rtol=0)
    assert_states_close(states, want_states)


def test_lstm_carries_the_raw_cell_state(rng):
    # The normalized cell state would have mean cell_beta and spread cell_gamma per
    # sample; the raw one grows with the input gates. Check it is the reference's raw c.
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer, weights = built_rnn(LSTM, rng, x, return_state=True)
    _, _, c = layer(x)
    _, (_, want_c) = reference.ln_lstm(weights, x)
    np.testing.assert_allclose(to_numpy(c), want_c, atol=1e-5)
    normalized = reference.layer_norm(want_c, weights["cell_gamma"], weights["cell_beta"])
    assert np.abs(to_numpy(c) - normalized).max() > 1e-2


def test_lstm_gradients_match_finite_differences(rng):
    """Autodiff of the LSTM cell against central finite differences, in float64."""
    x = rng.normal(0, 1, (2, 7, 3))
    layer = keras.layers.RNN(LSTM.cell(4, dtype="float64"), dtype="float64",
                             return_sequences=True, return_state=True)
    layer(x)
    randomize_weights(layer, rng)
    probe_out, probe_c = rng.normal(0, 1, (2, 7, 4)), rng.normal(0, 1, (2, 4))
    x_var = tf.Variable(x, dtype="float64")

    def loss():
        outputs, _, c = layer(x_var)
        return tf.reduce_sum(outputs * probe_out) + tf.reduce_sum(c * probe_c)

    variables = [v.value for v in layer.trainable_weights] + [x_var]
    with tf.GradientTape() as tape:
        value = loss()
    grads = tape.gradient(value, variables)
    assert len(layer.trainable_weights) == 7
    step = 1e-6
    for variable, grad in zip(variables, grads):
        flat_size = int(np.prod(variable.shape))
        for index in rng.choice(flat_size, size=min(flat_size, 5), replace=False):
            position = np.unravel_index(index, variable.shape)
            original = variable.numpy()
            shifted = original.copy()
            shifted[position] += step
            variable.assign(shifted)
            plus = float(loss())
            shifted[position] -= 2 * step
            variable.assign(shifted)
            minus = float(loss())
            variable.assign(original)
            numeric = (plus - minus) / (2 * step)
            analytic = float(to_numpy(grad)[position])
            assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-7), (
                f"{variable.name}{position}: autodiff {analytic}, finite differences {numeric}")


# -- the paper's invariances (Ba et al. 2016, sec. 5.1, Table 1) -----------------------


def _outputs(layer, x):
    outputs, *_ = layer(x)
    return to_numpy(outputs)


# The invariances are exact only as ε → 0: ε inside sqrt(var + ε) matters when a variance
# is small, and the recurrent LN amplifies the difference along the sequence (the float64
# reference shows the same ~1e-4 for a downscaling by 0.3 at ε = 1e-5). Sixteen input
# features keep the input term's variance well above ε; a downscaled input gets a tiny ε.
WIDE = 16


@pytest.mark.parametrize("kind", [LSTM, GRU])
@pytest.mark.parametrize("scale,epsilon", [(2.0, 1e-5), (7.0, 1e-5), (0.1, 1e-9)])
def test_invariant_to_scaling_the_input_sequence(kind, scale, epsilon, rng):
    # The input term is normalized on its own, so scaling every x_t cancels.
    x = rng.normal(0, 1, (B, T, WIDE)).astype("float32")
    layer, _ = built_rnn(kind, rng, x, {"epsilon": epsilon},
                         return_sequences=True, return_state=True)
    np.testing.assert_allclose(_outputs(layer, x * scale), _outputs(layer, x), atol=1e-4)


@pytest.mark.parametrize("kind", [LSTM, GRU])
def test_invariant_to_scaling_and_recentering_the_kernel(kind, rng):
    x = rng.normal(0, 1, (B, T, WIDE)).astype("float32")
    layer, weights = built_rnn(kind, rng, x, return_sequences=True, return_state=True)
    before = _outputs(layer, x)
    set_weights_by_name(layer, {"kernel": weights["kernel"] * 4.0})
    np.testing.assert_allclose(_outputs(layer, x), before, atol=1e-4)
    if kind is LSTM:  # one LN over all 4U columns: adding a per-row constant cancels
        shift = rng.normal(0, 1, (WIDE, 1))
        set_weights_by_name(layer, {"kernel": weights["kernel"] + shift})
        np.testing.assert_allclose(_outputs(layer, x), before, atol=1e-4)


def test_simple_rnn_invariant_to_scaling_both_kernels(rng):
    # The simple cell normalizes the sum x·W + h·U: only a joint scaling cancels.
    x = rng.normal(0, 1, (B, T, WIDE)).astype("float32")
    layer, weights = built_rnn(SIMPLE_RNN, rng, x, return_sequences=True, return_state=True)
    before = _outputs(layer, x)
    set_weights_by_name(layer, {"kernel": weights["kernel"] * 5.0,
                                "recurrent_kernel": weights["recurrent_kernel"] * 5.0})
    np.testing.assert_allclose(_outputs(layer, x), before, atol=1e-4)


# -- Keras integration ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_bidirectional(kind, rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    bidi = keras.layers.Bidirectional(
        keras.layers.RNN(make_cell(kind), return_sequences=True))
    bidi(x)
    forward = randomize_weights(bidi.forward_layer, rng)
    backward = randomize_weights(bidi.backward_layer, rng)
    got = to_numpy(bidi(x))
    want_forward, _ = reference_run(kind, forward, x)
    want_backward, _ = reference_run(kind, backward, x[:, ::-1])
    np.testing.assert_allclose(got[..., :U], want_forward, atol=1e-5)
    np.testing.assert_allclose(got[..., U:], want_backward[:, ::-1], atol=1e-5)


def test_stacked_cells(rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    first, second = LSTM.cell(6), GRU.cell(U)
    layer = keras.layers.RNN(keras.layers.StackedRNNCells([first, second]),
                             return_sequences=True, return_state=True)
    layer(x)
    w_first, w_second = randomize_weights(first, rng), randomize_weights(second, rng)
    outputs, *states = layer(x)
    hidden, first_states = reference.ln_lstm(w_first, x)
    want, second_states = reference.ln_gru(w_second, hidden)
    np.testing.assert_allclose(to_numpy(outputs), want, atol=1e-5)
    flat = [s for group in states for s in (group if isinstance(group, (list, tuple)) else [group])]
    assert_states_close(flat, first_states + second_states)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("padding", ["post", "pre"])
def test_masking_from_embedding(kind, padding, rng):
    lengths = [6, 3, 9]
    sequences = [rng.integers(1, 20, n) for n in lengths]
    padded = keras.utils.pad_sequences(sequences, maxlen=9, padding=padding)
    embedding = keras.layers.Embedding(20, D, mask_zero=True)
    rnn = keras.layers.RNN(make_cell(kind), return_state=True)
    model_in = keras.Input((None,), dtype="int32")
    model = keras.Model(model_in, rnn(embedding(model_in)))
    randomize_weights(rnn, rng)
    assert_padded_states_match_alone(model, padded, sequences)


@pytest.mark.parametrize("kind", KINDS)
def test_return_state_is_the_last_output(kind, rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer, _ = built_rnn(kind, rng, x, return_state=True)
    output, h, *_ = layer(x)
    np.testing.assert_array_equal(to_numpy(output), to_numpy(h))


@pytest.mark.parametrize("kind", KINDS)
def test_go_backwards(kind, rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer, weights = built_rnn(kind, rng, x, go_backwards=True,
                               return_sequences=True, return_state=True)
    outputs, *states = layer(x)
    want, want_states = reference_run(kind, weights, x[:, ::-1])
    np.testing.assert_allclose(to_numpy(outputs), want, atol=1e-5)
    assert_states_close(states, want_states)


@pytest.mark.parametrize("kind", KINDS)
def test_stateful_halves_equal_the_whole(kind, rng):
    x = rng.normal(0, 1, (B, 10, D)).astype("float32")
    layer = keras.layers.RNN(make_cell(kind), stateful=True, return_sequences=True)
    layer(x[:, :5])
    weights = randomize_weights(layer, rng)
    layer.reset_state()
    halves = np.concatenate([to_numpy(layer(x[:, :5])), to_numpy(layer(x[:, 5:]))], axis=1)
    want, _ = reference_run(kind, weights, x)
    np.testing.assert_allclose(halves, want, atol=1e-5)
    layer.reset_state()
    np.testing.assert_allclose(to_numpy(layer(x[:, :5])), want[:, :5], atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_unroll_equals_the_loop(kind, rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    looped, weights = built_rnn(kind, rng, x, return_sequences=True, return_state=True)
    unrolled = keras.layers.RNN(make_cell(kind), unroll=True,
                                return_sequences=True, return_state=True)
    unrolled(x)
    set_weights_by_name(unrolled, weights)
    for got, want in zip(unrolled(x), looped(x)):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", ["dropout", "recurrent_dropout"])
def test_dropout(kind, which, rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer, weights = built_rnn(kind, rng, x, {which: 0.4}, return_sequences=True)
    first, second = to_numpy(layer(x, training=True)), to_numpy(layer(x, training=True))
    assert np.abs(first - second).max() > 1e-3, "training calls should draw new masks"
    inference = to_numpy(layer(x, training=False))
    np.testing.assert_array_equal(inference, to_numpy(layer(x)))
    # Inference is the plain cell: no dropout, no rescaling.
    want, _ = reference_run(kind, weights, x)
    np.testing.assert_allclose(inference, want, atol=1e-5)
    assert np.abs(first - inference).max() > 1e-3


def test_input_dropout_mask_is_shared_across_time(rng):
    # One mask per sequence (Gal & Ghahramani; Keras's DropoutRNNCell): with the same
    # input at every step, a dropped feature is dropped at every step, so the training
    # output equals the reference run on ONE masked copy of the input, rescaled.
    x_step = rng.normal(0, 1, (1, 1, D)).astype("float32")
    x = np.repeat(np.repeat(x_step, T, axis=1), 64, axis=0)
    layer, weights = built_rnn(GRU, rng, x, {"dropout": 0.5}, return_sequences=True)
    got = to_numpy(layer(x, training=True))
    candidates = [np.array(bits, "float32") for bits in np.ndindex(*(2,) * D)]
    outputs = {bits.tobytes(): reference.ln_gru(weights, x[:1] * bits / 0.5)[0][0]
               for bits in candidates}
    for row in got:
        assert min(np.abs(row - out).max() for out in outputs.values()) < 1e-5


# -- serialization -------------------------------------------------------------------------


def _non_default_arguments(kind):
    arguments = {
        "activation": "softsign",
        "use_bias": False,
        "kernel_initializer": keras.initializers.HeNormal(seed=3),
        "recurrent_initializer": keras.initializers.Identity(gain=0.5),
        "bias_initializer": keras.initializers.Constant(0.25),
        "gamma_initializer": keras.initializers.Constant(0.75),
        "beta_initializer": keras.initializers.Constant(-0.5),
        "kernel_regularizer": keras.regularizers.L2(0.01),
        "recurrent_regularizer": keras.regularizers.L1(0.02),
        "bias_regularizer": keras.regularizers.L1L2(0.03, 0.04),
        "gamma_regularizer": keras.regularizers.L2(0.05),
        "beta_regularizer": keras.regularizers.L1(0.06),
        "kernel_constraint": keras.constraints.MaxNorm(2.0),
        "recurrent_constraint": keras.constraints.UnitNorm(),
        "bias_constraint": keras.constraints.NonNeg(),
        "gamma_constraint": keras.constraints.MinMaxNorm(0.5, 1.5),
        "beta_constraint": keras.constraints.MaxNorm(3.0),
        "dropout": 0.125,
        "recurrent_dropout": 0.25,
        "epsilon": 1e-3,
        "seed": 42,
        "name": f"custom_{kind.name}",
        "trainable": False,
    }
    if kind.recurrence == "lstm":
        arguments.update(recurrent_activation="hard_sigmoid", unit_forget_bias=False)
    if kind.recurrence == "gru":
        arguments.update(recurrent_activation="hard_sigmoid")
    return arguments


@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trips_every_argument(kind):
    cls = kind.cell
    arguments = _non_default_arguments(kind)
    cell = cls(7, **arguments)
    config = cell.get_config()
    restored = cls.from_config(config)
    assert restored.get_config() == config
    assert restored.units == 7
    for name, value in arguments.items():
        got = getattr(restored, name)
        if isinstance(value, (str, bool, int, float)):
            expected = keras.activations.get(value) if "activation" in name else value
            assert got == expected, name
        else:  # an initializer, regularizer or constraint: same class, same settings
            assert type(got) is type(value), name
            assert got.get_config() == value.get_config(), name
    # Keras's own cell's arguments are all accepted (ours add the normalization ones).
    keras_keys = set(getattr(keras.layers, f"{kind.keras_twin}Cell")(7).get_config())
    assert keras_keys <= set(config), keras_keys - set(config)
    assert {"epsilon", "gamma_initializer", "beta_initializer", "gamma_regularizer",
            "beta_regularizer", "gamma_constraint", "beta_constraint"} <= set(config)


@pytest.mark.parametrize("kind", KINDS)
def test_keras_file_round_trip(kind, rng, tmp_path):
    inputs = keras.Input((None, D))
    rnn = keras.layers.RNN(make_cell(kind, dropout=0.1), return_sequences=True)
    model = keras.Model(inputs, keras.layers.Dense(2)(rnn(inputs)))
    randomize_weights(rnn, rng)
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # default safe_mode=True
    assert type(loaded.layers[1].cell) is kind.cell
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))


def test_export_saved_model_at_two_lengths(rng, tmp_path):
    inputs = keras.Input((None, D))
    branches = [keras.layers.RNN(make_cell(kind))(inputs) for kind in KINDS]
    # Every layer, every other one backwards.
    branches += [kind.layer(U, go_backwards=i % 2 == 1)(inputs) for i, kind in enumerate(LAYERS)]
    model = keras.Model(inputs, keras.layers.Concatenate()(branches))
    for layer in model.layers:
        if isinstance(layer, keras.layers.RNN):
            randomize_weights(layer, rng)
    path = str(tmp_path / "exported")
    model.export(path, verbose=False)
    served = tf.saved_model.load(path)
    for length in (4, 13):
        x = rng.normal(0, 1, (2, length, D)).astype("float32")
        # A traced graph may fuse float32 arithmetic differently from eager: round-off only.
        np.testing.assert_allclose(to_numpy(served.serve(x)), to_numpy(model(x)),
                                   atol=1e-5, rtol=0)


# -- training --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_fit_learns_to_remember_the_first_step(kind):
    """Label = sign of the first input; later steps are noise. Chance is 50%."""
    data = np.random.default_rng(0)
    x = data.normal(0, 1, (1200, 8, 2)).astype("float32")
    y = (x[:, 0, 0] > 0).astype("float32")
    model = keras.Sequential([
        keras.Input((8, 2)),
        keras.layers.RNN(make_cell(kind, units=16)),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy", metrics=["accuracy"])
    model.fit(x[:1000], y[:1000], batch_size=50, epochs=6, verbose=0)
    _, accuracy = model.evaluate(x[1000:], y[1000:], verbose=0)
    assert accuracy >= 0.9


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(B, D), (B, T, D, 2)], ids=["rank2", "rank4"])
def test_input_rank_must_be_3(kind, shape):
    with pytest.raises(ValueError, match=r"(?i)rank|ndim|3"):
        keras.layers.RNN(make_cell(kind))(np.zeros(shape, "float32"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("argument,value", [
    ("units", 0), ("units", -3), ("units", 2.5),
    ("epsilon", 0.0), ("epsilon", -1e-5),
    ("dropout", -0.1), ("dropout", 1.0), ("dropout", 1.5),
    ("recurrent_dropout", -0.2), ("recurrent_dropout", 1.0),
])
def test_invalid_arguments(kind, argument, value):
    kwargs = {"units": 4, argument: value}
    with pytest.raises(ValueError, match=f"`{argument}`.*{value!r}".replace("(", r"\(")):
        kind.cell(**kwargs)


# -- numerics ------------------------------------------------------------------------------


def _finite_outputs_and_gradients(layer, x):
    x_var = tf.Variable(x)
    with tf.GradientTape() as tape:
        outputs, *states = layer(x_var)
        loss = tf.reduce_sum(tf.cast(outputs, "float32")) + sum(
            tf.reduce_sum(tf.cast(s, "float32")) for s in states)
    grads = tape.gradient(loss, [v.value for v in layer.trainable_weights] + [x_var])
    assert np.isfinite(to_numpy(tf.cast(outputs, "float32"))).all()
    for state in states:
        assert np.isfinite(to_numpy(tf.cast(state, "float32"))).all()
    for variable, grad in zip(layer.trainable_weights + [x_var], grads):
        assert grad is not None, variable.name
        assert np.isfinite(to_numpy(tf.cast(grad, "float32"))).all(), variable.name
    return to_numpy(tf.cast(outputs, "float32"))


@pytest.mark.parametrize("kind", KINDS)
def test_constant_inputs_zero_variance(kind, rng):
    # Zero input and zero initial state: every normalized term has zero variance.
    x = np.zeros((B, T, D), "float32")
    layer, weights = built_rnn(kind, rng, x, return_sequences=True, return_state=True)
    got = _finite_outputs_and_gradients(layer, x)
    want, _ = reference_run(kind, weights, x)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # A constant kernel makes x·kernel constant across features for any input.
    layer2 = keras.layers.RNN(
        make_cell(kind, kernel_initializer=keras.initializers.Constant(0.5),
                  recurrent_initializer=keras.initializers.Constant(0.5)),
        return_sequences=True, return_state=True)
    _finite_outputs_and_gradients(layer2, np.full((B, T, D), 3.0, "float32"))


@pytest.mark.parametrize("kind", KINDS)
def test_large_inputs(kind, rng):
    x = (rng.normal(0, 1, (B, T, D)) * 1e4).astype("float32")
    layer, weights = built_rnn(kind, rng, x, return_sequences=True, return_state=True)
    got = _finite_outputs_and_gradients(layer, x)
    want, _ = reference_run(kind, weights, x)
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("policy,atol", [("mixed_float16", 2e-2), ("mixed_bfloat16", 1e-1)])
def test_mixed_precision(kind, policy, atol, rng, float32_policy_afterwards):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    keras.config.set_dtype_policy(policy)
    layer = keras.layers.RNN(make_cell(kind), return_sequences=True, return_state=True)
    layer(x)
    weights = randomize_weights(layer, rng)
    assert all(v.dtype == "float32" for v in layer.weights)
    outputs, *_ = layer(x)
    assert outputs.dtype == policy.split("_")[1]
    got = _finite_outputs_and_gradients(layer, x)
    want, _ = reference_run(kind, weights, x)
    np.testing.assert_allclose(got, want, atol=atol)


# -- the whole-sequence layers (LayerNormLSTM, ...) ----------------------------------------


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("go_backwards", [False, True])
def test_layer_matches_reference(kind, go_backwards, rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer = kind.layer(U, return_sequences=True, return_state=True, go_backwards=go_backwards)
    layer(x)
    weights = randomize_weights(layer, rng)
    assert {n: v.shape for n, v in weights.items()} == EXPECTED_WEIGHTS[kind.recurrence]
    initial = random_states(kind, rng)
    outputs, *states = layer(x, initial_state=initial)
    want, want_states = reference_run(kind, weights, x[:, ::-1] if go_backwards else x, initial)
    np.testing.assert_allclose(to_numpy(outputs), want, atol=1e-5)
    assert_states_close(states, want_states)


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("zero_output_for_mask", [False, True])
def test_layer_masking_matches_reference(kind, zero_output_for_mask, rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    mask = np.ones((B, T), bool)
    mask[0, 6:] = False  # right padding
    mask[1, :4] = False  # left padding
    layer = kind.layer(U, return_sequences=True, return_state=True,
                         zero_output_for_mask=zero_output_for_mask)
    layer(x)
    weights = randomize_weights(layer, rng)
    outputs, *states = layer(x, mask=mask)
    want, want_states = reference_run(kind, weights, x, mask=mask,
                                      zero_output_for_mask=zero_output_for_mask)
    np.testing.assert_allclose(to_numpy(outputs), want, atol=1e-5)
    assert_states_close(states, want_states)


@pytest.mark.parametrize("kind", LAYERS)
def test_layer_gradients_equal_the_cell_in_rnn(kind, rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer = kind.layer(U, return_sequences=True)
    layer(x)
    weights = randomize_weights(layer, rng)
    rnn = keras.layers.RNN(make_cell(kind), return_sequences=True)
    rnn(x)
    set_weights_by_name(rnn, weights)
    probe = rng.normal(0, 1, (B, T, U)).astype("float32")
    grads = []
    for candidate in (layer, rnn):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(candidate(x) * probe)
        variables = sorted(candidate.trainable_weights, key=lambda v: v.path.split("/")[-1])
        grads.append(tape.gradient(loss, [v.value for v in variables]))
    # Float32 rounding, relative: the layer's forward-only loop computes tanh(g) as
    # 2σ(2g) − 1 (one activation for the four gates), the cell as tanh.
    for got, want in zip(*grads):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", LAYERS)
def test_layer_stateful_unroll_and_dropout(kind, rng):
    x = rng.normal(0, 1, (B, 10, D)).astype("float32")
    stateful = kind.layer(U, stateful=True, return_sequences=True)
    stateful(x[:, :5])
    weights = randomize_weights(stateful, rng)
    stateful.reset_state()
    halves = np.concatenate([to_numpy(stateful(x[:, :5])), to_numpy(stateful(x[:, 5:]))], 1)
    want, _ = reference_run(kind, weights, x)
    np.testing.assert_allclose(halves, want, atol=1e-5)

    unrolled = kind.layer(U, unroll=True, return_sequences=True)
    unrolled(x)
    set_weights_by_name(unrolled, weights)
    np.testing.assert_allclose(to_numpy(unrolled(x)), want, atol=1e-5)

    dropped = kind.layer(U, dropout=0.4, recurrent_dropout=0.3, return_sequences=True)
    dropped(x)
    set_weights_by_name(dropped, weights)
    first, second = to_numpy(dropped(x, training=True)), to_numpy(dropped(x, training=True))
    assert np.abs(first - second).max() > 1e-3
    np.testing.assert_allclose(to_numpy(dropped(x, training=False)), want, atol=1e-5)


@pytest.mark.parametrize("kind", LAYERS)
def test_layer_config_and_keras_file(kind, rng, tmp_path):
    arguments = _non_default_arguments(kind)
    arguments.pop("trainable")
    layer = kind.layer(7, return_sequences=True, return_state=True, go_backwards=True,
                         stateful=False, unroll=True, zero_output_for_mask=True, **arguments)
    config = layer.get_config()
    restored = kind.layer.from_config(config)
    assert restored.get_config() == config
    for name in ("return_sequences", "return_state", "go_backwards", "unroll",
                 "zero_output_for_mask"):
        assert getattr(restored, name) is True, name
    assert restored.cell.epsilon == arguments["epsilon"]
    assert restored.cell.dropout == arguments["dropout"]

    inputs = keras.Input((None, D))
    rnn = kind.layer(U, return_sequences=True, dropout=0.1)
    model = keras.Model(inputs, keras.layers.Dense(2)(rnn(inputs)))
    randomize_weights(rnn, rng)
    model.save(tmp_path / "layer.keras")
    loaded = keras.saving.load_model(tmp_path / "layer.keras")
    assert type(loaded.layers[1]) is kind.layer
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))


@pytest.mark.parametrize("kind", LAYERS)
def test_layer_bad_input(kind):
    with pytest.raises(ValueError, match="`units`"):
        kind.layer(0)
    with pytest.raises(ValueError, match="`epsilon`"):
        kind.layer(4, epsilon=0.0)
    with pytest.raises(ValueError, match="`dropout`"):
        kind.layer(4, dropout=1.0)
    with pytest.raises(ValueError, match=r"(?i)rank|ndim|3"):
        kind.layer(4)(np.zeros((B, D), "float32"))
