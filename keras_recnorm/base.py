"""What every normalized cell and layer shares: arguments, validation, weights helpers,
dropout, config; a cell's Keras `call` derived from its step (`keras_recnorm.steps`); the
whole-sequence layer's loops.

The paper-specific parts (where and how the pre-activations are normalized) live in
`layer_norm.py` and the `batch_norm` package, the gate maths in `steps.py`.
"""

import inspect
import numbers

import keras
import numpy as np
from keras import activations, constraints, initializers, ops, regularizers
from keras.layers import Layer

from keras_recnorm.compat import DropoutRNNCell
from keras_recnorm.recurrence import LOOP_BACKENDS, forward_recurrence, recurrence


def _is_number(value, kind):
    """A Python or NumPy number of `kind` (`numbers.Integral`, `numbers.Real`), not a bool."""
    return isinstance(value, kind) and not isinstance(value, (bool, np.bool_))


def check_positive_int(name, value):
    """Returns `value` as a Python int (NumPy integers accepted: `lengths.max()`)."""
    if not _is_number(value, numbers.Integral) or value <= 0:
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected a positive "
            f"integer, got {value!r}."
        )
    return int(value)


def check_positive(name, value):
    """Returns `value` as a Python float."""
    if not _is_number(value, numbers.Real) or not value > 0:
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected a positive "
            f"number, got {value!r}."
        )
    return float(value)


def check_unit_interval(name, value):
    """A rate or momentum in [0, 1); returns it as a Python float."""
    if not _is_number(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected a float in "
            f"[0, 1), got {value!r}."
        )
    return float(value)


def check_numeric_inputs(layer, inputs):
    """Strings or booleans can't be projected: say so, and what to put in front."""
    dtype = keras.backend.standardize_dtype(inputs.dtype)
    if not ("float" in dtype or "int" in dtype):
        raise ValueError(
            f"{type(layer).__name__} expects numeric inputs (batch, timesteps, features), "
            f"got dtype {dtype}; for text, put TextVectorization and Embedding before it."
        )


class NormalizedCell(Layer, DropoutRNNCell):
    """Base of all cells: the arguments Keras's recurrent cells take, plus the
    normalization arguments (`epsilon`, `gamma_*`, `beta_*`).

    Subclasses create their weights in `build` and implement the step protocol
    (`keras_recnorm.steps`): `step_forward` and `step_backward`, over the weights tuple
    `weights_type` whose fields are their weights' names. `call`, Keras's one step, is
    `step_forward` with dropout; the whole-sequence layers run the same `step_forward` in
    their loops.
    """

    # The cell's weights tuple (keras_recnorm.steps): its fields are the weights' names.
    weights_type = None

    def __init__(
        self,
        units,
        activation="tanh",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        gamma_initializer="ones",
        beta_initializer="zeros",
        kernel_regularizer=None,
        recurrent_regularizer=None,
        bias_regularizer=None,
        gamma_regularizer=None,
        beta_regularizer=None,
        kernel_constraint=None,
        recurrent_constraint=None,
        bias_constraint=None,
        gamma_constraint=None,
        beta_constraint=None,
        dropout=0.0,
        recurrent_dropout=0.0,
        epsilon=1e-5,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("units", units)
        check_positive("epsilon", epsilon)
        check_unit_interval("dropout", dropout)
        check_unit_interval("recurrent_dropout", recurrent_dropout)
        self.units = int(units)  # a Python int (may be given as a NumPy integer)
        self.activation = activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_initializer = initializers.get(beta_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.recurrent_constraint = constraints.get(recurrent_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.gamma_constraint = constraints.get(gamma_constraint)
        self.beta_constraint = constraints.get(beta_constraint)
        self.dropout = float(dropout)
        self.recurrent_dropout = float(recurrent_dropout)
        self.epsilon = float(epsilon)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed=seed)
        self.output_size = units

    # -- weights ----------------------------------------------------------------------

    def add_kernels(self, input_shape, width):
        """`kernel (features, width)` and `recurrent_kernel (units, width)`, in that order,
        for steps of shape `input_shape` `(batch, features)`."""
        if len(input_shape) != 2:
            raise ValueError(
                f"{type(self).__name__} expects sequences of rank 3 (batch, timesteps, "
                f"features), i.e. steps of rank 2; got steps of shape {tuple(input_shape)}."
            )
        self.kernel = self.add_weight(
            shape=(input_shape[-1], width),
            name="kernel",
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, width),
            name="recurrent_kernel",
            initializer=self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
            constraint=self.recurrent_constraint,
        )

    def add_bias(self, width, forget_gate_bias=False):
        """`bias (width)`, or `None` without `use_bias`. `forget_gate_bias` starts the
        second quarter (the LSTM's forget gate, order i, f, g, o) at 1."""
        if not self.use_bias:
            self.bias = None
            return
        initializer = self.bias_initializer
        if forget_gate_bias:
            units, base = self.units, self.bias_initializer

            def initializer(shape, dtype=None):
                return ops.concatenate(
                    [
                        base((units,), dtype=dtype),
                        ops.ones((units,), dtype=dtype),
                        base((width - 2 * units,), dtype=dtype),
                    ]
                )

        self.bias = self.add_weight(
            shape=(width,),
            name="bias",
            initializer=initializer,
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint,
        )

    def add_gamma(self, name, width):
        return self.add_weight(
            shape=(width,),
            name=name,
            initializer=self.gamma_initializer,
            regularizer=self.gamma_regularizer,
            constraint=self.gamma_constraint,
        )

    def add_beta(self, name, width):
        return self.add_weight(
            shape=(width,),
            name=name,
            initializer=self.beta_initializer,
            regularizer=self.beta_regularizer,
            constraint=self.beta_constraint,
        )

    # -- dropout (Keras's DropoutRNNCell: one mask per sequence) ----------------------

    def dropped_inputs(self, inputs, training):
        mask = self.get_dropout_mask(inputs)
        if training and mask is not None:
            return inputs * mask
        return inputs

    def dropped_state(self, h, training):
        mask = self.get_recurrent_dropout_mask(h)
        if training and mask is not None:
            return h * mask
        return h

    # -- the cell protocol ----------------------------------------------------------

    def step_weights(self):
        """The cell's weights as `step_forward` takes them: a `weights_type` tuple, `None`
        for a weight the cell doesn't have (`bias` without `use_bias`)."""
        return self.weights_type._make(getattr(self, name) for name in self.weights_type._fields)

    def run_step(self, weights, x, states, training, **options):
        """`step_forward` as Keras's loop runs it, recurrent dropout applied to `h`: returns
        `(new_states, statistics)`."""
        states = tuple(states)
        h_in = self.dropped_state(states[0], training)
        new_states, _, statistics = self.step_forward(weights, x, h_in, states, **options)
        return list(new_states), statistics

    def call(self, inputs, states, training=False):
        check_numeric_inputs(self, inputs)
        states = states if isinstance(states, (list, tuple)) else [states]
        new_states, _ = self.run_step(
            self.step_weights(), self.dropped_inputs(inputs, training), states, training
        )
        return new_states[0], new_states

    def supports_fused_loop(self):
        """The hand-written step derivatives assume the default activations."""
        return self.activation is activations.tanh

    def get_initial_state(self, batch_size=None):
        sizes = self.state_size if isinstance(self.state_size, (list, tuple)) else [self.state_size]
        return [ops.zeros((batch_size, d), dtype=self.compute_dtype) for d in sizes]

    def get_config(self):
        config = {
            "units": self.units,
            "activation": activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": initializers.serialize(self.recurrent_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "gamma_initializer": initializers.serialize(self.gamma_initializer),
            "beta_initializer": initializers.serialize(self.beta_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "recurrent_regularizer": regularizers.serialize(self.recurrent_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
            "beta_regularizer": regularizers.serialize(self.beta_regularizer),
            "kernel_constraint": constraints.serialize(self.kernel_constraint),
            "recurrent_constraint": constraints.serialize(self.recurrent_constraint),
            "bias_constraint": constraints.serialize(self.bias_constraint),
            "gamma_constraint": constraints.serialize(self.gamma_constraint),
            "beta_constraint": constraints.serialize(self.beta_constraint),
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
            "epsilon": self.epsilon,
            "seed": self.seed,
        }
        return {**super().get_config(), **config}


class GatedCell(NormalizedCell):
    """Adds `recurrent_activation` (σ of the gates) to the shared arguments."""

    def __init__(self, units, recurrent_activation="sigmoid", **kwargs):
        super().__init__(units, **kwargs)
        self.recurrent_activation = activations.get(recurrent_activation)

    def get_config(self):
        config = super().get_config()
        config["recurrent_activation"] = activations.serialize(self.recurrent_activation)
        return config

    def add_lstm_weights(self, input_shape):
        """The weights both normalized LSTMs have, in their saved order: `kernel`,
        `recurrent_kernel`, `bias`, `input_gamma`, `recurrent_gamma` (4U each, gates
        i, f, g, o), `cell_gamma`, `cell_beta` (U)."""
        width = 4 * self.units
        self.add_kernels(input_shape, width)
        self.add_bias(width, forget_gate_bias=self.unit_forget_bias)
        self.input_gamma = self.add_gamma("input_gamma", width)
        self.recurrent_gamma = self.add_gamma("recurrent_gamma", width)
        self.cell_gamma = self.add_gamma("cell_gamma", self.units)
        self.cell_beta = self.add_beta("cell_beta", self.units)

    def supports_fused_loop(self):
        return super().supports_fused_loop() and self.recurrent_activation is activations.sigmoid


def check_known_arguments(layer, kwargs):
    """Arguments that neither the layer's cell nor a Keras layer takes: named as the
    layer's (the cell would report them as its own)."""
    known = set()
    for cls in type(layer).cell_class.__mro__:
        if "__init__" in vars(cls):
            known.update(inspect.signature(cls.__init__).parameters)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(
            f"Unrecognized keyword arguments passed to {type(layer).__name__}: {unknown}. It "
            f"takes the arguments of {type(layer).cell_class.__name__} and of keras.layers.RNN."
        )


# Keyword arguments that belong to the layer itself, not to its cell.
_LAYER_KWARGS = ("name", "dtype", "trainable", "autocast", "input_shape", "input_dim")


class NormalizedRNN(keras.layers.RNN):
    """Base of the whole-sequence layers: a `keras.layers.RNN` that owns its cell.

    Constructed like `keras.layers.LSTM`: the cell's arguments and the RNN's arguments
    in one call; the config is the cell's config plus the RNN's. Subclasses override
    `inner_loop` to run the cell's step in the loops of `keras_recnorm.recurrence`
    (`fused_loop`: training, with the step's hand-written derivative; `forward_loop`:
    inference), where they can.
    """

    cell_class = None

    def __init__(
        self,
        units,
        return_sequences=False,
        return_state=False,
        go_backwards=False,
        stateful=False,
        unroll=False,
        zero_output_for_mask=False,
        **kwargs,
    ):
        layer_kwargs = {key: kwargs.pop(key) for key in _LAYER_KWARGS if key in kwargs}
        # Regularizes the layer's output (not the cell's, nor the states: the step
        # counter is one), as keras.layers.LSTM's output without return_state.
        output_regularizer = regularizers.get(kwargs.pop("activity_regularizer", None))
        check_known_arguments(self, kwargs)
        cell = self.cell_class(
            units,
            dtype=layer_kwargs.get("dtype"),
            trainable=layer_kwargs.get("trainable", True),
            name="cell",
            **kwargs,
        )
        super().__init__(
            cell,
            return_sequences=return_sequences,
            return_state=return_state,
            go_backwards=go_backwards,
            stateful=stateful,
            unroll=unroll,
            zero_output_for_mask=zero_output_for_mask,
            **layer_kwargs,
        )
        self.output_regularizer = output_regularizer

    def build(self, sequences_shape, initial_state_shape=None):
        if len(sequences_shape) != 3:  # before the cell sees (and names) one step's shape
            raise ValueError(
                f"{type(self).__name__} expects sequences of rank 3 (batch, timesteps, "
                f"features); got shape {tuple(sequences_shape)}. For one step per sample, add "
                "a time axis of length 1."
            )
        super().build(sequences_shape, initial_state_shape)

    def call(self, sequences, initial_state=None, mask=None, training=False):
        check_numeric_inputs(self, sequences)
        result = self.run_recurrence(sequences, initial_state, mask, training)
        if self.output_regularizer is not None:
            self.add_loss(self.output_regularizer(result[0] if self.return_state else result))
        return result

    def run_recurrence(self, sequences, initial_state, mask, training):
        """`keras.layers.RNN.call`: the states, the loop (`inner_loop`), the outputs."""
        return super().call(sequences, initial_state=initial_state, mask=mask, training=training)

    @property
    def units(self):
        return self.cell.units

    def dropped_sequence(self, sequences, training):
        """Input dropout for the whole sequence: the cell's per-sequence mask (created by
        `RNN.call` from the first step), the same at every step."""
        mask = self.cell.get_dropout_mask(sequences[:, 0, :])
        if training and mask is not None:
            return sequences * ops.expand_dims(mask, 1)
        return sequences

    def uses_fused_loop(self):
        """Whether the cell's step derivative covers this layer: the cell's default
        activations (what its step derivative assumes), single or double precision, no
        `unroll`, on a backend the drivers run on (on torch the driver's Python loop is
        differentiated by autograd: faster than Keras's loop, which calls the cell as a
        layer at every step; docs/throughput.md, "torch"). The LN layers then run
        `fused_loop` (training) and `forward_loop` (inference), and Keras's loop over
        the cell otherwise; the BN layers run the drivers' loops either way (the
        backend differentiates where the derivative doesn't cover them)."""
        return (
            keras.backend.backend() in LOOP_BACKENDS
            and not self.unroll
            and self.cell.supports_fused_loop()
            and self.cell.compute_dtype in ("float32", "float64")
        )

    def fused_loop(self, inputs, states, mask, training, forward, backward, weights):
        """The recurrence over the step inputs `(B, T, F)` with the step's hand-written
        derivative (`keras_recnorm.recurrence`), from the state tuple `states` (`h` first;
        the LSTM: `(h, c)`, the GRU: `(h,)`). `forward`, `backward` and `weights`: the
        step protocol's (`keras_recnorm.steps`); `backward` `None`: the backend
        differentiates the loop. Returns `(hs, last_states, statistics)`:
        the `h` state after every step `(B, T, U)` (a padded step keeps the states), the
        state tuple after the last step, and the step's statistics, time-major."""
        recurrent_mask = self.cell.get_recurrent_dropout_mask(states[0]) if training else None
        step_mask = None
        if mask is not None:
            step_mask = ops.expand_dims(ops.transpose(ops.cast(mask, inputs.dtype)), -1)
        hs, last_states, statistics = recurrence(
            forward,
            backward,
            ops.transpose(inputs, (1, 0, 2)),
            step_mask,
            tuple(states),
            recurrent_mask,
            weights,
            unroll=self.unroll,
        )
        return ops.transpose(hs, (1, 0, 2)), last_states, statistics

    def forward_loop(self, inputs, states, mask, forward, weights):
        """`fused_loop` forward only (inference): no residuals kept, no statistics.
        `inputs` may be a tuple of batch-major per-step inputs of `forward`.
        Returns `(hs, last_states)`, `hs` `None` without `return_sequences`."""
        step_mask = None
        if mask is not None:
            step_mask = ops.expand_dims(ops.transpose(ops.cast(mask, states[0].dtype)), -1)
        if isinstance(inputs, tuple):
            inputs = tuple(ops.swapaxes(a, 0, 1) for a in inputs)
        else:
            inputs = ops.swapaxes(inputs, 0, 1)
        hs, last_states = forward_recurrence(
            forward, inputs, step_mask, tuple(states), weights, all_outputs=self.return_sequences,
            unroll=self.unroll,
        )
        return None if hs is None else ops.transpose(hs, (1, 0, 2)), last_states

    @staticmethod
    def zero_padding(sequences, mask):
        """`sequences` with the padded steps set to 0. A padded step keeps the state, so its
        input can't matter; zeroed, whatever it held (huge values, inf) can't reach a
        statistic, or turn a gradient into NaN."""
        return ops.where(ops.expand_dims(ops.cast(mask, "bool"), -1), sequences, 0)

    def outputs_from_states(self, hs, mask, last_h=None):
        """`(last_output, outputs)` as Keras's loop gives them from the states after every
        step: at a padded step the previous output (zeros before the first real step),
        or zeros with `zero_output_for_mask`. `hs` is `None` without `return_sequences`:
        then from `last_h`, the state after the last step (outputs: that one step)."""
        if hs is None:
            # Kept: after any real step; with zero_output_for_mask, a real last step.
            hs = ops.expand_dims(last_h, 1)
            if mask is not None:
                mask = ops.cast(mask, "bool")
                mask = mask[:, -1:] if self.zero_output_for_mask else ops.any(mask, axis=1, keepdims=True)
        if mask is None:
            return hs[:, -1], hs
        mask = ops.cast(mask, "bool")
        keep = ops.cumsum(ops.cast(mask, "int32"), axis=1) > 0
        if self.zero_output_for_mask:
            keep = ops.logical_and(keep, mask)
        outputs = ops.where(ops.expand_dims(keep, -1), hs, ops.zeros_like(hs))
        return outputs[:, -1], outputs

    def get_config(self):
        config = super().get_config()
        del config["cell"]
        cell_config = self.cell.get_config()
        for key in ("name", "dtype", "trainable"):
            cell_config.pop(key, None)
        if self.output_regularizer is not None:
            config["activity_regularizer"] = regularizers.serialize(self.output_regularizer)
        return {**config, **cell_config}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
