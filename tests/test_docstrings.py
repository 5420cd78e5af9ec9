"""The Example sections of the public classes run as written (doctest)."""

import doctest

import keras
import pytest

from keras_recnorm import kinds, layer_norm
from keras_recnorm.batch_norm import cells, layers, recompute


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="outputs print TF shapes")
@pytest.mark.parametrize("module", [layer_norm, cells, layers, recompute, kinds], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
