"""The step protocol: what every cell is to the loops that run it, written once.

A cell is one step of the recurrence, given by two of its methods:

```
step_forward(weights, x, h_in, states, mask) -> (new_states, residuals, statistics)
step_backward(weights, residuals, h_in, states, mask, d_new_states)
    -> (dx, dh_in, d_states, d_weights)
```

- `weights`: the cell's weights tuple (`cell.step_weights()`; the named tuples below), its
  fields named as the cell's weights. A field is `None` where the cell has no such weight
  (`bias` without `use_bias`) or where the loop applied that part of the equation before
  the loop, for all steps at once (see "Hoisted input" below).
- `x (B, F)`: the step's input.
- `states`: the state tuple before the step, `h` first (LSTM `(h, c)`, GRU and
  SimpleRNN `(h,)`); `h_in` is its `h` with recurrent dropout applied (the step reads
  `h_in` where the equations multiply `h` by `recurrent_kernel`, and `states` elsewhere,
  as the GRU's `z·h`).
- `mask (B, 1)`: 1 where the sample's step is real, 0 where it is padding, or `None`.
  The step uses it only where it takes a statistic over the batch (batch normalization);
  the loops keep the padded samples' states.
- `new_states`: the state tuple after the step.
- `residuals`: the cell's residuals tuple (below), what `step_backward` needs.
- `statistics`: a tuple of per-step values that leave the loop without gradient: for a
  batch-normalized cell the mean and variance of every term it normalized with batch
  statistics, in the order of `cell.normalized_terms`; empty for the LN cells.

`step_backward` is the derivative of `step_forward` (default activations, sigmoid and
tanh) from `d_new_states`, the gradients of the new states (one per state, already zero
at padded samples): `dx`, `dh_in`, `d_states` (per state, its gradient other than through
`h_in`; `None` where there is none, as for the LSTM's `h`) and `d_weights`, a tuple of the
type of `weights` with `None` where `weights` has `None`.

Who runs the step (one equation, one place):

- the cell's Keras `call` (`NormalizedCell.call`): one step with the cell's own weights,
  differentiated by the backend's autodiff;
- `recurrence.recurrence`: the training loop of the whole-sequence layers, with
  `step_backward` (TensorFlow, JAX; on torch autograd differentiates a Python loop);
- `recurrence.forward_recurrence`: their forward-only inference loop.

What differs between these modes, each for a reason measured in docs/throughput.md:

- `centered` (LN cells): in the loops, the kernels' columns are centered per normalized
  block once per call (`normalization.centered_columns`), so that each gate term's LN
  skips its mean; the Keras `call` takes the kernels as they are (centering them there
  would cost a pass over both kernels at every step). `step_backward` differentiates the
  centered form, the training loop's.
- `forward_only` (every cell takes it): no derivative will be taken; the LSTMs then
  compute their gates from one sigmoid (`lstm_gates_one_sigmoid`), the other cells have
  no other form.
- Hoisted input (BN cells): the training loop computes `x·kernel` for all steps before
  the loop; the step gets that product as `x`, with `weights.kernel` `None`. Where the
  input term's statistics can only be taken before the loop (`synchronized` across
  replicas; the loop for other activations), the step gets the whole input term as `x`,
  with `kernel`, `input_gamma` and `bias` `None`.

Below: the weights and residuals tuples of every cell, and the gate maths shared by the
LN and BN cells (forward, and the derivatives for sigmoid gates and tanh), with the gates
named as in the equations of DESIGN.md (gate order i, f, g, o and z, r, h, as Keras).
"""

from typing import NamedTuple, Optional

from keras import ops

Tensor = Optional[object]  # a backend tensor or Keras variable, or None (see above)


# -- weights: the fields are the cells' weight names ----------------------------------


class LSTMWeights(NamedTuple):
    """`LayerNormLSTMCell` and `BatchNormLSTMCell` (4U-wide gate terms, gates i, f, g, o)."""

    kernel: Tensor
    input_gamma: Tensor
    recurrent_kernel: Tensor
    recurrent_gamma: Tensor
    cell_gamma: Tensor
    cell_beta: Tensor
    bias: Tensor


class LayerNormGRUWeights(NamedTuple):
    """`LayerNormGRUCell`: one gain per normalized block, (z, r) and candidate."""

    kernel: Tensor
    input_gate_gamma: Tensor
    input_candidate_gamma: Tensor
    recurrent_kernel: Tensor
    recurrent_gate_gamma: Tensor
    recurrent_candidate_gamma: Tensor
    bias: Tensor


class LayerNormSimpleRNNWeights(NamedTuple):
    """`LayerNormSimpleRNNCell`: one LN, of the sum of both products."""

    kernel: Tensor
    recurrent_kernel: Tensor
    gamma: Tensor
    bias: Tensor


class KernelsWeights(NamedTuple):
    """The TensorFlow Addons-compatible cells (`keras_recnorm.addons`): their LNs are Keras
    `LayerNormalization` sublayers, called in the step with their own weights."""

    kernel: Tensor
    recurrent_kernel: Tensor
    bias: Tensor


class BatchNormWeights(NamedTuple):
    """`BatchNormGRUCell` and `BatchNormSimpleRNNCell`: the input and the recurrent term."""

    kernel: Tensor
    input_gamma: Tensor
    recurrent_kernel: Tensor
    recurrent_gamma: Tensor
    bias: Tensor


# -- residuals: what each step_backward reads -------------------------------------------
#
# `*_hat` a standardized term, `*_gain` its LN derivative's factor
# (`normalization.layer_standardize`), `*_rstd` a BN term's 1/sqrt(var + ε); `gates` the
# gates after their activations, laid out as the pre-activations.


class LayerNormLSTMResiduals(NamedTuple):
    x: Tensor
    input_hat: Tensor
    input_gain: Tensor
    recurrent_hat: Tensor
    recurrent_gain: Tensor
    gates: Tensor
    cell_hat: Tensor
    cell_gain: Tensor
    cell_output: Tensor


class LayerNormGRUResiduals(NamedTuple):
    x: Tensor
    input_gate_hat: Tensor
    input_gate_gain: Tensor
    input_candidate_hat: Tensor
    input_candidate_gain: Tensor
    recurrent_gate_hat: Tensor
    recurrent_gate_gain: Tensor
    recurrent_candidate_hat: Tensor
    recurrent_candidate_gain: Tensor
    gates: Tensor
    candidate: Tensor


class LayerNormSimpleRNNResiduals(NamedTuple):
    x: Tensor
    summed_hat: Tensor
    summed_gain: Tensor
    h_new: Tensor


class BatchNormLSTMResiduals(NamedTuple):
    input_hat: Tensor  # None (and input_rstd) where the input term was normalized before
    input_rstd: Tensor
    recurrent_hat: Tensor
    recurrent_rstd: Tensor
    gates: Tensor
    cell_hat: Tensor
    cell_rstd: Tensor
    cell_output: Tensor


class BatchNormGRUResiduals(NamedTuple):
    input_hat: Tensor
    input_rstd: Tensor
    recurrent_hat: Tensor
    recurrent_rstd: Tensor
    gates: Tensor
    candidate: Tensor


class BatchNormSimpleRNNResiduals(NamedTuple):
    input_hat: Tensor
    input_rstd: Tensor
    recurrent_hat: Tensor
    recurrent_rstd: Tensor
    h_new: Tensor


# -- LSTM -----------------------------------------------------------------------------


def lstm_gates(z, c, recurrent_activation, activation):
    """The LSTM's gates from their pre-activations `z` (order i, f, g, o), and the new cell
    state `c' = σ(f)·c + σ(i)·tanh(g)` (carried raw). Returns `(gates, c')`, `gates` the
    four after their activations, in the order of `z`."""
    i, f, g, o = ops.split(z, 4, axis=-1)
    i, f, g, o = recurrent_activation(i), recurrent_activation(f), activation(g), recurrent_activation(o)
    return ops.concatenate([i, f, g, o], axis=-1), f * c + i * g


def lstm_gates_one_sigmoid(z, c):
    """`lstm_gates` with sigmoid and tanh, for the forward-only loop: all four gates from
    one sigmoid, `tanh(g) = 2σ(2g) − 1`, so no split and no concatenation (faster where no
    derivative is taken, slower where the gates are saved for one: docs/throughput.md)."""
    units = z.shape[-1] // 4
    ones = ops.ones_like(z[:1, :units])
    scale = ops.concatenate([ones, ones, 2.0 * ones, ones], axis=-1)
    gates = ops.sigmoid(z * scale) * scale + (1.0 - scale)
    i, f, g = (gates[..., k * units : (k + 1) * units] for k in range(3))
    return gates, f * c + i * g


def lstm_output(gates, normalized_cell, activation):
    """`h' = σ(o)·tanh(N(c'))` from the gates and the normalized cell state; returns
    `(h', tanh(N(c')))`."""
    units = normalized_cell.shape[-1]
    o = gates[..., 3 * units :]
    cell_output = activation(normalized_cell)
    return o * cell_output, cell_output


def lstm_output_backward(dh, gates, cell_output):
    """Backward of `lstm_output`: `(d_o, d_n)`, the gradients of the output gate (after
    its sigmoid) and of the normalized cell state `n` (before its tanh)."""
    units = ops.shape(cell_output)[-1]
    o = gates[..., 3 * units :]
    return dh * cell_output, dh * o * (1.0 - ops.square(cell_output))


def lstm_gates_backward(dc, d_o, gates, c):
    """Backward of `lstm_gates` (sigmoid and tanh): `(dz, dc_prev)` from the gradient of
    `c'` and of the output gate."""
    i, f, g, o = ops.split(gates, 4, axis=-1)
    dz = ops.concatenate(
        [dc * g * i * (1.0 - i), dc * c * f * (1.0 - f), dc * i * (1.0 - ops.square(g)),
         d_o * o * (1.0 - o)],
        axis=-1,
    )
    return dz, dc * f


# -- GRU (reset_after) ------------------------------------------------------------------


def gru_gates(input_term, recurrent_term, h, recurrent_activation, activation):
    """The GRU update from the normalized input term (with the bias) and the normalized
    recurrent term, each laid out (z, r | candidate): `z, r = σ(x_zr + h_zr)`,
    `h̃ = tanh(x_h + r·h_h)`, `h' = z·h + (1 − z)·h̃`. Returns `(h', gates, h̃)`, `gates`
    `[z, r]`."""
    units2 = 2 * h.shape[-1]
    gates = recurrent_activation(input_term[..., :units2] + recurrent_term[..., :units2])
    z, r = ops.split(gates, 2, axis=-1)
    candidate = activation(input_term[..., units2:] + r * recurrent_term[..., units2:])
    return z * h + (1.0 - z) * candidate, gates, candidate


def gru_gates_backward(dh_new, gates, candidate, recurrent_candidate, h):
    """Backward of `gru_gates` (sigmoid and tanh), `recurrent_candidate` being the
    candidate's recurrent term `h_h`: `(d_input_term, d_recurrent_term, dh)`, the last the
    gradient of `h` through `z·h` only."""
    z, r = ops.split(gates, 2, axis=-1)
    d_candidate = dh_new * (1.0 - z) * (1.0 - ops.square(candidate))
    d_gates = ops.concatenate(
        [dh_new * (h - candidate) * z * (1.0 - z), d_candidate * recurrent_candidate * r * (1.0 - r)],
        axis=-1,
    )
    d_input = ops.concatenate([d_gates, d_candidate], axis=-1)
    d_recurrent = ops.concatenate([d_gates, d_candidate * r], axis=-1)
    return d_input, d_recurrent, dh_new * z
