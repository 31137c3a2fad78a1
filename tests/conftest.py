"""Shared fixtures: a tiny generated raw dataset, written once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import data_args

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Tests calling mmsent.main.main expect the error itself; tests of the short message unset it.
os.environ.setdefault("MMSENT_DEBUG", "1")


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    """A 48-clip generated dataset in the raw layout (mp4 + wav + label.csv)."""
    from mmsent.data.synthetic import generate_raw_dataset

    root = tmp_path_factory.mktemp("tiny_raw")
    generate_raw_dataset(root, num_clips=48, seed=0, frames=8, frame_size=32)
    return root


@pytest.fixture(scope="session")
def awkward_clips(tmp_path_factory) -> Path:
    """A raw folder of clips in many containers and codecs with the faults of real
    recordings (see :mod:`clips`: ``AWKWARD_CLIPS`` lists them, ``AWKWARD_MISSING``
    counts the clips lacking each modality once prepared). Read-only: copy it to damage it."""
    from clips import build_awkward_clips

    return build_awkward_clips(tmp_path_factory.mktemp("awkward_clips"))


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """A cache folder shared by the tests: keyed by fingerprint, so sharing is safe."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture()
def tiny_data_args(tiny_raw, tiny_cache, tmp_path) -> list[str]:
    """CLI arguments pointing the tests' data config at the tiny dataset."""
    return data_args(tiny_raw, tmp_path, tiny_cache)


@pytest.fixture()
def mosi_dir() -> Path:
    """The real CMU-MOSI folder from ``$MMSENT_MOSI_DIR``; tests that need it skip without it."""
    folder = os.environ.get("MMSENT_MOSI_DIR")
    if not folder:
        pytest.skip("real CMU-MOSI data: MMSENT_MOSI_DIR is not set")
    if not (Path(folder) / "label.csv").is_file():
        pytest.skip(f"real CMU-MOSI data: MMSENT_MOSI_DIR={folder} holds no label.csv")
    return Path(folder).resolve()
