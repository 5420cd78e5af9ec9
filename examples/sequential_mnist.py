"""Pixel-by-pixel MNIST: LSTM vs LN-LSTM vs BN-LSTM (Cooijmans et al. 2016, Table 1).

Each image is read one pixel per time step (784 steps for MNIST, 64 for
scikit-learn's 8x8 digits); the last hidden state classifies the digit.
`--permute` shuffles the pixel order with a fixed permutation, which puts
long-range dependencies everywhere: the task where the paper's BN-LSTM
shines (LSTM 90.2% vs BN-LSTM 95.4% test accuracy).

    python examples/sequential_mnist.py --dataset digits --cell all
    python examples/sequential_mnist.py --dataset mnist --permute --cell batch_norm_lstm

With `--cell all` the three cells train with the same seed and budget; the
script prints a table beside the paper's figures and writes to --output-dir:
`metrics.json`, `table.md`, `validation_accuracy.png` and `<cell>/model.keras`
(the weights of the best validation epoch).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

if __package__ in (None, ""):
    # Run as a file: make `examples.common` importable from the repository root
    # (ahead of any other top-level `examples` package installed in the venv).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.common import arguments  # noqa: E402
from examples.common.cells import TITLES, cell_option, lookup, names, recurrent_layer  # noqa: E402
from examples.common.tfds_data import DatasetUnavailable  # noqa: E402

# The paper's experiment is about LSTMs (its initialization is the LSTM's: see
# init_recurrent_kernel): Keras's LSTM and every normalized LSTM of keras_recnorm.
CELLS = names(recurrence="lstm")

# Cooijmans et al. 2016, Table 1: test accuracy (%) on full-size MNIST
# (784 steps, hidden 100). The LN paper reports no sequential-MNIST figure.
PAPER_TEST_ACCURACY = {
    False: {"lstm": 98.9, "batch_norm_lstm": 99.0},
    True: {"lstm": 90.2, "batch_norm_lstm": 95.4},
}

# Per-dataset defaults. MNIST: the paper's settings (its reference scripts
# train 200 epochs). Digits: the same model and optimizer, with a budget that
# runs the three-cell comparison in a few minutes on 2 CPU cores.
DEFAULTS = {
    "mnist": dict(units=100, epochs=200, batch_size=100, learning_rate=1e-3),
    "digits": dict(units=100, epochs=40, batch_size=100, learning_rate=1e-3),
}


def build_parser():
    parser = arguments.ArgumentParser(
        description=(
            "Train LSTM, layer-normalized LSTM and recurrent batch-normalized "
            "LSTM on pixel-by-pixel digit classification (Cooijmans et al. 2016)."
        ),
    )
    parser.add_argument(
        "--dataset", choices=("digits", "mnist"), default="digits",
        help="digits: scikit-learn's bundled 8x8 digits as 64-step sequences "
        "(no download; 1197/300/300 images, stratified split fixed by --seed); "
        "mnist: TFDS MNIST as 784-step sequences, 50k/10k/10k as the paper "
        "(default: %(default)s).")
    parser.add_argument(
        "--data-dir", default=None,
        help="TFDS data directory for --dataset mnist (default: $TFDS_DATA_DIR "
        "or ~/tensorflow_datasets). Without network MNIST must be prepared there.")
    parser.add_argument(
        "--permute", action="store_true",
        help="feed the pixels in a fixed random order (seeded by --seed): "
        "the permuted task.")
    parser.add_argument("--cell", **cell_option(
        CELLS, default="all", all_cells=True,
        help="lstm: keras.layers.LSTM; layer_norm_lstm: LN-LSTM; batch_norm_lstm: "
        "BN-LSTM with per-time-step statistics; all: each of them, same seed and "
        "budget, with a comparison table and plot (default: %(default)s)"))
    parser.add_argument(
        "--units", type=arguments.positive_int, default=None,
        help="hidden units (default: 100 for both datasets, as the paper).")
    parser.add_argument(
        "--epochs", type=arguments.positive_int, default=None,
        help="training epochs per cell (default: 200 for mnist, the reference "
        f"scripts'; {DEFAULTS['digits']['epochs']} for digits).")
    parser.add_argument(
        "--batch-size", type=arguments.positive_int, default=None,
        help="batch size (default: 100, the paper's).")
    parser.add_argument(
        "--learning-rate", type=arguments.positive_float, default=None,
        help="RMSProp learning rate (default: 1e-3, the paper's).")
    parser.add_argument(
        "--clipnorm", type=arguments.non_negative_float, default=1.0,
        help="clip each gradient to this L2 norm; 0 disables (default: %(default)s, "
        "the paper's).")
    parser.add_argument(
        "--gamma", type=arguments.positive_float, default=0.1,
        help="initial value of the BN-LSTM's gains γ (default: %(default)s, the "
        "paper's; it found values <= 0.01 unstable).")
    parser.add_argument(
        "--h0-noise", type=arguments.non_negative_float, default=0.1,
        help="standard deviation of Gaussian noise added to the BN-LSTM's initial "
        "hidden state during training: the paper's fix for zero-variance "
        "leading pixels (h0 = 0 and x = 0 give a batch variance of 0). "
        "0 disables it; other cells start from zeros (default: %(default)s).")
    parser.add_argument(
        "--population-statistics", choices=("recompute", "moving"), default="recompute",
        help="BN-LSTM inference statistics. recompute: before each validation, set "
        "them to exact averages of the batch statistics over --statistics-examples "
        "training sequences (the paper's sec. 4 alternative, as the authors' "
        "evaluation script does). moving: the layer's moving averages (momentum "
        "0.95) alone; they start at mean 0, variance 1 and need a few hundred "
        "batches to forget that, more than a digits run has (default: %(default)s).")
    parser.add_argument(
        "--statistics-examples", type=arguments.positive_int, default=500,
        help="training sequences (a fixed sample, in batches of --batch-size) used by "
        "--population-statistics recompute (default: %(default)s).")
    parser.add_argument(
        "--seed", type=int, default=0,
        help="seed of the data split, the permutation, weight initialization and "
        "shuffling; every cell of --cell all uses it "
        "(default: %(default)s).")
    parser.add_argument(
        "--max-examples", type=arguments.positive_int, default=None,
        help="use at most this many images of each split (quick checks).")
    parser.add_argument(
        "--output-dir", default=None,
        help="where metrics.json, table.md, the plot and <cell>/model.keras go "
        "(default: runs/sequential_<dataset>[_permuted]).")
    parser.add_argument(
        "--verbose", type=int, choices=(0, 1, 2), default=1,
        help="Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch "
        "(default: %(default)s).")
    return parser


def parse_args(argv=None):
    """The arguments, with the dataset's defaults filled in; UsageError if they can't work."""
    args = build_parser().parse_args(argv)

    for name, value in DEFAULTS[args.dataset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.data_dir is not None and args.dataset != "mnist":
        raise arguments.UsageError("argument --data-dir: only used with --dataset mnist")
    if args.output_dir is None:
        suffix = "_permuted" if args.permute else ""
        args.output_dir = os.path.join("runs", f"sequential_{args.dataset}{suffix}")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise arguments.UsageError(f"argument --output-dir: {args.output_dir} exists and is "
                                   "not a directory")
    args.cells = list(CELLS) if args.cell == "all" else [args.cell]
    return args


# --- data -------------------------------------------------------------------


def load_data(args):
    """The task's splits as `PixelSequences`, permuted and truncated as asked."""
    from examples.common.pixel_sequences import (
        load_digits_sequences,
        load_mnist_sequences,
        pixel_permutation,
    )

    if args.dataset == "digits":
        data = load_digits_sequences(seed=args.seed)
    else:
        data = load_mnist_sequences(args.data_dir)
    if args.permute:
        data = data.permuted(pixel_permutation(data.timesteps, args.seed))
    if args.max_examples:
        for split in (data.train, data.valid, data.test):
            split.x = split.x[: args.max_examples]
            split.y = split.y[: args.max_examples]
    return data


# --- model ------------------------------------------------------------------


def _keras():
    import logging

    import keras

    # Each cell's fit and evaluate trace new functions; TF warns about "retracing".
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return keras


def zero_states_with_noise_layer():
    """A layer making an RNN's initial states: zeros, plus noise on h in training.

    Defined in a function so that importing this module does not import Keras.
    Used only by the training model: the saved model starts from zeros (this
    layer is the identity of zeros outside training), so it loads without
    this module.
    """
    keras = _keras()
    from keras import ops

    class ZeroStatesWithNoise(keras.layers.Layer):
        def __init__(self, state_sizes, stddev, seed=None, **kwargs):
            super().__init__(**kwargs)
            self.state_sizes = list(state_sizes)
            self.stddev = stddev
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, sequences, training=None):
            batch = ops.shape(sequences)[0]
            states = [ops.zeros((batch, size), dtype=sequences.dtype)
                      for size in self.state_sizes]
            if training and self.stddev > 0:
                # Cooijmans et al. 2016, sec. 5.1: h0 = 0 and leading zero pixels
                # make the first steps' batch variance 0; noise in h0 fixes it.
                states[0] = keras.random.normal(
                    (batch, self.state_sizes[0]), stddev=self.stddev,
                    dtype=sequences.dtype, seed=self.seed_generator)
            return states

        def compute_output_shape(self, input_shape):
            return [(input_shape[0], size) for size in self.state_sizes]

    return ZeroStatesWithNoise


def init_recurrent_kernel(layer, seed):
    """Identity on the candidate block, orthogonal gate blocks.

    The paper's reference code (`--init id`) starts the recurrent weights of
    the candidate g at the identity and those of the gates i, f, o from an
    orthogonal (units, 3 * units) matrix. Keras's gate order is i, f, g, o.
    """
    import numpy as np

    (kernel,) = [w for w in layer.weights if w.name == "recurrent_kernel"]
    units = kernel.shape[0]
    random = np.random.default_rng(seed).standard_normal((3 * units, units))
    q, r = np.linalg.qr(random)
    gates = (q * np.sign(np.diag(r))).T  # (units, 3 * units), orthonormal rows
    i, f, o = np.split(gates, 3, axis=1)
    kernel.assign(np.concatenate([i, f, np.eye(units), o], axis=1).astype("float32"))


def state_sizes(layer):
    sizes = layer.cell.state_size
    return list(sizes) if isinstance(sizes, (list, tuple)) else [sizes]


def build_models(cell, timesteps, num_classes, args):
    """Returns `(train_model, model)` sharing their layers.

    `model` starts the recurrence from zero states: it is the one evaluated
    and saved. `train_model` is the same network, plus noise in the BN-LSTM's
    initial hidden state when --h0-noise > 0; otherwise it is `model` itself.
    """
    keras = _keras()

    keras.utils.set_random_seed(args.seed)
    sequences = keras.Input((timesteps, 1), name="pixels")
    # The paper's MNIST runs: orthogonal input kernel (the recurrent one is set below);
    # BN-LSTM: one slot of statistics per pixel position, γ for all three normalizations.
    rnn = recurrent_layer(cell, args.units, max_timesteps=timesteps, gamma=args.gamma,
                          kernel_initializer="orthogonal", name=cell)
    classifier = keras.layers.Dense(num_classes, activation="softmax", name="classifier")
    model = keras.Model(sequences, classifier(rnn(sequences)), name=f"sequential_{cell}")
    init_recurrent_kernel(rnn, args.seed)

    train_model = model
    if lookup(cell).family == "batch_norm" and args.h0_noise > 0:
        initial = zero_states_with_noise_layer()(
            state_sizes(rnn), args.h0_noise, seed=args.seed, name="initial_states")
        train_model = keras.Model(
            sequences, classifier(rnn(sequences, initial_state=initial(sequences))),
            name=f"sequential_{cell}_train")

    optimizer = keras.optimizers.RMSprop(
        learning_rate=args.learning_rate, clipnorm=args.clipnorm or None)
    for m in {id(model): model, id(train_model): train_model}.values():
        m.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return train_model, model


# --- training ---------------------------------------------------------------


def make_tracker(model):
    """A callback recording training time per epoch and the best validation epoch.

    The time runs from the start of the epoch to the start of its validation:
    training alone, without evaluation or statistics passes.
    """
    keras = _keras()

    class Tracker(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []
            self.best_accuracy = -1.0
            self.best_epoch = None
            self.best_weights = None
            self._start = None

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_test_begin(self, logs=None):
            if self._start is not None:
                self.seconds.append(time.perf_counter() - self._start)
                self._start = None

        def on_epoch_end(self, epoch, logs=None):
            accuracy = float(logs["val_accuracy"])
            if accuracy > self.best_accuracy:
                self.best_accuracy = accuracy
                self.best_epoch = epoch + 1
                # Includes the population statistics this validation used.
                self.best_weights = model.get_weights()

    return Tracker()


def make_statistics_callback(train_model, batches):
    """Before each validation: BN population statistics := exact averages over `batches`."""
    import contextlib
    import io

    keras = _keras()
    from keras_recnorm import recompute_population_statistics

    class RecomputeStatistics(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            # Its own progress bar would cut through the epoch's.
            with contextlib.redirect_stdout(io.StringIO()):
                recompute_population_statistics(train_model, batches)

    return RecomputeStatistics()


def train_cell(cell, data, args):
    """Trains one cell; returns its metrics and the model at its best epoch."""
    import numpy as np

    train_model, model = build_models(cell, data.timesteps, data.num_classes, args)
    callbacks = [make_tracker(model)]
    if lookup(cell).family == "batch_norm" and args.population_statistics == "recompute":
        # Statistics of a fixed sample, gathered in inference mode (h0 = 0, as served).
        order = np.random.default_rng(args.seed).permutation(len(data.train))
        sample = data.train.x[order[: args.statistics_examples]]
        batches = [sample[i: i + args.batch_size] for i in range(0, len(sample), args.batch_size)]
        callbacks.append(make_statistics_callback(train_model, batches))
    history = train_model.fit(
        data.train.x, data.train.y,
        validation_data=(data.valid.x, data.valid.y),
        batch_size=args.batch_size, epochs=args.epochs, shuffle=True,
        callbacks=callbacks, verbose=args.verbose,
    )
    tracker = callbacks[0]
    model.set_weights(tracker.best_weights)
    _, test_accuracy = model.evaluate(data.test.x, data.test.y,
                                      batch_size=args.batch_size, verbose=0)
    curves = {k: [float(v) for v in values] for k, values in history.history.items()}
    # Keras reports accuracy in float32: 270/300 arrives as 0.89999998.
    reached = [e + 1 for e, a in enumerate(curves["val_accuracy"]) if a >= 0.9 - 1e-6]
    metrics = {
        "best_valid_accuracy": tracker.best_accuracy,
        "best_epoch": tracker.best_epoch,
        "test_accuracy": float(test_accuracy),
        "first_epoch_valid_90": reached[0] if reached else None,
        "seconds_per_epoch": float(np.median(tracker.seconds)),
        "epoch_seconds": tracker.seconds,
        "history": curves,
        "paper_test_accuracy": PAPER_TEST_ACCURACY[args.permute].get(cell),
    }
    return metrics, model


# --- report -----------------------------------------------------------------


def format_table(results, args, timesteps):
    task = ("permuted " if args.permute else "") + (
        "MNIST" if args.dataset == "mnist" else "digits")
    lines = [
        f"Sequential {task} ({timesteps} steps): hidden {args.units}, "
        f"{args.epochs} epochs, batch {args.batch_size}, RMSProp {args.learning_rate:g}, "
        f"seed {args.seed}.",
        "",
        "| cell | best valid acc | at epoch | test acc (at best valid) "
        "| first epoch ≥ 90% valid | train s/epoch "
        f"| paper: {'permuted ' if args.permute else ''}MNIST test acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for cell, m in results.items():
        paper = m["paper_test_accuracy"]
        lines.append(
            f"| {TITLES[cell]} | {m['best_valid_accuracy']:.3f} | {m['best_epoch']} "
            f"| {m['test_accuracy']:.3f} | {m['first_epoch_valid_90'] or '—'} "
            f"| {m['seconds_per_epoch']:.1f} | {f'{paper:.1f}%' if paper else '—'} |")
    lines += [
        "",
        "train s/epoch: median training time of an epoch (no evaluation). Paper: "
        "Cooijmans et al. 2016, Table 1 (784 steps, hidden 100, full MNIST); the LN "
        "paper reports no sequential-MNIST result.",
    ]
    return "\n".join(lines)


def write_report(results, args, timesteps, wall_seconds):
    from examples.common.plotting import plot_curves

    output = Path(args.output_dir)
    table = format_table(results, args, timesteps)
    (output / "table.md").write_text(table + "\n")
    plot = plot_curves(
        {TITLES[c]: m["history"]["val_accuracy"] for c, m in results.items()},
        output / "validation_accuracy.png",
        title=f"Sequential {'permuted ' if args.permute else ''}{args.dataset} "
        f"({timesteps} steps), hidden {args.units}",
        ylabel="validation accuracy",
    )
    settings = {k: v for k, v in vars(args).items() if k not in ("cells",)}
    metrics = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                   f"{platform.system()} {platform.release()}",
        "wall_seconds": wall_seconds,
        "timesteps": timesteps,
        "settings": settings,
        "cells": {c: dict(m, model=f"{c}/model.keras") for c, m in results.items()},
    }
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return table, plot


@arguments.one_line_errors(DatasetUnavailable)
def main(argv=None):
    args = parse_args(argv)
    data = load_data(args)
    print(f"{args.dataset}: {len(data.train)} train / {len(data.valid)} valid / "
          f"{len(data.test)} test sequences of {data.timesteps} pixels"
          f"{' (permuted)' if args.permute else ''}")

    start = time.perf_counter()
    output = Path(args.output_dir)
    results = {}
    for cell in args.cells:
        print(f"\n== {TITLES[cell]} ==")
        results[cell], model = train_cell(cell, data, args)
        (output / cell).mkdir(parents=True, exist_ok=True)
        model.save(output / cell / "model.keras")
    wall_seconds = time.perf_counter() - start

    table, plot = write_report(results, args, data.timesteps, wall_seconds)
    print("\n" + table)
    print(f"\nwall time {wall_seconds:.0f} s; wrote {output / 'metrics.json'}, "
          f"{output / 'table.md'}, {plot} and <cell>/model.keras in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
