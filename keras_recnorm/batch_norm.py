"""Recurrent batch normalization (Cooijmans et al. 2016, arXiv:1603.09025).

Batch statistics are kept separately for every time step, for the input term, the
recurrent term and (LSTM) the cell state. Inference uses population statistics of slot
`min(t, max_timesteps - 1)`. Equations and the rules for updating the statistics:
DESIGN.md.
"""

import keras
import numpy as np
from keras import initializers, ops

from keras_recnorm.base import (
    GatedCell,
    NormalizedRNN,
    check_numeric_inputs,
    check_positive_int,
    check_unit_interval,
    lstm_gates_backward,
    lstm_output_backward,
)
from keras_recnorm.normalization import (
    batch_moments,
    batch_normalize,
    batch_standardize,
    batch_standardize_backward,
    moving_average_update,
    standardize_with,
    statistics_dtype,
    step_slots,
)

register = keras.saving.register_keras_serializable(package="keras_recnorm")

_JAX_TRAINING_ERROR = (
    "{name}: a batch-normalized cell can't update its population statistics inside "
    "keras.layers.RNN on the JAX backend (JAX forbids variable updates inside the loop); "
    "use the whole-sequence layer keras_recnorm.{layer} instead, which updates them after "
    "the loop."
)


class BatchNormCell(GatedCell):
    """What the BN-LSTM and BN-GRU cells share: `max_timesteps` slots of population
    statistics per normalized term, the step counter state, and the update rule.

    The step index reaches the cell as the last state (`keras.layers.RNN` passes none).
    It counts the real (unmasked) steps each sample has seen, so at inference every
    sample reads the slot of its own step, even under masking or `go_backwards`.
    """

    # Names of the batch-normalized terms, in the order their statistics are created.
    normalized_terms = ()
    sequence_layer_name = None

    def __init__(
        self,
        units,
        max_timesteps,
        momentum=0.95,
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        gamma_initializer=None,
        **kwargs,
    ):
        # The paper: γ = 0.1 keeps tanh/sigmoid out of saturation and gradients alive.
        if gamma_initializer is None:
            gamma_initializer = initializers.Constant(0.1)
        super().__init__(units, gamma_initializer=gamma_initializer, **kwargs)
        check_positive_int("max_timesteps", max_timesteps)
        check_unit_interval("momentum", momentum)
        self.max_timesteps = max_timesteps
        self.momentum = float(momentum)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        # When set (by `recompute_population_statistics`), updates accumulate exact sums
        # here instead of moving the averages.
        self.statistics_accumulator = None

    def add_moving_statistics(self, term, width):
        for statistic, initializer in (
            ("mean", self.moving_mean_initializer),
            ("variance", self.moving_variance_initializer),
        ):
            variable = self.add_weight(
                shape=(self.max_timesteps, width),
                name=f"{term}_moving_{statistic}",
                initializer=initializer,
                trainable=False,
                autocast=False,
            )
            setattr(self, f"{term}_moving_{statistic}", variable)

    def moving(self, term):
        return getattr(self, f"{term}_moving_mean"), getattr(self, f"{term}_moving_variance")

    def uses_batch_statistics(self, training):
        # As keras.layers.BatchNormalization: a frozen layer always runs in inference mode.
        return bool(training) and self.trainable

    def normalize(self, term, raw, gamma, beta, slots, mask, training):
        """BN_t of a whole sequence `raw (B, T, F)`; returns it and, in training, the
        per-step `(mean, variance, count)` it used (else `None`).

        Training: batch statistics over the samples of each step, leaving out samples
        whose `mask (B, T)` is 0. Inference: population statistics of each sample's
        `slots (B, T)`.
        """
        if self.uses_batch_statistics(training):
            mean, variance, count = batch_moments(raw, mask)
            moments = (mean, variance, count)
        else:
            moving_mean, moving_variance = self.moving(term)
            mean = ops.take(moving_mean, slots, axis=0)
            variance = ops.take(moving_variance, slots, axis=0)
            moments = None
        return batch_normalize(raw, mean, variance, gamma, beta, self.epsilon), moments

    def standardize(self, x, mask, population):
        """`(x̂, rstd, mean, variance)` of one step's term `x (B, F)`: with the batch's
        statistics over the samples whose `mask (B, 1)` is 1 (all, for `None`) when
        `population` is `None`, else with `population = (mean, variance)` per sample."""
        if population is None:
            return batch_standardize(x, self.epsilon, mask)
        mean, variance = population
        return (*standardize_with(x, mean, variance, self.epsilon), mean, variance)

    def step_population(self, slots, training):
        """`None` in training (batch statistics), else the population statistics of
        each sample's slot, per normalized term of the step."""
        if self.uses_batch_statistics(training):
            return None
        return tuple(
            tuple(ops.take(v, slots, axis=0) for v in self.moving(term))
            for term in self.normalized_terms[1:]
        )

    def input_projection(self, inputs, slots, mask, training):
        """`BN_t(x·kernel; input_gamma) + bias` for a whole sequence `(B, T, D)`;
        returns it and, in training, the per-step moments of `x·kernel`."""
        raw = ops.matmul(inputs, self.kernel)
        projected, moments = self.normalize("input", raw, self.input_gamma, None, slots, mask, training)
        return (projected + self.bias if self.use_bias else projected), moments

    def update_statistics(self, moments, slots):
        """Moves the population statistics of every term towards this batch's.

        Args:
            moments: dict term -> `(mean, variance, count)` of the batch statistics
                the term was normalized with, `(K, F)`, `(K, F)`, `(K,)` for K steps.
            slots: int `(K,)`, the slot of each step.
        """
        for term, (mean, variance, count) in moments.items():
            moving_mean, moving_variance = self.moving(term)
            if self.statistics_accumulator is not None:
                self.statistics_accumulator.add(self, term, slots, mean, variance, count)
                continue
            moving_mean.assign(
                moving_average_update(moving_mean, slots, mean, count, self.momentum)
            )
            moving_variance.assign(
                moving_average_update(moving_variance, slots, variance, count, self.momentum)
            )

    def call(self, inputs, states, training=False):
        check_numeric_inputs(self, inputs)
        update = self.uses_batch_statistics(training)
        if update and keras.backend.backend() == "jax":
            raise RuntimeError(
                _JAX_TRAINING_ERROR.format(name=type(self).__name__, layer=self.sequence_layer_name)
            )
        steps = states[-1]
        slots = step_slots(steps[:, 0], self.max_timesteps)
        x = ops.expand_dims(self.dropped_inputs(inputs, training), 1)
        projected, input_moments = self.input_projection(x, slots[:, None], None, training)
        h, new_states, statistics = self.step(projected[:, 0], states, training=training)
        if update:
            # The batch's step: every sample of an unmasked batch is at the same step.
            count = input_moments[2]
            moments = {"input": input_moments}
            for term, (mean, variance) in statistics.items():
                moments[term] = (mean[None], variance[None], count)
            self.update_statistics(moments, ops.reshape(ops.max(slots, initial=0), (1,)))
        return h, new_states

    def get_config(self):
        return {
            **super().get_config(),
            "max_timesteps": self.max_timesteps,
            "momentum": self.momentum,
            "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
            "moving_variance_initializer": initializers.serialize(
                self.moving_variance_initializer
            ),
        }


_BN_ARGS_DOC = """
        max_timesteps: positive integer T_max, the number of per-step statistics slots.
            Step t uses slot `min(t, max_timesteps - 1)`: longer sequences work and
            share the last slot.
        momentum: momentum of the moving averages of the statistics, in [0, 1)
            (default 0.95, the reference implementation's update rate 0.05).
        recurrent_activation: activation of the gates (default `sigmoid`).
        activation: activation of the candidate / cell output (default `tanh`).
        use_bias: whether to add `bias`, the shift of the normalized gate terms.
        kernel_initializer, recurrent_initializer, bias_initializer: initializers of
            `kernel` (`glorot_uniform`), `recurrent_kernel` (`orthogonal`), `bias`.
        gamma_initializer: initializer of every γ; default `Constant(0.1)` (the paper:
            0.1 avoids vanishing gradients through saturated gates).
        beta_initializer: initializer of β (default `zeros`).
        moving_mean_initializer, moving_variance_initializer: initial population
            statistics (`zeros`, `ones`).
        kernel_regularizer, recurrent_regularizer, bias_regularizer, gamma_regularizer,
            beta_regularizer, kernel_constraint, recurrent_constraint, bias_constraint,
            gamma_constraint, beta_constraint: as in Keras.
        dropout: fraction of the input units to drop, in [0, 1). One mask per sequence.
        recurrent_dropout: fraction of the recurrent state's units to drop, in [0, 1).
        epsilon: added to the variance inside the square root (default 1e-5).
        seed: random seed of the dropout masks.

    Call arguments:
        inputs: a 2D tensor `(batch, features)`, the input at one time step.
        states: the previous states (see the class description); the last one is the
            step counter.
        training: `True` uses the batch's statistics at this step and updates the
            population statistics (as `fit` does); `False` uses the population
            statistics (`predict`, `evaluate`, export). A cell with `trainable=False`
            always runs in inference mode.

    Statistics updates inside `keras.layers.RNN`: the cell moves its population
    statistics in `call`, once per step. On the TensorFlow backend (and torch) the RNN
    loop calls the step once more before the loop, with the first step's inputs, to learn
    the output shapes; so with `unroll=False` the first slot of the batch (slot 0, or the
    carried step of a stateful layer) is moved twice per batch with the same batch
    statistics (an EMA of momentum² for that slot: the same estimate, reached faster).
    With `unroll=True` every slot moves once. Two more Keras calls of that kind: inside
    `StackedRNNCells` each cell is called once on the first step to prepare dropout masks
    (slot 0 moves once more), and with `go_backwards` the extra call gets the sequence's
    last input, not the first one the loop processes (slot 0 also moves once towards the
    statistics of that one-step sequence). `recompute_population_statistics` drops all
    of these; the whole-sequence layers never make them. On JAX, training the cell inside
    `keras.layers.RNN` raises an error: use the whole-sequence layer. Padded samples take
    part in the batch statistics of `keras.layers.RNN(cell)` (the cell never sees the
    mask); the whole-sequence layers leave them out.
"""


@register
class BatchNormLSTMCell(BatchNormCell):
    __doc__ = f"""LSTM cell with recurrent batch normalization (Cooijmans et al. 2016).

    ```
    z  = BN_t(x·kernel; input_gamma) + BN_t(h·recurrent_kernel; recurrent_gamma) + bias
    c' = σ(f)·c + σ(i)·tanh(g)                   (i, f, g, o = split(z, 4))
    h' = σ(o)·tanh(BN_t(c'; cell_gamma, cell_beta))
    ```
    with separate statistics for every time step t. The state is `[h, c, step]`:
    `return_state=True` returns these three; `step` (shape `(batch, 1)`) counts the real
    steps each sample has seen, and is what a stateful layer carries across batches.
    To start from a noisy `h₀` (the paper's fix for zero variance at t = 0), pass
    `initial_state=[h0, zeros, zeros]`.

    Args:
        units: positive integer, dimensionality of the output space.
        unit_forget_bias: if `True` (default), the forget gate's bias starts at 1.
{_BN_ARGS_DOC}
    Example:

    >>> import numpy as np, keras
    >>> from keras_recnorm import BatchNormLSTMCell
    >>> layer = keras.layers.RNN(BatchNormLSTMCell(8, max_timesteps=5), return_state=True)
    >>> output, h, c, step = layer(np.ones((2, 5, 3), "float32"))
    >>> output.shape, step.shape
    (TensorShape([2, 8]), TensorShape([2, 1]))
    """

    normalized_terms = ("input", "recurrent", "cell")
    sequence_layer_name = "BatchNormLSTM"

    def __init__(self, units, max_timesteps, unit_forget_bias=True, **kwargs):
        super().__init__(units, max_timesteps, **kwargs)
        self.unit_forget_bias = unit_forget_bias
        self.state_size = [units, units, 1]

    def build(self, input_shape):
        self.add_lstm_weights(input_shape)
        width = 4 * self.units
        self.add_moving_statistics("input", width)
        self.add_moving_statistics("recurrent", width)
        self.add_moving_statistics("cell", self.units)

    def step(self, projected, states, training=False, mask=None):
        """One LSTM step from the projected input; returns `h'`, the new states and, in
        training, the batch statistics used: `{term: (mean, variance)}`."""
        h, c, steps = states[0], states[1], states[2]
        population = self.step_population(step_slots(steps[:, 0], self.max_timesteps), training)
        (h_new, c_new), _, statistics = self.step_forward(
            self.step_weights(), projected, self.dropped_state(h, training), (h, c), mask, population
        )
        moments = {}
        if population is None:
            moments = {"recurrent": statistics[:2], "cell": statistics[2:]}
        return h_new, [h_new, c_new, steps + 1], moments

    def step_weights(self):
        """The weights `step_forward` uses, in its order."""
        return (self.recurrent_kernel, self.recurrent_gamma, self.cell_gamma, self.cell_beta)

    def step_forward(self, weights, projected, h, states, mask=None, population=None):
        """One step from the projected input `BN_t(x·kernel) + bias` and the
        (dropped-out) state `h`: the recurrent term, the gates and the normalized cell.
        The one step function of this cell, used by the cell and by `BatchNormLSTM`'s
        loop. Batch statistics over the samples whose `mask (B, 1)` is 1, or
        `population` statistics (see `step_population`).

        Returns `((h', c'), residuals, statistics)`: what `step_backward` needs, and the
        mean and variance of the recurrent term and of the cell state.
        """
        recurrent_kernel, recurrent_gamma, cell_gamma, cell_beta = weights
        c = states[1]
        recurrent_population, cell_population = population or (None, None)
        recurrent_hat, recurrent_rstd, recurrent_mean, recurrent_variance = self.standardize(
            ops.matmul(h, recurrent_kernel), mask, recurrent_population
        )
        z = projected + recurrent_gamma * recurrent_hat
        gates, c_new = self.lstm_gates(z, c)
        cell_hat, cell_rstd, cell_mean, cell_variance = self.standardize(c_new, mask, cell_population)
        h_new, cell_output = self.lstm_output(gates, cell_gamma * cell_hat + cell_beta)
        residuals = (recurrent_hat, recurrent_rstd, gates, cell_hat, cell_rstd, cell_output)
        return (h_new, c_new), residuals, (recurrent_mean, recurrent_variance, cell_mean, cell_variance)

    def step_backward(self, weights, residuals, h, states, mask, d_new_states):
        """The derivative of `step_forward` with batch statistics (sigmoid gates, tanh):
        from the gradients of `h'` and `c'`, those of the projected input, `h`, `c` and
        the weights. The statistics depend on every counted sample: so does the gradient."""
        recurrent_kernel, recurrent_gamma, cell_gamma, _ = weights
        (dh_new, dc_new), c = d_new_states, states[1]
        recurrent_hat, recurrent_rstd, gates, cell_hat, cell_rstd, cell_output = residuals
        counted = ops.ones_like(h[:, :1]) if mask is None else mask
        d_o, d_normalized_cell = lstm_output_backward(dh_new, gates, cell_output)
        dc = dc_new + batch_standardize_backward(
            d_normalized_cell * cell_gamma, cell_hat, cell_rstd, counted
        )
        dz, dc_prev = lstm_gates_backward(dc, d_o, gates, c)
        d_recurrent = batch_standardize_backward(
            dz * recurrent_gamma, recurrent_hat, recurrent_rstd, counted
        )
        d_weights = (
            ops.matmul(ops.transpose(h), d_recurrent),
            ops.sum(dz * recurrent_hat, axis=0),
            ops.sum(d_normalized_cell * cell_hat, axis=0),
            ops.sum(d_normalized_cell, axis=0),
        )
        dh = ops.matmul(d_recurrent, ops.transpose(recurrent_kernel))
        return dz, dh, (None, dc_prev), d_weights

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}


@register
class BatchNormGRUCell(BatchNormCell):
    __doc__ = f"""GRU cell with recurrent batch normalization (Cooijmans et al. 2016), in
    Keras's `reset_after=True` layout (gate order z, r, h):

    ```
    px, ph = BN_t(x·kernel; input_gamma), BN_t(h·recurrent_kernel; recurrent_gamma)
    [z̃, r̃] = px[:2U] + ph[:2U] + bias[:2U]
    h̃      = tanh(px[2U:] + bias[2U:] + r·ph[2U:])
    h'     = z·h + (1 − z)·h̃
    ```
    The state is `[h, step]` (see `BatchNormLSTMCell` for the step counter).

    Args:
        units: positive integer, dimensionality of the output space.
        reset_after: must be `True`; accepted for compatibility with `GRUCell`.
{_BN_ARGS_DOC}
    Example:

    >>> import numpy as np, keras
    >>> from keras_recnorm import BatchNormGRUCell
    >>> keras.layers.RNN(BatchNormGRUCell(8, max_timesteps=5))(np.ones((2, 5, 3), "float32")).shape
    TensorShape([2, 8])
    """

    normalized_terms = ("input", "recurrent")
    sequence_layer_name = "BatchNormGRU"

    def __init__(self, units, max_timesteps, reset_after=True, **kwargs):
        super().__init__(units, max_timesteps, **kwargs)
        if reset_after is not True:
            raise ValueError(
                "Received an invalid value for argument `reset_after`, expected True "
                f"(the only form the batch-normalized GRU defines), got {reset_after!r}."
            )
        self.reset_after = True
        self.state_size = [units, 1]

    def build(self, input_shape):
        width = 3 * self.units
        self.add_kernels(input_shape, width)
        self.add_bias(width)
        self.input_gamma = self.add_gamma("input_gamma", width)
        self.recurrent_gamma = self.add_gamma("recurrent_gamma", width)
        self.add_moving_statistics("input", width)
        self.add_moving_statistics("recurrent", width)

    def step(self, projected, states, training=False, mask=None):
        """One GRU step from the projected input; returns `h'`, the new states and, in
        training, the batch statistics used: `{term: (mean, variance)}`."""
        h, steps = states[0], states[1]
        population = self.step_population(step_slots(steps[:, 0], self.max_timesteps), training)
        recurrent_hat, _, mean, variance = self.standardize(
            ops.matmul(self.dropped_state(h, training), self.recurrent_kernel),
            mask,
            None if population is None else population[0],
        )
        h_new = self.gru_update(projected, self.recurrent_gamma * recurrent_hat, h)
        moments = {"recurrent": (mean, variance)} if population is None else {}
        return h_new, [h_new, steps + 1], moments

    def get_config(self):
        return {**super().get_config(), "reset_after": self.reset_after}


class _BatchNormSequence(NormalizedRNN):
    """The BN whole-sequence layers.

    Before the loop: `x·kernel` for all steps, its per-step batch statistics (over the
    samples that are not padding at each step) and normalization. In the loop: the
    recurrent term and the cell state, normalized with statistics over the unpadded
    samples of that step. After the loop: one update of the population statistics from
    the unnormalized terms the loop returns, so no slot is moved twice and no variable is
    written inside the loop (which JAX forbids).
    """

    def __init__(self, units, max_timesteps, **kwargs):
        super().__init__(units, max_timesteps=max_timesteps, **kwargs)

    def inner_loop(self, sequences, initial_state, mask, training=False):
        cell = self.cell
        if not cell.uses_batch_statistics(training):
            # Population statistics: nothing to gather, and every sample reads the slots
            # of its own real steps in Keras's loop too (the step counter is a state, held
            # at padded steps). That loop, projecting each step, measured faster.
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
        first_step = ops.cast(initial_state[-1][:, 0], "float32")
        timesteps = ops.cast(ops.arange(ops.shape(sequences)[1]), "float32")
        input_slots = step_slots(first_step[:, None] + timesteps[None, :], cell.max_timesteps)
        projected, input_moments = cell.input_projection(sequences, input_slots, sample_mask, training)
        if self.uses_fused_loop():
            hs, (_, c_last), statistics = self.fused_loop(projected, initial_state[:2], mask, training)
            last_output, outputs = hs[:, -1], hs
            real_steps = ops.cast(ops.shape(hs)[1], "float32")
            if mask is not None:
                real_steps = ops.sum(sample_mask, axis=1, keepdims=True)
            counter = initial_state[-1] + ops.cast(real_steps, initial_state[-1].dtype)
            states = [last_output, c_last, counter]
        else:
            last_output, outputs, states, statistics = self._generic_loop(
                projected, initial_state, mask, sample_mask, training
            )
        count = input_moments[2]
        moments = {"input": input_moments}
        for k, term in enumerate(cell.normalized_terms[1:]):
            moments[term] = (statistics[2 * k], statistics[2 * k + 1], count)
        steps = ops.arange(ops.shape(sequences)[1], dtype="int32") + ops.cast(
            ops.max(first_step, initial=0.0), "int32"
        )
        cell.update_statistics(moments, step_slots(steps, cell.max_timesteps))
        if original_mask is not None:
            last_output, outputs = self._outputs_in_input_order(states[0], outputs, original_mask)
        return last_output, outputs, states

    def _generic_loop(self, projected, initial_state, mask, sample_mask, training):
        """Keras's loop over `cell.step` in training, for what the fused loop doesn't run
        (another backend, the GRU, other activations or dtypes, `unroll`). Returns
        `(last_output, outputs, states, statistics)`, statistics as the fused loop's: per
        term, the mean and variance of every step, `(T, F)` each."""
        cell = self.cell
        step_inputs = projected
        if mask is not None:
            # The step needs each sample's mask for its statistics: it travels as one
            # more input column, as the loop shows the step nothing else.
            step_mask = ops.cast(ops.expand_dims(sample_mask, -1), projected.dtype)
            step_inputs = ops.concatenate([projected, step_mask], axis=-1)
        units = cell.units
        # One mean and one variance per term after the input's.
        widths = []
        for term in cell.normalized_terms[1:]:
            widths += [cell.moving(term)[0].shape[-1]] * 2
        # The step's batch statistics ride along with h (one copy per sample) in the
        # step's output. They ride in the first state too: JAX's masked loop reuses that
        # state as the output of a masked step, so both must have the same width.
        first = initial_state[0]
        padding = ops.zeros((ops.shape(first)[0], sum(widths)), dtype=first.dtype)
        initial_state = [ops.concatenate([first, padding], -1)] + list(initial_state[1:])

        def step(inputs_t, states):
            if mask is None:
                projected_t, mask_t = inputs_t, None
            else:
                projected_t, mask_t = inputs_t[:, :-1], inputs_t[:, -1:]
            states = [states[0][:, :units]] + list(states[1:])
            h, new_states, moments = cell.step(projected_t, states, training=training, mask=mask_t)
            batch = ops.shape(h)[0]
            riders = [
                ops.stop_gradient(ops.broadcast_to(ops.cast(value, h.dtype), (batch, value.shape[-1])))
                for term in cell.normalized_terms[1:]
                for value in moments[term]
            ]
            h = ops.concatenate([h] + riders, -1)
            return h, [h] + list(new_states[1:])

        last_output, outputs, states = self.run_loop(step, step_inputs, initial_state, mask, True)
        # Every sample that is real at a step carries that step's statistics: their mean
        # over those samples (0 where there are none, e.g. an empty batch).
        real = ops.ones_like(outputs[..., 0]) if mask is None else sample_mask
        dtype = statistics_dtype(outputs)
        real = ops.expand_dims(ops.cast(real, dtype), -1)
        riders = ops.cast(outputs[..., units:], dtype)
        riders = ops.sum(riders * real, axis=0) / ops.maximum(ops.sum(real, axis=0), 1.0)
        statistics, offset = (), 0
        for width in widths:
            statistics += (riders[:, offset : offset + width],)
            offset += width
        states = [states[0][:, :units]] + list(states[1:])
        return last_output[..., :units], outputs[..., :units], states, statistics

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


_BN_LAYER_DOC = """
    A `keras.layers.RNN` over a `{cell}` that it owns, constructed like
    `keras.layers.{keras_layer}`: every argument of `{cell}` (`units` and
    `max_timesteps` first), plus `return_sequences`, `return_state`, `go_backwards`,
    `stateful`, `unroll` and `zero_output_for_mask`. Same weights (same names) and, for
    unpadded input, the same outputs as `keras.layers.RNN({cell}(...))`. Beyond the cell:

    - **padding-aware statistics**: at every step, the batch mean and variance are taken
      over the samples that are not padding at that step (mask from
      `Embedding(mask_zero=True)`, `Masking` or `mask=`); a step where every sample is
      padding changes no statistic;
    - **one update per batch**: population statistics move once per batch, after the
      loop, on every backend (JAX included) and with no double move of slot 0;
    - **speed** in training: `x·kernel` and its normalization are computed for all
      steps before the loop, and (LSTM on TensorFlow, default activations) the loop runs
      the cell's step with its hand-written derivative (`keras_recnorm.recurrence`).
      At inference it runs as `RNN({cell})`.

    Steps are counted per sample, over its real steps only: the statistics of slot t come
    from every sample's t-th real step, and at inference each sample reads the slots of
    its own steps, so left- or right-padded and backward sequences are all normalized as
    their unpadded selves would be.
    `return_state=True` also returns the step counter (last state).

    Call arguments:
        sequences: a 3D tensor `(batch, timesteps, features)`.
        initial_state: optional list of initial states (`[h, c, step]` for the LSTM,
            `[h, step]` for the GRU); e.g. a noisy `h` for the paper's sequential MNIST.
        mask: optional boolean `(batch, timesteps)`.
        training: batch statistics and statistics updates (`fit`), or population
            statistics (`predict`, `evaluate`, export).

    Example:

    >>> import numpy as np
    >>> from keras_recnorm import {name}
    >>> {name}(16, max_timesteps=10)(np.ones((4, 10, 3), "float32")).shape
    TensorShape([4, 16])
"""


@register
class BatchNormLSTM(_BatchNormSequence):
    __doc__ = (
        "Batch-normalized LSTM layer with per-time-step statistics (Cooijmans et al. 2016).\n"
        + _BN_LAYER_DOC.format(cell="BatchNormLSTMCell", keras_layer="LSTM", name="BatchNormLSTM")
    )
    cell_class = BatchNormLSTMCell


@register
class BatchNormGRU(_BatchNormSequence):
    __doc__ = (
        "Batch-normalized GRU layer with per-time-step statistics (Cooijmans et al. 2016).\n"
        + _BN_LAYER_DOC.format(cell="BatchNormGRUCell", keras_layer="GRU", name="BatchNormGRU")
    )
    cell_class = BatchNormGRUCell


class _ExactAverages:
    """Collects every batch statistic per (cell, term, slot) while
    `recompute_population_statistics` runs the model; then writes their averages.

    Keras calls a cell inside `keras.layers.RNN` on the first step once or twice more
    before its loop (to infer shapes; to prepare the dropout masks of stacked cells), and
    with `go_backwards` on the wrong step. Only a batch's last `timesteps` one-step
    statistics of a cell are its real steps: the rest is dropped at the end of the batch.
    """

    def __init__(self):
        self.totals = {}
        self.pending = {}

    def add(self, cell, term, slots, mean, variance, count):
        self.pending.setdefault((id(cell), term), (cell, []))[1].append(
            (np.asarray(slots), np.asarray(mean), np.asarray(variance), np.asarray(count))
        )

    def end_batch(self, timesteps):
        for key, (cell, contributions) in self.pending.items():
            single_steps = [c for c in contributions if c[0].shape[0] == 1]
            if single_steps:
                contributions = single_steps[len(single_steps) - timesteps :]
            for slots, mean, variance, count in contributions:
                self._accumulate(key, cell, slots, mean, variance, count)
        self.pending = {}

    def _accumulate(self, key, cell, slots, mean, variance, count):
        width = mean.shape[-1]
        sums = self.totals.setdefault(
            key,
            [cell, np.zeros((cell.max_timesteps, width)), np.zeros((cell.max_timesteps, width)),
             np.zeros((cell.max_timesteps, 1))],
        )
        for step in np.nonzero(count > 0)[0]:
            slot = slots[step]
            sums[1][slot] += mean[step]
            sums[2][slot] += variance[step]
            sums[3][slot] += 1

    def write(self):
        for (_, term), (cell, mean_sum, variance_sum, batches) in self.totals.items():
            moving_mean, moving_variance = cell.moving(term)
            reached = batches > 0
            safe = np.maximum(batches, 1)
            mean = np.where(reached, mean_sum / safe, np.asarray(moving_mean))
            variance = np.where(reached, variance_sum / safe, np.asarray(moving_variance))
            moving_mean.assign(mean.astype("float32"))
            moving_variance.assign(variance.astype("float32"))


def _first_array(inputs):
    while isinstance(inputs, (tuple, list, dict)):
        inputs = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs[0]
    return inputs


def recompute_population_statistics(model, dataset, steps=None, verbose=1):
    """Sets every batch-normalized cell's population statistics to exact averages.

    The paper's alternative to moving averages (Cooijmans et al. 2016, sec. 4): run the
    model in training mode over `steps` batches, and set each slot's population mean and
    variance to the average of the batch statistics of that step, counting per slot only
    the batches that reached it (slots that no batch reached are reset to their
    initializers). Trainable weights are left untouched; dropout is active while the
    statistics are gathered, as at training time. Shows a progress bar.

    Runs eagerly, so it works with cells in `keras.layers.RNN` on TensorFlow and with the
    whole-sequence layers on every backend.

    Args:
        model: a Keras model (or layer) containing `BatchNormLSTMCell`/`BatchNormGRUCell`
            cells or `BatchNormLSTM`/`BatchNormGRU` layers, at any depth.
        dataset: an iterable of batches: `x`, or `(x, y)` / `(x, y, sample_weight)`
            tuples, e.g. a `tf.data.Dataset`.
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
    cells = [layer for layer in model._flatten_layers() if isinstance(layer, BatchNormCell)]
    if not cells:
        raise ValueError(
            "recompute_population_statistics: the model has no batch-normalized cell or layer "
            "(BatchNormLSTMCell, BatchNormGRUCell, BatchNormLSTM, BatchNormGRU)."
        )
    if steps is not None:
        check_positive_int("steps", steps)
    averages = _ExactAverages()
    for cell in cells:
        for term in cell.normalized_terms:
            moving_mean, moving_variance = cell.moving(term)
            moving_mean.assign(cell.moving_mean_initializer(moving_mean.shape))
            moving_variance.assign(cell.moving_variance_initializer(moving_variance.shape))
        cell.statistics_accumulator = averages
    progress = keras.utils.Progbar(steps, unit_name="batch", verbose=verbose)
    used = 0
    try:
        for batch in dataset:
            if steps is not None and used >= steps:
                break
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(inputs, training=True)
            averages.end_batch(timesteps=keras.ops.shape(_first_array(inputs))[1])
            used += 1
            progress.update(used)
    finally:
        for cell in cells:
            cell.statistics_accumulator = None
    if used == 0:
        raise ValueError("recompute_population_statistics: `dataset` gave no batch.")
    averages.write()
    return used
