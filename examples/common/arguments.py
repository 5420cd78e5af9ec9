"""Command-line plumbing of the example scripts: argparse `type=` checks, and bad input
reported as one line.

    parser = arguments.ArgumentParser(description=...)
    parser.add_argument("--units", type=arguments.positive_int, default=128, help=...)

    @arguments.one_line_errors(tfds_data.DatasetUnavailable)
    def main(argv=None):
        run(parser.parse_args(argv))
        return 0

A bad option value, an unknown option, a `UsageError` raised while running or one of the
errors named in `one_line_errors` prints `<script>.py: error: <what is wrong>` as a single
line on stderr, and `main` returns 2 (the exit status argparse gives bad usage) before
anything is written.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import sys


class UsageError(ValueError):
    """Bad input; `str()` is one line saying what is wrong and what to do."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors are `UsageError`s: one line, without the usage block
    (`--help` shows that)."""

    def error(self, message):
        raise UsageError(message)


def one_line_errors(*errors):
    """Decorates a script's `main(argv=None, ...)`: a `UsageError` or one of `errors` is
    printed as `<script>.py: error: <message>` on stderr and `main` returns 2."""

    def decorate(main):
        script = os.path.basename(inspect.getfile(main))

        @functools.wraps(main)
        def wrapper(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except (UsageError, *errors) as error:
                print(f"{script}: error: {error}", file=sys.stderr)
                return 2

        return wrapper

    return decorate


def _checked(convert, accept, expected):
    """An argparse `type=`: `convert(text)`, which `accept` must approve."""

    def check(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return check


positive_int = _checked(int, lambda value: value > 0, "a positive integer")
positive_float = _checked(float, lambda value: value > 0, "a positive number")
non_negative_float = _checked(float, lambda value: value >= 0, "a number >= 0")
# A share of the data or a dropout rate: 0 allowed, 1 would leave nothing.
fraction = _checked(float, lambda value: 0 <= value < 1, "a number in [0, 1)")
# A share that must leave something on both sides (held-out text).
proper_fraction = _checked(float, lambda value: 0 < value < 1, "a number between 0 and 1")


def existing_file(text):
    """An argparse `type=`: the path of a file that exists."""
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text
