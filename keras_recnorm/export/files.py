"""Where an export lands: a file or a version directory appears only once it is complete,
and a failed export leaves nothing behind, so that TensorFlow Serving or a device never
reads half a model."""

import contextlib
import os
import shutil
import tempfile

import numpy as np


def already_exists(what):
    """The error for an export whose file or version directory `what` is already there."""
    return FileExistsError(f"{what} already exists; pass overwrite=True to replace it.")


def target_file(path, overwrite):
    """`path` made absolute; a `FileExistsError` if it exists and `overwrite` is false."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise already_exists(path)
    return path


@contextlib.contextmanager
def staged_file(path, suffix):
    """Yields a new file beside `path` to write and check; it becomes `path` only if the
    block succeeds, and is removed otherwise: no half-written file at `path`, ever."""
    parent = os.path.dirname(path)
    created = missing_directories(parent)
    os.makedirs(parent, exist_ok=True)
    handle, staging = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.partial-", suffix=suffix, dir=parent
    )
    os.close(handle)
    try:
        yield staging
        os.replace(staging, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(staging)
        for directory in created:  # deepest first; only if still empty
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        raise


def missing_directories(directory):
    """The directories that `os.makedirs(directory)` would create, deepest first."""
    missing = []
    while directory and not os.path.exists(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    return missing


# ----------------------------------------------------------------------------- versions


def _integer_versions(base_dir):
    if not os.path.isdir(base_dir):
        return []
    return [
        int(name)
        for name in os.listdir(base_dir)
        if name.isdigit() and os.path.isdir(os.path.join(base_dir, name))
    ]


def next_version(base_dir):
    """One more than the largest integer version directory in `base_dir` (1 if none)."""
    return max(_integer_versions(os.fspath(base_dir)), default=0) + 1


def check_version(version):
    """`version` as an `int`; a `ValueError` unless it is a positive integer."""
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
        raise ValueError(
            "Received an invalid value for argument `version`, expected a positive "
            f"integer (TensorFlow Serving's version directories), got {version!r}."
        )
    return int(version)


def move_into_place(staging, target, overwrite):
    """Renames the complete `staging` directory to `target`, replacing it if allowed."""
    if not os.path.exists(target):
        os.rename(staging, target)
        return
    if not overwrite:
        raise already_exists(f"Version directory {target}")
    # A directory can't be renamed over a non-empty one: move the old one aside (under a
    # name TF Serving ignores), put the new one in place, then delete the old one.
    parent, name = os.path.split(target)
    old = tempfile.mkdtemp(prefix=f".{name}.replaced-", dir=parent)
    os.rmdir(old)
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
