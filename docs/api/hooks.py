"""MkDocs hooks of the documentation site (`mkdocs.yml`; `make docs` builds it).

- The site mirrors the repository: README.md is the home page, `docs/x.md` stays
  `docs/x.md`, and the other Markdown pages the README links to (`ROOT_PAGES`) are pages
  too. So a relative link that works when the repository is browsed works on the site, and
  one that is broken fails the strict build.
- Every public class and function of the modules on the API page (`::: module` lines of
  docs/api/index.md) has a docstring: one without is a warning, which fails the strict
  build. The docstrings are read statically (griffe), as the API page renders them.
"""

import os
import re

import griffe
from mkdocs.plugins import get_plugin_logger
from mkdocs.structure.files import File, Files

# Markdown files outside docs/ that are pages of the site, at their repository paths.
ROOT_PAGES = ("README.md", "CHANGELOG.md", "export/README.md")
API_PAGE = "docs/api/index.md"

log = get_plugin_logger("keras_recnorm")


def on_files(files, config):
    root = os.path.dirname(config.config_file_path)
    mirrored = Files([])
    for file in files:
        if file.src_dir == config.docs_dir:  # docs/x -> docs/x, as in the repository
            file = File.generated(config, f"docs/{file.src_uri}",
                                  abs_src_path=file.abs_src_path, inclusion=file.inclusion)
        mirrored.append(file)
    for path in ROOT_PAGES:
        mirrored.append(File.generated(config, path, abs_src_path=os.path.join(root, path)))
    return mirrored


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == API_PAGE:
        root = os.path.dirname(config.config_file_path)
        for module in re.findall(r"^::: *(\S+)", markdown, flags=re.MULTILINE):
            for name in undocumented(module, root):
                log.warning(f"{API_PAGE}: public name {name} has no docstring")
    return markdown


def undocumented(module, root):
    """The public classes and functions of `module` (its `__all__`, else its names that
    don't start with `_`) whose docstring is missing or empty, read from the source."""
    loaded = griffe.load(module, search_paths=[root], resolve_aliases=True)
    missing = []
    for name, member in loaded.members.items():
        if not member.is_public:
            continue
        target = member.final_target if member.is_alias else member
        documented = target.docstring is not None and target.docstring.value.strip()
        if (target.is_class or target.is_function) and not documented:
            missing.append(f"{module}.{name}")
    return missing
