"""Layer-normalized recurrent cells (Ba, Kiros & Hinton 2016, arXiv:1607.06450).

The statistics are taken over the units of one layer for one sample, so they are the
same at training and inference and need no batch. Equations: DESIGN.md.

Degenerate inputs: every LN here differentiates through `keras_recnorm.normalization`,
whose one rule gives the exact derivative, except that a recurrent or cell term with a
numerically zero variance (the zero state that a zero sequence keeps from h₀ = 0) passes
no gradient back through its normalization. The exact derivative there, γ/√ε per LN and
step, overflows to NaN along a run of zero steps. The input term's LN, whose derivative
does not compound, is exact at every scale. The forward pass is DESIGN.md's everywhere.
Why and what to expect: docs/degenerate_inputs.md.
"""

import functools

import keras
from keras import ops

from keras_recnorm.base import GatedCell, NormalizedCell, NormalizedRNN
from keras_recnorm.normalization import (
    centered_columns,
    layer_standardize,
    layer_standardize_backward,
)
from keras_recnorm.steps import (
    LayerNormGRUResiduals,
    LayerNormGRUWeights,
    LayerNormLSTMResiduals,
    LayerNormSimpleRNNResiduals,
    LayerNormSimpleRNNWeights,
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


@register
class LayerNormLSTMCell(GatedCell):
    """LSTM cell with layer normalization (Ba, Kiros & Hinton 2016).

    ```
    z  = LN(x·kernel; input_gamma) + LN(h·recurrent_kernel; recurrent_gamma) + bias
    i, f, g, o = split(z, 4)
    c' = σ(f)·c + σ(i)·tanh(g)
    h' = σ(o)·tanh(LN(c'; cell_gamma, cell_beta))
    ```
    Each LN of a gate term normalizes all `4 * units` pre-activations jointly; `bias` is
    their only shift. The state is `[h, c]` with `c` carried unnormalized, as in the paper
    (TensorFlow Addons' `LayerNormLSTMCell` carries the normalized `c`).

    Args:
        units: positive integer, dimensionality of the output space.
        recurrent_activation: activation of the gates (default `sigmoid`).
        unit_forget_bias: if `True` (default), the forget gate's bias starts at 1.
        activation: activation of the candidate `g` and of the cell output (default
            `tanh`).
        use_bias: whether to add `bias`, the only shift of the normalized gate terms.
        kernel_initializer, recurrent_initializer, bias_initializer: initializers of
            `kernel` (default `glorot_uniform`), `recurrent_kernel` (`orthogonal`), `bias`.
        gamma_initializer, beta_initializer: initializers of the LN gains (`ones`) and
            shifts (`zeros`).
        kernel_regularizer, recurrent_regularizer, bias_regularizer, gamma_regularizer, beta_regularizer: regularizers of those weights.
        kernel_constraint, recurrent_constraint, bias_constraint, gamma_constraint, beta_constraint: constraints of those weights.
        dropout: fraction of the input units to drop, in [0, 1). One mask per sequence.
        recurrent_dropout: fraction of the recurrent state's units to drop, in [0, 1).
        epsilon: added to the variance inside the square root (default 1e-5). In the
            backward pass a normalized term that feeds the recurrence (recurrent, cell,
            or the LN-SimpleRNN's sum) whose variance is below ~1e-6·epsilon (e.g. the
            zero state of an all-zero sequence) is treated as a constant: its
            normalization passes no gradient. The LN-LSTM's and LN-GRU's input terms
            keep their exact derivative at every scale (docs/degenerate_inputs.md).
        seed: random seed of the dropout masks.

    Call arguments:
        inputs: a 2D tensor `(batch, features)`, the input at one time step.
        states: the list of state tensors of the previous step (see `state_size`).
        training: whether dropout is applied.

    Returns:
        `(output, new_states)`: `h'` of shape `(batch, units)` and the list of the new
        states.

    Example:

    >>> import numpy as np, keras
    >>> from keras_recnorm import LayerNormLSTMCell
    >>> layer = keras.layers.RNN(LayerNormLSTMCell(8), return_state=True)
    >>> output, h, c = layer(np.ones((2, 5, 3), "float32"))
    >>> output.shape, c.shape
    (TensorShape([2, 8]), TensorShape([2, 8]))
    """

    weights_type = LSTMWeights

    def __init__(self, units, unit_forget_bias=True, **kwargs):
        super().__init__(units, **kwargs)
        self.unit_forget_bias = unit_forget_bias
        self.state_size = [units, units]
        # The LNs of the gate terms normalize all 4U pre-activations jointly.
        self.normalized_widths = (4 * units,)

    def build(self, input_shape):
        self.add_lstm_weights(input_shape)

    def step_forward(self, weights, x, h_in, states, mask=None, centered=False, forward_only=False):
        """One step (`keras_recnorm.steps`) from the (dropped-out) input `x`, `h_in` and
        the states `(h, c)`: the equations above. `centered`: the kernels are centered
        (`centered_kernels`); `forward_only`: the gates from one sigmoid. Returns
        `((h', c'), LayerNormLSTMResiduals, ())`."""
        c = states[1]
        input_hat, input_gain = layer_standardize(
            ops.matmul(x, weights.kernel), self.epsilon, centered, exact=True
        )
        recurrent_hat, recurrent_gain = layer_standardize(
            ops.matmul(h_in, weights.recurrent_kernel), self.epsilon, centered
        )
        z = weights.input_gamma * input_hat + weights.recurrent_gamma * recurrent_hat
        if weights.bias is not None:
            z = z + weights.bias
        if forward_only:
            gates, c_new = lstm_gates_one_sigmoid(z, c)
        else:
            gates, c_new = lstm_gates(z, c, self.recurrent_activation, self.activation)
        cell_hat, cell_gain = layer_standardize(c_new, self.epsilon)
        h_new, cell_output = lstm_output(
            gates, weights.cell_gamma * cell_hat + weights.cell_beta, self.activation
        )
        residuals = LayerNormLSTMResiduals(
            x, input_hat, input_gain, recurrent_hat, recurrent_gain, gates, cell_hat, cell_gain,
            cell_output,
        )
        return (h_new, c_new), residuals, ()

    def step_backward(self, weights, residuals, h_in, states, mask, d_new_states):
        """The derivative of `step_forward(centered=True)` (sigmoid gates, tanh): from the
        gradients of `h'` and `c'`, those of `x`, `h_in`, `c` and the weights. Each LN's
        derivative is `layer_standardize_backward`'s (0 for a degenerate vector), as under
        autodiff."""
        (dh_new, dc_new), c, r = d_new_states, states[1], residuals
        d_o, d_normalized_cell = lstm_output_backward(dh_new, r.gates, r.cell_output)
        dc = dc_new + layer_standardize_backward(
            d_normalized_cell * weights.cell_gamma, r.cell_hat, r.cell_gain
        )
        dz, dc_prev = lstm_gates_backward(dc, d_o, r.gates, c)
        d_recurrent = layer_standardize_backward(
            dz * weights.recurrent_gamma, r.recurrent_hat, r.recurrent_gain, centered=True
        )
        d_input = layer_standardize_backward(
            dz * weights.input_gamma, r.input_hat, r.input_gain, centered=True
        )
        # The cell LN's gain and shift gradients as one sum, not two: faster under XLA on
        # CPU (docs/throughput.md).
        d_cell_gamma, d_cell_beta = ops.split(
            ops.sum(ops.concatenate([d_normalized_cell * r.cell_hat, d_normalized_cell], -1), axis=0), 2
        )
        d_weights = LSTMWeights(
            kernel=ops.matmul(ops.transpose(r.x), d_input),
            input_gamma=ops.sum(dz * r.input_hat, axis=0),
            recurrent_kernel=ops.matmul(ops.transpose(h_in), d_recurrent),
            recurrent_gamma=ops.sum(dz * r.recurrent_hat, axis=0),
            cell_gamma=d_cell_gamma,
            cell_beta=d_cell_beta,
            bias=None if weights.bias is None else ops.sum(dz, axis=0),
        )
        dx = ops.matmul(d_input, ops.transpose(weights.kernel))
        dh_in = ops.matmul(d_recurrent, ops.transpose(weights.recurrent_kernel))
        return dx, dh_in, (None, dc_prev), d_weights

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}


@register
class LayerNormGRUCell(GatedCell):
    """GRU cell with layer normalization, in the four-LN form of the authors'
    code and Keras's `reset_after=True` layout (gate order z, r, h).

    ```
    [z̃, r̃] = LN([xz, xr]; input_gate_gamma) + LN([hz, hr]; recurrent_gate_gamma) + bias[:2U]
    h̃      = tanh(LN(xh; input_candidate_gamma) + bias[2U:] + r·LN(hh; recurrent_candidate_gamma))
    h'     = z·h + (1 − z)·h̃
    ```
    where `x·kernel = [xz, xr, xh]` and `h·recurrent_kernel = [hz, hr, hh]`. State: `[h]`.

    Args:
        units: positive integer, dimensionality of the output space.
        recurrent_activation: activation of the gates (default `sigmoid`).
        reset_after: must be `True` (the reset gate applies after the recurrent matmul,
            as in the paper's code and Keras's default); accepted for compatibility.
        activation: activation of the candidate `h̃` (default `tanh`).
        gamma_initializer: initializer of the four LN gains (`ones`).
        beta_initializer: accepted for a constructor like the other cells'; these LNs
            have no shift (`bias` is added after them).
        **kwargs: `use_bias`, the other initializers, the regularizers and constraints,
            `dropout`, `recurrent_dropout`, `epsilon` and `seed` as in
            `LayerNormLSTMCell` (for `epsilon`, a normalized vector of variance below
            ~1e-6·epsilon passes no gradient: docs/degenerate_inputs.md); the layer's own
            `name`, `dtype`, `trainable`.

    Call arguments:
        inputs: one step's input, `(batch, features)`.
        states: `[h]`.
        training: whether dropout is applied.

    Returns:
        `h'` and `[h']`.

    Example:

    >>> import numpy as np, keras
    >>> from keras_recnorm import LayerNormGRUCell
    >>> keras.layers.RNN(LayerNormGRUCell(8))(np.ones((2, 5, 3), "float32")).shape
    TensorShape([2, 8])
    """

    weights_type = LayerNormGRUWeights

    def __init__(self, units, reset_after=True, **kwargs):
        super().__init__(units, **kwargs)
        if reset_after is not True:
            raise ValueError(
                "Received an invalid value for argument `reset_after`, expected True "
                f"(the only form the layer-normalized GRU defines), got {reset_after!r}."
            )
        self.reset_after = True
        self.state_size = units
        # Normalized blocks of each product: the (z, r) gates, the candidate.
        self.normalized_widths = (2 * units, units)

    def build(self, input_shape):
        width = 3 * self.units
        self.add_kernels(input_shape, width)
        self.add_bias(width)
        self.input_gate_gamma = self.add_gamma("input_gate_gamma", 2 * self.units)
        self.recurrent_gate_gamma = self.add_gamma("recurrent_gate_gamma", 2 * self.units)
        self.input_candidate_gamma = self.add_gamma("input_candidate_gamma", self.units)
        self.recurrent_candidate_gamma = self.add_gamma("recurrent_candidate_gamma", self.units)

    def _standardize_blocks(self, projection, centered, exact=False):
        """LN of the (z, r) block and of the candidate block, separately: `(gate_hat,
        gate_gain, candidate_hat, candidate_gain)` (`layer_standardize`; `exact` for the
        input term)."""
        units2 = 2 * self.units
        return layer_standardize(
            projection[..., :units2], self.epsilon, centered, exact
        ) + layer_standardize(projection[..., units2:], self.epsilon, centered, exact)

    @staticmethod
    def _blocks_backward(d, gate_hat, gate_gain, candidate_hat, candidate_gain, gate_gamma, candidate_gamma):
        """Backward of the gains times `_standardize_blocks(p)` (centered): from the
        gradient of the normalized term, `(d_p, d_gate_gamma, d_candidate_gamma)`."""
        units2 = ops.shape(gate_hat)[-1]
        d_gate, d_candidate = d[..., :units2], d[..., units2:]
        d_projection = ops.concatenate(
            [
                layer_standardize_backward(d_gate * gate_gamma, gate_hat, gate_gain, centered=True),
                layer_standardize_backward(
                    d_candidate * candidate_gamma, candidate_hat, candidate_gain, centered=True
                ),
            ],
            axis=-1,
        )
        return (
            d_projection,
            ops.sum(d_gate * gate_hat, axis=0),
            ops.sum(d_candidate * candidate_hat, axis=0),
        )

    def step_forward(self, weights, x, h_in, states, mask=None, centered=False, forward_only=False):
        """One step (`keras_recnorm.steps`) from the (dropped-out) input `x`, `h_in` and
        the states `(h,)`: the equations above. `centered`: the kernels are centered per
        block (`centered_kernels`); `forward_only` changes nothing here. Returns
        `((h',), LayerNormGRUResiduals, ())`."""
        input_blocks = self._standardize_blocks(ops.matmul(x, weights.kernel), centered, exact=True)
        recurrent_blocks = self._standardize_blocks(ops.matmul(h_in, weights.recurrent_kernel), centered)
        input_gate_hat, _, input_candidate_hat, _ = input_blocks
        recurrent_gate_hat, _, recurrent_candidate_hat, _ = recurrent_blocks
        input_term = ops.concatenate(
            [weights.input_gate_gamma * input_gate_hat, weights.input_candidate_gamma * input_candidate_hat],
            -1,
        )
        if weights.bias is not None:
            input_term = input_term + weights.bias
        recurrent_term = ops.concatenate(
            [
                weights.recurrent_gate_gamma * recurrent_gate_hat,
                weights.recurrent_candidate_gamma * recurrent_candidate_hat,
            ],
            -1,
        )
        h_new, gates, candidate = gru_gates(
            input_term, recurrent_term, states[0], self.recurrent_activation, self.activation
        )
        residuals = LayerNormGRUResiduals(x, *input_blocks, *recurrent_blocks, gates, candidate)
        return (h_new,), residuals, ()

    def step_backward(self, weights, residuals, h_in, states, mask, d_new_states):
        """The derivative of `step_forward(centered=True)` (sigmoid gates, tanh): from the
        gradient of `h'`, those of `x`, `h_in`, `h` (through the update gate) and the
        weights."""
        r = residuals
        d_input_term, d_recurrent_term, dh = gru_gates_backward(
            d_new_states[0], r.gates, r.candidate,
            weights.recurrent_candidate_gamma * r.recurrent_candidate_hat, states[0],
        )
        d_x_projection, d_input_gate_gamma, d_input_candidate_gamma = self._blocks_backward(
            d_input_term, r.input_gate_hat, r.input_gate_gain, r.input_candidate_hat,
            r.input_candidate_gain, weights.input_gate_gamma, weights.input_candidate_gamma,
        )
        d_h_projection, d_recurrent_gate_gamma, d_recurrent_candidate_gamma = self._blocks_backward(
            d_recurrent_term, r.recurrent_gate_hat, r.recurrent_gate_gain, r.recurrent_candidate_hat,
            r.recurrent_candidate_gain, weights.recurrent_gate_gamma, weights.recurrent_candidate_gamma,
        )
        d_weights = LayerNormGRUWeights(
            kernel=ops.matmul(ops.transpose(r.x), d_x_projection),
            input_gate_gamma=d_input_gate_gamma,
            input_candidate_gamma=d_input_candidate_gamma,
            recurrent_kernel=ops.matmul(ops.transpose(h_in), d_h_projection),
            recurrent_gate_gamma=d_recurrent_gate_gamma,
            recurrent_candidate_gamma=d_recurrent_candidate_gamma,
            bias=None if weights.bias is None else ops.sum(d_input_term, axis=0),
        )
        dx = ops.matmul(d_x_projection, ops.transpose(weights.kernel))
        dh_in = ops.matmul(d_h_projection, ops.transpose(weights.recurrent_kernel))
        return dx, dh_in, (dh,), d_weights

    def get_config(self):
        return {**super().get_config(), "reset_after": self.reset_after}


@register
class LayerNormSimpleRNNCell(NormalizedCell):
    """Fully-connected RNN cell with layer normalization of its summed inputs:

    ```
    h' = activation(LN(x·kernel + h·recurrent_kernel; gamma) + bias)
    ```
    State: `[h]`.

    Args:
        units: positive integer, dimensionality of the output space.
        activation: activation of the output (default `tanh`).
        use_bias: whether to add `bias`, the only shift of the normalized sum.
        gamma_initializer: initializer of the LN gain `gamma` (`ones`).
        **kwargs: `beta_initializer` (accepted; this LN has no shift), the kernels'
            and bias's initializers, all regularizers and constraints, `dropout`,
            `recurrent_dropout`, `epsilon`, `seed`: see `LayerNormLSTMCell`. And
            `name`, `dtype`, `trainable`.

    Call arguments:
        inputs: the input of one step.
        states: the list `[h]` of the previous step.
        training: whether dropout is applied.

    Returns:
        The output `h'` `(batch, units)`, and `[h']`.

    Example:

    >>> import numpy as np, keras
    >>> from keras_recnorm import LayerNormSimpleRNNCell
    >>> keras.layers.RNN(LayerNormSimpleRNNCell(8))(np.ones((2, 5, 3), "float32")).shape
    TensorShape([2, 8])
    """

    weights_type = LayerNormSimpleRNNWeights

    def __init__(self, units, **kwargs):
        super().__init__(units, **kwargs)
        self.state_size = units
        self.normalized_widths = (units,)

    def build(self, input_shape):
        self.add_kernels(input_shape, self.units)
        self.add_bias(self.units)
        self.gamma = self.add_gamma("gamma", self.units)

    def step_forward(self, weights, x, h_in, states, mask=None, centered=False, forward_only=False):
        """One step (`keras_recnorm.steps`) from the (dropped-out) input `x` and `h_in`:
        the equation above (the paper normalizes the sum of both products). `centered`:
        the kernels are centered (`centered_kernels`; their sum is then too);
        `forward_only` changes nothing here. Returns
        `((h',), LayerNormSimpleRNNResiduals, ())`."""
        summed = ops.matmul(x, weights.kernel) + ops.matmul(h_in, weights.recurrent_kernel)
        summed_hat, summed_gain = layer_standardize(summed, self.epsilon, centered)
        pre_activation = weights.gamma * summed_hat
        if weights.bias is not None:
            pre_activation = pre_activation + weights.bias
        # The state keeps its dtype: Keras's tanh on JAX returns float32 for float64.
        h_new = ops.cast(self.activation(pre_activation), pre_activation.dtype)
        return (h_new,), LayerNormSimpleRNNResiduals(x, summed_hat, summed_gain, h_new), ()

    def step_backward(self, weights, residuals, h_in, states, mask, d_new_states):
        """The derivative of `step_forward(centered=True)` (tanh): from the gradient of
        `h'`, those of `x`, `h_in` and the weights. The LN of the sum carries the
        recurrence: a degenerate sum passes no gradient (`layer_standardize_backward`)."""
        r = residuals
        d_pre_activation = d_new_states[0] * (1.0 - ops.square(r.h_new))
        d_summed = layer_standardize_backward(
            d_pre_activation * weights.gamma, r.summed_hat, r.summed_gain, centered=True
        )
        d_weights = LayerNormSimpleRNNWeights(
            kernel=ops.matmul(ops.transpose(r.x), d_summed),
            recurrent_kernel=ops.matmul(ops.transpose(h_in), d_summed),
            gamma=ops.sum(d_pre_activation * r.summed_hat, axis=0),
            bias=None if weights.bias is None else ops.sum(d_pre_activation, axis=0),
        )
        dx = ops.matmul(d_summed, ops.transpose(weights.kernel))
        dh_in = ops.matmul(d_summed, ops.transpose(weights.recurrent_kernel))
        return dx, dh_in, (None,), d_weights


def centered_kernels(weights, widths):
    """`weights` with `kernel` and `recurrent_kernel` centered per normalized block of the
    given widths (`centered_columns`): the form the loops run, computed once per call."""
    return weights._replace(
        kernel=centered_columns(weights.kernel, widths),
        recurrent_kernel=centered_columns(weights.recurrent_kernel, widths),
    )


class _LayerNormSequence(NormalizedRNN):
    """The LN whole-sequence layers. On TensorFlow and JAX, training runs the loop with
    the cell's hand-written step derivative, inference a forward-only loop over the same
    step function (no residuals kept); on torch both are Python loops over it (training
    differentiated by autograd). Otherwise (other activations, half precision, `unroll`)
    Keras's loop over the cell. The step projects its own input (the product hoisted
    before the loop measured slower: docs/throughput.md), with kernels centered once per
    call (`centered_kernels`)."""

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if not self.uses_fused_loop():
            return super().inner_loop(sequences, initial_state, mask, training=training)
        cell = self.cell
        if mask is not None:
            sequences = self.zero_padding(sequences, mask)
        sequences = self.dropped_sequence(sequences, training)
        if self.go_backwards:
            sequences = ops.flip(sequences, axis=1)
            mask = None if mask is None else ops.flip(mask, axis=1)
        weights = centered_kernels(cell.step_weights(), cell.normalized_widths)
        forward = functools.partial(cell.step_forward, centered=True, forward_only=not training)
        if training:
            hs, last_states, _ = self.fused_loop(
                sequences, initial_state, mask, training, forward, cell.step_backward, weights
            )
        else:
            hs, last_states = self.forward_loop(sequences, initial_state, mask, forward, weights)
        last_output, outputs = self.outputs_from_states(hs, mask, last_states[0])
        return last_output, outputs, list(last_states)


@register
class LayerNormLSTM(_LayerNormSequence):
    """Layer-normalized LSTM layer (Ba, Kiros & Hinton 2016).

    A `keras.layers.RNN` over a `LayerNormLSTMCell` that it owns, constructed like
    `keras.layers.LSTM`: every argument of `LayerNormLSTMCell`, plus `return_sequences`,
    `return_state`, `go_backwards`, `stateful`, `unroll` and `zero_output_for_mask`.
    Same weights (same names) and outputs as `keras.layers.RNN(LayerNormLSTMCell(...))`.
    Faster on TensorFlow and JAX (with the default activations, float32 or float64): the
    loop runs the cell's step with its hand-written derivative
    (`keras_recnorm.recurrence`) instead of differentiating the loop, and inference runs
    it forward only; on torch, Python loops over the same step. Elsewhere it runs as
    `RNN(LayerNormLSTMCell)`.

    Args:
        units: positive integer, dimensionality of the output space.
        return_sequences, return_state, go_backwards, stateful, unroll, zero_output_for_mask: as
            in `keras.layers.LSTM` (`unroll` runs the layer as
            `keras.layers.RNN(LayerNormLSTMCell)`).
        **kwargs: every other argument of `LayerNormLSTMCell` (activations, initializers,
            regularizers, constraints, dropout, `epsilon`, ...) and the layer's own
            (`name`, `dtype`, `trainable`).

    Call arguments:
        sequences: a 3D tensor `(batch, timesteps, features)`.
        initial_state: optional list of initial state tensors.
        mask: optional boolean `(batch, timesteps)`; masked steps leave the state as it
            was (from `Embedding(mask_zero=True)`, `Masking`, or passed explicitly).
        training: whether dropout is applied.

    Returns:
        As `keras.layers.LSTM`: the last output `(batch, units)`, or every step's
        `(batch, timesteps, units)` with `return_sequences`; with `return_state`, a list
        of that and the final states (`h` and `c`).

    Example:

    >>> import numpy as np
    >>> from keras_recnorm import LayerNormLSTM
    >>> LayerNormLSTM(16, return_sequences=True)(np.ones((4, 10, 3), "float32")).shape
    TensorShape([4, 10, 16])
    """

    cell_class = LayerNormLSTMCell


@register
class LayerNormGRU(_LayerNormSequence):
    """Layer-normalized GRU layer (Ba, Kiros & Hinton 2016).

    A `keras.layers.RNN` over a `LayerNormGRUCell` that it owns, constructed like
    `keras.layers.GRU`: the cell's arguments plus `keras.layers.RNN`'s; same weights
    and outputs as `keras.layers.RNN(LayerNormGRUCell(...))`, with the faster loops
    `LayerNormLSTM`'s docstring describes.

    Args:
        units: positive integer, dimensionality of the output space.
        return_sequences, return_state, go_backwards, stateful, unroll, zero_output_for_mask: as
            in `keras.layers.GRU` (`unroll` runs the layer as
            `keras.layers.RNN(LayerNormGRUCell)`).
        **kwargs: every other argument of `LayerNormGRUCell` and the layer's own (`name`,
            `dtype`, `trainable`).

    Call arguments:
        sequences: a 3D tensor `(batch, timesteps, features)`.
        initial_state: optional list of initial state tensors (`h`).
        mask: optional boolean `(batch, timesteps)`; masked steps leave the state as it
            was.
        training: whether dropout is applied.

    Returns:
        As `keras.layers.GRU`.

    Example:

    >>> import numpy as np
    >>> from keras_recnorm import LayerNormGRU
    >>> LayerNormGRU(16, return_sequences=True)(np.ones((4, 10, 3), "float32")).shape
    TensorShape([4, 10, 16])
    """

    cell_class = LayerNormGRUCell


@register
class LayerNormSimpleRNN(_LayerNormSequence):
    """Layer-normalized SimpleRNN layer (Ba, Kiros & Hinton 2016):
    `keras.layers.RNN(LayerNormSimpleRNNCell(...))` as one layer, built like
    `keras.layers.SimpleRNN`, with the same weights and outputs and the faster loops
    that `LayerNormLSTM` describes.

    Args:
        units: positive integer, dimensionality of the output space.
        **kwargs: `keras.layers.RNN`'s arguments (`return_sequences`, `return_state`,
            `go_backwards`, `stateful`, `unroll`, `zero_output_for_mask`), then
            `LayerNormSimpleRNNCell`'s and the layer's (`name`, `dtype`, `trainable`).

    Call arguments:
        sequences: `(batch, timesteps, features)`; `initial_state`: `[h]`; `mask`:
            boolean `(batch, timesteps)`; `training`: whether dropout is applied.

    Returns:
        What `keras.layers.SimpleRNN` returns.

    Example:

    >>> import numpy as np
    >>> from keras_recnorm import LayerNormSimpleRNN
    >>> LayerNormSimpleRNN(8)(np.ones((2, 4, 3), "float32")).shape
    TensorShape([2, 8])
    """

    cell_class = LayerNormSimpleRNNCell
