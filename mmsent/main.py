"""The ``mmsent`` command: ``mmsent fit|validate|test|predict`` go to the CLI
(:mod:`mmsent.cli`), ``mmsent pipeline`` to the pipeline (:mod:`mmsent.pipeline`)."""

from __future__ import annotations

import sys

from mmsent import pipeline
from mmsent.cli import build_cli
from mmsent.hub import export, score
from mmsent.pipeline.wandb_mode import default_to_offline


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``mmsent`` command.

    Args:
        args (list[str] | None): Command-line arguments; None reads ``sys.argv``.
    """
    args = sys.argv[1:] if args is None else list(args)
    if args and args[0] == "pipeline":
        pipeline.main(args[1:])
        return
    if args and args[0] in ("export", "score"):
        (export.main if args[0] == "export" else score.main)(args[1:])
        return
    default_to_offline()
    build_cli(args)


if __name__ == "__main__":
    main()
