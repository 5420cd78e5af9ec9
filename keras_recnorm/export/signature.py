"""The serving signature that every format shares: its names, its input specs, and the
`tf.function`s that the writers trace (the package docstring describes it)."""

import keras

from keras_recnorm import streaming
from keras_recnorm.export.backend import import_tensorflow

INPUT_NAME = "inputs"
OUTPUT_NAME = "outputs"
SIGNATURE_NAME = "serving_default"
ENDPOINT_NAME = "serve"


def model_input(model):
    """The one input of `model` (a `KerasTensor`); a `ValueError` if it has none or several."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            "Received a model whose inputs are unknown: build it on a `keras.Input` "
            "(functional or `keras.Sequential([keras.Input(...), ...])`) before exporting, "
            f"got {type(model).__name__} with no `inputs`."
        )
    if len(inputs) != 1:
        raise ValueError(
            "Received a model with several inputs; the serving signature has one input "
            f"named {INPUT_NAME!r}. Got {len(inputs)} inputs: "
            f"{[getattr(x, 'name', '?') for x in inputs]}."
        )
    return inputs[0]


def serving_input_spec(model):
    """The `tf.TensorSpec` of the serving input of `model`, named `"inputs"`.

    Batch is dynamic; the time dimension is whatever the model declares (dynamic for
    `keras.Input(shape=(None, ...))`). A string input is served as `tf.string` of shape
    `(None,)`, one sentence per example, whether the model declares `shape=()` or
    `shape=(1,)`.
    """
    tf = import_tensorflow()
    x = model_input(model)
    dtype = tf.as_dtype(keras.backend.standardize_dtype(x.dtype))
    shape = list(x.shape)
    if dtype == tf.string:
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise ValueError(
                "Received a model whose string input has shape "
                f"{tuple(shape)}; expected one string per example, `shape=()` or "
                "`shape=(1,)` in `keras.Input`."
            )
        return tf.TensorSpec((None,), tf.string, name=INPUT_NAME)
    return tf.TensorSpec([None] + shape[1:], dtype, name=INPUT_NAME)


def named_outputs(outputs):
    """A model's outputs by their names in the signature: `"outputs"`, `"outputs_0"`, ...
    or the keys of a dict."""
    if isinstance(outputs, dict):
        return {str(name): value for name, value in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        if len(outputs) == 1:
            return {OUTPUT_NAME: outputs[0]}
        return {f"{OUTPUT_NAME}_{i}": value for i, value in enumerate(outputs)}
    return {OUTPUT_NAME: outputs}


def serving_function(model, spec):
    """A `tf.function` over one `"inputs"` tensor, returning the named outputs."""
    tf = import_tensorflow()
    expand_strings = spec.dtype == tf.string and len(model_input(model).shape) == 2

    @tf.function(input_signature=[spec])
    def serve(inputs):
        x = tf.expand_dims(inputs, -1) if expand_strings else inputs
        # training=False: batch-normalized cells use their population statistics and
        # dropout is off, so a served example does not depend on its batch.
        return named_outputs(model(x, training=False))

    return serve


def raw_strings_error(format_name, reason, tokenizer):
    """The error for a model that takes raw strings, which `format_name` can't serve
    (`reason`); `tokenizer` says where the token ids are made instead."""
    return ValueError(
        f"Cannot export a model that takes raw strings to {format_name}: {reason}. Export "
        "the model from the layer after TextVectorization (it takes token ids) instead, e.g. "
        f"`keras.Model(model.layers[2].input, model.output)`, and tokenize on the {tokenizer}."
    )


# ------------------------------------------------------------------------- streaming


def wire_dtype(dtype):
    """A state's dtype in the signature: half-precision states travel as float32 (exact
    both ways), which every client and LiteRT runtime has."""
    dtype = keras.backend.standardize_dtype(dtype)
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def streaming_input_specs(model, batch_size=None, sequence_length=None):
    """The `tf.TensorSpec`s of a streaming model's signature, in order: `"inputs"`
    `(batch, time, ...)`, then `"state_0"`, `"state_1"`, ... `(batch, size)`. Batch and time
    are dynamic unless given."""
    tf = import_tensorflow()
    chunk, *states = model.inputs
    specs = [
        tf.TensorSpec(
            [batch_size, sequence_length, *chunk.shape[2:]],
            keras.backend.standardize_dtype(chunk.dtype),
            name=INPUT_NAME,
        )
    ]
    for i, state in enumerate(states):
        specs.append(
            tf.TensorSpec([batch_size, *state.shape[1:]], wire_dtype(state.dtype),
                          name=f"{streaming.STATE_PREFIX}{i}")
        )
    return specs


def streaming_named_outputs(outputs):
    """A streaming model's `[outputs, *next_states]` by name: `"outputs"`, `"state_0"`, ..."""
    outputs = list(outputs)
    named = {OUTPUT_NAME: outputs[0]}
    for i, state in enumerate(outputs[1:]):
        named[f"{streaming.STATE_PREFIX}{i}"] = state
    return named


def streaming_serving_function(model, specs):
    """A `tf.function` over the chunk and the states, returning the outputs and the next
    states by name (states cast to and from their wire dtype)."""
    tf = import_tensorflow()
    dtypes = [keras.backend.standardize_dtype(x.dtype) for x in model.inputs]

    @tf.function(input_signature=specs)
    def serve(*tensors):
        inputs = [tf.cast(t, dtype) for t, dtype in zip(tensors, dtypes)]
        outputs, *states = model(inputs, training=False)
        wire = [tf.cast(s, spec.dtype) for s, spec in zip(states, specs[1:])]
        return streaming_named_outputs([outputs, *wire])

    return serve
