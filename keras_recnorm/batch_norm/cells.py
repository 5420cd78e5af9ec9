"""The batch-normalized cells (Cooijmans et al. 2016, arXiv:1603.09025): the cell base
`BatchNormCell` (moving statistics per step slot, the input and recurrent terms, their
updates) and the LSTM, GRU and SimpleRNN cells with their steps and step derivatives.

Batch statistics are kept separately for every time step, for the input term, the
recurrent term and (LSTM) the cell state. Inference uses population statistics of slot
`min(t, max_timesteps - 1)`. Equations and the rules for updating the statistics:
DESIGN.md.
"""

import keras
from keras import initializers, ops

from keras_recnorm.base import (
    GatedCell,
    NormalizedCell,
    check_numeric_inputs,
    check_positive_int,
    check_unit_interval,
)
from keras_recnorm.compat import keep_input_dtypes
from keras_recnorm.normalization import (
    batch_moments,
    batch_standardize,
    batch_norm_backward,
    cross_replica_moments,
    cross_replica_shares,
    current_batch_statistics_collection,
    moments_from_variance,
    moments_variance,
    moving_average_update,
    normalizer_with,
    replicas_in_sync,
    statistics_dtype,
    step_slots,
)
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
        # other layers as at inference) in a `collecting_batch_statistics` scope, where the
        # cells normalize with, and gather, each batch's statistics.
        gathering = current_batch_statistics_collection() is not None
        return (bool(training) or gathering) and self.trainable

    def batch_norm(self, a, gamma, beta, mask, population):
        """`BN_t(a; γ, β) = γ·x̂ + β`, the expression of every batch-normalized term (β
        `None`: no shift) of one step's `a (B, F)`; in float32 under half precision, cast
        back. With `population` `None`, x̂ is standardized with the batch's statistics
        over the samples whose `mask (B, 1)` is 1 (all, for `None`): returns `(BN_t(a),
        x̂, rstd, (mean, variance))`. Else `population` is the term's
        `normalizer_with` `(mean, scale)` (γ in the scale), broadcasting against
        `a`: returns `(BN_t(a), None, None, ())`."""
        dtype = statistics_dtype(a)
        term = ops.cast(a, dtype)
        if population is None:
            x_hat, rstd, mean, variance = batch_standardize(term, self.epsilon, mask)
            normalized, statistics = ops.cast(gamma, dtype) * x_hat, (mean, variance)
        else:
            mean, scale = population
            normalized = (term - ops.cast(mean, dtype)) * ops.cast(scale, dtype)
            x_hat = rstd = None
            statistics = ()
        if beta is not None:
            normalized = normalized + ops.cast(beta, dtype)
        return ops.cast(normalized, a.dtype), x_hat, rstd, statistics

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
        normalizer = normalizer_with(
            moments[1], moments_variance(moments), weights.input_gamma, self.epsilon
        )
        term, _, _, _ = self.input_term(weights._replace(kernel=None), raw, None, normalizer)
        return term, moments

    def population(self, slots=None):
        """The step's `population`: per normalized term, the `normalizer_with`
        `(mean, scale)` of each sample's slot, `slots (B,)`, or of every slot
        `(max_timesteps, F)` for `None`."""
        normalizers = []
        for term in self.normalized_terms:
            mean, variance = self.moving(term)
            if slots is not None:
                mean, variance = ops.take(mean, slots, axis=0), ops.take(variance, slots, axis=0)
            gamma = getattr(self, f"{term}_gamma")
            normalizers.append(normalizer_with(mean, variance, gamma, self.epsilon))
        return tuple(normalizers)

    def update_statistics(self, moments, slots, step=None):
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
            step: the step counter of a one-step call (inside `keras.layers.RNN`), for a
                `collecting_batch_statistics` scope; `None` for a whole sequence.
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
        collection = current_batch_statistics_collection()
        if collection is not None:
            collection.add(self, moments, slots, step=step)
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
            # The counter tells a collection Keras's extra calls before the loop from real
            # steps.
            self.update_statistics(moments, slot, step=ops.max(steps))
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
        (`population`). `forward_only`: the gates from one sigmoid (default activations).

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
        if forward_only and self.supports_fused_loop():  # sigmoid and tanh
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
        max_timesteps: positive integer, the number of per-step statistics slots.
        **kwargs: `momentum`, the activations, initializers, regularizers and
            constraints, `dropout`, `recurrent_dropout`, `epsilon`, `seed` and
            `synchronized`, with the meanings and defaults `BatchNormLSTMCell` gives
            them; and the layer's own (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs, states, training: as for `BatchNormLSTMCell` (the states here are
            `[h, step]`).

    Returns:
        `(h', [h', step + 1])`, `h'` of shape `(batch, units)`.

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
        max_timesteps: positive integer, the number of per-step statistics slots.
        activation: activation of the output (default `tanh`).
        **kwargs: `momentum`, `use_bias`, the initializers (`gamma_initializer`: both
            γ), regularizers and constraints, `dropout`, `recurrent_dropout`,
            `epsilon`, `seed`, `synchronized`: see `BatchNormLSTMCell`. Also `name`,
            `dtype`, `trainable`.

    Call arguments:
        inputs: one step's input `(batch, features)`.
        states: `[h, step]`.
        training: batch statistics (and their update) or population statistics, as
            in `BatchNormLSTMCell`.

    Returns:
        `h'` `(batch, units)` and the new states `[h', step + 1]`.

    Inside `keras.layers.RNN` the statistics move as `BatchNormLSTMCell`'s do; on JAX,
    training it there raises an error: use `BatchNormSimpleRNN`.

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
