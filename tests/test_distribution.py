"""Batch-normalized layers under data parallelism: tf.distribute.MirroredStrategy over two
logical CPU devices, and JAX `keras.distribution.DataParallel` over two host devices and
over two processes.

The device setup must come before TensorFlow or JAX initializes, so each check runs in a
fresh Python process: this file is also the worker (`python tests/test_distribution.py
WORKER ...`). A worker asserts, and prints `ok WORKER` last; the test checks for that line.
One worker combines several checks, as every start imports TensorFlow (seconds).

The reference for "the global batch's statistics" is `tests/reference.py`: the replicas'
per-step batch statistics, each from the reference run on that replica's samples, merged
per step over the samples that reached it (Chan et al.), then one moving-average update.
"""

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BATCH, STEPS, FEATURES, UNITS, MAX_TIMESTEPS = 8, 5, 3, 4, 4
MOMENTUM = 0.95
# Real steps of each sample (right padding): some steps are reached by one replica only,
# the last slot is shared by steps 3 and 4 (T > max_timesteps).
LENGTHS = np.array([5, 2, 4, 1, 3, 3, 1, 2])


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, STEPS, FEATURES)).astype("float32")
    x[:, :, 0] += 2.0 * np.arange(BATCH)[:, None]  # the two halves differ in mean
    mask = np.arange(STEPS)[None, :] < LENGTHS[:, None]
    x[~mask] = 0.0  # Masking(0.0) gives this mask
    y = rng.normal(size=(BATCH, 1)).astype("float32")
    return x, mask, y


def merged_reference(kind, weights, x, mask, parts):
    """Population statistics after one training batch split into `parts` replicas: each
    replica's per-step statistics from the NumPy reference, merged over every sample that
    reached the step (then over the steps sharing a slot), then one population update
    (`reference.population_update`'s rule: the old statistics weigh as
    `N·momentum/(1 − momentum)` samples, N the most samples of any step)."""
    from tests import reference

    run = reference.for_kind(kind)
    terms = reference.BN_TERMS[kind.recurrence]
    totals = {term: None for term in terms}
    for rows in np.array_split(np.arange(len(x)), parts):
        # A step no sample of this part reaches normalizes its padded samples (whose
        # results are discarded) with variance 0: their gates may overflow, harmlessly.
        with np.errstate(over="ignore"):
            _, _, _, stats = run(weights, x[rows], mask=mask[rows], training=True,
                                 momentum=MOMENTUM, return_batch_statistics=True)
        count = mask[rows].sum(axis=0).astype("float64")[:, None]  # right padding
        for term in terms:
            mean, variance = stats[f"{term}_mean"], stats[f"{term}_variance"]
            part = (count, mean, variance * count)
            totals[term] = part if totals[term] is None else _chan(totals[term], part)
    expected = {}
    for term, (count, mean, m2) in totals.items():
        moving_mean = np.array(weights[f"{term}_moving_mean"], "float64")
        moving_variance = np.array(weights[f"{term}_moving_variance"], "float64")
        w = count.max() * MOMENTUM / (1 - MOMENTUM)
        for slot in range(len(moving_mean)):
            steps = [t for t in range(len(count)) if min(t, len(moving_mean) - 1) == slot]
            n, batch_mean, batch_m2 = count[steps[0]], mean[steps[0]], m2[steps[0]]
            for t in steps[1:]:
                n, batch_mean, batch_m2 = _chan((n, batch_mean, batch_m2), (count[t], mean[t], m2[t]))
            if n[0] == 0:
                continue
            old_mean, old_variance = moving_mean[slot].copy(), moving_variance[slot].copy()
            new_mean = (w * old_mean + n * batch_mean) / (w + n)
            moving_mean[slot] = new_mean
            moving_variance[slot] = (w * (old_variance + (old_mean - new_mean) ** 2)
                                     + batch_m2 + n * (batch_mean - new_mean) ** 2) / (w + n)
        expected[f"{term}_moving_mean"] = moving_mean
        expected[f"{term}_moving_variance"] = moving_variance
    return expected


def whole_batch_reference(kind, weights, x, mask):
    """The population statistics of the whole-sequence layer after one batch on one device."""
    from tests import reference

    run = reference.for_kind(kind)
    with np.errstate(over="ignore"):
        _, _, moving = run(weights, x, mask=mask, training=True, momentum=MOMENTUM,
                           whole_sequence=True)
    return moving


def _chan(a, b):
    (na, ma, m2a), (nb, mb, m2b) = a, b
    n = na + nb
    safe = np.maximum(n, 1)
    delta = mb - ma
    return n, ma + delta * nb / safe, m2a + m2b + delta**2 * na * nb / safe


def run_worker(*args, env=None, timeout=300):
    """Runs this file as a worker in a fresh process; returns its stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    result = subprocess.run([sys.executable, __file__, *map(str, args)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0 and f"ok {args[0]}" in result.stdout, (
        f"worker {args[0]} failed (status {result.returncode}):\n{result.stdout[-3000:]}\n"
        f"{result.stderr[-6000:]}")
    return result.stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- the tests


def test_mirrored_strategy_statistics_training_save_export(tmp_path):
    run_worker("mirrored", tmp_path, env={"KERAS_BACKEND": "tensorflow"})


def test_mirrored_strategy_synchronized_input_term_and_its_gradient():
    run_worker("synchronized", env={"KERAS_BACKEND": "tensorflow"})


def test_jax_data_parallel_over_two_host_devices():
    run_worker("jax_devices", env={
        "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})


def test_jax_data_parallel_over_two_processes(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
           "KERAS_BACKEND": "jax", "XLA_FLAGS": ""}
    processes = [
        subprocess.Popen([sys.executable, __file__, "jax_process", str(port), str(rank), str(tmp_path)],
                         env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=240))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for rank, (process, (out, err)) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0 and "ok jax_process" in out, (
            f"process {rank} failed (status {process.returncode}):\n{out[-2000:]}\n{err[-6000:]}")
    # Both processes hold the same statistics (each compared them with the reference too).
    first, second = (np.load(tmp_path / f"statistics_{rank}.npz") for rank in (0, 1))
    for name in first.files:
        np.testing.assert_array_equal(first[name], second[name])


# --------------------------------------------------------------------------- workers


def _two_cpu_strategy():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def _sequence_model(layer_class, **kwargs):
    import keras

    return keras.Sequential([
        keras.Input((STEPS, FEATURES)),
        keras.layers.Masking(0.0),
        layer_class(UNITS, max_timesteps=MAX_TIMESTEPS, name="rnn", **{"momentum": MOMENTUM, **kwargs}),
        keras.layers.Dense(1),
    ])


def _statistics(cell):
    """`{name: value}` of the population statistics, and each name's mirrored copies."""
    values, copies = {}, {}
    for term in cell.normalized_terms:
        for statistic, variable in zip(("mean", "variance"), cell.moving(term)):
            name = f"{term}_moving_{statistic}"
            values[name] = np.asarray(variable.numpy())
            copies[name] = [np.asarray(v) for v in getattr(variable.value, "values", [])]
    return values, copies


def _assert_global(cell, expected, replicas):
    values, copies = _statistics(cell)
    for name, value in values.items():
        assert len(copies[name]) == replicas, (name, len(copies[name]))
        for copy in copies[name]:
            np.testing.assert_array_equal(copy, copies[name][0], err_msg=f"{name}: copies differ")
        np.testing.assert_allclose(value, expected[name], atol=2e-6, err_msg=name)


def worker_mirrored(tmp_dir):
    strategy = _two_cpu_strategy()
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)

    from keras_recnorm import BatchNormLSTM, BatchNormLSTMCell
    from keras_recnorm import recompute_population_statistics
    from keras_recnorm.export import export_saved_model
    from tests import reference
    from tests.conftest import kinds, randomize_weights

    x, mask, y = data()
    rng = np.random.default_rng(7)
    for kind in kinds(family="batch_norm", layer=True):
        with strategy.scope():
            model = _sequence_model(kind.layer)
            model.compile(keras.optimizers.SGD(0.0), "mse")
        cell = model.get_layer("rnn").cell
        weights = randomize_weights(cell, rng, scale=0.3)
        # One step of the global batch of 8: 4 samples per replica.
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        _assert_global(cell, merged_reference(kind, weights, x, mask, parts=2), replicas=2)
        # Not what a single device computes on the whole batch (the loop normalizes each
        # replica's half). (The merge above, on one part, is the reference's own update.)
        one_device = merged_reference(kind, weights, x, mask, parts=1)
        for name, value in whole_batch_reference(kind, weights, x, mask).items():
            np.testing.assert_allclose(one_device[name], value, atol=1e-12, err_msg=name)
        loop_term = "cell_moving_mean" if kind.recurrence == "lstm" else "recurrent_moving_mean"
        assert np.abs(_statistics(cell)[0][loop_term] - one_device[loop_term]).max() > 1e-4

        # recompute_population_statistics under the strategy: the whole batch on one device
        # (eager, cross-replica context), written to every copy.
        with strategy.scope():
            recompute_population_statistics(model, [x], verbose=0)
        run = reference.for_kind(kind)
        with np.errstate(over="ignore"):
            _, _, _, stats = run(weights, x, mask=mask, training=True,
                                 return_batch_statistics=True)
        values, copies = _statistics(cell)
        for term in cell.normalized_terms:
            for statistic in ("mean", "variance"):
                name = f"{term}_moving_{statistic}"
                for copy in copies[name]:
                    np.testing.assert_array_equal(copy, values[name])
                # Slots 0..2 are steps 0..2 of this one batch.
                np.testing.assert_allclose(values[name][:3], stats[f"{term}_{statistic}"][:3],
                                           atol=2e-5, err_msg=f"recompute {name}")

    # Training, save, load, export under the strategy.
    model = _check_training_step_mirrored(strategy, x, y)
    cell = model.get_layer("rnn").cell
    values, copies = _statistics(cell)
    for name in values:
        for copy in copies[name]:
            np.testing.assert_array_equal(copy, copies[name][0])
    expected = model.predict(x, verbose=0)
    path = Path(tmp_dir) / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-6)
    loaded_values, _ = _statistics(loaded.get_layer("rnn").cell)
    for name, value in values.items():
        np.testing.assert_array_equal(loaded_values[name], value)
    exported = export_saved_model(model, Path(tmp_dir) / "export", verify=False)
    serve = tf.saved_model.load(exported).signatures["serving_default"]
    served = serve(inputs=tf.constant(x))["outputs"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)

    # A cell inside plain keras.layers.RNN can't all-reduce in Keras's loop: one clear line.
    with strategy.scope():
        model = keras.Sequential([keras.Input((STEPS, FEATURES)), keras.layers.RNN(
            BatchNormLSTMCell(UNITS, max_timesteps=MAX_TIMESTEPS)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
    try:
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    except Exception as error:  # noqa: BLE001 - the error's type depends on Keras's wrapping
        message = str(error)
        assert "BatchNormLSTMCell" in message and "keras_recnorm.BatchNormLSTM" in message, message
        assert "2 replicas" in message, message
    else:
        raise AssertionError("fit of RNN(BatchNormLSTMCell) under 2 replicas did not raise")
    # Inference of such a model is fine (no statistics move).
    model.predict(x, verbose=0)

    _check_layer_norm_layers_mirrored(strategy, x, y)


def _check_training_step_mirrored(strategy, x, y):
    """One SGD step of the global batch under two replicas moves every weight as the
    replicas' computation does on one device: each half of the batch through the model
    by itself (the loop normalizes with that half's statistics), the gradient of the mean
    of the two halves' losses; the mirrored copies stay identical. Returns the trained
    model."""
    import keras
    import tensorflow as tf

    from keras_recnorm import BatchNormLSTM
    from tests.conftest import randomize_weights

    learning_rate = 0.5
    with strategy.scope():
        mirrored = _sequence_model(BatchNormLSTM)
        mirrored.compile(keras.optimizers.SGD(learning_rate), "mse")
    randomize_weights(mirrored.get_layer("rnn").cell, np.random.default_rng(13), scale=0.3)
    one_device = _sequence_model(BatchNormLSTM)
    one_device.set_weights(mirrored.get_weights())
    history = mirrored.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"]).all()

    halves = np.array_split(np.arange(BATCH), strategy.num_replicas_in_sync)
    with tf.GradientTape() as tape:
        losses = [tf.reduce_mean(tf.square(one_device(x[rows], training=True) - y[rows]))
                  for rows in halves]
        loss = tf.add_n(losses) / len(halves)
    gradients = tape.gradient(loss, one_device.trainable_variables)
    for got, variable, gradient in zip(mirrored.trainable_variables,
                                       one_device.trainable_variables, gradients):
        want = variable.numpy() - learning_rate * gradient.numpy()
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                                   err_msg=got.path)
        copies = [np.asarray(v) for v in got.value.values]
        assert len(copies) == 2, got.path
        np.testing.assert_array_equal(copies[0], copies[1], err_msg=got.path)
    return mirrored


def _check_layer_norm_layers_mirrored(strategy, x, y):
    """The LN layers' fused loop (its hand-written step derivative) under two replicas:
    one SGD step of the padded batch (one sample all padding) moves every weight as
    Keras's loop with autodiff does on one device, in float64."""
    import keras

    from tests.conftest import kinds

    x = x.astype("float64")
    x[1] = 0.0  # a sample that is padding only
    y = y.astype("float64")

    def trained(layer_class, fused):
        keras.utils.set_random_seed(3)
        layer = layer_class(UNITS, dtype="float64", name="rnn")
        if not fused:
            layer.uses_fused_loop = lambda: False
        model = keras.Sequential([
            keras.Input((STEPS, FEATURES), dtype="float64"),
            keras.layers.Masking(0.0, dtype="float64"),
            layer,
            keras.layers.Dense(1, dtype="float64"),
        ])
        model.compile(keras.optimizers.SGD(0.5), "mse")
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        return model

    for layer_class in (kind.layer for kind in kinds(family="layer_norm", layer=True)):
        with strategy.scope():
            mirrored = trained(layer_class, fused=True)
        assert mirrored.get_layer("rnn").uses_fused_loop()
        one_device = trained(layer_class, fused=False)
        for got, want in zip(mirrored.weights, one_device.weights):
            np.testing.assert_allclose(
                got.numpy(), want.numpy(), atol=1e-12, err_msg=f"{layer_class.__name__}: {got.path}"
            )


def _check_features_with_large_means(strategy):
    """Two replicas equal one device on the same global batch (momentum 0: the stored
    statistics are the batch's) for features offset by 1e3 and 1e6, 100 times their
    spread, float32: the replicas' moments are combined as deviations, not as
    `Σx² − n·mean²` (which was ~1e-3 off here, and all off at the issue's 1e3·spread)."""
    import keras

    from keras_recnorm import BatchNormLSTM
    from tests.conftest import randomize_weights, set_weights_by_name

    x, mask, y = data()
    for offset in (1e3, 1e6):
        shifted = np.where(mask[..., None], offset + (offset / 100) * x, 0.0).astype("float32")
        for synchronized in (False, True):
            statistics = []
            for mirrored in (True, False):
                keras.utils.set_random_seed(5)
                with strategy.scope() if mirrored else contextlib.nullcontext():
                    model = _sequence_model(BatchNormLSTM, momentum=0.0, synchronized=synchronized)
                    model.compile(keras.optimizers.SGD(0.0), "mse")
                cell = model.get_layer("rnn").cell
                if mirrored:
                    weights = randomize_weights(cell, np.random.default_rng(9))
                else:
                    set_weights_by_name(cell, weights)
                model.fit(shifted, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
                statistics.append(_statistics(cell)[0])
            for name in ("input_moving_mean", "input_moving_variance"):
                got, want = statistics[0][name], statistics[1][name]
                np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=f"{offset}: {name}")


def worker_synchronized():
    strategy = _two_cpu_strategy()
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)

    from keras_recnorm import BatchNormGRU, BatchNormLSTM
    from keras_recnorm.kinds import kind as named_kind
    from tests.conftest import randomize_weights

    x, mask, y = data()
    rng = np.random.default_rng(3)

    # get_config round-trips the argument.
    layer = BatchNormLSTM(UNITS, max_timesteps=MAX_TIMESTEPS, synchronized=True)
    config = layer.get_config()
    assert config["synchronized"] is True
    assert BatchNormLSTM.from_config(config).cell.synchronized is True
    assert BatchNormLSTM(UNITS, max_timesteps=MAX_TIMESTEPS).get_config()["synchronized"] is False

    # Statistics: the input term's are the whole batch's, the loop's the merged replicas'
    # (computed from an input term normalized with the global statistics).
    with strategy.scope():
        model = _sequence_model(BatchNormLSTM, synchronized=True)
        model.compile(keras.optimizers.SGD(0.0), "mse")
    cell = model.get_layer("rnn").cell
    weights = randomize_weights(cell, rng, scale=0.3)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    expected = whole_batch_reference(named_kind("batch_norm_lstm"), weights, x, mask)
    values, copies = _statistics(cell)
    for name in ("input_moving_mean", "input_moving_variance"):
        np.testing.assert_allclose(values[name], expected[name], atol=2e-6, err_msg=name)
    for name in values:
        for copy in copies[name]:
            np.testing.assert_array_equal(copy, copies[name][0])

    # Outputs and gradients of a 2-replica step equal a single-device full-batch step where
    # all statistics are global: a GRU over one step from h = 0 (the recurrent term is 0
    # for every sample, so only the input term's statistics differ between replicas).
    x1 = x[:, :1]
    y1 = y
    for synchronized in (True, False):
        with strategy.scope():
            layer = BatchNormGRU(UNITS, max_timesteps=MAX_TIMESTEPS, synchronized=synchronized)
            layer.build((None, 1, FEATURES))
        randomize_weights(layer.cell, np.random.default_rng(5), scale=0.5)

        def loss_of(outputs, targets, global_batch):
            return tf.reduce_sum(tf.square(tf.reduce_sum(outputs, -1, keepdims=True) - targets)) \
                / global_batch

        def replica_step(inputs, targets):
            with tf.GradientTape() as tape:
                outputs = layer(inputs, training=True)
                loss = loss_of(outputs, targets, BATCH)
            return outputs, tape.gradient(loss, layer.trainable_weights)

        dataset = tf.data.Dataset.from_tensor_slices((x1, y1)).batch(BATCH)
        inputs, targets = next(iter(strategy.experimental_distribute_dataset(dataset)))
        outputs, gradients = strategy.run(tf.function(replica_step), args=(inputs, targets))
        outputs = np.concatenate([np.asarray(o) for o in strategy.experimental_local_results(outputs)])
        gradients = [np.asarray(strategy.reduce("SUM", g, axis=None)) for g in gradients]

        # The same layer on one device (cross-replica context), the whole batch at once.
        with tf.GradientTape() as tape:
            full = layer(tf.constant(x1), training=True)
            loss = loss_of(full, tf.constant(y1), BATCH)
        full_gradients = [np.asarray(g) for g in tape.gradient(loss, layer.trainable_weights)]
        if synchronized:
            np.testing.assert_allclose(outputs, np.asarray(full), atol=1e-5)
            for variable, got, want in zip(layer.trainable_weights, gradients, full_gradients):
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5,
                                           err_msg=variable.path)
        else:  # per-replica input statistics: a different function, as documented
            assert np.abs(outputs - np.asarray(full)).max() > 1e-3

    _check_features_with_large_means(strategy)


def worker_jax_devices():
    import jax
    import keras

    from keras_recnorm import recompute_population_statistics
    from tests import reference
    from tests.conftest import kinds, randomize_weights

    keras.utils.set_random_seed(0)
    devices = jax.devices()
    assert len(devices) == 2, devices
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    x, mask, y = data()
    rng = np.random.default_rng(11)
    for kind in kinds(family="batch_norm", layer=True):
        model = _sequence_model(kind.layer)
        model.compile(keras.optimizers.SGD(0.0), "mse")
        cell = model.get_layer("rnn").cell
        weights = randomize_weights(cell, rng, scale=0.3)
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        # The batch is one array sharded over the devices: the statistics are the whole
        # batch's, as on one device, and every device holds the same copy.
        expected = whole_batch_reference(kind, weights, x, mask)
        for name, value in _statistics(cell)[0].items():
            np.testing.assert_allclose(value, expected[name], atol=2e-6, err_msg=name)
            shards = [np.asarray(s.data) for s in getattr(cell, name).value.addressable_shards]
            assert len(shards) == 2
            np.testing.assert_array_equal(shards[0], shards[1])
        # recompute_population_statistics under the distribution: slots 0..2 are this one
        # batch's steps 0..2.
        recompute_population_statistics(model, [x], verbose=0)
        with np.errstate(over="ignore"):
            _, _, _, stats = reference.for_kind(kind)(weights, x, mask=mask, training=True,
                                                      return_batch_statistics=True)
        for name, value in _statistics(cell)[0].items():
            term, statistic = name.split("_moving_")
            np.testing.assert_allclose(value[:3], stats[f"{term}_{statistic}"][:3], atol=2e-5,
                                       err_msg=f"recompute {name}")


def worker_jax_process(port, rank, tmp_dir):
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(rank),
                               initialization_timeout=120)
    import keras

    from keras_recnorm import BatchNormLSTM
    from keras_recnorm.kinds import kind as named_kind

    assert jax.process_count() == 2 and len(jax.devices()) == 2
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    keras.utils.set_random_seed(1)  # the same initial weights in both processes
    x, mask, y = data()
    model = _sequence_model(BatchNormLSTM)
    model.compile(keras.optimizers.SGD(0.0), "mse")
    cell = model.get_layer("rnn").cell
    weights = {v.path.split("/")[-1]: np.asarray(v.value.addressable_data(0))
               for v in cell.weights}
    # Every process gives the global batch of 8; Keras (DataParallel.distribute_dataset)
    # rebatches and shards it: samples 0-3 go to process 0, 4-7 to process 1.
    import tensorflow as tf

    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH), epochs=1, verbose=0)
    expected = whole_batch_reference(named_kind("batch_norm_lstm"), weights, x, mask)
    found = {}
    for term in cell.normalized_terms:
        for statistic, variable in zip(("mean", "variance"), cell.moving(term)):
            name = f"{term}_moving_{statistic}"
            found[name] = np.asarray(variable.value.addressable_data(0))
            np.testing.assert_allclose(found[name], expected[name], atol=2e-6, err_msg=name)
    np.savez(Path(tmp_dir) / f"statistics_{rank}.npz", **found)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    name, *arguments = sys.argv[1:]
    globals()[f"worker_{name}"](*arguments)
    print(f"ok {name}", flush=True)
