"""The errors mmsent raises about what a user gave it: a config, a file, a checkpoint.

Each message names the setting, file or sample at fault. The command line shows an
:class:`MMSentError` as raised, even when jsonargparse caught it while instantiating
a class and wrapped it in a message that repeats the whole configuration
(:meth:`mmsent.cli.MMSentCLI.instantiate_classes`). Both subclasses keep a built-in
base, so code that catches ``ValueError`` or ``FileNotFoundError`` still does.

This module imports nothing of mmsent, so every module can raise these errors.
"""

from __future__ import annotations


class MMSentError(Exception):
    """Base of the errors that explain a user's mistake in mmsent's own words."""


class ConfigError(MMSentError, ValueError):
    """A setting, a pipeline file, a checkpoint or a data row that cannot work."""


class MissingFileError(MMSentError, FileNotFoundError):
    """A file that a setting names does not exist."""


def user_error(error: BaseException) -> MMSentError | None:
    """The outermost :class:`MMSentError` in an exception's chain of causes.

    The outermost one is the message mmsent wrote closest to the user (a checkpoint
    whose weights do not fit wraps the lower-level error that says why).

    Args:
        error (BaseException): The exception caught.

    Returns:
        MMSentError | None: The error to show, or None when mmsent raised none.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, MMSentError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
