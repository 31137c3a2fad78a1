"""The ``mmsent`` command, dispatching to the CLI, the pipeline and :mod:`mmsent.hub`.

A user's error is printed in a line or two naming its culprit, with exit status 1 (2 for
a command line that does not parse); ``--debug`` (or ``MMSENT_DEBUG=1``) shows the
traceback. Each command's code is imported when it runs, so ``mmsent score`` loads no
training code.
"""

from __future__ import annotations

import os
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path

from mmsent.errors import MMSentError, UsageError, WriteError, user_error
from mmsent.io import no_room, write_failure

DEBUG_FLAG = "--debug"
DEBUG_VARIABLE = "MMSENT_DEBUG"
USER_ERRORS = (MMSentError, ValueError, OSError)
STAGE_COMMANDS = {
    "fit": "train one stage from its config files (LightningCLI)",
    "validate": "evaluate a stage's checkpoint on the validation split",
    "test": "evaluate a stage's checkpoint on the test split",
    "predict": "write a stage's predictions",
}
COMMANDS = {
    **STAGE_COMMANDS,
    "pipeline": "run (or resume) the stages of a pipeline file in order",
    "export": "write a finished pipeline's fused model as a model folder",
    "score": "score raw clips with an exported model folder",
}


def usage() -> str:
    """str: The help of the ``mmsent`` command, listing every command."""
    width = max(map(len, COMMANDS))
    listed = "\n".join(f"  {name:<{width}}  {what}" for name, what in COMMANDS.items())
    return (f"usage: mmsent COMMAND [ARGS ...] [{DEBUG_FLAG}]\n\n"
            f"Staged multimodal sentiment analysis with PyTorch Lightning.\n\n"
            f"commands:\n{listed}\n\n"
            f"`mmsent COMMAND --help` lists a command's options. {DEBUG_FLAG} (or {DEBUG_VARIABLE}=1) shows an "
            f"error's full traceback.\n")


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``mmsent`` command.

    Args:
        args (list[str] | None): Command-line arguments; None reads ``sys.argv``.

    Raises:
        SystemExit: Status 1 after a user's error, 2 after a command line that does not parse.
    """
    args = sys.argv[1:] if args is None else list(args)
    cut = args.index("--") if "--" in args else len(args)
    debug = DEBUG_FLAG in args[:cut] or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    args = [a for a in args[:cut] if a != DEBUG_FLAG] + args[cut:]
    try:
        dispatch(args)
    except UsageError as error:
        # A traceback says nothing more about a mistyped command line.
        print(f"mmsent: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
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
    """Runs the command ``args`` name.

    Args:
        args (list[str]): Command-line arguments.

    Raises:
        UsageError: If the first argument is no command, or the arguments do not parse.
    """
    command = args[0] if args else None
    if command in (None, "-h", "--help"):
        print(usage(), end="")
        return
    if command == "pipeline":
        from mmsent.pipeline.command import main as run_pipeline

        run_pipeline(args[1:])
    elif command == "export":
        from mmsent.hub import export

        export.main(args[1:])
    elif command == "score":
        from mmsent.hub import score

        score.main(args[1:])
    elif command in STAGE_COMMANDS or command.startswith("-"):
        # Options before the subcommand (``-c config.yaml fit``) are LightningCLI's.
        from mmsent.cli import build_cli
        from mmsent.pipeline.wandb_mode import default_to_offline

        default_to_offline()
        # The arguments are sys.argv's own; LightningCLI's warning about both being given
        # would only confuse.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        try:
            build_cli(args)
        except ArgumentError as error:  # jsonargparse's, which would print its whole usage
            name = f"mmsent {command}" if command in STAGE_COMMANDS else "mmsent"
            raise UsageError(f"{name}: {' '.join(str(error).split())} (see {name} --help)") from None
    else:
        raise UsageError(f"{command!r} is not an mmsent command; the commands: {', '.join(COMMANDS)} "
                         f"(see mmsent --help)")


if __name__ == "__main__":
    main()
