"""Normalized recurrent cells for Keras 3.

Layer normalization (Ba, Kiros & Hinton 2016) and recurrent batch normalization with
per-time-step statistics (Cooijmans et al. 2016), as cells for `keras.layers.RNN`.
"""

# Imported so that their classes are registered for `.keras` loading (the Addons-compatible
# cells, a streaming model's layers).
from keras_recnorm import addons, streaming  # noqa: F401
from keras_recnorm.batch_norm import (
    BatchNormGRU,
    BatchNormGRUCell,
    BatchNormLSTM,
    BatchNormLSTMCell,
    BatchNormSimpleRNN,
    BatchNormSimpleRNNCell,
    recompute_population_statistics,
)
from keras_recnorm.layer_norm import (
    LayerNormGRU,
    LayerNormGRUCell,
    LayerNormLSTM,
    LayerNormLSTMCell,
    LayerNormSimpleRNN,
    LayerNormSimpleRNNCell,
)

__version__ = "0.2.0"

__all__ = [
    "LayerNormLSTMCell",
    "LayerNormGRUCell",
    "LayerNormSimpleRNNCell",
    "LayerNormLSTM",
    "LayerNormGRU",
    "LayerNormSimpleRNN",
    "BatchNormLSTMCell",
    "BatchNormGRUCell",
    "BatchNormSimpleRNNCell",
    "BatchNormLSTM",
    "BatchNormGRU",
    "BatchNormSimpleRNN",
    "recompute_population_statistics",
]
