"""A griffe extension of the API reference (mkdocs.yml): doctest lines written flush left in
a docstring (`>>> ...` and their output, as module docstrings have them) render as code.

Markdown would read them as nested quotes, and an output such as `['a', 'b']` as a link
to a reference that does not exist (a warning: the strict build fails). Doctest lines
indented under a section (`Example:`) are the docstring parser's, and left as they are.
"""

import griffe


def fence_doctests(text):
    """`text` with every flush-left run of doctest lines (a `>>>` line and the lines after
    it, up to a blank line) inside a ```` ```pycon ```` fence."""
    lines, in_doctest, in_fence = [], False, False
    for line in text.splitlines():
        if in_doctest and not line.strip():
            lines.append("```")
            in_doctest = False
        elif not in_doctest and not in_fence and line.startswith(">>>"):
            lines.append("```pycon")
            in_doctest = True
        elif not in_doctest and line.startswith("```"):
            in_fence = not in_fence
        lines.append(line)
    if in_doctest:
        lines.append("```")
    return "\n".join(lines)


class DoctestsAsCode(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
