"""The one exception type stages turn into a clear message and a non-zero exit, and how
messages list names."""

from collections.abc import Sequence


class NnopsError(Exception):
    """A user-facing failure: the message names the file, key, column or value at fault."""


def few(names: Sequence[object], limit: int, quote: bool = False) -> str:
    """The first ``limit`` names for a message, and how many there are when some are left out:
    ``a, b, c, d, ... (9 in all)``.

    Args:
        names: the names.
        limit: how many to show.
        quote: show each as its ``repr`` (a column name with spaces stays readable).
    """
    shown = ", ".join(map(repr if quote else str, names[:limit]))
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
