"""The batch-normalized whole-sequence layers: `BatchNormLSTM`, `BatchNormGRU`,
`BatchNormSimpleRNN`, and their common loop (`BatchNormSequence`): padding-aware
per-step statistics, one update of the population statistics per batch, the fused
training loop and the forward-only inference loop."""

import keras
from keras import ops

from keras_recnorm.batch_norm.cells import BatchNormGRUCell, BatchNormLSTMCell, BatchNormSimpleRNNCell
from keras_recnorm.base import LOOP_BACKENDS, NormalizedRNN
from keras_recnorm.normalization import (
    moments_from_variance,
    slot_shares,
    step_slots,
)
from keras_recnorm.recurrence import keep_padded


register = keras.saving.register_keras_serializable(package="keras_recnorm")

class _BatchNormSequence(NormalizedRNN):
    """The BN whole-sequence layers.

    One path per mode, on every dtype, activation and `unroll`. Training
    (`_batch_statistics_loop`): before the loop, `x·kernel` for all steps; in the loop
    (`keras_recnorm.recurrence`), the input term, the recurrent term and the cell state,
    normalized with batch statistics over the samples that are not padding at that step
    (a `synchronized` input term is normalized before the loop, with the same per-step
    statistics); after the loop, one update of the population statistics from the
    statistics the loop returns, so no slot is moved twice and no variable is written
    inside the loop (which JAX forbids). The loop runs the cell's step derivative where
    it applies (`uses_fused_loop`), and is differentiated by the backend elsewhere.
    Inference: `_population_loop`, forward only.
    """

    def __init__(self, units, max_timesteps, **kwargs):
        super().__init__(units, max_timesteps=max_timesteps, **kwargs)

    def __call__(self, *args, **kwargs):
        # Keras casts floating call arguments to the compute dtype: under mixed_bfloat16 an
        # initial step counter of 257 would arrive as 256. It counts whole steps, so there
        # it travels as int32, which Keras leaves alone (`call` reads it as float32).
        initial_state = kwargs.get("initial_state")
        half = self.compute_dtype in ("float16", "bfloat16")
        if half and isinstance(initial_state, (list, tuple)) and len(initial_state) == len(self.cell.state_size):
            counter = ops.cast(initial_state[-1], "float32")
            kwargs["initial_state"] = [*initial_state[:-1], ops.cast(ops.round(counter), "int32")]
        return super().__call__(*args, **kwargs)

    def run_recurrence(self, sequences, initial_state, mask, training):
        # keras.layers.RNN.call, but for one difference: RNN.call casts every state to the
        # compute dtype, where the step counter would stop counting (bfloat16 at 256,
        # float16 at 2048). Here the counter stays float32 (exact to 2**24) from the
        # initial state through the loop to the returned and the stored states.
        if self.unroll and sequences.shape[1] is None:
            raise ValueError(
                f"{type(self).__name__}: `unroll=True` needs a known number of timesteps; "
                "give the Input a fixed length (keras.Input((timesteps, features)))."
            )
        states, counter, counter_given = self.initial_states(sequences, initial_state)
        cell = self.cell
        # As RNN.call: the cell's dropout masks, made once per call from the first step.
        cell.get_dropout_mask(sequences[:, 0, :])
        cell.get_recurrent_dropout_mask(states[0])
        try:
            last_output, outputs, final_states = self.inner_loop(
                sequences, [*states, counter], mask, training, every_counter_zero=not counter_given
            )
        finally:
            cell.reset_dropout_mask()
            cell.reset_recurrent_dropout_mask()
        final_states = [ops.cast(s, self.compute_dtype) for s in final_states[:-1]] + [
            ops.cast(final_states[-1], "float32")
        ]
        if self.stateful:
            for variable, value in zip(self.states, final_states):
                variable.assign(ops.cast(value, variable.dtype))
        output = ops.cast(outputs if self.return_sequences else last_output, self.compute_dtype)
        return (output, *final_states) if self.return_state else output

    def initial_states(self, sequences, initial_state):
        """`(states without the counter, in the compute dtype; the counter (B, 1) in
        float32; whether a counter was given or carried)`: from `initial_state`, else a
        stateful layer's states, else zeros."""
        batch = ops.shape(sequences)[0]
        if initial_state is not None:
            initial_state = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
            expected = len(self.cell.state_size)
            if len(initial_state) == expected - 1:
                # As keras.layers.LSTM/GRU take them: the counter starts at 0.
                states, counter, given = initial_state, ops.zeros((batch, 1)), False
            elif len(initial_state) == expected:
                states, counter, given = initial_state[:-1], initial_state[-1], True
            else:
                raise ValueError(
                    f"{type(self).__name__}: `initial_state` must be {self.cell.state_names} "
                    f"or, starting the step counter at 0, without `step`; got "
                    f"{len(initial_state)} tensors."
                )
        elif self.stateful and self.states is not None:
            expected_batch = self.states[0].shape[0]
            if sequences.shape[0] is not None and sequences.shape[0] != expected_batch:
                raise ValueError(
                    f"{type(self).__name__} is stateful with batch size {expected_batch} (its "
                    f"states hold one row per sample); got a batch of {sequences.shape[0]}: "
                    "build the model again for that batch size, or feed batches of "
                    f"{expected_batch}."
                )
            states, counter, given = self.states[:-1], self.states[-1], True
        else:
            states = self.cell.get_initial_state(batch)[:-1]
            counter, given = ops.zeros((batch, 1)), False
        states = [ops.cast(s, self.cell.compute_dtype) for s in states]
        return states, ops.cast(counter, "float32"), given

    def inner_loop(self, sequences, initial_state, mask, training=False, every_counter_zero=False):
        """The loop from `initial_state` (the cell's states, the counter last in float32):
        `(last_output, outputs, final states)`, the final counter in float32.
        `every_counter_zero`: no counter was given or carried (all samples start at 0)."""
        cell = self.cell
        inference = not cell.uses_batch_statistics(training)
        if keras.backend.backend() not in LOOP_BACKENDS:
            # Keras's loop over the cell, on a backend the drivers don't run on.
            return super().inner_loop(sequences, initial_state, mask, training=training)
        sequences = self.dropped_sequence(sequences, training)
        if self.go_backwards:
            sequences = ops.flip(sequences, axis=1)
            mask = None if mask is None else ops.flip(mask, axis=1)
        sample_mask = original_mask = None
        if mask is not None:
            # Loop step k must be every sample's k-th real step, whatever the padding
            # (left, right, or reversed by go_backwards), so that the statistics of slot k
            # are those of step k: move the real steps to the front first.
            original_mask = ops.cast(mask, "bool")
            sequences, mask = _real_steps_first(sequences, original_mask)
            sample_mask = ops.cast(mask, "float32")
            sequences = self.zero_padding(sequences, mask)

        # Real steps come first, so a sample's step k is loop step k after its carried step.
        first_step = initial_state[-1][:, 0]
        timesteps = ops.cast(ops.arange(ops.shape(sequences)[1]), "float32")
        input_slots = step_slots(first_step[:, None] + timesteps[None, :], cell.max_timesteps)
        if inference:
            hs, states = self._population_loop(
                sequences, input_slots, initial_state[:-1], mask, every_counter_zero
            )
        else:
            hs, states = self._batch_statistics_loop(
                sequences, input_slots, initial_state, mask, sample_mask, training
            )
        real_steps = ops.cast(ops.shape(sequences)[1], "float32")
        if mask is not None:
            real_steps = ops.sum(sample_mask, axis=1, keepdims=True)
        states.append(initial_state[-1] + real_steps)
        # Without return_sequences, inference keeps no outputs but the last.
        last_output, outputs = states[0], ops.expand_dims(states[0], 1) if hs is None else hs
        if original_mask is not None:
            last_output, outputs = self._outputs_in_input_order(states[0], outputs, original_mask)
        return last_output, outputs, states

    def _batch_statistics_loop(self, sequences, input_slots, initial_state, mask, sample_mask, training):
        """Training: the loop of the driver (`fused_loop`), then one update of the
        population statistics. Returns `(hs, final states without the counter)`.

        The step normalizes the input term (only `x·kernel` is computed for all steps
        before the loop: the step's reductions over the batch are `(B, F)`, and those over
        the batch axis of a `(B, T, F)` tensor, with their derivative, were slower,
        docs/throughput.md), except a `synchronized` one, whose all-reduce can't run
        inside the loop: its input term is normalized before the loop
        (`input_sequence_term`). The cell's step derivative runs where it applies
        (`uses_fused_loop`); elsewhere (other activations, half precision, `unroll`) the
        backend differentiates the same loop (measured against the scan it replaced:
        docs/throughput.md, "One path per mode")."""
        cell = self.cell
        weights = cell.step_weights()
        backward = cell.step_backward if self.uses_fused_loop() else None
        if cell.synchronized:
            inputs, input_moments = cell.input_sequence_term(weights, sequences, sample_mask)
            weights = weights._replace(kernel=None, input_gamma=None, bias=None)
        else:
            inputs = ops.matmul(sequences, cell.kernel)
            weights = weights._replace(kernel=None)
        hs, last_states, statistics = self.fused_loop(
            inputs, initial_state[:-1], mask, training, cell.step_forward, backward, weights
        )
        if not cell.synchronized:
            counted = ops.ones_like(inputs[:, :, 0]) if sample_mask is None else sample_mask
            count = ops.cast(ops.sum(counted, axis=0), statistics[0].dtype)
            input_moments = moments_from_variance(count, statistics[0], statistics[1])
            statistics = statistics[2:]
        # The moments after the loop: per term, (count, mean, M2) of every step.
        count = input_moments[0]
        moments = {"input": input_moments}
        for k, term in enumerate(cell.normalized_terms[1:]):
            moments[term] = moments_from_variance(count, statistics[2 * k], statistics[2 * k + 1])
        # Each sample's step goes to its own slot (samples of a stateful layer may carry
        # different counters); the statistics of a step are those of all its samples.
        cell.update_statistics(moments, slot_shares(input_slots, sample_mask, cell.max_timesteps))
        return hs, list(last_states)

    def _population_loop(self, sequences, slots, states, mask, same_slots):
        """Inference, forward only (`forward_loop`: no residuals, no statistics gathered),
        over the real-steps-first `sequences`; `slots (B, T)` is each sample's slot at
        each loop step. Returns `(hs, final states without the counter)`.

        Each step projects and normalizes its own input (the hoisted `(B, T, 4U)` input
        term measured slower) and gathers each sample's rows of the population tables
        for the next step (per term, mean and scale, `cell.population()`: γ folded in
        once per call, not per step), carried as extra states: gathered in the step
        that uses them, XLA on CPU fuses the gather into every consumer and recomputes
        it there (docs/throughput.md)."""
        cell = self.cell
        n_states = len(states)
        tables = [table for normalizer in cell.population() for table in normalizer]
        # `same_slots`: every sample started at 0, and real steps come first: all read
        # the same slot.
        # Padded steps come last: a sample's rows held there are never used again.
        next_slots = ops.concatenate([slots[:, 1:], slots[:, -1:]], axis=1)

        def rows_at(slots_t):
            return tuple(ops.take(table, slots_t, axis=0) for table in tables)

        def forward(weights, step_inputs, h_in, carried, _):
            x, slots_next, *mask_t = step_inputs
            mask_t = mask_t[0] if mask_t else None
            states, rows = carried[:n_states], carried[n_states:]
            population = tuple(zip(rows[::2], rows[1::2]))  # per term, (mean, scale)
            new_states, residuals, statistics = cell.step_forward(
                weights, x, h_in, states, mask_t, population, forward_only=True
            )
            new_states = tuple(keep_padded(mask_t, a, b) for a, b in zip(new_states, states))
            return (*new_states, *rows_at(slots_next)), residuals, statistics

        if same_slots:
            slots, next_slots = slots[:1], next_slots[:1]
        carried = (*states, *rows_at(slots[:, 0]))
        # The padded steps' states are kept in `forward` (the driver would keep the rows,
        # one per batch where all samples share the slot, as one per sample).
        step_inputs = (sequences, next_slots)
        if mask is not None:
            step_inputs += (ops.cast(mask[..., None], sequences.dtype),)
        hs, last = self.forward_loop(step_inputs, carried, None, forward, cell.step_weights())
        return hs, list(last[:n_states])

    def _outputs_in_input_order(self, final_h, outputs, mask):
        """Keras's outputs for the original step order, from the loop over real steps
        first: a real step's output, and at a padded step the previous real output (or
        zeros with `zero_output_for_mask`; zeros before the first real step)."""
        real = ops.cast(mask, "int32")
        real_before = ops.cumsum(real, axis=1) - real
        source = ops.where(mask, real_before, real_before - 1)
        keep = source >= 0
        if self.zero_output_for_mask:
            keep = ops.logical_and(keep, mask)
        last_output = ops.where(keep[:, -1:], final_h, ops.zeros_like(final_h))
        if not self.return_sequences:
            return last_output, outputs
        index = ops.broadcast_to(ops.expand_dims(ops.maximum(source, 0), -1), ops.shape(outputs))
        reordered = ops.take_along_axis(outputs, index, axis=1)
        return last_output, ops.where(ops.expand_dims(keep, -1), reordered, ops.zeros_like(reordered))


def _real_steps_first(sequences, mask):
    """Each sample's real steps moved to the front, in their order; padding after them."""
    timesteps = ops.shape(mask)[1]
    positions = ops.expand_dims(ops.arange(timesteps), 0)
    order = ops.argsort(ops.where(mask, positions, positions + timesteps), axis=1)
    index = ops.broadcast_to(ops.expand_dims(order, -1), ops.shape(sequences))
    return ops.take_along_axis(sequences, index, axis=1), ops.take_along_axis(mask, order, axis=1)


@register
class BatchNormLSTM(_BatchNormSequence):
    """Batch-normalized LSTM layer with per-time-step statistics (Cooijmans et al. 2016).

    A `keras.layers.RNN` over a `BatchNormLSTMCell` that it owns, constructed like
    `keras.layers.LSTM`: every argument of `BatchNormLSTMCell` (`units` and
    `max_timesteps` first), plus `return_sequences`, `return_state`, `go_backwards`,
    `stateful`, `unroll` and `zero_output_for_mask`. Same weights (same names) and, for
    unpadded input, the same outputs as `keras.layers.RNN(BatchNormLSTMCell(...))`. Beyond
    the cell:

    - **padding-aware statistics**: at every step, the batch mean and variance are taken
      over the samples that are not padding at that step (mask from
      `Embedding(mask_zero=True)`, `Masking` or `mask=`); a step where every sample is
      padding changes no statistic;
    - **one update per batch**: population statistics move once per batch, after the
      loop, on every backend (JAX included) and with no double move of slot 0;
    - **speed**: in training, `x·kernel` is computed for all steps before the loop,
      and the loop (`keras_recnorm.recurrence`) normalizes it and runs the cell's step,
      with its hand-written derivative on TensorFlow and JAX (default activations,
      float32 or float64; elsewhere, and on torch, the backend differentiates the same
      loop). At inference a forward-only loop reads each sample's population
      statistics (every dtype and activation; with `unroll`, unrolled).

    Steps are counted per sample, over its real steps only: the statistics of slot t come
    from every sample's t-th real step, and at inference each sample reads the slots of
    its own steps, so left- or right-padded and backward sequences are all normalized as
    their unpadded selves would be. A step that few samples of a batch reach (one long
    sentence among short ones) is normalized in training with those few samples'
    statistics (the paper's definition; one sample: variance 0, the term becomes β), and
    moves the population statistics in proportion to its sample count, towards the
    variance across all the samples that reached it (docs/batch_norm_statistics.md).
    `return_state=True` also returns the step counter (last state), in float32 under
    every dtype policy (so it counts exactly past 256 steps under `mixed_bfloat16`).

    Args:
        units: positive integer, dimensionality of the output space.
        max_timesteps: positive integer, the number of per-step statistics slots (see
            `BatchNormLSTMCell`).
        return_sequences, return_state, go_backwards, stateful, unroll, zero_output_for_mask: as
            in `keras.layers.LSTM` (`unroll`: the loop unrolled, a fixed number of steps).
        **kwargs: every other argument of `BatchNormLSTMCell` (activations, initializers,
            regularizers, constraints, dropout, `epsilon`, ...) and the layer's own
            (`name`, `dtype`, `trainable`).

    Call arguments:
        sequences: a 3D tensor `(batch, timesteps, features)`.
        initial_state: optional list of initial states, `[h, c, step]`; without `step`, as
            `keras.layers.LSTM` takes them, the step counter starts at 0. E.g. a noisy
            `h` for the paper's sequential MNIST.
        mask: optional boolean `(batch, timesteps)`.
        training: batch statistics and statistics updates (`fit`), or population
            statistics (`predict`, `evaluate`, export).

    Returns:
        As `keras.layers.LSTM`: the last output `(batch, units)`, or every step's
        `(batch, timesteps, units)` with `return_sequences`; with `return_state`, a list
        of that and the final states (`h`, `c` and `step`).

    Example:

    >>> import numpy as np
    >>> from keras_recnorm import BatchNormLSTM
    >>> BatchNormLSTM(16, max_timesteps=10)(np.ones((4, 10, 3), "float32")).shape
    TensorShape([4, 16])
    """

    cell_class = BatchNormLSTMCell


@register
class BatchNormGRU(_BatchNormSequence):
    """Batch-normalized GRU layer with per-time-step statistics (Cooijmans et al. 2016).

    A `keras.layers.RNN` over a `BatchNormGRUCell` that it owns, constructed like
    `keras.layers.GRU`: the cell's arguments plus `keras.layers.RNN`'s; same weights
    and, for unpadded input, the same outputs as `keras.layers.RNN(BatchNormGRUCell(...))`.
    Padding-aware statistics, one update of the population statistics per batch, per-sample
    step counters, the faster loops and the float32 counter under every policy: as
    `BatchNormLSTM`, whose docstring describes them.

    Args:
        units: positive integer, dimensionality of the output space.
        max_timesteps: positive integer, the number of per-step statistics slots.
        return_sequences, return_state, go_backwards, stateful, unroll, zero_output_for_mask: as
            in `keras.layers.GRU` (`unroll`: the loop unrolled, a fixed number of steps).
        **kwargs: every other argument of `BatchNormGRUCell` and the layer's own (`name`,
            `dtype`, `trainable`).

    Call arguments:
        sequences: a 3D tensor `(batch, timesteps, features)`.
        initial_state: optional list `[h, step]`; without `step` (as `keras.layers.GRU`
            takes it) the step counter starts at 0.
        mask: optional boolean `(batch, timesteps)`.
        training: batch statistics and statistics updates (`fit`), or population
            statistics (`predict`, `evaluate`, export).

    Returns:
        As `keras.layers.GRU`, with the step counter `step` (float32) after `h` among
        the final states.

    Example:

    >>> import numpy as np
    >>> from keras_recnorm import BatchNormGRU
    >>> BatchNormGRU(16, max_timesteps=10)(np.ones((4, 10, 3), "float32")).shape
    TensorShape([4, 16])
    """

    cell_class = BatchNormGRUCell

@register
class BatchNormSimpleRNN(_BatchNormSequence):
    """Batch-normalized SimpleRNN layer with per-time-step statistics (Cooijmans et al.
    2016): `keras.layers.RNN(BatchNormSimpleRNNCell(...))` as one layer, built like
    `keras.layers.SimpleRNN`, with the padding-aware statistics, the per-sample step
    counters and the faster loops that `BatchNormLSTM` describes.

    Args:
        units: positive integer, dimensionality of the output space.
        max_timesteps: positive integer, how many per-step statistics slots.
        **kwargs: `keras.layers.RNN`'s arguments (`return_sequences`, `return_state`,
            `go_backwards`, `stateful`, `unroll`, `zero_output_for_mask`), then
            `BatchNormSimpleRNNCell`'s and the layer's (`name`, `dtype`, `trainable`).

    Call arguments:
        sequences: `(batch, timesteps, features)`; `initial_state`: `[h, step]` or
            `[h]`; `mask`: boolean `(batch, timesteps)`; `training`: as in
            `BatchNormLSTM`.

    Returns:
        What `keras.layers.SimpleRNN` returns; among the final states, `step` follows
        `h`.

    Example:

    >>> import numpy as np
    >>> from keras_recnorm import BatchNormSimpleRNN
    >>> layer = BatchNormSimpleRNN(8, max_timesteps=4, return_sequences=True)
    >>> layer(np.ones((2, 4, 3), "float32")).shape
    TensorShape([2, 4, 8])
    """

    cell_class = BatchNormSimpleRNNCell
