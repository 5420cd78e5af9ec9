"""The recurrence of the whole-sequence layers, with a hand-written gradient: one driver
for any cell's state tuple (LSTM: `(h, c)`, GRU: `(h,)`), on TensorFlow (`tf.while_loop`
with `tf.custom_gradient`) and on JAX (`lax.scan` with `jax.custom_vjp`); on torch, which
runs eagerly, a Python loop over the forward step that autograd differentiates. Where a
cell has no derivative for its activations or dtype, or the layer unrolls, the same loops
run without the custom gradient: the backend differentiates them.

Why: differentiating a `tf.while_loop` automatically keeps every intermediate of every
step in its own stack and runs several small ops backward per forward op; on a CPU those
op overheads, not the matmuls, were most of a normalized LSTM's training step. Here the
forward loop saves only what the backward step needs, and the backward loop is a second
`tf.while_loop` that accumulates the recurrent weights' gradients as loop carries. On
JAX the same step functions (written in `keras.ops`) run in two `lax.scan`s.

A cell supplies the pair of step functions, its `step_forward` and `step_backward`, as
the step protocol reads (`keras_recnorm.steps`: the signatures, the weights and residuals
tuples). This module knows nothing else of the cell: it owns the loops, the masking (a
padded step keeps every state) and the recurrent dropout mask (applied to `h`, the first
state), which are the same for every cell. The weights and residuals tuples may hold
`None` (a weight the cell doesn't have, a part applied before the loop): the loops carry
only their tensors (`_Fields`).
"""

import keras

# The backends the drivers run on.
LOOP_BACKENDS = ("tensorflow", "jax", "torch")


def recurrence(forward, backward, inputs, mask, initial_states, recurrent_mask, weights, unroll=False):
    """Runs a recurrence over time-major inputs, differentiable, on the Keras backend.

    Args:
        forward, backward: the step functions (`keras_recnorm.steps`); `backward` `None`
            where the cell has no derivative for its activations or dtype: the backend
            then differentiates the loop.
        inputs: `(T, B, F)`, every step's input `x` as `forward` takes it.
        mask: `(T, B, 1)` 0/1 in the compute dtype (0: padding, the states are kept), or
            `None`.
        initial_states: the state tuple before the first step, `h (B, U)` first.
        recurrent_mask: `(B, U)` recurrent dropout mask applied to `h`, or `None`.
        weights: the weights tuple the step functions take (gradients flow to its
            tensors).
        unroll: the steps as a Python loop (a fixed number of steps), differentiated by
            the backend: what `unroll=True` asks of a Keras recurrent layer.

    Returns:
        `(hs, last_states, statistics)`: `hs (T, B, U)` the `h` state after every step,
        the state tuple after the last step, and every statistic stacked over the
        steps `(T, ...)` (without gradient).
    """
    backend = keras.backend.backend()
    if unroll or backend == "torch":
        driver = _autograd_recurrence
    else:
        driver = _jax_recurrence if backend == "jax" else _tf_recurrence
    steps = _Steps(forward, backward, len(initial_states), weights)
    hs, tail, statistics = driver(
        steps, inputs, mask, tuple(initial_states), recurrent_mask, steps.flat_weights(weights)
    )
    statistics = tuple(keras.ops.stop_gradient(s) for s in statistics)
    return hs, (hs[-1],) + tuple(tail), statistics


def forward_recurrence(forward, inputs, mask, initial_states, weights, all_outputs=True, unroll=False):
    """`recurrence` forward only, for inference: no residuals saved, no statistics, no
    custom gradient (the backend can still differentiate the loop). `inputs` may also be
    a tuple of time-major tensors: `forward` then gets the tuple of their steps (the BN
    layers: each step's input, next slots and mask). Returns
    `(hs, last_states)`, `hs` `None` unless `all_outputs` (every step's `h` written only
    where it is returned: docs/throughput.md). `unroll`: as `recurrence`'s."""
    steps = _Steps(forward, None, len(initial_states), weights)
    initial_states, weights = tuple(initial_states), steps.flat_weights(weights)
    if unroll or keras.backend.backend() == "torch":
        return _python_forward_recurrence(steps, inputs, mask, initial_states, weights, all_outputs)
    if keras.backend.backend() == "jax":
        import jax

        def body(states, xs):
            x, m = xs
            new = steps.advance(weights, x, states, m, None)[0]
            return new, new[0] if all_outputs else None

        last_states, hs = jax.lax.scan(body, initial_states, (inputs, mask))
        return hs, last_states
    import tensorflow as tf

    h0 = initial_states[0]
    length = tf.shape(tf.nest.flatten(inputs)[0])[0]
    hs = tf.TensorArray(h0.dtype, size=length, element_shape=h0.shape) if all_outputs else ()

    def body(t, states, hs):
        m = None if mask is None else mask[t]
        x = tf.nest.map_structure(lambda a: a[t], inputs)
        new = steps.advance(weights, x, states, m, None)[0]
        return t + 1, new, hs.write(t, new[0]) if all_outputs else hs

    _, last_states, hs = tf.while_loop(
        lambda t, *_: t < length, body, (tf.constant(0), initial_states, hs)
    )
    return hs.stack() if all_outputs else None, last_states


def _autograd_recurrence(steps, inputs, mask, initial_states, recurrent_mask, weights):
    """`recurrence` as a Python loop, differentiated by the backend: on torch (eager: the
    step derivative would save no kernel launches), and for `unroll` on any backend."""
    returned, states = _python_loop(steps, inputs, mask, initial_states, weights, recurrent_mask)
    hs, *statistics = (keras.ops.stack(values) for values in zip(*returned))
    return hs, states[1:], statistics


def _python_forward_recurrence(steps, inputs, mask, states, weights, all_outputs):
    """`forward_recurrence` as a Python loop (torch; `unroll`)."""
    returned, states = _python_loop(steps, inputs, mask, states, weights, None)
    return (keras.ops.stack([r[0] for r in returned]) if all_outputs else None), states


def _python_loop(steps, inputs, mask, states, weights, recurrent_mask):
    """The steps in a Python loop (torch runs eagerly: there is no graph loop to build;
    with `unroll` the graph holds every step). `inputs` a time-major tensor or tuple of
    them. Returns what each step returns (`h'`, then the statistics) and the final
    states."""
    # The steps' inputs unstacked, not sliced: the gradient of a slice `inputs[t]` is a
    # whole `(T, B, F)` tensor for every step, that of an unstack one stack.
    if isinstance(inputs, tuple):
        step_inputs = list(zip(*(keras.ops.unstack(a, axis=0) for a in inputs)))
    else:
        step_inputs = keras.ops.unstack(inputs, axis=0)
    step_masks = [None] * len(step_inputs) if mask is None else keras.ops.unstack(mask, axis=0)
    returned = []
    for x, m in zip(step_inputs, step_masks):
        states, _, step_returned = steps.advance(weights, x, states, m, recurrent_mask)
        returned.append(step_returned)
    return returned, states


def keep_padded(m, new, old):
    """A padded step (`m` 0) keeps the old state."""
    return new if m is None else m * new + (1.0 - m) * old


class _Fields:
    """Which fields of a weights or residuals tuple are tensors, and which `None`: the
    loops carry only the tensors (`flat`), the step functions get the tuple (`restore`)."""

    def __init__(self, example):
        self.make = getattr(type(example), "_make", tuple)
        self.names = getattr(type(example), "_fields", range(len(example)))
        self.present = tuple(value is not None for value in example)

    def flat(self, values):
        for name, value, present in zip(self.names, values, self.present):
            if present and value is None:  # else the gradients would shift to other weights
                raise ValueError(f"The step returned no gradient for its weight `{name}`.")
        return tuple(value for value, present in zip(values, self.present) if present)

    def restore(self, flat):
        values = iter(flat)
        return self.make(next(values) if present else None for present in self.present)


class _Steps:
    """One step forward and one step backward with the masking and the recurrent dropout
    applied: what both drivers run in their loops."""

    def __init__(self, forward, backward, n_states, weights):
        self.forward, self.backward, self.n_states = forward, backward, n_states
        self.weights = _Fields(weights)
        self.residuals = None  # known after the first forward step

    def flat_weights(self, weights):
        """The weights' tensors, each a tensor and not a variable: `tf.custom_gradient`
        must not see a variable read inside."""
        return tuple(keras.ops.copy(w) for w in self.weights.flat(weights))

    @staticmethod
    def dropped(h, recurrent_mask):
        return h if recurrent_mask is None else h * recurrent_mask

    def advance(self, weights, x, states, m, recurrent_mask):
        """The new states, what the backward step reads (the states, then the
        residuals' tensors) and what the loop returns (`h'`, then the statistics)."""
        h_in = self.dropped(states[0], recurrent_mask)
        new, residuals, statistics = self.forward(self.weights.restore(weights), x, h_in, states, m)
        new = tuple(keep_padded(m, a, b) for a, b in zip(new, states))
        self.residuals = _Fields(residuals)
        # Without a backward step (inference; the backend differentiates) nothing is saved.
        saved = ((), ()) if self.backward is None else (states, self.residuals.flat(residuals))
        return new, saved, (new[0],) + tuple(statistics)

    def retreat(self, weights, d_states, d_h, states, residuals, m, recurrent_mask):
        """From the gradients of the states after the step (`d_h` that of the step's
        output `h'`): those of the states before it, of the step's input and of the
        weights' tensors."""
        d_states = (d_states[0] + d_h,) + tuple(d_states[1:])
        d_new = d_states if m is None else tuple(m * d for d in d_states)
        h_in = self.dropped(states[0], recurrent_mask)
        dx, dh_in, d_direct, dw = self.backward(
            self.weights.restore(weights), self.residuals.restore(residuals), h_in, states, m, d_new
        )
        d_before = tuple(
            # What reaches a state before the step: through the step (h also through
            # h_in), and, where the step is padding, the kept state's gradient.
            (self.dropped(dh_in, recurrent_mask) if k == 0 else 0.0)
            + (0.0 if d_direct[k] is None else d_direct[k])
            + (0.0 if m is None else (1.0 - m) * d_states[k])
            for k in range(self.n_states)
        )
        return d_before, dx, self.weights.flat(dw)


def _tf_recurrence(steps, inputs, mask, initial_states, recurrent_mask, weights):
    """`recurrence` on TensorFlow: `(hs, final states after h, statistics)`."""
    import tensorflow as tf

    n_states = steps.n_states

    def step_mask(t):
        return None if mask is None else mask[t]

    def run(inputs, *states_and_weights):
        states0, weights = states_and_weights[:n_states], states_and_weights[n_states:]
        length = tf.shape(inputs)[0]
        if steps.backward is None:
            # TensorFlow differentiates the loop: the gradient of a slice `inputs[t]` is a
            # whole `(T, B, F)` tensor at every step, that of a TensorArray read one step's
            # (with the step derivative the slice measured faster: docs/throughput.md).
            input_steps = tf.TensorArray(inputs.dtype, size=length, element_shape=inputs.shape[1:])
            input_at = input_steps.unstack(inputs).read
        else:
            def input_at(t):
                return inputs[t]

        # Step 0 outside the loop: it tells how many residuals and statistics there are.
        states1, (saved_states, residuals), returned = steps.advance(
            weights, input_at(0), states0, step_mask(0), recurrent_mask
        )
        saved = saved_states + residuals
        arrays = tuple(
            tf.TensorArray(v.dtype, size=length, element_shape=v.shape).write(0, v)
            for v in saved + returned
        )

        def body(t, states, arrays):
            new, (saved_states, residuals), returned = steps.advance(
                weights, input_at(t), states, step_mask(t), recurrent_mask
            )
            values = saved_states + residuals + returned
            return t + 1, new, tuple(a.write(t, v) for a, v in zip(arrays, values))

        # Differentiated by TensorFlow, under XLA the loop needs its bound (the gradient's
        # stacks are fixed-size lists there).
        bound = length if steps.backward is None else None
        _, last_states, arrays = tf.while_loop(
            lambda t, *_: t < length, body, (tf.constant(1), states1, arrays),
            maximum_iterations=bound,
        )
        state_arrays, residual_arrays = arrays[:n_states], arrays[n_states : len(saved)]
        hs, *statistics = (a.stack() for a in arrays[len(saved) :])
        outputs = (hs,) + tuple(last_states[1:]) + tuple(statistics)
        if steps.backward is None:  # the backend differentiates the loop
            return outputs

        def gradient(d_hs, *d_rest):
            # d_rest: the final states after h (h's is in d_hs), then the statistics'.
            d_hs = tf.zeros_like(hs) if d_hs is None else d_hs
            d_last = (tf.zeros_like(states0[0]),) + tuple(
                tf.zeros_like(s) if d is None else d
                for s, d in zip(last_states[1:], d_rest[: n_states - 1])
            )
            d_inputs = tf.TensorArray(inputs.dtype, size=length, element_shape=inputs.shape[1:])
            d_weights = tuple(tf.zeros_like(w) for w in weights)

            def backward_body(t, d_states, d_weights, d_inputs):
                states = tuple(a.read(t) for a in state_arrays)
                residuals = tuple(a.read(t) for a in residual_arrays)
                d_before, dx, dw = steps.retreat(
                    weights, d_states, d_hs[t], states, residuals, step_mask(t), recurrent_mask
                )
                d_weights = tuple(a + b for a, b in zip(d_weights, dw))
                return t - 1, d_before, d_weights, d_inputs.write(t, dx)

            _, d_states0, d_weights, d_inputs = tf.while_loop(
                lambda t, *_: t >= 0, backward_body, (length - 1, d_last, d_weights, d_inputs)
            )
            return (d_inputs.stack(),) + tuple(d_states0) + tuple(d_weights)

        return outputs, gradient

    outputs = (run if steps.backward is None else tf.custom_gradient(run))(
        inputs, *initial_states, *weights
    )
    return outputs[0], outputs[1:n_states], outputs[n_states:]


def _jax_recurrence(steps, inputs, mask, initial_states, recurrent_mask, weights):
    """`recurrence` on JAX: `(hs, final states after h, statistics)`. The mask and the
    recurrent dropout mask are arguments of the `custom_vjp` function (it must not close
    over traced values); they get no gradient."""
    import jax
    import jax.numpy as jnp

    def scan_forward(inputs, states0, weights, mask, recurrent_mask):
        def body(states, xs):
            x, m = xs
            new, saved, returned = steps.advance(weights, x, states, m, recurrent_mask)
            return new, (saved, returned)

        last, (saved, returned) = jax.lax.scan(body, states0, (inputs, mask))
        return (returned[0], last[1:], returned[1:]), saved

    @jax.custom_vjp
    def run(inputs, states0, weights, mask, recurrent_mask):
        return scan_forward(inputs, states0, weights, mask, recurrent_mask)[0]

    def run_forward(inputs, states0, weights, mask, recurrent_mask):
        outputs, saved = scan_forward(inputs, states0, weights, mask, recurrent_mask)
        return outputs, (saved, weights, mask, recurrent_mask)

    def run_backward(saved, d_outputs):
        (saved_states, residuals), weights, mask, recurrent_mask = saved
        d_hs, d_tail, _ = d_outputs
        d_last = (jnp.zeros_like(d_hs[0]),) + tuple(d_tail)
        zero_weights = tuple(jnp.zeros_like(w) for w in weights)

        def body(carry, xs):
            d_states, d_weights = carry
            d_h, states, residuals, m = xs
            d_before, dx, dw = steps.retreat(weights, d_states, d_h, states, residuals, m, recurrent_mask)
            return (d_before, tuple(a + b for a, b in zip(d_weights, dw))), dx

        (d_states0, d_weights), d_inputs = jax.lax.scan(
            body, (d_last, zero_weights), (d_hs, saved_states, residuals, mask), reverse=True
        )
        no_gradient = lambda x: None if x is None else jnp.zeros_like(x)  # noqa: E731
        return d_inputs, d_states0, d_weights, no_gradient(mask), no_gradient(recurrent_mask)

    if steps.backward is None:  # the backend differentiates the loop
        return scan_forward(inputs, initial_states, weights, mask, recurrent_mask)[0]
    run.defvjp(run_forward, run_backward)
    return run(inputs, initial_states, weights, mask, recurrent_mask)
