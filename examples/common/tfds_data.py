"""Text classification data from TensorFlow Datasets, without surprises offline.

Three things TFDS does not do for a training script, done here:

- **Know within seconds whether data can be had.** Offline, `tfds.load` only gives up after
  about 3.5 minutes of download retries. `ensure_available` returns at once when the dataset
  is already prepared in `data_dir`, and otherwise probes the network for a few seconds and
  raises `DatasetUnavailable` with one line that says what to do.
- **Find the text and the label** among `info.features` (`find_text_and_label`), with an
  error that lists the candidates when the choice is ambiguous or impossible.
- **Pick splits** (`choose_splits`): train, then validation (or test) for evaluation, and a
  separate test split when there is one; when `info.splits` is empty, as under
  `tfds.testing.mock_data`, fall back to the conventional split names.

Example:

```python
builder = ensure_available("glue/sst2", data_dir="~/tensorflow_datasets")
text_key, label_key = find_text_and_label(builder.info.features)
splits = choose_splits(builder.info)
texts, labels = load_text_split("glue/sst2", splits.train, builder.data_dir_root,
                                text_key, label_key)
```
"""

from __future__ import annotations

import difflib
import os
import socket
import urllib.parse
from typing import NamedTuple

import numpy as np

from examples.common import text_data

# Hosts a TFDS download needs first: its own mirror of prepared datasets on GCS.
DEFAULT_PROBE_HOSTS = (("storage.googleapis.com", 443),)
# Split names tried, in order, when the dataset's metadata lists none (mock_data, or a builder
# whose metadata has not been downloaded).
CONVENTIONAL_SPLITS = ("train", "validation", "test")


class DatasetUnavailable(RuntimeError):
    """The dataset can't be loaded here; `str()` is one line saying why and what to do."""


class FeatureError(ValueError):
    """The text or label feature can't be determined; `str()` lists the candidates."""


class SplitChoice(NamedTuple):
    """Split names (TFDS split strings, slicing allowed) chosen for one run.

    `test` is None when the dataset has no test split distinct from `eval`.
    """

    train: str
    eval: str
    test: str | None


def _tfds():
    # Imported lazily: `import tensorflow_datasets` costs seconds and pulls in TensorFlow.
    import tensorflow_datasets as tfds

    return tfds


def is_mocked() -> bool:
    """True inside `tfds.testing.mock_data` (which patches `download_and_prepare`)."""
    tfds = _tfds()
    patched = tfds.core.dataset_builder.DatasetBuilder.download_and_prepare
    return "testing.mocking" in getattr(patched, "__module__", "")


def _proxy_endpoint():
    """(host, port) of the HTTPS proxy from the environment, if one is configured."""
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        value = os.environ.get(var)
        if value:
            parsed = urllib.parse.urlsplit(value if "://" in value else "http://" + value)
            if parsed.hostname:
                return parsed.hostname, parsed.port or 80
    return None


def network_reachable(hosts=DEFAULT_PROBE_HOSTS, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to any of `hosts` (or the HTTPS proxy) opens within `timeout`."""
    proxy = _proxy_endpoint()
    endpoints = [proxy] if proxy else list(hosts)
    for host, port in endpoints:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        except OSError:  # DNS failure, refused, unreachable, timeout
            continue
    return False


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
    """The TFDS data_dir that `tfds.load(data_dir=data_dir)` would use."""
    if data_dir is not None:
        return os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
    env = os.environ.get("TFDS_DATA_DIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def get_builder(name: str, data_dir=None):
    """`tfds.builder(name, data_dir=...)`; an unknown name raises `DatasetUnavailable`."""
    tfds = _tfds()
    try:
        return tfds.builder(name, data_dir=None if data_dir is None else resolve_data_dir(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        base = name.split("/")[0].split(":")[0]
        close = difflib.get_close_matches(base, tfds.list_builders(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise DatasetUnavailable(
            f"TFDS has no dataset named {name!r}.{hint} (Config names go after a slash, "
            "as in glue/sst2; `tfds.list_builders()` lists the datasets.)"
        ) from None
    except ValueError as error:  # e.g. an unknown config name of a known dataset
        raise DatasetUnavailable(f"TFDS can't build {name!r}: {_config_hint(name, error)}") from None


def _config_hint(name: str, error) -> str:
    tfds = _tfds()
    base = name.split("/")[0].split(":")[0]
    try:
        configs = list(getattr(tfds.builder_cls(base), "builder_configs", None) or [])
    except Exception:  # noqa: BLE001 - only for a better message
        configs = []
    if "/" in name and configs:
        return f"unknown config; {base}'s configs are {', '.join(configs)}."
    return _one_line(error)


def _one_line(error) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def ensure_available(
    name: str,
    data_dir=None,
    *,
    probe_timeout: float = 3.0,
    probe_hosts=DEFAULT_PROBE_HOSTS,
    local_option: str = "--train-file",
):
    """Returns the builder of `name` once it is known the data can be loaded.

    Returns at once when the dataset is prepared in `data_dir` or when TFDS is mocked
    (`tfds.testing.mock_data`). Otherwise probes the network (at most `probe_timeout` seconds
    per host) and raises `DatasetUnavailable` when it is unreachable, instead of letting TFDS
    retry its download for minutes. A reachable network means the caller may download
    (`tfds.load(..., download=True)` or `builder.download_and_prepare()`).

    Args:
        name: TFDS name, with config and version if wanted (`"glue/sst2"`, `"imdb_reviews"`).
        data_dir: TFDS data directory; None means TFDS's default (`$TFDS_DATA_DIR` or
            `~/tensorflow_datasets`).
        probe_timeout: seconds to wait for each TCP connection of the probe.
        probe_hosts: `(host, port)` pairs tried in turn; the HTTPS proxy from the environment
            is probed instead when one is configured.
        local_option: the caller's option for local files, named in the offline message.

    Raises:
        DatasetUnavailable: unknown name, or not prepared and no network.
    """
    builder = get_builder(name, data_dir)
    if is_mocked() or builder.is_prepared():
        return builder
    where = resolve_data_dir(data_dir)
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        raise DatasetUnavailable(
            f"{name} needs a manual download and is not prepared in {where}: prepare it "
            "there as its TFDS catalog page explains, or use local files."
        )
    if not network_reachable(probe_hosts, timeout=probe_timeout):
        raise DatasetUnavailable(
            f"{name} is not prepared in {where} and the network is unreachable, so TFDS "
            "can't download it: pass --data-dir with a prepared copy (e.g. one made by "
            f"`tfds build {name}` on a machine online), or use local files ({local_option})."
        )
    return builder


def _feature_items(features):
    return list(features.items()) if hasattr(features, "items") else []


def _is_text(feature) -> bool:
    tfds = _tfds()
    if isinstance(feature, tfds.features.Text):
        return True
    # Some datasets declare a plain scalar string tensor instead of `Text`.
    return (
        type(feature) is tfds.features.Tensor
        and tuple(feature.shape) == ()
        and np.dtype(feature.np_dtype).kind in "SUO"
    )


def _is_class_label(feature) -> bool:
    return isinstance(feature, _tfds().features.ClassLabel)


def find_text_and_label(
    features,
    text_key: str | None = None,
    label_key: str | None = None,
    *,
    text_option: str = "--text-key",
    label_option: str = "--label-key",
):
    """Detects the text feature and the `ClassLabel` feature of a dataset.

    Args:
        features: the dataset's top-level `FeaturesDict` (`info.features`).
        text_key, label_key: explicit choices; they are checked, not guessed.
        text_option, label_option: how the caller lets users choose (named in errors).

    Returns:
        `(text_key, label_key)`; `label_key` is None when the dataset has no `ClassLabel`
        and none was asked for (unsupervised text).

    Raises:
        FeatureError: a named key is missing or of the wrong kind; no text feature; several
        text or several `ClassLabel` features and no choice given.
    """
    items = _feature_items(features)
    names = [k for k, _ in items]
    texts = [k for k, f in items if _is_text(f)]
    labels = [k for k, f in items if _is_class_label(f)]

    def describe(keys):
        return ", ".join(repr(k) for k in keys) or "none"

    def check_chosen(key, option, candidates, kind, kind_name):
        if key not in names:
            raise FeatureError(
                f"Received {option} {key!r}, but the dataset has no such feature; "
                f"features: {describe(names)}."
            )
        if key not in candidates:
            raise FeatureError(
                f"Received {option} {key!r}, but that feature is {features[key]!r}, not "
                f"{kind}; {kind_name} features: {describe(candidates)}."
            )

    if text_key is not None:
        check_chosen(text_key, text_option, texts, "text", "text")
    elif len(texts) == 1:
        text_key = texts[0]
    elif not texts:
        raise FeatureError(
            f"The dataset has no text feature (features: {describe(names)}); it is not a "
            "text dataset."
        )
    else:
        raise FeatureError(
            f"The dataset has several text features ({describe(texts)}); choose one with "
            f"{text_option}."
        )

    if label_key is not None:
        check_chosen(label_key, label_option, labels, "a ClassLabel", "ClassLabel")
    elif len(labels) == 1:
        label_key = labels[0]
    elif len(labels) > 1:
        raise FeatureError(
            f"The dataset has several ClassLabel features ({describe(labels)}); choose one "
            f"with {label_option}."
        )
    return text_key, label_key


def class_names(features, label_key: str) -> list[str]:
    """The names of the classes of the `ClassLabel` feature `label_key`."""
    return list(features[label_key].names)


def split_names(info) -> list[str]:
    """Split names listed by the dataset's metadata, or the conventional ones when empty.

    `info.splits` is empty under `tfds.testing.mock_data` (no metadata ships offline);
    the mock answers any split name, so the conventional names are a safe stand-in.
    """
    try:
        names = list(info.splits.keys())
    except (AttributeError, TypeError):  # mock_data replaces SplitDict by a MagicMock
        names = []
    names = [n for n in names if isinstance(n, str)]
    return names or list(CONVENTIONAL_SPLITS)


def _first(names, prefix):
    if prefix in names:
        return prefix
    starting = [n for n in names if n.startswith(prefix)]
    return starting[0] if starting else None


def choose_splits(info, train_split: str | None = None, eval_split: str | None = None,
                  test_split: str | None = None) -> SplitChoice:
    """Chooses the training, evaluation and test splits.

    Defaults: `train`; for evaluation `validation` (or the first `validation*` split, as
    GLUE MNLI's `validation_matched`), else `test`; for test, `test` (or the first `test*`)
    when distinct from the evaluation split. Explicit names may use TFDS slicing
    (`train[:90%]`). Whether a test split is labeled (GLUE's are all −1) is checked when it
    is loaded, see `labels_are_unknown`.

    Raises:
        FeatureError: no training split can be found.
    """
    names = split_names(info)
    train = train_split or _first(names, "train")
    if train is None:
        raise FeatureError(
            f"The dataset has no 'train' split (splits: {', '.join(names)}); choose one with "
            "--train-split."
        )
    evaluation = eval_split or _first(names, "validation") or _first(names, "test")
    if evaluation is None:
        raise FeatureError(
            f"The dataset has no validation or test split (splits: {', '.join(names)}); "
            "choose one with --eval-split, e.g. --train-split 'train[:90%]' "
            "--eval-split 'train[90%:]'."
        )
    test = test_split or _first(names, "test")
    if test == evaluation:
        test = None
    return SplitChoice(train, evaluation, test)


def labels_are_unknown(labels) -> bool:
    """True when every label is −1 (TFDS's mark for an unlabeled test split, as in GLUE)."""
    labels = np.asarray(labels)
    return labels.size > 0 and bool(np.all(labels < 0))


def _decode(value) -> str:
    return text_data.decode(value) if isinstance(value, bytes) else str(value)


def load_text_split(
    name: str,
    split: str,
    data_dir,
    text_key: str,
    label_key: str | None,
    *,
    as_dataset: bool = False,
    limit: int | None = None,
    download: bool = True,
):
    """Loads one split as text and integer labels.

    Call `ensure_available` first: with `download=True` an unprepared dataset is downloaded.

    Args:
        name, split, data_dir: as for `tfds.load`.
        text_key, label_key: feature names (see `find_text_and_label`); `label_key=None`
            yields texts only.
        as_dataset: return a `tf.data.Dataset` of `(string, int64)` (or of strings) instead
            of Python lists.
        limit: keep only the first `limit` examples.
        download: passed to `tfds.load`.

    Returns:
        `(texts: list[str], labels: np.ndarray[int64])`, or `texts` alone when `label_key`
        is None; or the equivalent `tf.data.Dataset`.
    """
    tfds = _tfds()
    ds = tfds.load(
        name,
        split=split,
        data_dir=None if data_dir is None else resolve_data_dir(data_dir),
        download=download,
        shuffle_files=False,
    )
    if limit is not None:
        ds = ds.take(limit)
    if label_key is None:
        ds = ds.map(lambda ex: ex[text_key])
    else:
        ds = ds.map(lambda ex: (ex[text_key], ex[label_key]))
    if as_dataset:
        return ds
    if label_key is None:
        return [_decode(t) for t in tfds.as_numpy(ds)]
    texts, labels = [], []
    for text, label in tfds.as_numpy(ds):
        texts.append(_decode(text))
        labels.append(int(label))
    return texts, np.asarray(labels, dtype=np.int64)
