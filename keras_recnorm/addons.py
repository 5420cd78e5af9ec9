"""TensorFlow Addons-compatible cells, for models trained with `tfa.rnn` under Keras 2.

TensorFlow Addons (end of life May 2024) has no Keras 3 port. Its `LayerNormLSTMCell` and
`LayerNormSimpleRNNCell` (Addons 0.23) are reproduced here exactly: same constructor
arguments, same weights in the same nested layers, same arithmetic. A model rebuilt in
Keras 3 code with these cells takes the weights saved under Keras 2
(`model.load_weights("model.weights.h5")`, or the whole-model `"model.h5"`) and predicts
what it predicted there; `load_model` opens a whole-model `.h5` saved with Addons.

These are not the paper's cells. Addons' LSTM normalizes the input and recurrent terms
each with a gain *and* a shift, and carries the normalized cell state; the paper-exact
`keras_recnorm.LayerNormLSTMCell` shifts with the bias only and carries the raw state
(docs/equations.md). Use these cells to keep trained weights; for new models use the
paper-exact ones. Migration guide: docs/migrating_from_addons.md.

The module registers its cells with Keras when imported, which `import keras_recnorm`
does: a `.keras` file that uses them loads with no extra code.

Example:

>>> import numpy as np, keras
>>> from keras_recnorm.addons import LayerNormLSTMCell
>>> layer = keras.layers.RNN(LayerNormLSTMCell(8), return_state=True)
>>> output, h, c = layer(np.ones((2, 5, 3), "float32"))
>>> [w.path.split("/", 2)[-1] for w in layer.weights][3:5]
['kernel_norm/gamma', 'kernel_norm/beta']
"""

import json
import os
import shutil
import tempfile
import zipfile

import keras
from keras import ops

from keras_recnorm.base import GatedCell, NormalizedCell, check_positive
from keras_recnorm.steps import KernelsWeights, lstm_gates, lstm_output

PACKAGE = "keras_recnorm.addons"
GUIDE = "docs/migrating_from_addons.md"

register = keras.saving.register_keras_serializable(package=PACKAGE)

__all__ = ["LayerNormLSTMCell", "LayerNormSimpleRNNCell", "keras2_hard_sigmoid", "load_model"]


@register
def keras2_hard_sigmoid(x):
    """Keras 2's hard sigmoid, `clip(0.2 * x + 0.5, 0, 1)`.

    Keras 3's `hard_sigmoid` is another function (`clip(x / 6 + 0.5, 0, 1)`); the cells
    of this module read the name `"hard_sigmoid"` as Keras 2 did, so that code and
    files written for Addons keep their meaning.

    Args:
        x: a tensor.

    Returns:
        A tensor of the same shape and dtype.

    Example:

    >>> import numpy as np
    >>> from keras_recnorm.addons import keras2_hard_sigmoid
    >>> np.asarray(keras2_hard_sigmoid(np.array([-3.0, 0.0, 1.0]))).round(2).tolist()
    [0.0, 0.5, 0.7]
    """
    return ops.clip(0.2 * x + 0.5, 0.0, 1.0)


def _keras2_activation(activation):
    """An activation as Keras 2 read it: only `"hard_sigmoid"` changed meaning in Keras 3."""
    return keras2_hard_sigmoid if activation == "hard_sigmoid" else activation


# The constructor arguments both Addons cells share, name for name, with this package's
# cells: forwarded as they are.
_SHARED_ARGUMENTS = (
    "use_bias",
    "kernel_initializer",
    "recurrent_initializer",
    "bias_initializer",
    "kernel_regularizer",
    "recurrent_regularizer",
    "bias_regularizer",
    "kernel_constraint",
    "recurrent_constraint",
    "bias_constraint",
    "dropout",
    "recurrent_dropout",
    "seed",
)


def _arguments_of_both(arguments):
    """The `_SHARED_ARGUMENTS` of an Addons cell's constructor, from its `locals()`."""
    return {name: arguments[name] for name in _SHARED_ARGUMENTS}


def _layer_norm(cell, name, center=True):
    """Addons' normalization sublayer: a `keras.layers.LayerNormalization` over the last
    axis, with the cell's dtype policy, tracked under the attribute name Addons used."""
    return keras.layers.LayerNormalization(
        epsilon=cell.epsilon,
        center=center,
        gamma_initializer=cell.gamma_initializer,
        beta_initializer=cell.beta_initializer,
        gamma_regularizer=cell.gamma_regularizer,
        gamma_constraint=cell.gamma_constraint,
        name=name,
        dtype=cell.dtype_policy,
    )


def _without(config, names):
    return {key: value for key, value in config.items() if key not in names}


@register
class LayerNormLSTMCell(GatedCell):
    """TensorFlow Addons' `LayerNormLSTMCell` (Addons 0.23), for weights trained with it.

    ```
    z  = kernel_norm(x·kernel) + recurrent_norm(h·recurrent_kernel) + bias
    i, f, g, o = split(z, 4)
    c' = state_norm(σ(f)·c + σ(i)·tanh(g))
    h' = σ(o)·tanh(c')
    ```
    Each `*_norm` is a `keras.layers.LayerNormalization` sublayer with a gain `gamma` and a
    shift `beta`, normalizing all `4 * units` gate pre-activations jointly (`state_norm`:
    the `units` of the cell state). The state is `[h, c']`: unlike the paper, the
    *normalized* cell state is carried. The weights are Addons': `kernel`,
    `recurrent_kernel`, `bias`, then `kernel_norm/gamma`, `kernel_norm/beta`,
    `recurrent_norm/gamma`, `recurrent_norm/beta`, `state_norm/gamma`, `state_norm/beta`,
    so weights saved from an Addons model load into a model rebuilt with this cell.

    Not the paper's LSTM: for new models prefer `keras_recnorm.LayerNormLSTMCell`
    (docs/equations.md says how they differ; docs/migrating_from_addons.md how to move).

    Args:
        units: positive integer, dimensionality of the output space.
        activation: activation of the candidate and of the cell output (default `tanh`).
        recurrent_activation: activation of the gates (default `sigmoid`). The name
            `"hard_sigmoid"` means Keras 2's (`keras2_hard_sigmoid`), as it did in Addons.
        use_bias: whether to add `bias`.
        kernel_initializer: initializer of `kernel` (default `glorot_uniform`).
        recurrent_initializer: initializer of `recurrent_kernel` (default `orthogonal`).
        bias_initializer: initializer of `bias` (default `zeros`).
        unit_forget_bias: if `True` (default), the forget gate's bias starts at 1.
        kernel_regularizer: regularizer of `kernel`.
        recurrent_regularizer: regularizer of `recurrent_kernel`.
        bias_regularizer: regularizer of `bias`.
        kernel_constraint: constraint of `kernel`.
        recurrent_constraint: constraint of `recurrent_kernel`.
        bias_constraint: constraint of `bias`.
        dropout: fraction of the input units to drop, in [0, 1). One mask per sequence.
        recurrent_dropout: fraction of the recurrent state's units to drop, in [0, 1).
        norm_gamma_initializer: initializer of the three normalizations' gains (`ones`).
        norm_beta_initializer: initializer of their shifts (`zeros`).
        norm_epsilon: added to the variance inside the square root (default 1e-3, as
            Addons; the paper-exact cells default to 1e-5).
        seed: random seed of the dropout masks.
        **kwargs: the arguments of `keras.layers.Layer` (`name`, `dtype`, ...).

    Call arguments:
        inputs: a 2D tensor `(batch, features)`, the input at one time step.
        states: `[h, c]`, each `(batch, units)`, the previous step's state.
        training: whether dropout is applied.

    Returns:
        `(h', [h', c'])`: the output `(batch, units)` and the next state.

    Example:

    >>> import numpy as np, keras
    >>> from keras_recnorm.addons import LayerNormLSTMCell
    >>> layer = keras.layers.RNN(LayerNormLSTMCell(8, norm_epsilon=1e-3))
    >>> layer(np.ones((2, 5, 3), "float32")).shape
    TensorShape([2, 8])
    """

    weights_type = KernelsWeights

    def __init__(
        self,
        units,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        unit_forget_bias=True,
        kernel_regularizer=None,
        recurrent_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        recurrent_constraint=None,
        bias_constraint=None,
        dropout=0.0,
        recurrent_dropout=0.0,
        norm_gamma_initializer="ones",
        norm_beta_initializer="zeros",
        norm_epsilon=1e-3,
        seed=None,
        **kwargs,
    ):
        # Keras 2's LSTMCell config holds `implementation`; there is one here.
        kwargs.pop("implementation", None)
        check_positive("norm_epsilon", norm_epsilon)
        super().__init__(
            units,
            activation=_keras2_activation(activation),
            recurrent_activation=_keras2_activation(recurrent_activation),
            **_arguments_of_both(locals()),
            # The LN arguments under Addons' names.
            gamma_initializer=norm_gamma_initializer,
            beta_initializer=norm_beta_initializer,
            epsilon=norm_epsilon,
            # Not Addons' arguments: passing one is a TypeError, as it was in Addons.
            gamma_regularizer=None,
            beta_regularizer=None,
            gamma_constraint=None,
            beta_constraint=None,
            **kwargs,
        )
        self.unit_forget_bias = unit_forget_bias
        self.state_size = [self.units, self.units]
        self.kernel_norm = _layer_norm(self, "kernel_norm")
        self.recurrent_norm = _layer_norm(self, "recurrent_norm")
        self.state_norm = _layer_norm(self, "state_norm")

    def build(self, input_shape):
        width = 4 * self.units
        self.add_kernels(input_shape, width)
        self.add_bias(width, forget_gate_bias=self.unit_forget_bias)
        # Created after the cell's own weights: the order Addons saved them in.
        self.kernel_norm.build((None, width))
        self.recurrent_norm.build((None, width))
        self.state_norm.build((None, self.units))

    def step_forward(self, weights, x, h_in, states, mask=None, forward_only=False):
        """One step of the equations above (`keras_recnorm.steps`; the cell runs only in
        Keras's loop, so it has no `step_backward`): `((h', c'), (), ())`."""
        z = self.kernel_norm(ops.matmul(x, weights.kernel)) + self.recurrent_norm(
            ops.matmul(h_in, weights.recurrent_kernel)
        )
        if weights.bias is not None:
            z = z + weights.bias
        gates, c_new = lstm_gates(z, states[1], self.recurrent_activation, self.activation)
        # Addons carries the normalized cell state (the paper carries the raw one).
        c_new = self.state_norm(c_new)
        h_new, _ = lstm_output(gates, c_new, self.activation)
        return (h_new, c_new), (), ()

    def get_config(self):
        config = _without(super().get_config(), {
            "gamma_regularizer", "beta_regularizer", "gamma_constraint", "beta_constraint",
            "gamma_initializer", "beta_initializer", "epsilon",
        })
        config.update(
            unit_forget_bias=self.unit_forget_bias,
            norm_gamma_initializer=keras.initializers.serialize(self.gamma_initializer),
            norm_beta_initializer=keras.initializers.serialize(self.beta_initializer),
            norm_epsilon=self.epsilon,
        )
        return config


@register
class LayerNormSimpleRNNCell(NormalizedCell):
    """TensorFlow Addons' `LayerNormSimpleRNNCell` (Addons 0.23), for weights trained with it.

    ```
    h' = activation(layernorm(x·kernel + h·recurrent_kernel) + bias)
    ```
    `layernorm` is a `keras.layers.LayerNormalization` sublayer with a gain `gamma` and no
    shift (`bias` is the shift). The arithmetic is that of `keras_recnorm.LayerNormSimpleRNNCell`;
    what differs is where the gain lives (Addons' `layernorm/gamma`, so that Addons' saved
    weights load) and the argument names (`layernorm_epsilon`).

    Args:
        units: positive integer, dimensionality of the output space.
        activation: activation of the output (default `tanh`). The name
            `"hard_sigmoid"` means Keras 2's (`keras2_hard_sigmoid`), as it did in Addons.
        use_bias: whether to add `bias`.
        layernorm_epsilon: added to the variance inside the square root (default 1e-5).
        kernel_initializer: initializer of `kernel` (default `glorot_uniform`).
        recurrent_initializer: initializer of `recurrent_kernel` (default `orthogonal`).
        bias_initializer: initializer of `bias` (default `zeros`).
        gamma_initializer: initializer of the normalization's gain (default `ones`).
        kernel_regularizer: regularizer of `kernel`.
        recurrent_regularizer: regularizer of `recurrent_kernel`.
        bias_regularizer: regularizer of `bias`.
        gamma_regularizer: regularizer of the gain.
        kernel_constraint: constraint of `kernel`.
        recurrent_constraint: constraint of `recurrent_kernel`.
        bias_constraint: constraint of `bias`.
        gamma_constraint: constraint of the gain.
        dropout: fraction of the input units to drop, in [0, 1). One mask per sequence.
        recurrent_dropout: fraction of the recurrent state's units to drop, in [0, 1).
        seed: random seed of the dropout masks.
        **kwargs: the arguments of `keras.layers.Layer` (`name`, `dtype`, ...).

    Call arguments:
        inputs: a 2D tensor `(batch, features)`, the input at one time step.
        states: `[h]`, `(batch, units)`, the previous step's output.
        training: whether dropout is applied.

    Returns:
        `(h', [h'])`: the output `(batch, units)` and the next state.

    Example:

    >>> import numpy as np, keras
    >>> from keras_recnorm.addons import LayerNormSimpleRNNCell
    >>> layer = keras.layers.RNN(LayerNormSimpleRNNCell(8), return_sequences=True)
    >>> layer(np.ones((2, 5, 3), "float32")).shape
    TensorShape([2, 5, 8])
    """

    weights_type = KernelsWeights

    def __init__(
        self,
        units,
        activation="tanh",
        use_bias=True,
        layernorm_epsilon=1e-5,
        # Addons' order (positional arguments follow it), grouped by kind of argument.
        kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
        bias_initializer="zeros", gamma_initializer="ones",
        kernel_regularizer=None, recurrent_regularizer=None,
        bias_regularizer=None, gamma_regularizer=None,
        kernel_constraint=None, recurrent_constraint=None,
        bias_constraint=None, gamma_constraint=None,
        dropout=0.0,
        recurrent_dropout=0.0,
        seed=None,
        **kwargs,
    ):
        check_positive("layernorm_epsilon", layernorm_epsilon)
        super().__init__(
            units,
            activation=_keras2_activation(activation),
            **_arguments_of_both(locals()),
            epsilon=layernorm_epsilon,
            gamma_initializer=gamma_initializer,
            gamma_regularizer=gamma_regularizer,
            gamma_constraint=gamma_constraint,
            # No shift: passing one of these is a TypeError, as it was in Addons.
            beta_initializer=None,
            beta_regularizer=None,
            beta_constraint=None,
            **kwargs,
        )
        self.state_size = self.units
        self.layernorm = _layer_norm(self, "layernorm", center=False)

    def build(self, input_shape):
        self.add_kernels(input_shape, self.units)
        self.add_bias(self.units)
        self.layernorm.build((None, self.units))

    def step_forward(self, weights, x, h_in, states, mask=None, forward_only=False):
        """One step of the equation above (`keras_recnorm.steps`; Keras's loop only):
        `((h',), (), ())`."""
        summed = ops.matmul(x, weights.kernel) + ops.matmul(h_in, weights.recurrent_kernel)
        normalized = self.layernorm(summed)
        if weights.bias is not None:
            normalized = normalized + weights.bias
        return (self.activation(normalized),), (), ()

    def get_config(self):
        config = _without(super().get_config(), {
            "beta_initializer", "beta_regularizer", "beta_constraint", "epsilon",
        })
        config["layernorm_epsilon"] = self.epsilon
        return config


# -- whole models saved with Addons ------------------------------------------------------

# Addons' registered names (`Addons>...`) and class names, as Keras 2 wrote them.
_ADDONS_CELLS = {"LayerNormLSTMCell": LayerNormLSTMCell,
                 "LayerNormSimpleRNNCell": LayerNormSimpleRNNCell}
# What Keras 2 wrote into a layer's config and Keras 3's layers don't take.
_KERAS2_ONLY_ARGUMENTS = ("time_major",)
# The keys under which a layer's config holds other layers.
_NESTED_LAYERS = ("cell", "cells", "layer", "backward_layer")


def _keras3_config(node, key=None):
    """A Keras 2 model config made loadable by Keras 3: Addons' cells named as this module
    registers them, Keras 2-only layer arguments dropped, Keras 2's layout of a model's
    single input and output made Keras 3's. `key`: the key `node` is stored under."""
    if isinstance(node, list):
        return [_keras3_config(item, key) for item in node]
    if not isinstance(node, dict):
        return node
    node = {inner: _keras3_config(value, inner) for inner, value in node.items()}
    name = node.get("class_name")
    if isinstance(name, str) and name.split(">")[-1] in _ADDONS_CELLS and (
        name.startswith("Addons>") or str(node.get("registered_name")).startswith("Addons>")
        or str(node.get("module", "")).startswith("tensorflow_addons")
    ):
        name = name.split(">")[-1]
        node.update(class_name=name, module=__name__, registered_name=f"{PACKAGE}>{name}")
    if isinstance(node.get("config"), dict) and "class_name" in node:
        node["config"] = _without(node["config"], _KERAS2_ONLY_ARGUMENTS)
        # Keras 2 before 2.13 wrote no `module`; a layer nested in another (a cell in
        # `RNN` or `StackedRNNCells`, the layer in `Bidirectional`) is then not found by
        # Keras 3. (The model's own layers are read by Keras 3's Keras 2 loader.)
        if "module" not in node and key in _NESTED_LAYERS and hasattr(keras.layers, name):
            node["module"] = "keras.layers"
    for ends in ("input_layers", "output_layers"):
        # Keras 2 lists a one-input model's input as `[[name, 0, 0]]`; Keras 3 then
        # expects a list of one tensor and warns at every call given the tensor itself.
        if name is None and _one_entry(node.get(ends)):
            node[ends] = node[ends][0]
    return node


def _one_entry(entries):
    return isinstance(entries, list) and len(entries) == 1 and isinstance(entries[0], list)


def _cannot_load(path, what, weights=None):
    """The one-line error for a file Keras 3 can't load as a model; `weights`: where the
    user's weights are to be found, when not in `path` itself."""
    weights = weights or f"call model.load_weights({path!r}), which reads it"
    return ValueError(
        f"{path} is {what}, which Keras 3 can't load as a model: rebuild the model in "
        f"Keras 3 code (keras_recnorm.addons' cells in place of tfa.rnn's) and {weights}; "
        f"see {GUIDE}."
    )


def _zip_keras_version(path):
    with zipfile.ZipFile(path) as archive:
        if "metadata.json" not in archive.namelist():
            return None
        return str(json.loads(archive.read("metadata.json")).get("keras_version", ""))


def load_model(filepath, custom_objects=None, compile=False):
    """Loads a whole model saved with TensorFlow Addons' recurrent cells under Keras 2.

    A Keras 2 `model.save("model.h5")` file is opened with `keras.saving.load_model` after
    its stored architecture is translated (in a temporary copy; the file itself is not
    changed): `tfa.rnn.LayerNormLSTMCell` and `tfa.rnn.LayerNormSimpleRNNCell` become this
    module's cells (same weights, same arithmetic), and Keras 2-only arguments that Keras 3
    rejects (`time_major`) are dropped. A Keras 3 `.keras` or `.h5` file is loaded as
    `keras.saving.load_model` would, with this module's cells known.

    Keras 3 can't read a Keras 2 `.keras` file or a SavedModel directory: for those, and
    for a weights-only file, a `ValueError` says to rebuild the model in code and load the
    weights (`model.load_weights` reads Keras 2's `.weights.h5`, `.h5` and `.keras`
    files); docs/migrating_from_addons.md shows how.

    Args:
        filepath: path of a `.h5` (or `.hdf5`) file, or of a Keras 3 `.keras` file.
        custom_objects: optional dict of the model's other custom classes and functions
            by name, as for `keras.saving.load_model`.
        compile: whether to compile the model from its saved training configuration
            (default `False`: a Keras 2 optimizer's configuration and state may not carry
            over; compile the loaded model yourself).

    Returns:
        The Keras 3 model, with the saved weights.

    Example:

    ```python
    from keras_recnorm import addons

    model = addons.load_model("trained_with_addons.h5")
    model.predict(x)  # what the Addons model predicted under TF 2.15
    ```
    """
    path = os.fspath(filepath)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No file or directory at `filepath` {path!r}.")
    objects = {**_ADDONS_CELLS, **(custom_objects or {})}
    if os.path.isdir(path):
        raise _cannot_load(
            path, "a directory (a TensorFlow SavedModel?)",
            weights="load its weights saved under TF 2.15 with "
            "model.save_weights('model.weights.h5')",
        )
    if zipfile.is_zipfile(path):
        if _zip_keras_version(path).startswith("2."):
            raise _cannot_load(path, "a Keras 2 `.keras` file")
        return keras.saving.load_model(path, custom_objects=objects, compile=compile)

    import h5py  # a dependency of Keras

    if not h5py.is_hdf5(path):
        raise ValueError(
            f"{path} is neither an HDF5 (`.h5`) nor a `.keras` file; load_model reads "
            f"whole models saved with `model.save`."
        )
    with h5py.File(path, "r") as stored:
        if "model_config" not in stored.attrs:
            raise _cannot_load(path, "a weights-only file")
        config = stored.attrs["model_config"]
    if isinstance(config, bytes):
        config = config.decode("utf-8")
    with tempfile.TemporaryDirectory() as workdir:
        copy = os.path.join(workdir, "model.h5")
        shutil.copyfile(path, copy)
        with h5py.File(copy, "r+") as stored:
            stored.attrs["model_config"] = json.dumps(_keras3_config(json.loads(config)))
        return keras.saving.load_model(copy, custom_objects=objects, compile=compile)
