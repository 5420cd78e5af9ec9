"""Bad arguments and inputs to the whole-sequence layers are reported as the layer's, in
terms of what the user passed (not of the cell the layer builds inside)."""

import keras
import numpy as np
import pytest

from keras_recnorm import LayerNormLSTM
from tests.conftest import kinds


def layer_maker(kind):
    extra = {"max_timesteps": 3} if kind.batch_norm else {}
    return lambda **kw: kind.layer(4, **extra, **kw)


# Every whole-sequence layer of keras_recnorm.kinds.KINDS, by class name.
LAYERS = {kind.layer.__name__: layer_maker(kind) for kind in kinds(layer=True)}


@pytest.mark.parametrize("name", LAYERS)
def test_unknown_argument_is_named_as_the_layers(name):
    with pytest.raises(ValueError) as info:
        LAYERS[name](foo=1)
    message = str(info.value)
    assert message.startswith(f"Unrecognized keyword arguments passed to {name}: ['foo']")
    assert "Cell:" not in message


@pytest.mark.parametrize("name", LAYERS)
def test_layer_and_cell_arguments_are_still_accepted(name):
    layer = LAYERS[name](
        dropout=0.1, name="mine", activity_regularizer="l2", return_sequences=True, dtype="float32"
    )
    assert layer.name == "mine" and layer.cell.dropout == 0.1 and layer.return_sequences


@pytest.mark.parametrize("name", LAYERS)
def test_rank_2_input_is_described_by_the_shape_passed(name):
    with pytest.raises(ValueError) as info:
        LAYERS[name]()(np.zeros((2, 5), "float32"))
    message = str(info.value)
    assert f"{name} expects sequences of rank 3" in message and "got shape (2, 5)" in message
    assert "(2,)" not in message  # the step shape the cell would see


def test_rank_2_symbolic_input_too():
    with pytest.raises(ValueError, match=r"LayerNormLSTM expects .* got shape \(None, 5\)"):
        keras.Sequential([keras.Input((5,)), LayerNormLSTM(3)])


@pytest.mark.parametrize("name", [n for n in LAYERS if n.startswith("BatchNorm")])
def test_stateful_batch_norm_layer_refuses_another_batch_size(name):
    """The BN layers run their own RNN call (the step counter stays float32): it keeps
    Keras's refusal of a batch that doesn't match a stateful layer's states."""
    layer = LAYERS[name](stateful=True)
    layer(np.ones((2, 3, 2), "float32"))
    with pytest.raises(ValueError, match=rf"{name} is stateful with batch size 2 .* got a batch of 3"):
        layer(np.ones((3, 3, 2), "float32"))
    assert keras.ops.convert_to_numpy(layer.states[-1]).ravel().tolist() == [3.0, 3.0]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a traced unknown length")
@pytest.mark.parametrize("name", [n for n in LAYERS if n.startswith("BatchNorm")])
def test_unrolled_batch_norm_layer_needs_a_known_length(name):
    import tensorflow as tf

    layer = LAYERS[name](unroll=True)
    layer(np.ones((2, 3, 2), "float32"))
    traced = tf.function(layer, input_signature=[tf.TensorSpec((None, None, 2), "float32")])
    with pytest.raises(ValueError, match=rf"{name}: `unroll=True` needs a known number of timesteps"):
        traced(np.ones((2, 3, 2), "float32"))
