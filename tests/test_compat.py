"""keras_recnorm.compat: the Keras internals we rely on still are what we think they are.

Runs on the newest and on the oldest supported Keras (`make test`), so that a Keras release
that moves or changes one of them fails here, by name, rather than somewhere inside a cell.
"""

import keras
import numpy as np
import pytest

from keras_recnorm import LayerNormLSTMCell, compat
from tests.conftest import to_numpy


def test_dropout_rnn_cell_is_the_class_keras_rnn_recognizes():
    # keras.layers.RNN prepares and resets dropout masks only for instances of this class.
    assert issubclass(keras.layers.LSTMCell, compat.DropoutRNNCell)
    assert isinstance(LayerNormLSTMCell(3), compat.DropoutRNNCell)
    for method in ("get_dropout_mask", "get_recurrent_dropout_mask", "reset_dropout_mask"):
        assert callable(getattr(compat.DropoutRNNCell, method))


def test_keras_rnn_gives_our_cell_a_fresh_dropout_mask_per_batch():
    layer = keras.layers.RNN(LayerNormLSTMCell(4, dropout=0.5, seed=1))
    x = np.ones((8, 3, 5), "float32")
    first = to_numpy(layer(x, training=True))
    second = to_numpy(layer(x, training=True))
    assert not np.allclose(first, second)  # a new mask: RNN reset the cell's
    assert layer.cell._dropout_mask is None  # and cleared it after the call


def test_patch_tf2onnx_applies_where_keras_has_it():
    pytest.importorskip("tf2onnx")
    applied = compat.patch_tf2onnx()
    try:
        import keras.src.export.tf2onnx_lib  # noqa: F401

        assert applied
    except ImportError:
        assert not applied


def test_keep_input_dtypes_leaves_a_layers_arguments_uncast():
    """Keras casts floating call arguments to the compute dtype unless told not to: the BN
    cells rely on that to receive their step counter uncast."""

    class Echo(keras.layers.Layer):
        def call(self, x):
            return keras.ops.zeros((1,), dtype=x.dtype)

    x = keras.ops.ones((2,), dtype="float64")
    assert keras.backend.standardize_dtype(Echo()(x).dtype) == "float32"
    kept = Echo()
    compat.keep_input_dtypes(kept)
    assert keras.backend.standardize_dtype(kept(x).dtype) == "float64"


def test_all_layers_reaches_nested_models_and_rnn_cells():
    """recompute_population_statistics finds the BN cells inside RNN layers and nested
    models, and export_litert checks every layer's dtype, through this walk."""
    inner = keras.Sequential([keras.Input((3, 2)), keras.layers.RNN(keras.layers.GRUCell(4), name="rnn")])
    outer = keras.Sequential([keras.Input((3, 2)), inner, keras.layers.Dense(1, name="head")])
    found = compat.all_layers(outer)
    assert found[0] is outer
    assert inner in found and inner.layers[0] in found and inner.layers[0].cell in found
    assert outer.layers[-1] in found
    assert outer not in compat.all_layers(outer, include_self=False)
