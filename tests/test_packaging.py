"""The wheel builds from the project's files and says what it needs: the library only, the
version ranges of setup.cfg, TensorFlow Datasets only for the examples. Built offline from a
copy of the sources (no build isolation), so it needs setuptools in the environment."""

import email
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import keras_recnorm

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("setuptools", reason="building a wheel offline needs setuptools")
    source = tmp_path_factory.mktemp("source")
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "keras_recnorm", source / "keras_recnorm",
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = out.glob("*.whl")
    return path


def test_wheel_holds_the_library_and_nothing_else(wheel):
    assert wheel.name == f"keras_recnorm-{keras_recnorm.__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    modules = sorted(n for n in names if not n.startswith("keras_recnorm-"))
    expected = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "keras_recnorm").rglob("*.py"))
    assert modules == expected
    assert "keras_recnorm/compat.py" in modules


def test_wheel_metadata_has_the_version_ranges(wheel):
    archive = zipfile.ZipFile(wheel)
    (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    requires = email.message_from_bytes(archive.read(name)).get_all("Requires-Dist")
    plain = sorted(r.replace(" ", "") for r in requires if "extra" not in r)
    assert plain == ["keras<4,>=3.7.0", "numpy", "tensorflow<3,>=2.16.2"]
    oldest = (ROOT / ".ci" / "oldest.txt").read_text()
    assert "keras==3.7.0" in oldest and "tensorflow==2.16.2" in oldest  # what CI tests
    datasets = [r for r in requires if r.startswith("tensorflow-datasets")]
    assert datasets and all('extra == "examples"' in r for r in datasets)
