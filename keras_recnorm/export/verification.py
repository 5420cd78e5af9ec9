"""Whether an export reproduces `model.predict`: the probe batches, the reference outputs,
the comparison, and the fresh process that serves a SavedModel where neither
`keras_recnorm` nor Keras can be imported.

The writers (`saved_model`, `onnx_export`, `litert`) make the artifacts and run them; this
module decides whether they are right.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from keras_recnorm.export.backend import import_tensorflow
from keras_recnorm.export.signature import (
    INPUT_NAME,
    SIGNATURE_NAME,
    named_outputs,
    streaming_named_outputs,
    wire_dtype,
)

# An export must reproduce `model.predict` to within |served - expected| <= ATOL + RTOL * |expected|.
ATOL = 1e-5
RTOL = 1e-5

# The lengths (in time steps, or words for text models) of the two default probe batches:
# short, and long enough to pass the `max_timesteps` of a typical batch-normalized cell.
PROBE_LENGTHS = (3, 12)
PROBE_BATCH_SIZE = 4

# How long the verifying process may take (it imports TensorFlow and loads the export).
VERIFY_TIMEOUT_S = 600


class ExportVerificationError(RuntimeError):
    """The exported artifact does not reproduce `model.predict`."""


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


def _token_ids(model, shape, rng):
    """Random token ids of `shape` below the model's `Embedding` size (10 without one),
    none of them 0: that id is the padding."""
    embedding = _first_layer_of(model, "Embedding")
    high = embedding.input_dim if embedding is not None else 10
    return rng.integers(1, max(high, 2), size=shape)


def _no_probe_for(dtype_name, expected):
    """The error for an input dtype that no probe batch is made for; `expected` says what
    `probe=` takes."""
    return ValueError(
        f"Cannot make a probe batch for an input of dtype {dtype_name}; pass `probe=` "
        f"({expected})."
    )


def _default_probes(model, spec):
    """Two probe batches, at two sequence lengths when the time dimension is dynamic.

    Rows have different lengths (padding at the end), so masking is exercised too.
    """
    tf = import_tensorflow()
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
            x = _token_ids(model, full, rng)
            if dynamic_time and batch > 2:
                x[1, length - 1 :] = 0  # padding (masked with `mask_zero=True`)
                x[2, max(1, length // 2) :] = 0
            probes.append(x.astype(spec.dtype.as_numpy_dtype))
        elif spec.dtype.is_floating:
            probes.append(rng.standard_normal(full).astype(spec.dtype.as_numpy_dtype))
        elif spec.dtype.is_bool:
            probes.append(rng.random(full) < 0.5)
        else:
            raise _no_probe_for(spec.dtype.name, "a batch, or a list of batches")
    return probes


def as_probe_list(probe, model, spec):
    """The probe batches of an export whose input is `spec`: `probe` (one batch, or a list
    of arrays), each as an array of the input's dtype; by default two made up."""
    if probe is None:
        return _default_probes(model, spec)
    several = isinstance(probe, (list, tuple)) and all(hasattr(p, "shape") for p in probe)
    batches = list(probe) if several else [probe]
    tf = import_tensorflow()
    result = []
    for batch in batches:
        array = np.asarray(batch)
        if spec.dtype == tf.string:
            array = array.astype(str).reshape(-1)
        else:
            array = array.astype(spec.dtype.as_numpy_dtype)
        result.append(array)
    return result


def fixed_shape_probe(model, shape, dtype, seed=0):
    """A probe batch of the export's fixed shape; token ids end in some padding."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        x = _token_ids(model, shape, rng)
        if len(shape) >= 2 and shape[1] > 1:
            x[-1, shape[1] // 2 :] = 0  # padding (masked with `mask_zero=True`)
        return x.astype(dtype)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    raise _no_probe_for(np.dtype(dtype).name, "one batch of the export's shape")


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


def streaming_probes(probe, model, specs):
    """Probe batches of a streaming model: `probe` (one `[chunk, *states]` or dict, or a
    list of them), or by default two chunks in a row, from the zero states and then from
    the states the first one left (so the second starts mid-sequence)."""
    if probe is not None:
        several = isinstance(probe, (list, tuple)) and all(
            isinstance(p, (list, tuple, dict)) for p in probe
        )
        return [_as_streaming_probe(p, specs) for p in (probe if several else [probe])]
    chunks = _default_probes(model, specs[0])
    return chained_probes(model, chunks, specs)


def chained_probes(model, chunks, specs):
    """Each chunk with the states that the chunks before it leave, from zero states."""
    batch = chunks[0].shape[0]
    states = [np.zeros((batch, *s.shape[1:]), s.dtype.as_numpy_dtype) for s in specs[1:]]
    probes = []
    for chunk in chunks:
        probe = _as_streaming_probe([chunk, *states], specs)
        probes.append(probe)
        states = list(_reference_outputs(model, probe).values())[1:]
    return probes


def numbered_probes(probes):
    """Probe batches by the names that errors and the fresh process give them: `probe_0`,
    `probe_1`, ..."""
    return {f"probe_{j}": batch for j, batch in enumerate(probes)}


# ------------------------------------------------------------------- the comparison


def _reference_outputs(model, batch):
    """`model.predict` on a probe batch, as a dict of named NumPy arrays."""
    if isinstance(batch, dict):  # a streaming model's inputs by name, in its order
        outputs = streaming_named_outputs(model.predict(list(batch.values()), verbose=0))
        return {name: np.asarray(v).astype(wire_dtype(v.dtype)) for name, v in outputs.items()}
    x = batch
    if batch.dtype.kind == "U":
        # `predict` takes strings as a 1-D object array only (Keras 3.15 rejects NumPy
        # unicode arrays, and object arrays of shape (n, 1)); TextVectorization reads
        # both ranks alike.
        x = batch.astype(object)
    outputs = named_outputs(model.predict(x, verbose=0))
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


def _references(model, probes):
    """`model.predict`'s outputs on each batch of `probes` (a dict by probe name)."""
    return {probe_name: _reference_outputs(model, batch) for probe_name, batch in probes.items()}


def check_against_predict(model, probes, run, what):
    """Raises `ExportVerificationError` unless `run(batch)`, an export run in this process,
    gives `model.predict`'s outputs on every batch of `probes` (a dict by probe name).
    `what` names the export in the message."""
    served = {probe_name: run(batch) for probe_name, batch in probes.items()}
    _compare(_references(model, probes), served, what)


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
                f"{probe_name}/{name}": value
                for probe_name, p in numbered_probes(probes).items()
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


def _stop(process):
    """Kills the process and waits for it, so that it leaves no zombie and no open pipe."""
    process.kill()
    process.communicate()


def _finish_serving_process(process, manifest):
    """Waits for the process; returns, per job, {probe name: {output name: array}}."""
    try:
        _, stderr = process.communicate(timeout=VERIFY_TIMEOUT_S)
    except BaseException:
        _stop(process)
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


def verify_saved_models(jobs, labels=None):
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
            expected = [_references(model, numbered_probes(probes)) for model, _, probes in jobs]
        except BaseException:
            _stop(process)
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
