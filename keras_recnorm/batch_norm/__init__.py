"""Recurrent batch normalization (Cooijmans et al. 2016, arXiv:1603.09025), one concern a
module: `cells` (the cell base and the LSTM, GRU and SimpleRNN cells with their step
derivatives), `layers` (the whole-sequence layers and their loops) and `recompute`
(population statistics from a dataset)."""

from keras_recnorm.batch_norm.cells import (
    BatchNormCell,
    BatchNormGRUCell,
    BatchNormLSTMCell,
    BatchNormSimpleRNNCell,
)
from keras_recnorm.batch_norm.layers import BatchNormGRU, BatchNormLSTM, BatchNormSimpleRNN
from keras_recnorm.batch_norm.recompute import recompute_population_statistics

__all__ = [
    "BatchNormCell",
    "BatchNormGRU",
    "BatchNormGRUCell",
    "BatchNormLSTM",
    "BatchNormLSTMCell",
    "BatchNormSimpleRNN",
    "BatchNormSimpleRNNCell",
    "recompute_population_statistics",
]
