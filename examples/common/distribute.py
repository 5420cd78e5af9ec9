"""`--distribute` for the example scripts: one device, `tf.distribute.MirroredStrategy`, or
JAX `keras.distribution.DataParallel` over every device of every process.

    parser = build_parser(); distribute.add_arguments(parser)
    args = parser.parse_args()
    setup = distribute.configure(args)          # first: before TensorFlow/JAX start
    with setup.scope():                         # build and compile the model here
        model = ...
    model.fit(dataset.batch(args.batch_size, drop_remainder=setup.even_batches), ...)

In every mode `--batch-size` is the global batch: the replicas (devices, processes) share
it, and the batch-normalized layers' population statistics are the global batch's (see
docs/distributed_training.md for which statistics each mode normalizes with in training).
"""

import contextlib
from pathlib import Path

from examples.common.arguments import positive_int

CHOICES = ("none", "mirrored", "jax")


class DistributeError(ValueError):
    """A `--distribute` option that can't work here; one line, what to do."""


def add_arguments(parser):
    group = parser.add_argument_group(
        "distribution (docs/distributed_training.md; --batch-size is the global batch)")
    group.add_argument(
        "--distribute", choices=CHOICES, default="none",
        help="none: one device. mirrored: tf.distribute.MirroredStrategy over this machine's "
             "GPUs (or --cpu-devices CPU devices), TensorFlow backend. jax: "
             "keras.distribution.DataParallel over every device of every process, "
             "KERAS_BACKEND=jax; several machines with --coordinator, --num-processes and "
             "--process-id (default: none)")
    group.add_argument(
        "--cpu-devices", type=positive_int, default=None, metavar="N",
        help="with --distribute mirrored: split the CPU into N logical devices, one replica "
             "each (to try data parallelism on a machine without GPUs; default: the GPUs, "
             "else the one CPU)")
    group.add_argument(
        "--coordinator", default=None, metavar="HOST:PORT",
        help="with --distribute jax and --num-processes > 1: address of process 0, which "
             "every process connects to (e.g. 10.0.0.1:1234; 127.0.0.1:PORT on one machine)")
    group.add_argument(
        "--num-processes", type=positive_int, default=1, metavar="N",
        help="with --distribute jax: number of processes taking part; start the same command "
             "in each, with its own --process-id (default: 1)")
    group.add_argument(
        "--process-id", type=int, default=0, metavar="I",
        help="with --distribute jax: this process's rank, 0 to N-1; process 0 writes the "
             "outputs, process I > 0 writes to OUTPUT_DIR/process-I (default: 0)")


class Setup:
    """What a script needs from the chosen mode.

    Attributes:
        mode: `none`, `mirrored` or `jax`.
        replicas: number of devices the global batch is split over.
        process_id, num_processes: this process and how many take part (jax).
        strategy: the `tf.distribute` strategy (mirrored), else None.
    """

    def __init__(self, mode, replicas=1, strategy=None, process_id=0, num_processes=1):
        self.mode, self.replicas, self.strategy = mode, replicas, strategy
        self.process_id, self.num_processes = process_id, num_processes

    @property
    def chief(self):
        """Whether this process writes the outputs (all but process 0 write elsewhere)."""
        return self.process_id == 0

    def scope(self):
        """Where the model is built and compiled (the strategy's scope for mirrored)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    @property
    def even_batches(self):
        """JAX shards every batch over the devices: a batch must divide evenly, so the last
        partial batch of a dataset is left out (MirroredStrategy splits uneven batches)."""
        return self.mode == "jax" and self.replicas > 1

    def output_dir(self, base):
        """`base` for process 0; `base/process-I` for the others (they may not share files)."""
        base = Path(base)
        return base if self.chief else base / f"process-{self.process_id}"

    def describe(self):
        if self.mode == "none":
            return "one device"
        if self.mode == "mirrored":
            return f"MirroredStrategy over {self.replicas} replica(s)"
        return (f"JAX DataParallel over {self.replicas} device(s) in {self.num_processes} "
                f"process(es); this is process {self.process_id}")


def configure(args):
    """Sets up `args.distribute`; call it before TensorFlow or JAX create any device or
    tensor. Returns a `Setup`. Raises `DistributeError` (one line) for options that can't
    work: wrong backend, --batch-size not a multiple of the devices, missing coordinator."""
    import keras

    backend = keras.backend.backend()
    if args.distribute != "jax" and (args.num_processes > 1 or args.coordinator):
        raise DistributeError("--coordinator and --num-processes need --distribute jax.")
    if args.cpu_devices is not None and args.distribute != "mirrored":
        raise DistributeError("--cpu-devices needs --distribute mirrored.")
    if args.distribute == "none":
        return Setup("none")
    if args.distribute == "mirrored":
        if backend != "tensorflow":
            raise DistributeError(
                f"--distribute mirrored needs the TensorFlow backend, but Keras runs on "
                f"{backend}: set KERAS_BACKEND=tensorflow (or use --distribute jax).")
        return _mirrored(args)
    if backend != "jax":
        raise DistributeError(
            f"--distribute jax needs the JAX backend, but Keras runs on {backend}: start the "
            "script with KERAS_BACKEND=jax.")
    return _jax(args)


def _mirrored(args):
    import tensorflow as tf

    devices = None
    if args.cpu_devices is not None:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpu_devices)
        except RuntimeError:
            raise DistributeError(
                "--cpu-devices: TensorFlow had already started; configure() must come first."
            ) from None
        devices = [device.name for device in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices)
    _check_batch(args, strategy.num_replicas_in_sync, "replicas", even=False)
    return Setup("mirrored", strategy.num_replicas_in_sync, strategy=strategy)


def _jax(args):
    import jax
    import keras

    if not 0 <= args.process_id < args.num_processes:
        raise DistributeError(
            f"--process-id must be between 0 and {args.num_processes - 1}, got {args.process_id}.")
    if args.num_processes > 1:
        if not args.coordinator:
            raise DistributeError(
                "--num-processes > 1 needs --coordinator HOST:PORT (process 0's address).")
        # CPU devices of different processes talk through gloo (GPUs use NCCL anyway).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes,
                                   process_id=args.process_id)
    # Every process must create the same initial values (weights, dropout seed
    # generators): they are one replicated array across the processes.
    keras.utils.set_random_seed(getattr(args, "seed", 0))
    devices = jax.devices()  # every device of every process
    _check_batch(args, len(devices), "devices", even=True)
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return Setup("jax", len(devices), process_id=args.process_id,
                 num_processes=args.num_processes)


def _check_batch(args, replicas, what, even):
    batch_size = getattr(args, "batch_size", None)
    if batch_size is None:
        return
    if batch_size % replicas if even else batch_size < replicas:
        raise DistributeError(
            f"--batch-size {batch_size} must be a multiple of the {replicas} {what} "
            "(it is the global batch, split evenly over them).")

