"""Sentence classification data from local files, and cross-validation folds.

Two formats, detected from the first line:

- `label sentence` per line (the format of the SST-2 / MR / CR files of Kim 2014's
  `stsa.binary.*`, `rt-polarity.all`, `custrev.all`): the label is the first
  whitespace-separated token.
- A TSV with a header naming a `sentence` (or `text`) column and a `label` column, as
  GLUE's `SST-2/train.tsv`.

Lines are decoded as UTF-8, falling back to Latin-1 per line: the MR and CR files mix both.
Errors are `DataError`s whose `str()` is one line naming the file and the line.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

TEXT_COLUMNS = ("sentence", "text")
LABEL_COLUMNS = ("label",)


class DataError(ValueError):
    """A data file can't be used; `str()` is one line naming the file (and line)."""


class LabeledText(NamedTuple):
    texts: list[str]
    labels: list[str]  # raw label strings, as in the file; see `encode_labels`
    skipped: int = 0  # lines with a label but no sentence (custrev.all has 4)


def decode(raw: bytes) -> str:
    """`raw` as UTF-8, else as Latin-1 (every byte string is valid Latin-1): the sentence
    files of the examples are one or the other, sometimes line by line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_text(path: str | os.PathLike) -> str:
    """The whole file at `path`, decoded by `decode`."""
    with open(path, "rb") as f:
        return decode(f.read())


def read_labeled_sentences(path: str | os.PathLike) -> LabeledText:
    """Reads `label sentence` lines or a `sentence<TAB>label` TSV with a header.

    Blank lines are skipped, and so are lines with a label but no sentence (counted in
    `skipped`). Raises `DataError` for a missing or empty file, a TSV row with the wrong
    number of columns, or a file that does not look labeled (as many "labels" as lines).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            lines = [decode(raw).rstrip("\r\n") for raw in f]
    except OSError as error:
        raise DataError(f"Can't read {path}: {error.strerror or error}.") from None
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    if not numbered:
        raise DataError(f"{path} holds no sentences.")

    header = [c.strip().lower() for c in numbered[0][1].split("\t")]
    if len(header) > 1 and any(c in header for c in TEXT_COLUMNS):
        return _read_tsv(path, header, numbered[1:])

    texts, labels, skipped = [], [], 0
    for _, line in numbered:
        parts = line.strip().split(None, 1)
        if len(parts) < 2:
            skipped += 1
            continue
        labels.append(parts[0])
        texts.append(parts[1].strip())
    if not texts:
        raise DataError(f"{path} holds labels but no sentences.")
    distinct = len(set(labels))
    if distinct > max(20, len(labels) // 2):
        raise DataError(
            f"{path} does not look like 'label sentence' lines: its first words take "
            f"{distinct} different values in {len(labels)} lines (e.g. {labels[0]!r})."
        )
    return LabeledText(texts, labels, skipped)


def _read_tsv(path, header, numbered) -> LabeledText:
    text_col = next(header.index(c) for c in TEXT_COLUMNS if c in header)
    label_cols = [header.index(c) for c in LABEL_COLUMNS if c in header]
    if not label_cols:
        raise DataError(f"{path}: the TSV header {header} has no 'label' column.")
    label_col = label_cols[0]
    texts, labels = [], []
    for number, line in numbered:
        cells = line.split("\t")
        if len(cells) != len(header):
            raise DataError(
                f"{path}:{number}: expected {len(header)} tab-separated columns as in the "
                f"header, got {len(cells)}."
            )
        texts.append(cells[text_col].strip())
        labels.append(cells[label_col].strip())
    if not texts:
        raise DataError(f"{path} holds a header but no sentences.")
    return LabeledText(texts, labels)


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def class_names_from(labels) -> list[str]:
    """Class names for raw labels: `0..max` when all labels are integers, else sorted names."""
    unique = sorted(set(labels))
    if unique and all(_is_int(v) for v in unique):
        values = sorted(int(v) for v in unique)
        if values[0] < 0:
            raise DataError(f"Labels must be non-negative integers or names; got {values[0]}.")
        return [str(i) for i in range(values[-1] + 1)]
    return unique


def encode_labels(labels, class_names, *, source: str = "data") -> np.ndarray:
    """Maps raw labels to class indices of `class_names`; an unknown label raises DataError."""
    index = {name: i for i, name in enumerate(class_names)}
    encoded = np.empty(len(labels), dtype=np.int64)
    for i, label in enumerate(labels):
        key = str(int(label)) if _is_int(label) else label
        if key not in index:
            raise DataError(
                f"{source}: label {label!r} is not one of the training classes "
                f"{', '.join(class_names)}."
            )
        encoded[i] = index[key]
    return encoded


def stratified_folds(labels, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """`k` (train_indices, test_indices) pairs; every example is tested exactly once.

    Stratified: each class is shuffled with `seed` and dealt round-robin to the folds, so
    every fold has the class proportions of the whole (as sklearn's `StratifiedKFold`).
    """
    labels = np.asarray(labels)
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise DataError(f"Received an invalid number of folds, expected an integer ≥ 2, got {k}.")
    if k > len(labels):
        raise DataError(f"Can't make {k} folds of {len(labels)} examples.")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        # Continue the round-robin across classes so fold sizes differ by at most one.
        fold_of[members] = (np.arange(len(members)) + offset) % k
        offset += len(members)
    everything = np.arange(len(labels))
    return [(everything[fold_of != f], everything[fold_of == f]) for f in range(k)]


def split_off(indices, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Shuffles `indices` and returns (rest, held_out) with `fraction` of them held out."""
    indices = np.random.default_rng(seed).permutation(np.asarray(indices))
    n_held = max(1, int(round(len(indices) * fraction)))
    return indices[n_held:], indices[:n_held]
