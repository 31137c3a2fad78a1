"""The errors mmsent raises about what a user gave it: a config, a file, a checkpoint.

Each message names the setting, file or sample at fault; each subclass keeps a built-in
base (``ValueError``, ``FileNotFoundError``...). An :class:`MMSentError` raised ``from`` a
lower-level error is the message the command line shows (:func:`user_error`). This module
imports nothing of mmsent, so every module can raise these errors.
"""

from __future__ import annotations

import argparse
import typing


class MMSentError(Exception):
    """Base of the errors that explain a user's mistake in mmsent's own words."""


class ConfigError(MMSentError, ValueError):
    """A setting, a pipeline file, a checkpoint or a data row that cannot work."""


class MissingFileError(MMSentError, FileNotFoundError):
    """A file that a setting names does not exist."""


class WriteError(MMSentError, OSError):
    """A file mmsent writes that did not fit (full disk, size limit); shows its message alone."""

    def __str__(self) -> str:
        return str(self.strerror)


class UsageError(MMSentError, ValueError):
    """A command line its command cannot parse: a missing, unknown or malformed argument."""


class CommandParser(argparse.ArgumentParser):
    """An ``argparse`` parser raising :class:`UsageError` s, shown in one line, not exiting."""

    def error(self, message: str):
        """Raises the parse error.

        Args:
            message (str): argparse's message.

        Raises:
            UsageError: Naming the command, the problem and where its options are listed.
        """
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


class NonFiniteError(MMSentError, FloatingPointError):
    """A training loss that is not a finite number: training cannot go on from it."""


def user_error(error: BaseException) -> BaseException:
    """The exception to show for one raised while the command line built its classes.

    Instead of jsonargparse's wrapper, which repeats the configuration: the outermost
    :class:`MMSentError` along the chain of causes, else the root cause.

    Args:
        error (BaseException): The exception caught.

    Returns:
        BaseException: The exception to show; ``error`` itself when it has no cause.
    """
    chain = [error]
    while chain[-1].__cause__ is not None and chain[-1].__cause__ not in chain:
        chain.append(chain[-1].__cause__)
    return next((cause for cause in chain if isinstance(cause, MMSentError)), chain[-1])


def check_choice(key: str, value: object, choices: object) -> None:
    """Refuses a value outside its ``Literal`` type (for classes built outside the command line).

    Args:
        key (str): The setting, for the message.
        value (object): Its value.
        choices (object): The setting's ``Literal[...]`` type.

    Raises:
        ConfigError: Naming the key, the allowed values and the value.
    """
    if value not in typing.get_args(choices):
        raise ConfigError(f"{key} must be one of {list(typing.get_args(choices))}, got {value!r}")
