"""Shared test fixtures and helpers: the kinds of cell, seeding, weights by name, dtype-policy
hygiene."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_recnorm.kinds import KINDS, Kind  # noqa: E402


def kinds(*, family=None, layer=False):
    """The kinds of cell of `keras_recnorm.kinds.KINDS`, in the table's order: those of
    `family` (any when None), and with `layer=True` only those that have a whole-sequence
    layer. A test parametrized over them picks up every new kind; its ids are the kinds'
    names (`pytest_make_parametrize_id` below)."""
    return [k for k in KINDS
            if family in (None, k.family) and (k.layer is not None or not layer)]


def pytest_make_parametrize_id(config, val, argname):
    if isinstance(val, Kind):
        return val.name
    return None


def weight_name(variable):
    """The name DESIGN.md fixes for a weight (`kernel`, `input_gamma`, ...), whatever the
    layer and cell are called: the last component of its path."""
    return variable.path.split("/")[-1]


def weights_by_name(layer):
    """`{name: np.ndarray}` of every weight of `layer` (or of the single cell it wraps).

    Raises if two weights share a name (e.g. a Bidirectional or stacked layer): pass the
    inner layer or cell then.
    """
    result = {}
    for variable in layer.weights:
        name = weight_name(variable)
        if name in result:
            raise ValueError(f"Two weights are named {name!r} in {layer.name}; pass one cell.")
        result[name] = np.array(variable.numpy())
    return result


def set_weights_by_name(layer, values):
    """Assign `values[name]` to each weight of `layer` with that name."""
    names = {weight_name(v): v for v in layer.weights}
    missing = set(values) - set(names)
    if missing:
        raise KeyError(f"{layer.name} has no weights named {sorted(missing)}")
    for name, value in values.items():
        names[name].assign(np.asarray(value, dtype=names[name].dtype))


def randomize_weights(layer, rng, scale=0.5):
    """Give every weight of `layer` random values with γ away from 1 and β away from 0, so
    that a test cannot pass by ignoring a gain, a shift or a bias. Returns them by name."""
    values = {}
    for variable in layer.weights:
        name = weight_name(variable)
        shape = tuple(variable.shape)
        if "gamma" in name:
            value = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
        elif "variance" in name:
            value = rng.uniform(0.5, 2.0, shape)
        else:
            value = rng.normal(0.0, scale, shape)
        values[name] = value
    set_weights_by_name(layer, values)
    return weights_by_name(layer)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state (NumPy, Python, backend)."""
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(20160721)


@pytest.fixture
def float32_policy_afterwards():
    """Let a test change the global dtype policy; restore float32 whatever happens."""
    yield
    keras.config.set_dtype_policy("float32")


def to_numpy(x):
    if hasattr(x, "detach"):  # a torch tensor that may require grad
        x = x.detach()
    return np.array(keras.ops.convert_to_numpy(x))


def graph_function(fn):
    """`fn` as `fit` runs it: a `tf.function` on TensorFlow, as it is on other backends."""
    if keras.backend.backend() != "tensorflow":
        return fn
    import tensorflow as tf

    return tf.function(fn)


def assert_padded_states_match_alone(model, padded, sequences):
    """Each row of a padded batch ends in the same states as its sequence run alone.
    Returns the padded batch's final states."""
    _, *padded_states = model(padded)
    for row, sequence in enumerate(sequences):
        _, *alone = model(sequence[None, :])
        for got, want in zip(padded_states, alone):
            np.testing.assert_allclose(to_numpy(got)[row], to_numpy(want)[0], atol=1e-5)
    return padded_states


def run_example(script, argv, backend, cwd, env=None, timeout=300):
    """Runs `examples/<script>` in a fresh process on `backend` (for device setups that
    must come before TensorFlow/JAX start); asserts it succeeds and returns its stdout."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "KERAS_BACKEND": backend,
           "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    result = subprocess.run([sys.executable, str(root / "examples" / script), *map(str, argv)],
                            env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


# -- backends ------------------------------------------------------------------------------
# `make test` runs the library tests on torch too (KERAS_BACKEND=torch). What can't run
# there is listed here by test name, with the reason, rather than silently passing.

_TF_GRADIENTS = "takes gradients with tf.GradientTape and tf.Variable (TensorFlow only)"
_DTYPE_STRINGS = (
    "asserts `tensor.dtype == 'float16'`-style strings; torch tensors report torch.float16 "
    "(test-side: compare keras.backend.standardize_dtype(x.dtype))"
)
_SLOW_FIT = (
    "trains to convergence: minutes in torch's eager loop on a CPU; learning is tested on "
    "TensorFlow and JAX"
)
TORCH_SKIPS = {
    "test_export_saved_model_at_two_lengths": "SavedModel export needs TensorFlow",
    "test_export_serves_with_population_statistics": "SavedModel export needs TensorFlow",
    "test_lstm_gradients_match_finite_differences": _TF_GRADIENTS,
    "test_layer_gradients_equal_the_cell_in_rnn": _TF_GRADIENTS,
    "test_constant_inputs_zero_variance": _TF_GRADIENTS,
    "test_large_inputs": _TF_GRADIENTS,
    "test_batch_of_one_in_training": _TF_GRADIENTS,
    "test_zero_batch_variance_with_zero_initial_state": _TF_GRADIENTS,
    "test_zero_initial_state_only_at_the_first_step": _TF_GRADIENTS,
    "test_mixed_precision": _DTYPE_STRINGS,
    "test_mixed_float16": _DTYPE_STRINGS,
    "test_layer_norm_float16_is_computed_in_float32": _DTYPE_STRINGS,
    "test_layer_norm_float64_keeps_float64_precision": _DTYPE_STRINGS,
    "test_recompute_population_statistics_of_a_model_taking_raw_strings": (
        "a model with a string input: torch tensors hold no strings (on torch, Keras runs "
        "TextVectorization in tf.data, outside the model)"
    ),
    "test_fit_learns": _SLOW_FIT,
    "test_fit_learns_to_remember_the_first_step": _SLOW_FIT,
    "test_bn_lstm_converges_in_no_more_epochs_than_lstm": _SLOW_FIT,
}

def pytest_collection_modifyitems(config, items):
    if keras.backend.backend() != "torch":
        return
    for item in items:
        name = getattr(item, "originalname", None) or item.name
        if name in TORCH_SKIPS:
            item.add_marker(pytest.mark.skip(reason=f"torch: {TORCH_SKIPS[name]}"))
