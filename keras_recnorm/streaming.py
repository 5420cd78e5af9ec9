"""Streaming inference: a trained model run on a few time steps at a time, its recurrent
state carried from one call to the next.

`to_streaming(model)` returns a model that takes a chunk of time steps and the states the
previous chunk left, and returns the chunk's outputs and the next states:

    [chunk (batch, k, ...), state_0, state_1, ...]  ->  [outputs, state_0, state_1, ...]

The chunk length `k` may change from call to call (1 included). From `initial_states(...)`
(zeros, step counters at 0), the chunks of a sequence give what the whole-sequence model
gives (`model.predict`), whatever the split: per-step outputs chunk by chunk, and after
each chunk, where the last recurrent layer has `return_sequences=False`, the output for the
sequence so far.

The states (`streaming_model.state_layout` lists them) are every recurrent layer's, in the
order the model calls its recurrent layers (a `Sequential`'s layer order), each layer's in
the order of its `return_state`: `h, c` (LSTM), `h` (GRU, SimpleRNN), then `step` for a
batch-normalized cell, the number of real steps each sample has seen (float32 under every
dtype policy, so it counts exactly past `max_timesteps` and past 256 under
`mixed_bfloat16`; steps past `max_timesteps` read the last slot's population statistics);
inside `StackedRNNCells`, each cell's in turn. `h` and `c` have the layer's compute dtype.

What can't stream is refused with a one-line `ValueError` naming the layer: `Bidirectional`
and `go_backwards=True` (they read a sequence from its end), and layers that mix time steps
(pooling, convolution or attention over time, `Flatten` or `Reshape` of the time axis).
Layers after a recurrent layer with `return_sequences=False` see one vector per sample and
may be anything. A model whose first layer is `TextVectorization` streams from token ids:
the streaming model starts after it.

Docs: docs/streaming.md (state layout, TF Serving, LiteRT on a device).

Example:

>>> import numpy as np, keras
>>> from keras_recnorm import BatchNormLSTM
>>> from keras_recnorm.streaming import initial_states, to_streaming
>>> model = keras.Sequential([keras.Input((None, 3)),
...                           BatchNormLSTM(4, max_timesteps=5, return_sequences=True),
...                           keras.layers.Dense(2)])
>>> streaming = to_streaming(model)
>>> [(s.layer, s.name, s.size, s.dtype) for s in streaming.state_layout]  # doctest: +ELLIPSIS
[('batch_norm_lstm...', 'h', 4, 'float32'), (..., 'c', 4, 'float32'), (..., 'step', 1, 'float32')]
>>> x = np.random.default_rng(0).normal(size=(2, 9, 3)).astype("float32")
>>> states = initial_states(streaming, batch_size=2)
>>> pieces = []
>>> for chunk in np.split(x, [1, 4], axis=1):  # 1, 3 and 5 steps
...     outputs, *states = streaming.predict_on_batch([chunk, *states])
...     pieces.append(outputs)
>>> bool(np.allclose(np.concatenate(pieces, axis=1), model.predict(x, verbose=0), atol=1e-5))
True
"""

from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_recnorm import addons, compat
from keras_recnorm.base import check_positive_int
from keras_recnorm.kinds import KINDS

register = keras.saving.register_keras_serializable(package="keras_recnorm")

# The names of the streaming model's inputs and outputs (and of its export's signature).
CHUNK_NAME = "inputs"
OUTPUT_NAME = "outputs"
STATE_PREFIX = "state_"

__all__ = ["to_streaming", "initial_states", "is_streaming", "StreamingModel", "StateSpec"]


class StateSpec(NamedTuple):
    """One state of a streaming model.

    Attributes:
        index: its position among the states: input and output `state_<index>`.
        layer: the name of its recurrent layer in the model given to `to_streaming`.
        name: `"h"`, `"c"` or `"step"` (a batch-normalized cell's step counter); inside
            `StackedRNNCells`, prefixed with the cell's position (`"cell_1/h"`).
        size: its width; the state's shape is `(batch, size)`.
        dtype: its dtype, e.g. `"float32"`.
    """

    index: int
    layer: str
    name: str
    size: int
    dtype: str


# ----------------------------------------------------------------------------- cells


def _cells(cell):
    """The cells of a recurrent layer's cell: itself, or those of a `StackedRNNCells`."""
    if isinstance(cell, keras.layers.StackedRNNCells):
        return list(cell.cells)
    return [cell]


def _is_batch_norm_cell(cell):
    return isinstance(cell, tuple(k.cell for k in KINDS if k.batch_norm))


def _state_names(cell):
    """The names of a cell's states in its order, or `None` for a cell streaming does
    not know (it must know which state the output is, and which is a step counter)."""
    for k in KINDS:
        if isinstance(cell, k.cell):
            names = ["h", "c"] if k.recurrence == "lstm" else ["h"]
            return names + (["step"] if k.batch_norm else [])
    if isinstance(cell, (keras.layers.LSTMCell, addons.LayerNormLSTMCell)):
        return ["h", "c"]
    if isinstance(cell, (keras.layers.GRUCell, keras.layers.SimpleRNNCell, addons.LayerNormSimpleRNNCell)):
        return ["h"]
    return None


def _state_sizes(cell):
    sizes = cell.state_size
    return list(sizes) if isinstance(sizes, (list, tuple)) else [sizes]


# ------------------------------------------------------------------- one recurrent layer


@register
class StreamingRecurrence(keras.layers.Layer):
    """One recurrent layer of a streaming model: the layer run on a chunk from the states
    the previous chunk left.

    `layer` is a recurrent layer with `return_state=True` (a copy of the trained one, made
    by `to_streaming`). Called on `(chunk, states)`, the flat list of its states (see
    `keras_recnorm.streaming`), it returns `[outputs, *next_states]`, where:

    - a step counter of a batch-normalized cell is the one given plus the chunk's real
      (unmasked) steps of each sample, in float32 (`keras.layers.RNN` carries a cell's
      counter in the compute dtype, which stops counting at 256 under `mixed_bfloat16`);
    - at a masked step before the chunk's first real step, the output is the previous
      real output, the `h` carried in, as in the whole sequence (Keras's loop gives zeros
      there, not knowing of the earlier chunks); with `zero_output_for_mask` it stays 0.

    Args:
        layer: the recurrent layer (`keras.layers.RNN` or a subclass), `return_state=True`.
        first_state: the position of its first state among the streaming model's states.

    Call arguments:
        chunk: `(batch, k, ...)`, the chunk's inputs to the layer.
        states: the list of the layer's states, flat (a `StackedRNNCells`: each cell's
            states in turn).
        mask: optional boolean `(batch, k)`.
    """

    def __init__(self, layer, first_state=0, **kwargs):
        super().__init__(**kwargs)
        self.layer = layer
        self.first_state = int(first_state)
        self.supports_masking = True

    def build(self, chunk_shape, states_shape=None):
        if not self.layer.built:
            self.layer.build(chunk_shape)
        self.built = True

    def compute_output_spec(self, chunk, states, mask=None, training=None):
        # From shapes, without tracing the loop: the next states are shaped as the states.
        output_shape = self.layer.compute_output_shape(tuple(chunk.shape))[0]
        outputs = keras.KerasTensor(output_shape, dtype=self.layer.compute_dtype)
        return [outputs, *(keras.KerasTensor(s.shape, dtype=s.dtype) for s in states)]

    def state_names(self):
        cells = _cells(self.layer.cell)
        if len(cells) == 1:
            return _state_names(cells[0])
        return [f"cell_{j}/{name}" for j, cell in enumerate(cells) for name in _state_names(cell)]

    def call(self, chunk, states, mask=None, training=None):
        states = list(states)
        cells = _cells(self.layer.cell)
        grouped, counters, output_state, start = [], [], 0, 0
        for cell in cells:
            count = len(_state_sizes(cell))
            own = states[start : start + count]
            output_state = start  # the output is the last cell's h
            if _is_batch_norm_cell(cell):
                counters.append(start + count - 1)
                # Keras's `Layer.__call__` casts floating arguments to the compute dtype
                # (under mixed_bfloat16 a counter of 257 would become 256); an integer
                # passes as it is, and the layer reads its counter as float32.
                own[-1] = ops.cast(own[-1], "int32")
            grouped.append(own)  # a list per cell, as cells' `get_initial_state` give them
            start += count
        stacked = isinstance(self.layer.cell, keras.layers.StackedRNNCells)
        initial_state = grouped if stacked else grouped[0]
        result = self.layer(chunk, initial_state=initial_state, mask=mask, training=training)
        outputs, next_states = result[0], keras.tree.flatten(list(result[1:]))

        if mask is None:
            real_steps = ops.cast(ops.shape(chunk)[1], "float32")
        else:
            real_steps = ops.sum(ops.cast(mask, "float32"), axis=1, keepdims=True)
        for index in counters:
            next_states[index] = ops.cast(states[index], "float32") + real_steps

        if mask is not None and not self.layer.zero_output_for_mask:
            h = ops.cast(states[output_state], outputs.dtype)
            if self.layer.return_sequences:
                seen = ops.cumsum(ops.cast(mask, "int32"), axis=1) > 0
                outputs = ops.where(ops.expand_dims(seen, -1), outputs, ops.expand_dims(h, 1))
            else:
                outputs = ops.where(ops.any(mask, axis=1, keepdims=True), outputs, h)
        return [outputs, *next_states]

    def compute_mask(self, chunk, previous_mask=None):
        states = [None] * sum(len(_state_sizes(c)) for c in _cells(self.layer.cell))
        return [previous_mask if self.layer.return_sequences else None, *states]

    def get_config(self):
        return {
            **super().get_config(),
            "layer": keras.saving.serialize_keras_object(self.layer),
            "first_state": self.first_state,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)


# -------------------------------------------------------------------------- the model


@register
class StreamingModel(keras.Model):
    """A model that runs chunk by chunk: `[chunk, *states] -> [outputs, *next_states]`.

    Made by `to_streaming` (see `keras_recnorm.streaming`); a functional Keras model
    (`predict`, `predict_on_batch`, `save`, export), which also tells which state is which
    (`state_layout`) and refuses strings (it starts after a `TextVectorization`).
    """

    def call(self, inputs, training=None, mask=None, **kwargs):
        chunk = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        dtype = getattr(chunk, "dtype", None)
        if dtype is not None and (
            getattr(dtype, "kind", None) in ("U", "S", "O")
            or "string" in str(dtype)
        ):
            raise ValueError(
                f"{self.name} streams from token ids, not strings: a streaming model starts "
                "after the model's TextVectorization layer. Tokenize the text with that layer "
                "first (e.g. `model.get_layer('text_vectorization')(sentences)`) and stream "
                "the ids."
            )
        return super().call(inputs, training=training, mask=mask, **kwargs)

    @property
    def state_layout(self):
        """Every state, in order: a list of `StateSpec`."""
        layout = []
        wrappers = [layer for layer in self.layers if isinstance(layer, StreamingRecurrence)]
        for wrapper in sorted(wrappers, key=lambda w: w.first_state):
            for offset, name in enumerate(wrapper.state_names()):
                index = wrapper.first_state + offset
                spec = self.inputs[1 + index]
                layout.append(
                    StateSpec(index, wrapper.layer.name, name, int(spec.shape[-1]),
                              keras.backend.standardize_dtype(spec.dtype))
                )
        return layout


def is_streaming(model):
    """Whether `model` was made by `to_streaming`."""
    return isinstance(model, StreamingModel)


# -------------------------------------------------------------------- building it


_DROPOUT_LIKE = ("Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout",
                 "AlphaDropout", "ActivityRegularization")
# Layers that act on each time step alone (on the last axes, or elementwise).
_PER_STEP = _DROPOUT_LIKE + (
    "Dense", "Embedding", "Masking", "Activation", "ReLU", "LeakyReLU", "ELU", "Rescaling",
    "TimeDistributed", "Identity", "Add", "Subtract", "Multiply", "Average", "Maximum",
    "Minimum",
)
# Elementwise operations (a functional model records `keras.ops` called on its tensors,
# and the masks its layers compute, e.g. Embedding's `not_equal`).
_ELEMENTWISE_OPS = (
    "NotEqual", "Equal", "Greater", "GreaterEqual", "Less", "LessEqual", "LogicalAnd",
    "LogicalOr", "LogicalNot", "Add", "Subtract", "Multiply", "Divide", "TrueDivide",
    "Negative", "Abs", "Square", "Sqrt", "Exp", "Log", "Power", "Maximum", "Minimum", "Clip",
    "Cast", "Where", "Sigmoid", "Tanh", "Relu", "Softplus",
)
# Per step only where their `axis` leaves out the time axis (1).
_PER_STEP_ALONG_AXIS = ("LayerNormalization", "BatchNormalization", "UnitNormalization",
                        "Normalization", "Softmax", "Concatenate")
# Why the layers that mix time steps can't stream, by a part of their class name.
_MIXES_TIME = (
    ("Bidirectional", "reads each sequence backward from its end too, which a stream has "
                      "not received yet"),
    ("Pooling", "pools over time steps"),
    ("Conv", "convolves over time steps"),
    ("Attention", "attends over time steps"),
    ("Flatten", "flattens the time axis into the features"),
    ("Reshape", "reshapes the time axis"),
    ("Permute", "moves the time axis"),
    ("RepeatVector", "repeats along the time axis"),
    ("Cropping", "crops the time axis"),
    ("ZeroPadding", "pads the time axis"),
    ("UpSampling", "resamples the time axis"),
)


def _keras_layer_classes(names):
    return tuple(c for c in (getattr(keras.layers, n, None) for n in names) if c is not None)


class _Builder:
    """Walks a model's layer calls in order on a new chunk input, and builds the streaming
    model: recurrent layers run from state inputs (`StreamingRecurrence`), every other layer
    is a copy. Tensors with the stream's time axis are tracked, so that a layer mixing the
    time steps is caught wherever it is."""

    def __init__(self, model, per_step_layers):
        self.model = model
        self.per_step = _keras_layer_classes(_PER_STEP) + tuple(per_step_layers)
        self.along_axis = _keras_layer_classes(_PER_STEP_ALONG_AXIS)
        self.copies = {}  # id(layer) -> (layer, its copy)
        self.names = set()
        self.timed = set()  # ids of the tensors that carry the stream's time axis
        self.raw_strings = None
        self.chunk = None
        self.state_inputs, self.next_states = [], []

    def refuse(self, layer, reason):
        raise ValueError(
            f"Cannot stream model {self.model.name!r}: layer {layer.name!r} "
            f"({type(layer).__name__}) {reason}."
        )

    def build(self):
        model = self.model
        self.check_readable(model)
        inputs = _single(model, "inputs")
        _single(model, "outputs")
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        if dtype == "string":
            # TextVectorization turns it into token ids; the stream starts there.
            self.raw_strings = keras.Input(shape=inputs.shape[1:], dtype="string")
            start = self.raw_strings
        else:
            if len(inputs.shape) < 2:
                raise ValueError(
                    f"Cannot stream model {model.name!r}: its input has shape "
                    f"{tuple(inputs.shape)}, with no time axis (expected (batch, time, ...))."
                )
            start = self.chunk = keras.Input(
                shape=(None, *inputs.shape[2:]), dtype=dtype, name=CHUNK_NAME
            )
            self.timed.add(id(start))
        outputs = self.run(model, start)
        if self.chunk is None:
            raise ValueError(
                f"Cannot stream model {model.name!r}: its string input reaches no "
                "TextVectorization layer with output_mode='int'."
            )
        if not self.state_inputs:
            raise ValueError(
                f"Cannot stream model {model.name!r}: it has no recurrent layer (no state "
                "to carry); run it on each chunk as it is."
            )
        streaming = StreamingModel(
            [self.chunk, *self.state_inputs],
            [keras.tree.flatten(outputs)[0], *self.next_states],
            name=f"{model.name}_streaming",
        )
        for layer, copy in self.copies.values():
            copy.set_weights(layer.get_weights())
        return streaming

    def check_readable(self, model):
        if not (isinstance(model, keras.Sequential) or compat.is_functional(model)):
            raise ValueError(
                f"Cannot stream model {model.name!r}: a subclassed model "
                f"({type(model).__name__}) doesn't show its layers' order; build it "
                "with the functional API or keras.Sequential."
            )

    def run(self, model, x):
        self.check_readable(model)
        if isinstance(model, keras.Sequential):
            for layer in model.layers:
                x = self.call(layer, x)
            return x
        _single(model, "inputs")
        return compat.run_through_graph(model, [x], self.call)

    def call(self, layer, *args, **kwargs):
        flat = keras.tree.flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, keras.KerasTensor)]
        if isinstance(layer, keras.Model):
            if len(args) != 1 or len(tensors) != 1:
                self.refuse(layer, "is a model called with several inputs")
            return self.run(layer, args[0])
        if self.raw_strings is not None and any(t is self.raw_strings for t in tensors):
            return self.tokenized(layer)
        timed = [id(t) in self.timed for t in tensors]
        if not any(timed):
            # One vector per sample (after return_sequences=False): anything goes.
            if isinstance(layer, keras.layers.Layer):
                layer = self.copy(layer)
            return layer(*args, **kwargs)
        if not all(timed):
            self.refuse(
                layer,
                "combines the time steps with a value computed from the whole sequence (a "
                "recurrent layer's output with return_sequences=False, or its state)",
            )
        if isinstance(layer, keras.layers.RNN):
            return self.recurrent(layer, args, kwargs)
        if not isinstance(layer, keras.layers.Layer):  # an operation: no weights to copy
            if type(layer).__name__ not in _ELEMENTWISE_OPS:
                self.refuse(layer, "is an operation not known to act on each time step alone")
            outputs = layer(*args, **kwargs)
            self.timed.update(id(t) for t in keras.tree.flatten(outputs))
            return outputs
        self.check_per_step(layer, len(tensors[0].shape))
        outputs = self.copy(layer)(*args, **kwargs)
        self.timed.update(id(t) for t in keras.tree.flatten(outputs))
        return outputs

    def tokenized(self, layer):
        if type(layer).__name__ != "TextVectorization":
            self.refuse(
                layer,
                "takes the model's raw strings: streaming starts after a TextVectorization "
                "layer, from token ids",
            )
        output_mode = layer.get_config()["output_mode"]
        if output_mode != "int":
            self.refuse(
                layer,
                f"has output_mode={output_mode!r}: no sequence of token ids to stream "
                "(output_mode='int' gives one)",
            )
        if self.chunk is None:
            dtype = layer.compute_output_spec(self.raw_strings).dtype  # int64
            self.chunk = keras.Input(shape=(None,), dtype=dtype, name=CHUNK_NAME)
            self.timed.add(id(self.chunk))
        return self.chunk

    def check_per_step(self, layer, rank):
        if isinstance(layer, self.per_step):
            return
        if isinstance(layer, self.along_axis):
            axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
            if all(a is not None and a % rank != 1 for a in axes):
                return
            self.refuse(layer, f"acts along axis {layer.axis}, which includes the time axis (1)")
        if type(layer).__name__ == "Lambda":
            self.refuse(
                layer,
                "runs a function that streaming can't inspect; if it acts on each time step "
                "alone, pass keras.layers.Lambda in `per_step_layers`",
            )
        for part, reason in _MIXES_TIME:
            if part in type(layer).__name__:
                self.refuse(layer, f"{reason}: only layers that act on each time step alone "
                                   "can stream")
        self.refuse(
            layer,
            "is not known to act on each time step alone; if it does, pass its class in "
            "`per_step_layers`",
        )

    def recurrent(self, layer, args, kwargs):
        if layer.go_backwards:
            self.refuse(
                layer,
                "has go_backwards=True: it reads each sequence from its end, which a stream "
                "has not received yet",
            )
        if kwargs.get("initial_state") is not None:
            self.refuse(
                layer,
                "takes its initial_state from the model; streaming carries the states itself",
            )
        for cell in _cells(layer.cell):
            if _state_names(cell) is None:
                self.refuse(
                    layer,
                    f"has a cell streaming doesn't know ({type(cell).__name__}); it knows "
                    "keras_recnorm's cells and Keras's LSTMCell, GRUCell and SimpleRNNCell",
                )
        # The wrapper takes the layer's name in the streaming model; the copy inside it
        # keeps it too.
        name = self.unique(layer.name)
        copy = self.copy(layer, name=layer.name, return_state=True, stateful=False, unroll=False)
        first = len(self.state_inputs)
        wrapper = StreamingRecurrence(
            copy, first_state=first, name=name, dtype=layer.variable_dtype
        )
        dtype = layer.compute_dtype
        for cell in _cells(layer.cell):
            counter = len(_state_sizes(cell)) - 1 if _is_batch_norm_cell(cell) else None
            for j, size in enumerate(_state_sizes(cell)):
                self.state_inputs.append(
                    keras.Input(
                        shape=(size,),
                        dtype="float32" if j == counter else dtype,
                        name=f"{STATE_PREFIX}{len(self.state_inputs)}",
                    )
                )
        call_kwargs = {k: v for k, v in kwargs.items() if k in ("mask", "training")}
        outputs, *next_states = wrapper(args[0], self.state_inputs[first:], **call_kwargs)
        self.next_states += next_states
        if layer.return_sequences:
            self.timed.add(id(outputs))
        return [outputs, *next_states] if layer.return_state else outputs

    def copy(self, layer, name=None, **overrides):
        """A copy of `layer` (its weights are set once the streaming model is built);
        the same copy for every call of one layer."""
        if id(layer) not in self.copies:
            config = {**layer.get_config(), **overrides}
            config["name"] = name or self.unique(layer.name)
            self.copies[id(layer)] = (layer, type(layer).from_config(config))
        return self.copies[id(layer)][1]

    def unique(self, name):
        candidate, n = name, 1
        while candidate in self.names:
            candidate, n = f"{name}_{n}", n + 1
        self.names.add(candidate)
        return candidate


def _single(model, what):
    tensors = getattr(model, what, None) or []
    if len(tensors) != 1:
        raise ValueError(
            f"Cannot stream model {model.name!r}: streaming takes a model with one input and "
            f"one output, built on a keras.Input; it has {len(tensors)} {what}."
        )
    return tensors[0]


def to_streaming(model, per_step_layers=()):
    """A model that runs `model` chunk by chunk, carrying its recurrent states.

    The streaming model takes `[chunk, *states]` and returns `[outputs, *next_states]`
    (module docstring; `initial_states` gives the first states). Its inputs are named
    `"inputs"`, `"state_0"`, `"state_1"`, ...; `state_layout` says which state is which.
    It holds a copy of `model`'s weights and population statistics, taken now: after
    more training, call `to_streaming` again. It runs in inference mode (population
    statistics, no dropout) under `predict`; export it with
    `keras_recnorm.export.export_saved_model` (TF Serving: the client keeps the states) or
    `export_litert` (a fixed chunk length, 1 for step-by-step use on a device).

    Args:
        model: a trained functional or `Sequential` Keras model with one input
            `(batch, time, ...)` (or raw strings into a `TextVectorization`) and one output.
        per_step_layers: classes of your own layers that act on each time step alone
            (streaming refuses a layer it doesn't know to, rather than give wrong outputs).

    Returns:
        A `StreamingModel` (a functional `keras.Model`).

    Raises:
        ValueError: a layer can't stream (`Bidirectional`, `go_backwards=True`, pooling,
            convolution or attention over time, ...): the message names it and says why.

    Example:

    ```python
    streaming = to_streaming(model)
    states = initial_states(streaming, batch_size=1)
    for chunk in chunks:                       # (1, k, features) each
        outputs, *states = streaming.predict_on_batch([chunk, *states])
    ```
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Received an invalid value for argument `model`, expected a keras.Model, got "
            f"{type(model).__name__}."
        )
    for cls in per_step_layers:
        if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
            raise ValueError(
                "Received an invalid value for argument `per_step_layers`, expected Keras "
                f"layer classes, got {cls!r}."
            )
    return _Builder(model, per_step_layers).build()


def initial_states(streaming_model, batch_size):
    """The states before a sequence's first step: zeros (step counters at 0), as NumPy
    arrays in the states' own dtypes, in `streaming_model.state_layout`'s order.

    Args:
        streaming_model: a model made by `to_streaming`.
        batch_size: the number of sequences streamed side by side.

    Returns:
        A list of arrays, one per state, each `(batch_size, size)`.
    """
    if not is_streaming(streaming_model):
        raise ValueError(
            "Received an invalid value for argument `streaming_model`, expected a model "
            f"made by to_streaming, got {type(streaming_model).__name__}."
        )
    batch_size = check_positive_int("batch_size", batch_size)
    return [
        np.zeros((batch_size, *x.shape[1:]), dtype=_numpy_dtype(x.dtype))
        for x in streaming_model.inputs[1:]
    ]


def _numpy_dtype(dtype):
    dtype = keras.backend.standardize_dtype(dtype)
    if dtype == "bfloat16":  # NumPy has none; ml_dtypes (a Keras dependency) does
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(dtype)
