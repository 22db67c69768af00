"""``DataError``'s historical home; every user-facing error lives in ``lib/errors.py``."""

from ..errors import DataError

__all__ = ["DataError"]
