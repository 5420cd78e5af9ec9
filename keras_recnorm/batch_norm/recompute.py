"""`recompute_population_statistics`: every BN cell's population statistics set to the
statistics of all the samples of a dataset (Cooijmans et al. 2016, sec. 4)."""

import keras
import numpy as np
from keras import ops

from keras_recnorm.batch_norm.cells import BatchNormCell
from keras_recnorm.base import check_positive_int
from keras_recnorm.compat import all_layers
from keras_recnorm.normalization import (
    collecting_batch_statistics,
    merge_moments,
    merge_moments_by_slot,
    moments_variance,
)


def _to_float64(tensor):
    # convert_to_numpy, not np.asarray: torch tensors that require grad must be detached.
    return np.asarray(ops.convert_to_numpy(tensor), "float64")


class _MergedStatistics:
    """Merges every batch's moments per (cell, term, slot) while
    `recompute_population_statistics` runs the model; writes them when asked.

    Keras calls a cell inside `keras.layers.RNN` on the first step once or twice more
    before its loop (to infer shapes; to prepare the dropout masks of stacked cells), and
    with `go_backwards` on the wrong step; all of these see the initial step counter. The
    loop's steps follow, with the counter advancing: a batch's real steps of a cell are its
    one-step calls from the last one made with the first call's counter on.
    """

    def __init__(self):
        self.totals = {}
        self.pending = {}

    def add(self, cell, moments, slots, step=None):
        """`step`: the counter of a cell's one-step call, `None` for a whole sequence."""
        calls = self.pending.setdefault(id(cell), (cell, []))[1]
        moments = {term: tuple(_to_float64(v) for v in m) for term, m in moments.items()}
        calls.append((None if step is None else float(step), moments, ops.convert_to_numpy(slots)))

    def end_batch(self):
        for cell, calls in self.pending.values():
            steps = [step for step, _, _ in calls if step is not None]
            if steps:
                first = max(k for k, (step, _, _) in enumerate(calls) if step == steps[0])
                calls = [c for k, c in enumerate(calls) if c[0] is None or k >= first]
            for _, moments, slots in calls:
                for term, term_moments in moments.items():
                    batch = merge_moments_by_slot(term_moments, slots, cell.max_timesteps)
                    key = (id(cell), term)
                    total = self.totals.get(key, (cell, None))[1]
                    if total is not None:
                        batch = merge_moments(total, batch)
                    self.totals[key] = (cell, tuple(_to_float64(v) for v in batch))
        self.pending = {}

    def write(self):
        """Sets each reached slot to its merged statistics; other slots keep theirs."""
        for (_, term), (cell, moments) in self.totals.items():
            reached = moments[0][:, None] > 0
            mean = _to_float64(moments[1])
            variance = _to_float64(moments_variance(moments))
            for variable, value in zip(cell.moving(term), (mean, variance)):
                old = ops.convert_to_numpy(variable)
                variable.assign(np.where(reached, value, old).astype("float32"))


def _saved_variables(model):
    """`[(variable, copy of its value)]` for every non-trainable variable of `model` and
    every state of its stateful layers (Keras keeps those apart): what a pass over the
    model could move besides the trainable weights. Copies: a torch variable is assigned
    in place."""
    variables = list(model.non_trainable_variables)
    for layer in all_layers(model):
        if getattr(layer, "stateful", False) and getattr(layer, "states", None) is not None:
            variables += keras.tree.flatten(layer.states)
    unique = {id(v): v for v in variables if isinstance(v, keras.Variable)}
    return [(v, np.array(ops.convert_to_numpy(v), copy=True)) for v in unique.values()]


def recompute_population_statistics(model, dataset, steps=None, verbose=1):
    """Sets every batch-normalized cell's population statistics to the statistics of all
    the samples of `dataset`.

    The paper's alternative to moving averages (Cooijmans et al. 2016, sec. 4): run the
    model over `steps` batches and set each slot's population mean and variance to those
    of every sample that reached that step, in every batch: each batch's `(count, mean,
    M2)` per step is merged per slot (`merge_moments`, count-weighted), so a slot that one
    sample per batch reaches gets the variance across those samples. Slots come from each
    cell's own step counter (whatever layers come before it); slots no batch reached keep
    their statistics. Shows a progress bar.

    The model runs in inference mode, as it will be used with these statistics: dropout
    is off, and every other layer computes as at inference (a
    `keras.layers.BatchNormalization` with its own moving statistics, which it does not
    move); only the batch-normalized cells normalize with each batch's statistics, to
    gather them. A stateful layer starts from its current states and carries them from
    batch to batch, as `fit` would. Only the cells' population statistics change: every
    other non-trainable variable (other layers' statistics, dropout seeds) and every
    stateful layer's states are restored afterwards, and nothing is written until every
    batch has run: an exception (even `KeyboardInterrupt`) leaves the model exactly as
    it was.

    Runs eagerly, so it works with cells in `keras.layers.RNN` on TensorFlow and with the
    whole-sequence layers on every backend. A cell inside `keras.layers.RNN` never sees the
    mask: its padded samples count, as in its training.

    Args:
        model: a Keras model (or layer) containing `BatchNormLSTMCell`/`BatchNormGRUCell`
            cells or `BatchNormLSTM`/`BatchNormGRU` layers, at any depth.
        dataset: an iterable of batches: `x`, or `(x, y)` / `(x, y, sample_weight)`
            tuples, e.g. a `tf.data.Dataset`; `x` is whatever the model takes (a tensor,
            raw strings, a list or dict of inputs).
        steps: number of batches to use (default: all of `dataset`).
        verbose: 1 shows a progress bar, 0 is silent.

    Returns:
        The number of batches used.

    Example:

    >>> import numpy as np, keras
    >>> from keras_recnorm import BatchNormLSTM, recompute_population_statistics
    >>> model = keras.Sequential([keras.Input((6, 3)), BatchNormLSTM(4, max_timesteps=6)])
    >>> batches = [np.random.rand(8, 6, 3).astype("float32") for _ in range(3)]
    >>> recompute_population_statistics(model, batches, verbose=0)
    3
    """
    cells = [layer for layer in all_layers(model) if isinstance(layer, BatchNormCell)]
    if not cells:
        raise ValueError(
            "recompute_population_statistics: the model has no batch-normalized cell or layer "
            "(BatchNormLSTMCell, BatchNormGRUCell, BatchNormLSTM, BatchNormGRU)."
        )
    if steps is not None:
        check_positive_int("steps", steps)
    merged = _MergedStatistics()
    saved = _saved_variables(model)
    progress = keras.utils.Progbar(steps, unit_name="batch", verbose=verbose)
    used = 0
    try:
        with collecting_batch_statistics(merged):
            for batch in dataset:
                if steps is not None and used >= steps:
                    break
                inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
                # Inference mode; in the scope the cells normalize with, and hand `merged`,
                # each batch's statistics.
                model(inputs, training=False)
                merged.end_batch()
                used += 1
                progress.update(used)
    finally:
        for variable, value in saved:
            variable.assign(value)
    if used == 0:
        raise ValueError("recompute_population_statistics: `dataset` gave no batch.")
    merged.write()
    return used
