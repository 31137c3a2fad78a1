"""The ``mmsent`` command: ``mmsent fit|validate|test|predict`` go to the CLI
(:mod:`mmsent.cli`), ``mmsent pipeline`` to the pipeline (:mod:`mmsent.pipeline`).

An error a user can act on (a config key, a data file, a checkpoint, a full disk)
is printed in a line or two naming its culprit, with exit status 1; ``--debug`` (or
``MMSENT_DEBUG=1``) shows the whole traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path

from mmsent import pipeline
from mmsent.cli import build_cli
from mmsent.errors import MMSentError, WriteError, user_error
from mmsent.hub import export, score
from mmsent.io import no_room, write_failure
from mmsent.pipeline.wandb_mode import default_to_offline

DEBUG_FLAG = "--debug"
DEBUG_VARIABLE = "MMSENT_DEBUG"
USER_ERRORS = (MMSentError, ValueError, OSError)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``mmsent`` command.

    Args:
        args (list[str] | None): Command-line arguments; None reads ``sys.argv``.

    Raises:
        SystemExit: Status 1 after a user's error, printed short.
    """
    args = sys.argv[1:] if args is None else list(args)
    cut = args.index("--") if "--" in args else len(args)
    debug = DEBUG_FLAG in args[:cut] or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    args = [a for a in args[:cut] if a != DEBUG_FLAG] + args[cut:]
    try:
        dispatch(args)
    except Exception as error:
        shown = user_error(error)
        full = no_room(error)
        if full is not None and full.filename and not isinstance(shown, WriteError):
            # A write outside mmsent's own writers (a logger's, a library's) that names its file.
            shown = WriteError(full.errno, write_failure(Path(full.filename), full))
        if debug or not isinstance(shown, USER_ERRORS):
            raise
        print(f"mmsent: error: {shown}\n(the full traceback: run again with {DEBUG_FLAG} or "
              f"{DEBUG_VARIABLE}=1)", file=sys.stderr)
        raise SystemExit(1) from None


def dispatch(args: list[str]) -> None:
    """Runs ``mmsent pipeline ...`` or a LightningCLI subcommand.

    Args:
        args (list[str]): Command-line arguments.
    """
    if args and args[0] == "pipeline":
        pipeline.main(args[1:])
        return
    if args and args[0] == "export":
        # An export's output is the folder; all it says is a notice.
        with contextlib.redirect_stdout(sys.stderr):
            export.main(args[1:])
        return
    if args and args[0] == "score":
        score.main(args[1:])
        return
    default_to_offline()
    # The arguments are sys.argv's own; LightningCLI's warning about both being given
    # would only confuse.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    build_cli(args)


if __name__ == "__main__":
    main()
