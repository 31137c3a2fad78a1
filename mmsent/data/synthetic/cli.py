"""The generator's command line: one option per parameter of ``generate_raw_dataset``."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from jsonargparse import ArgumentParser

from mmsent.data.synthetic.writer import generate_raw_dataset


def build_parser() -> ArgumentParser:
    """Returns the argument parser, one option per parameter of the generator; ``num_workers``
    defaults to the CPU count (at most 8)."""
    parser = ArgumentParser(prog="python -m mmsent.data.synthetic",
                            description="A generated raw dataset laid out like MMSA's raw "
                                        "CMU-MOSI, CMU-MOSEI and CH-SIMS.")
    parser.add_function_arguments(generate_raw_dataset)
    parser.set_defaults(num_workers=max(1, min(8, os.cpu_count() or 1)))
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the generator from the command line, on ``argv`` (None reads ``sys.argv``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        generate_raw_dataset(**args.as_dict())
    except ValueError as error:
        parser.error(str(error))
