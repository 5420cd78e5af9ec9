"""The recurrent layers the example scripts train, under one set of names.

Every script's `--cell` takes its names from `CELLS` (each offers the ones it supports):
every kind of `keras_recnorm.kinds.KINDS` that has a whole-sequence layer, under the
kind's name and title (`layer_norm_lstm`, `keras_recnorm.LayerNormLSTM`, "LN-LSTM"; ...),
after the plain Keras layers those kinds are compared with (`lstm`, `keras.layers.LSTM`,
"LSTM"; `gru`, `keras.layers.GRU`, "GRU"; ...). A kind added to the table is offered here
without an edit.

`layer_norm` and `batch_norm`, the names sentence_classification.py and sequential_mnist.py
used first, are aliases of `layer_norm_lstm` and `batch_norm_lstm` (`ALIASES`).

Example:

    group.add_argument("--cell", **cells.cell_option(("lstm", "layer_norm_lstm"),
                                                     default="lstm", help="recurrent layer"))
    layer = cells.recurrent_layer(args.cell, 64, max_timesteps=50, return_sequences=True)
"""

from __future__ import annotations

from typing import NamedTuple

import keras

from keras_recnorm.kinds import KINDS


class Cell(NamedTuple):
    title: str
    layer: type  # the layer class
    family: str | None  # "layer_norm", "batch_norm", or None for Keras's own layers
    recurrence: str  # "lstm", "gru" or "simple_rnn"


def _cells():
    """Keras's layers under their recurrence's name (`lstm`: `keras.layers.LSTM`), then the
    kinds' layers."""
    plain, ours = {}, {}
    for kind in KINDS:
        if kind.layer is None:
            continue
        twin = getattr(keras.layers, kind.keras_twin)
        plain.setdefault(kind.recurrence, Cell(kind.keras_twin, twin, None, kind.recurrence))
        ours[kind.name] = Cell(kind.title, kind.layer, kind.family, kind.recurrence)
    return {**plain, **ours}


CELLS = _cells()
ALIASES = {"layer_norm": "layer_norm_lstm", "batch_norm": "batch_norm_lstm"}
TITLES = {name: cell.title for name, cell in CELLS.items()}


def canonical(name):
    """The name of `CELLS` that `name` stands for (aliases resolved; others unchanged)."""
    return ALIASES.get(name, name)


def names(*, recurrence=None):
    """The names of `CELLS`, in order; those of one `recurrence` (`"lstm"`, ...) if given."""
    return tuple(name for name, cell in CELLS.items() if recurrence in (None, cell.recurrence))


def cell_option(offered, *, default, help, all_cells=False):
    """`add_argument` keywords for `--cell`: the `offered` names (plus `all` with
    `all_cells`), aliases accepted and listed in the help."""
    aliases = [f"{alias} = {name}" for alias, name in ALIASES.items() if name in offered]
    if aliases:
        help += f"; older names: {', '.join(aliases)}"
    return dict(type=canonical, choices=(*offered, *(("all",) if all_cells else ())),
                default=default, help=help)


def lookup(name):
    """The `Cell` of `name` (or of its alias); a one-line ValueError for any other name."""
    try:
        return CELLS[canonical(name)]
    except KeyError:
        raise ValueError(f"Received an invalid value for argument `cell`, expected one of "
                         f"{', '.join(CELLS)}, got {name!r}.") from None


def layer_class(name):
    return lookup(name).layer


def recurrent_layer(cell, units, *, max_timesteps=None, gamma=None, **kwargs):
    """A new recurrent layer of `cell`, `units` wide.

    Args:
        cell: a name of `CELLS` or an alias.
        units: hidden units.
        max_timesteps: the batch-normalized layers' number of per-step statistics (longer
            sequences use the last step's); required by them, ignored by the others.
        gamma: with the batch-normalized layers, the initial value of every γ
            (default: the layer's, 0.1); ignored by the others.
        **kwargs: passed to the layer (`return_sequences`, `name`, initializers, ...).
    """
    if lookup(cell).family == "batch_norm":
        if max_timesteps is None:
            raise ValueError(f"{canonical(cell)} needs max_timesteps, the number of "
                             "per-step statistics (usually the sequence length).")
        kwargs["max_timesteps"] = max_timesteps
        if gamma is not None:
            kwargs["gamma_initializer"] = keras.initializers.Constant(gamma)
    return layer_class(cell)(units, **kwargs)
