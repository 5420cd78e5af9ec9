"""Shared test fixtures and helpers: seeding, weights by name, dtype-policy hygiene."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


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
    return np.array(keras.ops.convert_to_numpy(x))


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
