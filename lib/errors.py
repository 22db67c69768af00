"""Errors a user can fix: the command lines print their message in one line, no traceback.

Everything that reports bad input, a refused request or an unusable file raises a
:class:`UserError` subclass, so ``train.py`` and ``eval.py`` catch one type. Programming errors
(wrong argument types, unknown names passed by code) stay ``ValueError``/``TypeError`` and keep
their traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or request; the message says what to do about it."""


class DataError(UserError, ValueError):
    """Bad or missing input data (features, captions, vocabulary, word vectors, results files,
    a model folder); the message names the file and what was expected."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, foreign, or does not fit the requested model."""


class RunFolderError(UserError):
    """``--model_name`` already holds a run that this command would write over."""


class EvaluationError(UserError, ValueError):
    """A score matrix the evaluation protocol cannot rank (NaN scores, sizes that do not fit)."""


class WriteError(UserError):
    """A checkpoint, log or result could not be written (disk full, no permission); the message
    names the file and the cause, and says that the previous file is intact."""


WORKER_PREFIX = "Caught "  # how torch's DataLoader starts an error re-raised from a worker


def user_message(err: Exception) -> str:
    """The one-line message of ``err`` for the command lines.

    An error raised in a DataLoader worker (e.g. a missing image, found only when it is
    decoded) comes back as ``type(err)(text)`` where ``text`` wraps the worker's traceback; its
    last line is ``<qualified class>: <original message>``, which is what the user needs.
    """
    text = str(err)
    if text.startswith(WORKER_PREFIX) and "\nOriginal Traceback" in text:
        return text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return text


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite; the message names the step, the batch's
    caption ids, and the last checkpoint written before it."""
