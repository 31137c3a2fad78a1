"""Data: sources for each on-disk format, the prepared cache, and the DataModule."""

from mmsent.data.datamodule import MultimodalDataModule, collate
from mmsent.data.features import FeatureSource
from mmsent.data.lm_features import LMTokenStates, TranscriptText
from mmsent.data.mmsa import MMSAPickleSource
from mmsent.data.mosi import MOSISource
from mmsent.data.schema import DatasetSpec
from mmsent.data.sdk import SDKSource
from mmsent.data.sources import DataSource, GeneratedSource, RawClipSource
from mmsent.data.tables import FeatureTableSource

__all__ = [
    "DataSource",
    "DatasetSpec",
    "FeatureSource",
    "FeatureTableSource",
    "GeneratedSource",
    "LMTokenStates",
    "MMSAPickleSource",
    "MOSISource",
    "MultimodalDataModule",
    "RawClipSource",
    "SDKSource",
    "TranscriptText",
    "collate",
]
