"""One error type for bad input, and the CLI wrapper that turns it into exit code 2."""

from __future__ import annotations

import functools
import os
import sys


class SpectralError(Exception):
    """Bad input or an unusable file: the message is written for the user, one line."""


def cli_entry(main):
    """Run ``main(argv)``; a :class:`SpectralError` becomes one ``error:`` line and exit 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except SpectralError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        except BrokenPipeError:  # output piped into e.g. `head`: stop quietly (Python docs recipe)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)

    return wrapper
