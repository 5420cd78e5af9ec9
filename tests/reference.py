"""Independent NumPy implementation of the cells' equations, written from DESIGN.md.

Nothing here imports `keras_recnorm`: the tests compare the package against these
functions, so a mistake would have to be made twice, in two different styles, to pass.
Everything is computed in float64.

Every function takes
- `weights`: a dict of arrays by weight name (`kernel`, `recurrent_kernel`, `bias`, the
  gains and shifts, and for the batch-normalized cells the moving statistics), as
  `tests/conftest.py:weights_by_name` builds it from a Keras layer; a missing `bias` means
  `use_bias=False`;
- `x`: the input sequence `(B, T, D)`;
- the initial states (zeros when omitted);
- optionally `mask` `(B, T)`: Keras's masking semantics — at a masked step a sample keeps
  its states, and its output repeats the previous output (`zero_output_for_mask=False`) or
  is zero (`zero_output_for_mask=True`).

and returns `(outputs (B, T, U), final_states)`; the batch-normalized cells (`bn_lstm`,
`bn_gru`, `bn_simple_rnn`) also take `training` and return the updated population
statistics.

Gate order along the pre-activations is Keras's: i, f, g, o (LSTM) and z, r, h (GRU).

Tests take the function of a kind of cell (a row of `keras_recnorm.kinds.KINDS`) from
`for_kind(kind)`, and the states it carries from `STATES`.
"""

import numpy as np


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def layer_norm(a, gamma, beta=None, epsilon=1e-5):
    """`γ ⊙ (a − mean(a)) / sqrt(var(a) + ε) + β`, biased variance over the last axis."""
    mean = a.mean(axis=-1, keepdims=True)
    var = ((a - mean) ** 2).mean(axis=-1, keepdims=True)
    out = gamma * (a - mean) / np.sqrt(var + epsilon)
    return out if beta is None else out + beta


def _as64(weights):
    return {name: np.asarray(value, dtype=np.float64) for name, value in weights.items()}


def _run(step, x, states, mask, zero_output_for_mask):
    """Keras's RNN loop around `step(x_t, states) -> (output, new_states)`."""
    x = np.asarray(x, dtype=np.float64)
    batch, steps = x.shape[:2]
    states = [np.asarray(s, dtype=np.float64) for s in states]
    mask = np.ones((batch, steps), bool) if mask is None else np.asarray(mask, bool)
    outputs = []
    previous_output = np.zeros((batch, states[0].shape[-1]))
    for t in range(steps):
        output, new_states = step(x[:, t], states)
        keep = mask[:, t][:, None]
        states = [np.where(keep, new, old) for new, old in zip(new_states, states)]
        fill = np.zeros_like(output) if zero_output_for_mask else previous_output
        output = np.where(keep, output, fill)
        outputs.append(output)
        previous_output = output
    return np.stack(outputs, axis=1), states


# -- layer normalization (Ba, Kiros & Hinton 2016) ------------------------------------


def ln_lstm(weights, x, h0=None, c0=None, *, epsilon=1e-5, activation=np.tanh,
            recurrent_activation=sigmoid, mask=None, zero_output_for_mask=False):
    """LayerNormLSTMCell: returns `(outputs, [h, c])`; `c` is carried unnormalized."""
    w = _as64(weights)
    units = w["recurrent_kernel"].shape[0]
    bias = w.get("bias", np.zeros(4 * units))
    h0 = np.zeros((x.shape[0], units)) if h0 is None else h0
    c0 = np.zeros((x.shape[0], units)) if c0 is None else c0

    def step(x_t, states):
        h, c = states
        z = (layer_norm(x_t @ w["kernel"], w["input_gamma"], epsilon=epsilon)
             + layer_norm(h @ w["recurrent_kernel"], w["recurrent_gamma"], epsilon=epsilon)
             + bias)
        i, f, g, o = np.split(z, 4, axis=-1)
        c_new = recurrent_activation(f) * c + recurrent_activation(i) * activation(g)
        h_new = recurrent_activation(o) * activation(
            layer_norm(c_new, w["cell_gamma"], w["cell_beta"], epsilon))
        return h_new, [h_new, c_new]

    return _run(step, x, [h0, c0], mask, zero_output_for_mask)


def ln_gru(weights, x, h0=None, *, epsilon=1e-5, activation=np.tanh,
           recurrent_activation=sigmoid, mask=None, zero_output_for_mask=False):
    """LayerNormGRUCell (four LNs, `reset_after` form): returns `(outputs, [h])`."""
    w = _as64(weights)
    units = w["recurrent_kernel"].shape[0]
    bias = w.get("bias", np.zeros(3 * units))
    h0 = np.zeros((x.shape[0], units)) if h0 is None else h0
    u2 = 2 * units

    def step(x_t, states):
        (h,) = states
        xp, hp = x_t @ w["kernel"], h @ w["recurrent_kernel"]
        gates = (layer_norm(xp[:, :u2], w["input_gate_gamma"], epsilon=epsilon)
                 + layer_norm(hp[:, :u2], w["recurrent_gate_gamma"], epsilon=epsilon)
                 + bias[:u2])
        z, r = np.split(recurrent_activation(gates), 2, axis=-1)
        candidate = activation(
            layer_norm(xp[:, u2:], w["input_candidate_gamma"], epsilon=epsilon)
            + bias[u2:]
            + r * layer_norm(hp[:, u2:], w["recurrent_candidate_gamma"], epsilon=epsilon))
        h_new = z * h + (1.0 - z) * candidate
        return h_new, [h_new]

    return _run(step, x, [h0], mask, zero_output_for_mask)


def ln_simple_rnn(weights, x, h0=None, *, epsilon=1e-5, activation=np.tanh, mask=None,
                  zero_output_for_mask=False):
    """LayerNormSimpleRNNCell: `h' = activation(LN(x·W + h·U; gamma) + bias)`."""
    w = _as64(weights)
    units = w["recurrent_kernel"].shape[0]
    bias = w.get("bias", np.zeros(units))
    h0 = np.zeros((x.shape[0], units)) if h0 is None else h0

    def step(x_t, states):
        (h,) = states
        summed = x_t @ w["kernel"] + h @ w["recurrent_kernel"]
        h_new = activation(layer_norm(summed, w["gamma"], epsilon=epsilon) + bias)
        return h_new, [h_new]

    return _run(step, x, [h0], mask, zero_output_for_mask)


# -- recurrent batch normalization (Cooijmans et al. 2016) ----------------------------

BN_TERMS = {
    "lstm": ("input", "recurrent", "cell"),
    "gru": ("input", "recurrent"),
    "simple_rnn": ("input", "recurrent"),
}


def batch_norm(a, mean, variance, gamma, beta=None, epsilon=1e-5):
    """`γ ⊙ (a − μ) / sqrt(σ² + ε) + β` with given statistics (per feature)."""
    out = gamma * (a - mean) / np.sqrt(variance + epsilon)
    return out if beta is None else out + beta


def batch_moments(a, rows):
    """Mean and biased variance over the batch axis of `a (B, F)`, over the samples where
    `rows (B,)` is True. Returns `(mean, variance, count)`; zeros when no sample counts."""
    count = int(rows.sum())
    if count == 0:
        return np.zeros(a.shape[-1]), np.zeros(a.shape[-1]), 0
    taken = a[rows]
    mean = taken.mean(axis=0)
    return mean, ((taken - mean) ** 2).mean(axis=0), count


def population_update(mean, variance, samples, batch_size, momentum):
    """New population `(mean, variance)` of one slot after a batch whose `samples (n, F)`
    reached it, in a batch of `batch_size` samples.

    The old statistics stand for `w = batch_size·momentum/(1 − momentum)` samples with that
    mean and variance; the new ones are those of the mixture of them and `samples` (law of
    total variance). A step all samples reached moves the mean as the EMA
    `momentum·m + (1 − momentum)·μ`; a step k samples reached moves it by `k / (k + w)`.
    """
    n = len(samples)
    if n == 0:
        return mean, variance
    w = batch_size * momentum / (1.0 - momentum)
    batch_mean, batch_variance = samples.mean(axis=0), samples.var(axis=0)
    new_mean = (w * mean + n * batch_mean) / (w + n)
    new_variance = (w * (variance + (mean - new_mean) ** 2)
                    + n * (batch_variance + (batch_mean - new_mean) ** 2)) / (w + n)
    return new_mean, new_variance


class _Normalizer:
    """`BN_t` for one sequence: batch statistics at training time (and their update of the
    population slots), population slot `min(t, T_max − 1)` at inference.

    Updates (`population_update`): a cell in `keras.layers.RNN` updates its slot after
    every step, with the step's samples; a whole-sequence layer (`whole_sequence`) pools
    every step's samples per slot and updates each slot once, after the loop, with
    `batch_size` the most samples of any step."""

    def __init__(self, weights, terms, training, momentum, epsilon, first_step_updates,
                 whole_sequence):
        self.moving = {f"{term}_moving_{stat}": weights[f"{term}_moving_{stat}"].copy()
                       for term in terms for stat in ("mean", "variance")}
        self.max_timesteps = next(iter(self.moving.values())).shape[0]
        self.training, self.momentum, self.epsilon = training, momentum, epsilon
        self.first_step_updates = first_step_updates
        self.whole_sequence = whole_sequence
        self.batch_stats = {f"{term}_{stat}": [] for term in terms for stat in ("mean", "variance")}
        self.pooled = {}  # (term, slot) -> list of sample arrays (whole_sequence)
        self.batch_size = 0

    def slot(self, step):
        return np.minimum(np.asarray(step, int), self.max_timesteps - 1)

    def _update(self, term, slot, samples, batch_size):
        mean = self.moving[f"{term}_moving_mean"]
        variance = self.moving[f"{term}_moving_variance"]
        mean[slot], variance[slot] = population_update(
            mean[slot], variance[slot], samples, batch_size, self.momentum)

    def __call__(self, term, a, gamma, beta, loop_step, sample_steps, rows):
        """Normalize `a (B, F)`, the `term` at loop step `loop_step` (the batch's time
        step, used at training time) whose samples are at steps `sample_steps (B,)` (their
        own counters, used at inference); `rows` are the samples in the statistics."""
        if not self.training:
            slots = self.slot(sample_steps)
            mean = self.moving[f"{term}_moving_mean"][slots]
            variance = self.moving[f"{term}_moving_variance"][slots]
            return batch_norm(a, mean, variance, gamma, beta, self.epsilon)
        mean, variance, count = batch_moments(a, rows)
        self.batch_stats[f"{term}_mean"].append(mean)
        self.batch_stats[f"{term}_variance"].append(variance)
        if count > 0:
            slot = int(self.slot(loop_step))
            if self.whole_sequence:
                self.pooled.setdefault((term, slot), []).append(a[rows])
                self.batch_size = max(self.batch_size, count)
            else:
                repeats = self.first_step_updates if len(self.batch_stats[f"{term}_mean"]) == 1 else 1
                for _ in range(repeats):
                    self._update(term, slot, a[rows], count)
        return batch_norm(a, mean, variance, gamma, beta, self.epsilon)

    def finish(self):
        """The whole-sequence layer's update after the loop."""
        for (term, slot), samples in self.pooled.items():
            self._update(term, slot, np.concatenate(samples), self.batch_size)


def _bn_run(kind, weights, x, states, step0, *, training, momentum, epsilon, mask,
            exclude_masked, zero_output_for_mask, first_step_updates, activation,
            recurrent_activation, return_batch_statistics, whole_sequence):
    w = _as64(weights)
    x = np.asarray(x, dtype=np.float64)
    batch, steps = x.shape[:2]
    units = w["recurrent_kernel"].shape[0]
    width = w["recurrent_kernel"].shape[1]
    bias = w.get("bias", np.zeros(width))
    states = [np.zeros((batch, units)) if s is None else np.asarray(s, np.float64)
              for s in states]
    counter = (np.zeros(batch) if step0 is None
               else np.round(np.asarray(step0, np.float64).reshape(batch)))
    if training and np.unique(counter).size > 1:
        raise ValueError("training needs one initial step for the whole batch")
    first_loop_step = int(counter[0])
    mask = np.ones((batch, steps), bool) if mask is None else np.asarray(mask, bool)
    if training and exclude_masked and not _real_steps_lead(mask):
        return _bn_run_real_steps_first(
            kind, weights, x, states, step0, training=training, momentum=momentum,
            epsilon=epsilon, mask=mask, exclude_masked=exclude_masked,
            zero_output_for_mask=zero_output_for_mask, first_step_updates=first_step_updates,
            activation=activation, recurrent_activation=recurrent_activation,
            return_batch_statistics=return_batch_statistics, whole_sequence=whole_sequence)
    norm = _Normalizer(w, BN_TERMS[kind], training, momentum, epsilon, first_step_updates,
                       whole_sequence)
    sigma, tanh = recurrent_activation, activation
    outputs, previous_output = [], np.zeros((batch, units))
    for t in range(steps):
        keep = mask[:, t]
        rows = keep if exclude_masked else np.ones(batch, bool)
        # The batch's step: the furthest any sample has got (a cell inside
        # keras.layers.RNN sees only the counters, which skip masked steps).
        batch_step = counter.max() if exclude_masked is False else first_loop_step + t
        bn = lambda term, a, gamma, beta=None: norm(  # noqa: E731
            term, a, gamma, beta, batch_step, counter, rows)
        px = bn("input", x[:, t] @ w["kernel"], w["input_gamma"])
        ph = bn("recurrent", states[0] @ w["recurrent_kernel"], w["recurrent_gamma"])
        if kind == "lstm":
            h, c = states
            i, f, g, o = np.split(px + ph + bias, 4, axis=-1)
            c_new = sigma(f) * c + sigma(i) * tanh(g)
            h_new = sigma(o) * tanh(bn("cell", c_new, w["cell_gamma"], w["cell_beta"]))
            new_states = [h_new, c_new]
        elif kind == "simple_rnn":
            h_new = tanh(px + ph + bias)
            new_states = [h_new]
        else:
            (h,) = states
            u2 = 2 * units
            z, r = np.split(sigma(px[:, :u2] + ph[:, :u2] + bias[:u2]), 2, axis=-1)
            candidate = tanh(px[:, u2:] + bias[u2:] + r * ph[:, u2:])
            h_new = z * h + (1.0 - z) * candidate
            new_states = [h_new]
        states = [np.where(keep[:, None], new, old) for new, old in zip(new_states, states)]
        counter = counter + keep
        fill = np.zeros_like(h_new) if zero_output_for_mask else previous_output
        previous_output = np.where(keep[:, None], h_new, fill)
        outputs.append(previous_output)
    norm.finish()
    result = (np.stack(outputs, axis=1), states + [counter[:, None]], norm.moving)
    if return_batch_statistics:
        stats = {name: np.stack(values) if values else np.zeros((0, width))
                 for name, values in norm.batch_stats.items()}
        result += (stats,)
    return result


def _real_steps_lead(mask):
    """Whether every sample's real steps come first (right padding only)."""
    return all(not row[1:][~row[:-1]].any() for row in mask)


def _bn_run_real_steps_first(kind, weights, x, states, step0, *, mask, zero_output_for_mask,
                             **kwargs):
    """Training with padding-aware statistics: step k of the statistics is every sample's
    k-th real step, wherever the padding is. Runs the samples' real steps first, then
    puts the outputs back at their time steps as Keras's loop would show them (a padded
    step repeats the previous output, or gives zeros)."""
    x = np.asarray(x, np.float64)
    batch, steps = mask.shape
    reals = [np.flatnonzero(row) for row in mask]
    packed = np.zeros_like(x)
    packed_mask = np.zeros_like(mask)
    for b, real in enumerate(reals):
        packed[b, : len(real)] = x[b, real]
        packed_mask[b, : len(real)] = True
    packed_outputs, *rest = _bn_run(kind, weights, packed, states, step0, mask=packed_mask,
                                    zero_output_for_mask=zero_output_for_mask, **kwargs)
    outputs = np.zeros((batch, steps, packed_outputs.shape[-1]))
    for b, real in enumerate(reals):
        seen = 0
        for t in range(steps):
            if mask[b, t]:
                outputs[b, t] = packed_outputs[b, seen]
                seen += 1
            elif seen and not zero_output_for_mask:
                outputs[b, t] = outputs[b, t - 1]
    return (outputs, *rest)


def bn_lstm(weights, x, h0=None, c0=None, step0=None, *, training, momentum=0.95,
            epsilon=1e-5, mask=None, exclude_masked=True, zero_output_for_mask=False,
            first_step_updates=1, activation=np.tanh, recurrent_activation=sigmoid,
            return_batch_statistics=False, whole_sequence=False):
    """BatchNormLSTMCell / BatchNormLSTM (Cooijmans et al. 2016), per-time-step statistics.

    ```
    z  = BN_t(x·kernel; input_gamma) + BN_t(h·recurrent_kernel; recurrent_gamma) + bias
    c' = σ(f)·c + σ(i)·tanh(g);   h' = σ(o)·tanh(BN_t(c'; cell_gamma, cell_beta))
    ```

    `weights` holds the trainable weights and the population statistics
    `{input,recurrent,cell}_moving_{mean,variance}` (`(T_max, F)`; T_max is read from them).

    - `training=True`: μ_t, σ²_t are the batch mean and biased variance over the samples
      at step t. With `mask` and `exclude_masked` (the whole-sequence layer), step t of a
      sample is its t-th real step and only samples that have one take part; with
      `exclude_masked=False` (a cell inside `keras.layers.RNN`, which never sees the mask)
      all samples of loop step t take part, and the slot is that of the furthest step
      counter. After each normalization the
      slot `min(step0 + t, T_max − 1)` moves: `m ← momentum·m + (1 − momentum)·μ_t` (and
      likewise the variance), in step order, so steps beyond T_max all move the last slot.
      A step where no sample counts moves nothing. `first_step_updates=2` applies the
      first step's update twice, as the extra shape-inferring call of Keras's TensorFlow
      loop does to a cell in `keras.layers.RNN`.
    - `training=False`: each sample uses the slot `min(s, T_max − 1)` of its own step
      counter `s` (the carried step state; it does not advance on masked steps, so for
      right-padded masks it equals the loop step).

    `step0` is the initial step counter, `(B,)` or `(B, 1)` (default zeros; at training
    time it must be the same for the whole batch).

    Returns `(outputs, [h, c, step], moving)`: `step` is `(B, 1)`, `moving` the dict of
    updated population statistics (unchanged copies at inference); with
    `return_batch_statistics=True` also a dict `{term}_{mean,variance}` of the per-step
    batch statistics, `(T, F)` (empty at inference).
    """
    return _bn_run("lstm", weights, x, [h0, c0], step0, training=training,
                   momentum=momentum, epsilon=epsilon, mask=mask,
                   exclude_masked=exclude_masked, zero_output_for_mask=zero_output_for_mask,
                   first_step_updates=first_step_updates, activation=activation,
                   recurrent_activation=recurrent_activation,
                   return_batch_statistics=return_batch_statistics,
                   whole_sequence=whole_sequence)


def bn_gru(weights, x, h0=None, step0=None, *, training, momentum=0.95, epsilon=1e-5,
           mask=None, exclude_masked=True, zero_output_for_mask=False, first_step_updates=1,
           activation=np.tanh, recurrent_activation=sigmoid, return_batch_statistics=False,
           whole_sequence=False):
    """BatchNormGRUCell / BatchNormGRU: the GRU (`reset_after` form) with `BN_t`:

    ```
    px, ph = BN_t(x·kernel; input_gamma), BN_t(h·recurrent_kernel; recurrent_gamma)
    [z̃, r̃] = px[:2U] + ph[:2U] + bias[:2U];   h̃ = tanh(px[2U:] + bias[2U:] + σ(r̃)·ph[2U:])
    h' = σ(z̃)·h + (1 − σ(z̃))·h̃
    ```

    Population statistics `{input,recurrent}_moving_{mean,variance}`, `(T_max, 3U)`.
    Statistics rules, arguments and return values as `bn_lstm` (states `[h, step]`).
    """
    return _bn_run("gru", weights, x, [h0], step0, training=training, momentum=momentum,
                   epsilon=epsilon, mask=mask, exclude_masked=exclude_masked,
                   zero_output_for_mask=zero_output_for_mask,
                   first_step_updates=first_step_updates, activation=activation,
                   recurrent_activation=recurrent_activation,
                   return_batch_statistics=return_batch_statistics,
                   whole_sequence=whole_sequence)


def bn_simple_rnn(weights, x, h0=None, step0=None, *, training, momentum=0.95, epsilon=1e-5,
                  mask=None, exclude_masked=True, zero_output_for_mask=False,
                  first_step_updates=1, activation=np.tanh, return_batch_statistics=False,
                  whole_sequence=False):
    """BatchNormSimpleRNNCell / BatchNormSimpleRNN: the fully-connected RNN with `BN_t`:

    ```
    h' = activation(BN_t(x·kernel; input_gamma) + BN_t(h·recurrent_kernel; recurrent_gamma) + bias)
    ```

    Population statistics `{input,recurrent}_moving_{mean,variance}`, `(T_max, U)`.
    Statistics rules, arguments and return values as `bn_lstm` (states `[h, step]`).
    """
    return _bn_run("simple_rnn", weights, x, [h0], step0, training=training,
                   momentum=momentum, epsilon=epsilon, mask=mask,
                   exclude_masked=exclude_masked, zero_output_for_mask=zero_output_for_mask,
                   first_step_updates=first_step_updates, activation=activation,
                   recurrent_activation=sigmoid,
                   return_batch_statistics=return_batch_statistics,
                   whole_sequence=whole_sequence)


# -- TensorFlow Addons 0.23 (keras_recnorm.addons): not the papers' equations -------------
#
# Addons' cells as DESIGN.md ("TensorFlow Addons compatibility") states them. Weights are
# named as the compatible cells nest them: `kernel`, `recurrent_kernel`, `bias`, and
# `<sublayer>/gamma`, `<sublayer>/beta` (`kernel_norm`, `recurrent_norm`, `state_norm`;
# `layernorm/gamma` for the simple RNN). Written against an array module `xp`: NumPy by
# default, `tf.experimental.numpy` where a test differentiates the reference (the default
# activations are then taken from `xp` too).


def addons_layer_norm(a, gamma, beta=None, epsilon=1e-3, xp=np):
    """`keras.layers.LayerNormalization` over the last axis, in `xp`."""
    mean = xp.mean(a, axis=-1, keepdims=True)
    variance = xp.mean(xp.square(a - mean), axis=-1, keepdims=True)
    out = gamma * (a - mean) / xp.sqrt(variance + epsilon)
    return out if beta is None else out + beta


def _addons_loop(step, x, states, mask, zero_output_for_mask, xp):
    """Keras's RNN loop, as `_run`, in `xp` (no assignment into arrays)."""
    batch, steps = x.shape[:2]
    mask = xp.ones((batch, steps), bool) if mask is None else xp.asarray(mask, bool)
    outputs, previous = [], xp.zeros_like(states[0])
    for t in range(steps):
        output, new_states = step(x[:, t], states)
        keep = mask[:, t][:, None]
        states = [xp.where(keep, new, old) for new, old in zip(new_states, states)]
        previous = xp.where(keep, output, xp.zeros_like(output) if zero_output_for_mask else previous)
        outputs.append(previous)
    return xp.stack(outputs, axis=1), states


def _addons_inputs(weights, x, states, xp):
    w = {name: xp.asarray(value, dtype=xp.float64) for name, value in weights.items()}
    x = xp.asarray(x, dtype=xp.float64)
    units = w["recurrent_kernel"].shape[0]
    states = [xp.zeros((x.shape[0], units), dtype=xp.float64) if s is None
              else xp.asarray(s, dtype=xp.float64) for s in states]
    return w, x, states


def addons_ln_lstm(weights, x, h0=None, c0=None, *, epsilon=1e-3, activation=None,
                   recurrent_activation=None, mask=None, zero_output_for_mask=False, xp=np):
    """Addons' LayerNormLSTMCell: returns `(outputs, [h, c])`.

    `z = LN_k(x·W) + LN_r(h·U) + b` (each LN with its gain and shift), the LSTM update of
    `c`, then `c' = LN_s(c')`, and `h' = σ(o)·tanh(c')`: the normalized `c'` is carried.
    """
    w, x, states = _addons_inputs(weights, x, [h0, c0], xp)
    tanh = activation or xp.tanh
    sigma = recurrent_activation or (lambda a: 1.0 / (1.0 + xp.exp(-a)))
    bias = w.get("bias", 0.0)

    def norm(name, a):
        return addons_layer_norm(a, w[f"{name}/gamma"], w[f"{name}/beta"], epsilon, xp)

    def step(x_t, states):
        h, c = states
        z = (norm("kernel_norm", x_t @ w["kernel"])
             + norm("recurrent_norm", h @ w["recurrent_kernel"]) + bias)
        i, f, g, o = xp.split(z, 4, axis=-1)
        c_new = norm("state_norm", sigma(f) * c + sigma(i) * tanh(g))
        h_new = sigma(o) * tanh(c_new)
        return h_new, [h_new, c_new]

    return _addons_loop(step, x, states, mask, zero_output_for_mask, xp)


def addons_ln_simple_rnn(weights, x, h0=None, *, epsilon=1e-5, activation=None, mask=None,
                         zero_output_for_mask=False, xp=np):
    """Addons' LayerNormSimpleRNNCell: `h' = activation(LN(x·W + h·U; γ) + b)`, no shift
    in the LN. Returns `(outputs, [h])`."""
    w, x, states = _addons_inputs(weights, x, [h0], xp)
    activation = activation or xp.tanh
    bias = w.get("bias", 0.0)

    def step(x_t, states):
        summed = x_t @ w["kernel"] + states[0] @ w["recurrent_kernel"]
        h_new = activation(addons_layer_norm(summed, w["layernorm/gamma"], None, epsilon, xp)
                           + bias)
        return h_new, [h_new]

    return _addons_loop(step, x, states, mask, zero_output_for_mask, xp)


# -- dispatch from a kind of cell --------------------------------------------------------

# The states each recurrence carries, in Keras's order (the BN cells add the step counter).
STATES = {"lstm": ("h", "c"), "gru": ("h",), "simple_rnn": ("h",)}

REFERENCES = {
    ("layer_norm", "lstm"): ln_lstm,
    ("layer_norm", "gru"): ln_gru,
    ("layer_norm", "simple_rnn"): ln_simple_rnn,
    ("batch_norm", "lstm"): bn_lstm,
    ("batch_norm", "gru"): bn_gru,
    ("batch_norm", "simple_rnn"): bn_simple_rnn,
}


def for_kind(kind):
    """The reference function of `kind`: anything with `family` and `recurrence`, such as a
    row of `keras_recnorm.kinds.KINDS` (read by attribute: nothing here imports the package).

    Raises LookupError for a kind without one, so that a new kind's tests fail until its
    reference is written, rather than pass or skip."""
    try:
        return REFERENCES[kind.family, kind.recurrence]
    except KeyError:
        raise LookupError(
            f"tests/reference.py has no reference for {getattr(kind, 'name', kind)} "
            f"({kind.family}, {kind.recurrence}): write one from DESIGN.md's equations and "
            f"add it to REFERENCES.") from None
