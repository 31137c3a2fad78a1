"""What the tests share beside fixtures: the repository's folders and the arguments
that point a stage at the tiny dataset."""

from __future__ import annotations

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
