"""The one table of the kinds of cell this package offers.

Tests, example scripts and benchmarks read `KINDS` instead of keeping their own lists, so a
new cell is added here (and in its module) and every suite picks it up.

Example:

>>> from keras_recnorm.kinds import KINDS, kind
>>> kind("layer_norm_lstm").layer.__name__
'LayerNormLSTM'
>>> [k.name for k in KINDS if k.family == "batch_norm"]
['batch_norm_lstm', 'batch_norm_gru', 'batch_norm_simple_rnn']
"""

from typing import NamedTuple, Optional

from keras_recnorm.batch_norm import (
    BatchNormGRU,
    BatchNormGRUCell,
    BatchNormLSTM,
    BatchNormLSTMCell,
    BatchNormSimpleRNN,
    BatchNormSimpleRNNCell,
)
from keras_recnorm.layer_norm import (
    LayerNormGRU,
    LayerNormGRUCell,
    LayerNormLSTM,
    LayerNormLSTMCell,
    LayerNormSimpleRNN,
    LayerNormSimpleRNNCell,
)


class Kind(NamedTuple):
    """One kind of cell.

    Attributes:
        name: the name scripts take (`--cell layer_norm_lstm`).
        title: the short name in tables and plots (`LN-LSTM`).
        cell: the cell class, for `keras.layers.RNN(cell)`.
        layer: the whole-sequence layer class, or `None` where there is none yet.
        family: `"layer_norm"` or `"batch_norm"` (the BN family needs `max_timesteps`).
        recurrence: `"lstm"`, `"gru"` or `"simple_rnn"`: the equations after the
            normalization, and the state (`[h, c]`, `[h]`, `[h]`; BN adds the step counter).
        keras_twin: the matching Keras layer's name in `keras.layers` (`LSTM`, `GRU`,
            `SimpleRNN`), what benchmarks compare with.
    """

    name: str
    title: str
    cell: type
    layer: Optional[type]
    family: str
    recurrence: str
    keras_twin: str

    @property
    def batch_norm(self):
        return self.family == "batch_norm"


KINDS = (
    Kind("layer_norm_lstm", "LN-LSTM", LayerNormLSTMCell, LayerNormLSTM, "layer_norm", "lstm", "LSTM"),
    Kind("layer_norm_gru", "LN-GRU", LayerNormGRUCell, LayerNormGRU, "layer_norm", "gru", "GRU"),
    Kind("layer_norm_simple_rnn", "LN-SimpleRNN", LayerNormSimpleRNNCell, LayerNormSimpleRNN,
         "layer_norm", "simple_rnn", "SimpleRNN"),
    Kind("batch_norm_lstm", "BN-LSTM", BatchNormLSTMCell, BatchNormLSTM, "batch_norm", "lstm", "LSTM"),
    Kind("batch_norm_gru", "BN-GRU", BatchNormGRUCell, BatchNormGRU, "batch_norm", "gru", "GRU"),
    Kind("batch_norm_simple_rnn", "BN-SimpleRNN", BatchNormSimpleRNNCell, BatchNormSimpleRNN,
         "batch_norm", "simple_rnn", "SimpleRNN"),
)


def kind(name):
    """The `Kind` called `name`; a one-line ValueError for any other name."""
    for k in KINDS:
        if k.name == name:
            return k
    raise ValueError(
        f"Received an invalid value for argument `kind`, expected one of "
        f"{', '.join(k.name for k in KINDS)}, got {name!r}."
    )
