"""Shared numerics: layer normalization, per-step batch moments, moving averages.

Every cell and layer in the package normalizes through these few functions, so the
arithmetic (biased variance, epsilon inside the square root, float32 under mixed
precision) is written exactly once.
"""

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


def _layer_standardized(x, epsilon):
    """`(x̂, rstd)` over the last axis, in float32 (float64 for float64 input); x̂ has
    the derivative of `layer_standardize_backward`, rstd none (it is a residual)."""
    x32 = ops.cast(x, statistics_dtype(x))
    mean = ops.mean(x32, axis=-1, keepdims=True)
    centered = x32 - mean
    rstd = ops.rsqrt(ops.mean(ops.square(centered), axis=-1, keepdims=True) + epsilon)
    # The statistics' own derivative is part of layer_standardize_backward's formula.
    centered, rstd = ops.stop_gradient(centered), ops.stop_gradient(rstd)
    return _standardized_by(x32, centered, rstd), rstd


@ops.custom_gradient
def _standardized_by(x, centered, rstd):
    """`centered · rstd`, the standardized `x` (`centered = x − mean(x)` and `rstd` are
    `x`'s own, without gradient), differentiated by `layer_standardize_backward` as a
    function of `x`."""
    x_hat = centered * rstd

    def gradient(*args, upstream=None):
        # TensorFlow and JAX pass the upstream gradient positionally, torch by keyword.
        if upstream is None:
            (upstream,) = args
        d = ops.cast(upstream, x_hat.dtype)
        return (
            layer_standardize_backward(d, x_hat, rstd),
            ops.zeros_like(centered),
            ops.zeros_like(rstd),
        )

    return x_hat, gradient


def batch_moments(x, mask=None):
    """Per-feature mean and biased variance over the batch axis (axis 0), in float32 (float64
    for float64 input).

    Args:
        x: `(batch, ...features)`, e.g. `(B, F)` for one step or `(B, T, F)` for a
            whole sequence, where each step gets its own statistics.
        mask: optional `(batch, ...)` of 0/1 (the leading axes of `x` without the
            features): samples with 0 are left out of the statistics.

    Returns:
        `(mean, variance, count)`: `mean`/`variance` of shape `x.shape[1:]`, `count`
        the number of samples that took part, of shape `x.shape[1:-1]`. Where no sample
        took part, mean and variance are 0 (callers skip those updates).
    """
    dtype = statistics_dtype(x)
    x32 = ops.cast(x, dtype)
    if mask is None:
        mean = ops.mean(x32, axis=0)
        variance = ops.mean(ops.square(x32 - mean), axis=0)
        count = ops.sum(ops.ones_like(x32[..., 0]), axis=0)
        return mean, variance, count
    weights = ops.expand_dims(ops.cast(mask, dtype), -1)
    count = ops.sum(weights, axis=0)
    safe_count = ops.maximum(count, 1.0)
    mean = ops.sum(x32 * weights, axis=0) / safe_count
    variance = ops.sum(ops.square(x32 - mean) * weights, axis=0) / safe_count
    return mean, variance, ops.squeeze(count, -1)


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


def step_slots(steps, max_timesteps):
    """Integer statistics slot of each step: `min(t, max_timesteps - 1)` (Cooijmans et al.
    2016, sec. 4: beyond T_max the statistics of T_max are used)."""
    steps = ops.cast(ops.round(ops.cast(steps, "float32")), "int32")
    return ops.clip(steps, 0, max_timesteps - 1)


def moving_average_update(moving, slots, batch_value, count, momentum):
    """New value of a `(max_timesteps, F)` moving statistic after one batch.

    For every slot `s`, each step `k` with `slots[k] == s` and `count[k] > 0` applies
    `m_s <- momentum * m_s + (1 - momentum) * batch_value[k]`, in the order of `k`.
    Steps nobody took part in (all padding) leave their slot as it was.

    Args:
        moving: current moving statistic, `(max_timesteps, F)`.
        slots: int `(K,)`, the slot of each step.
        batch_value: `(K, F)`, the batch statistic of each step.
        count: `(K,)`, how many samples took part in each step's statistic.
        momentum: the EMA's momentum.

    Returns:
        The updated `(max_timesteps, F)` tensor (float32).
    """
    moving = ops.cast(moving, "float32")
    max_timesteps = moving.shape[0]
    used = ops.cast(count > 0, "float32")
    # An empty or all-padded step has no statistic (its mean may be NaN): never let it in.
    batch_value = ops.where(ops.expand_dims(used, -1) > 0, ops.cast(batch_value, "float32"), 0.0)
    # In closed form, for any number of steps (even unknown while tracing): a slot hit n
    # times keeps momentum**n of its old value, and the value of a step that is followed
    # by j more hits of its slot enters with (1 - momentum) * momentum**j.
    hits = ops.one_hot(slots, max_timesteps, dtype="float32") * ops.expand_dims(used, -1)
    hits_after = ops.flip(ops.cumsum(ops.flip(hits, 0), axis=0), 0) - hits
    later = ops.sum(hits_after * hits, axis=-1)
    weights = (1.0 - momentum) * ops.power(momentum, later) * used
    target = ops.matmul(ops.transpose(hits), ops.expand_dims(weights, -1) * batch_value)
    keep = ops.power(momentum, ops.sum(hits, axis=0))[:, None]
    return moving * keep + target


# -- standardization with its derivative, for the loops with hand-written gradients ----
#
# `x̂ = (x − mean) · rstd`, `rstd = 1 / sqrt(var + ε)`. The backward of a standardization,
# given d = ∂L/∂x̂ (the gain already applied), is `rstd · (d − mean(d) − x̂ · mean(d · x̂))`
# with the means over the same samples as the statistics.
#
# Degenerate vectors. A constant vector (an all-zero input step, the zero state a zero
# sequence keeps) has var = 0 and x̂ = 0, and that derivative is rstd·(d − mean(d)) with
# rstd = 1/sqrt(ε) (316 at ε = 1e-5). Along a run of zero steps a recurrent cell applies it
# to h and c at every step, so the exact gradient grows ~10⁴× per step into inf and NaN.
# Where x̂'s mean square var/(var + ε) is below DEGENERATE_POWER (var below ~1e-6·ε:
# x̂ is numerically zero, and ε, not the data, sets the normalization's gain), the LN
# derivative is taken as 0: the normalized value is treated as a constant. Everywhere
# else the derivative is the exact one. The choice and its reasons:
# docs/degenerate_inputs.md.

DEGENERATE_POWER = 1e-6


def layer_standardize(x, epsilon):
    """Standardizes over the last axis; returns `(x̂, rstd)` in the dtype of `x`, rstd of
    shape `(..., 1)`. The statistics are taken in float32 under half precision. Under
    autodiff x̂ has the derivative of `layer_standardize_backward`."""
    x_hat, rstd = _layer_standardized(x, epsilon)
    return ops.cast(x_hat, x.dtype), ops.cast(rstd, x.dtype)


def layer_standardize_backward(d, x_hat, rstd):
    """∂L/∂x from `d = ∂L/∂x̂` for `layer_standardize`: the exact derivative, and 0 for a
    degenerate vector (mean(x̂²) < DEGENERATE_POWER, i.e. var < ~1e-6·ε; see above)."""
    d_mean = ops.mean(d, axis=-1, keepdims=True)
    projection = ops.mean(d * x_hat, axis=-1, keepdims=True)
    power = ops.mean(ops.square(x_hat), axis=-1, keepdims=True)
    gain = rstd * ops.cast(power >= DEGENERATE_POWER, rstd.dtype)  # 0 if degenerate
    return gain * (d - d_mean - x_hat * projection)


def batch_standardize(x, epsilon, weights=None):
    """Standardizes over the batch axis of `x (B, F)`, counting sample b with
    `weights[b]` (0/1, shape `(B, 1)`; the mask of one step), or every sample for `None`.

    Returns `(x̂, rstd, mean, variance)`: x̂ and rstd `(F,)` in the dtype of `x`, mean
    and variance `(F,)` in float32 (float64 for float64 input). With no sample counted,
    mean and variance are 0 (and x̂ is unused by the caller).
    """
    mean, variance, _ = batch_moments(x, None if weights is None else weights[:, 0])
    x_hat, rstd = standardize_with(x, mean, variance, epsilon)
    return x_hat, rstd, mean, variance


def standardize_with(x, mean, variance, epsilon):
    """`(x̂, rstd)` of `x` with the given statistics (broadcasting against it), in the
    dtype of `x`; the arithmetic in float32 under half precision."""
    x_hat, rstd = _standardized(x, mean, variance, epsilon)
    return ops.cast(x_hat, x.dtype), ops.cast(rstd, x.dtype)


def batch_standardize_backward(d, x_hat, rstd, weights):
    """∂L/∂x from `d = ∂L/∂x̂` for `batch_standardize`; uncounted samples get 0."""
    count = ops.maximum(ops.sum(weights), 1.0)
    d = d * weights
    d_mean = ops.sum(d, axis=0) / count
    projection = ops.sum(d * x_hat, axis=0) / count
    return weights * rstd * (d - d_mean - x_hat * projection)
