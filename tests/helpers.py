"""What the tests share beside fixtures: the repository's folders and the arguments
that point a stage at the tiny dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF = Path(__file__).resolve().parent / "conf"


def data_args(raw_root: Path, folder: Path, cache: Path | None = None) -> list[str]:
    """CLI arguments pointing the tests' data config at a dataset.

    Args:
        raw_root (Path): The raw dataset.
        folder (Path): Where the run goes (and the cache, unless given).
        cache (Path | None): A cache folder to share between tests.

    Returns:
        list[str]: Arguments for ``mmsent fit`` and friends.
    """
    return ["-c", str(CONF / "tiny_data.yaml"),
            f"--data.source.init_args.root={raw_root}",
            f"--data.cache_dir={cache or folder / 'cache'}",
            f"--trainer.default_root_dir={folder / 'run'}"]


def training_modules_after(code: str, prefixes: tuple[str, ...]) -> list[str]:
    """The Lightning modules, and the mmsent modules under ``prefixes``, that a fresh
    interpreter holds after running ``code``.

    Args:
        code (str): Python statements to run first.
        prefixes (tuple[str, ...]): Module name prefixes that count as training code.

    Returns:
        list[str]: The modules found, sorted.
    """
    probe = (f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             f"('lightning', 'pytorch_lightning', 'lightning_fabric') or m.startswith({prefixes!r}))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(done.stdout.strip().splitlines()[-1])
