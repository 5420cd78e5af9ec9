"""The table of cell kinds agrees with the package it describes."""

import keras
import pytest

import keras_recnorm
from keras_recnorm.kinds import KINDS, kind
from tests import reference


def test_every_public_cell_and_layer_is_in_the_table():
    listed = {k.cell for k in KINDS} | {k.layer for k in KINDS if k.layer is not None}
    public = {
        getattr(keras_recnorm, name)
        for name in keras_recnorm.__all__
        if isinstance(getattr(keras_recnorm, name), type)
    }
    assert public == listed


@pytest.mark.parametrize("k", KINDS, ids=lambda k: k.name)
def test_kind_is_consistent(k):
    assert k.layer is None or k.layer.cell_class is k.cell
    assert hasattr(keras.layers, k.keras_twin)
    assert k.family in ("layer_norm", "batch_norm")
    assert k.recurrence in ("lstm", "gru", "simple_rnn")
    assert k.batch_norm == ("max_timesteps" in k.cell.__init__.__code__.co_varnames)


def test_unknown_kind_is_a_one_line_error():
    with pytest.raises(ValueError, match="expected one of layer_norm_lstm"):
        kind("lstm")


def test_every_kind_has_a_reference():
    for k in KINDS:
        assert callable(reference.for_kind(k)), k.name


def test_a_kind_without_a_reference_fails_loudly():
    """A new kind whose reference is not written yet fails every test that compares it,
    with this message, rather than being skipped."""
    unknown = KINDS[0]._replace(name="batch_norm_new", family="batch_norm", recurrence="new")
    with pytest.raises(LookupError, match="no reference for batch_norm_new .*REFERENCES"):
        reference.for_kind(unknown)
