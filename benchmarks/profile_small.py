"""Where the time of a recurrent layer's step goes, on TensorFlow, at a shape where the
per-step overhead dominates (default B,T,D,U = 32,200,64,128).

For the layer and its Keras twin, each as one `tf.function` (XLA on or off), timed
alternately: the forward pass (inference), the training pass (forward and backward, no
optimizer), and a floor: a loop of the same length whose step does only the layer's two
matmuls and one tanh. Per time step in microseconds, with the number of ops in the
loop bodies of the graph (without XLA every op costs a fixed dispatch overhead).

Usage:
    python benchmarks/profile_small.py --layer LayerNormGRU --jit-compile off
"""

import argparse
import functools
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["KERAS_BACKEND"] = "tensorflow"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_recnorm.kinds import KINDS  # noqa: E402

# Every whole-sequence layer of the table of kinds, by class name.
LAYERS = {kind.layer.__name__: kind for kind in KINDS if kind.layer is not None}
# Width of the pre-activations per unit: the gates of each recurrence.
GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}


def while_body_ops(function, *args):
    """Op count of every while-loop body in the traced graph of `function(*args)`."""
    graph = function.get_concrete_function(*args).graph.as_graph_def()
    return sorted(len(f.node_def) for f in graph.library.function if "body" in f.signature.name)


def matmul_floor(shape, gates):
    """`h' = tanh(x·W + h·R)` over T steps with (B, gates·U) products: the matmuls and
    the loop, nothing else. Its last `U` columns feed back."""
    batch, steps, features, units = shape
    kernel = tf.random.normal((features, gates * units))
    recurrent = tf.random.normal((units, gates * units))

    def run(x):
        x = tf.transpose(x, (1, 0, 2))
        outputs = tf.TensorArray(tf.float32, size=steps)

        def body(t, h, outputs):
            h = tf.tanh(tf.matmul(x[t], kernel) + tf.matmul(h, recurrent))[:, -units:]
            return t + 1, h, outputs.write(t, h)

        _, h, outputs = tf.while_loop(
            lambda t, *_: t < steps, body, (0, tf.zeros((tf.shape(x)[1], units)), outputs)
        )
        return outputs.stack()

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layer", choices=list(LAYERS), default="LayerNormLSTM", help="our layer to profile")
    parser.add_argument("--shape", default="32,200,64,128", help="B,T,D,U (default 32,200,64,128)")
    parser.add_argument("--jit-compile", choices=["on", "off"], default="on", help="XLA (default on)")
    parser.add_argument("--repeats", type=int, default=20, help="alternating timed runs (default 20)")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    batch, steps, features, units = shape
    jit = args.jit_compile == "on"
    kind = LAYERS[args.layer]
    ours = kind.layer
    if kind.batch_norm:  # one slot of statistics per step
        ours = functools.partial(kind.layer, max_timesteps=steps)
    twin, gates = getattr(keras.layers, kind.keras_twin), GATES[kind.recurrence]
    x = tf.constant(np.random.default_rng(0).normal(size=shape[:3]).astype("float32"))

    functions = {}
    for name, layer in ((args.layer, ours(units)), (twin.__name__, twin(units))):
        layer(x[:1])

        def forward(x, layer=layer):
            return layer(x, training=False)

        def train(x, layer=layer):
            with tf.GradientTape() as tape:
                y = layer(x, training=True)
                loss = tf.reduce_sum(y * y)
            return tape.gradient(loss, layer.trainable_weights)

        functions[f"{name} forward"] = tf.function(forward, jit_compile=jit)
        functions[f"{name} train"] = tf.function(train, jit_compile=jit)
    functions["matmul floor forward"] = tf.function(matmul_floor(shape, gates), jit_compile=jit)

    ops = {name: while_body_ops(f, x) for name, f in functions.items()}
    for f in functions.values():
        tf.nest.map_structure(lambda t: t.numpy(), f(x))
    times = {name: [] for name in functions}
    for _ in range(args.repeats):
        for name, f in functions.items():
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), f(x))
            times[name].append(time.perf_counter() - start)
    print(f"B={batch} T={steps} D={features} U={units}, XLA {'on' if jit else 'off'}; "
          "median µs per time step (ops in the loop bodies)")
    for name, record in times.items():
        print(f"{name:<32}{1e6 * statistics.median(record) / steps:>8.0f}   {ops[name]}")


if __name__ == "__main__":
    main()
