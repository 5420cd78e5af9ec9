"""Layer-normalized cells and layers on all-zero input steps (issue #16,
docs/degenerate_inputs.md).

From h₀ = 0, zero input keeps h = c = 0, and the exact derivative of the LN of a zero vector
is γ/√ε·(I − 11ᵀ/N): applied at every step it overflows into NaN. The backward treats a
degenerate vector's normalized value as a constant; everywhere else it is the exact
derivative. Backend-agnostic: run it on TensorFlow and with KERAS_BACKEND=jax.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_recnorm import normalization
from tests.conftest import kinds, randomize_weights, set_weights_by_name, to_numpy

TENSORFLOW = keras.backend.backend() == "tensorflow"
JAX = keras.backend.backend() == "jax"


def generic(layer):
    """The layer with Keras's loop and autodiff instead of the fused loop."""
    layer.uses_fused_loop = lambda: False
    return layer


def rnn_of(cell_class):
    def make(units, return_sequences=False, dtype=None, **cell_kwargs):
        cell = cell_class(units, dtype=dtype, **cell_kwargs)
        return keras.layers.RNN(cell, return_sequences=return_sequences, dtype=dtype)

    return make


def generic_of(layer_class):
    return lambda units, **kwargs: generic(layer_class(units, **kwargs))


# name -> a function of (units, return_sequences=, dtype=, **cell arguments) giving the
# recurrent layer, for every layer-normalized kind of keras_recnorm.kinds.KINDS. "fused":
# the layer's loop (training: with the hand-written step derivative on TensorFlow and JAX,
# differentiated by autograd on torch); the others differentiate Keras's loop.
FUSED_BACKEND = keras.backend.backend() in ("tensorflow", "jax", "torch")
LAYERS = [k.layer for k in kinds(family="layer_norm", layer=True)]
VARIANTS = {}
for layer_class in LAYERS:
    VARIANTS[f"{layer_class.__name__}-fused"] = layer_class
    if FUSED_BACKEND:  # elsewhere there is no fused loop: a layer's two variants are one
        VARIANTS[f"{layer_class.__name__}-generic"] = generic_of(layer_class)
for kind in kinds(family="layer_norm"):
    VARIANTS[f"RNN({kind.cell.__name__})"] = rnn_of(kind.cell)


def model_of(recurrent, timesteps, features):
    return keras.Sequential(
        [keras.Input((timesteps, features)), recurrent, keras.layers.Dense(1)])


def test_the_variants_take_the_paths_they_name():
    for layer in (layer_class.__name__ for layer_class in LAYERS):
        assert VARIANTS[f"{layer}-fused"](4).uses_fused_loop() == FUSED_BACKEND
        if FUSED_BACKEND:
            assert not VARIANTS[f"{layer}-generic"](4).uses_fused_loop()


def gradients(model, x, loss_of_output):
    """Gradients of `loss_of_output(model(x, training=True))` for `[x] + trainable
    weights` (training: the fused loop runs on TensorFlow and JAX)."""
    if keras.backend.backend() == "torch":
        import torch

        x = torch.tensor(x, requires_grad=True)
        loss = loss_of_output(model(x, training=True))
        variables = [v.value for v in model.trainable_variables]
        return [to_numpy(g) for g in torch.autograd.grad(loss, [x] + variables)]
    if TENSORFLOW:
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = loss_of_output(model(x, training=True))
        return [to_numpy(g) for g in tape.gradient(loss, [x] + model.trainable_variables)]
    import jax

    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss(x, trainable):
        outputs, _ = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss_of_output(outputs)

    dx, dw = jax.grad(loss, argnums=(0, 1))(x, [v.value for v in model.trainable_variables])
    return [np.asarray(g) for g in [dx] + dw]


def weight_gradients(model, x, y):
    """Gradients of the mean squared error for every trainable weight."""
    y = ops.convert_to_tensor(y)
    return gradients(model, x, lambda prediction: ops.mean(ops.square(prediction - y)))[1:]


def assert_finite_weights(model):
    for variable in model.weights:
        assert np.isfinite(to_numpy(variable)).all(), variable.path


def assert_gradients_like_lstm(make_layer, x, y, units=8):
    """Every weight gradient finite, and the largest within 100× of keras.layers.LSTM's
    on the same data (same seed, same head)."""
    timesteps, features = x.shape[1:]
    keras.utils.set_random_seed(3)
    model = model_of(make_layer(units), timesteps, features)
    keras.utils.set_random_seed(3)
    lstm = model_of(keras.layers.LSTM(units), timesteps, features)
    model_gradients = weight_gradients(model, x, y)
    for variable, gradient in zip(model.trainable_variables, model_gradients):
        assert np.isfinite(gradient).all(), variable.path
    largest = max(np.abs(g).max() for g in model_gradients)
    lstm_largest = max(np.abs(g).max() for g in weight_gradients(lstm, x, y))
    assert largest < 100 * lstm_largest, (largest, lstm_largest)


def regression_data(rng, samples, timesteps, features, leading_zeros=0):
    x = rng.normal(0, 1, (samples, timesteps, features)).astype("float32")
    x[:, :leading_zeros] = 0.0
    y = x[:, -3:].sum(axis=(1, 2))[:, None]
    return x, y


@pytest.mark.parametrize("name", list(VARIANTS))
def test_fifteen_leading_zero_steps_train_finitely(name, rng):
    """MNIST-like blank first rows: 15 zero steps, then 5 real ones. The first batch's
    gradient is like the LSTM's (the exact one: NaN, or ~1e22-1e35, which Adam with
    clipnorm=1 survives), and 2 epochs of Adam with clipnorm=1 stay finite."""
    x, y = regression_data(rng, 32, 20, 3, leading_zeros=15)
    assert_gradients_like_lstm(VARIANTS[name], x[:8], y[:8])
    model = model_of(VARIANTS[name](8), 20, 3)
    model.compile(optimizer=keras.optimizers.Adam(1e-2, clipnorm=1.0), loss="mse")
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all(), history.history["loss"]
    assert_finite_weights(model)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_all_zero_sample_gradient_is_like_lstm(name, rng):
    """One all-zero sample in a batch of 4, T=12 (the exact derivative: NaN or ~1e17-1e27)."""
    x, y = regression_data(rng, 4, 12, 3)
    x[2] = 0.0
    assert_gradients_like_lstm(VARIANTS[name], x, y)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_input_dropout_on_two_features_keeps_weights_finite(name):
    """dropout=0.3 on 2 features, one mask per sequence: ~9% of the sequences lose both
    features and are all zero (~17 expected per run here). Two seeds, 3 epochs."""
    for seed in range(2):
        keras.utils.set_random_seed(seed)
        x, y = regression_data(np.random.default_rng(seed), 64, 16, 2)
        model = model_of(VARIANTS[name](16, dropout=0.3), 16, 2)
        model.compile(optimizer="adam", loss="mse")
        history = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
        assert np.isfinite(history.history["loss"]).all(), (seed, history.history["loss"])
        assert_finite_weights(model)


# -- everywhere else the derivative is the exact one ---------------------------------------


def exact_layer_standardized(x, epsilon, centered=False, exact=True):
    """The LN standardization in plain ops, differentiated by autodiff: the exact
    derivative (the package's float32/float64 statistics rule kept). The mean is
    subtracted even from an input centered by construction."""
    x = ops.cast(x, normalization.statistics_dtype(x))
    mean = ops.mean(x, axis=-1, keepdims=True)
    rstd = ops.rsqrt(ops.mean(ops.square(x - mean), axis=-1, keepdims=True) + epsilon)
    return (x - mean) * rstd, rstd


def assert_gradients_are_exact(name, x, rng, monkeypatch, tolerance):
    """The gradients of `sum(outputs · probe)` for `x` and every weight (random) of the
    variant `name`, against autodiff of the plain LN formula (Keras's loop). Returns the
    exact gradients, `[x] + weights`."""
    probe = ops.convert_to_tensor(rng.normal(0, 1, x.shape[:2] + (5,)).astype(x.dtype))
    layer = VARIANTS[name](5, return_sequences=True, dtype=x.dtype)
    layer(x)
    weights = randomize_weights(layer, rng)
    got = gradients(layer, x, lambda outputs: ops.sum(outputs * probe))
    monkeypatch.setattr(normalization, "_layer_standardized", exact_layer_standardized)
    exact = generic(VARIANTS[name](5, return_sequences=True, dtype=x.dtype))
    exact(x)
    set_weights_by_name(exact, weights)
    want = gradients(exact, x, lambda outputs: ops.sum(outputs * probe))
    assert len(got) == len(want) == 1 + len(layer.trainable_variables)
    for variable, a, b in zip(["x"] + layer.trainable_variables, got, want):
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance * np.abs(b).max(),
                                   err_msg=getattr(variable, "path", variable))
    return dict(zip(["x"] + [v.path.split("/")[-1] for v in layer.trainable_variables], want))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_gradient_is_exact_on_ordinary_inputs(name, rng, monkeypatch):
    """Every LN cell and layer, fused or not, against autodiff of the plain LN formula
    (Keras's loop), to 1e-6 relative in float64 (float32 on JAX: no float64 by default)."""
    dtype = "float32" if JAX else "float64"
    x = rng.normal(0, 1, (3, 7, 4)).astype(dtype)
    assert_gradients_are_exact(name, x, rng, monkeypatch, tolerance=1e-4 if JAX else 1e-6)


SMALL_INPUT_VARIANTS = [name for name in VARIANTS if "SimpleRNN" not in name and "generic" not in name]


@pytest.mark.parametrize("scale", [1e-3, 1e-4, 1e-5, 1e-6, 1e-7])
@pytest.mark.parametrize("name", SMALL_INPUT_VARIANTS)
def test_gradient_is_exact_for_small_inputs(name, scale, rng, monkeypatch):
    """Small but not constant inputs: the input term's LN doesn't compound along the
    recurrence, so its derivative stays exact at every scale (the degenerate rule, which
    cut it to 0 below var ~1e-6·ε, holds only for the recurrent and cell terms). The fused
    loop and the cell in keras.layers.RNN against autodiff of the plain LN formula, in
    float64 (float32 on JAX; Keras's torch matmul rounds float64 to float32)."""
    dtype = "float32" if JAX else "float64"
    x = (scale * rng.normal(0, 1, (3, 6, 4))).astype(dtype)
    tolerance = 1e-4 if JAX or keras.backend.backend() == "torch" else 1e-6
    exact = assert_gradients_are_exact(name, x, rng, monkeypatch, tolerance)
    assert np.abs(exact["kernel"]).max() > 1e-3 * scale  # a real gradient, not 0 = 0


def test_standardize_backward_zero_only_for_degenerate_rows(rng):
    """Row by row: a constant row (zero or not) gets 0, rows whose variance is small but
    not numerically zero (down to 1e-4·ε) get the exact derivative."""
    epsilon = 1e-5
    x = rng.normal(0, 1, (6, 16))
    x[1] = 0.0
    x[2] = 7.25
    x[3] *= np.sqrt(1e-4 * epsilon)  # var ≈ 1e-4·ε: tiny, but not degenerate
    x[4] *= 1e-3  # var ≈ 1e-6 < ε: inputs of this scale still learn
    d = rng.normal(0, 1, (6, 16))
    x_hat, gain = normalization.layer_standardize(ops.convert_to_tensor(x), epsilon)
    got = to_numpy(normalization.layer_standardize_backward(ops.convert_to_tensor(d), x_hat, gain))
    # The exact derivative, from the reference formula by central differences.
    from tests.reference import layer_norm

    step = 1e-7
    want = np.zeros_like(x)
    for j in range(x.shape[1]):
        shift = np.zeros_like(x)
        shift[:, j] = step * np.maximum(np.std(x, -1), 1e-3)
        delta = (layer_norm(x + shift, 1.0, epsilon=epsilon)
                 - layer_norm(x - shift, 1.0, epsilon=epsilon))
        want[:, j] = (delta * d).sum(-1) / (2 * shift[:, j])
    np.testing.assert_array_equal(got[1:3], 0.0)
    for row in (0, 3, 4, 5):
        np.testing.assert_allclose(got[row], want[row], rtol=1e-5, atol=1e-5 * np.abs(want[row]).max())
