"""The Keras internals keras_recnorm needs, in one place.

Keras's public API has no equivalent for these, so they are imported from
`keras.src` here and nowhere else; `tests/test_compat.py` checks each of them on the
oldest (`.ci/oldest.txt`) and the newest supported Keras, so a Keras release that moves one
fails there first.

- `DropoutRNNCell`: `keras.layers.RNN` prepares and resets a cell's dropout masks only when
  the cell is an instance of this class, so our cells must subclass the class itself.
- `keep_input_dtypes`: `Layer.__call__` casts every floating argument to the compute dtype;
  the BN cells and layers must receive their step counter uncast (a bfloat16 counter
  stops at 256), so they turn that off and cast the other arguments themselves.
- `patch_tf2onnx`: Keras's fix of tf2onnx for NumPy 2, applied by Keras's own ONNX export.
- `all_layers`: every layer a model holds, nested ones and cells inside `RNN` layers
  included (Keras tracks them; `model.layers` lists only the top level).
- `is_functional`, `run_through_graph`: whether a model is functional, and its layer calls in order, on new inputs, as
  `keras.models.clone_model` walks them; its public `call_function` can't add inputs (the
  states of `keras_recnorm.streaming`).
"""

import keras
from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell  # noqa: F401


def keep_input_dtypes(layer):
    """Keras will pass `layer`'s call arguments in the dtypes they come in (it casts
    floating ones to the compute dtype otherwise)."""
    layer._convert_input_args = False


def all_layers(model, include_self=True):
    """Every layer of `model` (itself first with `include_self`), depth first: nested models'
    layers, wrapped layers and the cells of `RNN` layers included."""
    return list(model._flatten_layers(include_self=include_self))


def patch_tf2onnx():
    """Applies Keras's tf2onnx patch; returns whether this Keras has one (3.7 has none).
    Without it, tf2onnx converts graphs that don't reach its NumPy 1 names anyway."""
    try:
        from keras.src.export.tf2onnx_lib import patch_tf2onnx as patch
    except ImportError:
        return False
    patch()
    return True


def is_functional(model):
    """Whether `model` is a functional model (`keras.Model(inputs, outputs)`, not a
    `Sequential` nor a subclassed model)."""
    from keras.src.models.functional import Functional

    return isinstance(model, Functional) and not isinstance(model, keras.Sequential)


def run_through_graph(model, inputs, call):
    """Runs a functional model's graph on `inputs` (one tensor per model input), calling
    `call(layer, *args, **kwargs)` at each layer call in order; returns the new outputs."""
    return model._run_through_graph(inputs, operation_fn=lambda layer: layer, call_fn=call)
