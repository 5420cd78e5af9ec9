"""Export for serving: versioned SavedModels for TensorFlow Serving, ONNX, and LiteRT.

Both formats hold the forward pass only, traced with `training=False`: batch-normalized
cells and layers serve with their population statistics, outputs are deterministic, and
the artifacts load where `keras_recnorm` (or Keras) is not installed.

The serving signature, the same in both formats:

- input `"inputs"`: the model's input with a dynamic batch dimension (`-1`), and a dynamic
  time dimension where the model declares one (`keras.Input(shape=(None, ...))`). A model
  whose input is a string (its first layer is `TextVectorization`) takes `tf.string` of
  shape `(None,)`: one raw sentence per example, so a client sends text, not token ids.
- output `"outputs"`: the model's output. A model with several outputs gives
  `"outputs_0"`, `"outputs_1"`, ... (or the keys of the dict it returns).

The SavedModel exposes this signature as `serving_default` (what TensorFlow Serving calls
when a request names none) and as `serve`.

A streaming model (`keras_recnorm.streaming.to_streaming`) is exported with its states:
inputs `"inputs"` (a chunk of time steps), `"state_0"`, `"state_1"`, ... and outputs
`"outputs"`, `"state_0"`, `"state_1"`, ... (the next states), each state `(batch, size)`;
half-precision states travel as float32 (docs/streaming.md).

Example:

```python
from keras_recnorm.export import export_saved_model

path = export_saved_model(model, "models/sentiment")  # -> ".../models/sentiment/1"
```
"""

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import keras
import numpy as np

from keras_recnorm import compat, streaming
from keras_recnorm.base import check_positive_int

INPUT_NAME = "inputs"
OUTPUT_NAME = "outputs"
SIGNATURE_NAME = "serving_default"
ENDPOINT_NAME = "serve"

# An export must reproduce `model.predict` to within |served - expected| <= ATOL + RTOL * |expected|.
ATOL = 1e-5
RTOL = 1e-5

# The lengths (in time steps, or words for text models) of the two default probe batches:
# short, and long enough to pass the `max_timesteps` of a typical batch-normalized cell.
PROBE_LENGTHS = (3, 12)
PROBE_BATCH_SIZE = 4

# How long the verifying process may take (it imports TensorFlow and loads the export).
VERIFY_TIMEOUT_S = 600

__all__ = [
    "ExportVerificationError",
    "export_saved_model",
    "export_onnx",
    "export_litert",
    "serving_input_spec",
    "streaming_input_specs",
    "next_version",
]


class ExportVerificationError(RuntimeError):
    """The exported artifact does not reproduce `model.predict`."""


def _tf():
    # TensorFlow is imported on first use, so that `import keras_recnorm` stays light
    # under the JAX and torch backends.
    import tensorflow as tf

    return tf


def _require_tensorflow_backend(what):
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"`{what}` needs the TensorFlow backend, but Keras runs on `{backend}`. "
            "A `.keras` file does not depend on the backend: load it in a process started "
            "with KERAS_BACKEND=tensorflow and export it there (or use "
            "`python export/export_model.py MODEL.keras BASE_DIR`)."
        )


def _model_input(model):
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
    tf = _tf()
    x = _model_input(model)
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


def _named_outputs(outputs):
    if isinstance(outputs, dict):
        return {str(name): value for name, value in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        if len(outputs) == 1:
            return {OUTPUT_NAME: outputs[0]}
        return {f"{OUTPUT_NAME}_{i}": value for i, value in enumerate(outputs)}
    return {OUTPUT_NAME: outputs}


def _serving_function(model, spec):
    """A `tf.function` over one `"inputs"` tensor, returning the named outputs."""
    tf = _tf()
    expand_strings = spec.dtype == tf.string and len(_model_input(model).shape) == 2

    @tf.function(input_signature=[spec])
    def serve(inputs):
        x = tf.expand_dims(inputs, -1) if expand_strings else inputs
        # training=False: batch-normalized cells use their population statistics and
        # dropout is off, so a served example does not depend on its batch.
        return _named_outputs(model(x, training=False))

    return serve


def _write_saved_model(model, serve, directory):
    tf = _tf()
    archive = keras.export.ExportArchive()
    archive.track(model)
    # The first endpoint is also written as `serving_default`, the one TF Serving uses.
    archive.add_endpoint(ENDPOINT_NAME, serve, input_signature=list(serve.input_signature))
    with _quiet_tf_logs(tf):
        archive.write_out(directory, verbose=False)


@contextlib.contextmanager
def _quiet_tf_logs(tf):
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _target_file(path, overwrite):
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it.")
    return path


@contextlib.contextmanager
def _staged_file(path, suffix):
    """Yields a new file beside `path` to write and check; it becomes `path` only if the
    block succeeds, and is removed otherwise: no half-written file at `path`, ever."""
    parent = os.path.dirname(path)
    created = _missing_directories(parent)
    os.makedirs(parent, exist_ok=True)
    handle, staging = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.partial-", suffix=suffix, dir=parent
    )
    os.close(handle)
    try:
        yield staging
        os.replace(staging, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(staging)
        for directory in created:  # deepest first; only if still empty
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        raise


def _missing_directories(directory):
    """The directories that `os.makedirs(directory)` would create, deepest first."""
    missing = []
    while directory and not os.path.exists(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    return missing


# ----------------------------------------------------------------------------- versions


def _integer_versions(base_dir):
    if not os.path.isdir(base_dir):
        return []
    return [
        int(name)
        for name in os.listdir(base_dir)
        if name.isdigit() and os.path.isdir(os.path.join(base_dir, name))
    ]


def next_version(base_dir):
    """One more than the largest integer version directory in `base_dir` (1 if none)."""
    return max(_integer_versions(os.fspath(base_dir)), default=0) + 1


def _check_version(version):
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
        raise ValueError(
            "Received an invalid value for argument `version`, expected a positive "
            f"integer (TensorFlow Serving's version directories), got {version!r}."
        )
    return int(version)


def _move_into_place(staging, target, overwrite):
    """Renames the complete `staging` directory to `target`, replacing it if allowed."""
    if not os.path.exists(target):
        os.rename(staging, target)
        return
    if not overwrite:
        raise FileExistsError(
            f"Version directory {target} already exists; pass overwrite=True to replace it."
        )
    # A directory can't be renamed over a non-empty one: move the old one aside (under a
    # name TF Serving ignores), put the new one in place, then delete the old one.
    parent, name = os.path.split(target)
    old = tempfile.mkdtemp(prefix=f".{name}.replaced-", dir=parent)
    os.rmdir(old)
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------- probes


def _walk_layers(layer):
    for sublayer in getattr(layer, "layers", []):
        yield sublayer
        yield from _walk_layers(sublayer)


def _first_layer_of(model, class_name):
    for layer in _walk_layers(model):
        if type(layer).__name__ == class_name:
            return layer
    return None


def _vocabulary_words(model):
    vectorizer = _first_layer_of(model, "TextVectorization")
    if vectorizer is None:
        return []
    try:
        vocabulary = vectorizer.get_vocabulary()
    except Exception:  # not adapted, or a non-string vocabulary
        return []
    return [w for w in vocabulary if isinstance(w, str) and w and w != "[UNK]"]


def _default_probes(model, spec):
    """Two probe batches, at two sequence lengths when the time dimension is dynamic.

    Rows have different lengths (padding at the end), so masking is exercised too.
    """
    tf = _tf()
    rng = np.random.default_rng(0)
    n = PROBE_BATCH_SIZE
    if spec.dtype == tf.string:
        words = _vocabulary_words(model) or ["the", "a", "cat", "sat"]
        probes = []
        for length in PROBE_LENGTHS:
            row_lengths = [length, max(1, length - 2), 1, length][:n]
            sentences = [" ".join(rng.choice(words, size=k)) for k in row_lengths]
            sentences[1] += " qzxvbw"  # out of vocabulary
            probes.append(np.array(sentences))
        return probes

    shape = list(spec.shape)
    has_time = len(shape) >= 2
    dynamic_time = has_time and shape[1] is None
    if dynamic_time:
        lengths = PROBE_LENGTHS
        batch_sizes = (n, n)
    else:
        # Fixed time dimension (or none): vary the batch size instead.
        lengths = (shape[1], shape[1]) if has_time else (None, None)
        batch_sizes = (n, 1)
    probes = []
    for length, batch in zip(lengths, batch_sizes):
        full = [batch] + ([length] if has_time else []) + [d or 3 for d in shape[2:]]
        if spec.dtype.is_integer:
            embedding = _first_layer_of(model, "Embedding")
            high = embedding.input_dim if embedding is not None else 10
            x = rng.integers(1, max(high, 2), size=full)
            if dynamic_time and batch > 2:
                x[1, length - 1 :] = 0  # padding (masked with `mask_zero=True`)
                x[2, max(1, length // 2) :] = 0
            probes.append(x.astype(spec.dtype.as_numpy_dtype))
        elif spec.dtype.is_floating:
            probes.append(rng.standard_normal(full).astype(spec.dtype.as_numpy_dtype))
        elif spec.dtype.is_bool:
            probes.append(rng.random(full) < 0.5)
        else:
            raise ValueError(
                f"Cannot make a probe batch for an input of dtype {spec.dtype.name}; pass "
                "`probe=` (a batch, or a list of batches)."
            )
    return probes


def _as_probe_list(probe, model, spec):
    if probe is None:
        return _default_probes(model, spec)
    several = isinstance(probe, (list, tuple)) and all(hasattr(p, "shape") for p in probe)
    batches = list(probe) if several else [probe]
    tf = _tf()
    result = []
    for batch in batches:
        array = np.asarray(batch)
        if spec.dtype == tf.string:
            array = array.astype(str).reshape(-1)
        else:
            array = array.astype(spec.dtype.as_numpy_dtype)
        result.append(array)
    return result


def _reference_outputs(model, batch):
    """`model.predict` on a probe batch, as a dict of named NumPy arrays."""
    if isinstance(batch, dict):  # a streaming model's inputs by name, in its order
        outputs = _streaming_named_outputs(model.predict(list(batch.values()), verbose=0))
        return {name: np.asarray(v).astype(_wire_dtype(v.dtype)) for name, v in outputs.items()}
    x = batch
    if batch.dtype.kind == "U":
        # `predict` takes strings as a 1-D object array only (Keras 3.15 rejects NumPy
        # unicode arrays, and object arrays of shape (n, 1)); TextVectorization reads
        # both ranks alike.
        x = batch.astype(object)
    outputs = _named_outputs(model.predict(x, verbose=0))
    return {name: np.asarray(value) for name, value in outputs.items()}


def _compare(expected, served, what):
    """Raises `ExportVerificationError` naming the largest difference, if any is too big."""
    worst = None
    for probe_name, outputs in expected.items():
        for name, want in outputs.items():
            got = served.get(probe_name, {}).get(name)
            if got is None:
                raise ExportVerificationError(f"{what} returned no output {name!r}.")
            if got.shape != want.shape:
                raise ExportVerificationError(
                    f"{what} returned output {name!r} of shape {got.shape} on {probe_name}, "
                    f"but model.predict gives {want.shape}."
                )
            ok = np.isclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True)
            if not ok.all():
                diff = float(np.nanmax(np.abs(got.astype(np.float64) - want)))
                if worst is None or diff > worst[0]:
                    worst = (diff, probe_name, name)
    if worst is not None:
        diff, probe_name, name = worst
        raise ExportVerificationError(
            f"{what} disagrees with model.predict: max |difference| {diff:.3g} on output "
            f"{name!r} for {probe_name} (tolerance {ATOL:g} + {RTOL:g}·|expected|)."
        )


# ------------------------------------------------------------------- fresh-process check

# Runs in a fresh Python: `keras_recnorm` (and Keras) can't be imported there, as on a
# serving machine; only TensorFlow loads the SavedModel.
_VERIFY_CHILD = r"""
import importlib.util, json, sys

HIDDEN = ("keras_recnorm", "keras")

class _Hiding:
    # Wraps an import finder so that it finds nothing of HIDDEN: to TensorFlow and to
    # `import`, those packages look not installed (find_spec returns None).
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        find = getattr(self.finder, "find_spec", None)
        if name.split(".")[0] in HIDDEN or find is None:
            return None
        return find(name, path, target)

    def invalidate_caches(self):
        getattr(self.finder, "invalidate_caches", lambda: None)()

sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]
if importlib.util.find_spec("keras_recnorm") is not None:
    sys.exit("keras_recnorm could still be imported")

import numpy as np
import tensorflow as tf

with open(sys.argv[1]) as f:
    jobs = json.load(f)
for job in jobs:
    serve = tf.saved_model.load(job["export_dir"]).signatures[job["signature"]]
    inputs = {}
    with np.load(job["probes"]) as probes:
        for key in probes.files:
            probe_name, input_name = key.split("/", 1)
            inputs.setdefault(probe_name, {})[input_name] = tf.constant(probes[key])
    results = {}
    for probe_name, probe in inputs.items():
        for name, value in serve(**probe).items():
            results[probe_name + "/" + name] = value.numpy()
    np.savez(job["served"], **results)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("keras_recnorm", "keras"))
if loaded:
    sys.exit(f"the export needed {loaded}")
"""


def _start_serving_process(jobs, workdir):
    """Starts a fresh process that runs the SavedModels of `jobs` on their probes.

    `jobs`: list of `(export_dir, probes)`. Returns `(process, manifest)` for
    `_finish_serving_process`.
    """
    manifest = []
    for i, (export_dir, probes) in enumerate(jobs):
        probe_file = os.path.join(workdir, f"probes_{i}.npz")
        np.savez(
            probe_file,
            **{
                f"probe_{j}/{name}": value
                for j, p in enumerate(probes)
                for name, value in (p.items() if isinstance(p, dict) else [(INPUT_NAME, p)])
            },
        )
        manifest.append(
            {
                "export_dir": os.path.abspath(export_dir),
                "signature": SIGNATURE_NAME,
                "probes": probe_file,
                "served": os.path.join(workdir, f"served_{i}.npz"),
            }
        )
    manifest_file = os.path.join(workdir, "manifest.json")
    with open(manifest_file, "w") as f:
        json.dump(manifest, f)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    process = subprocess.Popen(
        [sys.executable, "-c", _VERIFY_CHILD, manifest_file],
        cwd=workdir,  # so that the project directory is not on the child's sys.path
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, manifest


def _finish_serving_process(process, manifest):
    """Waits for the process; returns, per job, {probe name: {output name: array}}."""
    try:
        _, stderr = process.communicate(timeout=VERIFY_TIMEOUT_S)
    except BaseException:
        process.kill()
        process.communicate()
        raise
    if process.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-5:])
        raise ExportVerificationError(
            "Loading the SavedModel in a fresh process without keras_recnorm failed "
            f"(exit status {process.returncode}):\n{tail}"
        )
    served = []
    for job in manifest:
        per_probe = {}
        with np.load(job["served"]) as data:
            for key in data.files:
                probe_name, name = key.split("/", 1)
                per_probe.setdefault(probe_name, {})[name] = data[key]
        served.append(per_probe)
    return served


def _verify_saved_models(jobs, labels=None):
    """Checks SavedModels against `model.predict`, all in one fresh process.

    `jobs`: list of `(model, export_dir, probes)`; `labels`: how errors name the exports
    (default: their directories). Returns, per job, `None` or the
    `ExportVerificationError` that describes its disagreement; raises
    `ExportVerificationError` when the fresh process fails.
    """
    workdir = tempfile.mkdtemp(prefix="keras_recnorm_verify_")
    try:
        process, manifest = _start_serving_process([(d, p) for _, d, p in jobs], workdir)
        try:
            # model.predict runs while the other process starts TensorFlow.
            expected = [
                {f"probe_{j}": _reference_outputs(model, batch) for j, batch in enumerate(probes)}
                for model, _, probes in jobs
            ]
        except BaseException:
            process.kill()
            process.communicate()
            raise
        served = _finish_serving_process(process, manifest)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    labels = labels or [f"The SavedModel at {export_dir}" for _, export_dir, _ in jobs]
    errors = []
    for label, want, got in zip(labels, expected, served):
        try:
            _compare(want, got, label)
            errors.append(None)
        except ExportVerificationError as error:
            errors.append(error)
    return errors


# ------------------------------------------------------------------------------- public


def export_saved_model(
    model, base_dir, version=None, *, overwrite=False, verify=True, probe=None
):
    """Exports `model` as a SavedModel ready for TensorFlow Serving.

    Writes `base_dir/<version>/` (`saved_model.pb`, `variables/`, `assets/`), the layout TF
    Serving watches. The signature `serving_default` (also `serve`) takes `"inputs"` and
    returns `"outputs"` (see the module docstring); the model runs with `training=False`,
    so batch-normalized cells and layers use their population statistics.

    The export is atomic: it is written to a hidden temporary directory inside `base_dir`
    and renamed to `<version>` only once complete (and verified); any failure removes it.

    Args:
        model: a built Keras model with one input (TensorFlow backend), or a streaming
            model (`keras_recnorm.streaming.to_streaming`), whose signature also takes and
            returns the states (module docstring).
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
    _require_tensorflow_backend("export_saved_model")
    streamed = streaming.is_streaming(model)
    specs = streaming_input_specs(model) if streamed else [serving_input_spec(model)]
    base_dir = os.path.abspath(os.fspath(base_dir))
    if os.path.exists(base_dir) and not os.path.isdir(base_dir):
        raise NotADirectoryError(f"`base_dir` {base_dir} exists and is not a directory.")
    version = next_version(base_dir) if version is None else _check_version(version)
    target = os.path.join(base_dir, str(version))
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(
            f"Version directory {target} already exists; pass overwrite=True to replace it."
        )
    if streamed:
        probes = _streaming_probes(probe, model, specs) if verify else None
        serve = _streaming_serving_function(model, specs)
    else:
        probes = _as_probe_list(probe, model, specs[0]) if verify else None
        serve = _serving_function(model, specs[0])

    created_base = not os.path.exists(base_dir)
    os.makedirs(base_dir, exist_ok=True)
    # Hidden and non-numeric: TF Serving never mistakes it for a version.
    staging = tempfile.mkdtemp(prefix=f".{version}.partial-", dir=base_dir)
    try:
        # mkdtemp makes the directory private (0700); a server running as another user
        # must be able to read the version directory.
        os.chmod(staging, 0o755)
        _write_saved_model(model, serve, staging)
        if verify:
            label = f"The export of version {version} (to {target})"
            (error,) = _verify_saved_models([(model, staging, probes)], [label])
            if error is not None:
                raise error
        _move_into_place(staging, target, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_base:
            with contextlib.suppress(OSError):
                os.rmdir(base_dir)
        raise
    return target


def _import_onnx_tools():
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


def export_onnx(model, path, *, opset=None, overwrite=False, verify=True, probe=None):
    """Exports `model` to an ONNX file, with dynamic batch and time dimensions.

    The graph takes `"inputs"` and returns `"outputs"` like the SavedModel signature (see the
    module docstring), traced with `training=False`. It is converted by `tf2onnx` (extra
    `onnx`: `pip install 'keras_recnorm[onnx]'`).

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
    _require_tensorflow_backend("export_onnx")
    _refuse_streaming(model, "export_onnx")
    tf = _tf()
    spec = serving_input_spec(model)
    if spec.dtype == tf.string:
        raise ValueError(
            "Cannot export a model that takes raw strings to ONNX: ONNX has no counterpart "
            "of TextVectorization's string splitting and vocabulary lookup. Export the model "
            "from the layer after TextVectorization (it takes token ids) instead, e.g. "
            "`keras.Model(model.layers[2].input, model.output)`, and tokenize on the client."
        )
    onnx, onnxruntime, tf2onnx = _import_onnx_tools()
    path = _target_file(path, overwrite)
    probes = _as_probe_list(probe, model, spec) if verify else None
    serve = _serving_function(model, spec)

    with _staged_file(path, ".onnx") as staging:
        _patch_tf2onnx()
        tf2onnx_logger = logging.getLogger("tf2onnx")
        level = tf2onnx_logger.level
        tf2onnx_logger.setLevel(logging.ERROR)
        try:
            with _quiet_tf_logs(tf):
                model_proto, _ = tf2onnx.convert.from_function(
                    serve, input_signature=[spec], opset=opset
                )
        finally:
            tf2onnx_logger.setLevel(level)
        _name_dynamic_dims(model_proto, spec)
        onnx.save(model_proto, staging)
        if verify:
            _verify_onnx(model, staging, probes, onnxruntime)
    return path


def _verify_onnx(model, onnx_path, probes, onnxruntime):
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]
    expected, served = {}, {}
    for j, batch in enumerate(probes):
        expected[f"probe_{j}"] = _reference_outputs(model, batch)
        values = session.run(output_names, {input_name: batch})
        served[f"probe_{j}"] = dict(zip(output_names, values))
    _compare(expected, served, f"The ONNX model at {onnx_path}")


# ---------------------------------------------------------------------------- LiteRT


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


def _litert_probe(model, shape, dtype, seed=0):
    """A probe batch of the export's fixed shape; token ids end in some padding."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        embedding = _first_layer_of(model, "Embedding")
        high = embedding.input_dim if embedding is not None else 10
        x = rng.integers(1, max(high, 2), size=shape)
        if len(shape) >= 2 and shape[1] > 1:
            x[-1, shape[1] // 2 :] = 0  # padding (masked with `mask_zero=True`)
        return x.astype(dtype)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    raise ValueError(
        f"Cannot make a probe batch for an input of dtype {np.dtype(dtype).name}; pass "
        "`probe=` (one batch of the export's shape)."
    )


def litert_interpreter(model_path=None, model_content=None):
    """A LiteRT interpreter with its tensors allocated: `ai_edge_litert`'s where that is
    installed (`pip install ai-edge-litert`), else TensorFlow's `tf.lite.Interpreter`."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = _tf().lite.Interpreter
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


def _check_litert_dtypes(model):
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
            `"outputs"` and the next states (module docstring).
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
    _require_tensorflow_backend("export_litert")
    if streaming.is_streaming(model):
        return _export_streaming_litert(
            model, path, batch_size, sequence_length, overwrite, verify, probe
        )
    tf = _tf()
    check_positive_int("batch_size", batch_size)
    x = _model_input(model)
    _check_litert_dtypes(model)
    dtype = keras.backend.standardize_dtype(x.dtype)
    if dtype == "string":
        raise ValueError(
            "Cannot export a model that takes raw strings to LiteRT: its built-in operators "
            "have no TextVectorization. Export the model from the layer after "
            "TextVectorization (it takes token ids) instead, e.g. "
            "`keras.Model(model.layers[2].input, model.output)`, and tokenize on the device."
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
    path = _target_file(path, overwrite)
    if verify:
        probe = _litert_probe(model, shape, dtype) if probe is None else np.asarray(probe, dtype)
        if list(probe.shape) != shape:
            raise ValueError(
                f"The probe batch has shape {probe.shape}; the export's input is {tuple(shape)}."
            )

    with _staged_file(path, ".tflite") as staging:
        content = _convert_to_litert(_unrolled_copy(model, shape), tf.TensorSpec(shape, dtype), tf)
        with open(staging, "wb") as f:
            f.write(content)
        if verify:
            served = run_litert(litert_interpreter(model_path=staging), probe)
            expected = _reference_outputs(model, probe)
            _compare({"the probe": expected}, {"the probe": served}, f"The LiteRT model at {path}")
    return path


def _convert_to_litert(model, spec, tf, serve=None):
    # Through a SavedModel: the converter freezes its variables into constants (from a
    # concrete function they would stay resource variables, uninitialized in LiteRT).
    # `serve`: the function to convert, if not the one over `spec`.
    if serve is None:

        @tf.function(input_signature=[spec])
        def serve(inputs):
            return _named_outputs(model(inputs, training=False))

    with tempfile.TemporaryDirectory(prefix="keras_recnorm-litert-") as directory:
        _write_saved_model(model, serve, directory)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            directory, signature_keys=[ENDPOINT_NAME]
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        with _quiet_tf_logs(tf):
            return converter.convert()


# ------------------------------------------------------------------------- streaming


def _refuse_streaming(model, what):
    if streaming.is_streaming(model):
        raise ValueError(
            f"{what} doesn't take a streaming model (inputs and states in one signature); "
            "export it with export_saved_model (TF Serving) or export_litert (devices)."
        )


def _wire_dtype(dtype):
    """A state's dtype in the signature: half-precision states travel as float32 (exact
    both ways), which every client and LiteRT runtime has."""
    dtype = keras.backend.standardize_dtype(dtype)
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def streaming_input_specs(model, batch_size=None, sequence_length=None):
    """The `tf.TensorSpec`s of a streaming model's signature, in order: `"inputs"`
    `(batch, time, ...)`, then `"state_0"`, `"state_1"`, ... `(batch, size)`. Batch and time
    are dynamic unless given."""
    tf = _tf()
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
            tf.TensorSpec([batch_size, *state.shape[1:]], _wire_dtype(state.dtype),
                          name=f"{streaming.STATE_PREFIX}{i}")
        )
    return specs


def _streaming_named_outputs(outputs):
    outputs = list(outputs)
    named = {OUTPUT_NAME: outputs[0]}
    for i, state in enumerate(outputs[1:]):
        named[f"{streaming.STATE_PREFIX}{i}"] = state
    return named


def _streaming_serving_function(model, specs):
    """A `tf.function` over the chunk and the states, returning the outputs and the next
    states by name (states cast to and from their wire dtype)."""
    tf = _tf()
    dtypes = [keras.backend.standardize_dtype(x.dtype) for x in model.inputs]

    @tf.function(input_signature=specs)
    def serve(*tensors):
        inputs = [tf.cast(t, dtype) for t, dtype in zip(tensors, dtypes)]
        outputs, *states = model(inputs, training=False)
        wire = [tf.cast(s, spec.dtype) for s, spec in zip(states, specs[1:])]
        return _streaming_named_outputs([outputs, *wire])

    return serve


def _as_streaming_probe(probe, specs):
    """One probe batch for a streaming model: `{"inputs": chunk, "state_0": ..., ...}`
    from such a dict or from a list `[chunk, *states]`."""
    values = list(probe.values()) if isinstance(probe, dict) else list(probe)
    if len(values) != len(specs):
        raise ValueError(
            f"A streaming model's probe is [chunk, *states]: {len(specs)} arrays; got "
            f"{len(values)}."
        )
    return {
        spec.name: np.asarray(value, spec.dtype.as_numpy_dtype)
        for spec, value in zip(specs, values)
    }


def _streaming_probes(probe, model, specs):
    """Probe batches of a streaming model: `probe` (one `[chunk, *states]` or dict, or a
    list of them), or by default two chunks in a row, from the zero states and then from
    the states the first one left (so the second starts mid-sequence)."""
    if probe is not None:
        several = isinstance(probe, (list, tuple)) and all(
            isinstance(p, (list, tuple, dict)) for p in probe
        )
        return [_as_streaming_probe(p, specs) for p in (probe if several else [probe])]
    chunks = _default_probes(model, specs[0])
    return _chained_probes(model, chunks, specs)


def _chained_probes(model, chunks, specs):
    """Each chunk with the states that the chunks before it leave, from zero states."""
    batch = chunks[0].shape[0]
    states = [np.zeros((batch, *s.shape[1:]), s.dtype.as_numpy_dtype) for s in specs[1:]]
    probes = []
    for chunk in chunks:
        probe = _as_streaming_probe([chunk, *states], specs)
        probes.append(probe)
        states = list(_reference_outputs(model, probe).values())[1:]
    return probes


def _export_streaming_litert(model, path, batch_size, sequence_length, overwrite, verify, probe):
    """`export_litert` of a streaming model: a chunk of `sequence_length` steps (default
    1) and the states in, the outputs and the next states out."""
    tf = _tf()
    check_positive_int("batch_size", batch_size)
    length = 1 if sequence_length is None else sequence_length
    specs = streaming_input_specs(model, batch_size, check_positive_int("sequence_length", length))
    path = _target_file(path, overwrite)
    if verify:
        if probe is None:
            shape, dtype = specs[0].shape.as_list(), specs[0].dtype.as_numpy_dtype
            chunks = [_litert_probe(model, shape, dtype, seed) for seed in (0, 1)]
            probes = _chained_probes(model, chunks, specs)
        else:
            probes = _streaming_probes(probe, model, specs)

    with _staged_file(path, ".tflite") as staging:
        copy = _unrolled_copy(model, {spec.name: spec.shape.as_list() for spec in specs})
        serve = _streaming_serving_function(copy, specs)
        content = _convert_to_litert(copy, None, tf, serve=serve)
        with open(staging, "wb") as f:
            f.write(content)
        if verify:
            interpreter = litert_interpreter(model_path=staging)
            expected, served = {}, {}
            for j, batch in enumerate(probes):
                expected[f"probe_{j}"] = _reference_outputs(model, batch)
                served[f"probe_{j}"] = run_litert(interpreter, batch)
            _compare(expected, served, f"The LiteRT model at {path}")
    return path
