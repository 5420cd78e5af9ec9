"""The LSTM recurrence of the whole-sequence layers, with a hand-written gradient
(TensorFlow backend).

Why: differentiating a `tf.while_loop` automatically keeps every intermediate of every
step in its own stack and runs several small ops backward per forward op; on a CPU those
op overheads, not the matmuls, were most of a normalized LSTM's training step. Here the
forward loop saves only what the backward step needs, and the backward loop is a second
`tf.while_loop` that accumulates the recurrent weights' gradients as loop carries.

A cell supplies the pair of step functions (its `step_forward` and `step_backward`); this
module owns the loops, the masking (a padded step keeps the state) and the recurrent
dropout mask, which are the same for every cell.
"""

import tensorflow as tf


def lstm_recurrence(forward, backward, inputs, mask, h0, c0, recurrent_mask, weights):
    """Runs an LSTM-like recurrence over time-major inputs, differentiable.

    Args:
        forward: `forward(weights, input_t, h_in, c, mask_t) -> (h_new, c_new,
            residuals, statistics)`; `h_in` is `h` with recurrent dropout applied,
            `residuals` a tuple of tensors the backward step needs, `statistics` a
            (possibly empty) tuple of per-step values returned without gradient.
        backward: `backward(weights, residuals, h_in, c, mask_t, dh_new, dc_new) ->
            (d_input_t, d_h_in, d_c, d_weights)`, the derivative of `forward`.
        inputs: `(T, B, F)`, every step's input as `forward` takes it (the LN-LSTM:
            `x`; the BN-LSTM: its normalized `x·kernel` plus bias).
        mask: `(T, B, 1)` 0/1 in the compute dtype (0: padding, the state is kept), or
            `None`.
        h0, c0: the initial state, `(B, U)` each.
        recurrent_mask: `(B, U)` recurrent dropout mask, or `None`.
        weights: tuple of tensors the step functions use (gradients flow to them).

    Returns:
        `(hs, c_last, statistics)`: `hs (T, B, U)` the `h` state after every step,
        `c_last` the final `c`, and every statistic stacked over the steps `(T, ...)`.
    """
    weights = tuple(weights)

    def step_mask(t):
        return None if mask is None else mask[t]

    def dropped(h):
        return h if recurrent_mask is None else h * recurrent_mask

    def keep_padded(m, new, old):
        return new if m is None else m * new + (1.0 - m) * old

    @tf.custom_gradient
    def run(inputs, h0, c0, *weights):
        steps = tf.shape(inputs)[0]

        def advance(t, h, c):
            """Step t: the new state, what the backward step reads (`h`, `c`, then the
            residuals) and what the loop returns (`h'`, then the statistics)."""
            m = step_mask(t)
            h_new, c_new, res, stats = forward(weights, inputs[t], dropped(h), c, m)
            h_new, c_new = keep_padded(m, h_new, h), keep_padded(m, c_new, c)
            return h_new, c_new, (h, c) + tuple(res), (h_new,) + tuple(stats)

        # Step 0 outside the loop: it tells how many residuals and statistics there are.
        h1, c1, saved, returned = advance(0, h0, c0)
        arrays = tuple(
            tf.TensorArray(v.dtype, size=steps, element_shape=v.shape).write(0, v)
            for v in saved + returned
        )

        def body(t, h, c, arrays):
            h_new, c_new, saved, returned = advance(t, h, c)
            values = saved + returned
            return t + 1, h_new, c_new, tuple(a.write(t, v) for a, v in zip(arrays, values))

        _, _, c_last, arrays = tf.while_loop(
            lambda t, *_: t < steps, body, (tf.constant(1), h1, c1, arrays)
        )
        h_prev, c_prev, *residual_arrays = arrays[: len(saved)]
        hs, *statistics = (a.stack() for a in arrays[len(saved) :])
        statistics = tuple(statistics)

        def gradient(d_hs, d_c_last, *unused_d_statistics):
            d_hs = tf.zeros_like(hs) if d_hs is None else d_hs
            dc0 = tf.zeros_like(c_last) if d_c_last is None else d_c_last
            d_inputs = tf.TensorArray(inputs.dtype, size=steps, element_shape=inputs.shape[1:])
            d_weights = tuple(tf.zeros_like(w) for w in weights)

            def backward_body(t, dh, dc, d_weights, d_inputs):
                m = step_mask(t)
                dh = dh + d_hs[t]
                h, c = h_prev.read(t), c_prev.read(t)
                res = tuple(a.read(t) for a in residual_arrays)
                dh_new, dc_new = (dh, dc) if m is None else (m * dh, m * dc)
                dp, dh_in, dc_in, dw = backward(weights, res, dropped(h), c, m, dh_new, dc_new)
                dh_before = dropped(dh_in)
                if m is not None:
                    dh_before += (1.0 - m) * dh
                    dc_in += (1.0 - m) * dc
                d_weights = tuple(a + b for a, b in zip(d_weights, dw))
                return t - 1, dh_before, dc_in, d_weights, d_inputs.write(t, dp)

            _, dh0, dc0, d_weights, d_inputs = tf.while_loop(
                lambda t, *_: t >= 0,
                backward_body,
                (steps - 1, tf.zeros_like(h0), dc0, d_weights, d_inputs),
            )
            return (d_inputs.stack(), dh0, dc0) + d_weights

        return (hs, c_last) + statistics, gradient

    outputs = run(inputs, h0, c0, *weights)
    return outputs[0], outputs[1], tuple(tf.stop_gradient(s) for s in outputs[2:])
