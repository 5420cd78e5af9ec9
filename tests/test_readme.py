"""The README's Python examples run as written.

Every ```python block of README.md is executed on its own, in a fresh namespace, in a
temporary working directory (the examples write files such as `quickstart.keras`).
Blocks in other languages (```bash, plain ```) are not run. A Python block that is not
meant to run (it needs a trained model or data that a fresh clone lacks) is preceded by
the line `<!-- readme-test: skip (reason) -->`, and is listed as skipped with its reason.
"""

import pathlib
import re

import keras
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
SKIP = re.compile(r"<!-- readme-test: skip \((.+)\) -->\s*$")


def python_blocks(text):
    """(first line number, code, skip reason or None) of every ```python block."""
    blocks, lines = [], text.split("\n")
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            end = lines.index("```", start)
            before = lines[i - 1] if i else ""
            match = SKIP.match(before)
            blocks.append((start + 1, "\n".join(lines[start:end]), match and match.group(1)))
            i = end
        i += 1
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3, "the README's examples were not found"


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="README examples export (TF)")
@pytest.mark.parametrize("line, code, skip", BLOCKS, ids=[f"line{b[0]}" for b in BLOCKS])
def test_readme_block_runs(line, code, skip, tmp_path, monkeypatch):
    if skip:
        pytest.skip(skip)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
