"""The Example sections of the public classes run as written (doctest)."""

import doctest

import keras
import pytest

from keras_recnorm import batch_norm, kinds, layer_norm


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="outputs print TF shapes")
@pytest.mark.parametrize("module", [layer_norm, batch_norm, kinds], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
