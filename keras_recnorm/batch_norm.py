"""Recurrent batch normalization (Cooijmans et al. 2016, arXiv:1603.09025).

Batch statistics are kept separately for every time step, for the input term, the
recurrent term and (LSTM) the cell state. Inference uses population statistics of slot
`min(t, max_timesteps - 1)`. Equations and the rules for updating the statistics:
DESIGN.md.
"""

import threading

import keras
import numpy as np
from keras import initializers, ops

from keras_recnorm.base import (
    GatedCell,
    NormalizedCell,
    NormalizedRNN,
    check_numeric_inputs,
    check_positive_int,
    check_unit_interval,
)
from keras_recnorm.compat import all_layers, keep_input_dtypes
from keras_recnorm.normalization import (
    batch_moments,
    batch_standardize,
    batch_norm_backward,
    cross_replica_moments,
    cross_replica_shares,
    merge_moments,
    merge_moments_by_slot,
    moments_from_variance,
    moments_variance,
    moving_average_update,
    replicas_in_sync,
    slot_shares,
    standardize_with,
    statistics_dtype,
    step_slots,
)
from keras_recnorm.recurrence import keep_padded
from keras_recnorm.steps import (
    BatchNormGRUResiduals,
    BatchNormLSTMResiduals,
    BatchNormSimpleRNNResiduals,
    BatchNormWeights,
    LSTMWeights,
    gru_gates,
    gru_gates_backward,
    lstm_gates,
    lstm_gates_backward,
    lstm_gates_one_sigmoid,
    lstm_output,
    lstm_output_backward,
)

register = keras.saving.register_keras_serializable(package="keras_recnorm")

_JAX_TRAINING_ERROR = (
    "{name}: a batch-normalized cell can't update its population statistics inside "
    "keras.layers.RNN on the JAX backend (JAX forbids variable updates inside the loop); "
    "use the whole-sequence layer keras_recnorm.{layer} instead, which updates them after "
    "the loop."
)

_REPLICAS_TRAINING_ERROR = (
    "{name}: a batch-normalized cell inside keras.layers.RNN can't share its statistics "
    "across the {replicas} replicas of a tf.distribute strategy (each replica would keep its "
    "own population statistics); use the whole-sequence layer keras_recnorm.{layer} instead."
)


class BatchNormCell(NormalizedCell):
    """What the batch-normalized cells share: `max_timesteps` slots of population
    statistics per normalized term, the step counter state, the update rule, and the
    batch-normalized terms of the step (`batch_norm`, `input_term`, `recurrent_term`).

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
        synchronized=False,
        **kwargs,
    ):
        # The paper: γ = 0.1 keeps tanh/sigmoid out of saturation and gradients alive.
        if gamma_initializer is None:
            gamma_initializer = initializers.Constant(0.1)
        super().__init__(units, gamma_initializer=gamma_initializer, **kwargs)
        self.max_timesteps = check_positive_int("max_timesteps", max_timesteps)
        check_unit_interval("momentum", momentum)
        self.momentum = float(momentum)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        self.synchronized = bool(synchronized)
        # When set (by `recompute_population_statistics`), updates accumulate exact sums
        # here instead of moving the averages.
        self.statistics_accumulator = None
        # Keras would cast every float argument, the step counter included, to the
        # compute dtype (a bfloat16 counter stops at 256): `call` casts all but the
        # counter itself.
        keep_input_dtypes(self)

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

    def add_input_and_recurrent_weights(self, input_shape, width):
        """The weights of a cell with two batch-normalized terms (`BatchNormWeights`), in
        their saved order: `kernel`, `recurrent_kernel`, `bias`, `input_gamma`,
        `recurrent_gamma`, then the population statistics of the input and the recurrent
        term."""
        self.add_kernels(input_shape, width)
        self.add_bias(width)
        self.input_gamma = self.add_gamma("input_gamma", width)
        self.recurrent_gamma = self.add_gamma("recurrent_gamma", width)
        self.add_moving_statistics("input", width)
        self.add_moving_statistics("recurrent", width)

    def check_counter_dtype(self, steps):
        """Inside `keras.layers.RNN` the counter is a state in the compute dtype, where it
        stops counting at 256 (bfloat16) or 2048 (float16): then the last slot must be
        reached before, or steps past it would read wrong slots."""
        dtype = keras.backend.standardize_dtype(steps.dtype)
        exact = {"bfloat16": 256, "float16": 2048}.get(dtype)
        if exact is not None and self.max_timesteps > exact + 1:
            raise ValueError(
                f"{type(self).__name__}(max_timesteps={self.max_timesteps}) inside "
                f"keras.layers.RNN under a {dtype} policy: the RNN carries the step counter "
                f"in {dtype}, which counts only to {exact}; use keras_recnorm."
                f"{self.sequence_layer_name} (its counter stays float32) or max_timesteps <= "
                f"{exact + 1}."
            )

    def moving(self, term):
        return getattr(self, f"{term}_moving_mean"), getattr(self, f"{term}_moving_variance")

    def uses_batch_statistics(self, training):
        # As keras.layers.BatchNormalization: a frozen layer always runs in inference mode.
        # `recompute_population_statistics` runs the model in inference mode (dropout off,
        # other layers as at inference) and has the cells gather batch statistics.
        gathering = self.statistics_accumulator is not None
        return (bool(training) or gathering) and self.trainable

    def standardize(self, x, mask, population):
        """`(x̂, rstd, mean, variance)` of one step's term `x (B, F)`: with the batch's
        statistics over the samples whose `mask (B, 1)` is 1 (all, for `None`) when
        `population` is `None`, else with `population = (mean, variance)`, broadcasting
        against `x`."""
        if population is None:
            return batch_standardize(x, self.epsilon, mask)
        mean, variance = population
        return (*standardize_with(x, mean, variance, self.epsilon), mean, variance)

    def batch_norm(self, a, gamma, beta, mask, population):
        """`BN_t(a; γ, β) = γ·x̂ + β`, the expression of every batch-normalized term (β
        `None`: no shift), with the statistics `standardize` takes; in float32 under half
        precision, cast back. Returns `(BN_t(a), x̂, rstd, (mean, variance))`."""
        dtype = statistics_dtype(a)
        x_hat, rstd, mean, variance = self.standardize(ops.cast(a, dtype), mask, population)
        normalized = ops.cast(gamma, dtype) * x_hat
        if beta is not None:
            normalized = normalized + ops.cast(beta, dtype)
        return ops.cast(normalized, a.dtype), x_hat, rstd, (mean, variance)

    def input_term(self, weights, x, mask, population):
        """The input term `BN_t(x·kernel; input_gamma) + bias` of one step, as every step
        of this package computes it (`step_forward`): `batch_norm` of `x·kernel`. Where
        the loop applied a part of it before the loop, that part's weights are `None`
        (`keras_recnorm.steps`, "Hoisted input"): `kernel` (`x` is `x·kernel`), or
        `kernel`, `input_gamma` and `bias` (`x` is the input term). Returns `(term, x̂,
        rstd, statistics)`, `statistics` `(mean, variance)`, or `()` (and x̂ and rstd
        `None`) for an input term given."""
        if weights.input_gamma is None:
            return x, None, None, ()
        raw = x if weights.kernel is None else ops.matmul(x, weights.kernel)
        return self.batch_norm(raw, weights.input_gamma, weights.bias, mask, population)

    def recurrent_term(self, weights, h_in, mask, population):
        """`BN_t(h·recurrent_kernel; recurrent_gamma)`; returns as `batch_norm`."""
        raw = ops.matmul(h_in, weights.recurrent_kernel)
        return self.batch_norm(raw, weights.recurrent_gamma, None, mask, population)

    @staticmethod
    def input_term_backward(weights, residuals, d_term, counted):
        """Backward of `input_term` in the training loop's form (`x` is `x·kernel`, or the
        input term): `(dx, d_input_gamma, d_bias)`, `None` for the weights that are."""
        if weights.input_gamma is None:
            return d_term, None, None
        dx, d_gamma, d_beta = batch_norm_backward(
            d_term, weights.input_gamma, residuals.input_hat, residuals.input_rstd, counted
        )
        return dx, d_gamma, None if weights.bias is None else d_beta

    @staticmethod
    def recurrent_term_backward(weights, residuals, d_term, h_in, counted):
        """Backward of `recurrent_term`: `(d_recurrent_kernel, d_recurrent_gamma, dh_in)`."""
        d_raw, d_gamma, _ = batch_norm_backward(
            d_term, weights.recurrent_gamma, residuals.recurrent_hat, residuals.recurrent_rstd, counted
        )
        d_kernel = ops.matmul(ops.transpose(h_in), d_raw)
        return d_kernel, d_gamma, ops.matmul(d_raw, ops.transpose(weights.recurrent_kernel))

    def input_sequence_term(self, weights, sequences, mask):
        """The input term of every step of `sequences (B, T, D)` at once, with each step's
        batch statistics over the samples whose `mask (B, T)` is 1 (all, for `None`),
        the global batch's under a `tf.distribute` strategy with `synchronized`: for the
        loops that can't take them in the step. Returns the term `(B, T, F)` and the
        per-step moments `(count, mean, M2)`."""
        raw = ops.matmul(sequences, weights.kernel)
        moments = batch_moments(raw, mask)
        if self.synchronized:
            moments = cross_replica_moments(moments)
        statistics = (moments[1], moments_variance(moments))
        term, _, _, _ = self.input_term(weights._replace(kernel=None), raw, None, statistics)
        return term, moments

    def population(self, slots):
        """The step's `population`: per normalized term, the population statistics
        `(mean, variance)` of each sample's slot, `slots (B,)`."""
        return tuple(
            tuple(ops.take(v, slots, axis=0) for v in self.moving(term))
            for term in self.normalized_terms
        )

    def update_statistics(self, moments, slots):
        """Moves the population statistics of every term towards this batch's
        (`moving_average_update`: the batch's moments merged into the old statistics).

        The one place where a batch's statistics reach the population statistics, after
        the loop; under a `tf.distribute` strategy the moments are all-reduced here first
        (`cross_replica_moments`), so that every replica applies the same update.

        Args:
            moments: dict term -> `(count, mean, M2)` of the batch statistics the term
                was normalized with, `(K,)`, `(K, F)`, `(K, F)` for K steps.
            slots: int `(K,)`, the slot of each step; or `(K, max_timesteps)`, the share
                of each step's samples at each slot (`slot_shares`: samples at
                different steps of their own).
        """
        # Under a tf.distribute strategy every replica gets the global batch's moments
        # (a synchronized input term has them already), so each applies the same update
        # to its own mirrored copy and the copies stay identical.
        if len(slots.shape) == 2:  # shares: from the local counts, before they are global
            slots = cross_replica_shares(slots, moments[self.normalized_terms[-1]][0])
        moments = {
            term: m if (term == "input" and self.synchronized) else cross_replica_moments(m)
            for term, m in moments.items()
        }
        if self.statistics_accumulator is not None:
            self.statistics_accumulator.add(self, moments, slots)
            return
        for term, term_moments in moments.items():
            moving_mean, moving_variance = self.moving(term)
            mean, variance = moving_average_update(
                moving_mean, moving_variance, term_moments, slots, self.momentum
            )
            moving_mean.assign(mean)
            moving_variance.assign(variance)

    def call(self, inputs, states, training=False):
        check_numeric_inputs(self, inputs)
        if len(states) != len(self.state_size):
            raise ValueError(
                f"{type(self).__name__} expects the states {self.state_names} (the step "
                f"counter last, e.g. zeros of shape (batch, 1)), got {len(states)} states; "
                f"keras_recnorm.{self.sequence_layer_name} also takes them without the counter."
            )
        inputs = ops.cast(inputs, self.compute_dtype)
        states = [ops.cast(s, self.compute_dtype) for s in states[:-1]] + [states[-1]]
        update = self.uses_batch_statistics(training)
        if update and keras.backend.backend() == "jax":
            raise RuntimeError(
                _JAX_TRAINING_ERROR.format(name=type(self).__name__, layer=self.sequence_layer_name)
            )
        if update and replicas_in_sync() > 1:
            # The update runs inside Keras's tf.while_loop, where no all-reduce can.
            raise RuntimeError(
                _REPLICAS_TRAINING_ERROR.format(
                    name=type(self).__name__,
                    replicas=replicas_in_sync(),
                    layer=self.sequence_layer_name,
                )
            )
        steps = states[-1]
        self.check_counter_dtype(steps)
        slots = step_slots(steps[:, 0], self.max_timesteps)
        new_states, statistics = self.run_step(
            self.step_weights(),
            self.dropped_inputs(inputs, training),
            states[:-1],
            training,
            population=None if update else self.population(slots),
        )
        if update:
            # The batch's step: every sample of an unmasked batch is at the same step.
            count = ops.sum(ops.ones_like(ops.cast(inputs[:, :1], statistics[0].dtype)), axis=0)
            moments = {
                term: moments_from_variance(count, mean[None], variance[None])
                for term, mean, variance in zip(self.normalized_terms, statistics[::2], statistics[1::2])
            }
            # The slot of the furthest counter: masked samples' counters are held, but
            # the cell, which never sees the mask, has them in its statistics anyway.
            slot = ops.reshape(ops.max(slots, initial=0), (1,))
            if self.statistics_accumulator is not None:
                # The counter tells Keras's extra calls before the loop from real steps.
                self.statistics_accumulator.add(self, moments, slot, step=ops.max(steps))
            else:
                self.update_statistics(moments, slot)
        return new_states[0], new_states + [steps + 1]

    def get_config(self):
        return {
            **super().get_config(),
            "max_timesteps": self.max_timesteps,
            "momentum": self.momentum,
            "synchronized": self.synchronized,
            "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
            "moving_variance_initializer": initializers.serialize(
                self.moving_variance_initializer
            ),
        }



@register
class BatchNormLSTMCell(BatchNormCell, GatedCell):
    """LSTM cell with recurrent batch normalization (Cooijmans et al. 2016).

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
        max_timesteps: positive integer T_max, the number of per-step statistics slots.
            Step t uses slot `min(t, max_timesteps - 1)`: longer sequences work and
            share the last slot.
        momentum: momentum of the moving averages of the statistics, in [0, 1)
            (default 0.95, the reference implementation's update rate 0.05). A step
            that all N samples of a batch reach moves its slot's mean by
            `1 − momentum`; one that k of them reach, by `k / (k + N·momentum /
            (1 − momentum))` (every sample weighs the same), and the variance moves to
            the merged variance of old and new samples (docs/batch_norm_statistics.md).
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
        kernel_regularizer, recurrent_regularizer, bias_regularizer, gamma_regularizer, beta_regularizer, kernel_constraint, recurrent_constraint, bias_constraint, gamma_constraint, beta_constraint: as in Keras.
        dropout: fraction of the input units to drop, in [0, 1). One mask per sequence.
        recurrent_dropout: fraction of the recurrent state's units to drop, in [0, 1).
        epsilon: added to the variance inside the square root (default 1e-5).
        seed: random seed of the dropout masks.
        synchronized: as in `keras.layers.BatchNormalization`. Under a
            `tf.distribute` strategy with several replicas, `True` normalizes the input
            term in training with the global batch's statistics (all-reduced before the
            loop); the recurrent and cell terms, computed inside the loop, always use each
            replica's own samples. The population statistics of `BatchNormLSTM` and
            `BatchNormGRU` are the global batch's either way; a cell inside
            `keras.layers.RNN` can't train under several replicas (it raises, pointing
            to those layers). No effect on JAX `keras.distribution` (statistics are
            global by construction) or without a strategy. See
            docs/distributed_training.md.

    Call arguments:
        inputs: a 2D tensor `(batch, features)`, the input at one time step.
        states: the previous states (see the class description); the last one is the
            step counter.
        training: `True` uses the batch's statistics at this step and updates the
            population statistics (as `fit` does); `False` uses the population
            statistics (`predict`, `evaluate`, export). A cell with `trainable=False`
            always runs in inference mode.

    Returns:
        `(output, new_states)`: `h'` of shape `(batch, units)` and the list of the new
        states, the step counter last.

    Statistics updates inside `keras.layers.RNN`: the cell moves its population
    statistics in `call`, once per step. On the TensorFlow backend (and torch) the RNN
    loop calls the step once more before the loop, with the first step's inputs, to learn
    the output shapes; so with `unroll=False` the first slot of the batch (slot 0, or the
    carried step of a stateful layer) is updated twice per batch with the same batch
    statistics (its mean moves as an EMA of momentum² for that slot: the same estimate,
    reached faster).
    With `unroll=True` every slot moves once. Two more Keras calls of that kind: inside
    `StackedRNNCells` each cell is called once on the first step to prepare dropout masks
    (slot 0 moves once more), and with `go_backwards` the extra call gets the sequence's
    last input, not the first one the loop processes (slot 0 also moves once towards the
    statistics of that one-step sequence). `recompute_population_statistics` drops all
    of these; the whole-sequence layers never make them. On JAX, training the cell inside
    `keras.layers.RNN` raises an error: use the whole-sequence layer. Padded samples take
    part in the batch statistics of `keras.layers.RNN(cell)` (the cell never sees the
    mask); the whole-sequence layers leave them out.

    Example:

    >>> import numpy as np, keras
    >>> from keras_recnorm import BatchNormLSTMCell
    >>> layer = keras.layers.RNN(BatchNormLSTMCell(8, max_timesteps=5), return_state=True)
    >>> output, h, c, step = layer(np.ones((2, 5, 3), "float32"))
    >>> output.shape, step.shape
    (TensorShape([2, 8]), TensorShape([2, 1]))
    """

    weights_type = LSTMWeights
    normalized_terms = ("input", "recurrent", "cell")
    sequence_layer_name = "BatchNormLSTM"
    state_names = "[h, c, step]"

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

    def step_forward(self, weights, x, h_in, states, mask=None, population=None, forward_only=False):
        """One step (`keras_recnorm.steps`) from the (dropped-out) input `x`, `h_in` and
        the states `(h, c)`: the equations above. Batch statistics over the samples whose
        `mask (B, 1)` is 1, or, per normalized term, the `population` statistics given
        (`population`). `forward_only`: the gates from one sigmoid.

        Returns `((h', c'), BatchNormLSTMResiduals, statistics)`: the mean and variance of
        the input term (unless given), the recurrent term and the cell state.
        """
        input_population, recurrent_population, cell_population = population or (None,) * 3
        input_term, input_hat, input_rstd, input_statistics = self.input_term(
            weights, x, mask, input_population
        )
        recurrent_term, recurrent_hat, recurrent_rstd, recurrent_statistics = self.recurrent_term(
            weights, h_in, mask, recurrent_population
        )
        z = input_term + recurrent_term
        if forward_only:
            gates, c_new = lstm_gates_one_sigmoid(z, states[1])
        else:
            gates, c_new = lstm_gates(z, states[1], self.recurrent_activation, self.activation)
        normalized_cell, cell_hat, cell_rstd, cell_statistics = self.batch_norm(
            c_new, weights.cell_gamma, weights.cell_beta, mask, cell_population
        )
        h_new, cell_output = lstm_output(gates, normalized_cell, self.activation)
        residuals = BatchNormLSTMResiduals(
            input_hat, input_rstd, recurrent_hat, recurrent_rstd, gates, cell_hat, cell_rstd,
            cell_output,
        )
        return (h_new, c_new), residuals, (*input_statistics, *recurrent_statistics, *cell_statistics)

    def step_backward(self, weights, residuals, h_in, states, mask, d_new_states):
        """The derivative of `step_forward` with batch statistics (sigmoid gates, tanh), in
        the training loop's form (`keras_recnorm.steps`, "Hoisted input"): from the
        gradients of `h'` and `c'`, those of `x`, `h_in`, `c` and the weights. The
        statistics depend on every counted sample: so does the gradient."""
        (dh_new, dc_new), c, r = d_new_states, states[1], residuals
        counted = ops.ones_like(h_in[:, :1]) if mask is None else mask
        d_o, d_normalized_cell = lstm_output_backward(dh_new, r.gates, r.cell_output)
        d_cell, d_cell_gamma, d_cell_beta = batch_norm_backward(
            d_normalized_cell, weights.cell_gamma, r.cell_hat, r.cell_rstd, counted
        )
        dz, dc_prev = lstm_gates_backward(dc_new + d_cell, d_o, r.gates, c)
        d_recurrent_kernel, d_recurrent_gamma, dh_in = self.recurrent_term_backward(
            weights, r, dz, h_in, counted
        )
        dx, d_input_gamma, d_bias = self.input_term_backward(weights, r, dz, counted)
        d_weights = LSTMWeights(
            kernel=None,
            input_gamma=d_input_gamma,
            recurrent_kernel=d_recurrent_kernel,
            recurrent_gamma=d_recurrent_gamma,
            cell_gamma=d_cell_gamma,
            cell_beta=d_cell_beta,
            bias=d_bias,
        )
        return dx, dh_in, (None, dc_prev), d_weights

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}


@register
class BatchNormGRUCell(BatchNormCell, GatedCell):
    """GRU cell with recurrent batch normalization (Cooijmans et al. 2016), in
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
        max_timesteps: positive integer T_max, the number of per-step statistics slots.
            Step t uses slot `min(t, max_timesteps - 1)`: longer sequences work and
            share the last slot.
        momentum: momentum of the moving averages of the statistics, in [0, 1)
            (default 0.95, the reference implementation's update rate 0.05). A step
            that all N samples of a batch reach moves its slot's mean by
            `1 − momentum`; one that k of them reach, by `k / (k + N·momentum /
            (1 − momentum))` (every sample weighs the same), and the variance moves to
            the merged variance of old and new samples (docs/batch_norm_statistics.md).
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
        kernel_regularizer, recurrent_regularizer, bias_regularizer, gamma_regularizer, beta_regularizer, kernel_constraint, recurrent_constraint, bias_constraint, gamma_constraint, beta_constraint: as in Keras.
        dropout: fraction of the input units to drop, in [0, 1). One mask per sequence.
        recurrent_dropout: fraction of the recurrent state's units to drop, in [0, 1).
        epsilon: added to the variance inside the square root (default 1e-5).
        seed: random seed of the dropout masks.
        synchronized: as in `keras.layers.BatchNormalization`. Under a
            `tf.distribute` strategy with several replicas, `True` normalizes the input
            term in training with the global batch's statistics (all-reduced before the
            loop); the recurrent and cell terms, computed inside the loop, always use each
            replica's own samples. The population statistics of `BatchNormLSTM` and
            `BatchNormGRU` are the global batch's either way; a cell inside
            `keras.layers.RNN` can't train under several replicas (it raises, pointing
            to those layers). No effect on JAX `keras.distribution` (statistics are
            global by construction) or without a strategy. See
            docs/distributed_training.md.

    Call arguments:
        inputs: a 2D tensor `(batch, features)`, the input at one time step.
        states: the previous states (see the class description); the last one is the
            step counter.
        training: `True` uses the batch's statistics at this step and updates the
            population statistics (as `fit` does); `False` uses the population
            statistics (`predict`, `evaluate`, export). A cell with `trainable=False`
            always runs in inference mode.

    Returns:
        `(output, new_states)`: `h'` of shape `(batch, units)` and the list of the new
        states, the step counter last.

    Statistics updates inside `keras.layers.RNN`, and what Keras's extra calls of the
    first step do to slot 0: as for `BatchNormLSTMCell`. On JAX, training the cell inside
    `keras.layers.RNN` raises an error: use `BatchNormGRU`.

    Example:

    >>> import numpy as np, keras
    >>> from keras_recnorm import BatchNormGRUCell
    >>> keras.layers.RNN(BatchNormGRUCell(8, max_timesteps=5))(np.ones((2, 5, 3), "float32")).shape
    TensorShape([2, 8])
    """

    weights_type = BatchNormWeights
    normalized_terms = ("input", "recurrent")
    sequence_layer_name = "BatchNormGRU"
    state_names = "[h, step]"

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
        self.add_input_and_recurrent_weights(input_shape, 3 * self.units)

    def step_forward(self, weights, x, h_in, states, mask=None, population=None, forward_only=False):
        """One step (`keras_recnorm.steps`) from the (dropped-out) input `x`, `h_in` and
        the states `(h,)`: the equations above. Batch statistics over the samples whose
        `mask (B, 1)` is 1, or the `population` statistics given (see
        `BatchNormLSTMCell.step_forward`); `forward_only` changes nothing here.

        Returns `((h',), BatchNormGRUResiduals, statistics)`: the mean and variance of the
        input term (unless given) and of the recurrent term.
        """
        input_population, recurrent_population = population or (None, None)
        input_term, input_hat, input_rstd, input_statistics = self.input_term(
            weights, x, mask, input_population
        )
        recurrent_term, recurrent_hat, recurrent_rstd, recurrent_statistics = self.recurrent_term(
            weights, h_in, mask, recurrent_population
        )
        h_new, gates, candidate = gru_gates(
            input_term, recurrent_term, states[0], self.recurrent_activation, self.activation
        )
        residuals = BatchNormGRUResiduals(input_hat, input_rstd, recurrent_hat, recurrent_rstd, gates, candidate)
        return (h_new,), residuals, (*input_statistics, *recurrent_statistics)

    def step_backward(self, weights, residuals, h_in, states, mask, d_new_states):
        """The derivative of `step_forward` with batch statistics (sigmoid gates, tanh), in
        the training loop's form: from the gradient of `h'`, those of `x`, `h_in`, `h`
        (through the update gate) and the weights."""
        r, units2 = residuals, 2 * self.units
        counted = ops.ones_like(h_in[:, :1]) if mask is None else mask
        d_input_term, d_recurrent_term, dh = gru_gates_backward(
            d_new_states[0], r.gates, r.candidate,
            weights.recurrent_gamma[units2:] * r.recurrent_hat[..., units2:], states[0],
        )
        d_recurrent_kernel, d_recurrent_gamma, dh_in = self.recurrent_term_backward(
            weights, r, d_recurrent_term, h_in, counted
        )
        dx, d_input_gamma, d_bias = self.input_term_backward(weights, r, d_input_term, counted)
        d_weights = BatchNormWeights(None, d_input_gamma, d_recurrent_kernel, d_recurrent_gamma, d_bias)
        return dx, dh_in, (dh,), d_weights

    def get_config(self):
        return {**super().get_config(), "reset_after": self.reset_after}


@register
class BatchNormSimpleRNNCell(BatchNormCell):
    """Fully-connected RNN cell with recurrent batch normalization (Cooijmans et al. 2016):

    ```
    h' = activation(BN_t(x·kernel; input_gamma) + BN_t(h·recurrent_kernel; recurrent_gamma) + bias)
    ```
    with separate statistics for every time step t. The state is `[h, step]` (see
    `BatchNormLSTMCell` for the step counter).

    Args:
        units: positive integer, dimensionality of the output space.
        max_timesteps: positive integer T_max, the number of per-step statistics slots.
            Step t uses slot `min(t, max_timesteps - 1)`: longer sequences work and
            share the last slot.
        momentum: momentum of the moving averages of the statistics, in [0, 1)
            (default 0.95, the reference implementation's update rate 0.05). A step
            that all N samples of a batch reach moves its slot's mean by
            `1 − momentum`; one that k of them reach, by `k / (k + N·momentum /
            (1 − momentum))` (every sample weighs the same), and the variance moves to
            the merged variance of old and new samples (docs/batch_norm_statistics.md).
        activation: activation of the output (default `tanh`).
        use_bias: whether to add `bias`, the shift of the normalized terms.
        kernel_initializer, recurrent_initializer, bias_initializer: initializers of
            `kernel` (`glorot_uniform`), `recurrent_kernel` (`orthogonal`), `bias`.
        gamma_initializer: initializer of both γ; default `Constant(0.1)` (the paper:
            0.1 keeps the activation out of saturation).
        beta_initializer: accepted for a constructor like the other cells'; the terms'
            only shift is `bias`.
        moving_mean_initializer, moving_variance_initializer: initial population
            statistics (`zeros`, `ones`).
        kernel_regularizer, recurrent_regularizer, bias_regularizer, gamma_regularizer, beta_regularizer, kernel_constraint, recurrent_constraint, bias_constraint, gamma_constraint, beta_constraint: as in Keras.
        dropout: fraction of the input units to drop, in [0, 1). One mask per sequence.
        recurrent_dropout: fraction of the recurrent state's units to drop, in [0, 1).
        epsilon: added to the variance inside the square root (default 1e-5).
        seed: random seed of the dropout masks.
        synchronized: as in `keras.layers.BatchNormalization`. Under a
            `tf.distribute` strategy with several replicas, `True` normalizes the input
            term in training with the global batch's statistics (all-reduced before the
            loop); the recurrent and cell terms, computed inside the loop, always use each
            replica's own samples. The population statistics of the whole-sequence
            layers are the global batch's either way; a cell inside
            `keras.layers.RNN` can't train under several replicas (it raises, pointing
            to those layers). No effect on JAX `keras.distribution` (statistics are
            global by construction) or without a strategy. See
            docs/distributed_training.md.

    Call arguments:
        inputs: a 2D tensor `(batch, features)`, the input at one time step.
        states: the previous states `[h, step]`, the step counter last.
        training: `True` uses the batch's statistics at this step and updates the
            population statistics (as `fit` does); `False` uses the population
            statistics (`predict`, `evaluate`, export). A cell with `trainable=False`
            always runs in inference mode.

    Returns:
        `(output, new_states)`: `h'` of shape `(batch, units)` and the list of the new
        states, the step counter last.

    Statistics updates inside `keras.layers.RNN`, and what Keras's extra calls of the
    first step do to slot 0: as for `BatchNormLSTMCell`. On JAX, training the cell inside
    `keras.layers.RNN` raises an error: use `BatchNormSimpleRNN`.

    Example:

    >>> import numpy as np, keras
    >>> from keras_recnorm import BatchNormSimpleRNNCell
    >>> cell = BatchNormSimpleRNNCell(8, max_timesteps=5)
    >>> keras.layers.RNN(cell)(np.ones((2, 5, 3), "float32")).shape
    TensorShape([2, 8])
    """

    weights_type = BatchNormWeights
    normalized_terms = ("input", "recurrent")
    sequence_layer_name = "BatchNormSimpleRNN"
    state_names = "[h, step]"

    def __init__(self, units, max_timesteps, **kwargs):
        super().__init__(units, max_timesteps, **kwargs)
        self.state_size = [units, 1]

    def build(self, input_shape):
        self.add_input_and_recurrent_weights(input_shape, self.units)

    def step_forward(self, weights, x, h_in, states, mask=None, population=None, forward_only=False):
        """One step (`keras_recnorm.steps`) from the (dropped-out) input `x` and `h_in`:
        the equation above. Batch statistics over the samples whose `mask (B, 1)` is 1,
        or the `population` statistics given (see `BatchNormLSTMCell.step_forward`);
        `forward_only` changes nothing here.

        Returns `((h',), BatchNormSimpleRNNResiduals, statistics)`: the mean and variance
        of the input term (unless given) and of the recurrent term.
        """
        input_population, recurrent_population = population or (None, None)
        input_term, input_hat, input_rstd, input_statistics = self.input_term(
            weights, x, mask, input_population
        )
        recurrent_term, recurrent_hat, recurrent_rstd, recurrent_statistics = self.recurrent_term(
            weights, h_in, mask, recurrent_population
        )
        pre_activation = input_term + recurrent_term
        # The state keeps its dtype: Keras's tanh on JAX returns float32 for float64.
        h_new = ops.cast(self.activation(pre_activation), pre_activation.dtype)
        residuals = BatchNormSimpleRNNResiduals(input_hat, input_rstd, recurrent_hat, recurrent_rstd, h_new)
        return (h_new,), residuals, (*input_statistics, *recurrent_statistics)

    def step_backward(self, weights, residuals, h_in, states, mask, d_new_states):
        """The derivative of `step_forward` with batch statistics (tanh), in the training
        loop's form: from the gradient of `h'`, those of `x`, `h_in` and the weights."""
        r = residuals
        counted = ops.ones_like(h_in[:, :1]) if mask is None else mask
        d_pre_activation = d_new_states[0] * (1.0 - ops.square(r.h_new))
        d_recurrent_kernel, d_recurrent_gamma, dh_in = self.recurrent_term_backward(
            weights, r, d_pre_activation, h_in, counted
        )
        dx, d_input_gamma, d_bias = self.input_term_backward(weights, r, d_pre_activation, counted)
        d_weights = BatchNormWeights(None, d_input_gamma, d_recurrent_kernel, d_recurrent_gamma, d_bias)
        return dx, dh_in, (None,), d_weights


_STEP_COUNTERS = threading.local()


class _CallCounter:
    """The step counter of one call of a BN layer, past Keras's state cast: `initial`
    (float32) before the loop, `final` after it (set by `inner_loop`), and whether every
    sample starts at 0 (no counter given or carried)."""

    def __init__(self, initial, starts_at_zero):
        self.initial, self.final, self.starts_at_zero = initial, None, starts_at_zero


class _BatchNormSequence(NormalizedRNN):
    """The BN whole-sequence layers.

    Before the loop: `x·kernel` for all steps. In the loop: the input term, the
    recurrent term and the cell state, normalized with batch statistics over the
    samples that are not padding at that step (where the fused loop doesn't run, or
    the input term is `synchronized`, the input term is normalized before the loop,
    with the same per-step statistics). After the loop: one update of the population
    statistics from the unnormalized terms the loop returns, so no slot is moved twice
    and no variable is written inside the loop (which JAX forbids). Inference:
    `_population_loop`.
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

    # Per thread: tf.distribute.MirroredStrategy calls each replica's layer in its own
    # thread, at the same time.
    @property
    def _step_counter(self):
        return getattr(_STEP_COUNTERS, str(id(self)), None)

    @_step_counter.setter
    def _step_counter(self, value):
        setattr(_STEP_COUNTERS, str(id(self)), value)

    def call(self, sequences, initial_state=None, mask=None, training=False):
        # keras.layers.RNN casts every state to the compute dtype, where the step counter
        # would stop counting (bfloat16 at 256, float16 at 2048). The counter goes past
        # that cast in float32 (exact to 2**24): `inner_loop` reads it from here, and the
        # exact final counter replaces the cast one in the result and in a stateful
        # layer's states. Where no counter is given or carried, every sample starts at 0.
        starts_at_zero = True
        if initial_state is not None:
            initial_state = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
            expected = len(self.cell.state_size)
            if len(initial_state) == expected - 1:
                # As keras.layers.LSTM/GRU take them: the counter starts at 0.
                batch = ops.shape(initial_state[0])[0]
                initial_state.append(ops.zeros((batch, 1)))
            elif len(initial_state) == expected:
                starts_at_zero = False
            else:
                raise ValueError(
                    f"{type(self).__name__}: `initial_state` must be {self.cell.state_names} "
                    f"or, starting the step counter at 0, without `step`; got "
                    f"{len(initial_state)} tensors."
                )
            counter = initial_state[-1]
        elif self.stateful and self.states is not None:
            counter, starts_at_zero = self.states[-1], False
        else:
            counter = ops.zeros((ops.shape(sequences)[0], 1))
        self._step_counter = _CallCounter(ops.cast(counter, "float32"), starts_at_zero)
        try:
            result = super().call(sequences, initial_state=initial_state, mask=mask, training=training)
            final_counter = self._step_counter.final
        finally:
            self._step_counter = None
        if self.stateful:
            self.states[-1].assign(ops.cast(final_counter, self.states[-1].dtype))
        if self.return_state:
            result = (*result[:-1], final_counter)
        return result

    def inner_loop(self, sequences, initial_state, mask, training=False):
        cell = self.cell
        initial_state = list(initial_state[:-1]) + [self._step_counter.initial]
        inference = not cell.uses_batch_statistics(training)
        if inference and not self.uses_fused_loop():
            # Keras's loop over the cell (half precision, other activations, unroll):
            # every sample reads the slots of its own real steps there too (the
            # step counter is a state, held at padded steps).
            last_output, outputs, states = super().inner_loop(
                sequences, initial_state, mask, training=training
            )
            self._step_counter.final = states[-1]
            return last_output, outputs, states
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
            hs, states = self._population_loop(sequences, input_slots, initial_state[:-1], mask)
        else:
            hs, states = self._batch_statistics_loop(
                sequences, input_slots, initial_state, mask, sample_mask, training
            )
        real_steps = ops.cast(ops.shape(sequences)[1], "float32")
        if mask is not None:
            real_steps = ops.sum(sample_mask, axis=1, keepdims=True)
        states.append(initial_state[-1] + real_steps)
        self._step_counter.final = states[-1]
        # Without return_sequences, inference keeps no outputs but the last.
        last_output, outputs = states[0], ops.expand_dims(states[0], 1) if hs is None else hs
        if original_mask is not None:
            last_output, outputs = self._outputs_in_input_order(states[0], outputs, original_mask)
        return last_output, outputs, states

    def _batch_statistics_loop(self, sequences, input_slots, initial_state, mask, sample_mask, training):
        """Training: the loop (fused where it can run), then one update of the population
        statistics. Returns `(hs, final states without the counter)`.

        The fused loop normalizes the input term in the step (only `x·kernel` is computed
        for all steps before it: the step's reductions over the batch are `(B, F)`, and
        those over the batch axis of a `(B, T, F)` tensor, with their derivative, were
        slower, docs/throughput.md). Elsewhere, and for a `synchronized` input term (its
        all-reduce can't run inside the loop), the input term of all steps is normalized
        before the loop (`input_sequence_term`)."""
        cell = self.cell
        weights = cell.step_weights()
        fused = self.uses_fused_loop()
        if fused and not cell.synchronized:
            raw = ops.matmul(sequences, cell.kernel)
            hs, last_states, statistics = self.fused_loop(
                raw, initial_state[:-1], mask, training, cell.step_forward, cell.step_backward,
                weights._replace(kernel=None),
            )
            states = list(last_states)
            counted = ops.ones_like(raw[:, :, 0]) if sample_mask is None else sample_mask
            count = ops.cast(ops.sum(counted, axis=0), statistics[0].dtype)
            input_moments = moments_from_variance(count, statistics[0], statistics[1])
            statistics = statistics[2:]
        else:
            term, input_moments = cell.input_sequence_term(weights, sequences, sample_mask)
            weights = weights._replace(kernel=None, input_gamma=None, bias=None)
            if fused:
                hs, last_states, statistics = self.fused_loop(
                    term, initial_state[:-1], mask, training, cell.step_forward, cell.step_backward,
                    weights,
                )
                states = list(last_states)
            else:
                hs, states, statistics = self._generic_loop(term, initial_state, sample_mask, training, weights)
        # The moments after the loop: per term, (count, mean, M2) of every step.
        count = input_moments[0]
        moments = {"input": input_moments}
        for k, term in enumerate(cell.normalized_terms[1:]):
            moments[term] = moments_from_variance(count, statistics[2 * k], statistics[2 * k + 1])
        # Each sample's step goes to its own slot (samples of a stateful layer may carry
        # different counters); the statistics of a step are those of all its samples.
        cell.update_statistics(moments, slot_shares(input_slots, sample_mask, cell.max_timesteps))
        return hs, states

    def _population_loop(self, sequences, slots, states, mask):
        """Inference, forward only (`forward_loop`: no residuals, no statistics gathered),
        over the real-steps-first `sequences`; `slots (B, T)` is each sample's slot at
        each loop step. Returns `(hs, final states without the counter)`.

        Each step projects and normalizes its own input (the hoisted `(B, T, 4U)` input
        term measured slower) and gathers each sample's population statistics for the
        next step, carried as extra states: gathered in the step that uses them, XLA on
        CPU fuses the gather into every consumer and recomputes it there
        (docs/throughput.md)."""
        cell = self.cell
        n_states = len(states)
        tables = [ops.copy(v) for term in cell.normalized_terms for v in cell.moving(term)]
        # Every sample started at 0, and real steps come first: all read the same slot.
        same_slots = self._step_counter.starts_at_zero
        # Padded steps come last: a sample's rows held there are never used again.
        next_slots = ops.concatenate([slots[:, 1:], slots[:, -1:]], axis=1)

        def rows_at(slots_t):
            return tuple(ops.take(table, slots_t, axis=0) for table in tables)

        def forward(weights, step_inputs, h_in, carried, _):
            x, slots_next, *mask_t = step_inputs
            mask_t = mask_t[0] if mask_t else None
            states, rows = carried[:n_states], carried[n_states:]
            population = tuple(zip(rows[::2], rows[1::2]))  # per term, (mean, variance)
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

    def _generic_loop(self, term, initial_state, sample_mask, training, weights):
        """The recurrence over the cell's step in training, for what the fused loop doesn't
        run (other activations or dtypes, `unroll`), as a `keras.ops.scan` whose carry
        holds the states and the step's statistics (the TensorFlow scan returns values
        shaped as its carry), differentiated by autodiff. `term`: every step's input term
        (`weights` without its weights). Real steps come first: a padded step keeps the
        state. Returns `(hs (B, T, U), final states without the counter, statistics)`,
        statistics as the fused loop's: per term after the input's, the mean and variance
        of every step, `(T, F)` each, float32."""
        cell = self.cell
        states = list(initial_state[:-1])
        if sample_mask is None:
            sample_mask = ops.ones(ops.shape(term)[:2], dtype="float32")
            masked = False
        else:
            masked = True
        # One tensor to scan over (the TensorFlow scan can't take several of unknown
        # length): every step's input term, and its mask as one more column.
        mask_column = ops.cast(ops.expand_dims(sample_mask, -1), term.dtype)
        steps_in = ops.transpose(ops.concatenate([term, mask_column], -1), (1, 0, 2))
        dtype = statistics_dtype(term)
        statistics = []
        for name in cell.normalized_terms[1:]:
            width = cell.moving(name)[0].shape[-1]
            statistics += [ops.zeros((width,), dtype=dtype)] * 2

        def step(carry, inputs):
            states, _ = carry
            term_t, mask_t = inputs[:, :-1], inputs[:, -1:]
            new_states, values = cell.run_step(
                weights, term_t, states, training, mask=mask_t if masked else None
            )
            kept = [ops.where(mask_t > 0, new, old) for new, old in zip(new_states, states)]
            values = [ops.cast(v, dtype) for v in values]
            return (kept, values), (kept, values)

        _, (all_states, all_statistics) = ops.scan(
            step, (states, statistics), steps_in, unroll=self.unroll
        )
        hs = ops.transpose(all_states[0], (1, 0, 2))
        final_states = [s[-1] for s in all_states]
        return hs, final_states, tuple(ops.stop_gradient(v) for v in all_statistics)

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
      and (TensorFlow or JAX, default activations, float32 or float64) the loop
      normalizes it and runs the cell's step with their hand-written derivative
      (`keras_recnorm.recurrence`; on torch a Python loop that autograd
      differentiates). At inference (same backends and dtypes) a forward-only loop
      reads each sample's population statistics; elsewhere (half precision, other
      activations, `unroll`) it runs as `RNN(BatchNormLSTMCell)`.

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
        return_sequences: whether to return every step's output (default: the last one).
        return_state: whether to return the final states as well.
        go_backwards: whether to process the sequences backwards.
        stateful: whether each batch's final states are the next batch's initial states.
        unroll: whether to unroll the loop (it then runs as `RNN(BatchNormLSTMCell)`).
        zero_output_for_mask: whether a masked step outputs zeros (default: the previous
            output), as in `keras.layers.LSTM`.
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
    `keras.layers.GRU`: every argument of `BatchNormGRUCell` (`units` and
    `max_timesteps` first), plus `return_sequences`, `return_state`, `go_backwards`,
    `stateful`, `unroll` and `zero_output_for_mask`. Same weights (same names) and, for
    unpadded input, the same outputs as `keras.layers.RNN(BatchNormGRUCell(...))`. Beyond
    the cell:

    - **padding-aware statistics**: at every step, the batch mean and variance are taken
      over the samples that are not padding at that step (mask from
      `Embedding(mask_zero=True)`, `Masking` or `mask=`); a step where every sample is
      padding changes no statistic;
    - **one update per batch**: population statistics move once per batch, after the
      loop, on every backend (JAX included) and with no double move of slot 0;
    - **speed**: in training, `x·kernel` is computed for all steps before the loop,
      and (TensorFlow or JAX, default activations, float32 or float64) the loop
      normalizes it and runs the cell's step with their hand-written derivative
      (`keras_recnorm.recurrence`; on torch a Python loop that autograd
      differentiates). At inference (same backends and dtypes) a forward-only loop
      reads each sample's population statistics; elsewhere (half precision, other
      activations, `unroll`) it runs as `RNN(BatchNormGRUCell)`.

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
        return_sequences: whether to return every step's output (default: the last one).
        return_state: whether to return the final states as well.
        go_backwards: whether to process the sequences backwards.
        stateful: whether each batch's final states are the next batch's initial states.
        unroll: whether to unroll the loop (it then runs as `RNN(BatchNormGRUCell)`).
        zero_output_for_mask: whether a masked step outputs zeros (default: the previous
            output), as in `keras.layers.GRU`.
        **kwargs: every other argument of `BatchNormGRUCell` (activations, initializers,
            regularizers, constraints, dropout, `epsilon`, ...) and the layer's own
            (`name`, `dtype`, `trainable`).

    Call arguments:
        sequences: a 3D tensor `(batch, timesteps, features)`.
        initial_state: optional list of initial states, `[h, step]`; without `step`, as
            `keras.layers.GRU` takes them, the step counter starts at 0. E.g. a noisy
            `h` for the paper's sequential MNIST.
        mask: optional boolean `(batch, timesteps)`.
        training: batch statistics and statistics updates (`fit`), or population
            statistics (`predict`, `evaluate`, export).

    Returns:
        As `keras.layers.GRU`: the last output `(batch, units)`, or every step's
        `(batch, timesteps, units)` with `return_sequences`; with `return_state`, a list
        of that and the final states (`h` and `step`).

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
    2016).

    A `keras.layers.RNN` over a `BatchNormSimpleRNNCell` that it owns, constructed like
    `keras.layers.SimpleRNN`: every argument of `BatchNormSimpleRNNCell` (`units` and
    `max_timesteps` first), plus `return_sequences`, `return_state`, `go_backwards`,
    `stateful`, `unroll` and `zero_output_for_mask`. Same weights (same names) and, for
    unpadded input, the same outputs as `keras.layers.RNN(BatchNormSimpleRNNCell(...))`.
    Beyond the cell:

    - **padding-aware statistics**: at every step, the batch mean and variance are taken
      over the samples that are not padding at that step (mask from
      `Embedding(mask_zero=True)`, `Masking` or `mask=`); a step where every sample is
      padding changes no statistic;
    - **one update per batch**: population statistics move once per batch, after the
      loop, on every backend (JAX included) and with no double move of slot 0;
    - **speed**: in training, `x·kernel` is computed for all steps before the loop,
      and (TensorFlow or JAX, the default `tanh`, float32 or float64) the loop
      normalizes it and runs the cell's step with their hand-written derivative
      (`keras_recnorm.recurrence`; on torch a Python loop that autograd
      differentiates). At inference (same backends and dtypes) a forward-only loop
      reads each sample's population statistics; elsewhere (half precision, another
      activation, `unroll`) it runs as `RNN(BatchNormSimpleRNNCell)`.

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
        return_sequences: whether to return every step's output (default: the last one).
        return_state: whether to return the final states as well.
        go_backwards: whether to process the sequences backwards.
        stateful: whether each batch's final states are the next batch's initial states.
        unroll: whether to unroll the loop (it then runs as `RNN(BatchNormSimpleRNNCell)`).
        zero_output_for_mask: whether a masked step outputs zeros (default: the previous
            output), as in `keras.layers.SimpleRNN`.
        **kwargs: every other argument of `BatchNormSimpleRNNCell` (activation,
            initializers, regularizers, constraints, dropout, `epsilon`, ...) and the
            layer's own (`name`, `dtype`, `trainable`).

    Call arguments:
        sequences: a 3D tensor `(batch, timesteps, features)`.
        initial_state: optional list of initial states, `[h, step]`; without `step`, as
            `keras.layers.SimpleRNN` takes them, the step counter starts at 0. E.g. a noisy
            `h` for the paper's sequential MNIST.
        mask: optional boolean `(batch, timesteps)`.
        training: batch statistics and statistics updates (`fit`), or population
            statistics (`predict`, `evaluate`, export).

    Returns:
        As `keras.layers.SimpleRNN`: the last output `(batch, units)`, or every step's
        `(batch, timesteps, units)` with `return_sequences`; with `return_state`, a list
        of that and the final states (`h` and `step`).

    Example:

    >>> import numpy as np
    >>> from keras_recnorm import BatchNormSimpleRNN
    >>> BatchNormSimpleRNN(16, max_timesteps=10)(np.ones((4, 10, 3), "float32")).shape
    TensorShape([4, 16])
    """

    cell_class = BatchNormSimpleRNNCell



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
    for cell in cells:
        cell.statistics_accumulator = merged
    progress = keras.utils.Progbar(steps, unit_name="batch", verbose=verbose)
    used = 0
    try:
        for batch in dataset:
            if steps is not None and used >= steps:
                break
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            # Inference mode; the cells gather batch statistics (`uses_batch_statistics`).
            model(inputs, training=False)
            merged.end_batch()
            used += 1
            progress.update(used)
    finally:
        for cell in cells:
            cell.statistics_accumulator = None
        for variable, value in saved:
            variable.assign(value)
    if used == 0:
        raise ValueError("recompute_population_statistics: `dataset` gave no batch.")
    merged.write()
    return used
