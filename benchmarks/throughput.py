"""Training- and inference-step throughput of our recurrent layers, each as a ratio to its
Keras twin (`keras.layers.LSTM` or `keras.layers.GRU`) measured in the same process.

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

Usage:
    python benchmarks/throughput.py                      # every layer, the three shapes
    python benchmarks/throughput.py --backend jax        # the same on JAX
    python benchmarks/throughput.py --only LayerNormGRU --shape 32,200,64,128
    python benchmarks/throughput.py --mode infer         # inference steps only
    python benchmarks/throughput.py --quick              # smoke run: checks it works
    python benchmarks/throughput.py --backend torch --kinds --torch-rnn --cudnn-check \
        --shape standard --shape 64,100,512,512           # what benchmarks/gpu.sh runs

On a GPU, `--torch-rnn` adds plain `torch.nn.LSTM` / `GRU` / `RNN` (cuDNN) with the same
model, data and steps, alternating with the Keras twin, and `--cudnn-check` a column saying
whether each twin's steps call cuDNN's RNN. `--results FILE` appends every row as a line
of JSON; `--summarize FILE` prints one table of such lines (several backends' runs).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

STANDARD_SHAPES = [(64, 100, 128, 256), (32, 200, 64, 128), (128, 50, 256, 512)]
QUICK_SHAPE = (4, 5, 3, 8)
# torch's own RNN modules, cuDNN's kernels on a CUDA GPU: the anchor of `--torch-rnn`.
TORCH_RNNS = {
    "keras.layers.LSTM": "torch.nn.LSTM",
    "keras.layers.GRU": "torch.nn.GRU",
    "keras.layers.SimpleRNN": "torch.nn.RNN",
}

# Candidate name -> its Keras twin (the baseline its ratio is taken to).
TWINS = {
    "keras.layers.LSTM": "keras.layers.LSTM",
    "LayerNormLSTM": "keras.layers.LSTM",
    "BatchNormLSTM": "keras.layers.LSTM",
    "RNN(LayerNormLSTMCell)": "keras.layers.LSTM",
    "hand-written LN cell": "keras.layers.LSTM",
    "keras.layers.GRU": "keras.layers.GRU",
    "LayerNormGRU": "keras.layers.GRU",
    "BatchNormGRU": "keras.layers.GRU",
}
# Measured unless --only says otherwise: our four layers (and their twins).
BACKENDS = ["tensorflow", "jax", "torch"]


def make_layer(name, units, steps):
    """A fresh layer of candidate `name` (imports Keras: call after choosing the backend)."""
    import keras

    import keras_recnorm as rn

    factories = {
        "keras.layers.LSTM": lambda: keras.layers.LSTM(units),
        "LayerNormLSTM": lambda: rn.LayerNormLSTM(units),
        "BatchNormLSTM": lambda: rn.BatchNormLSTM(units, max_timesteps=steps),
        "RNN(LayerNormLSTMCell)": lambda: keras.layers.RNN(rn.LayerNormLSTMCell(units)),
        "hand-written LN cell": lambda: keras.layers.RNN(hand_written_ln_lstm_cell(units)),
        "keras.layers.GRU": lambda: keras.layers.GRU(units),
        "LayerNormGRU": lambda: rn.LayerNormGRU(units),
        "BatchNormGRU": lambda: rn.BatchNormGRU(units, max_timesteps=steps),
    }
    if name in factories:
        return factories[name]()
    if name.startswith("keras.layers."):
        return getattr(keras.layers, name.split(".")[-1])(units)
    kind = next(k for k in kind_table() if k.layer is not None and k.layer.__name__ == name)
    return kind.layer(units, max_timesteps=steps) if kind.batch_norm else kind.layer(units)


def kind_table():
    """`keras_recnorm.kinds.KINDS` (imports Keras: call after choosing the backend)."""
    from keras_recnorm.kinds import KINDS

    return KINDS


def kind_layers():
    """The names of every layer in `keras_recnorm.kinds.KINDS`, each made a candidate
    against its Keras twin (so that a new kind is measured without a change here)."""
    names = []
    for kind in kind_table():
        if kind.layer is not None:
            twin = f"keras.layers.{kind.keras_twin}"
            TWINS.setdefault(twin, twin)
            TWINS.setdefault(kind.layer.__name__, twin)
            names.append(kind.layer.__name__)
    return names


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


class TorchRNNRunner:
    """The same model, data and steps as a `Runner`'s, in plain torch: `torch.nn.LSTM` or
    `torch.nn.GRU` (cuDNN's kernels on a CUDA GPU), a linear head on the last output, MSE
    and Adam. `train()` is forward, backward and the optimizer step; `infer()` the forward
    pass without gradients. Each waits for the GPU before it returns."""

    def __init__(self, twin, shape, seed=0):
        import numpy as np
        import torch

        batch, steps, features, units = shape
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(seed)
        module = getattr(torch.nn, TORCH_RNNS[twin].split(".")[-1])
        self.rnn = module(features, units, batch_first=True).to(self.device)
        self.head = torch.nn.Linear(units, 1).to(self.device)
        self.optimizer = torch.optim.Adam([*self.rnn.parameters(), *self.head.parameters()])
        rng = np.random.default_rng(seed)
        self.x = torch.as_tensor(rng.normal(size=(batch, steps, features)), dtype=torch.float32)
        self.y = torch.as_tensor(rng.normal(size=(batch, 1)), dtype=torch.float32)
        self.x, self.y = self.x.to(self.device), self.y.to(self.device)
        self.name, self.jit_compile, self.torch = TORCH_RNNS[twin], None, torch

    def _predict(self):
        return self.head(self.rnn(self.x)[0][:, -1])

    def train(self):
        start = time.perf_counter()
        self.optimizer.zero_grad()
        loss = self.torch.nn.functional.mse_loss(self._predict(), self.y)
        loss.backward()
        self.optimizer.step()
        loss.item()  # waits for the GPU, as Keras's float loss does
        return time.perf_counter() - start

    def infer(self):
        start = time.perf_counter()
        with self.torch.no_grad():
            self._predict().cpu()  # waits for the GPU, as Keras's NumPy output does
        return time.perf_counter() - start


def reaches_cudnn(runner, backend):
    """`{"train": bool, "infer": bool}`: whether the runner's training and inference steps
    call cuDNN's RNN. torch: a cuDNN RNN op (`aten::_cudnn_rnn`) among the ops torch's
    profiler records during one step. JAX: a cuDNN RNN custom call in the lowered program
    of the recurrent layer's forward pass and of its gradient (Keras's JAX LSTM calls
    `jax.experimental.rnn` on a GPU)."""
    if isinstance(runner, TorchRNNRunner) or backend == "torch":
        import torch

        found = {}
        for method in ("train", "infer"):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
                getattr(runner, method)()
            found[method] = any("cudnn_rnn" in event.name for event in profile.events())
        return found
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        layer, x = runner.model.layers[1], runner.x

        def lowered(function):
            return "dnn_rnn" in jax.jit(function).lower(x).as_text()

        return {"train": lowered(jax.grad(lambda x: jnp.sum(layer(x)))), "infer": lowered(layer)}
    return None  # TensorFlow: not looked at


def warm_up(runner, methods):
    for _ in range(2):  # compile and warm up
        for method in methods:
            getattr(runner, method)()


def best_runner(name, shape, trials, jit_settings, methods=("train", "infer")):
    """Builds the candidate with each `jit_compile` setting; keeps the one fastest at
    the first of `methods` (training, unless only inference is measured), timing the
    settings alternately so that drift favours neither."""
    runners = [Runner(name, shape, jit) for jit in jit_settings]
    for runner in runners:
        warm_up(runner, methods)
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
    (4U wide for an LSTM, 3U for a GRU, U for a SimpleRNN); training adds two of each in
    the backward pass."""
    batch, steps, features, units = shape
    gates = 3 if "GRU" in name else 1 if "SimpleRNN" in name else 4
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


def benchmark_shape(shape, names, repeats, trials, jit_settings, methods=("train", "infer"),
                    torch_rnn=False, cudnn_backend=None):
    """One row per candidate: its ratio and time per step for each of `methods` (None
    for a method not measured). `torch_rnn`: also a row for `torch.nn.LSTM`/`GRU`/`RNN` against
    each twin; `cudnn_backend`: the backend whose twins (and torch's RNNs) are checked for
    cuDNN (a `cudnn` entry in their rows)."""
    rate = matmul_rate(shape)
    baselines = {}
    # The twins' step times while they alternated with the candidates: a twin's own
    # time can change within a process, and its row should show the time the ratios saw.
    baseline_times = {}
    rows = []
    candidates = [(name, TWINS[name]) for name in names]
    if torch_rnn:
        twins = dict.fromkeys(TWINS[name] for name in names)
        candidates += [(TORCH_RNNS[twin], twin) for twin in twins if twin in TORCH_RNNS]
    for name, twin in candidates:
        if twin not in baselines:
            baselines[twin] = best_runner(twin, shape, trials, jit_settings, methods)
        baseline = baselines[twin]
        if name == twin:
            candidate = baseline
        elif name == TORCH_RNNS.get(twin):
            candidate = TorchRNNRunner(twin, shape)
            warm_up(candidate, methods)
        else:
            candidate = best_runner(name, shape, trials, jit_settings, methods)
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
        if cudnn_backend and (candidate is baseline or isinstance(candidate, TorchRNNRunner)):
            row["cudnn"] = reaches_cudnn(candidate, cudnn_backend)
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
    checked = any("cudnn" in row for row in rows)
    print(f"\nB={batch} T={steps} D={features} U={units}  (ratio = median of time / twin's time)")
    header = f"{'layer':<24}{'twin':<19}{'jit':>6}{'train ratio':>13}{'train ms':>10}"
    header += f"{'roofline':>10}{'infer ratio':>13}{'infer ms':>10}"
    print(header + (f"{'cuDNN':>12}" if checked else ""))

    def figure(value, width, style):
        return f"{'-' if value is None else format(value, style):>{width}}"

    for row in rows:
        jit = "-" if row["jit_compile"] is None else str(row["jit_compile"])
        print(
            f"{row['name']:<24}{row['twin']:<19}{jit:>6}"
            f"{figure(row['train_ratio'], 13, '.2f')}{milliseconds(row['train_ms'], 10)}"
            f"{figure(row['train_roofline'], 9, '.0%')} "
            f"{figure(row['infer_ratio'], 13, '.2f')}{milliseconds(row['infer_ms'], 10)}"
            + (f"{cudnn_text(row.get('cudnn')):>12}" if checked else "")
        )


def milliseconds(value, width):
    """A step time in ms: one decimal, three below 1 ms (a GPU's cuDNN steps)."""
    return f"{'-' if value is None else format(value, '.1f' if value >= 1 else '.3f'):>{width}}"


def cudnn_text(found):
    """`reaches_cudnn`'s answer in a word: yes, no, train only, infer only ('-': not checked)."""
    if not found:
        return "-"
    if all(found.values()) or not any(found.values()):
        return "yes" if all(found.values()) else "no"
    return f"{'train' if found['train'] else 'infer'} only"


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
    """Prints the backend's versions and the machine; returns them as a dict (for
    `--results`), with the float32 matmul precision settings that apply on a GPU."""
    import keras

    import keras_recnorm

    versions = f"Keras {keras.__version__}"
    precision = None
    if backend == "tensorflow":
        import tensorflow as tf

        versions += f", TensorFlow {tf.__version__}"
        accelerators = [d.name for d in tf.config.list_physical_devices("GPU")]
    elif backend == "jax":
        import jax

        versions += f", JAX {jax.__version__}"
        accelerators = [f"{d.device_kind} ({d})" for d in jax.devices() if d.platform != "cpu"]
        # None: XLA's default, which may use TF32 for float32 matmuls on a GPU.
        precision = f"jax_default_matmul_precision={jax.config.jax_default_matmul_precision}"
    else:
        import torch

        versions += f", torch {torch.__version__}"
        accelerators = [torch.cuda.get_device_name(0)] if torch.cuda.is_available() else []
        if accelerators:
            versions += f" (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"
        # torch's matmuls and cuDNN's RNN have separate TF32 switches.
        precision = (
            f"torch.backends.cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}, "
            f"torch.backends.cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}"
        )
    print(f"backend {backend}: {versions}")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; accelerators: {', '.join(accelerators) or 'none'}")
    if accelerators and precision:
        print(f"float32 precision: {precision}")
    return {
        "backend": backend,
        "versions": f"keras_recnorm {keras_recnorm.__version__}, {versions}, "
        f"Python {platform.python_version()}",
        "cpu": f"{cpu_model()}, {os.cpu_count()} cores",
        "accelerators": accelerators,
        "precision": precision,
    }


def parse_shape(text):
    """`[(B, T, D, U)]` from "B,T,D,U"; the three standard shapes from "standard"."""
    if text == "standard":
        return list(STANDARD_SHAPES)
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected B,T,D,U (four positive integers) or 'standard', got {text!r}"
        )
    return [values]


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_args(argv):
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
        f"standard ones {STANDARD_SHAPES} (repeatable; 'standard' stands for those three)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="LAYER",
        help=f"measure only this candidate (repeatable; its Keras twin is always timed). "
        f"Default: every layer of keras_recnorm.kinds.KINDS. Choices: those, and {', '.join(TWINS)}",
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
    parser.add_argument(
        "--kinds",
        action="store_true",
        help="measure every layer of keras_recnorm.kinds.KINDS against its Keras twin "
        "(instead of --only)",
    )
    parser.add_argument(
        "--torch-rnn",
        action="store_true",
        help="also time torch.nn.LSTM / GRU / RNN (cuDNN on a CUDA GPU) with the same "
        "model, data and steps, alternating with the Keras twin; needs torch",
    )
    parser.add_argument(
        "--cudnn-check",
        action="store_true",
        help="a column saying whether each Keras twin's (and torch.nn's) training and "
        "inference steps call cuDNN's RNN (JAX and torch backends)",
    )
    parser.add_argument(
        "--require-gpu",
        action="store_true",
        help="stop with an error where the backend sees no GPU (so that no CPU figure "
        "passes for a GPU's)",
    )
    parser.add_argument(
        "--results",
        metavar="FILE",
        help="append the machine and every row to FILE, one JSON object a line",
    )
    parser.add_argument(
        "--summarize",
        metavar="FILE",
        help="print one table of the rows in FILE (from runs with --results, any "
        "backends) and exit; measures nothing",
    )
    args = parser.parse_args(argv)
    args.every_candidate = args.quick  # with no --only: the extra LSTM candidates too
    if args.shape:
        args.shape = [shape for group in args.shape for shape in group]
    if args.quick:
        args.shape = args.shape or [QUICK_SHAPE]
        args.repeats = args.repeats or 2
        args.trials = args.trials or 1
        if args.jit_compile == "best" and args.backend == "tensorflow":
            args.jit_compile = "off"
    args.shape = args.shape or STANDARD_SHAPES
    args.repeats = args.repeats or 30
    args.trials = args.trials or 5
    best = {"tensorflow": (True, False), "jax": (True,), "torch": (False,)}[args.backend]
    args.jit_settings = {"best": best, "on": (True,), "off": (False,)}[args.jit_compile]
    args.methods = {"both": ("train", "infer"), "train": ("train",), "infer": ("infer",)}[args.mode]
    return args


def append_record(path, entry):
    """One line of JSON at the end of `path` (`--results`); nothing without a path."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def summarize(path):
    """One table of the rows that runs with `--results path` appended, shape by shape,
    every backend's rows together, each also as a ratio to torch's own RNN where one was
    timed at that shape (`--torch-rnn`)."""
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in records if r["record"] == "row"]
    for machine in (r for r in records if r["record"] == "machine"):
        print(f"backend {machine['backend']}: {machine['versions']}")
        print(f"  CPU: {machine['cpu']}; accelerators: {', '.join(machine['accelerators']) or 'none'}")
        if machine["precision"]:
            print(f"  float32 precision: {machine['precision']}")
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    shapes = list(dict.fromkeys(tuple(r["shape"]) for r in rows))
    print(
        "\nms: median step time; vs twin: median over alternating steps of time / the Keras "
        "twin's time (same backend, same process); vs torch.nn: ms / torch.nn.LSTM's or GRU's ms "
        "(cuDNN on a GPU; for another backend's rows, a ratio across processes); cuDNN: "
        "whether the steps call cuDNN's RNN"
    )
    for shape in shapes:
        here = [r for r in rows if tuple(r["shape"]) == shape]
        torch_rnn = {r["twin"]: r for r in here if r["name"] in TORCH_RNNS.values()}
        print(f"\nB={shape[0]} T={shape[1]} D={shape[2]} U={shape[3]}")
        print(
            f"{'backend':<11}{'layer':<22}{'cuDNN':>11}{'train ms':>11}{'vs twin':>9}{'vs torch.nn':>13}"
            f"{'infer ms':>11}{'vs twin':>9}{'vs torch.nn':>13}"
        )
        for r in here:
            line = f"{r['backend']:<11}{r['name']:<22}{cudnn_text(r.get('cudnn')):>11}"
            for method in ("train", "infer"):
                ms, anchor = r[f"{method}_ms"], torch_rnn.get(r["twin"], {}).get(f"{method}_ms")
                ratio = r[f"{method}_ratio"]
                line += milliseconds(ms, 11)
                line += f"{'-' if ratio is None else format(ratio, '.2f'):>9}"
                line += f"{'-' if ms is None or not anchor else format(ms / anchor, '.2f'):>13}"
            print(line)
        missing = [b for b in backends if not any(r["backend"] == b for r in here)]
        if missing:
            print(f"(not measured here: {', '.join(missing)}: its run stopped before this shape)")


def main(argv=None):
    args = parse_args(argv)
    if args.summarize:
        summarize(args.summarize)
        return
    os.environ["KERAS_BACKEND"] = args.backend  # before Keras is first imported
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    machine = describe_machine(args.backend)
    if args.require_gpu and not machine["accelerators"]:
        sys.exit(f"throughput.py: {args.backend} sees no GPU (--require-gpu); check its CUDA install.")
    append_record(args.results, {"record": "machine", **machine})
    # Each twin first, then the candidates compared to it.
    names = []
    layers = kind_layers()  # also makes each a candidate against its twin
    if args.kinds:
        args.only = layers
    elif not args.only:
        args.only = [n for n in TWINS if TWINS[n] != n] if args.every_candidate else layers
    unknown = sorted(set(args.only) - set(TWINS))
    if unknown:
        sys.exit(f"throughput.py: unknown --only {', '.join(unknown)}; choices: {', '.join(TWINS)}.")
    for name in args.only:
        names += [n for n in (TWINS[name], name) if n not in names]
    for shape in args.shape:
        print(f"{args.backend}: B,T,D,U = {shape}", file=sys.stderr, flush=True)
        rows = benchmark_shape(
            shape, names, args.repeats, args.trials, args.jit_settings, args.methods,
            torch_rnn=args.torch_rnn, cudnn_backend=args.backend if args.cudnn_check else None,
        )
        print_table(shape, rows)
        for row in rows:
            append_record(args.results, {"record": "row", "backend": args.backend, "shape": shape, **row})


if __name__ == "__main__":
    main()
