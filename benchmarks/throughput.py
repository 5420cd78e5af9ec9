"""Training- and inference-step throughput of our recurrent layers, each as a ratio to its
Keras twin (`keras.layers.LSTM`, `keras.layers.GRU`, ...) measured in the same process.

Absolute times on a shared machine drift by 2x from minute to minute, so every candidate
is timed alternating with its twin, step by step, on the same data, and the median of the
per-step ratios is reported (lower is faster; 1.0 = as fast as the Keras layer).

A step is one `train_on_batch` (forward, backward, Adam) or one `predict_on_batch` of
`Input((T, D)) -> layer(U) -> Dense(1)`, built with a dynamic batch dimension (as users
build models). On TensorFlow each model runs at its faster `jit_compile` setting for
training (both are tried; the faster is kept and printed); JAX always compiles (XLA), torch
runs eagerly. The roofline column is the step's matmul FLOPs over the time one plain matmul
of those FLOPs takes here: the fraction of the machine's matmul speed the step reaches.

The machine (CPU model, cores, accelerators) and the library versions are printed first:
ratios depend on the machine, so keep them beside any figure.

The layers and their twins come from the table of cell kinds (`keras_recnorm.kinds.KINDS`):
a new kind with a whole-sequence layer is measured without an edit here.

Usage:
    python benchmarks/throughput.py                      # every layer, the three shapes
    python benchmarks/throughput.py --backend jax        # the same on JAX
    python benchmarks/throughput.py --only LayerNormGRU --shape 32,200,64,128
    python benchmarks/throughput.py --mode infer         # inference steps only
    python benchmarks/throughput.py --quick              # smoke run: checks it works
"""

import argparse
import functools
import os
import platform
import statistics
import sys
import time

STANDARD_SHAPES = [(64, 100, 128, 256), (32, 200, 64, 128), (128, 50, 256, 512)]
QUICK_SHAPE = (4, 5, 3, 8)

BACKENDS = ["tensorflow", "jax", "torch"]
# Candidates beyond the table's layers, with their twin: the LN-LSTM cell in Keras's loop,
# and an LN-LSTM cell as commonly written by hand.
EXTRA_LSTM_CANDIDATES = ["RNN(LayerNormLSTMCell)", "hand-written LN cell"]
# Width of the pre-activations per unit: the gates of each recurrence.
GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}


def layer_kinds():
    """`{layer class name: kind}` of every kind with a whole-sequence layer (imports Keras:
    call after choosing the backend)."""
    from keras_recnorm.kinds import KINDS

    return {kind.layer.__name__: kind for kind in KINDS if kind.layer is not None}


@functools.lru_cache(maxsize=None)
def twins():
    """`{candidate: (its Keras twin, its recurrence)}`, grouped by twin: each twin (the
    baseline its group's ratios are taken to), then our layers of it in the table's order
    (imports Keras: call after choosing the backend)."""
    groups = {}
    for name, kind in layer_kinds().items():
        twin = f"keras.layers.{kind.keras_twin}"
        groups.setdefault(twin, [(twin, kind.recurrence)]).append((name, kind.recurrence))
    groups["keras.layers.LSTM"] += [(extra, "lstm") for extra in EXTRA_LSTM_CANDIDATES]
    return {name: (twin, recurrence)
            for twin, group in groups.items() for name, recurrence in group}


def make_layer(name, units, steps):
    """A fresh layer of candidate `name` (imports Keras: call after choosing the backend)."""
    import keras

    if name.startswith("keras.layers."):
        return getattr(keras.layers, name.rpartition(".")[2])(units)
    if name == "RNN(LayerNormLSTMCell)":
        from keras_recnorm import LayerNormLSTMCell

        return keras.layers.RNN(LayerNormLSTMCell(units))
    if name == "hand-written LN cell":
        return keras.layers.RNN(hand_written_ln_lstm_cell(units))
    kind = layer_kinds()[name]
    return kind.layer(units, max_timesteps=steps) if kind.batch_norm else kind.layer(units)


def hand_written_ln_lstm_cell(units):
    """An LN-LSTM cell as commonly written by hand: three LayerNormalization layers."""
    import keras
    from keras import ops

    class HandWrittenLNLSTMCell(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.units, self.state_size, self.output_size = units, [units, units], units
            self.norm_input = keras.layers.LayerNormalization(center=False)
            self.norm_recurrent = keras.layers.LayerNormalization(center=False)
            self.norm_cell = keras.layers.LayerNormalization()

        def build(self, input_shape):
            width = 4 * units
            self.kernel = self.add_weight(shape=(input_shape[-1], width), name="kernel")
            self.recurrent_kernel = self.add_weight(
                shape=(units, width), name="recurrent_kernel", initializer="orthogonal"
            )
            self.bias = self.add_weight(shape=(width,), name="bias", initializer="zeros")
            self.norm_input.build((None, width))
            self.norm_recurrent.build((None, width))
            self.norm_cell.build((None, units))

        def call(self, inputs, states):
            h, c = states
            z = (
                self.norm_input(ops.matmul(inputs, self.kernel))
                + self.norm_recurrent(ops.matmul(h, self.recurrent_kernel))
                + self.bias
            )
            i, f, g, o = ops.split(z, 4, axis=-1)
            c = ops.sigmoid(f) * c + ops.sigmoid(i) * ops.tanh(g)
            h = ops.sigmoid(o) * ops.tanh(self.norm_cell(c))
            return h, [h, c]

    return HandWrittenLNLSTMCell()


class Runner:
    """One compiled model; `train()` and `infer()` run and time one step each."""

    def __init__(self, name, shape, jit_compile, seed=0):
        import keras
        import numpy as np

        batch, steps, features, units = shape
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((steps, features))  # the batch dimension stays dynamic
        outputs = keras.layers.Dense(1)(make_layer(name, units, steps)(inputs))
        self.model = keras.Model(inputs, outputs)
        self.model.compile(optimizer="adam", loss="mse", jit_compile=jit_compile)
        rng = np.random.default_rng(seed)
        self.x = keras.ops.convert_to_tensor(rng.normal(size=(batch, steps, features)).astype("float32"))
        self.y = keras.ops.convert_to_tensor(rng.normal(size=(batch, 1)).astype("float32"))
        self.name, self.jit_compile = name, jit_compile

    def train(self):
        start = time.perf_counter()
        self.model.train_on_batch(self.x, self.y)  # returns the loss as a float: synchronous
        return time.perf_counter() - start

    def infer(self):
        start = time.perf_counter()
        self.model.predict_on_batch(self.x)  # returns NumPy: synchronous
        return time.perf_counter() - start


def best_runner(name, shape, trials, jit_settings, methods=("train", "infer")):
    """Builds the candidate with each `jit_compile` setting; keeps the one fastest at
    the first of `methods` (training, unless only inference is measured), timing the
    settings alternately so that drift favours neither."""
    runners = [Runner(name, shape, jit) for jit in jit_settings]
    for runner in runners:
        for _ in range(2):  # compile and warm up
            for method in methods:
                getattr(runner, method)()
    if len(runners) == 1:
        return runners[0]
    times = [[] for _ in runners]
    for _ in range(trials):
        for runner, record in zip(runners, times):
            record.append(getattr(runner, methods[0])())
    medians = [statistics.median(record) for record in times]
    return runners[medians.index(min(medians))]


def alternating_ratios(candidate, baseline, method, repeats):
    """Median over steps of candidate-time / baseline-time, run one after the other;
    the candidate's median time, and the baseline's times of these steps."""
    ratios, seconds, baseline_seconds = [], [], []
    for _ in range(repeats):
        base = getattr(baseline, method)()
        cand = getattr(candidate, method)()
        ratios.append(cand / base)
        seconds.append(cand)
        baseline_seconds.append(base)
    return statistics.median(ratios), statistics.median(seconds), baseline_seconds


def matmul_flops(name, shape, training):
    """FLOPs of the recurrent layer's matmuls in one step: x·W and h·R at every time step
    (4U wide for an LSTM, 3U for a GRU, U for a simple RNN); training adds two of each in
    the backward pass."""
    batch, steps, features, units = shape
    gates = GATES[twins()[name][1]]
    forward = 2 * batch * steps * (features + units) * gates * units
    return 3 * forward if training else forward


def matmul_rate(shape):
    """FLOP/s of one plain float32 matmul (B·T, D+U) x (D+U, 4U) on this backend."""
    import keras

    batch, steps, features, units = shape
    a = keras.random.normal((batch * steps, features + units))
    b = keras.random.normal((features + units, 4 * units))
    times = []
    for _ in range(10):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(keras.ops.sum(keras.ops.matmul(a, b)))
        times.append(time.perf_counter() - start)
    # The fastest run is the machine's capability; slower ones measure its other load.
    return 2 * batch * steps * (features + units) * 4 * units / min(times[1:])


def benchmark_shape(shape, names, repeats, trials, jit_settings, methods=("train", "infer")):
    """One row per candidate: its ratio and time per step for each of `methods` (None
    for a method not measured)."""
    rate = matmul_rate(shape)
    baselines = {}
    # The twins' step times while they alternated with the candidates: a twin's own
    # time can change within a process, and its row should show the time the ratios saw.
    baseline_times = {}
    rows = []
    for name in names:
        twin, _ = twins()[name]
        if twin not in baselines:
            baselines[twin] = best_runner(twin, shape, trials, jit_settings, methods)
        baseline = baselines[twin]
        candidate = baseline if name == twin else best_runner(name, shape, trials, jit_settings, methods)
        row = {"name": name, "twin": twin, "jit_compile": candidate.jit_compile}
        for method in ("train", "infer"):
            ratio = seconds = None
            if method in methods and name == twin:
                ratio = 1.0  # its time: below, from the candidates' alternating runs
            elif method in methods:
                ratio, seconds, seen = alternating_ratios(candidate, baseline, method, repeats)
                baseline_times.setdefault((twin, method), []).extend(seen)
            row[f"{method}_ratio"] = ratio
            row[f"{method}_ms"] = None if seconds is None else 1e3 * seconds
        rows.append(row)
        print(f"  measured {name}", file=sys.stderr, flush=True)
    for row in rows:
        for method in methods:
            if row["name"] == row["twin"]:
                # A twin timed alone only where no candidate alternated with it.
                seen = baseline_times.get((row["name"], method)) or [
                    getattr(baselines[row["twin"]], method)() for _ in range(repeats)
                ]
                row[f"{method}_ms"] = 1e3 * statistics.median(seen)
        row["train_roofline"] = None
        if row["train_ms"] is not None:
            row["train_roofline"] = matmul_flops(row["name"], shape, True) / rate / (row["train_ms"] / 1e3)
    return rows


def print_table(shape, rows):
    batch, steps, features, units = shape
    print(f"\nB={batch} T={steps} D={features} U={units}  (ratio = median of time / twin's time)")
    header = f"{'layer':<24}{'twin':<19}{'jit':>6}{'train ratio':>13}{'train ms':>10}"
    header += f"{'roofline':>10}{'infer ratio':>13}{'infer ms':>10}"
    print(header)

    def figure(value, width, style):
        return f"{'-' if value is None else format(value, style):>{width}}"

    for row in rows:
        print(
            f"{row['name']:<24}{row['twin']:<19}{str(row['jit_compile']):>6}"
            f"{figure(row['train_ratio'], 13, '.2f')}{figure(row['train_ms'], 10, '.1f')}"
            f"{figure(row['train_roofline'], 9, '.0%')} "
            f"{figure(row['infer_ratio'], 13, '.2f')}{figure(row['infer_ms'], 10, '.1f')}"
        )


def cpu_model():
    """The CPU's model name (from /proc/cpuinfo on Linux) and whether it has AVX-512."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    names = [line.split(":", 1)[1] for line in info.splitlines() if line.startswith("model name")]
    model = " ".join(names[0].split()) if names else platform.machine()
    return model + (", AVX-512" if " avx512f" in info else "")


def describe_machine(backend):
    import keras

    versions = f"Keras {keras.__version__}"
    if backend == "tensorflow":
        import tensorflow as tf

        versions += f", TensorFlow {tf.__version__}"
        accelerators = [d.name for d in tf.config.list_physical_devices("GPU")]
    elif backend == "jax":
        import jax

        versions += f", JAX {jax.__version__}"
        accelerators = [str(d) for d in jax.devices() if d.platform != "cpu"]
    else:
        import torch

        versions += f", torch {torch.__version__}"
        accelerators = [torch.cuda.get_device_name(0)] if torch.cuda.is_available() else []
    print(f"backend {backend}: {versions}")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; accelerators: {', '.join(accelerators) or 'none'}")


def parse_shape(text):
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected B,T,D,U (four positive integers), got {text!r}")
    return values


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def choose_backend(argv):
    """Sets KERAS_BACKEND from `--backend` before Keras is first imported (the table of
    kinds, which names the candidates, imports it); an invalid value is left for the
    parser to report."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--backend")
    backend = early.parse_known_args(argv)[0].backend
    backend = backend or os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend in BACKENDS:
        os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parse_args(argv):
    choose_backend(argv)
    candidates = twins()
    # Measured unless --only says otherwise: our layers (and their twins).
    default = [name for name in candidates if name in layer_kinds()]
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=os.environ.get("KERAS_BACKEND", "tensorflow"),
        help="Keras backend to measure on (default: $KERAS_BACKEND, else tensorflow)",
    )
    parser.add_argument(
        "--shape",
        type=parse_shape,
        action="append",
        metavar="B,T,D,U",
        help="batch, timesteps, features, units of a shape to measure instead of the three "
        f"standard ones {STANDARD_SHAPES} (repeatable)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(candidates),
        metavar="LAYER",
        help=f"measure only this candidate (repeatable; its Keras twin is always timed). "
        f"Default: {', '.join(default)}. Choices: {', '.join(candidates)}",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=None,
        help="alternating steps timed per candidate and per mode (default 30; --quick: 2)",
    )
    parser.add_argument(
        "--trials",
        type=positive_int,
        default=None,
        help="training steps per jit_compile setting when choosing the faster one (default 5)",
    )
    parser.add_argument(
        "--jit-compile",
        choices=["best", "on", "off"],
        default="best",
        help="XLA for every model: 'best' (default) tries both on TensorFlow and keeps the "
        "faster per model, and means 'on' on JAX and 'off' on torch; 'on'/'off' force it",
    )
    parser.add_argument(
        "--mode",
        choices=["both", "train", "infer"],
        default="both",
        help="what to time: training and inference steps (default), or only one of them "
        "('-' in the other columns); with 'infer' the jit_compile setting is chosen by "
        "inference time",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: shape {QUICK_SHAPE}, 2 repeats, no XLA on TensorFlow, every "
        "candidate; checks the script and the layers run; its ratios mean nothing",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.shape = args.shape or [QUICK_SHAPE]
        args.repeats = args.repeats or 2
        args.trials = args.trials or 1
        args.only = args.only or [n for n, (twin, _) in candidates.items() if twin != n]
        if args.jit_compile == "best" and args.backend == "tensorflow":
            args.jit_compile = "off"
    args.shape = args.shape or STANDARD_SHAPES
    args.repeats = args.repeats or 30
    args.trials = args.trials or 5
    args.only = args.only or default
    best = {"tensorflow": (True, False), "jax": (True,), "torch": (False,)}[args.backend]
    args.jit_settings = {"best": best, "on": (True,), "off": (False,)}[args.jit_compile]
    args.methods = {"both": ("train", "infer"), "train": ("train",), "infer": ("infer",)}[args.mode]
    return args


def main(argv=None):
    args = parse_args(argv)
    describe_machine(args.backend)
    # Each twin first, then the candidates compared to it.
    names = []
    for name in args.only:
        names += [n for n in (twins()[name][0], name) if n not in names]
    for shape in args.shape:
        rows = benchmark_shape(shape, names, args.repeats, args.trials, args.jit_settings, args.methods)
        print_table(shape, rows)


if __name__ == "__main__":
    main()
