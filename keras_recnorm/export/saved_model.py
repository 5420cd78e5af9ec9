"""The SavedModel writer: a versioned directory that TensorFlow Serving loads, checked in a
fresh process (`verification.verify_saved_models`)."""

import contextlib
import os
import shutil
import tempfile

import keras

from keras_recnorm import streaming
from keras_recnorm.export.backend import import_tensorflow, quiet_logs, require_tensorflow_backend
from keras_recnorm.export.files import (
    already_exists,
    check_version,
    move_into_place,
    next_version,
)
from keras_recnorm.export.signature import (
    ENDPOINT_NAME,
    serving_function,
    serving_input_spec,
    streaming_input_specs,
    streaming_serving_function,
)
from keras_recnorm.export.verification import (
    as_probe_list,
    streaming_probes,
    verify_saved_models,
)


def write_saved_model(model, serve, directory):
    """Writes `model` as a SavedModel whose endpoint `serve` (and `serving_default`) is the
    `tf.function` `serve`."""
    tf = import_tensorflow()
    archive = keras.export.ExportArchive()
    archive.track(model)
    # The first endpoint is also written as `serving_default`, the one TF Serving uses.
    archive.add_endpoint(ENDPOINT_NAME, serve, input_signature=list(serve.input_signature))
    with quiet_logs(tf.get_logger()):
        archive.write_out(directory, verbose=False)


def export_saved_model(
    model, base_dir, version=None, *, overwrite=False, verify=True, probe=None
):
    """Exports `model` as a SavedModel ready for TensorFlow Serving.

    Writes `base_dir/<version>/` (`saved_model.pb`, `variables/`, `assets/`), the layout TF
    Serving watches. The signature `serving_default` (also `serve`) takes `"inputs"` and
    returns `"outputs"` (see the `keras_recnorm.export` docstring); the model runs with
    `training=False`, so batch-normalized cells and layers use their population statistics.

    The export is atomic: it is written to a hidden temporary directory inside `base_dir`
    and renamed to `<version>` only once complete (and verified); any failure removes it.

    Args:
        model: a built Keras model with one input (TensorFlow backend), or a streaming
            model (`keras_recnorm.streaming.to_streaming`), whose signature also takes and
            returns the states (`keras_recnorm.export` docstring).
        base_dir: the model's directory (created if missing); one subdirectory per version.
        version: positive integer; `None` (default) means one more than the largest integer
            version already in `base_dir` (1 if none).
        overwrite: replace an existing version directory. Default `False`: an existing
            version raises `FileExistsError`.
        verify: reload the export with `tf.saved_model.load` in a fresh Python process in
            which `keras_recnorm` and Keras cannot be imported, and compare its outputs with
            `model.predict` on probe batches at two sequence lengths. Raises
            `ExportVerificationError` (with the largest difference) when they disagree.
        probe: optional probe input for `verify`: one batch (an array, or nested lists
            such as a list of sentences), or a list of arrays, one per batch. By default,
            two batches are made from the model's input spec (and its `TextVectorization`
            vocabulary, or its `Embedding` size). A streaming model's batch is
            `[chunk, *states]`; by default two chunks, the second from the states the
            first leaves.

    Returns:
        The absolute path of the version directory, a `str`.

    Example:

    ```python
    path = export_saved_model(model, "/models/sentiment")   # "/models/sentiment/1"
    path = export_saved_model(model, "/models/sentiment")   # "/models/sentiment/2"
    ```
    """
    require_tensorflow_backend("export_saved_model")
    streamed = streaming.is_streaming(model)
    specs = streaming_input_specs(model) if streamed else [serving_input_spec(model)]
    base_dir = os.path.abspath(os.fspath(base_dir))
    if os.path.exists(base_dir) and not os.path.isdir(base_dir):
        raise NotADirectoryError(f"`base_dir` {base_dir} exists and is not a directory.")
    version = next_version(base_dir) if version is None else check_version(version)
    target = os.path.join(base_dir, str(version))
    if os.path.exists(target) and not overwrite:
        raise already_exists(f"Version directory {target}")
    if streamed:
        probes = streaming_probes(probe, model, specs) if verify else None
        serve = streaming_serving_function(model, specs)
    else:
        probes = as_probe_list(probe, model, specs[0]) if verify else None
        serve = serving_function(model, specs[0])

    created_base = not os.path.exists(base_dir)
    os.makedirs(base_dir, exist_ok=True)
    # Hidden and non-numeric: TF Serving never mistakes it for a version.
    staging = tempfile.mkdtemp(prefix=f".{version}.partial-", dir=base_dir)
    try:
        # mkdtemp makes the directory private (0700); a server running as another user
        # must be able to read the version directory.
        os.chmod(staging, 0o755)
        write_saved_model(model, serve, staging)
        if verify:
            label = f"The export of version {version} (to {target})"
            (error,) = verify_saved_models([(model, staging, probes)], [label])
            if error is not None:
                raise error
        move_into_place(staging, target, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_base:
            with contextlib.suppress(OSError):
                os.rmdir(base_dir)
        raise
    return target
