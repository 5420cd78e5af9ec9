"""The ONNX writer: one `.onnx` file with dynamic batch and time dimensions, converted by
tf2onnx and checked with onnxruntime.

Named `onnx_export`, not `onnx`, so that no reader mistakes it for the `onnx` package it
imports.
"""

import logging
import warnings

from keras_recnorm import compat, streaming
from keras_recnorm.export.backend import import_tensorflow, quiet_logs, require_tensorflow_backend
from keras_recnorm.export.files import staged_file, target_file
from keras_recnorm.export.signature import (
    raw_strings_error,
    serving_function,
    serving_input_spec,
)
from keras_recnorm.export.verification import (
    as_probe_list,
    check_against_predict,
    numbered_probes,
)


def import_onnx_tools():
    """The modules `onnx`, `onnxruntime` and `tf2onnx`; an `ImportError` that says how to
    install them if one is missing."""
    try:
        import onnx
        import onnxruntime
        import tf2onnx
    except ImportError as error:
        raise ImportError(
            f"ONNX export needs tf2onnx, onnx and onnxruntime ({error}). Install them with "
            "`pip install 'keras_recnorm[onnx]'`."
        ) from error
    return onnx, onnxruntime, tf2onnx


def _patch_tf2onnx():
    # tf2onnx 1.17 still uses NumPy 1 names; Keras ships the patch that its own ONNX export
    # applies.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        compat.patch_tf2onnx()


def _name_dynamic_dims(model_proto, spec):
    """Gives the dynamic dimensions readable names: `batch` and `time`."""
    names = {0: "batch"}
    if len(spec.shape) >= 2 and spec.shape[1] is None:
        names[1] = "time"
    for value in model_proto.graph.input:
        for index, dim in enumerate(value.type.tensor_type.shape.dim):
            if index in names and not dim.HasField("dim_value"):
                dim.dim_param = names[index]
    for value in model_proto.graph.output:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def _refuse_streaming(model, what):
    if streaming.is_streaming(model):
        raise ValueError(
            f"{what} doesn't take a streaming model (inputs and states in one signature); "
            "export it with export_saved_model (TF Serving) or export_litert (devices)."
        )


def export_onnx(model, path, *, opset=None, overwrite=False, verify=True, probe=None):
    """Exports `model` to an ONNX file, with dynamic batch and time dimensions.

    The graph takes `"inputs"` and returns `"outputs"` like the SavedModel signature (see the
    `keras_recnorm.export` docstring), traced with `training=False`. It is converted by
    `tf2onnx` (extra `onnx`: `pip install 'keras_recnorm[onnx]'`).

    A model that takes raw strings can't be converted: ONNX has no counterpart of
    `TextVectorization`'s string splitting and vocabulary lookup. Export the part after it
    (a model on token ids) and tokenize on the client.

    Args:
        model: a built Keras model with one input (TensorFlow backend).
        path: the `.onnx` file to write (parent directories are created).
        opset: ONNX opset version; `None` uses tf2onnx's default.
        overwrite: replace an existing file. Default `False` raises `FileExistsError`.
        verify: run the file with onnxruntime on probe batches at two sequence lengths and
            compare with `model.predict`; raises `ExportVerificationError` on disagreement.
        probe: optional probe input for `verify`: one batch, or a list of arrays (batches).

    Returns:
        `path`, a `str`. The file appears only once complete and verified.
    """
    require_tensorflow_backend("export_onnx")
    _refuse_streaming(model, "export_onnx")
    tf = import_tensorflow()
    spec = serving_input_spec(model)
    if spec.dtype == tf.string:
        raise raw_strings_error(
            "ONNX",
            "ONNX has no counterpart of TextVectorization's string splitting and vocabulary "
            "lookup",
            "client",
        )
    onnx, onnxruntime, tf2onnx = import_onnx_tools()
    path = target_file(path, overwrite)
    probes = as_probe_list(probe, model, spec) if verify else None
    serve = serving_function(model, spec)

    with staged_file(path, ".onnx") as staging:
        _patch_tf2onnx()
        with quiet_logs(logging.getLogger("tf2onnx")), quiet_logs(tf.get_logger()):
            model_proto, _ = tf2onnx.convert.from_function(
                serve, input_signature=[spec], opset=opset
            )
        _name_dynamic_dims(model_proto, spec)
        onnx.save(model_proto, staging)
        if verify:
            _verify_onnx(model, staging, probes, onnxruntime)
    return path


def _verify_onnx(model, onnx_path, probes, onnxruntime):
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]

    def run(batch):
        return dict(zip(output_names, session.run(output_names, {input_name: batch})))

    check_against_predict(
        model, numbered_probes(probes), run, f"The ONNX model at {onnx_path}"
    )
