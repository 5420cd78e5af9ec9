"""Streaming inference on a device: train a small model, then run it one time step at a time
through a LiteRT file, as a sensor would feed it.

The task: a 3-channel, accelerometer-like signal switches between resting (slow drift and
noise) and moving (a shaky oscillation); the model says at every step whether the device is
moving. A recurrent layer of keras_recnorm (BN-LSTM by default) learns it on synthetic
data (offline, well under a minute on a CPU). Then:

1. `keras_recnorm.streaming.to_streaming` turns the trained model into one that takes one
   chunk of steps and the recurrent states, and returns the outputs and the next states;
2. `keras_recnorm.export.export_litert` writes it for one step of one sequence
   (`streaming.tflite`, built-in ops only, checked in the LiteRT interpreter);
3. a held-back sequence, longer than the training ones (so the BN layer reads its last
   slot of statistics past `max_timesteps`), is streamed through the LiteRT interpreter a
   step at a time, the states carried between calls.

It prints the per-step latency (median, 99th percentile) and the largest difference from
the whole-sequence model (`model.predict` on the whole sequence), and plots the streamed
outputs beside the whole-sequence ones (`streaming.png`).

    python examples/streaming.py [--cell batch_norm_lstm] [--output-dir runs/streaming]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The LiteRT export needs TensorFlow, and this script trains and exports in one process.
os.environ["KERAS_BACKEND"] = "tensorflow"

if __package__ in (None, ""):
    # Run as a file: make `examples.common` importable from the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from examples.common import arguments  # noqa: E402

CHANNELS = 3


# Every option but --cell: (name, type, default, help).
OPTIONS = (
    ("--units", arguments.positive_int, 32, "hidden units of the recurrent layer"),
    ("--sequences", arguments.positive_int, 512, "number of training sequences"),
    ("--length", arguments.positive_int, 64,
     "steps per training sequence; also the batch-normalized layer's max_timesteps"),
    ("--epochs", arguments.positive_int, 12, "training epochs"),
    ("--batch-size", arguments.positive_int, 32, "training batch size"),
    ("--stream-length", arguments.positive_int, 200,
     "steps of the held-back sequence streamed through the LiteRT file, one per call (past "
     "--length, the batch-normalized layer reads its last slot of statistics)"),
    ("--seed", int, 0, "seed of the data and of the weights"),
    ("--output-dir", str, "runs/streaming",
     "where to write model.keras, streaming.tflite, streaming.png and metrics.json"),
)


def build_parser():
    parser = arguments.ArgumentParser(
        description="Train a small recurrent model on a synthetic sensor stream, export it "
        "for streaming to LiteRT and run a held-back sequence through it one step at a "
        "time: per-step latency and agreement with the whole-sequence model.",
    )
    # The names are checked against keras_recnorm.kinds after parsing, so that --help
    # starts no TensorFlow.
    parser.add_argument(
        "--cell", default="batch_norm_lstm",
        help="a kind of keras_recnorm.kinds.KINDS (layer_norm_lstm, layer_norm_gru, "
        "batch_norm_lstm, ...): its whole-sequence layer, or keras.layers.RNN of its cell "
        "where it has none (default: batch_norm_lstm)")
    for name, kind, default, text in OPTIONS:
        parser.add_argument(name, type=kind, default=default, help=f"{text} (default: {default})")
    return parser


def sensor_sequences(count, length, rng):
    """`(signals (count, length, 3) float32, moving (count, length, 1) float32)`: segments
    of rest (drift and noise) and motion (an oscillation of random frequency and phase per
    channel), 8 to 40 steps each."""
    signals = np.empty((count, length, CHANNELS), "float32")
    moving = np.empty((count, length, 1), "float32")
    for n in range(count):
        t, state = 0, rng.integers(2)
        while t < length:
            end = min(length, t + int(rng.integers(8, 41)))
            steps = np.arange(end - t)[:, None]
            drift = 0.05 * np.cumsum(rng.normal(size=(end - t, CHANNELS)), axis=0)
            if state:
                frequency = rng.uniform(0.15, 0.35, CHANNELS)
                phase = rng.uniform(0, 2 * np.pi, CHANNELS)
                segment = rng.uniform(0.6, 1.2) * np.sin(2 * np.pi * frequency * steps + phase)
            else:
                segment = drift
            signals[n, t:end] = segment + 0.15 * rng.normal(size=(end - t, CHANNELS))
            moving[n, t:end] = state
            t, state = end, 1 - state
    return signals, moving


def recurrent_layer(name, units, max_timesteps):
    import keras

    from keras_recnorm.kinds import kind

    k = kind(name)
    extra = {"max_timesteps": max_timesteps} if k.batch_norm else {}
    if k.layer is not None:
        return k.layer(units, return_sequences=True, **extra)
    return keras.layers.RNN(k.cell(units, **extra), return_sequences=True)


def plot(signal, full, streamed, moving, path):
    """The signal, and the whole-sequence and streamed outputs over it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5.5), dpi=100)
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.plot(signal, linewidth=0.8)
    top.set_ylabel("signal (3 channels)")
    top.set_title("Held-back sensor stream")
    steps = np.arange(len(full))
    bottom.fill_between(steps, 0, moving, step="mid", alpha=0.15, label="moving (truth)")
    bottom.plot(steps, full, linewidth=2.5, alpha=0.6, label="whole sequence (model.predict)")
    bottom.plot(steps, streamed, "k:", linewidth=1.2, label="streamed, one step per call (LiteRT)")
    bottom.set_xlabel("time step")
    bottom.set_ylabel("P(moving)")
    bottom.set_ylim(-0.05, 1.05)
    bottom.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize="small")
    figure.tight_layout()
    figure.savefig(path)


@arguments.one_line_errors()
def main(argv=None):
    # Arguments.
    args = build_parser().parse_args(argv)
    from keras_recnorm.kinds import kind

    try:
        kind(args.cell)
    except ValueError as error:
        raise arguments.UsageError(f"argument --cell: {error}") from None
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)

    # Data: training sequences, and one longer held-back sequence.
    rng = np.random.default_rng(args.seed)
    x_train, y_train = sensor_sequences(args.sequences, args.length, rng)
    x_valid, y_valid = sensor_sequences(max(1, args.sequences // 8), args.length, rng)
    (signal,), (moving,) = sensor_sequences(1, args.stream_length, rng)

    # Model.
    import keras

    from keras_recnorm.export import export_litert, litert_interpreter
    from keras_recnorm.streaming import initial_states, to_streaming

    keras.utils.set_random_seed(args.seed)
    model = keras.Sequential([
        keras.Input((None, CHANNELS)),
        recurrent_layer(args.cell, args.units, args.length),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy",
                  metrics=["binary_accuracy"])

    # Training.
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
              validation_data=(x_valid, y_valid), verbose=2)
    training_s = time.perf_counter() - start

    # Report: the whole-sequence model on the held-back sequence.
    _, accuracy = model.evaluate(x_valid, y_valid, verbose=0)
    full = model.predict(signal[None], verbose=0)[0, :, 0]
    print(f"\ntrained {args.cell} in {training_s:.1f} s: validation accuracy {accuracy:.3f}")
    model.save(output / "model.keras")

    # Export: the streaming model as a LiteRT file for one step of one sequence, and the
    # held-back sequence streamed through it, the states carried by this loop.
    streaming = to_streaming(model)
    tflite = export_litert(streaming, output / "streaming.tflite", batch_size=1,
                           sequence_length=1, overwrite=True)
    runner = litert_interpreter(model_path=tflite).get_signature_runner("serve")
    names = [f"state_{i}" for i in range(len(streaming.state_layout))]
    states = dict(zip(names, (s.astype("float32") for s in initial_states(streaming, 1))))
    streamed, latency = [], []
    for t in range(len(signal)):
        step = signal[None, t : t + 1]
        tic = time.perf_counter()
        result = runner(inputs=step, **states)
        latency.append(time.perf_counter() - tic)
        streamed.append(float(result["outputs"][0, 0, 0]))
        states = {name: result[name] for name in names}
    streamed = np.array(streamed)
    difference = float(np.abs(streamed - full).max())
    median, p99 = (float(np.percentile(latency, q)) * 1e3 for q in (50, 99))
    plot(signal, full, streamed, moving[:, 0], output / "streaming.png")
    metrics = {"cell": args.cell, "validation_accuracy": accuracy, "steps": len(signal),
               "latency_ms_median": median, "latency_ms_p99": p99,
               "max_abs_difference": difference,
               "states": [f"{s.layer}/{s.name} ({s.size})" for s in streaming.state_layout]}
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"streamed {len(signal)} steps one at a time through {tflite}")
    print(f"  states carried: {', '.join(metrics['states'])}")
    print(f"  per-step latency: median {median:.3f} ms, p99 {p99:.3f} ms")
    print(f"  max |streamed - whole sequence|: {difference:.2e}")
    print(f"  plot: {output / 'streaming.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
