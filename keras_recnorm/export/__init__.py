"""Export for serving: versioned SavedModels for TensorFlow Serving, ONNX, and LiteRT.

Both formats hold the forward pass only, traced with `training=False`: batch-normalized
cells and layers serve with their population statistics, outputs are deterministic, and
the artifacts load where `keras_recnorm` (or Keras) is not installed.

The serving signature, the same in both formats:

- input `"inputs"`: the model's input with a dynamic batch dimension (`-1`), and a dynamic
  time dimension where the model declares one (`keras.Input(shape=(None, ...))`). A model
  whose input is a string (its first layer is `TextVectorization`) takes `tf.string` of
  shape `(None,)`: one raw sentence per example, so a client sends text, not token ids.
- output `"outputs"`: the model's output. A model with several outputs gives
  `"outputs_0"`, `"outputs_1"`, ... (or the keys of the dict it returns).

The SavedModel exposes this signature as `serving_default` (what TensorFlow Serving calls
when a request names none) and as `serve`.

A streaming model (`keras_recnorm.streaming.to_streaming`) is exported with its states:
inputs `"inputs"` (a chunk of time steps), `"state_0"`, `"state_1"`, ... and outputs
`"outputs"`, `"state_0"`, `"state_1"`, ... (the next states), each state `(batch, size)`;
half-precision states travel as float32 (docs/streaming.md).

The writers are apart from their verification; this package's modules:

- `saved_model`, `onnx_export`, `litert`: one writer each (`litert` also runs the files);
- `signature`: the names, input specs and traced functions that the formats share;
- `files`: where an export lands (staged, then moved into place; version directories);
- `verification`: probe batches, `model.predict`'s reference outputs, the comparison, and
  the fresh process that serves a SavedModel without `keras_recnorm` or Keras;
- `backend`: the TensorFlow import, the backend check, quiet logs.

Example:

```python
from keras_recnorm.export import export_saved_model

path = export_saved_model(model, "models/sentiment")  # -> ".../models/sentiment/1"
```
"""

# The public API (`__all__`), and the names that code written against the single module
# this package replaced imports from here too: the signature's names, the tolerances and
# probe sizes, the LiteRT runners.
from keras_recnorm.export.files import next_version
from keras_recnorm.export.litert import export_litert, litert_interpreter, run_litert
from keras_recnorm.export.onnx_export import export_onnx
from keras_recnorm.export.saved_model import export_saved_model
from keras_recnorm.export.signature import (
    ENDPOINT_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    SIGNATURE_NAME,
    serving_input_spec,
    streaming_input_specs,
)
from keras_recnorm.export.verification import (
    ATOL,
    PROBE_BATCH_SIZE,
    PROBE_LENGTHS,
    RTOL,
    VERIFY_TIMEOUT_S,
    ExportVerificationError,
)

__all__ = [
    "ExportVerificationError",
    "export_saved_model",
    "export_onnx",
    "export_litert",
    "serving_input_spec",
    "streaming_input_specs",
    "next_version",
]
