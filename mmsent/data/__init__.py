"""Data: sources for each on-disk format, the prepared cache, and the DataModule."""

from mmsent.data.datamodule import MultimodalDataModule, collate
from mmsent.data.schema import DatasetSpec
from mmsent.data.sources import DataSource, GeneratedSource, RawClipSource

__all__ = [
    "DataSource",
    "DatasetSpec",
    "GeneratedSource",
    "MultimodalDataModule",
    "RawClipSource",
    "collate",
]
