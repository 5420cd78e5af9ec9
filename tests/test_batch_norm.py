"""keras_recnorm.batch_norm: the batch-normalized cells (Cooijmans et al. 2016).

Statistics are per time step. The equations, the moving averages and the slot clamping
are checked against the independent NumPy implementation in `tests/reference.py`, with
random weights AND random population statistics (so that a test can't pass by reading the
wrong slot of a constant table). Everything else checks that the cells behave as Keras
cells inside `keras.layers.RNN` (TensorFlow backend). The whole-sequence layers
(BatchNormLSTM, ...) have their own tests in `tests/test_layers.py`; here they appear only
where `recompute_population_statistics`, the states, the arguments and the bad-input checks
concern them. Every batch-normalized kind of `keras_recnorm.kinds.KINDS` is tested.
"""

import re
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_recnorm import (
    BatchNormGRU,
    BatchNormGRUCell,
    BatchNormLSTM,
    BatchNormLSTMCell,
    recompute_population_statistics,
)
from keras_recnorm.kinds import kind as named_kind
from keras_recnorm.normalization import collecting_batch_statistics
from tests import reference
from tests.conftest import (
    assert_padded_states_match_alone,
    graph_function,
    kinds,
    randomize_weights,
    set_weights_by_name,
    to_numpy,
    weights_by_name,
)

B, T, D, U, T_MAX = 4, 7, 3, 5, 4  # T > T_MAX: the last slot gets several steps

# Every batch-normalized kind of cell (keras_recnorm.kinds.KINDS), those with a
# whole-sequence layer, and the two that some tests combine.
KINDS = kinds(family="batch_norm")
LAYERS = kinds(family="batch_norm", layer=True)
LSTM, GRU = named_kind("batch_norm_lstm"), named_kind("batch_norm_gru")

# recurrence -> the weights DESIGN.md fixes, in creation order (the .keras file order)
EXPECTED_WEIGHTS = {
    "lstm": {"kernel": (D, 4 * U), "recurrent_kernel": (U, 4 * U), "bias": (4 * U,),
             "input_gamma": (4 * U,), "recurrent_gamma": (4 * U,), "cell_gamma": (U,),
             "cell_beta": (U,),
             "input_moving_mean": (T_MAX, 4 * U), "input_moving_variance": (T_MAX, 4 * U),
             "recurrent_moving_mean": (T_MAX, 4 * U),
             "recurrent_moving_variance": (T_MAX, 4 * U),
             "cell_moving_mean": (T_MAX, U), "cell_moving_variance": (T_MAX, U)},
    "gru": {"kernel": (D, 3 * U), "recurrent_kernel": (U, 3 * U), "bias": (3 * U,),
            "input_gamma": (3 * U,), "recurrent_gamma": (3 * U,),
            "input_moving_mean": (T_MAX, 3 * U), "input_moving_variance": (T_MAX, 3 * U),
            "recurrent_moving_mean": (T_MAX, 3 * U),
            "recurrent_moving_variance": (T_MAX, 3 * U)},
    "simple_rnn": {"kernel": (D, U), "recurrent_kernel": (U, U), "bias": (U,),
                   "input_gamma": (U,), "recurrent_gamma": (U,),
                   "input_moving_mean": (T_MAX, U), "input_moving_variance": (T_MAX, U),
                   "recurrent_moving_mean": (T_MAX, U), "recurrent_moving_variance": (T_MAX, U)},
}


def make_cell(kind, units=U, max_timesteps=T_MAX, **kwargs):
    return kind.cell(units, max_timesteps, **kwargs)


def built_rnn(kind, rng, cell_kwargs=None, length=T, **rnn_kwargs):
    """`keras.layers.RNN(cell)` built for `(B, length, D)`, with random weights and random
    population statistics. Returns (layer, weights by name)."""
    layer = keras.layers.RNN(make_cell(kind, **(cell_kwargs or {})), **rnn_kwargs)
    layer(np.zeros((B, length, D), "float32"))
    return layer, randomize_weights(layer, rng)


def reference_run(kind, weights, x, states=None, **kwargs):
    """The reference for `kind`; `states` as Keras orders them, step counter last."""
    states = [] if states is None else [np.asarray(s, "float64") for s in states]
    return reference.for_kind(kind)(weights, np.asarray(x, "float64"), *states, **kwargs)


def random_states(kind, rng, batch=B, step=0.0):
    """Random h (and c), then the step counter."""
    states = [rng.normal(0, 0.5, (batch, U)).astype("float32")
              for _ in reference.STATES[kind.recurrence]]
    return states + [np.full((batch, 1), step, "float32")]


def moving_statistics(layer):
    return {name: value for name, value in weights_by_name(layer).items() if "moving" in name}


def assert_all_close(got, want, atol=1e-5, what=""):
    assert len(got) == len(want), what
    for index, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(to_numpy(a), b, atol=atol, rtol=0, err_msg=f"{what}[{index}]")


def assert_moving_close(layer, want, atol=1e-5):
    got = moving_statistics(layer)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=atol, rtol=0, err_msg=name)


def input_term(weights, x):
    return np.asarray(x, "float64") @ weights["kernel"].astype("float64")


# -- weights ----------------------------------------------------------------------------


def test_weights_have_the_designed_names_shapes_and_order():
    for kind in KINDS:
        layer = keras.layers.RNN(make_cell(kind))
        layer(np.zeros((B, T, D), "float32"))
        got = {name: value.shape for name, value in weights_by_name(layer).items()}
        assert got == EXPECTED_WEIGHTS[kind.recurrence], kind.name
        assert list(got) == list(EXPECTED_WEIGHTS[kind.recurrence]), kind.name  # the file order
        trainable = {v.path.split("/")[-1] for v in layer.trainable_weights}
        assert trainable == {name for name in got if "moving" not in name}, kind.name


@pytest.mark.parametrize("kind", KINDS)
def test_default_initial_values(kind):
    layer = keras.layers.RNN(make_cell(kind))
    layer(np.zeros((B, T, D), "float32"))
    w = weights_by_name(layer)
    cell = layer.cell
    assert cell.momentum == 0.95 and cell.epsilon == 1e-5
    for name, value in w.items():
        if "gamma" in name:  # the paper's γ = 0.1, for every normalization
            np.testing.assert_allclose(value, 0.1, rtol=1e-7, err_msg=name)
        elif name.endswith("moving_mean") or name.endswith("beta"):
            np.testing.assert_array_equal(value, 0.0, err_msg=name)
        elif name.endswith("moving_variance"):
            np.testing.assert_array_equal(value, 1.0, err_msg=name)
    if kind.recurrence == "lstm":  # unit_forget_bias: gate order i, f, g, o
        np.testing.assert_array_equal(w["bias"], np.repeat([0.0, 1.0, 0.0, 0.0], U))
    else:
        np.testing.assert_array_equal(w["bias"], 0.0)


# -- the equations and the statistics against the reference -------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("unroll", [True, False], ids=["unroll", "loop"])
@pytest.mark.parametrize("initial", ["zeros", "random"])
def test_training_matches_reference(kind, unroll, initial, rng):
    """Batch statistics per step, EMA of every slot (steps >= T_max into the last one)."""
    x = rng.normal(0.5, 1.5, (B, T, D)).astype("float32")
    layer, weights = built_rnn(kind, rng, unroll=unroll, return_sequences=True,
                               return_state=True)
    states = random_states(kind, rng) if initial == "random" else None
    outputs, *final = layer(x, initial_state=states, training=True)
    # TensorFlow's loop runs the first step once more, before the loop, to learn the
    # output shapes: that call moves slot 0 a second time with the same batch statistics.
    first_step_updates = 1 if unroll else 2
    want, want_states, want_moving = reference_run(
        kind, weights, x, states, training=True, first_step_updates=first_step_updates)
    np.testing.assert_allclose(to_numpy(outputs), want, atol=1e-5, rtol=0)
    assert_all_close(final, want_states, what="states")
    np.testing.assert_array_equal(to_numpy(final[-1]), np.full((B, 1), T))
    assert_moving_close(layer, want_moving)


@pytest.mark.parametrize("kind", KINDS)
def test_tensorflow_loop_moves_slot_zero_twice(kind, rng):
    """Exactly what the extra first step does: slot 0 is updated twice with the same
    batch statistics (the mean: `m²·old + (1 − m²)·μ₀`, an EMA of momentum m² for that
    slot); the other slots are as with one update per step."""
    x = rng.normal(0.5, 1.5, (B, T, D)).astype("float32")
    layer, weights = built_rnn(kind, rng, unroll=False)
    layer(x, training=True)
    got = moving_statistics(layer)
    once = reference_run(kind, weights, x, training=True, first_step_updates=1)[2]
    m = layer.cell.momentum
    projected = input_term(weights, x[:, 0])
    np.testing.assert_allclose(
        got["input_moving_mean"][0],
        m**2 * weights["input_moving_mean"][0] + (1 - m**2) * projected.mean(0), atol=1e-5)
    want = weights["input_moving_mean"][0], weights["input_moving_variance"][0]
    for _ in range(2):
        want = reference.population_update(*want, projected, B, m)
    for name, value in zip(("input_moving_mean", "input_moving_variance"), want):
        np.testing.assert_allclose(got[name][0], value, atol=1e-5, rtol=0)
        assert np.abs(got[name][0] - once[name][0]).max() > 1e-3
    for name in got:
        np.testing.assert_allclose(got[name][1:], once[name][1:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("unroll", [True, False], ids=["unroll", "loop"])
def test_train_on_batch_moves_statistics_like_reference(kind, unroll, rng):
    """The moving statistics after one and after three compiled training steps; then
    `predict` on sequences longer than T_max reads the updated slots."""
    inputs = keras.Input((None, D))
    rnn = keras.layers.RNN(make_cell(kind), unroll=unroll, return_sequences=True)
    model = keras.Model(inputs, rnn(inputs))
    weights = randomize_weights(rnn, rng)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")  # weights stay put
    expected = dict(weights)
    for call in range(3):
        x = rng.normal(call - 1.0, 1.0 + call, (B, T, D)).astype("float32")
        model.train_on_batch(x, np.zeros((B, T, U), "float32"))
        _, _, moving = reference_run(kind, expected, x, training=True,
                                     first_step_updates=1 if unroll else 2)
        expected.update(moving)
        assert_moving_close(rnn, moving)
    for name, value in weights_by_name(rnn).items():
        if "moving" not in name:
            np.testing.assert_array_equal(value, weights[name], err_msg=name)
    long_x = rng.normal(0, 1, (B, 2 * T_MAX + 3, D)).astype("float32")
    want, _, _ = reference_run(kind, expected, long_x, training=False)
    np.testing.assert_allclose(model.predict(long_x, verbose=0), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_inference_matches_reference_beyond_max_timesteps(kind, rng):
    """Each sample reads slot `min(its step, T_max − 1)`: with a different initial step
    counter per sample (as a stateful layer carries), and T = 3·T_max."""
    length = 3 * T_MAX
    x = rng.normal(0, 1, (B, length, D)).astype("float32")
    layer, weights = built_rnn(kind, rng, return_sequences=True, return_state=True)
    before = moving_statistics(layer)
    states = random_states(kind, rng)
    states[-1] = np.array([[0.0], [1.0], [3.0], [9.0]], "float32")
    for training in (False, None):  # explicit, and the default of a direct call
        outputs, *final = layer(x, initial_state=states, training=training)
        want, want_states, _ = reference_run(kind, weights, x, states, training=False)
        np.testing.assert_allclose(to_numpy(outputs), want, atol=1e-5, rtol=0)
        assert_all_close(final, want_states, what="states")
    np.testing.assert_array_equal(to_numpy(final[-1])[:, 0], [12.0, 13.0, 15.0, 21.0])
    for name, value in moving_statistics(layer).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cell_kwargs", [{"epsilon": 0.3, "momentum": 0.7},
                                         {"use_bias": False}],
                         ids=["epsilon_momentum", "no_bias"])
def test_arguments_reach_the_equations(kind, cell_kwargs, rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer, weights = built_rnn(kind, rng, cell_kwargs, unroll=True, return_sequences=True)
    if cell_kwargs.get("use_bias") is False:
        assert "bias" not in weights
    options = {key: cell_kwargs[key] for key in ("epsilon", "momentum") if key in cell_kwargs}
    for training in (True, False):
        got = to_numpy(layer(x, training=training))
        want, _, moving = reference_run(kind, weights, x, training=training, **options)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        assert_moving_close(layer, moving)
        weights.update(moving)


# -- per-time-step statistics ------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("step", [0, 2])
def test_shifting_one_step_moves_only_that_slot(kind, step, rng):
    """Rescale and shift the input distribution at one step only. Batch normalization at
    that step cancels it (outputs, recurrent and cell statistics unchanged); only the
    input statistics of that step's slot move, and by exactly the shift."""
    x = rng.normal(0, 1, (B, T_MAX, D)).astype("float32")
    scale, shift = 3.0, np.array([4.0, -2.0, 1.0], "float32")
    shifted = x.copy()
    shifted[:, step] = scale * x[:, step] + shift
    runs = []
    for inputs in (x, shifted):
        # A tiny ε: the rescaling then cancels to round-off (ε breaks scale invariance).
        layer, weights = built_rnn(kind, np.random.default_rng(7), {"epsilon": 1e-9},
                                   length=T_MAX, unroll=True, return_sequences=True)
        runs.append((to_numpy(layer(inputs, training=True)), moving_statistics(layer)))
    (out_a, moving_a), (out_b, moving_b) = runs
    np.testing.assert_allclose(out_b, out_a, atol=1e-4, rtol=0)
    others = [s for s in range(T_MAX) if s != step]
    for name in moving_a:
        if name.startswith("input"):
            np.testing.assert_allclose(moving_b[name][others], moving_a[name][others],
                                       atol=1e-6, rtol=0, err_msg=name)
        else:
            np.testing.assert_allclose(moving_b[name], moving_a[name], atol=1e-4, rtol=0,
                                       err_msg=name)
    m = layer.cell.momentum
    old = weights["input_moving_mean"][step], weights["input_moving_variance"][step]
    for moving, inputs in ((moving_a, x), (moving_b, shifted)):
        want = reference.population_update(*old, input_term(weights, inputs[:, step]), B, m)
        for name, value in zip(("input_moving_mean", "input_moving_variance"), want):
            np.testing.assert_allclose(moving[name][step], value, atol=2e-5, rtol=1e-5,
                                       err_msg=name)
    for name in ("input_moving_mean", "input_moving_variance"):
        assert np.abs(moving_b[name][step] - moving_a[name][step]).min() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_each_step_reads_its_own_population_slot(kind, rng):
    """Changing slot k's population statistics changes no output before step k, and
    changes step k's; the last slot serves every step from T_max − 1 on."""
    x = rng.normal(0, 1, (B, 2 * T_MAX, D)).astype("float32")
    layer, weights = built_rnn(kind, rng, return_sequences=True)
    before = to_numpy(layer(x))
    for slot in range(T_MAX):
        changed = {name: value.copy() for name, value in weights.items() if "moving" in name}
        for name in changed:
            changed[name][slot] += 0.5 if name.endswith("mean") else 1.0
        set_weights_by_name(layer, changed)
        after = to_numpy(layer(x))
        np.testing.assert_array_equal(after[:, :slot], before[:, :slot])
        assert np.abs(after[:, slot] - before[:, slot]).min() > 1e-5
        set_weights_by_name(layer, weights)
    # Steps past T_max − 1 all read the last slot: as if the table were that long.
    long_weights = dict(weights)
    for name in long_weights:
        if "moving" in name:
            long_weights[name] = np.concatenate(
                [weights[name]] + [weights[name][-1:]] * T_MAX, axis=0)
    want, _, _ = reference_run(kind, long_weights, x, training=False)
    np.testing.assert_allclose(before, want, atol=1e-5, rtol=0)


# -- recompute_population_statistics -----------------------------------------------------


def exact_averages(kind, weights, batches, masks=None):
    """The population statistics `recompute_population_statistics` must write: per slot,
    the mean and biased variance of every sample that reached it, in every batch (steps >=
    T_max go to the last slot; padded samples don't count), pooled from the reference's
    per-step batch statistics by the law of total variance; slots nothing reached keep
    the statistics they had."""
    max_timesteps = weights["input_moving_mean"].shape[0]
    parts = {}  # (term, slot) -> list of (count, mean, variance)
    for index, x in enumerate(batches):
        mask = None if masks is None else masks[index]
        *_, stats = reference_run(kind, weights, x, training=True, mask=mask,
                                  return_batch_statistics=True)
        for t in range(x.shape[1]):
            # Step t is every sample's t-th real step: the samples that have one.
            count = len(x) if mask is None else int((mask.sum(axis=1) > t).sum())
            if count == 0:
                continue
            for term in reference.BN_TERMS[kind.recurrence]:
                parts.setdefault((term, min(t, max_timesteps - 1)), []).append(
                    (count, stats[f"{term}_mean"][t], stats[f"{term}_variance"][t]))
    result = {name: value.astype("float64").copy()
              for name, value in weights.items() if "moving" in name}
    for (term, slot), values in parts.items():
        counts = np.array([c for c, _, _ in values], "float64")[:, None]
        means = np.stack([m for _, m, _ in values])
        variances = np.stack([v for _, _, v in values])
        mean = (counts * means).sum(0) / counts.sum()
        result[f"{term}_moving_mean"][slot] = mean
        result[f"{term}_moving_variance"][slot] = (
            counts * (variances + (means - mean) ** 2)).sum(0) / counts.sum()
    return result


@pytest.mark.parametrize("kind", KINDS)
def test_recompute_population_statistics_of_a_cell_in_rnn(kind, rng, capsys):
    # Batches of different lengths: 2, 7 and 5 steps with T_max = 4, given as `x`, `(x, y)`.
    inputs = keras.Input((None, D))
    rnn = keras.layers.RNN(make_cell(kind), return_sequences=True)
    model = keras.Model(inputs, keras.layers.Dense(2)(rnn(inputs)))
    weights = randomize_weights(rnn, rng)
    trainable_before = [to_numpy(v) for v in model.trainable_weights]
    batches = [rng.normal(mean, 1.0, (B, length, D)).astype("float32")
               for mean, length in ((0.0, 2), (1.0, 7), (-1.0, 5))]
    dataset = [batches[0], (batches[1], np.zeros((B, 7, 2))), (batches[2], None, None)]
    assert recompute_population_statistics(model, dataset) == 3
    assert "batch" in capsys.readouterr().out  # a progress bar
    assert_moving_close(rnn, exact_averages(kind, weights, batches))
    for before, after in zip(trainable_before, model.trainable_weights):
        np.testing.assert_array_equal(to_numpy(after), before)
    # Afterwards the cell is back to moving averages, and inference reads the new slots.
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    expected = {**weights, **moving_statistics(rnn)}
    want, _, _ = reference_run(kind, expected, x, training=False)
    np.testing.assert_allclose(to_numpy(rnn(x)), want, atol=1e-5, rtol=0)
    rnn(x, training=True)
    assert np.abs(moving_statistics(rnn)["input_moving_mean"] -
                  expected["input_moving_mean"]).max() > 1e-4


def test_recompute_population_statistics_of_a_backward_cell(rng):
    """With go_backwards, the TensorFlow loop's extra call before the loop sees the wrong
    time step (test_go_backwards_loop_moves_slot_zero_once_more_with_the_first_input);
    the exact averages keep only the batch's real steps."""
    model = keras.Sequential([keras.Input((None, D)),
                              keras.layers.RNN(make_cell(GRU), go_backwards=True)])
    weights = randomize_weights(model.layers[0], rng)
    batches = [rng.normal(0, 1, (B, length, D)).astype("float32") for length in (3, 6)]
    recompute_population_statistics(model, batches)
    expected = exact_averages(GRU, weights, [x[:, ::-1] for x in batches])
    assert_moving_close(model.layers[0], expected)


def test_recompute_population_statistics_steps_and_unreached_slots(rng):
    """`steps` limits the batches; slots no used batch reached keep their statistics."""
    model = keras.Sequential([keras.Input((None, D)),
                              keras.layers.RNN(make_cell(GRU, max_timesteps=6))])
    weights = randomize_weights(model.layers[0], rng)
    batches = [rng.normal(0, 1, (B, length, D)).astype("float32") for length in (2, 3, 9)]
    assert recompute_population_statistics(model, iter(batches), steps=2) == 2
    expected = exact_averages(GRU, weights, batches[:2])
    assert_moving_close(model.layers[0], expected)
    moving = moving_statistics(model.layers[0])
    for name in moving:
        np.testing.assert_array_equal(moving[name][3:], weights[name][3:])


def test_recompute_population_statistics_of_the_layer_excludes_padding(rng):
    """BatchNormLSTM behind Masking: padded samples are left out of every step's statistic
    (right and left padding); steps past T_max go to the last slot."""
    layer = BatchNormLSTM(U, max_timesteps=T_MAX, return_sequences=True)
    model = keras.Sequential([keras.Input((None, D)), keras.layers.Masking(0.0), layer])
    weights = randomize_weights(layer, rng)
    trainable_before = [to_numpy(v) for v in model.trainable_weights]
    batches, masks = [], []
    for length, lengths in ((6, (6, 2, 4, 5)), (3, (3, 3, 1, 2))):
        x = rng.normal(0.5, 1.0, (B, length, D)).astype("float32")
        mask = np.arange(length)[None, :] < np.array(lengths)[:, None]
        mask[3] = mask[3, ::-1]  # one left-padded sample
        batches.append(np.where(mask[..., None], x, 0.0).astype("float32"))
        masks.append(mask)
    recompute_population_statistics(model, batches)
    assert_moving_close(layer, exact_averages(LSTM, weights, batches, masks))
    for before, after in zip(trainable_before, model.trainable_weights):
        np.testing.assert_array_equal(to_numpy(after), before)


def test_recompute_population_statistics_bad_input(rng):
    plain = keras.Sequential([keras.Input((T, D)), keras.layers.LSTM(U)])
    with pytest.raises(ValueError, match="no batch-normalized"):
        recompute_population_statistics(plain, [np.zeros((B, T, D), "float32")])
    model = keras.Sequential([keras.Input((T, D)), keras.layers.RNN(make_cell(LSTM))])
    with pytest.raises(ValueError, match="no batch"):
        recompute_population_statistics(model, [])
    with pytest.raises(ValueError, match="`steps`"):
        recompute_population_statistics(model, [np.zeros((B, T, D), "float32")], steps=0)


# -- numerics --------------------------------------------------------------------------------


def finite_outputs_and_gradients(layer, x, initial_state=None):
    """Training-mode call; asserts every output, state and gradient is finite."""
    x_var = tf.Variable(x)
    with tf.GradientTape() as tape:
        outputs, *states = layer(x_var, initial_state=initial_state, training=True)
        loss = tf.reduce_sum(tf.cast(outputs, "float32") * tf.range(1.0, U + 1.0)) + sum(
            tf.reduce_sum(tf.cast(s, "float32")) for s in states)
    variables = layer.trainable_weights
    grads = tape.gradient(loss, [v.value for v in variables] + [x_var])
    for value in [outputs] + states:
        assert np.isfinite(to_numpy(tf.cast(value, "float32"))).all()
    for variable, grad in zip(variables + [x_var], grads):
        assert grad is not None, variable.name
        assert np.isfinite(to_numpy(tf.cast(grad, "float32"))).all(), variable.name
    for name, value in moving_statistics(layer).items():
        assert np.isfinite(value).all(), name
    return to_numpy(tf.cast(outputs, "float32")), [to_numpy(g) for g in grads]


@pytest.mark.parametrize("kind", KINDS)
def test_batch_of_one_in_training(kind, rng):
    # One sample: every batch variance is 0, every normalized term is β (or 0).
    x = rng.normal(0, 1, (1, T, D)).astype("float32")
    layer, weights = built_rnn(kind, rng, unroll=True, return_sequences=True,
                               return_state=True)
    got, _ = finite_outputs_and_gradients(layer, x)
    want, _, moving = reference_run(kind, weights, x, training=True)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert_moving_close(layer, moving)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("inputs", ["identical_samples", "constant"])
def test_zero_batch_variance_with_zero_initial_state(kind, inputs, rng):
    """Identical samples and h₀ = 0: every term has zero batch variance (the paper's
    t = 0 problem, at every step). Outputs, statistics and gradients stay finite.

    Only the first step is compared with the reference: with zero variance the
    normalization multiplies the float32 round-off between rows (vectorized and scalar
    code paths of tanh/sigmoid differ by an ulp) by γ/sqrt(ε) ≈ 300 per step, so the
    samples drift apart within two or three steps, where float64 NumPy keeps them equal.
    """
    if inputs == "constant":
        x = np.full((B, T, D), 2.5, "float32")
    else:
        x = np.repeat(rng.normal(0, 1, (1, T, D)), B, axis=0).astype("float32")
    layer, weights = built_rnn(kind, rng, unroll=True, return_sequences=True,
                               return_state=True)
    got, _ = finite_outputs_and_gradients(layer, x)
    want, _, moving, stats = reference_run(kind, weights, x, training=True,
                                           return_batch_statistics=True)
    assert max(np.abs(v).max() for k, v in stats.items() if k.endswith("variance")) == 0.0
    np.testing.assert_allclose(got[:, 0], want[:, 0], atol=1e-4, rtol=0)
    got_moving = moving_statistics(layer)
    for name in moving:
        np.testing.assert_allclose(got_moving[name][0], moving[name][0], atol=1e-4, rtol=0,
                                   err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_initial_state_only_at_the_first_step(kind, rng):
    # h₀ = 0: the recurrent term has zero variance at t = 0 only.
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer, weights = built_rnn(kind, rng, return_sequences=True, return_state=True)
    got, _ = finite_outputs_and_gradients(layer, x)
    want, _, _, stats = reference_run(kind, weights, x, training=True, first_step_updates=2,
                                      return_batch_statistics=True)
    np.testing.assert_array_equal(stats["recurrent_variance"][0], 0.0)
    assert stats["recurrent_variance"][1:].min() > 0
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_mixed_float16(kind, rng, float32_policy_afterwards):
    keras.config.set_dtype_policy("mixed_float16")
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer, weights = built_rnn(kind, rng, unroll=True, return_sequences=True,
                               return_state=True)
    assert all(v.dtype == "float32" for v in layer.weights)
    outputs, *_ = layer(x)
    assert outputs.dtype == "float16"
    got, _ = finite_outputs_and_gradients(layer, x)
    want, _, moving = reference_run(kind, weights, x, training=True)
    np.testing.assert_allclose(got, want, atol=2e-2, rtol=0)
    assert_moving_close(layer, moving, atol=1e-2)
    for name, value in moving_statistics(layer).items():
        assert value.dtype == np.float32, name
    inference = to_numpy(tf.cast(layer(x)[0], "float32"))
    want, _, _ = reference_run(kind, {**weights, **moving_statistics(layer)}, x,
                               training=False)
    np.testing.assert_allclose(inference, want, atol=2e-2, rtol=0)


# -- Keras integration -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_bidirectional(kind, rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    bidi = keras.layers.Bidirectional(keras.layers.RNN(make_cell(kind), return_sequences=True))
    bidi(x)
    forward = randomize_weights(bidi.forward_layer, rng)
    backward = randomize_weights(bidi.backward_layer, rng)
    got = to_numpy(bidi(x))
    want_forward, _, _ = reference_run(kind, forward, x, training=False)
    want_backward, _, _ = reference_run(kind, backward, x[:, ::-1], training=False)
    np.testing.assert_allclose(got[..., :U], want_forward, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[..., U:], want_backward[:, ::-1], atol=1e-5, rtol=0)
    # Training: each direction has its own statistics, slot 0 at its own first step.
    got = to_numpy(bidi(x, training=True))
    want_forward, _, moving_forward = reference_run(kind, forward, x, training=True,
                                                    first_step_updates=2)
    want_backward, _, moving_backward = reference_run(kind, backward, x[:, ::-1],
                                                      training=True, first_step_updates=2)
    np.testing.assert_allclose(got[..., :U], want_forward, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[..., U:], want_backward[:, ::-1], atol=1e-5, rtol=0)
    assert_moving_close(bidi.forward_layer, moving_forward)
    # Slot 0 of the backward direction: test_go_backwards_loop_moves_slot_zero_with_step_zero.
    got_backward = moving_statistics(bidi.backward_layer)
    for name in moving_backward:
        np.testing.assert_allclose(got_backward[name][1:], moving_backward[name][1:],
                                   atol=1e-5, rtol=0, err_msg=name)


def _flat(states):
    return [s for group in states for s in (group if isinstance(group, (list, tuple)) else [group])]


def _stacked(rng, x):
    first, second = make_cell(LSTM, units=6), make_cell(GRU)
    layer = keras.layers.RNN(keras.layers.StackedRNNCells([first, second]), unroll=True,
                             return_sequences=True, return_state=True)
    layer(x)
    return layer, first, second, randomize_weights(first, rng), randomize_weights(second, rng)


@pytest.mark.parametrize("training", [False, True])
def test_stacked_cells(training, rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer, first, second, w_first, w_second = _stacked(rng, x)
    outputs, *states = layer(x, training=training)
    hidden, first_states, first_moving = reference.bn_lstm(w_first, x, training=training)
    want, second_states, second_moving = reference.bn_gru(w_second, hidden, training=training)
    np.testing.assert_allclose(to_numpy(outputs), want, atol=1e-5, rtol=0)
    assert_all_close(_flat(states), first_states + second_states,
                     what="states [h, c, step, h, step]")
    # Slot 0: test_stacked_cells_move_slot_zero_once_with_unroll.
    for cell, moving in ((first, first_moving), (second, second_moving)):
        got = moving_statistics(cell)
        for name in moving:
            np.testing.assert_allclose(got[name][1:], moving[name][1:], atol=1e-5, rtol=0,
                                       err_msg=name)


def test_stacked_cells_move_slot_zero_once_more_for_the_dropout_masks(rng):
    """Inside StackedRNNCells, keras.layers.RNN first calls every cell once on the first
    step to prepare its dropout masks (in training mode): with `unroll=True` slot 0 of
    every cell moves twice per batch, with the same statistics (documented)."""
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer, first, second, w_first, w_second = _stacked(rng, x)
    layer(x, training=True)
    hidden, _, first_moving = reference.bn_lstm(w_first, x, training=True, first_step_updates=2)
    _, _, second_moving = reference.bn_gru(w_second, hidden, training=True, first_step_updates=2)
    assert_moving_close(first, first_moving)
    assert_moving_close(second, second_moving)


def masked_batch(rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    mask = np.ones((B, T), bool)
    mask[1, 5:] = False  # right padding
    mask[2, :3] = False  # left padding
    mask[3, 2:] = False
    return x, mask


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("zero_output_for_mask", [False, True])
def test_masking(kind, zero_output_for_mask, rng):
    """At inference the step counter skips padded steps, so each sample reads the slots
    of its own steps. At training time, inside plain keras.layers.RNN, padded samples
    take part in the batch statistics (the cell never sees the mask): documented, and
    what the reference with `exclude_masked=False` computes."""
    x, mask = masked_batch(rng)
    layer, weights = built_rnn(kind, rng, unroll=True, return_sequences=True,
                               return_state=True, zero_output_for_mask=zero_output_for_mask)
    outputs, *states = layer(x, mask=mask)
    want, want_states, _ = reference_run(kind, weights, x, training=False, mask=mask,
                                         zero_output_for_mask=zero_output_for_mask)
    np.testing.assert_allclose(to_numpy(outputs), want, atol=1e-5, rtol=0)
    assert_all_close(states, want_states, what="states")
    np.testing.assert_array_equal(to_numpy(states[-1])[:, 0], mask.sum(1))
    outputs, *states = layer(x, mask=mask, training=True)
    want, want_states, moving = reference_run(
        kind, weights, x, training=True, mask=mask, exclude_masked=False,
        zero_output_for_mask=zero_output_for_mask)
    np.testing.assert_allclose(to_numpy(outputs), want, atol=1e-5, rtol=0)
    assert_all_close(states, want_states, what="states")
    assert_moving_close(layer, moving)


def test_training_slot_counts_real_steps_when_every_sample_starts_padded(rng):
    """Steps are counted per sample, over real steps (DESIGN's t is a sample's step). A
    cell in keras.layers.RNN, which can't see the mask, updates the slot of the furthest
    step counter; counters don't advance on padded steps, so pre-padded steps of the whole
    batch all move slot 0 (with statistics that include the padding, as documented)."""
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    mask = np.ones((B, T), bool)
    mask[:, :2] = False
    mask[1, :4] = False
    layer, weights = built_rnn(LSTM, rng, unroll=True, return_sequences=True)
    outputs = layer(x, mask=mask, training=True)
    want, _, moving = reference.bn_lstm(weights, x, training=True, mask=mask,
                                        exclude_masked=False)
    np.testing.assert_allclose(to_numpy(outputs), want, atol=1e-5, rtol=0)
    assert_moving_close(layer, moving)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("padding", ["post", "pre"])
def test_masking_from_embedding_at_inference(kind, padding, rng):
    lengths = [6, 3, 9, 1]
    sequences = [rng.integers(1, 20, n) for n in lengths]
    padded = keras.utils.pad_sequences(sequences, maxlen=9, padding=padding)
    model_in = keras.Input((None,), dtype="int32")
    rnn = keras.layers.RNN(make_cell(kind), return_state=True)
    model = keras.Model(model_in, rnn(keras.layers.Embedding(20, D, mask_zero=True)(model_in)))
    randomize_weights(rnn, rng)
    padded_states = assert_padded_states_match_alone(model, padded, sequences)
    np.testing.assert_array_equal(to_numpy(padded_states[-1])[:, 0], lengths)


@pytest.mark.parametrize("kind", KINDS)
def test_return_state(kind, rng):
    """`[output, h, c, step]` (LSTM) / `[output, h, step]` (GRU, SimpleRNN): the output, the
    states of `reference.STATES`, then the step counter, `(B, 1)`."""
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer, weights = built_rnn(kind, rng, return_state=True)
    returned = layer(x)
    assert len(returned) == 2 + len(reference.STATES[kind.recurrence])
    output, h, *rest = returned
    np.testing.assert_array_equal(to_numpy(output), to_numpy(h))
    assert tuple(rest[-1].shape) == (B, 1)
    np.testing.assert_array_equal(to_numpy(rest[-1]), np.full((B, 1), T))
    _, want_states, _ = reference_run(kind, weights, x, training=False)
    assert_all_close([h] + rest, want_states)
    assert layer.cell.state_size == [U] * len(reference.STATES[kind.recurrence]) + [1]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("training", [False, True])
def test_go_backwards(kind, training, rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer, weights = built_rnn(kind, rng, unroll=True, go_backwards=True,
                               return_sequences=True, return_state=True)
    outputs, *states = layer(x, training=training)
    want, want_states, moving = reference_run(kind, weights, x[:, ::-1], training=training)
    np.testing.assert_allclose(to_numpy(outputs), want, atol=1e-5, rtol=0)
    assert_all_close(states, want_states)
    assert_moving_close(layer, moving)


@pytest.mark.parametrize("kind", KINDS)
def test_go_backwards_loop_moves_slot_zero_once_more_with_the_first_input(kind, rng):
    """Documented: with go_backwards and the TensorFlow loop, Keras's extra call before
    the loop gets `x[:, 0]` (the LAST step of the backward pass) with the initial state:
    slot 0 first moves once with the statistics of that one-step sequence, then the loop
    moves every slot once. Outputs are unaffected (use the whole-sequence layers to avoid
    it)."""
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer, weights = built_rnn(kind, rng, go_backwards=True, return_sequences=True)
    outputs = layer(x, training=True)
    _, _, after_extra_call = reference_run(kind, weights, x[:, :1], training=True)
    want, _, moving = reference_run(kind, {**weights, **after_extra_call}, x[:, ::-1],
                                    training=True)
    np.testing.assert_allclose(to_numpy(outputs), want, atol=1e-5, rtol=0)
    assert_moving_close(layer, moving)


@pytest.mark.parametrize("kind", KINDS)
def test_stateful_halves_equal_the_whole(kind, rng):
    """The step counter is carried across batches: the second half continues at slot
    min(5 + t, T_max − 1), at inference and at training time (unroll: one update each)."""
    x = rng.normal(0, 1, (B, 10, D)).astype("float32")
    layer = keras.layers.RNN(make_cell(kind), stateful=True, unroll=True, return_sequences=True)
    layer(x[:, :5])
    weights = randomize_weights(layer, rng)
    for training in (False, True):
        set_weights_by_name(layer, weights)
        layer.reset_state()
        halves = [to_numpy(layer(x[:, :5], training=training)),
                  to_numpy(layer(x[:, 5:], training=training))]
        assert layer.states[-1].shape == (B, 1)
        np.testing.assert_array_equal(to_numpy(layer.states[-1]), 10.0)
        want, _, moving = reference_run(kind, weights, x, training=training)
        np.testing.assert_allclose(np.concatenate(halves, axis=1), want, atol=1e-5, rtol=0)
        assert_moving_close(layer, moving)
    layer.reset_state()
    np.testing.assert_array_equal(to_numpy(layer.states[-1]), 0.0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", ["dropout", "recurrent_dropout"])
def test_dropout(kind, which, rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer, weights = built_rnn(kind, rng, {which: 0.4, "seed": 3}, return_sequences=True)
    first, second = to_numpy(layer(x, training=True)), to_numpy(layer(x, training=True))
    assert np.abs(first - second).max() > 1e-3, "training calls should draw new masks"
    inference = to_numpy(layer(x, training=False))
    np.testing.assert_array_equal(inference, to_numpy(layer(x)))
    # Inference: no dropout, population statistics (moved by the two training calls).
    want, _, _ = reference_run(kind, {**weights, **moving_statistics(layer)}, x,
                               training=False)
    np.testing.assert_allclose(inference, want, atol=1e-5, rtol=0)


# -- trainable=False: inference mode, as keras.layers.BatchNormalization -------------------


@pytest.mark.parametrize("kind", KINDS)
def test_frozen_cell_runs_in_inference_mode(kind, rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer, weights = built_rnn(kind, rng, {"trainable": False}, return_sequences=True)
    assert not layer.cell.trainable and not layer.trainable_weights
    inference = to_numpy(layer(x, training=False))
    np.testing.assert_array_equal(to_numpy(layer(x, training=True)), inference)
    want, _, _ = reference_run(kind, weights, x, training=False)
    np.testing.assert_allclose(inference, want, atol=1e-5, rtol=0)
    for name, value in weights_by_name(layer).items():
        np.testing.assert_array_equal(value, weights[name], err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_freezing_the_layer_stops_statistics_in_fit(kind, rng):
    inputs = keras.Input((T, D))
    rnn = keras.layers.RNN(make_cell(kind))
    model = keras.Model(inputs, keras.layers.Dense(1)(rnn(inputs)))
    weights = randomize_weights(rnn, rng)
    rnn.trainable = False
    assert not rnn.cell.trainable
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = rng.normal(1.0, 2.0, (B, T, D)).astype("float32")
    model.train_on_batch(x, np.ones((B, 1), "float32"))
    for name, value in weights_by_name(rnn).items():
        np.testing.assert_array_equal(value, weights[name], err_msg=name)


# -- serialization and serving --------------------------------------------------------------


def _non_default_arguments(kind):
    arguments = {
        "momentum": 0.5,
        "moving_mean_initializer": keras.initializers.Constant(0.25),
        "moving_variance_initializer": keras.initializers.Constant(2.0),
        "activation": "softsign",
        "use_bias": False,
        "kernel_initializer": keras.initializers.HeNormal(seed=3),
        "recurrent_initializer": keras.initializers.Identity(gain=0.5),
        "bias_initializer": keras.initializers.Constant(0.25),
        "gamma_initializer": keras.initializers.Constant(0.75),
        "beta_initializer": keras.initializers.Constant(-0.5),
        "kernel_regularizer": keras.regularizers.L2(0.01),
        "gamma_regularizer": keras.regularizers.L2(0.05),
        "beta_constraint": keras.constraints.MaxNorm(3.0),
        "dropout": 0.125,
        "recurrent_dropout": 0.25,
        "epsilon": 1e-3,
        "seed": 42,
        "name": f"custom_{kind.name}",
        "trainable": False,
    }
    if kind.recurrence != "simple_rnn":  # gates
        arguments["recurrent_activation"] = "hard_sigmoid"
    if kind.recurrence == "lstm":
        arguments["unit_forget_bias"] = False
    return arguments


@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trips_every_argument(kind):
    cls = kind.cell
    arguments = _non_default_arguments(kind)
    cell = cls(7, 11, **arguments)
    config = cell.get_config()
    restored = cls.from_config(config)
    assert restored.get_config() == config
    assert (restored.units, restored.max_timesteps) == (7, 11)
    for name, value in arguments.items():
        got = getattr(restored, name)
        if isinstance(value, (str, bool, int, float)):
            expected = keras.activations.get(value) if "activation" in name else value
            assert got == expected, name
        else:
            assert type(got) is type(value), name
            assert got.get_config() == value.get_config(), name
    layer = keras.layers.RNN(restored)
    layer(np.zeros((B, T, D), "float32"))
    w = weights_by_name(layer)
    np.testing.assert_array_equal(w["input_moving_mean"], 0.25)
    np.testing.assert_array_equal(w["recurrent_moving_variance"], 2.0)
    assert w["input_moving_mean"].shape[0] == 11


def test_keras_file_keeps_population_statistics_exactly(rng, tmp_path):
    inputs = keras.Input((None, D))
    lstm = keras.layers.RNN(make_cell(LSTM, dropout=0.1), return_sequences=True)
    gru = keras.layers.RNN(make_cell(GRU, momentum=0.8), go_backwards=True)
    outputs = keras.layers.Dense(2)(gru(lstm(inputs)))
    model = keras.Model(inputs, outputs)
    randomize_weights(lstm, rng), randomize_weights(gru, rng)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.train_on_batch(rng.normal(0, 1, (B, T, D)).astype("float32"), np.zeros((B, 2)))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode: registered classes only
    assert type(loaded.layers[1].cell) is BatchNormLSTMCell
    assert type(loaded.layers[2].cell) is BatchNormGRUCell
    assert loaded.layers[2].cell.momentum == 0.8
    assert len(model.weights) == len(loaded.weights)
    for a, b in zip(model.weights, loaded.weights):
        # (Keras drops the RNN's name from a loaded cell's weight paths, for its own
        # LSTMCell too: compare the weights' own names, in order.)
        assert a.path.split("/")[-1] == b.path.split("/")[-1]
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)
    x = rng.normal(0, 1, (B, 2 * T, D)).astype("float32")
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))


def test_export_serves_with_population_statistics(rng, tmp_path):
    inputs = keras.Input((None, D))
    lstm = keras.layers.RNN(make_cell(LSTM), return_sequences=True)
    gru = keras.layers.RNN(make_cell(GRU), return_sequences=True, go_backwards=True)
    model = keras.Model(inputs, keras.layers.Concatenate()([lstm(inputs), gru(inputs)]))
    w_lstm, w_gru = randomize_weights(lstm, rng), randomize_weights(gru, rng)
    path = str(tmp_path / "exported")
    model.export(path, verbose=False)
    served = tf.saved_model.load(path)
    for length in (3, 2 * T_MAX + 1):
        x = rng.normal(0, 1, (B, length, D)).astype("float32")
        first, second = to_numpy(served.serve(x)), to_numpy(served.serve(x))
        np.testing.assert_array_equal(first, second)
        want_lstm, _, _ = reference.bn_lstm(w_lstm, x, training=False)
        want_gru, _, _ = reference.bn_gru(w_gru, x[:, ::-1], training=False)
        np.testing.assert_allclose(first[..., :U], want_lstm, atol=1e-5, rtol=0)
        np.testing.assert_allclose(first[..., U:], want_gru, atol=1e-5, rtol=0)
        # A sample's outputs don't depend on the rest of the batch (no batch statistics).
        alone = to_numpy(served.serve(x[1:2]))
        np.testing.assert_allclose(alone[0], first[1], atol=1e-5, rtol=0)
    for name, value in weights_by_name(lstm).items():
        np.testing.assert_array_equal(value, w_lstm[name], err_msg=name)


# -- training ----------------------------------------------------------------------------------


def _epochs_to_accuracy(make_recurrent_layer, x, y, x_test, y_test, *, target, max_epochs,
                        batch_norm):
    """Epochs of `fit` until the held-out accuracy in inference mode reaches `target`.
    For the BN model, population statistics are recomputed after each epoch (the paper's
    exact averages; they don't affect training, which uses batch statistics)."""
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input(x.shape[1:]), make_recurrent_layer(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    history = []

    class HeldOutAccuracy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if batch_norm:
                recompute_population_statistics(model, [x[: len(x) // 2], x[len(x) // 2:]])
            predicted = to_numpy(model(x_test, training=False))[:, 0] > 0.5
            history.append(float(np.mean(predicted == y_test)))
            if history[-1] >= target:
                model.stop_training = True

    model.fit(x, y, batch_size=40, epochs=max_epochs, verbose=0, callbacks=[HeldOutAccuracy()])
    epochs = len(history) if history[-1] >= target else max_epochs + 1
    return epochs, history


def test_bn_lstm_converges_in_no_more_epochs_than_lstm():
    """The paper's faster convergence, in miniature: the label is the sign of the first
    input, the next nine steps are noise. Same data, seed, optimizer and budget; held-out
    accuracy in inference mode. (Seeds 0-4 measured: BN-LSTM 1 epoch, LSTM 3-6.)"""
    data = np.random.default_rng(0)
    x = data.normal(0, 1, (1200, 10, 2)).astype("float32")
    y = (x[:, 0, 0] > 0).astype("float32")
    split = dict(x=x[:800], y=y[:800], x_test=x[800:], y_test=y[800:], target=0.9,
                 max_epochs=8)
    bn_epochs, bn_history = _epochs_to_accuracy(
        lambda: keras.layers.RNN(BatchNormLSTMCell(16, max_timesteps=10)), batch_norm=True,
        **split)
    lstm_epochs, lstm_history = _epochs_to_accuracy(
        lambda: keras.layers.LSTM(16), batch_norm=False, **split)
    assert bn_epochs <= 8, bn_history
    assert bn_epochs <= lstm_epochs, (bn_history, lstm_history)


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [k.cell for k in KINDS] + [k.layer for k in LAYERS],
                         ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("argument,value", [
    ("max_timesteps", 0), ("max_timesteps", -2), ("max_timesteps", 2.5),
    ("max_timesteps", None), ("max_timesteps", True),
    ("momentum", -0.1), ("momentum", 1.0), ("momentum", 1.5), ("momentum", "0.9"),
    ("epsilon", 0.0), ("epsilon", -1e-5),
])
def test_invalid_arguments(cls, argument, value):
    kwargs = {"max_timesteps": 4, argument: value}
    with pytest.raises(ValueError, match=f"`{argument}`.*{value!r}".replace("(", r"\(")):
        cls(4, **kwargs)


@pytest.mark.parametrize("kind", KINDS)
def test_max_timesteps_is_required(kind):
    with pytest.raises(TypeError, match="max_timesteps"):
        kind.cell(4)


# -- the step counter under mixed precision ------------------------------------------------


LONG_T, LONG_T_MAX = 300, 400  # past 256, where a bfloat16 counter stops counting


def _long_layer(layer_class, weights=None, **kwargs):
    layer = layer_class(U, max_timesteps=LONG_T_MAX, return_sequences=True, return_state=True,
                        **kwargs)
    layer(np.zeros((2, 3, D), "float32"))
    if weights is not None:
        set_weights_by_name(layer, weights)
    return layer


@pytest.mark.parametrize("policy, atol", [("mixed_bfloat16", 0.1), ("mixed_float16", 2e-2)])
@pytest.mark.parametrize("kind", LAYERS)
def test_long_sequence_reads_slot_t_at_step_t_under_mixed_precision(
        kind, policy, atol, rng, float32_policy_afterwards):
    """A 300-step sequence with max_timesteps=400: under half precision every step reads
    its own slot (as float32 does: the population statistics differ from slot to slot),
    the counter returned is exactly 300 (float32), and training moves slots 0..299 only."""
    x = rng.normal(0, 1, (2, LONG_T, D)).astype("float32")
    reference_layer = _long_layer(kind.layer)
    weights = randomize_weights(reference_layer, rng)
    want, *want_states = graph_function(reference_layer)(x)
    keras.config.set_dtype_policy(policy)
    layer = _long_layer(kind.layer, weights)
    got, *states = graph_function(layer)(x)
    assert keras.backend.standardize_dtype(got.dtype) == policy.split("_")[1]
    got = to_numpy(keras.ops.cast(got, "float32"))
    late = slice(256, LONG_T)
    np.testing.assert_allclose(got[:, late], to_numpy(want)[:, late], atol=atol, rtol=0)
    assert keras.backend.standardize_dtype(states[-1].dtype) == "float32"
    np.testing.assert_array_equal(to_numpy(states[-1]), np.full((2, 1), LONG_T))
    # Training: the statistics of the slots of steps 0..299 move, in float32; no other.
    graph_function(lambda x: layer(x, training=True))(x)
    for name, value in moving_statistics(layer).items():
        assert value.dtype == np.float32, name
        assert np.abs(value[LONG_T - 1] - weights[name][LONG_T - 1]).max() > 1e-4, name
        np.testing.assert_array_equal(value[LONG_T:], weights[name][LONG_T:], err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_cell_in_rnn_under_bfloat16_refuses_slots_its_counter_cannot_reach(
        kind, float32_policy_afterwards):
    """keras.layers.RNN casts the counter to bfloat16 (exact to 256): a cell with more
    slots than that would silently read slot 256 for every later step."""
    keras.config.set_dtype_policy("mixed_bfloat16")
    x = np.zeros((2, 3, D), "float32")
    keras.layers.RNN(make_cell(kind, max_timesteps=257))(x)  # the counter reaches slot 256
    with pytest.raises(ValueError, match="counts only to 256.*" + kind.cell.sequence_layer_name):
        keras.layers.RNN(make_cell(kind, max_timesteps=LONG_T_MAX))(x)


# -- states and arguments ------------------------------------------------------------------


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("kind", LAYERS)
def test_initial_state_without_the_counter(kind, training, rng):
    """What a keras.layers.LSTM user passes: the layers start the counter at 0; a cell in
    keras.layers.RNN (which can't add a state to Keras's loop) says what it expects."""
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    *states, counter = random_states(kind, rng)
    results = []
    for initial_state in (states, states + [counter]):
        layer = kind.layer(U, max_timesteps=T_MAX, return_sequences=True, return_state=True)
        layer(x[:, :1])
        set_weights_by_name(layer, randomize_weights(layer, np.random.default_rng(3)))
        results.append((layer(x, initial_state=initial_state, training=training),
                        moving_statistics(layer)))
    (got, got_moving), (want, want_moving) = results
    assert_all_close(got, [to_numpy(v) for v in want], what="outputs and states")
    for name in want_moving:
        np.testing.assert_array_equal(got_moving[name], want_moving[name], err_msg=name)
    rnn = keras.layers.RNN(make_cell(kind))
    expected = re.escape(f"[{', '.join(reference.STATES[kind.recurrence])}, step]")
    with pytest.raises(ValueError, match=expected):
        rnn(x, initial_state=states, training=training)
    with pytest.raises(ValueError, match="initial_state"):
        kind.layer(U, max_timesteps=T_MAX)(x, initial_state=states[:1] * 4)


@pytest.mark.parametrize("kind", LAYERS)
def test_numpy_numbers_are_accepted_and_stored_as_python_numbers(kind, tmp_path):
    import json

    lengths = np.array([3, 9, 4])
    layer = kind.layer(np.int64(4), max_timesteps=lengths.max(), momentum=np.float32(0.9),
                         epsilon=np.float32(1e-3), dropout=np.float64(0.1))
    layer(np.zeros((2, 3, D), "float32"))
    config = layer.get_config()
    json.dumps(config)
    for key, kind_of in (("units", int), ("max_timesteps", int), ("momentum", float),
                         ("epsilon", float), ("dropout", float)):
        assert type(config[key]) is kind_of, key
    assert config["max_timesteps"] == 9 and config["momentum"] == pytest.approx(0.9)
    cell = make_cell(kind, units=np.int32(3), max_timesteps=np.uint8(5))
    assert type(cell.units) is int and type(cell.max_timesteps) is int
    with pytest.raises(ValueError, match="max_timesteps"):
        make_cell(kind, max_timesteps=np.float64(5.0))


@pytest.mark.parametrize("kind", LAYERS)
def test_activity_regularizer_applies_to_the_layer_output(kind, rng):
    x = rng.normal(0, 1, (B, T, D)).astype("float32")
    layer = kind.layer(U, max_timesteps=T_MAX, activity_regularizer="l2", return_state=True)
    output, *_ = layer(x, training=True)
    assert not layer.cell.losses
    assert len(layer.losses) == 1
    np.testing.assert_allclose(to_numpy(layer.losses[0]), 0.01 * np.sum(to_numpy(output) ** 2),
                               rtol=1e-5)
    again = kind.layer.from_config(layer.get_config())
    assert again.get_config() == layer.get_config()


@pytest.mark.parametrize("kind", LAYERS)
def test_stateful_samples_with_different_counters_update_their_own_slots(kind, rng):
    """After a masked batch, a stateful layer's samples are at steps 2 and 4; training on
    2 more steps must move slots 2, 3 (sample 0) and 4, 5 (sample 1), no other."""
    layer = kind.layer(U, max_timesteps=8, stateful=True, return_state=True)
    x = rng.normal(0, 1, (2, 4, D)).astype("float32")
    layer(x[:, :1])
    # A random bias: with none, two samples' BN terms are exact opposites, and a SimpleRNN's
    # (tanh is odd) h too: their recurrent term's batch mean is then exactly 0.
    randomize_weights(layer, rng)
    layer.reset_states()
    layer(x, mask=np.array([[True, True, False, False], [True] * 4]), training=True)
    assert to_numpy(layer.states[-1]).ravel().tolist() == [2.0, 4.0]
    before = moving_statistics(layer)
    _, *states = layer(x[:, :2], training=True)
    np.testing.assert_array_equal(to_numpy(states[-1]).ravel(), [4.0, 6.0])
    after = moving_statistics(layer)
    for name in after:
        moved = np.abs(after[name] - before[name]).max(axis=-1) > 1e-6
        assert moved.tolist() == [False, False, True, True, True, True, False, False], name


# -- padded text: steps that few samples reach ---------------------------------------------


def _padded_text_training(layer_class, rng, batches, max_timesteps=12, short=3):
    """Training-mode passes over batches of 8 where one sentence is long and seven are
    `short` steps (each batch fresh samples); returns the layer and its step function."""
    layer = layer_class(U, max_timesteps=max_timesteps, momentum=0.8, return_sequences=True)
    layer(np.zeros((8, max_timesteps, D), "float32"))
    weights = randomize_weights(layer, np.random.default_rng(11))
    for name, value in weights.items():
        if "moving" in name:  # the initial 0 and 1
            weights[name] = np.zeros_like(value) if "mean" in name else np.ones_like(value)
        elif name in ("recurrent_kernel", "cell_gamma"):
            # Only the input term reaches the output (see the test below).
            weights[name] = np.zeros_like(value)
    set_weights_by_name(layer, weights)
    mask = np.zeros((8, max_timesteps), bool)
    mask[0] = True
    mask[1:, :short] = True
    train = graph_function(lambda x: layer(x, mask=mask, training=True))
    for _ in range(batches):
        train(rng.normal(0, 1, (8, max_timesteps, D)).astype("float32"))
    return layer


@pytest.mark.parametrize("kind", LAYERS)
def test_steps_one_sample_per_batch_reaches_get_the_variance_across_those_samples(
        kind, rng):
    """One long sentence per batch of 8: past step 3 every batch variance is 0 (one sample),
    but the population variance of those slots must be the variance across the long
    sentences of all batches (as at the steps every sample reaches), so that inference on
    long sentences agrees with the training-mode output of a batch of long sentences.

    Only the input term reaches the output here (recurrent kernel 0, LSTM cell γ 0): the
    recurrent and cell terms of such steps are trained on states normalized with one
    sample's statistics (the paper's definition), so their population statistics describe
    those states, which no batch of long sentences reproduces (docs/batch_norm_statistics.md).
    On the EMA of batch variances both checks fail: the variance goes to ~0, and the
    outputs differ by ~0.2 to 0.5 on average."""
    layer = _padded_text_training(kind.layer, rng, batches=400)
    long_batch = rng.normal(0, 1, (256, 12, D)).astype("float32")
    # The population of long sentences, measured on one big batch: its batch statistics.
    moving = moving_statistics(layer)
    truth = reference.batch_moments(
        long_batch[:, 5] @ weights_by_name(layer)["kernel"], np.ones(256, bool))
    for slot in range(3, 12):
        ratio = moving["input_moving_variance"][slot] / truth[1]
        # An exponentially weighted estimate over ~w = 32 samples (momentum 0.8, N = 8):
        # relative standard error about sqrt(2/32) = 0.25 per feature, so the bounds are
        # on the mean over the 4U features, with a floor for each.
        assert 0.7 < ratio.mean() < 1.4 and ratio.min() > 0.2, (slot, ratio)
    inference = to_numpy(layer(long_batch))
    training = to_numpy(layer(long_batch, training=True))
    gap = np.abs(inference - training).mean(axis=(0, 2))
    # Steps 0-2, which all 8 samples reach, show this training's estimation noise; the late
    # slots, estimated from as many samples (one per batch, weighted as 1/(1 + w)), must
    # be of that order. Measured: LSTM 0.006 (early 0.01), GRU 0.07 (early 0.06);
    # with the EMA of batch variances 0.11 and 0.8.
    assert gap[3:].mean() < 2 * gap[:3].max() + 0.02, gap


# -- recompute_population_statistics: any input, slots from the counter, all or nothing ----


def test_recompute_population_statistics_of_a_model_taking_raw_strings():
    """TextVectorization inside the model (the export example): 1-D string batches."""
    sentences = np.array(["a b c d e", "b c", "c d e", "e", "a a b b c c", "d e a"])
    vectorize = keras.layers.TextVectorization(output_mode="int")
    vectorize.adapt(sentences)
    inputs = keras.Input((), dtype="string")
    embedded = keras.layers.Embedding(vectorize.vocabulary_size(), D, mask_zero=True)(
        vectorize(inputs))
    layer = BatchNormLSTM(U, max_timesteps=T_MAX)
    model = keras.Model(inputs, layer(embedded))
    weights = randomize_weights(layer, np.random.default_rng(2))
    batches = [sentences[:4], sentences[4:]]
    assert recompute_population_statistics(model, batches, verbose=0) == 2
    embed = keras.Model(inputs, embedded)
    vectors = [to_numpy(embed(b)) for b in batches]
    masks = [to_numpy(vectorize(b)) != 0 for b in batches]
    assert_moving_close(layer, exact_averages(LSTM, weights, vectors, masks))


def test_recompute_population_statistics_of_a_model_with_dict_inputs(rng):
    left, right = keras.Input((None, 1), name="left"), keras.Input((None, 2), name="right")
    layer = BatchNormGRU(U, max_timesteps=T_MAX)
    model = keras.Model({"left": left, "right": right},
                        layer(keras.layers.Concatenate()([left, right])))
    weights = randomize_weights(layer, rng)
    batches = [rng.normal(0, 1, (B, n, D)).astype("float32") for n in (3, 6)]
    dataset = [({"left": x[..., :1], "right": x[..., 1:]}, np.zeros(B)) for x in batches]
    assert recompute_population_statistics(model, dataset, verbose=0) == 2
    assert_moving_close(layer, exact_averages(GRU, weights, batches))


@pytest.mark.parametrize("kind", KINDS)
def test_recompute_population_statistics_takes_slots_from_the_cell_counter(kind, rng):
    """RepeatVector before a cell in keras.layers.RNN: the model input has no time axis
    (its axis 1 is the features); every one of the 6 steps counts, in its own slot."""
    rnn = keras.layers.RNN(make_cell(kind, max_timesteps=6))
    model = keras.Sequential([keras.Input((D,)), keras.layers.RepeatVector(6), rnn])
    weights = randomize_weights(rnn, rng)
    batches = [rng.normal(0, 1, (B, D)).astype("float32") for _ in range(2)]
    recompute_population_statistics(model, batches, verbose=0)
    repeated = [np.repeat(x[:, None], 6, axis=1) for x in batches]
    assert_moving_close(rnn, exact_averages(kind, weights, repeated))


def test_recompute_population_statistics_after_pooling(rng):
    """AveragePooling1D halves the time axis before the layer: slots 0..3, not 0..7."""
    layer = BatchNormLSTM(U, max_timesteps=8)
    model = keras.Sequential([keras.Input((8, D)), keras.layers.AveragePooling1D(2), layer])
    weights = randomize_weights(layer, rng)
    batches = [rng.normal(0, 1, (B, 8, D)).astype("float32") for _ in range(2)]
    recompute_population_statistics(model, batches, verbose=0)
    pooled = [x.reshape(B, 4, 2, D).mean(axis=2) for x in batches]
    assert_moving_close(layer, exact_averages(LSTM, weights, pooled))


@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt])
def test_recompute_population_statistics_keeps_the_old_statistics_on_failure(error, rng):
    layer = BatchNormLSTM(U, max_timesteps=T_MAX)
    rnn = keras.layers.RNN(make_cell(GRU))
    inputs = keras.Input((None, D))
    model = keras.Model(inputs, [layer(inputs), rnn(inputs)])
    before = [randomize_weights(layer, rng), randomize_weights(rnn, rng)]

    def batches():
        yield rng.normal(0, 1, (B, T, D)).astype("float32")
        raise error("batch 2 could not be read")

    probe = rng.normal(0, 1, (B, T, D)).astype("float32")
    expected = [to_numpy(y) for y in model(probe, training=False)]
    with pytest.raises(error):
        recompute_population_statistics(model, batches(), verbose=0)
    for part, values in zip((layer, rnn), before):
        for name, value in moving_statistics(part).items():
            np.testing.assert_array_equal(value, values[name], err_msg=name)
    # And the model is back to its population statistics at inference.
    for output, value in zip(model(probe, training=False), expected):
        np.testing.assert_array_equal(to_numpy(output), value)


def test_collecting_batch_statistics_is_a_scope_of_its_own_thread(rng):
    """The cells use batch statistics at inference only inside the scope, and only in the
    thread that opened it: a model served meanwhile from another thread keeps its
    population statistics."""
    layer = BatchNormLSTM(U, max_timesteps=T_MAX)
    model = keras.Sequential([keras.Input((T, D)), layer])
    randomize_weights(layer, rng)
    probe = rng.normal(0, 1, (B, T, D)).astype("float32")
    population = to_numpy(model(probe, training=False))
    collected = []

    class Collection:
        def add(self, cell, moments, slots, step=None):
            collected.append(cell)

    elsewhere = {}
    with collecting_batch_statistics(Collection()):
        gathering = to_numpy(model(probe, training=False))
        thread = threading.Thread(
            target=lambda: elsewhere.update(y=to_numpy(model(probe, training=False)))
        )
        thread.start()
        thread.join()
    np.testing.assert_array_equal(elsewhere["y"], population)
    np.testing.assert_array_equal(to_numpy(model(probe, training=False)), population)
    assert collected == [layer.cell]  # one whole-sequence call, from this thread only
    assert np.abs(gathering - population).max() > 1e-3  # batch statistics, not the population's


# -- recompute_population_statistics touches nothing but the population statistics -------


def all_values(model):
    """Every variable of `model` and every state of its stateful layers, by path."""
    values = {v.path: to_numpy(v) for v in model.variables}
    for layer in model._flatten_layers():
        if getattr(layer, "stateful", False):
            for index, state in enumerate(layer.states):
                values[f"{layer.name}/state_{index}"] = to_numpy(state)
    return values


def test_recompute_population_statistics_runs_the_model_in_inference_mode(rng):
    """A Keras BatchNormalization before and after the layer, dropout before it and in
    it: the cell's statistics are those of its inputs at inference (the first
    BatchNormalization with its moving statistics, no dropout), and nothing else moves."""
    inputs = keras.Input((None, D))
    front = keras.layers.BatchNormalization()(inputs)
    layer = BatchNormLSTM(U, max_timesteps=T_MAX, dropout=0.4, recurrent_dropout=0.4,
                          return_sequences=True)
    hidden = layer(keras.layers.Dropout(0.5)(front))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.BatchNormalization()(hidden)))
    weights = randomize_weights(layer, rng)
    for norm in (model.layers[1], model.layers[4]):
        norm.moving_mean.assign(rng.normal(0, 1, norm.moving_mean.shape))
        norm.moving_variance.assign(rng.uniform(0.5, 2, norm.moving_variance.shape))
    before = all_values(model)
    batches = [rng.normal(1.0, 2.0, (B, length, D)).astype("float32") for length in (6, 3)]
    recompute_population_statistics(model, batches, verbose=0)
    normalized = keras.Model(inputs, front)
    expected = exact_averages(LSTM, weights, [to_numpy(normalized(x)) for x in batches])
    assert_moving_close(layer, expected)
    moving = {v.path for v in layer.non_trainable_variables}
    for path, value in all_values(model).items():
        if path not in moving:
            np.testing.assert_array_equal(value, before[path], err_msg=path)


def stateful_model(rng):
    """A stateful BatchNormLSTM (8 slots) and a stateful keras LSTM, after a 3-step batch."""
    model = keras.Sequential([
        keras.Input((None, D), batch_size=B),
        BatchNormLSTM(U, max_timesteps=8, stateful=True, return_sequences=True),
        keras.layers.LSTM(U, stateful=True),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(1),
    ])
    randomize_weights(model.layers[0], rng)
    model(rng.normal(0, 1, (B, 3, D)).astype("float32"))
    return model


def test_recompute_population_statistics_restores_stateful_states(rng):
    """The pass continues from the states (counter 3: slots 3..6 for two 2-step batches),
    and the states are as before afterwards: the next call continues the user's sequence."""
    model = stateful_model(rng)
    before = all_values(model)
    moving_before = moving_statistics(model.layers[0])
    batches = [rng.normal(0, 1, (B, 2, D)).astype("float32") for _ in range(2)]
    recompute_population_statistics(model, batches, verbose=0)
    moving = {v.path for v in model.layers[0].non_trainable_variables}
    for path, value in all_values(model).items():
        if path not in moving:
            np.testing.assert_array_equal(value, before[path], err_msg=path)
    for name, value in moving_statistics(model.layers[0]).items():
        np.testing.assert_array_equal(value[[0, 1, 2, 7]], moving_before[name][[0, 1, 2, 7]])
        assert (value[3:7] != moving_before[name][3:7]).all(), name


@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt])
def test_recompute_population_statistics_failing_midway_changes_nothing(error, rng):
    """The data source fails on its second batch: every variable and state is as before."""
    model = stateful_model(rng)
    before = all_values(model)

    def batches():
        yield rng.normal(0, 1, (B, 4, D)).astype("float32")
        raise error("batch 2 could not be read")

    with pytest.raises(error):
        recompute_population_statistics(model, batches(), verbose=0)
    after = all_values(model)
    assert set(after) == set(before)
    for path, value in after.items():
        np.testing.assert_array_equal(value, before[path], err_msg=path)


@pytest.mark.parametrize("k", kinds(family="batch_norm", layer=True), ids=lambda k: k.name)
def test_initial_counter_reaches_the_layer_uncast_under_mixed_bfloat16(k, rng, float32_policy_afterwards):
    """Keras casts floating call arguments to the compute dtype: a bfloat16 counter of 257
    would be read as 256, and the step would use slot 256's statistics."""
    keras.config.set_dtype_policy("mixed_bfloat16")
    layer = k.layer(2, max_timesteps=300, return_state=True)
    x = rng.normal(size=(1, 1, 3)).astype("float32")
    layer(x)
    for variable in layer.non_trainable_variables:  # every slot its own statistics
        shape = tuple(variable.shape)
        low = 0.5 if "variance" in variable.path else -2.0
        variable.assign(rng.uniform(low, 2.0, shape).astype("float32"))
    n_states = len(layer.cell.state_size) - 1
    zeros = [np.zeros((1, 2), "float32")] * n_states

    def run(step):
        outputs = layer(x, initial_state=zeros + [np.full((1, 1), step, "float32")])
        return to_numpy(outputs[0]).astype("float32"), to_numpy(outputs[-1])

    out_257, counter = run(257.0)
    out_256, _ = run(256.0)
    np.testing.assert_array_equal(counter, [[258.0]])
    assert np.abs(out_257 - out_256).max() > 1e-2
