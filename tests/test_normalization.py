"""keras_recnorm.normalization: the shared numerics every cell normalizes through."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_recnorm import normalization
from tests import reference
from tests.conftest import to_numpy


# -- layer_norm -----------------------------------------------------------------------


@pytest.mark.parametrize("with_beta", [False, True])
def test_layer_norm_matches_reference(rng, with_beta):
    x = rng.normal(2.0, 3.0, (4, 5, 12)).astype("float32")
    gamma = rng.uniform(0.5, 1.5, 12).astype("float32")
    beta = rng.normal(0, 1, 12).astype("float32") if with_beta else None
    got = to_numpy(normalization.layer_norm(x, gamma, beta, epsilon=1e-5))
    want = reference.layer_norm(x.astype("float64"), gamma, beta, epsilon=1e-5)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_layer_norm_uses_biased_variance_and_epsilon_inside_sqrt():
    # Two features, values ±1: biased variance 1 (unbiased would be 2). With ε = 3 inside
    # the square root the result is ±1/sqrt(1 + 3) = ±0.5 exactly; ε outside would give
    # ±1/(1 + 3) and an unbiased variance ±1/sqrt(5).
    x = np.array([[-1.0, 1.0]], "float32")
    got = to_numpy(normalization.layer_norm(x, np.ones(2, "float32"), epsilon=3.0))
    np.testing.assert_allclose(got, [[-0.5, 0.5]], atol=1e-7)


def test_layer_norm_of_constant_is_beta():
    x = np.full((3, 8), 7.25, "float32")
    beta = np.arange(8, dtype="float32")
    got = to_numpy(normalization.layer_norm(x, np.full(8, 2.0, "float32"), beta))
    np.testing.assert_array_equal(got, np.broadcast_to(beta, (3, 8)))


def test_layer_norm_float16_is_computed_in_float32(rng):
    # 300² = 90000 overflows float16 (max 65504): a float16 sum of squares would be inf.
    x = (rng.normal(0, 1, (2, 64)) * 300).astype("float16")
    got = normalization.layer_norm(x, np.ones(64, "float16"))
    assert got.dtype == "float16"
    want = reference.layer_norm(x.astype("float64"), np.ones(64))
    np.testing.assert_allclose(to_numpy(got).astype("float64"), want, atol=1e-2)


def test_layer_norm_float64_keeps_float64_precision(rng):
    # Float64 models (e.g. for finite-difference gradient checks) must not be rounded to
    # float32 inside the normalization.
    x = rng.normal(0, 1, (3, 16))
    gamma = rng.uniform(0.5, 1.5, 16)
    got = normalization.layer_norm(ops.convert_to_tensor(x, "float64"),
                                   ops.convert_to_tensor(gamma, "float64"))
    assert got.dtype == "float64"
    np.testing.assert_allclose(to_numpy(got), reference.layer_norm(x, gamma),
                               atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("widths", [(12,), (8, 4)])
def test_centered_kernel_gives_the_layer_norm_and_its_gradients(rng, widths):
    """`x·centered_columns(W)` standardized with `centered=True` (what the LN cells' steps
    do) is the LN of each block of `x·W`, and its derivative, taken through the centering,
    is the LN's: for `x` and for `W`, in float64 (Keras's torch `matmul` and `mean` round
    float64 to float32: looser there)."""
    tolerance = 1e-6 if keras.backend.backend() == "torch" else 1e-12
    x, kernel, d = rng.normal(0, 1, (5, 6)), rng.normal(0.3, 1, (6, 12)), rng.normal(0, 1, (5, 12))
    centered = to_numpy(normalization.centered_columns(ops.convert_to_tensor(kernel, "float64"), widths))
    bounds = np.cumsum((0,) + widths)
    d_x_want, d_x_got = np.zeros_like(x), np.zeros_like(x)
    d_kernel_want, d_kernel_got = np.zeros_like(kernel), np.zeros_like(kernel)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        block, block_c, d_block = kernel[:, start:stop], centered[:, start:stop], d[:, start:stop]
        np.testing.assert_allclose(block_c.mean(-1), 0.0, atol=tolerance)
        want_hat, want_gain = normalization.layer_standardize(ops.convert_to_tensor(x @ block, "float64"), 1e-5)
        got_hat, got_gain = normalization.layer_standardize(
            ops.convert_to_tensor(x @ block_c, "float64"), 1e-5, centered=True
        )
        np.testing.assert_allclose(to_numpy(got_hat), to_numpy(want_hat), atol=tolerance)
        np.testing.assert_allclose(to_numpy(got_gain), to_numpy(want_gain), rtol=tolerance)
        # ∂L/∂(x·W) by the plain LN derivative; ∂L/∂(x·W_c) by the centered one.
        d_product = to_numpy(normalization.layer_standardize_backward(ops.convert_to_tensor(d_block, "float64"), want_hat, want_gain))
        d_product_c = to_numpy(
            normalization.layer_standardize_backward(ops.convert_to_tensor(d_block, "float64"), got_hat, got_gain, centered=True)
        )
        d_x_want += d_product @ block.T
        d_x_got += d_product_c @ block_c.T
        d_kernel_want[:, start:stop] = x.T @ d_product
        d_kernel_c = x.T @ d_product_c  # and back through W_c = W − mean(W):
        d_kernel_got[:, start:stop] = d_kernel_c - d_kernel_c.mean(-1, keepdims=True)
    np.testing.assert_allclose(d_x_got, d_x_want, rtol=100 * tolerance, atol=tolerance)
    np.testing.assert_allclose(d_kernel_got, d_kernel_want, rtol=100 * tolerance, atol=tolerance)


# -- batch statistics -----------------------------------------------------------------


def test_batch_moments_without_mask(rng):
    x = rng.normal(1.0, 2.0, (6, 5, 3)).astype("float32")
    count, mean, m2 = (to_numpy(v) for v in normalization.batch_moments(x))
    np.testing.assert_allclose(mean, x.mean(0), atol=1e-6)
    np.testing.assert_allclose(m2 / 6, x.var(0), atol=1e-5)  # M2 / n: the biased variance
    np.testing.assert_array_equal(count, np.full(5, 6.0))


def test_batch_moments_leave_masked_samples_out(rng):
    x = rng.normal(1.0, 2.0, (6, 5, 3)).astype("float32")
    mask = rng.random((6, 5)) > 0.4
    mask[:, 4] = False  # a step nobody took part in
    moments = normalization.batch_moments(x, mask)
    count, mean, m2 = (to_numpy(v) for v in moments)
    variance = to_numpy(normalization.moments_variance(moments))
    for t in range(5):
        rows = x[mask[:, t], t]
        assert count[t] == len(rows)
        if len(rows):
            np.testing.assert_allclose(mean[t], rows.mean(0), atol=1e-5)
            np.testing.assert_allclose(m2[t], ((rows - rows.mean(0)) ** 2).sum(0), atol=1e-4)
            np.testing.assert_allclose(variance[t], rows.var(0), atol=1e-5)
        else:
            np.testing.assert_array_equal(mean[t], 0.0)
            np.testing.assert_array_equal(variance[t], 0.0)


def test_batch_normalize(rng):
    x = rng.normal(0, 1, (4, 6)).astype("float32")
    mean, variance = rng.normal(0, 1, 6), rng.uniform(0.5, 2, 6)
    gamma, beta = rng.uniform(0.5, 1.5, 6), rng.normal(0, 1, 6)
    got = to_numpy(normalization.batch_normalize(
        x, mean.astype("float32"), variance.astype("float32"), gamma.astype("float32"),
        beta.astype("float32"), epsilon=1e-3))
    np.testing.assert_allclose(got, gamma * (x - mean) / np.sqrt(variance + 1e-3) + beta,
                               atol=1e-5)


def test_step_slots_clamp_to_last_slot():
    got = to_numpy(normalization.step_slots(np.array([0.0, 1.0, 2.0, 3.0, 9.0]), 3))
    np.testing.assert_array_equal(got, [0, 1, 2, 2, 2])


def _moments(samples):
    return (np.float32(len(samples)), samples.mean(0).astype("float32"),
            ((samples - samples.mean(0)) ** 2).sum(0).astype("float32"))


def test_merge_moments_equals_the_moments_of_the_union(rng):
    a, b = rng.normal(1, 2, (5, 3)), rng.normal(-2, 0.5, (2, 3))
    count, mean, m2 = (to_numpy(v) for v in normalization.merge_moments(_moments(a), _moments(b)))
    union = np.concatenate([a, b])
    assert count == 7
    np.testing.assert_allclose(mean, union.mean(0), atol=1e-5)
    np.testing.assert_allclose(m2 / 7, union.var(0), atol=1e-5)
    # An empty set changes nothing.
    empty = (np.float32(0.0), np.zeros(3, "float32"), np.zeros(3, "float32"))
    for merged in (normalization.merge_moments(_moments(a), empty),
                   normalization.merge_moments(empty, _moments(a))):
        for got, want in zip(merged, _moments(a)):
            np.testing.assert_allclose(to_numpy(got), want, atol=1e-5)


def test_merge_moments_by_slot_pools_the_steps_of_a_slot(rng):
    steps = [rng.normal(t, 1 + t, (n, 4)) for t, n in enumerate((3, 1, 0, 4, 2))]
    slots = np.array([0, 2, 2, 2, 2], "int32")
    moments = [np.stack(v) for v in zip(*(
        _moments(s) if len(s) else (np.float32(0), np.zeros(4, "float32"), np.zeros(4, "float32"))
        for s in steps))]
    count, mean, m2 = (to_numpy(v) for v in
                       normalization.merge_moments_by_slot(moments, slots, 3))
    np.testing.assert_array_equal(count, [3, 0, 7])
    pooled = np.concatenate(steps[1:])
    np.testing.assert_allclose(mean[2], pooled.mean(0), atol=1e-5)
    np.testing.assert_allclose(m2[2] / 7, pooled.var(0), atol=1e-4)
    np.testing.assert_allclose(mean[0], steps[0].mean(0), atol=1e-5)
    np.testing.assert_array_equal(mean[1], 0.0)


def slot_truth(moments, shares):
    """Float64 `merge_moments_by_slot`: slot s pools the parts (share·count, mean,
    share·M2) of every step, by Chan's rule for many parts."""
    count, mean, m2 = (np.asarray(v, "float64") for v in moments)
    weights = shares * count[:, None]
    slot_count = weights.sum(0)
    slot_mean = weights.T @ mean / np.maximum(slot_count, 1e-30)[:, None]
    spread = np.stack([(weights[:, s, None] * (mean - slot_mean[s]) ** 2).sum(0)
                       for s in range(shares.shape[1])])
    return slot_count, slot_mean, shares.T @ m2 + spread


@pytest.mark.parametrize("split", [False, True])
def test_merge_moments_by_slot_keeps_the_digits_of_drifting_means(rng, split):
    """Step means that drift by 100 per step, spread ~1 (float32): each slot's M2 to 1e-5
    relative (around one center for all steps it was up to ~1e-2 off). Slots as integers
    and as shares; `split`: two steps' samples half at the next slot (a stateful layer's
    samples with different counters), 1e-4."""
    steps, features, num_slots = 12, 5, 8
    count = rng.integers(2, 9, steps).astype("float32")
    mean = (100.0 * np.arange(steps)[:, None] + rng.normal(0, 1, (steps, features))).astype("float32")
    m2 = (count[:, None] * rng.uniform(0.5, 2, (steps, features))).astype("float32")
    slots = np.minimum(np.arange(steps), num_slots - 1)  # the last slot pools 5 steps
    shares = np.eye(num_slots)[slots]
    if split:
        for k in (0, 3):  # half of the samples one slot further
            shares[k, k] = shares[k, k + 1] = 0.5
            count[k] = 2 * (count[k] // 2)
    want = slot_truth((count, mean, m2), shares)
    for given in ([shares.astype("float32")] if split else [slots.astype("int32"), shares.astype("float32")]):
        got = [to_numpy(v) for v in normalization.merge_moments_by_slot((count, mean, m2), given, num_slots)]
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
        np.testing.assert_allclose(got[1], want[1], atol=1e-6 * np.abs(want[1]).max())
        # Parts away from a step's home slot: expanded around one center (documented).
        np.testing.assert_allclose(got[2], want[2], rtol=1e-4 if split else 1e-5)


def sum_over_parts(value):
    """The all-reduce of `sum_moments` for parts stacked on axis 0: the sum over them,
    handed back to every part."""
    return ops.broadcast_to(ops.sum(value, axis=0, keepdims=True), ops.shape(value))


@pytest.mark.parametrize("offset", [0.0, 1e3, 1e6])
def test_sum_moments_over_parts_equals_the_whole_batch_at_large_means(rng, offset):
    """Replicas' float32 moments (parts of 3, 2 and 0 samples per step) combined as by the
    all-reduce equal the whole batch's moments on one device and `merge_moments` over the
    parts, to 1e-5 relative, for features whose mean is 100 times their spread (float32
    rounds a mean of 1e6 to 0.06: the spread is what it resolves); `Σx² − n·mean²` would
    be ~1e-3 off there."""
    spread = max(offset / 100, 1.0)
    x = (offset + spread * rng.normal(0, 1, (5, 3, 4))).astype("float32")
    parts = (x[:3], x[3:], x[:0])
    moments = [normalization.batch_moments(part) for part in parts]
    stacked = [ops.stack(values) for values in zip(*moments)]
    count, mean, m2 = (to_numpy(v) for v in normalization.sum_moments(stacked, sum_over_parts))
    whole = [to_numpy(v) for v in normalization.batch_moments(x)]
    merged = normalization.merge_moments(normalization.merge_moments(moments[0], moments[1]), moments[2])
    for want in (whole, [to_numpy(v) for v in merged]):
        for part in range(3):  # every part holds the same result
            np.testing.assert_array_equal(count[part], want[0])
            np.testing.assert_allclose(mean[part], want[1], rtol=1e-6)
            np.testing.assert_allclose(m2[part], want[2], rtol=1e-5)


@pytest.mark.parametrize("num_steps", [3, 4, 9])  # fewer, as many, more steps than slots
def test_moving_average_update_matches_reference(rng, num_steps):
    """Against `reference.population_update` over each slot's pooled samples; steps
    without samples move nothing; a step of all N samples moves the mean as the EMA."""
    max_timesteps, momentum, features = 4, 0.9, 5
    moving_mean = rng.normal(0, 1, (max_timesteps, features))
    moving_variance = rng.uniform(0.5, 2, (max_timesteps, features))
    slots = np.minimum(np.arange(num_steps), max_timesteps - 1).astype("int32")
    counts = rng.integers(0, 4, num_steps)
    counts[0] = 4  # N = 4
    steps = [rng.normal(0, 1 + k, (n, features)) for k, n in enumerate(counts)]
    moments = [np.stack(v).astype("float32") for v in zip(*(
        _moments(s) if len(s) else (np.float32(0), np.zeros(features), np.zeros(features))
        for s in steps))]
    mean, variance = (to_numpy(v) for v in normalization.moving_average_update(
        moving_mean.astype("float32"), moving_variance.astype("float32"), moments, slots,
        momentum))
    for slot in range(max_timesteps):
        samples = [s for s, k in zip(steps, slots) if k == slot and len(s)]
        samples = np.concatenate(samples) if samples else np.zeros((0, features))
        want = reference.population_update(moving_mean[slot], moving_variance[slot], samples,
                                           counts.max(), momentum)
        np.testing.assert_allclose(mean[slot], want[0], atol=1e-5, err_msg=f"slot {slot}")
        np.testing.assert_allclose(variance[slot], want[1], atol=1e-5, err_msg=f"slot {slot}")
    np.testing.assert_allclose(
        mean[0], momentum * moving_mean[0] + (1 - momentum) * steps[0].mean(0), atol=1e-5)
