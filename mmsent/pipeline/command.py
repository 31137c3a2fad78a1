"""``mmsent pipeline run FILE [--from STAGE | --only STAGE] [--output-dir DIR]
[--no-wandb] [-- CLI args]``: run (or resume) a pipeline file."""

from __future__ import annotations

import sys

from mmsent.errors import CommandParser
from mmsent.pipeline.runner import run


def main(args: list[str] | None = None) -> None:
    """Parses the arguments after ``mmsent pipeline`` and runs the pipeline.

    Args:
        args (list[str] | None): Arguments after ``pipeline``; None reads ``sys.argv``.
    """
    parser = CommandParser(prog="mmsent pipeline",
                           description="Run the stages of a pipeline file in order.")
    sub = parser.add_subparsers(dest="command", required=True)
    runner = sub.add_parser("run", help="run (or resume) a pipeline file",
                            epilog="after --, arguments added to every stage (e.g. -- --trainer.max_epochs=2)")
    runner.add_argument("file", help="the pipeline YAML, e.g. pipelines/quickstart.yaml")
    group = runner.add_mutually_exclusive_group()
    group.add_argument("--from", dest="start", help="rerun this stage and every later one")
    group.add_argument("--only", help="rerun this stage alone")
    runner.add_argument("--output-dir", help="override the pipeline's output_dir")
    runner.add_argument("--no-wandb", action="store_true",
                        help="ignore the file's wandb section; stages keep their own trainer.logger")
    args = list(sys.argv[1:] if args is None else args)
    cut = args.index("--") if "--" in args else len(args)
    parsed = parser.parse_args(args[:cut])
    run(parsed.file, parsed.start, parsed.only, args[cut + 1:], parsed.output_dir, not parsed.no_wandb)
