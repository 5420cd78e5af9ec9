#!/usr/bin/env python
"""Turn a trained Keras model (.keras) into a versioned SavedModel for TensorFlow Serving.

    python export/export_model.py MODEL.keras BASE_DIR [--version N] [--overwrite] [--onnx PATH]
        [--litert PATH [--batch-size N] [--sequence-length T]] [--streaming]

Writes BASE_DIR/<version>/ (saved_model.pb, variables/, assets/), the layout TensorFlow
Serving watches, with the signature `serving_default`: input "inputs", output "outputs".
The export is checked in a fresh process in which keras_recnorm can't be imported, against
model.predict, before it appears under its version number. Optionally also an ONNX file
and a LiteRT (.tflite) file with built-in ops only (fixed batch size and sequence length).
With --streaming, both exports run the model chunk by chunk, the recurrent states in and
out (docs/streaming.md). See export/README.md.
"""

import argparse
import os
import shutil
import sys
import tempfile
import zipfile

# The helper beside this file, however the file is loaded (run, or imported by path).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quiet_tensorflow import import_tensorflow_quietly  # noqa: E402

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class OneLineArgumentParser(argparse.ArgumentParser):
    """Reports a usage error as one line on stderr, with exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_args(argv):
    parser = OneLineArgumentParser(
        prog="export_model.py",
        description=__doc__.split("\n\n")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "example:\n  python export/export_model.py runs/sst2/model.keras "
            "/srv/models/sentiment --onnx runs/sst2/model.onnx\n\n"
            "exit status: 0 done; 2 bad input; 1 the export disagreed with model.predict,\n"
            "or the ONNX or LiteRT conversion failed. Nothing is written unless the status is 0."
        ),
    )
    parser.add_argument(
        "model",
        metavar="MODEL.keras",
        help="the trained model, as written by model.save('model.keras'); layers and "
        "cells of keras_recnorm are recognized",
    )
    parser.add_argument(
        "base_dir",
        metavar="BASE_DIR",
        help="the model's directory for TF Serving (its base_path); the export goes to "
        "BASE_DIR/<version>/. Created if missing.",
    )
    parser.add_argument(
        "--version",
        type=positive_int,
        default=None,
        metavar="N",
        help="version number, a positive integer (default: one more than the largest "
        "version already in BASE_DIR, or 1)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing version directory (and existing --onnx / --litert files); "
        "without it they are never touched",
    )
    parser.add_argument(
        "--onnx",
        metavar="PATH",
        default=None,
        help="also write the model as an ONNX file, checked with onnxruntime (needs "
        "pip install 'keras_recnorm[onnx]'; not possible for a model that takes raw "
        "strings)",
    )
    parser.add_argument(
        "--opset",
        type=positive_int,
        default=None,
        metavar="N",
        help="ONNX opset version for --onnx (default: tf2onnx's default)",
    )
    parser.add_argument(
        "--litert",
        metavar="PATH",
        default=None,
        help="also write the model as a LiteRT (.tflite) file with built-in ops only, its "
        "recurrent layers unrolled over --sequence-length steps, checked in the LiteRT "
        "interpreter (not possible for a model that takes raw strings)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        metavar="N",
        help="the LiteRT file's fixed batch size (default: 1)",
    )
    parser.add_argument(
        "--sequence-length",
        type=positive_int,
        default=None,
        metavar="T",
        help="the LiteRT file's fixed number of time steps (default: the model's own; "
        "required when its time dimension is dynamic; with --streaming, the chunk length, "
        "default 1). Pad shorter inputs to T.",
    )
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="export the streaming model (keras_recnorm.streaming.to_streaming): the "
        "SavedModel takes a chunk of time steps and the recurrent states (inputs, state_0, "
        "state_1, ...) and returns outputs and the next states; --litert writes it for a "
        "fixed chunk of --sequence-length steps (default 1). Not with --onnx.",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the checks against model.predict (the fresh-process reload of the "
        "SavedModel, the onnxruntime and LiteRT runs); faster, not recommended",
    )
    return parser.parse_args(argv)


def fail(message):
    print(f"export_model.py: error: {message}", file=sys.stderr)
    return 2


def one_line(error):
    """The first line of an exception's message and, if different, its last line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def check_paths(args):
    """Problems found without loading anything: returns a message, or None."""
    if not os.path.isfile(args.model):
        return f"model file {args.model} does not exist"
    with open(args.model, "rb") as f:
        head = f.read(len(HDF5_MAGIC))
    if not zipfile.is_zipfile(args.model) and head != HDF5_MAGIC:
        return (
            f"model file {args.model} is not a Keras model file (a .keras zip archive, "
            "as written by model.save('model.keras'))"
        )
    if os.path.exists(args.base_dir) and not os.path.isdir(args.base_dir):
        return f"BASE_DIR {args.base_dir} exists and is not a directory"
    if args.version is not None and not args.overwrite:
        target = os.path.join(args.base_dir, str(args.version))
        if os.path.exists(target):
            return f"version directory {target} already exists; pass --overwrite to replace it"
    if args.onnx is not None and os.path.exists(args.onnx) and not args.overwrite:
        return f"ONNX file {args.onnx} already exists; pass --overwrite to replace it"
    if args.litert is not None and os.path.exists(args.litert) and not args.overwrite:
        return f"LiteRT file {args.litert} already exists; pass --overwrite to replace it"
    if args.streaming and args.onnx is not None:
        return "--onnx: a streaming model can't be exported to ONNX; export without --onnx"
    return None


def streaming_model(model):
    """`(the streaming model, None)`, or `(None, a message)` when it can't be made."""
    from keras_recnorm.streaming import to_streaming

    try:
        return to_streaming(model), None
    except ValueError as error:
        return None, f"--streaming: {one_line(error)}"


def input_spec(model, args):
    """The TensorSpec of the input "inputs" of the export's signature."""
    from keras_recnorm import export

    if args.streaming:
        return export.streaming_input_specs(model)[0]
    return export.serving_input_spec(model)


def states_text(model):
    """The states of a streaming model's signature, e.g. "state_0..state_2 (h, c, step)"."""
    layout = model.state_layout
    names = ", ".join(f"{s.layer}/{s.name}" for s in layout)
    return f"state_0..state_{len(layout) - 1} ({names})"


def main(argv=None):
    # Arguments.
    args = parse_args(argv)
    problem = check_paths(args)
    if problem:
        return fail(problem)

    # Model: a .keras file does not depend on the backend, the export needs TensorFlow.
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import_tensorflow_quietly()
    import keras

    import keras_recnorm  # noqa: F401  (registers our layers and cells for loading)
    from keras_recnorm import export
    from keras_recnorm.export.files import missing_directories
    from keras_recnorm.export.litert import check_litert_dtypes
    from keras_recnorm.export.onnx_export import import_onnx_tools

    try:
        model = keras.saving.load_model(args.model, compile=False)
    except Exception as error:
        return fail(f"cannot load model file {args.model}: {one_line(error)}")
    if args.streaming:
        model, problem = streaming_model(model)
        if problem:
            return fail(problem)
    try:
        spec = input_spec(model, args)
    except ValueError as error:
        return fail(f"cannot export {args.model}: {one_line(error)}")
    if args.onnx is not None:
        if spec.dtype.name == "string":
            return fail(
                "--onnx: this model takes raw strings (it starts with TextVectorization), "
                "which ONNX can't express; export without --onnx"
            )
        try:
            import_onnx_tools()
        except ImportError as error:
            return fail(f"--onnx: {one_line(error)}")
    if args.litert is not None:
        if spec.dtype.name == "string":
            return fail(
                "--litert: this model takes raw strings (it starts with TextVectorization), "
                "which LiteRT's built-in ops can't express; export without --litert"
            )
        dynamic = len(spec.shape) >= 2 and spec.shape[1] is None
        if dynamic and args.sequence_length is None and not args.streaming:
            return fail(
                "--litert: the model's time dimension is dynamic and a LiteRT file's is "
                "fixed: pass --sequence-length T"
            )
        try:
            check_litert_dtypes(model)
        except ValueError as error:
            return fail(f"--litert: {one_line(error)}")

    # Export. All or nothing: the ONNX and LiteRT files are written aside first and moved
    # into place only once the SavedModel is in place too.
    verify = not args.no_verify
    side_files = {}  # final path -> (format, its path in a staging directory)
    staging_dirs, created_dirs = [], []
    for what, target in (("ONNX", args.onnx), ("LiteRT", args.litert)):
        if target is not None:
            final = os.path.abspath(target)
            created_dirs += missing_directories(os.path.dirname(final))
            os.makedirs(os.path.dirname(final), exist_ok=True)
            staging_dirs.append(tempfile.mkdtemp(prefix=".partial-", dir=os.path.dirname(final)))
            side_files[final] = (what, os.path.join(staging_dirs[-1], os.path.basename(final)))
    try:
        for what, staged in side_files.values():
            try:
                if what == "ONNX":
                    export.export_onnx(model, staged, opset=args.opset, verify=verify)
                else:
                    export.export_litert(
                        model,
                        staged,
                        batch_size=args.batch_size,
                        sequence_length=args.sequence_length,
                        verify=verify,
                    )
            except Exception as error:
                print(f"export_model.py: {what} export failed: {one_line(error)}", file=sys.stderr)
                return 1
        try:
            path = export.export_saved_model(
                model, args.base_dir, args.version, overwrite=args.overwrite, verify=verify
            )
        except (FileExistsError, NotADirectoryError, ValueError) as error:
            return fail(one_line(error))
        except export.ExportVerificationError as error:
            print(f"export_model.py: verification failed: {one_line(error)}", file=sys.stderr)
            return 1
        for final, (_, staged) in side_files.items():
            os.replace(staged, final)
    finally:
        for directory in staging_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        # Directories made for the side files, if the export left them empty.
        for directory in sorted(created_dirs, key=len, reverse=True):  # deepest first
            try:
                os.rmdir(directory)
            except OSError:  # it holds a file
                pass

    shape = [-1 if d is None else d for d in spec.shape]
    inputs, outputs = f"{export.INPUT_NAME} {spec.dtype.name} {shape}", export.OUTPUT_NAME
    if args.streaming:
        inputs, outputs = (f"{text}, {states_text(model)}" for text in (inputs, outputs))
    report = [
        f"SavedModel: {path}  (signature serving_default: {inputs} -> {outputs}"
        f"{', checked in a fresh process' if verify else ''})"
    ]
    checked = {"ONNX": "checked with onnxruntime", "LiteRT": "checked in the LiteRT interpreter"}
    for final, (what, _) in side_files.items():
        report.append(f"{what}: {final}{f'  ({checked[what]})' if verify else ''}")

    # Report.
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
