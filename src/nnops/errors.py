"""The one exception type stages turn into a clear message and a non-zero exit."""


class NnopsError(Exception):
    """A user-facing failure: the message names the file, key, column or value at fault."""
