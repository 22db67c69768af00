"""Errors about user-supplied data files."""


class DataError(ValueError):
    """Bad or missing input data; the message names the file and what was expected."""
