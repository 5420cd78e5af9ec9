"""The documentation: every public name of keras_recnorm documents its arguments and has an
example, and the site (mkdocs.yml: README.md, docs/ and the API reference) builds in strict
mode, so that a broken link or anchor, a docstring that does not parse or a public name
without a docstring fails here. The site checks need the `docs` extra (MkDocs,
mkdocstrings); where it is not installed (the oldest-releases run) they are skipped."""

import importlib.util
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import keras_recnorm

ROOT = Path(__file__).resolve().parents[1]


def sections(obj):
    """The titles of the sections (`Args`, `Example`, ...) of `obj`'s own docstring (not one
    it would inherit, as `inspect.getdoc` gives)."""
    docstring = inspect.cleandoc(obj.__doc__ or "")
    return set(re.findall(r"^([A-Z][A-Za-z ]*):[ \t]*$", docstring, re.MULTILINE))


@pytest.mark.parametrize("name", keras_recnorm.__all__)
def test_public_name_documents_its_arguments_and_has_an_example(name):
    found = sections(getattr(keras_recnorm, name))
    assert "Args" in found, f"keras_recnorm.{name}'s docstring has no Args: section ({found})"
    assert found & {"Example", "Examples"}, f"keras_recnorm.{name}'s docstring has no Example:"


# What the site needs: the `docs` extra of setup.cfg.
DOCS_MODULES = ("mkdocs", "material", "mkdocstrings", "griffe")


def needs_docs_extra():
    missing = [name for name in DOCS_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (the `docs` extra of setup.cfg)")


def test_site_builds_in_strict_mode_with_every_public_name(tmp_path):
    needs_docs_extra()
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # The pages keep their repository paths (docs/api/hooks.py), and the API page renders
    # every public name.
    for page in ("index.html", "docs/equations/index.html", "CHANGELOG/index.html"):
        assert (site / page).is_file(), page
    api = (site / "docs" / "api" / "index.html").read_text(encoding="utf-8")
    for name in keras_recnorm.__all__:
        assert f'id="keras_recnorm.{name}"' in api, name


def docs_module(name):
    """`docs/api/<name>.py`, the site's hooks or griffe extension."""
    needs_docs_extra()
    spec = importlib.util.spec_from_file_location(f"docs_{name}", ROOT / "docs" / "api" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flush_left_doctests_render_as_code():
    """Else Markdown reads them as quotes, and an output such as `[1]` as a link (which
    fails the strict build). Indented ones (a section's) and fenced ones are left alone."""
    text = ("Example:\n\n>>> [1, 2][:1]\n[1]\n\nThen:\n\n    >>> 2\n    2\n\n"
            "```python\n>>> 3\n```\n>>> 4")
    assert docs_module("doctests").fence_doctests(text) == (
        "Example:\n\n```pycon\n>>> [1, 2][:1]\n[1]\n```\n\nThen:\n\n    >>> 2\n    2\n\n"
        "```python\n>>> 3\n```\n```pycon\n>>> 4\n```")


def test_public_name_without_a_docstring_is_found(tmp_path):
    """What fails the strict build: a public class or function whose docstring is missing or
    empty, in a module with `__all__` and in one without (read from the source, nothing
    imported)."""
    hooks = docs_module("hooks")
    package = tmp_path / "documented"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent('''\
        """A package."""
        from documented.parts import Described, bare

        __all__ = ["Described", "bare", "Empty"]


        class Empty:
            """ """


        class Unlisted:
            pass
        '''))
    (package / "parts.py").write_text(textwrap.dedent('''\
        """Parts."""


        class Described:
            """Has one."""


        def bare():
            pass


        def _private():
            pass


        CONSTANT = 1
        '''))
    assert sorted(hooks.undocumented("documented", str(tmp_path))) == [
        "documented.Empty", "documented.bare"]
    assert hooks.undocumented("documented.parts", str(tmp_path)) == ["documented.parts.bare"]
