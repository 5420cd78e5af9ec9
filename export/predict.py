#!/usr/bin/env python
"""Answer a prediction request from an exported SavedModel, as TensorFlow Serving's REST API does.

    python export/predict.py EXPORT_DIR --json '{"instances": ["a fine film", "dull"]}'
    python export/predict.py EXPORT_DIR --file request.json
    python export/predict.py STREAMING_EXPORT_DIR --file request.json --chunk-length 1

The request and the answer are those of TF Serving's REST predict API
(POST /v1/models/<name>:predict): the row format {"instances": [...]} answers
{"predictions": [...]}, the columnar format {"inputs": ...} answers {"outputs": ...}.
With --chunk-length, a streaming export (`export_model.py --streaming`) is sent the
request's whole sequences a chunk at a time, the states carried from call to call as a
client of TF Serving would carry them. Uses only TensorFlow: neither Keras nor
keras_recnorm is imported.
"""

import argparse
import base64
import json
import math
import os
import re
import sys

# The helper beside this file, however the file is loaded (run, or imported by path).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quiet_tensorflow import import_tensorflow_quietly  # noqa: E402


class OneLineArgumentParser(argparse.ArgumentParser):
    """Reports a usage error as one line on stderr, with exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class BadRequest(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_args(argv):
    parser = OneLineArgumentParser(
        prog="predict.py",
        description=__doc__.split("\n\n")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "exit status: 0 answered (JSON on stdout); 2 bad input (a missing or unreadable\n"
            "export, malformed JSON, a request with the wrong dtype or rank), one line on\n"
            "stderr. Request formats and the served signature: export/README.md."
        ),
    )
    parser.add_argument(
        "export_dir",
        metavar="EXPORT_DIR",
        help="a version directory (holding saved_model.pb), or the model's base directory, "
        "in which case its highest version answers, as TF Serving does by default",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--json",
        metavar="REQUEST",
        help='the request body as a JSON string, e.g. \'{"instances": ["a fine film"]}\'',
    )
    source.add_argument(
        "--file",
        metavar="PATH",
        help="a file holding the JSON request body ('-' reads standard input)",
    )
    parser.add_argument(
        "--signature",
        metavar="NAME",
        default=None,
        help="the signature to call (default: the request's \"signature_name\", or "
        "serving_default)",
    )
    parser.add_argument(
        "--chunk-length",
        type=positive_int,
        default=None,
        metavar="K",
        help="stream the request through a streaming export (its signature takes inputs, "
        "state_0, state_1, ...): K time steps per call, from zero states (or the states the "
        "request gives), carrying the states between calls; the answer holds the outputs "
        "of every chunk (per-step outputs joined along time, else the last chunk's) and "
        "the final states",
    )
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------ request


def read_request(args):
    if args.json is not None:
        text, source = args.json, "--json"
    else:
        source = args.file
        try:
            if args.file == "-":
                text = sys.stdin.read()
            else:
                with open(args.file, encoding="utf-8") as f:
                    text = f.read()
        except (OSError, UnicodeDecodeError) as error:
            raise BadRequest(f"cannot read request file {args.file}: {error}")
    try:
        request = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadRequest(f"the request ({source}) is not valid JSON: {error}")
    if not isinstance(request, dict):
        raise BadRequest(
            'the request must be a JSON object, {"instances": [...]} or {"inputs": ...}, '
            f"got a {type(request).__name__}"
        )
    formats = [key for key in ("instances", "inputs") if key in request]
    if len(formats) != 1:
        raise BadRequest(
            'the request must have exactly one of "instances" (row format) and "inputs" '
            f"(columnar format); it has keys {sorted(request)}"
        )
    if formats == ["instances"]:
        instances = request["instances"]
        if not isinstance(instances, list) or not instances:
            raise BadRequest('"instances" must be a non-empty list, one item per example')
    return request, formats[0]


def find_saved_model(export_dir):
    if not os.path.isdir(export_dir):
        raise BadRequest(f"export directory {export_dir} does not exist")
    if os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
        return export_dir
    versions = [
        int(name)
        for name in os.listdir(export_dir)
        if name.isdigit() and os.path.isfile(os.path.join(export_dir, name, "saved_model.pb"))
    ]
    if not versions:
        raise BadRequest(
            f"{export_dir} holds no saved_model.pb, and no version directory with one"
        )
    return os.path.join(export_dir, str(max(versions)))


def _leaves(value, where):
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{where}[{i}]")
    else:
        yield where, value


def _is_b64(value):
    return isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)


def to_array(value, spec, where):
    """Checks a JSON value against a TensorSpec (dtype, rank, fixed sizes) -> NumPy array."""
    import numpy as np

    dtype = spec.dtype
    expected = "strings" if dtype.name == "string" else f"{dtype.name} numbers"
    for path, leaf in _leaves(value, where):
        if dtype.name == "string":
            ok = isinstance(leaf, str) or _is_b64(leaf)
        elif dtype.is_bool:
            ok = isinstance(leaf, bool)
        elif dtype.is_integer:
            ok = isinstance(leaf, int) and not isinstance(leaf, bool)
        else:
            ok = isinstance(leaf, (int, float)) and not isinstance(leaf, bool)
        if not ok:
            raise BadRequest(
                f"input {spec.name!r} expects {expected}, got {json.dumps(leaf)} at {path}"
            )
    if dtype.name == "string":
        value = _decode_strings(value)
    try:
        with np.errstate(over="ignore"):  # an overflow is refused below, in one line
            array = np.array(value, dtype=object if dtype.name == "string" else dtype.as_numpy_dtype)
    except ValueError:
        raise BadRequest(
            f"{where} has rows of different lengths; pad them to one length "
            f"(input {spec.name!r} expects shape {_shape_text(spec.shape)})"
        )
    except OverflowError:
        raise BadRequest(f"{where} holds a number out of the range of {dtype.name}")
    if dtype.is_floating and not np.isfinite(array).all():
        _refuse_overflow(value, dtype, where)
    if array.ndim != len(spec.shape):
        raise BadRequest(
            f"input {spec.name!r} expects rank {len(spec.shape)} (shape "
            f"{_shape_text(spec.shape)}, the first dimension over examples), got rank "
            f"{array.ndim} (shape {list(array.shape)}) in {where}"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
        if want is not None and want != got:
            raise BadRequest(
                f"input {spec.name!r} expects size {want} on axis {axis} (shape "
                f"{_shape_text(spec.shape)}), got shape {list(array.shape)} in {where}"
            )
    return array


def _refuse_overflow(value, dtype, where):
    """A finite request number that the input dtype can't hold would be served as inf:
    names the first one. (NaN and Infinity, which JSON parsers accept, pass as given.)"""
    import numpy as np

    for path, leaf in _leaves(value, where):
        with np.errstate(over="ignore"):
            overflows = math.isfinite(leaf) and not np.isfinite(np.asarray(leaf, dtype.as_numpy_dtype))
        if overflows:
            raise BadRequest(
                f"{path} = {json.dumps(leaf)} is out of the range of {dtype.name} (at most "
                f"{dtype.max:.7g} in magnitude); scale the input as the model was trained"
            )


def _decode_strings(value):
    if isinstance(value, list):
        return [_decode_strings(item) for item in value]
    if isinstance(value, dict):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError as error:
            raise BadRequest(f'a "b64" value is not valid base64: {error}')
    return value.encode("utf-8")


def _shape_text(shape):
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"


def request_tensors(request, request_format, specs):
    """The signature's keyword arguments, as NumPy arrays, from the request."""
    names = sorted(specs)
    if request_format == "instances":
        instances = request["instances"]
        single_named = len(names) == 1 and all(
            isinstance(item, dict) and set(item) == set(names) for item in instances
        )
        if len(names) == 1 and not single_named:
            columns = {names[0]: instances}
        else:
            for i, item in enumerate(instances):
                if not isinstance(item, dict) or set(item) != set(names):
                    raise BadRequest(
                        f"instances[{i}] must be an object with the inputs {names} "
                        f"of the signature"
                    )
            columns = {name: [item[name] for item in instances] for name in names}
        where = "instances"
    else:
        inputs = request["inputs"]
        if isinstance(inputs, dict) and not _is_b64(inputs):
            if set(inputs) != set(names):
                raise BadRequest(f'"inputs" must have the keys {names}, got {sorted(inputs)}')
            columns = inputs
        elif len(names) == 1:
            columns = {names[0]: inputs}
        else:
            raise BadRequest(f'"inputs" must be an object with the keys {names}')
        where = "inputs"
    return {
        name: to_array(columns[name], specs[name], where if len(names) == 1 else f"{where}.{name}")
        for name in names
    }


# ----------------------------------------------------------------------------- response


def to_json_value(array):
    """NumPy array -> JSON-ready nested lists: shortest float32 text, UTF-8 strings."""
    import numpy as np

    if array.dtype.kind == "f" and array.dtype.itemsize < 8:
        # str() of a float32 is the shortest decimal that reads back as the same float32.
        flat = [float(str(v)) for v in array.ravel()]
        return np.array(flat, dtype=object).reshape(array.shape).tolist()
    if array.dtype.kind in ("O", "S"):
        flat = np.empty(array.size, dtype=object)
        flat[:] = [_string_json(v) for v in array.ravel()]
        return flat.reshape(array.shape).tolist()
    return array.tolist()


def _string_json(value):
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:  # as TF Serving: binary strings travel as base64
        return {"b64": base64.b64encode(value).decode("ascii")}


def make_response(outputs, request_format):
    names = sorted(outputs)
    values = {name: to_json_value(outputs[name]) for name in names}
    if request_format == "inputs":
        return {"outputs": values[names[0]] if len(names) == 1 else values}
    if len(names) == 1:
        return {"predictions": values[names[0]]}
    count = len(values[names[0]])
    return {"predictions": [{name: values[name][i] for name in names} for i in range(count)]}


def op_message(error):
    """The failing op's own message in one line, from a TensorFlow error whose text is
    "Graph execution error:", a stack trace, the message and the node: e.g.
    "indices[0,2] = 100 is not in [0, 40) (at node functional/embedding/GatherV2)"."""
    text = getattr(error, "message", None) or str(error)
    node = re.search(r"Detected at node (\S+)", text)
    skip = ("Graph execution error:", "Detected at node", "<stack traces", "File ", "[[")
    lines = [line.strip() for line in text.splitlines()]
    messages = [line for line in lines if line and not line.startswith(skip)]
    if not messages:
        return lines[0] if lines and lines[0] else type(error).__name__
    return messages[0] + (f" (at node {node.group(1)})" if node else "")


def call_signature(signature, arrays):
    """The signature's outputs (NumPy arrays) on the request's arrays."""
    tf = import_tensorflow_quietly()
    try:
        outputs = signature(**{name: tf.constant(a) for name, a in arrays.items()})
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
        raise BadRequest(f"the model rejected the request: {op_message(error)}")
    return {name: value.numpy() for name, value in outputs.items()}


# ---------------------------------------------------------------------------- streaming


STATE_PREFIX = "state_"


def state_names(specs):
    """A streaming signature's state inputs, in order (state_0, state_1, ...)."""
    names = [n for n in specs if n.startswith(STATE_PREFIX) and n[len(STATE_PREFIX):].isdigit()]
    return sorted(names, key=lambda n: int(n[len(STATE_PREFIX):]))


def stream_request(signature, specs, request, request_format, chunk_length):
    """Runs the request's whole sequences through a streaming signature, `chunk_length`
    steps per call, carrying the states; returns the outputs and the final states."""
    import numpy as np

    states = state_names(specs)
    if "inputs" not in specs or not states:
        raise BadRequest(
            "--chunk-length needs a streaming export (export_model.py --streaming), whose "
            f"signature takes inputs, state_0, state_1, ...; this one takes {sorted(specs)}"
        )
    given = request["instances"][0] if request_format == "instances" else request["inputs"]
    with_states = isinstance(given, dict) and not _is_b64(given) and STATE_PREFIX + "0" in given
    wanted = specs if with_states else {"inputs": specs["inputs"]}
    sequences = given.get("inputs") if with_states else given
    if specs["inputs"].dtype.is_integer and any(
        isinstance(leaf, str) for _, leaf in _leaves(sequences, "")
    ):
        raise BadRequest(
            "a streaming export takes token ids, not text (its model starts after "
            "TextVectorization): tokenize the text first"
        )
    arrays = request_tensors(request, request_format, wanted)
    sequences = arrays.pop("inputs")
    if sequences.ndim < 2 or sequences.shape[1] == 0:
        raise BadRequest("the request's inputs have no time axis to stream over (batch, time, ...)")
    for name in states:
        if name not in arrays:  # zeros: the states before a sequence's first step
            spec = specs[name]
            arrays[name] = np.zeros((len(sequences), *spec.shape[1:]), spec.dtype.as_numpy_dtype)
    pieces = []
    for start in range(0, sequences.shape[1], chunk_length):
        outputs = call_signature(
            signature, {"inputs": sequences[:, start : start + chunk_length], **arrays}
        )
        pieces.append(outputs.pop("outputs"))
        arrays = {name: outputs[name] for name in states}
    joined = np.concatenate(pieces, axis=1) if pieces[0].ndim >= 3 else pieces[-1]
    return {"outputs": joined, **arrays}


def main(argv=None):
    # Arguments and request: checked before TensorFlow starts (seconds).
    args = parse_args(argv)
    try:
        request, request_format = read_request(args)
        saved_model_dir = find_saved_model(args.export_dir)
        signature_name = args.signature or request.get("signature_name") or "serving_default"

        # Model.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        tf = import_tensorflow_quietly()

        try:
            loaded = tf.saved_model.load(saved_model_dir)
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise BadRequest(
                f"cannot load the SavedModel in {saved_model_dir}: "
                f"{type(error).__name__}: {first}"
            )
        if signature_name not in loaded.signatures:
            raise BadRequest(
                f"the SavedModel has no signature {signature_name!r}; it has "
                f"{sorted(loaded.signatures)}"
            )
        signature = loaded.signatures[signature_name]
        specs = signature.structured_input_signature[1]

        # Prediction.
        if args.chunk_length is not None:
            outputs = stream_request(signature, specs, request, request_format, args.chunk_length)
        else:
            arrays = request_tensors(request, request_format, specs)
            outputs = call_signature(signature, arrays)
    except BadRequest as error:
        print(f"predict.py: error: {error}", file=sys.stderr)
        return 2

    # Answer.
    response = make_response(outputs, request_format)
    print(json.dumps(response))
    return 0


if __name__ == "__main__":
    sys.exit(main())
