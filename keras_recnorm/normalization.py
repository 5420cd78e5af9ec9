"""Shared numerics: layer normalization, per-step batch moments `(count, mean, M2)` and
the one rule that merges them, moving averages.

Every cell and layer in the package normalizes through these few functions, so the
arithmetic (biased variance, epsilon inside the square root, float32 under mixed
precision) is written exactly once.
"""

import contextlib
import threading

from keras import ops


def statistics_dtype(x):
    """float32 for float32/float16/bfloat16 (half precision overflows in sums of squares),
    float64 for float64 (so that double-precision checks stay double)."""
    return "float64" if x.dtype == "float64" else "float32"


def layer_norm(x, gamma, beta=None, epsilon=1e-5):
    """Layer normalization over the last axis (Ba, Kiros & Hinton 2016, eq. 4).

    `gamma * (x - mean) / sqrt(var + epsilon) + beta`, with the biased variance over the
    last axis. The statistics are computed in float32 even when `x` is float16/bfloat16:
    a sum of squares over a few thousand features easily overflows float16.

    Differentiable on every backend with the derivative of `layer_standardize_backward`:
    the exact one, except for a degenerate `x` (constant, e.g. all zero), which gets no
    gradient through the normalization (docs/degenerate_inputs.md).

    Args:
        x: tensor of any rank; normalized over its last axis.
        gamma: gain, shape `(x.shape[-1],)`.
        beta: shift of the same shape, or `None` for no shift.
        epsilon: added to the variance inside the square root.

    Returns:
        A tensor of the shape and dtype of `x`.
    """
    x_hat, _ = _layer_standardized(x, epsilon)
    return _gain_and_shift(x_hat, gamma, beta, x.dtype)


def _gain_and_shift(x_hat, gamma, beta, dtype):
    """`gamma * x̂ + beta` in the dtype of x̂ (the statistics' dtype), cast to `dtype`."""
    y = x_hat * ops.cast(gamma, x_hat.dtype)
    if beta is not None:
        y = y + ops.cast(beta, x_hat.dtype)
    return ops.cast(y, dtype)


def _feature_mean(x):
    """The mean over the last axis, kept as a length-1 axis, as a product with a column
    of ones: TensorFlow's XLA on CPU turns row reductions into two-stage loops, and the
    product measured faster there and on JAX (docs/throughput.md)."""
    width = x.shape[-1]
    return ops.matmul(x, ops.ones((width, 1), dtype=x.dtype)) * (1.0 / width)


def _layer_standardized(x, epsilon, centered=False, exact=False):
    """`(x̂, gain)` over the last axis, in float32 (float64 for float64 input): x̂ has
    the derivative of `layer_standardize_backward`, and `gain` (its factor: rstd, 0 for
    a degenerate vector unless `exact`) is a residual, without gradient. `centered`: `x`
    has a zero mean by construction, which is not subtracted again."""
    x32 = ops.cast(x, statistics_dtype(x))
    deviation = x32 if centered else x32 - _feature_mean(x32)
    variance = _feature_mean(ops.square(deviation))
    rstd = ops.rsqrt(variance + epsilon)
    gain = rstd
    if not exact:
        # mean(x̂²) = var/(var + ε) = var·rstd²: below DEGENERATE_POWER, x̂ is numerically 0.
        gain = rstd * ops.cast(variance * ops.square(rstd) >= DEGENERATE_POWER, rstd.dtype)
    # The statistics' own derivative is part of layer_standardize_backward's formula.
    deviation, rstd, gain = (ops.stop_gradient(v) for v in (deviation, rstd, gain))
    return _STANDARDIZED_BY[centered](x32, deviation, rstd, gain), gain


def _standardized_by_function(centered):
    """A function `(x, deviation, rstd, gain) -> deviation · rstd`, the standardized `x`
    (`deviation = x − mean(x)`, or `x` itself if `centered`, and `rstd` are `x`'s own,
    without gradient), differentiated by `layer_standardize_backward` as a function of
    `x`."""

    @ops.custom_gradient
    def standardized_by(x, deviation, rstd, gain):
        x_hat = deviation * rstd

        def gradient(*args, upstream=None):
            # TensorFlow and JAX pass the upstream gradient positionally, torch by keyword.
            if upstream is None:
                (upstream,) = args
            d = ops.cast(upstream, x_hat.dtype)
            return (
                layer_standardize_backward(d, x_hat, gain, centered),
                ops.zeros_like(deviation),
                ops.zeros_like(rstd),
                ops.zeros_like(gain),
            )

        return x_hat, gradient

    return standardized_by


_STANDARDIZED_BY = {False: _standardized_by_function(False), True: _standardized_by_function(True)}


def batch_moments(x, mask=None):
    """Per-feature batch moments `(count, mean, M2)` over the batch axis (axis 0), in
    float32 (float64 for float64 input); `M2` is the sum of squared deviations from the
    mean, so the biased variance is `M2 / count` (`moments_variance`).

    Every batch statistic of the package is carried in this form, and any two are combined
    with `merge_moments` (steps sharing a slot, replicas, recompute batches, the moving
    average).

    Args:
        x: `(batch, ...features)`, e.g. `(B, F)` for one step or `(B, T, F)` for a
            whole sequence, where each step gets its own statistics.
        mask: optional `(batch, ...)` of 0/1 (the leading axes of `x` without the
            features): samples with 0 are left out of the statistics.

    Returns:
        `(count, mean, M2)`: `count` the number of samples that took part, of shape
        `x.shape[1:-1]`; `mean` and `M2` of shape `x.shape[1:]`. Where no sample took
        part, all three are 0.
    """
    dtype = statistics_dtype(x)
    x32 = ops.cast(x, dtype)
    if mask is None:
        weights = ops.ones_like(x32[:, ..., :1])
    else:
        weights = ops.expand_dims(ops.cast(mask, dtype), -1)
    count = ops.sum(weights, axis=0)
    mean = ops.sum(x32 * weights, axis=0) / ops.maximum(count, 1.0)
    m2 = ops.sum(ops.square(x32 - mean) * weights, axis=0)
    return ops.squeeze(count, -1), mean, m2


def _tensors(moments):
    # NumPy moments (recompute's float64 totals) become tensors: on torch, an ndarray
    # and a tensor don't combine.
    return tuple(ops.convert_to_tensor(v) for v in moments)


def moments_variance(moments):
    """The biased variance `M2 / count` of `(count, mean, M2)` (0 where count is 0)."""
    count, _, m2 = _tensors(moments)
    return m2 / ops.maximum(ops.expand_dims(ops.cast(count, m2.dtype), -1), 1.0)


def moments_from_variance(count, mean, variance):
    """`(count, mean, M2)` from a mean and biased variance over `count` samples."""
    count = ops.cast(count, mean.dtype)
    return count, mean, variance * ops.expand_dims(count, -1)


def merge_moments(a, b):
    """The moments of the union of two disjoint sets of samples (Chan, Golub & LeVeque
    1979): `n = na + nb; δ = mb − ma; mean = ma + δ·nb/n; M2 = M2a + M2b + δ²·na·nb/n`.

    The one rule by which the package combines statistics. `a` and `b` are
    `(count, mean, M2)` with count of shape `(...)`, mean and M2 `(..., F)` (broadcasting);
    a count of 0 is an empty set (its mean and M2 are ignored).
    """
    na, ma, m2a = _tensors(a)
    nb, mb, m2b = _tensors(b)
    n = na + nb
    # nb/n and na·nb/n, safe where both sets are empty.
    share_b = ops.expand_dims(nb / ops.maximum(n, 1e-30), -1)
    delta = mb - ma
    mean = ma + delta * share_b
    m2 = m2a + m2b + ops.square(delta) * ops.expand_dims(na, -1) * share_b
    return n, mean, m2


def merge_moments_by_slot(moments, slots, num_slots):
    """Merges the moments of K steps into `num_slots` slots: slot s gets the merged moments
    of every step k with `slots[k] == s` (`merge_moments` over all of them at once, in
    closed form; zeros for a slot no step reached).

    Args:
        moments: `(count (K,), mean (K, F), M2 (K, F))`.
        slots: int `(K,)`; or float `(K, num_slots)`, the share of step k's samples that
            are at slot s (`slot_shares`), when a step's samples are at different slots.
        num_slots: number of slots S.

    Returns:
        `(count (S,), mean (S, F), M2 (S, F))`.
    """
    count, mean, m2 = _tensors(moments)
    dtype = mean.dtype
    count = ops.cast(count, dtype)
    # A step nobody took part in has no statistic: keep whatever it holds out.
    used = ops.expand_dims(count > 0, -1)
    mean = ops.where(used, mean, 0.0)
    m2 = ops.where(used, m2, 0.0)
    if len(slots.shape) == 1:
        shares = ops.one_hot(slots, num_slots, dtype=dtype)
    else:
        shares = ops.cast(slots, dtype)
    weights = ops.transpose(shares * count[:, None])  # (S, K): samples of step k in slot s
    slot_count = ops.sum(weights, axis=1)
    # Slot means, around the steps' overall mean `center` (a weighted mean of small numbers).
    center = ops.sum(count[:, None] * mean, axis=0) / ops.maximum(ops.sum(count), 1.0)
    slot_mean = center + ops.matmul(weights, mean - center) / ops.maximum(slot_count, 1.0)[:, None]
    # Chan's rule for many parts: the parts' M2 plus Σ_k w_sk·(m_k − c_s)², w_sk the samples
    # of step k at slot s, c_s the slot's mean. Each step's mean is taken relative to the
    # mean of its `home` slot (the one holding most of its samples), where it is
    # m_k − c_s itself: a sum of small squares, exact to rounding whatever the size of
    # the means. That is every part of a step whose samples are at one slot (every step,
    # unless samples carry different counters). (Around one center for all slots,
    # Σ w·δ² − n·δ̄² lost the digits of slots whose mean is far from it: drifting means.)
    home = ops.argmax(shares, axis=1)
    home_mean = ops.take(slot_mean, home, axis=0)  # (K, F)
    deviation = mean - home_mean
    spread = ops.matmul(ops.transpose(shares), m2 + count[:, None] * ops.square(deviation))
    # The parts away from home (a step split over several slots) add 2·d·e + e², with
    # e = home mean − c_s, expanded around `center` (float32 keeps ~6e-8·(distance of
    # those means from the center)²·samples of it).
    away = shares * (1.0 - ops.one_hot(home, num_slots, dtype=dtype)) * count[:, None]
    home_offset, slot_offset = home_mean - center, slot_mean - center
    parts = ops.concatenate(
        [2.0 * deviation * home_offset + ops.square(home_offset), deviation + home_offset], -1
    )
    width = mean.shape[-1]
    sums = ops.matmul(ops.transpose(away), parts)  # (S, 2F)
    away_count = ops.sum(away, axis=0)[:, None]
    spread = spread + sums[:, :width] - 2.0 * slot_offset * sums[:, width:] + away_count * ops.square(slot_offset)
    slot_m2 = ops.maximum(spread, 0.0)
    slot_mean = ops.where(slot_count[:, None] > 0, slot_mean, 0.0)
    return slot_count, slot_mean, slot_m2


def slot_shares(slots, mask, num_slots):
    """`(K, num_slots)`: the share of each step's counted samples at each slot, from every
    sample's `slots (B, K)` and `mask (B, K)` (0/1, `None` for all)."""
    steps = ops.shape(slots)[1]
    weights = ops.ones(ops.shape(slots)) if mask is None else ops.cast(mask, "float32")
    # Histogram of (step, slot) pairs, as a sum over the segments k·S + s.
    pairs = ops.expand_dims(ops.arange(steps, dtype="int32"), 0) * num_slots + ops.cast(slots, "int32")
    counts = ops.segment_sum(
        ops.reshape(ops.cast(weights, "float32"), (-1,)),
        ops.reshape(pairs, (-1,)),
        num_segments=steps * num_slots,
    )
    counts = ops.reshape(counts, (steps, num_slots))
    return counts / ops.maximum(ops.sum(counts, axis=-1, keepdims=True), 1.0)


def batch_normalize(x, mean, variance, gamma, beta=None, epsilon=1e-5):
    """`gamma * (x - mean) / sqrt(variance + epsilon) + beta`, in float32, cast back.

    `mean` and `variance` broadcast against `x` (one step: `(F,)` or `(B, F)`; a
    sequence: `(T, F)` against `(B, T, F)`).
    """
    x_hat, _ = _standardized(x, mean, variance, epsilon)
    return _gain_and_shift(x_hat, gamma, beta, x.dtype)


def _standardized(x, mean, variance, epsilon):
    """`(x̂, rstd)` of `x` with the given statistics, in float32 (float64 for float64)."""
    dtype = statistics_dtype(x)
    rstd = ops.rsqrt(ops.cast(variance, dtype) + epsilon)
    return (ops.cast(x, dtype) - ops.cast(mean, dtype)) * rstd, rstd


def normalizer_with(mean, variance, gamma, epsilon):
    """Batch normalization with given statistics (the population's at inference) as one
    scale per feature: `γ·(a − μ)/sqrt(σ² + ε) + β = (a − μ)·scale + β`,
    `scale = γ·rsqrt(σ² + ε)` (as `keras.layers.BatchNormalization` folds γ at inference;
    the deviation is still taken first, so a term far from zero keeps its precision).
    Returns `(mean, scale)` in the statistics' dtype, broadcasting as `mean`: computed
    once per slot before a loop, it leaves the step one subtraction and one product per
    term (docs/throughput.md, "BN inference")."""
    return mean, ops.cast(gamma, variance.dtype) * ops.rsqrt(variance + epsilon)


def step_slots(steps, max_timesteps):
    """Integer statistics slot of each step: `min(t, max_timesteps - 1)` (Cooijmans et al.
    2016, sec. 4: beyond T_max the statistics of T_max are used)."""
    steps = ops.cast(ops.round(ops.cast(steps, "float32")), "int32")
    return ops.clip(steps, 0, max_timesteps - 1)


def moving_average_update(moving_mean, moving_variance, moments, slots, momentum):
    """New population statistics `(mean, variance)`, `(max_timesteps, F)` each, after one
    batch whose K steps had the batch moments `moments` and the statistics `slots`.

    The steps are first merged per slot (`merge_moments_by_slot`). The old population
    statistics then count as a pseudo-sample of weight `w = N·momentum / (1 − momentum)`,
    N the batch's sample count (the largest count of any step), and each slot's batch
    moments are merged into it with `merge_moments`:

    - a step all N samples reached moves the mean as an EMA does,
      `m ← momentum·m + (1 − momentum)·μ_t`; a step reached by k of them moves it by
      `k / (k + w)` (every sample weighs the same, whatever its batch's padding);
    - the variance becomes the merged (total) variance, `δ²` term included: samples of
      different batches count with the spread between them, so a slot that one sample per
      batch reaches converges to the variance across those samples, not to 0;
    - a slot no step reached keeps its value.

    Args:
        moving_mean, moving_variance: current population statistics, `(max_timesteps, F)`.
        moments: the batch moments `(count (K,), mean (K, F), M2 (K, F))`.
        slots: int `(K,)`, the slot of each step, or `(K, max_timesteps)` slot shares
            (see `merge_moments_by_slot`).
        momentum: the moving average's momentum, in [0, 1).

    Returns:
        `(mean, variance)`, float32.
    """
    moving_mean = ops.cast(moving_mean, "float32")
    moving_variance = ops.cast(moving_variance, "float32")
    count, mean, m2 = (ops.cast(v, "float32") for v in moments)
    batch = merge_moments_by_slot((count, mean, m2), slots, moving_mean.shape[0])
    weight = ops.max(count, initial=0.0) * (momentum / (1.0 - momentum))
    weight = ops.broadcast_to(weight, ops.shape(batch[0]))
    old = (weight, moving_mean, moving_variance * ops.expand_dims(weight, -1))
    merged = merge_moments(old, batch)
    reached = ops.expand_dims(batch[0] > 0, -1)
    return (
        ops.where(reached, merged[1], moving_mean),
        ops.where(reached, moments_variance(merged), moving_variance),
    )


# -- a batch's statistics collected instead of moved into the population's ---------------

_open_collections = threading.local()


@contextlib.contextmanager
def collecting_batch_statistics(collection):
    """Opens a scope in which, in this thread, every batch-normalized cell normalizes with
    each batch's statistics even at inference (`training=False`), and hands the moments of
    every batch term to `collection` instead of moving its population statistics: how
    `recompute_population_statistics` gathers them without touching the model.

    The cell calls `collection.add(cell, moments, slots, step)`: `moments` a dict term ->
    `(count, mean, M2)` of K steps, `slots` as `update_statistics` takes them, `step` the
    step counter of a one-step call (inside `keras.layers.RNN`), `None` for a whole
    sequence. A scope (as Keras's own `StatelessScope`) rather than a flag on the cells:
    other threads that run the same model meanwhile (serving, say) are not affected, and
    nothing stays switched after an exception. Scopes nest; the enclosing one is back on
    exit.

    Args:
        collection: the object whose `add` receives the moments.

    Yields:
        `collection`.
    """
    enclosing = current_batch_statistics_collection()
    _open_collections.innermost = collection
    try:
        yield collection
    finally:
        _open_collections.innermost = enclosing


def current_batch_statistics_collection():
    """The collection of this thread's innermost open `collecting_batch_statistics` scope,
    `None` outside any."""
    return getattr(_open_collections, "innermost", None)


# -- standardization with its derivative, for the loops with hand-written gradients ----
#
# `x̂ = (x − mean) · rstd`, `rstd = 1 / sqrt(var + ε)`. The backward of a standardization,
# given d = ∂L/∂x̂ (the gain already applied), is `rstd · (d − mean(d) − x̂ · mean(d · x̂))`
# with the means over the same samples as the statistics. The LN cells' gate terms are
# products with kernels whose columns are centered per normalized block
# (`centered_columns`): their mean is 0 by construction, so the step skips subtracting it
# (`centered=True`), and the derivative, that of `x · rstd`, has no `mean(d)` term.
#
# Degenerate vectors. A constant vector (an all-zero input step, the zero state a zero
# sequence keeps) has var = 0 and x̂ = 0, and that derivative is rstd·(d − mean(d)) with
# rstd = 1/sqrt(ε) (316 at ε = 1e-5). Along a run of zero steps a recurrent cell applies it
# to h and c at every step, so the exact gradient grows ~10⁴× per step into inf and NaN.
# Where x̂'s mean square var/(var + ε) is below DEGENERATE_POWER (var below ~1e-6·ε:
# x̂ is numerically zero, and ε, not the data, sets the normalization's gain), the LN
# derivative is taken as 0: the normalized value is treated as a constant. Only where
# the derivative compounds along the recurrence (the LN of the recurrent term, of the
# cell state, of a sum with the recurrent term): the LN of the input term alone passes
# its derivative to x and the kernel once per step, bounded by γ/sqrt(ε), so it keeps
# the exact one at every scale (`exact=True`) — small inputs (x of size 1e-6 has
# var(x·kernel) far below ε) still learn. Everywhere else the derivative is the exact
# one. The choice and its reasons: docs/degenerate_inputs.md.

DEGENERATE_POWER = 1e-6


def layer_standardize(x, epsilon, centered=False, exact=False):
    """Standardizes over the last axis; returns `(x̂, gain)` in the dtype of `x`, gain of
    shape `(..., 1)`: rstd, or 0 for a degenerate vector, the factor of
    `layer_standardize_backward`. The statistics are taken in float32 under half
    precision. Under autodiff x̂ has the derivative of `layer_standardize_backward`.
    `centered=True` where `x` has a zero mean by construction (a product with
    `centered_columns` weights): the mean is not subtracted, and the derivative is that
    of `x·rstd`. `exact=True` where the derivative does not compound along a recurrence
    (the input term): the gain is rstd for a degenerate vector too, the exact derivative."""
    x_hat, gain = _layer_standardized(x, epsilon, centered, exact)
    return ops.cast(x_hat, x.dtype), ops.cast(gain, x.dtype)


def layer_standardize_backward(d, x_hat, gain, centered=False):
    """∂L/∂x from `d = ∂L/∂x̂` for `layer_standardize`, `gain` being its second result:
    the exact derivative, and 0 for a degenerate vector (mean(x̂²) < DEGENERATE_POWER,
    i.e. var < ~1e-6·ε; see above) standardized without `exact`."""
    projection = _feature_mean(d * x_hat)
    if not centered:
        d = d - _feature_mean(d)
    return gain * (d - x_hat * projection)


def centered_columns(kernel, widths):
    """`kernel` minus, in each block of output columns (of the given widths, in order),
    the block's mean column. `x·centered_columns(W)` is `x·W` less its mean over each
    block, which is what an LN of the block subtracts first: the step then standardizes
    the product with `centered=True` (one reduction fewer each way). Differentiable: the
    gradient of the centered kernel reaches `kernel` centered the same way."""
    blocks, start = [], 0
    for width in widths:
        block = kernel[:, start : start + width]
        blocks.append(block - _feature_mean(block))
        start += width
    return blocks[0] if len(blocks) == 1 else ops.concatenate(blocks, axis=-1)


def batch_standardize(x, epsilon, weights=None):
    """Standardizes over the batch axis of `x (B, F)`, counting sample b with
    `weights[b]` (0/1, shape `(B, 1)`; the mask of one step), or every sample for `None`.

    Returns `(x̂, rstd, mean, variance)`: x̂ and rstd `(F,)` in the dtype of `x`, mean
    and variance `(F,)` in float32 (float64 for float64 input). With no sample counted,
    mean and variance are 0 (and x̂ is unused by the caller).
    """
    moments = batch_moments(x, None if weights is None else weights[:, 0])
    mean, variance = moments[1], moments_variance(moments)
    x_hat, rstd = standardize_with(x, mean, variance, epsilon)
    return x_hat, rstd, mean, variance


def standardize_with(x, mean, variance, epsilon):
    """`(x̂, rstd)` of `x` with the given statistics (broadcasting against it), in the
    dtype of `x`; the arithmetic in float32 under half precision."""
    x_hat, rstd = _standardized(x, mean, variance, epsilon)
    return ops.cast(x_hat, x.dtype), ops.cast(rstd, x.dtype)


def batch_norm_backward(d, gamma, x_hat, rstd, weights):
    """The derivative of `gamma · x̂ (+ beta)`, x̂ from `batch_standardize` counting the
    samples with `weights (B, 1)`, from `d` its gradient: `(∂L/∂x, ∂L/∂γ, ∂L/∂β)`.
    The gain's and the shift's gradients are the two batch sums the standardization's
    derivative needs, so each is taken once. Uncounted samples get 0."""
    d = d * weights
    d_beta = ops.sum(d, axis=0)
    d_gamma = ops.sum(d * x_hat, axis=0)
    count = ops.maximum(ops.sum(weights), 1.0)
    dx = (weights * rstd * gamma) * (d - (d_beta + x_hat * d_gamma) / count)
    return dx, d_gamma, d_beta


# -- replicas (tf.distribute) ----------------------------------------------------------


def _replica_context():
    """The `tf.distribute` replica context when it has more than one replica, else None
    (another backend, no strategy, or cross-replica context such as an eager call under
    `strategy.scope()`, which sees the whole batch on one device)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def replicas_in_sync():
    """How many replicas run this code in step (1 outside a multi-replica context)."""
    context = _replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def cross_replica_moments(moments):
    """The global batch's `(count, mean, M2)` from each replica's, by two all-reduces.

    Under a `tf.distribute` strategy with several replicas (in replica context, as in
    `fit`), every replica gets the same global moments back (`sum_moments`: counts and
    sums first, then the squared deviations from the global mean); elsewhere the moments
    are returned as they are. Must run outside control flow (a `merge_call` inside a
    `tf.while_loop` is not supported on CPU). Differentiable: the gradient of an all-sum
    is the all-sum of the gradients, so a loss that reads these moments gets the
    gradient of the global batch's normalization.

    Args:
        moments: `(count (...,), mean (..., F), M2 (..., F))`.

    Returns:
        `(count, mean, M2)` of the same shapes, over every replica's samples.
    """
    context = _replica_context()
    if context is None:
        return moments
    return sum_moments(moments, lambda value: context.all_reduce("sum", value))


def sum_moments(moments, all_sum):
    """The moments of the union of several parts (replicas), each holding its own
    `(count, mean, M2)`, where `all_sum(v)` returns the sum of `v` over the parts (an
    all-reduce): `merge_moments` over all the parts, in a form that is stable in float32.

    Two sums. First the counts and `count·mean`: the global mean `m`. Then each part's
    M2 moved to `m`, `M2 + count·(mean − m)²` (the parallel-axis form of Chan's rule),
    and `count·(mean − m)`, whose total corrects `m` for its rounding (the corrected
    two-pass algorithm of Chan, Golub & LeVeque 1983). Every term is a deviation: a
    feature whose mean is far larger than its spread keeps its digits, where
    `Σx² − n·mean²` would lose them (a relative error of ~6e-8·(mean/spread)² in float32:
    6% at a mean 10³ times the spread, all of it at 4·10³).
    """
    count, mean, m2 = _tensors(moments)
    n = ops.expand_dims(ops.cast(count, mean.dtype), -1)
    totals = all_sum(ops.concatenate([n, n * mean], -1))
    total_count, safe_count = totals[..., :1], ops.maximum(totals[..., :1], 1e-30)
    rounded_mean = totals[..., 1:] / safe_count
    deviation = mean - rounded_mean
    width = mean.shape[-1]
    spreads = all_sum(ops.concatenate([n * deviation, m2 + n * ops.square(deviation)], -1))
    correction = spreads[..., :width] / safe_count
    global_m2 = ops.maximum(spreads[..., width:] - total_count * ops.square(correction), 0.0)
    return ops.cast(total_count[..., 0], count.dtype), rounded_mean + correction, global_m2


def cross_replica_shares(shares, count):
    """The global batch's `slot_shares` from each replica's `(K, S)` shares and its
    per-step sample `count (K,)` (one all-reduce of the samples per step and slot): a step
    that some replicas' samples don't reach gets the others' slots, on every replica."""
    context = _replica_context()
    if context is None:
        return shares
    samples = context.all_reduce("sum", shares * ops.expand_dims(ops.cast(count, shares.dtype), -1))
    return samples / ops.maximum(ops.sum(samples, axis=-1, keepdims=True), 1.0)
