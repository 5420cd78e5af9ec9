"""The whole-sequence layers: every kind of `keras_recnorm.kinds.KINDS` that has one.

Backend-agnostic: `make test` runs this file on TensorFlow and again with
KERAS_BACKEND=jax, where the BN layers must update their statistics after the loop.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_recnorm import steps
from keras_recnorm.kinds import kind as named_kind
from tests import reference
from tests.conftest import (
    kinds,
    randomize_weights,
    set_weights_by_name,
    to_numpy,
    weights_by_name,
)

B, T, D, U, T_MAX = 6, 7, 3, 5, 5

LAYERS = kinds(layer=True)
BN = kinds(family="batch_norm", layer=True)


def extra_arguments(kind):
    return {"max_timesteps": T_MAX} if kind.batch_norm else {}


def make_layer(kind, **kwargs):
    return kind.layer(U, **extra_arguments(kind), **kwargs)


def built_pair(kind, rng, **rnn_kwargs):
    """The layer and `RNN(cell)` with the same random weights (and statistics)."""
    layer = make_layer(kind, **rnn_kwargs)
    # unroll=True: the cell path then moves slot 0 once, as the layer does.
    reference = keras.layers.RNN(kind.cell(U, **extra_arguments(kind)), unroll=True, **rnn_kwargs)
    x = np.zeros((B, T, D), "float32")
    layer(x), reference(x)
    values = randomize_weights(reference, rng)
    set_weights_by_name(layer, values)
    return layer, reference


def input_term(layer, x):
    return x @ weights_by_name(layer)["kernel"]


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("kind", LAYERS)
def test_layer_equals_rnn_of_cell(kind, training, rng):
    if training and kind in BN and keras.backend.backend() == "jax":
        pytest.skip("RNN(BN cell) refuses to train on JAX (test_bn_cell_training_on_jax_raises)")
    layer, reference = built_pair(kind, rng, return_sequences=True, return_state=True)
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    got, expected = layer(x, training=training), reference(x, training=training)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-5, rtol=0)
    # Same weights, and (BN, training) the same updated population statistics, but in
    # the last slot: T > T_MAX, and the layer merges the steps sharing it into one update
    # where the cell, seeing one step at a time, updates it once per step
    # (test_masked_training_matches_reference checks the layer's against the reference).
    after_layer, after_reference = weights_by_name(layer), weights_by_name(reference)
    assert list(after_layer) == list(after_reference)
    for name in after_layer:
        slots = slice(0, T_MAX - 1) if "moving" in name else slice(None)
        np.testing.assert_allclose(after_layer[name][slots], after_reference[name][slots],
                                   atol=1e-6, rtol=0)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX only")
@pytest.mark.parametrize("kind", BN)
def test_bn_cell_training_on_jax_raises(kind, rng):
    model = keras.Sequential([keras.Input((T, D)),
                              keras.layers.RNN(kind.cell(U, **extra_arguments(kind)))])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(RuntimeError, match="use the whole-sequence layer"):
        model.train_on_batch(np.ones((B, T, D), "float32"), np.zeros((B, U), "float32"))


@pytest.mark.parametrize("kind", LAYERS)
def test_go_backwards_equals_rnn_of_cell(kind, rng):
    layer, reference = built_pair(kind, rng, return_sequences=True, go_backwards=True)
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    np.testing.assert_allclose(to_numpy(layer(x)), to_numpy(reference(x)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", LAYERS)
def test_config_round_trip_and_keras_file(kind, rng, tmp_path):
    layer = make_layer(kind, return_sequences=True, dropout=0.1, recurrent_dropout=0.2,
                       epsilon=1e-3, go_backwards=True, name="recurrent")
    config = layer.get_config()
    again = type(layer).from_config(config)
    assert again.get_config() == config
    inputs = keras.Input((None, D))
    model = keras.Model(inputs, layer(inputs))
    randomize_weights(layer, rng)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    # Every weight, population statistics included, comes back exactly.
    for a, b in zip(model.weights, loaded.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    x = rng.normal(0, 1, (B, 9, D)).astype("float32")
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))


# -- padding-aware batch statistics ----------------------------------------------------

def padded_batch(rng, lengths=(7, 3, 5, 7, 2, 6)):
    x = rng.normal(0, 1, (len(lengths), T, D)).astype("float32")
    mask = np.arange(T)[None, :] < np.array(lengths)[:, None]
    return x, mask


@pytest.mark.parametrize("kind", BN)
def test_masked_input_statistics_match_numpy(kind, rng):
    layer, _ = built_pair(kind, rng)
    before = weights_by_name(layer)
    x, mask = padded_batch(rng)
    layer(x, mask=mask, training=True)
    after = weights_by_name(layer)
    momentum = layer.cell.momentum
    projected = input_term(layer, x)
    # Each slot's real samples (steps beyond T_MAX pooled in the last), merged into the
    # old statistics as B·momentum/(1 − momentum) pseudo-samples.
    for slot in range(T_MAX):
        steps = range(slot, slot + 1) if slot < T_MAX - 1 else range(slot, T)
        real = np.concatenate([projected[mask[:, t], t] for t in steps])
        expected = reference.population_update(
            before["input_moving_mean"][slot], before["input_moving_variance"][slot], real,
            mask.sum(0).max(), momentum)
        np.testing.assert_allclose(after["input_moving_mean"][slot], expected[0], atol=1e-5)
        np.testing.assert_allclose(after["input_moving_variance"][slot], expected[1], atol=1e-5)


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("kind", BN)
def test_masked_training_matches_reference(kind, go_backwards, rng):
    """Left, right and middle padding, forwards and backwards: outputs, states and every
    moving statistic as the NumPy reference (step t = each sample's t-th real step)."""
    layer, _ = built_pair(kind, rng, return_sequences=True, return_state=True,
                          go_backwards=go_backwards)
    weights = weights_by_name(layer)
    x, mask = padded_batch(rng)
    mask[2] = mask[2, ::-1]  # left padding
    mask[4, 1] = False  # a hole
    outputs, *states = layer(x, mask=mask, training=True)
    run = reference.for_kind(kind)
    order = slice(None, None, -1) if go_backwards else slice(None)
    want, want_states, moving = run(weights, x[:, order], training=True, mask=mask[:, order],
                                    whole_sequence=True)
    np.testing.assert_allclose(to_numpy(outputs), want, atol=1e-5, rtol=0)
    for got, expected in zip(states, want_states):
        np.testing.assert_allclose(to_numpy(got), expected, atol=1e-5, rtol=0)
    after = weights_by_name(layer)
    for name, value in moving.items():
        np.testing.assert_allclose(after[name], value, atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("kind", BN)
def test_padded_values_change_nothing(kind, rng):
    """Huge values at padded positions change no real output and no statistic."""
    x, mask = padded_batch(rng)
    garbage = np.where(mask[..., None], x, 1e30).astype("float32")
    results = []
    for inputs in (x, garbage):
        layer, _ = built_pair(kind, np.random.default_rng(5), return_sequences=True)
        outputs = to_numpy(layer(inputs, mask=mask, training=True))
        results.append((outputs, weights_by_name(layer)))
    (out_a, weights_a), (out_b, weights_b) = results
    assert np.isfinite(out_b).all()
    np.testing.assert_allclose(out_a[mask], out_b[mask], atol=1e-6)
    for name in weights_a:
        np.testing.assert_allclose(weights_a[name], weights_b[name], atol=1e-6, err_msg=name)


@pytest.mark.parametrize("kind", BN)
def test_all_padding_step_updates_nothing(kind, rng):
    layer, _ = built_pair(kind, rng, return_sequences=True)
    before = weights_by_name(layer)
    x, mask = padded_batch(rng, lengths=(2, 3, 1, 3, 2, 3))  # steps 3.. are all padding
    outputs = to_numpy(layer(x, mask=mask, training=True))
    after = weights_by_name(layer)
    assert np.isfinite(outputs).all()
    for name in before:
        if "moving" in name:
            np.testing.assert_array_equal(after[name][3:], before[name][3:], err_msg=name)
            assert not np.allclose(after[name][:3], before[name][:3]), name


@pytest.mark.parametrize("kind", BN)
def test_masked_sample_equals_its_unpadded_self_at_inference(kind, rng):
    """At inference each sample reads the slots of its own steps: padding is invisible."""
    layer, _ = built_pair(kind, rng, return_state=True)
    x, mask = padded_batch(rng)
    batched = layer(x, mask=mask)
    for sample, length in enumerate(mask.sum(1)):
        alone = layer(x[sample : sample + 1, :length])
        for a, b in zip(batched, alone):
            np.testing.assert_allclose(to_numpy(a)[sample], to_numpy(b)[0], atol=1e-5)


@pytest.mark.parametrize("kind", BN)
def test_bidirectional_backward_direction_sees_real_steps_only(kind, rng):
    layer, _ = built_pair(kind, rng)
    bidirectional = keras.layers.Bidirectional(layer)
    x, mask = padded_batch(rng)
    bidirectional(x, mask=mask)
    randomize_weights(bidirectional.forward_layer, rng)
    randomize_weights(bidirectional.backward_layer, rng)
    batched = to_numpy(bidirectional(x, mask=mask))
    for sample, length in enumerate(mask.sum(1)):
        alone = to_numpy(bidirectional(x[sample : sample + 1, :length]))
        np.testing.assert_allclose(batched[sample], alone[0], atol=1e-5)


# -- BN inference: the forward-only loop with population statistics -------------------


# The backends where the layers run their own loops (`NormalizedRNN.uses_fused_loop`).
needs_fused_loop = pytest.mark.skipif(
    keras.backend.backend() not in ("tensorflow", "jax", "torch"), reason="no fused loop"
)


def keras_loop(layer):
    """`layer` running Keras's loop over the cell (`keras.layers.RNN.inner_loop`) instead
    of the drivers' loops: the second oracle of the inference tests."""

    def inner_loop(sequences, initial_state, mask, training=False, **_):
        return keras.layers.RNN.inner_loop(layer, sequences, initial_state, mask, training=training)

    layer.inner_loop = inner_loop
    return layer


# Where the forward-only inference loop runs (elsewhere: Keras's loop).
FORWARD_LOOP_BACKEND = keras.backend.backend() in ("tensorflow", "jax", "torch")


def record_population_loops(layer):
    """Counts the calls of the layer's forward-only inference loop (in `calls`)."""
    run, layer.calls = layer._population_loop, []

    def recorded(*args):
        layer.calls.append(len(args))
        return run(*args)

    layer._population_loop = recorded
    return layer


# case -> (batch, timesteps, go_backwards, which padding, per-sample initial counters)
INFERENCE_CASES = {
    "unpadded": (B, T, False, None, None),
    "right_padded": (B, T, False, "right", None),
    "left_padded": (B, T, False, "left", None),
    "backwards_padded": (B, T, True, "both", None),
    "batch_of_one": (1, T, False, None, None),
    "longer_than_max_timesteps": (3, 3 * T_MAX, False, "right", None),
    "per_sample_counters": (B, T, False, "both", [0, 1, 4, 9, 2, 3]),
}


@pytest.mark.parametrize("case", list(INFERENCE_CASES))
@pytest.mark.parametrize("kind", BN)
def test_inference_loop_matches_reference_and_keras_loop(kind, case, rng):
    """Outputs, states and step counter at inference as the NumPy reference (each sample
    reads the population slot of its own real step) and as Keras's loop over the cell,
    with random population statistics, so that a wrong slot or statistic shows."""
    batch, timesteps, go_backwards, padding, counters = INFERENCE_CASES[case]
    options = dict(return_sequences=True, return_state=True, go_backwards=go_backwards)
    layer, old = make_layer(kind, **options), keras_loop(make_layer(kind, **options))
    x = rng.normal(0, 1, (batch, timesteps, D)).astype("float32")
    layer(x), old(x)
    weights = randomize_weights(layer, rng)
    set_weights_by_name(old, weights)
    mask = None
    if padding is not None:
        lengths = rng.integers(1, timesteps + 1, batch)
        lengths[0] = timesteps  # one full row: the last step is real somewhere
        mask = np.arange(timesteps)[None, :] < lengths[:, None]
        if padding in ("left", "both"):
            mask[1::2] = mask[1::2, ::-1]
    n_states = len(reference.STATES[kind.recurrence])
    initial = None
    if counters is not None:
        initial = [rng.normal(0, 0.5, (batch, U)).astype("float32") for _ in range(n_states)]
        initial.append(np.array(counters, "float32")[:, None])
    record_population_loops(layer)
    got = layer(x, mask=mask, initial_state=initial)
    assert bool(layer.calls) == FORWARD_LOOP_BACKEND, "the loop that ran is not the expected one"
    order = slice(None, None, -1) if go_backwards else slice(None)
    run = reference.for_kind(kind)
    states = [] if initial is None else initial[:-1]
    step0 = None if initial is None else initial[-1]
    want, want_states, _ = run(weights, x[:, order], *states, step0=step0, training=False,
                               mask=None if mask is None else mask[:, order])
    np.testing.assert_allclose(to_numpy(got[0]), want, atol=1e-5, rtol=0)
    for a, b in zip(got[1:], want_states):
        np.testing.assert_allclose(to_numpy(a), b, atol=1e-5, rtol=0)
    before = old(x, mask=mask, initial_state=initial)
    # Keras's JAX loop shows a given initial h before a sample's first real step (its
    # TensorFlow loop and the reference zeros): compare the real steps' outputs only.
    real = np.ones((batch, timesteps), bool) if mask is None else mask[:, order]
    np.testing.assert_allclose(to_numpy(got[0])[real], to_numpy(before[0])[real], atol=1e-5, rtol=0)
    for a, b in zip(got[1:], before[1:]):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-5, rtol=0)


@pytest.mark.parametrize("zero_output_for_mask", [False, True])
@pytest.mark.parametrize("padding", [None, "right", "left", "empty_sample"])
@pytest.mark.parametrize("kind", LAYERS)
def test_last_output_alone_equals_keras_loop(kind, padding, zero_output_for_mask, rng):
    """Inference without `return_sequences` keeps no output but the last (the forward-only
    loop writes none): last output and states equal Keras's loop over the cell, for right
    and left padding, a sample that is all padding, with and without
    `zero_output_for_mask`."""
    options = dict(return_state=True, zero_output_for_mask=zero_output_for_mask)
    layer, twin = make_layer(kind, **options), keras_loop(make_layer(kind, **options))
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer(x), twin(x)
    set_weights_by_name(twin, randomize_weights(layer, rng))
    mask = None
    if padding is not None:
        mask = np.arange(T)[None, :] < rng.integers(1, T, B)[:, None]
        if padding == "left":
            mask = mask[:, ::-1]
        if padding == "empty_sample":
            mask[0] = False
    got, want = layer(x, mask=mask), twin(x, mask=mask)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-5, rtol=0)
    if padding == "empty_sample":
        np.testing.assert_array_equal(to_numpy(got[0])[0], 0.0)


@pytest.mark.parametrize("kind", BN)
def test_stateful_inference_with_per_sample_counters(kind, rng):
    """A stateful layer whose samples carry different counters: each reads its own slots,
    and the counter state advances by each sample's real steps."""
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    mask = np.arange(T)[None, :] < np.array([7, 3, 5, 7, 2, 6])[:, None]
    layers = [make_layer(kind, return_sequences=True, stateful=True) for _ in range(2)]
    layer, old = record_population_loops(layers[0]), keras_loop(layers[1])
    layer(x), old(x)
    weights = randomize_weights(layer, rng)
    set_weights_by_name(old, weights)
    counters = np.array([[0], [2], [4], [1], [8], [3]], "float32")
    states = [rng.normal(0, 0.5, (B, U)).astype("float32") for _ in layer.states[:-1]]
    for each in (layer, old):
        for variable, value in zip(each.states, [*states, counters]):
            variable.assign(value)
    got = to_numpy(layer(x, mask=mask))
    assert bool(layer.calls) == FORWARD_LOOP_BACKEND
    run = reference.for_kind(kind)
    want, want_states, _ = run(weights, x, *states, step0=counters, training=False, mask=mask)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(to_numpy(old(x, mask=mask)), want, atol=1e-5, rtol=0)
    for variable, value in zip(layer.states, want_states):
        np.testing.assert_allclose(to_numpy(variable), value, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", BN)
def test_bidirectional_inference_equals_keras_loop_and_reference(kind, rng):
    x, mask = padded_batch(rng)
    mask[1] = mask[1, ::-1]  # left padding too
    pair = [keras.layers.Bidirectional(make_layer(kind)) for _ in range(2)]
    for bidirectional in pair:
        bidirectional(x, mask=mask)
    new, old = pair
    keras_loop(old.forward_layer), keras_loop(old.backward_layer)
    run = reference.for_kind(kind)
    halves = []
    for direction, order in (("forward_layer", slice(None)), ("backward_layer", slice(None, None, -1))):
        weights = randomize_weights(getattr(new, direction), rng)
        set_weights_by_name(getattr(old, direction), weights)
        outputs, _, _ = run(weights, x[:, order], training=False, mask=mask[:, order])
        halves.append(outputs[:, -1])
    got = to_numpy(new(x, mask=mask))
    np.testing.assert_allclose(got, np.concatenate(halves, axis=-1), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got, to_numpy(old(x, mask=mask)), atol=1e-5, rtol=0)


@needs_fused_loop
@pytest.mark.parametrize("policy, atol", [("mixed_bfloat16", 0.1), ("mixed_float16", 2e-2)])
@pytest.mark.parametrize("kind", BN)
def test_half_precision_inference_runs_the_population_loop_and_agrees(kind, policy, atol, rng):
    """Half precision runs the forward-only population loop at inference too (one
    inference path); its results agree with the float32 layer's, the counter exact."""
    x, mask = padded_batch(rng)
    layer = record_population_loops(make_layer(kind, return_sequences=True, return_state=True))
    layer(x)
    weights = randomize_weights(layer, rng)
    want = layer(x, mask=mask)
    assert layer.calls
    try:
        keras.config.set_dtype_policy(policy)
        half = record_population_loops(make_layer(kind, return_sequences=True, return_state=True))
        half(x)
    finally:
        keras.config.set_dtype_policy("float32")
    set_weights_by_name(half, weights)
    got = half(x, mask=mask)
    assert half.calls
    np.testing.assert_allclose(to_numpy(ops_cast(got[0])), to_numpy(want[0]), atol=atol, rtol=0)
    np.testing.assert_array_equal(to_numpy(got[-1]), to_numpy(want[-1]))  # the counter


def ops_cast(x):
    return keras.ops.cast(x, "float32")


@pytest.mark.parametrize("kind", BN)
def test_fit_moves_every_slot_once_per_batch(kind, rng):
    """One training batch moves each slot once, slot 0 included, on every backend."""
    layer = make_layer(kind)
    model = keras.Sequential([keras.Input((T_MAX, D)), layer, keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    x = rng.normal(2.0, 1.0, (B, T_MAX, D)).astype("float32")
    model.train_on_batch(x, np.zeros((B, 1), "float32"))
    momentum = layer.cell.momentum
    moved = weights_by_name(layer)["input_moving_mean"]
    expected = (1 - momentum) * input_term(layer, x).mean(0)
    np.testing.assert_allclose(moved, expected, atol=1e-5)


@pytest.mark.parametrize("kind", LAYERS)
def test_fit_learns(kind, rng):
    """Remember the sign of the first input through five more steps: chance gets 0.5."""
    x = rng.normal(0, 1, (256, 6, 2)).astype("float32")
    y = (x[:, 0, 0] > 0).astype("float32")
    model = keras.Sequential([
        keras.Input((6, 2)),
        make_layer(kind),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    # 0.02 was at the edge of stability for the BN layers (γ = 0.1 and h₀ = 0 scale the
    # first step's gradients by 1/sqrt(ε)): some initializations failed to learn.
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=30, batch_size=32, verbose=0)
    assert model.evaluate(x, y, verbose=0)[1] >= 0.9


@pytest.mark.parametrize("kind", LAYERS)
def test_stateful_halves_equal_whole(kind, rng):
    x = rng.normal(0, 1, (2, 6, D)).astype("float32")
    whole = make_layer(kind, return_sequences=True)
    halves = make_layer(kind, return_sequences=True, stateful=True)
    whole(x)
    halves(x[:, :3])
    set_weights_by_name(halves, randomize_weights(whole, rng))
    halves.reset_state()
    split = np.concatenate([to_numpy(halves(x[:, :3])), to_numpy(halves(x[:, 3:]))], axis=1)
    np.testing.assert_allclose(split, to_numpy(whole(x)), atol=1e-5)


@pytest.mark.parametrize("kind", LAYERS)
def test_unroll_equals_loop(kind, rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    looped = make_layer(kind, return_sequences=True)
    unrolled = make_layer(kind, return_sequences=True, unroll=True)
    looped(x), unrolled(x)
    set_weights_by_name(unrolled, randomize_weights(looped, rng))
    np.testing.assert_allclose(to_numpy(unrolled(x)), to_numpy(looped(x)), atol=1e-5)


def no_step_derivative_options(kind, case):
    """The layer arguments under which the cell's step derivative doesn't apply."""
    if case == "unroll":
        return {"unroll": True}
    if kind.recurrence == "simple_rnn":
        return {"activation": "relu"}
    return {"activation": "relu", "recurrent_activation": "hard_sigmoid"}


@needs_fused_loop
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("case", ["other_activations", "unroll"])
@pytest.mark.parametrize("kind", LAYERS)
def test_layer_without_step_derivative_equals_rnn_of_cell(kind, case, training, rng):
    """Other activations, `unroll`: the layer runs the drivers' loops (inference: the
    forward-only loop, the BN layers' population loop; training: the loop the backend
    differentiates). Outputs, states, gradients (TensorFlow) and (BN) updated statistics
    (all but the last slot, as in `test_layer_equals_rnn_of_cell`) equal `RNN(cell)`'s,
    the independent Keras loop."""
    if training and kind in BN and keras.backend.backend() == "jax":
        pytest.skip("RNN(BN cell) refuses to train on JAX (test_bn_cell_training_on_jax_raises)")
    options = no_step_derivative_options(kind, case)
    cell_options = {k: v for k, v in options.items() if k != "unroll"}
    layer = make_layer(kind, return_sequences=True, return_state=True, **options)
    if kind in BN:
        record_population_loops(layer)
    reference_rnn = keras.layers.RNN(
        kind.cell(U, **extra_arguments(kind), **cell_options),
        unroll=True, return_sequences=True, return_state=True,
    )
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer(x), reference_rnn(x)
    set_weights_by_name(layer, randomize_weights(reference_rnn, rng))
    assert not layer.uses_fused_loop()
    if kind in BN:
        layer.calls.clear()
    if training and keras.backend.backend() == "tensorflow":
        weigh = lambda outputs: ops.sum(outputs[0] * ops.sin(ops.arange(U, dtype="float32")))  # noqa: E731
        (got, gradients), (want, want_gradients) = (
            outputs_and_gradients(each, x, None, weigh) for each in (layer, reference_rnn)
        )
        for a, b in zip(gradients, want_gradients):
            np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-5, rtol=1e-5)
    else:
        got, want = layer(x, training=training), reference_rnn(x, training=training)
    if kind in BN:
        assert bool(layer.calls) == (not training)
    for a, b in zip(got, want):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-5, rtol=0)
    after_layer, after_reference = weights_by_name(layer), weights_by_name(reference_rnn)
    for name in after_layer:
        slots = slice(0, T_MAX - 1) if "moving" in name else slice(None)
        np.testing.assert_allclose(after_layer[name][slots], after_reference[name][slots],
                                   atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", ["mixed_bfloat16", "other_activations", "unroll"])
@pytest.mark.parametrize("kind", LAYERS)
def test_train_on_batch_compiled_without_step_derivative(kind, case, rng, float32_policy_afterwards):
    """`fit` compiles the training step (XLA on TensorFlow, `jax.jit`): where the step
    derivative doesn't apply, the loop the backend differentiates compiles too (on
    TensorFlow it needs its bound: this raised 'XLA compilation requires a fixed tensor
    list size') and computes what the eager step computes: the same loss, and (BN) the
    same moved statistics."""
    options = {} if case == "mixed_bfloat16" else no_step_derivative_options(kind, case)
    if case == "mixed_bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    y = rng.normal(0, 1, (B, 1)).astype("float32")
    results, values = [], None
    for compiled in (True, False):
        model = keras.Sequential([keras.Input((T, D)), make_layer(kind, **options), keras.layers.Dense(1)])
        if values is None:
            randomize_weights(model.layers[0], rng)
            values = model.get_weights()
        model.set_weights(values)
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse",
                      jit_compile=compiled, run_eagerly=not compiled)
        loss = model.train_on_batch(x, y)
        results.append((loss, weights_by_name(model.layers[0])))
    (loss, after), (want_loss, want_after) = results
    assert np.isfinite(loss)
    # bfloat16 keeps 8 bits: XLA's and the eager step's roundings differ by ~1% in the loss.
    tolerance = 5e-2 if case == "mixed_bfloat16" else 1e-5
    np.testing.assert_allclose(loss, want_loss, rtol=tolerance)
    for name in want_after:
        np.testing.assert_allclose(after[name], want_after[name], atol=tolerance, rtol=0, err_msg=name)


@pytest.mark.parametrize("kind", LAYERS)
def test_dropout_random_in_training_deterministic_in_inference(kind, rng):
    layer = make_layer(kind, dropout=0.3, recurrent_dropout=0.3)
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    assert not np.allclose(to_numpy(layer(x, training=True)), to_numpy(layer(x, training=True)))
    np.testing.assert_array_equal(to_numpy(layer(x)), to_numpy(layer(x)))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data pipeline")
@pytest.mark.parametrize("kind", BN)
def test_fit_with_unknown_time_dimension(kind, rng):
    """Batches padded to their own longest sequence: the time dimension is unknown while
    tracing, and steps beyond T_max are pooled into the last slot."""
    import tensorflow as tf

    lengths = [3, 9, 6, 12]
    batches = [(rng.normal(0, 1, (B, n, D)).astype("float32"), np.zeros((B, 1), "float32"))
               for n in lengths]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(batches),
        output_signature=(tf.TensorSpec((B, None, D)), tf.TensorSpec((B, 1))),
    )
    layer = make_layer(kind)
    model = keras.Sequential([keras.Input((None, D)), layer, keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    model.fit(dataset, epochs=1, verbose=0)
    moving = weights_by_name(layer)
    mean = np.zeros_like(moving["input_moving_mean"])
    variance = np.ones_like(mean)
    for x, _ in batches:
        projected = input_term(layer, x)
        for slot in range(min(x.shape[1], T_MAX)):
            last = slot + 1 if slot < T_MAX - 1 else x.shape[1]
            samples = projected[:, slot:last].reshape(-1, mean.shape[-1])
            mean[slot], variance[slot] = reference.population_update(
                mean[slot], variance[slot], samples, B, layer.cell.momentum)
    np.testing.assert_allclose(moving["input_moving_mean"], mean, atol=1e-5)
    np.testing.assert_allclose(moving["input_moving_variance"], variance, atol=1e-5)


@pytest.mark.parametrize("kind", LAYERS)
def test_empty_and_all_padded_batches_change_nothing(kind, rng):
    layer, _ = built_pair(kind, rng)
    before = weights_by_name(layer)
    empty = layer(np.zeros((0, T, D), "float32"), training=True)
    assert tuple(empty.shape) == (0, U)
    padded = layer(rng.normal(0, 1, (B, T, D)).astype("float32"),
                   mask=np.zeros((B, T), bool), training=True)
    assert np.isfinite(to_numpy(padded)).all()
    for name, value in weights_by_name(layer).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="string tensors")
@pytest.mark.parametrize("kind", LAYERS)
def test_string_input_is_a_clear_error(kind):
    text = np.array([[["a", "b"]]])
    for layer in (make_layer(kind), keras.layers.RNN(kind.cell(U, **extra_arguments(kind)))):
        with pytest.raises(ValueError, match="expects numeric inputs.*TextVectorization"):
            layer(text)


@pytest.fixture
def float64_on_jax():
    """JAX computes in float32 unless 64-bit mode is on: turn it on for one test."""
    if keras.backend.backend() != "jax":
        yield
        return
    import jax

    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)


def weigh_float64_outputs(outputs):
    """A fixed random linear function of every output and state (not the BN step counter,
    a float32 count)."""
    return sum(
        keras.ops.sum(o * ops.convert_to_tensor(np.random.default_rng(k).normal(size=o.shape)))
        for k, o in enumerate(outputs)
        if keras.backend.standardize_dtype(o.dtype) == "float64"
    )


def outputs_and_gradients(layer, x, mask, weigh):
    """The layer's outputs in training and the gradients of `weigh(outputs)` with respect
    to `x` and to every trainable weight (the statistics' updates are applied)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = layer(x, mask=mask, training=True)
            loss = weigh(outputs)
        return outputs, tape.gradient(loss, [x] + layer.trainable_weights)
    if keras.backend.backend() == "torch":
        import torch

        x = torch.tensor(x, requires_grad=True)
        outputs = layer(x, mask=mask, training=True)
        variables = [v.value for v in layer.trainable_weights]
        return outputs, list(torch.autograd.grad(weigh(outputs), [x] + variables))
    import jax

    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def loss(x, trainable):
        outputs, updated = layer.stateless_call(
            trainable, non_trainable, x, mask=mask, training=True
        )
        return weigh(outputs), (outputs, updated)

    (_, (outputs, updated)), (dx, dw) = jax.value_and_grad(loss, (0, 1), has_aux=True)(
        jax.numpy.asarray(x), trainable
    )
    for variable, value in zip(layer.non_trainable_variables, updated):
        variable.assign(value)
    return outputs, [dx] + list(dw)


@needs_fused_loop
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"masked": True},
        {"masked": True, "go_backwards": True, "return_sequences": True},
        {"dropout": 0.3, "recurrent_dropout": 0.4, "seed": 7},
        {"masked": True, "recurrent_dropout": 0.4, "seed": 3, "use_bias": False},
    ],
)
@pytest.mark.parametrize("kind", LAYERS)
def test_fused_loop_gradients_equal_autodiff(kind, options, rng, float64_on_jax):
    """The hand-written step derivatives (every layer in training, on TensorFlow and JAX;
    on torch the driver's Python loop, differentiated by autograd) against the backend's
    own differentiation of the same layer's generic loop, in float64: outputs, states,
    every gradient and the updated statistics."""
    options = dict(options)
    masked = options.pop("masked", False)
    x = rng.normal(0, 1, (B, T, D))
    mask = None
    if masked:
        mask = np.ones((B, T), bool)
        mask[0, 4:] = False  # right padding
        mask[1, :3] = False  # left padding
        mask[2, :] = False  # all padding

    values, results = None, []
    for fused in (True, False):
        layer = make_layer(kind, return_state=True, dtype="float64", **options)
        layer(x[:1])
        if values is None:
            values = randomize_weights(layer, rng)
        set_weights_by_name(layer, values)
        if fused:
            assert layer.uses_fused_loop()
        else:
            layer.uses_fused_loop = lambda: False
        outputs, gradients = outputs_and_gradients(layer, x, mask, weigh_float64_outputs)
        results.append((outputs, gradients, weights_by_name(layer)))
    (outputs, gradients, after), (want_outputs, want_gradients, want_after) = results
    # XLA's CPU tanh is a float32-accurate approximation even in float64, and its result
    # depends on how the ops around it are fused: on JAX the two loops differ by ~1e-7
    # (relative to the largest gradient: the BN statistics spread it over the batch).
    # On torch, Keras 3.15's matmul and mean return float32 for float64 inputs: the two
    # loops (centered kernels or not) differ by ~1e-6 there, and the BN statistics spread
    # it (gradients within 3e-4; no step derivative runs there: torch differentiates).
    exact = keras.backend.backend() == "tensorflow"
    value_tolerance, gradient_tolerance = {
        "tensorflow": (1e-12, 1e-10), "jax": (1e-7, 1e-6), "torch": (1e-5, 1e-3)
    }[keras.backend.backend()]
    statistics_tolerance = 1e-6 if keras.backend.backend() == "torch" else value_tolerance
    assert to_numpy(outputs[0]).dtype == np.float64
    for a, b in zip(outputs, want_outputs):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=value_tolerance, rtol=0)
    for a, b in zip(gradients, want_gradients):
        a, b = to_numpy(a), to_numpy(b)
        assert np.all(np.isfinite(a))
        scale = 1.0 if exact else max(1.0, np.abs(b).max())
        np.testing.assert_allclose(a, b, atol=gradient_tolerance * scale, rtol=gradient_tolerance)
    for name in want_after:
        np.testing.assert_allclose(after[name], want_after[name], atol=statistics_tolerance, rtol=0)


@needs_fused_loop
@pytest.mark.parametrize("kind", BN)
def test_input_term_in_the_step_equals_it_before_the_loop(kind, rng, float64_on_jax):
    """The fused loop normalizes the BN input term in the step; with `synchronized=True`
    (one device: the same statistics) it is normalized before the loop. Both give the
    same outputs, gradients and updated statistics, with padding."""
    x = rng.normal(0, 1, (B, T, D))
    mask = np.ones((B, T), bool)
    mask[0, 4:] = False
    mask[1, :3] = False

    values, results = None, []
    for synchronized in (False, True):
        layer = make_layer(kind, return_state=True, dtype="float64", synchronized=synchronized)
        layer(x[:1])
        if values is None:
            values = randomize_weights(layer, rng)
        set_weights_by_name(layer, values)
        outputs, gradients = outputs_and_gradients(layer, x, mask, weigh_float64_outputs)
        results.append((outputs, gradients, weights_by_name(layer)))
    (outputs, gradients, after), (want_outputs, want_gradients, want_after) = results
    # XLA's CPU tanh differs with its fusion on JAX, torch computes float32 products
    # (see the test above).
    tolerance = {"tensorflow": 1e-9, "jax": 1e-6, "torch": 1e-3}[keras.backend.backend()]
    for a, b in zip(list(outputs) + list(gradients), list(want_outputs) + list(want_gradients)):
        a, b = to_numpy(a), to_numpy(b)
        np.testing.assert_allclose(a, b, atol=tolerance * max(1.0, np.abs(b).max()), rtol=tolerance)
    for name in want_after:
        statistics_tolerance = 1e-6 if keras.backend.backend() == "torch" else 1e-7
        np.testing.assert_allclose(after[name], want_after[name], atol=statistics_tolerance, rtol=0)


def test_one_activation_gates_equal_split_gates(rng):
    """The forward-only loop's LSTM gates (one sigmoid, tanh(g) = 2σ(2g) − 1) equal the
    split ones, and so does the new cell state."""
    z = ops.convert_to_tensor(rng.normal(0, 3, (B, 4 * U)).astype("float32"))
    c = ops.convert_to_tensor(rng.normal(0, 1, (B, U)).astype("float32"))
    split = steps.lstm_gates(z, c, keras.activations.sigmoid, keras.activations.tanh)
    for got, want in zip(steps.lstm_gates_one_sigmoid(z, c), split):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", LAYERS)
def test_fused_loop_only_for_what_its_derivative_covers(kind):
    """Other activations, unroll, half precision or another backend: no step derivative
    (the LN layers run Keras's loop; the BN layers the loops the backend differentiates)."""
    default = make_layer(kind)
    assert default.uses_fused_loop()
    assert not make_layer(kind, activation="relu").uses_fused_loop()
    if kind.recurrence != "simple_rnn":  # gates
        assert not make_layer(kind, recurrent_activation="hard_sigmoid").uses_fused_loop()
    assert not make_layer(kind, unroll=True).uses_fused_loop()
    assert not make_layer(kind, dtype="mixed_float16").uses_fused_loop()


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's fused loop")
def test_fused_ln_loop_ignores_non_finite_padding(rng):
    """LayerNormLSTM in training: inf at padded positions changes no output and no
    gradient, and gives no NaN (the padded inputs get a zero gradient)."""
    import tensorflow as tf

    x, mask = padded_batch(rng)
    garbage = np.where(mask[..., None], x, np.inf).astype("float32")
    layer = make_layer(named_kind("layer_norm_lstm"), return_sequences=True)
    layer(x)
    results = []
    for inputs in (x, garbage):
        inputs = tf.constant(inputs)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = layer(inputs, mask=mask, training=True)
            loss = tf.reduce_sum(outputs * np.cos(np.arange(outputs.shape[-1])))
        gradients = tape.gradient(loss, [inputs] + layer.trainable_weights)
        results.append((to_numpy(outputs), [to_numpy(g) for g in gradients]))
    (out_a, grads_a), (out_b, grads_b) = results
    np.testing.assert_allclose(out_a, out_b, atol=1e-6)
    assert np.all(grads_b[0][~mask] == 0)
    for a, b in zip(grads_a, grads_b):
        assert np.isfinite(b).all()
        np.testing.assert_allclose(a, b, atol=1e-5)
