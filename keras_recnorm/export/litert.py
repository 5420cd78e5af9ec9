"""The LiteRT writer: a `.tflite` file of built-in operators only, of fixed batch size and
sequence length (the recurrent layers unrolled), checked in the LiteRT interpreter; and
the two functions that run such a file."""

import tempfile
import warnings

import keras
import numpy as np

from keras_recnorm import compat, streaming
from keras_recnorm.base import check_positive_int
from keras_recnorm.export.backend import import_tensorflow, quiet_logs, require_tensorflow_backend
from keras_recnorm.export.files import staged_file, target_file
from keras_recnorm.export.saved_model import write_saved_model
from keras_recnorm.export.signature import (
    ENDPOINT_NAME,
    INPUT_NAME,
    model_input,
    raw_strings_error,
    serving_function,
    streaming_input_specs,
    streaming_serving_function,
)
from keras_recnorm.export.verification import (
    chained_probes,
    check_against_predict,
    fixed_shape_probe,
    numbered_probes,
    streaming_probes,
)


def _unrolled_copy(model, shape):
    """A copy of `model` (same weights) on an input of fixed `shape` (several inputs: a dict
    of shapes by input name), whose recurrent layers unroll their loop.

    LiteRT's built-in operators have no TensorList: a recurrent loop converts only to
    Select-TF ops, which the pip LiteRT interpreter can't run. Unrolled over a fixed number
    of steps, a recurrent layer is plain matmuls and elementwise ops.
    """

    def fixed(config):
        if isinstance(config, list):
            return [fixed(v) for v in config]
        if not isinstance(config, dict):
            return config
        config = {k: (True if k == "unroll" else fixed(v)) for k, v in config.items()}
        if config.get("class_name") == "InputLayer":
            own = shape[config["config"]["name"]] if isinstance(shape, dict) else shape
            config["config"] = dict(config["config"], batch_shape=list(own))
        if "build_input_shape" in config:  # keras.Sequential
            config["build_input_shape"] = list(shape)
        return config

    try:
        config = keras.saving.serialize_keras_object(model)
        copy = keras.saving.deserialize_keras_object(fixed(config))
        copy.set_weights(model.get_weights())
    except Exception as error:
        raise ValueError(
            "export_litert rebuilds the model from its config on a fixed-shape input, with "
            f"every recurrent layer unrolled, and that failed for {type(model).__name__}: "
            f"{error}"
        ) from error
    return copy


def litert_interpreter(model_path=None, model_content=None):
    """A LiteRT interpreter with its tensors allocated: `ai_edge_litert`'s where that is
    installed (`pip install ai-edge-litert`), else TensorFlow's `tf.lite.Interpreter`."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = import_tensorflow().lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        interpreter = Interpreter(model_path=model_path, model_content=model_content)
    interpreter.allocate_tensors()
    return interpreter


def run_litert(interpreter, batch):
    """Runs an exported LiteRT model on one batch; returns its outputs by name
    (`"outputs"`, or `"outputs_0"`, ... for several, as the SavedModel signature). A
    streaming model's batch is a dict: `{"inputs": chunk, "state_0": ..., ...}`."""
    runner = interpreter.get_signature_runner(ENDPOINT_NAME)
    inputs = batch if isinstance(batch, dict) else {INPUT_NAME: batch}
    return {name: np.asarray(value) for name, value in runner(**inputs).items()}


def check_litert_dtypes(model):
    """The LiteRT converter fails on the float64, float16 and bfloat16 layers of a model
    (a dump of 10⁵ characters that names no dtype): one line naming the layer instead,
    before anything is converted or written. The input may be of another dtype (the
    first layer casts it)."""
    for layer in compat.all_layers(model, include_self=False):
        dtype = keras.backend.standardize_dtype(layer.compute_dtype)
        if isinstance(layer, keras.layers.InputLayer) or "float" not in dtype or dtype == "float32":
            continue
        raise ValueError(
            f"export_litert exports float32 models only (LiteRT's built-in operators fail "
            f"on {dtype} ones); layer {layer.name!r} computes in {dtype} (dtype policy "
            f"{layer.dtype_policy.name}): build the model again in float32 (dtype='float32' "
            "or the float32 policy), copy the weights with set_weights, and export that copy."
        )


def export_litert(
    model, path, *, batch_size=1, sequence_length=None, overwrite=False, verify=True, probe=None
):
    """Exports `model` to a LiteRT (`.tflite`) file that uses built-in operators only.

    Runs in the LiteRT interpreter from pip (`ai-edge-litert`, or TensorFlow's
    `tf.lite.Interpreter`) without the Select-TF ops that `model.export(path,
    format="litert")` needs for any recurrent layer. The price: **the batch size and the
    sequence length are fixed** in the file, and every recurrent layer is unrolled over
    that many steps (the file grows with the length; a shorter input must be padded to it,
    with a masking model, e.g. `Embedding(mask_zero=True)`, padding with id 0).

    The forward pass is traced with `training=False`: batch-normalized cells and layers run
    with their population statistics. A model that takes raw strings can't be exported
    (LiteRT's built-in operators have no `TextVectorization`): export the model on token
    ids after it, and tokenize on the device.

    Args:
        model: a built Keras model with one input (TensorFlow backend), computing in
            float32 (a float64 or mixed-precision model is refused before conversion;
            the input itself may be of another dtype).
        path: the `.tflite` file to write (parent directories are created, and removed
            again if the export fails).
        batch_size: the fixed batch size of the file's input.
        sequence_length: the fixed number of time steps; default the model's own, which
            must then be declared (`keras.Input((T, ...))`). For a streaming model
            (`keras_recnorm.streaming.to_streaming`), the chunk length, default 1: the file
            takes `"inputs"` `(batch_size, sequence_length, ...)` and the states, and returns
            `"outputs"` and the next states (`keras_recnorm.export` docstring).
        overwrite: replace an existing file. Default `False` raises `FileExistsError`.
        verify: run the file in the LiteRT interpreter on a probe batch and compare with
            `model.predict` (1e-5); raises `ExportVerificationError` on disagreement.
        probe: optional probe batch for `verify`, of shape `(batch_size, sequence_length, ...)`.

    Returns:
        `path`, a `str`. The file appears only once complete and verified.

    Example:

    ```python
    path = export_litert(model, "model.tflite", batch_size=1, sequence_length=40)
    ```
    """
    require_tensorflow_backend("export_litert")
    if streaming.is_streaming(model):
        return _export_streaming_litert(
            model, path, batch_size, sequence_length, overwrite, verify, probe
        )
    tf = import_tensorflow()
    check_positive_int("batch_size", batch_size)
    x = model_input(model)
    check_litert_dtypes(model)
    dtype = keras.backend.standardize_dtype(x.dtype)
    if dtype == "string":
        raise raw_strings_error(
            "LiteRT", "its built-in operators have no TextVectorization", "device"
        )
    shape = [batch_size] + list(x.shape[1:])
    if len(shape) >= 2:
        if sequence_length is None and shape[1] is None:
            raise ValueError(
                "export_litert needs a fixed sequence length, and the model's input has a "
                f"dynamic time dimension (shape {tuple(x.shape)}): pass sequence_length=T."
            )
        if sequence_length is not None:
            check_positive_int("sequence_length", sequence_length)
            shape[1] = sequence_length
    if any(d is None for d in shape):
        raise ValueError(
            f"export_litert needs every input dimension but batch and time fixed; the model's "
            f"input has shape {tuple(x.shape)}."
        )
    path = target_file(path, overwrite)
    if verify:
        probe = fixed_shape_probe(model, shape, dtype) if probe is None else np.asarray(probe, dtype)
        if list(probe.shape) != shape:
            raise ValueError(
                f"The probe batch has shape {probe.shape}; the export's input is {tuple(shape)}."
            )

    with staged_file(path, ".tflite") as staging:
        copy = _unrolled_copy(model, shape)
        _write_litert(copy, serving_function(copy, tf.TensorSpec(shape, dtype)), staging)
        if verify:
            _check_litert(model, staging, {"the probe": probe}, path)
    return path


def _write_litert(model, serve, path):
    """Converts the `tf.function` `serve` over `model` to built-in LiteRT operators, into the
    file `path`."""
    tf = import_tensorflow()
    # Through a SavedModel: the converter freezes its variables into constants (from a
    # concrete function they would stay resource variables, uninitialized in LiteRT).
    with tempfile.TemporaryDirectory(prefix="keras_recnorm-litert-") as directory:
        write_saved_model(model, serve, directory)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            directory, signature_keys=[ENDPOINT_NAME]
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        with quiet_logs(tf.get_logger()):
            content = converter.convert()
    with open(path, "wb") as f:
        f.write(content)


def _check_litert(model, staging, probes, path):
    """Runs the staged file on `probes` (a dict by probe name) in the LiteRT interpreter and
    compares with `model.predict`; errors name the file by its final `path`."""
    interpreter = litert_interpreter(model_path=staging)
    check_against_predict(
        model, probes, lambda batch: run_litert(interpreter, batch), f"The LiteRT model at {path}"
    )


def _export_streaming_litert(model, path, batch_size, sequence_length, overwrite, verify, probe):
    """`export_litert` of a streaming model: a chunk of `sequence_length` steps (default
    1) and the states in, the outputs and the next states out."""
    check_positive_int("batch_size", batch_size)
    length = 1 if sequence_length is None else sequence_length
    specs = streaming_input_specs(model, batch_size, check_positive_int("sequence_length", length))
    path = target_file(path, overwrite)
    if verify:
        if probe is None:
            shape, dtype = specs[0].shape.as_list(), specs[0].dtype.as_numpy_dtype
            chunks = [fixed_shape_probe(model, shape, dtype, seed) for seed in (0, 1)]
            probes = chained_probes(model, chunks, specs)
        else:
            probes = streaming_probes(probe, model, specs)

    with staged_file(path, ".tflite") as staging:
        copy = _unrolled_copy(model, {spec.name: spec.shape.as_list() for spec in specs})
        _write_litert(copy, streaming_serving_function(copy, specs), staging)
        if verify:
            _check_litert(model, staging, numbered_probes(probes), path)
    return path
