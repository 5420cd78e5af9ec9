"""`make demo`: train, compare, export and serve, offline, in a few minutes on 2 CPU cores.

1. Trains LSTM, LN-LSTM and BN-LSTM on sequential digits (scikit-learn's bundled
   8x8 digits, one pixel per step) with examples/sequential_mnist.py.
2. Exports the cell with the best validation accuracy as a TF Serving SavedModel
   (`keras_recnorm.export.export_saved_model`).
3. Sends one test digit to the export through `export/predict.py`, which loads
   it with TensorFlow alone, as TF Serving would.
4. Prints where the table, the plot and the export are.

    python examples/demo.py [--output-dir runs/demo] [-- extra sequential_mnist options]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from examples import sequential_mnist  # noqa: E402
from examples.common import arguments  # noqa: E402
from examples.common.cells import TITLES  # noqa: E402


def build_parser():
    parser = arguments.ArgumentParser(
        description="Train LSTM / LN-LSTM / BN-LSTM on sequential digits, export the "
        "best as a SavedModel and request one prediction from the export.")
    parser.add_argument(
        "--output-dir", default="runs/demo",
        help="run directory: metrics.json, table.md, validation_accuracy.png, "
        "<cell>/model.keras and export/1/ (the SavedModel).")
    parser.add_argument(
        "training_args", nargs=argparse.REMAINDER,
        help="options passed on to examples/sequential_mnist.py after `--` "
        "(e.g. `-- --epochs 5`); --dataset digits and --cell all are fixed.")
    return parser


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    if args.training_args[:1] == ["--"]:
        args.training_args = args.training_args[1:]
    return args


@arguments.one_line_errors()
def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    output = Path(args.output_dir)

    # 1. Train and compare the three cells.
    training_argv = ["--dataset", "digits", "--cell", "all",
                     "--output-dir", str(output), *args.training_args]
    status = sequential_mnist.main(training_argv)
    if status:
        return status
    metrics = json.loads((output / "metrics.json").read_text())
    # The validation set picks the model; the test set only reports on it.
    best = max(metrics["cells"], key=lambda c: metrics["cells"][c]["best_valid_accuracy"])
    print(f"\nbest validation accuracy: {TITLES[best]} "
          f"({metrics['cells'][best]['best_valid_accuracy']:.3f})")

    # 2. Export it for TF Serving.
    import keras

    from keras_recnorm.export import export_saved_model

    model = keras.saving.load_model(output / best / "model.keras")
    export_path = Path(os.path.relpath(
        export_saved_model(model, output / "export", version=1, overwrite=True)))
    print(f"exported {best}/model.keras to {export_path}")

    # 3. One test digit through the export, in a separate process that uses
    #    TensorFlow only (TF Serving's REST request format).
    settings = metrics["settings"]
    data = sequential_mnist.load_data(argparse.Namespace(**settings))
    pixels, label = data.test.x[0], int(data.test.y[0])
    request = json.dumps({"instances": [pixels.tolist()]})
    answer = subprocess.run(
        [sys.executable, str(ROOT / "export" / "predict.py"), str(export_path),
         "--json", request],
        capture_output=True, text=True)
    if answer.returncode != 0:
        print(f"error: export/predict.py failed: {answer.stderr.strip()}", file=sys.stderr)
        return 1
    probabilities = json.loads(answer.stdout)["predictions"][0]
    predicted = max(range(len(probabilities)), key=probabilities.__getitem__)
    print(f"export/predict.py on the first test digit (label {label}): predicted "
          f"{predicted} with probability {probabilities[predicted]:.3f}")

    # 4. Where everything is.
    print(f"\ndemo done in {time.perf_counter() - start:.0f} s")
    print(f"  table:  {output / 'table.md'}")
    print(f"  plot:   {output / 'validation_accuracy.png'}")
    print(f"  export: {export_path}  (serve: python export/predict.py {export_path} "
          "--json '{\"instances\": [...]}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
