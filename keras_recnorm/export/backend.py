"""The TensorFlow that every writer runs on: imported on first use, required as the Keras
backend, and kept quiet while it writes."""

import contextlib
import logging

import keras


def import_tensorflow():
    """TensorFlow, imported on first use (the module, as `tf`)."""
    # Not at the top of the module, so that `import keras_recnorm` stays light under the
    # JAX and torch backends.
    import tensorflow as tf

    return tf


def require_tensorflow_backend(what):
    """Raises a `RuntimeError` that says how to export, unless Keras runs on TensorFlow."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"`{what}` needs the TensorFlow backend, but Keras runs on `{backend}`. "
            "A `.keras` file does not depend on the backend: load it in a process started "
            "with KERAS_BACKEND=tensorflow and export it there (or use "
            "`python export/export_model.py MODEL.keras BASE_DIR`)."
        )


@contextlib.contextmanager
def quiet_logs(logger):
    """Only the errors of `logger` (a `logging.Logger`) are logged inside the block."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
